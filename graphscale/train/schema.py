"""Which config keys each chosen component uses, and the check that no explicitly set key is ignored.

The config (:mod:`graphscale.train.config`) accepts every key of every section, so that one file
format serves all models, samplers and modes. This module says, for a resolved config, which keys
the chosen components actually read: the model from ``model.name`` (declared where it is registered,
:func:`graphscale.train.build.register_model`), the sampler from ``sampler.name``, the compression
mode, the training mode, the data set. A key that the file or the command line *set explicitly* but
no chosen component uses is an error naming the key, the component and the keys it does use
(:func:`check_used_keys`); keys left at their defaults stay silent.

``graphscale train --list-keys`` prints the same table (:func:`usage_table`).
"""
from __future__ import annotations

from graphscale.errors import ConfigError
from graphscale.train.build import MODELS, SAMPLERS, model_keys, sampler_keys
from graphscale.train.config import Config, explicit_keys

# Keys every run reads, whatever was chosen.
_ALWAYS = {
    "data": ("name", "root", "partitions"),
    "log": ("out", "progress"),
    "train": ("mode", "seed", "device", "lr", "weight_decay", "grad_clip", "eval_every", "distributed", "dist_timeout",
              "ddp_static_graph", "ddp_find_unused", "comm_hook"),
}
_SYNTHETIC = ("like", "scale", "num_nodes", "num_edges", "avg_degree", "num_communities", "p_intra", "seed")
_SYNTHETIC_FEATURES = ("num_features", "num_classes", "feature_noise")
_STANDARD_TRAIN = ("epochs", "checkpoint_every", "patience", "grad_accum", "precision")
_LAYERWISE_TRAIN = ("layer_epochs", "batch_size", "storage", "storage_dir", "controller")
_L2O_TRAIN = ("controller_path", "l2o_rounds", "l2o_sample_nodes", "l2o_min_epochs", "l2o_decision_step",
              "l2o_threshold", "l2o_time_ratio", "l2o_lr", "l2o_hidden")
_COMPRESSION = {"none": (), "layers": ("bits", "group_size", "projection", "compression_strict"),
                "hooks": ("bits", "group_size")}
#: the model that ``train.mode=layerwise`` trains (L-GCN / L2-GCN)
LAYERWISE_MODEL = "lgcn"


def used_keys(cfg: Config) -> dict[str, dict[str, str]]:
    """``{section: {key: component that reads it}}`` for the components ``cfg`` chooses."""
    used: dict[str, dict[str, str]] = {s: {} for s in ("data", "sampler", "model", "memory", "train", "log")}

    def add(section: str, keys, who: str) -> None:
        for k in keys:
            used[section].setdefault(k, who)

    d, s, m, t = cfg.data, cfg.sampler, cfg.model, cfg.train
    for section, keys in _ALWAYS.items():
        add(section, keys, "every run")
    add("train", ("data_prep",), "every run")  # distributed.prep_first: who writes data.root first
    if d.name.startswith("synthetic-"):
        add("data", _SYNTHETIC, f"data.name={d.name}")
        if d.name != "synthetic-proteins":
            add("data", _SYNTHETIC_FEATURES, f"data.name={d.name}")
    if d.name == "pyg":
        add("data", ("path",), "data.name=pyg")
    if d.name.endswith("proteins"):
        add("data", ("node_feat_aggr",), f"data.name={d.name}")
    if d.partitions:
        add("data", ("store_verify",), "data.partitions")
    if t.comm_hook == "powersgd":
        add("train", ("powersgd_rank", "powersgd_start_iter"), "train.comm_hook=powersgd")

    add("model", ("name",), "every run")
    if t.mode == "layerwise":
        add("train", _LAYERWISE_TRAIN, "train.mode=layerwise")
        if t.controller == "l2o":
            add("train", _L2O_TRAIN, "train.controller=l2o")
        add("model", model_keys(LAYERWISE_MODEL), "train.mode=layerwise")
        return used  # no sampler (no graph in the loop) and no memory techniques

    add("train", _STANDARD_TRAIN, "train.mode=standard")
    add("model", model_keys(m.name, aggr=m.aggr), f"model.name={m.name}")
    add("sampler", ("name", "eval_name"), "every run")
    keys = sampler_keys(s.name)
    if s.name == "cluster" and s.partitioner != "metis":  # METIS's own options
        keys = tuple(k for k in keys if k not in ("imbalance", "vertex_weight"))
    add("sampler", keys, f"sampler.name={s.name}")
    if s.eval_name == "layerwise":
        add("sampler", ("eval_batch_size",), "sampler.eval_name=layerwise")
    elif s.eval_name not in ("full", "parts"):
        add("sampler", ("eval_parts", "eval_views"), f"sampler.eval_name={s.eval_name}")
        if s.eval_name == "metis":
            add("sampler", ("cache_dir",), "sampler.eval_name=metis")
    add("memory", ("compression",), "every run")
    add("memory", _COMPRESSION.get(cfg.memory.compression, ()), f"memory.compression={cfg.memory.compression}")
    return used


