"""Registries that turn config sections into objects (DESIGN.md rule 9).

A model builder is ``fn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module`` where the module takes
``(x, edge_index, edge_attr=None)`` and returns ``[N, out]`` logits. Constructors themselves take
explicit typed arguments; only the builder functions here read config sections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from graphscale.errors import ConfigError
from graphscale.train.config import MemoryConfig, ModelConfig, SamplerConfig


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data: input widths and the number of outputs."""

    num_features: int
    num_outputs: int
    edge_dim: int | None


MODELS: dict[str, Callable[[ModelConfig, DatasetInfo], nn.Module]] = {}
MODEL_KEYS: dict[str, tuple[str, ...]] = {}
# Keys every model reads besides its own: none (name is read by the registry itself).
_SOFTMAX_ONLY = ("t", "learn_t")


def register_model(name: str, keys: tuple[str, ...]):
    """Register ``fn(cfg: ModelConfig, info) -> nn.Module`` under ``name``; ``keys`` are the
    ``model.*`` keys it reads (graphscale.train.schema rejects any other key set explicitly)."""
    def deco(fn):
        MODELS[name] = fn
        MODEL_KEYS[name] = tuple(keys)
        return fn
    return deco


def model_keys(name: str, aggr: str | None = None) -> tuple[str, ...]:
    """The ``model.*`` keys model ``name`` reads (``t`` / ``learn_t`` only when ``aggr`` is softmax,
    if ``aggr`` is given)."""
    keys = MODEL_KEYS.get(name, ())
    if aggr is not None and aggr != "softmax":
        keys = tuple(k for k in keys if k not in _SOFTMAX_ONLY)
    return keys


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r}; expected one of {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg, info)


@register_model("deepergcn", keys=("hidden_channels", "num_layers", "dropout", "aggr", "t", "learn_t",
                                       "mlp_layers", "norm", "block", "conv"))
def _deepergcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import DeeperGCN
    return DeeperGCN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers,
                     edge_dim=info.edge_dim, dropout=cfg.dropout, aggr=cfg.aggr, t=cfg.t,
                     learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers, norm=cfg.norm, block=cfg.block,
                     conv=cfg.conv)


@register_model("gcn", keys=("hidden_channels", "num_layers", "dropout"))
def _gcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import GCN
    return GCN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers, cfg.dropout)


@register_model("lgcn", keys=("hidden_channels", "num_layers", "dropout"))
def _lgcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    # L-GCN's network (You et al., CVPR 2020); train.mode=layerwise trains it layer by layer, the
    # standard mode end to end (the same composed GCN).
    from graphscale.nn.models import LayerwiseGCN
    return LayerwiseGCN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers, cfg.dropout)


@register_model("sage", keys=("hidden_channels", "num_layers", "dropout", "norm", "residual"))
def _sage(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import SAGE
    return SAGE(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers, dropout=cfg.dropout,
                norm=cfg.norm, residual=cfg.residual)


def _revgnn(cfg: ModelConfig, info: DatasetInfo, weight_tied: bool) -> nn.Module:
    from graphscale.nn.models import RevGNN
    return RevGNN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers,
                  num_groups=cfg.num_groups, edge_dim=info.edge_dim, dropout=cfg.dropout, aggr=cfg.aggr,
                  t=cfg.t, learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers, weight_tied=weight_tied, conv=cfg.conv)


_REVGNN_KEYS = ("hidden_channels", "num_layers", "dropout", "aggr", "t", "learn_t", "mlp_layers", "num_groups",
                "conv")