def _chosen(section: str, cfg: Config) -> str:
    return {"model": f"model.name={cfg.model.name}", "sampler": f"sampler.name={cfg.sampler.name}",
            "memory": f"memory.compression={cfg.memory.compression}", "data": f"data.name={cfg.data.name}",
            "train": f"train.mode={cfg.train.mode}"}.get(section, section)


def check_used_keys(cfg: Config) -> None:
    """Raise :class:`ConfigError` for the first explicitly set key that no chosen component reads.

    ``train.mode=layerwise`` trains its own model (``model.name=lgcn``) and has no sampler or memory
    section: an explicitly set ``model.name`` other than ``lgcn``, or any ``sampler.*`` /
    ``memory.*`` key, is an error there.
    """
    explicit = explicit_keys(cfg)
    if not explicit:
        return
    used = used_keys(cfg)
    for key, source in explicit.items():
        section, _, name = key.partition(".")
        if section not in used or name in used[section]:
            continue
        where = f" ({source})" if source else ""
        if cfg.train.mode == "layerwise" and section in ("sampler", "memory"):
            raise ConfigError(f"{key} is set{where} but train.mode=layerwise uses no {section} (L-GCN trains on "
                              f"pre-aggregated features, no graph in the loop); remove it", key=key)
        reads = sorted(used[section]) or ["none"]
        raise ConfigError(f"{key} is set{where} but {_chosen(section, cfg)} does not use it; the {section} keys it "
                          f"uses: {', '.join(reads)}", key=key)
    if cfg.train.mode == "layerwise" and "model.name" in explicit and cfg.model.name != LAYERWISE_MODEL:
        raise ConfigError(f"model.name={cfg.model.name} ({explicit['model.name'] or 'set'}) but train.mode=layerwise "
                          f"trains model.name={LAYERWISE_MODEL} (L-GCN's GCN); set model.name={LAYERWISE_MODEL} or "
                          f"train.mode=standard", key="model.name")


def usage_table() -> str:
    """Which model, sampler, mode and compression reads which key (for ``--list-keys``)."""
    lines = ["models (model.name) and the model keys each reads:"]
    for name in sorted(MODELS):
        lines.append(f"  {name}: {', '.join(model_keys(name))}")
    lines.append("    (t and learn_t only with aggr=softmax)")
    lines.append("samplers (sampler.name) and their keys, besides name and eval_name:")
    for name in sorted(SAMPLERS):
        lines.append(f"  {name}: {', '.join(sampler_keys(name)) or '(none)'}")
    lines.append("  eval_name random/metis adds eval_parts, eval_views (and cache_dir for metis); "
                 "eval_name layerwise adds eval_batch_size")
    lines.append("memory.compression: " + "; ".join(f"{k}: {', '.join(v) or '(nothing else)'}"
                                                    for k, v in _COMPRESSION.items()))
    lines.append(f"train.mode=standard: {', '.join(_STANDARD_TRAIN)}")
    lines.append(f"train.mode=layerwise: {', '.join(_LAYERWISE_TRAIN)} (+ {', '.join(_L2O_TRAIN)} with "
                 f"controller=l2o); model.name={LAYERWISE_MODEL}; no sampler.* or memory.* keys")
    lines.append(f"every mode: train.{', train.'.join((*_ALWAYS['train'], 'data_prep'))}"
                 f" (+ powersgd_rank, powersgd_start_iter with comm_hook=powersgd)")
    lines.append("data.partitions (a store): data.store_verify; sampler.name=cluster or random, sampler.eval_name=parts")
    lines.append(f"data.name=synthetic-*: {', '.join(_SYNTHETIC)} (+ {', '.join(_SYNTHETIC_FEATURES)} except "
                 f"synthetic-proteins); *proteins: node_feat_aggr; pyg: path")
    return "\n".join(lines)