@register_model("revgnn", keys=_REVGNN_KEYS)
def _revgnn_untied(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return _revgnn(cfg, info, weight_tied=False)


@register_model("wt-revgnn", keys=_REVGNN_KEYS)
def _revgnn_tied(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return _revgnn(cfg, info, weight_tied=True)


@register_model("deq-gnn", keys=("hidden_channels", "dropout", "aggr", "t", "learn_t", "mlp_layers", "solver",
                                  "max_iter", "tol", "conv"))
def _deq_gnn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import DEQGNN
    return DEQGNN(info.num_features, cfg.hidden_channels, info.num_outputs, edge_dim=info.edge_dim,
                  dropout=cfg.dropout, aggr=cfg.aggr, t=cfg.t, learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers,
                  solver=cfg.solver, max_iter=cfg.max_iter, tol=cfg.tol, conv=cfg.conv)


# --------------------------------------------------------------------------------------------
# Samplers: fn(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir) -> sampler with
# len(sampler) steps per epoch and sampler.epoch(epoch) -> Iterator[Subgraph].
SAMPLERS: dict[str, Callable] = {}
SAMPLER_KEYS: dict[str, tuple[str, ...]] = {}


def register_sampler(name: str, keys: tuple[str, ...]):
    """Register a sampler builder; ``keys`` are the ``sampler.*`` keys it reads besides ``name``
    (the evaluation keys belong to the trainer)."""
    def deco(fn):
        SAMPLERS[name] = fn
        SAMPLER_KEYS[name] = tuple(keys)
        return fn
    return deco


def sampler_keys(name: str) -> tuple[str, ...]:
    return SAMPLER_KEYS.get(name, ())


def build_sampler(cfg: SamplerConfig, edge_index, num_nodes: int, seed: int, cache_dir: str | None = None,
                  train_mask=None):
    """``train_mask`` (``BoolTensor[N]``, optional) reaches builders that balance training nodes
    (``cluster`` with ``vertex_weight=train``)."""
    if cfg.name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg.name!r}; expected one of {', '.join(sorted(SAMPLERS))}")
    extra = {} if train_mask is None else {"train_mask": train_mask}
    return SAMPLERS[cfg.name](cfg, edge_index, num_nodes, seed, cache_dir, **extra)


@register_sampler("full", keys=())
def _full(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, **_):
    from graphscale.sampling.samplers import FullGraphSampler
    return FullGraphSampler(edge_index, num_nodes)


@register_sampler("random", keys=("num_parts",))
def _random(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, **_):
    from graphscale.sampling.samplers import PartitionSampler
    return PartitionSampler(edge_index, num_nodes, cfg.num_parts, seed, partitioner="random")


@register_sampler("cluster", keys=("num_parts", "clusters_per_batch", "partitioner", "diag_lambda",
                                    "imbalance", "vertex_weight", "cache_dir"))
def _cluster(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, train_mask=None):
    from graphscale.sampling.cluster import build_cluster_sampler
    return build_cluster_sampler(edge_index, num_nodes, num_parts=cfg.num_parts,
                                 clusters_per_batch=cfg.clusters_per_batch, partitioner=cfg.partitioner,
                                 diag_lambda=cfg.diag_lambda, imbalance=cfg.imbalance,
                                 vertex_weight=cfg.vertex_weight, seed=seed,
                                 cache_dir=cfg.cache_dir or cache_dir, train_mask=train_mask)


@register_sampler("neighbor", keys=("fanouts", "batch_size", "prefetch"))
def _neighbor(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, train_mask=None):
    # Seeds are the training nodes; under DDP the trainer asks for its own batches only (epoch(e, steps)).
    from graphscale.sampling.neighbor import NeighborSampler
    return NeighborSampler(edge_index, cfg.fanouts, cfg.batch_size, input_nodes=train_mask, num_nodes=num_nodes,
                           seed=seed, prefetch=cfg.prefetch)


def check_sampler_config(cfg) -> None:
    """Checks of the neighbour sampler's keys against each other and the model's, before any data is
    loaded: fanouts well formed and one per model layer, batch sizes >= 1."""
    from graphscale.sampling.neighbor import check_batch_size, check_fanouts
    s, m = cfg.sampler, cfg.model
    if s.name == "neighbor":
        try:
            fanouts = check_fanouts(s.fanouts, "sampler.fanouts")
        except ConfigError as exc:
            raise ConfigError(str(exc), key="sampler.fanouts") from None
        try:
            check_batch_size(s.batch_size, "sampler.batch_size")
        except ConfigError as exc:
            raise ConfigError(str(exc), key="sampler.batch_size") from None
        if s.prefetch < 0:
            raise ConfigError(f"sampler.prefetch must be >= 0 (0 = sample inline), got {s.prefetch}",
                              key="sampler.prefetch")
        if len(fanouts) != m.num_layers:
            raise ConfigError(f"sampler.fanouts={fanouts} has {len(fanouts)} entries but model.num_layers="
                              f"{m.num_layers}; expected one fanout per layer", key="sampler.fanouts")
    if s.eval_name == "layerwise" and s.eval_batch_size < 1:
        raise ConfigError(f"sampler.eval_batch_size must be >= 1, got {s.eval_batch_size}", key="sampler.eval_batch_size")


# --------------------------------------------------------------------------------------------
def apply_memory(model: nn.Module, cfg: MemoryConfig) -> nn.Module:
    """Apply the memory techniques of the ``memory:`` section to a built model (in place) and
    return it. With the defaults this is the identity."""
    if cfg.compression != "none":
        model = _apply_compression(model, cfg)
    return model


def _apply_compression(model: nn.Module, cfg: MemoryConfig) -> nn.Module:
    # ActNN / EXACT activation compression (graphscale.memory; docs/compression.md).
    from graphscale.memory import compress_model, hook_compression

    group_size = None if cfg.group_size == 0 else cfg.group_size
    if cfg.compression == "layers":
        return compress_model(model, bits=cfg.bits, group_size=group_size, kept_frac=cfg.projection,
                              strict=cfg.compression_strict)
    if cfg.compression == "hooks":
        if cfg.projection != 1.0:
            raise ConfigError(f"memory.projection={cfg.projection} needs memory.compression=layers (the hooks "
                              f"mode quantizes every saved tensor and cannot project them without bias)")
        return hook_compression(model, bits=cfg.bits, group_size=group_size)
    raise ConfigError(f"unknown memory.compression {cfg.compression!r}; expected none, layers or hooks")
