"""Typed configuration: one dataclass section per pipeline stage, YAML files, ``key=value`` overrides.

Defaults live here and only here. A YAML file holds some of the sections below, each a mapping
(``data:``, ``sampler:``, ``model:``, ``memory:``, ``train:``, ``log:``); overrides on the command
line use dotted keys (``model.num_layers=28``), with values parsed as YAML scalars and checked
against the field's type. Unknown sections or keys are rejected with a did-you-mean, and a field
that has ``choices`` rejects any other value. The resolved config (:func:`to_dict`) is written into
every checkpoint and results file.

Adding an option: add a field to the right section with a default, and a ``choices`` entry in
``metadata`` when the value must come from a registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from graphscale.errors import ConfigError


def _choice(default, *choices, doc: str = ""):
    return field(default=default, metadata={"choices": choices, "doc": doc})


def _doc(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    """Which data set, where, and (for synthetic sets) its shape."""

    name: str = _doc("synthetic-proteins", "ogbn-proteins | ogbn-arxiv | ogbn-products | cora | citeseer "
                     "| synthetic-proteins | synthetic-arxiv | synthetic-products | pyg (a Data file, data.path) "
                     "| MODULE:CLASS (an InMemoryDataset class, built under data.root)")
    root: str = _doc("data", "folder holding the data set (downloaded or generated there)")
    # The user's own graph (graphscale.data.user_data, docs/user-data.md).
    path: str = _doc("", "data.name=pyg: the file holding a torch.save'd torch_geometric Data (x, edge_index, y, "
                     "a split, optional edge_attr)")
    # Synthetic sets only: written once (seeded) in OGB's raw layout, then read back through ogb.
    # null = the generator's default for the kind (or the published shape with `like`).
    like: Union[str, None] = _choice(None, "ogbn-proteins", "ogbn-arxiv", "ogbn-products",
                                     doc="synthetic: write the published shape of this OGB set (node and edge "
                                         "counts, feature and task widths, split sizes), times `scale`")
    scale: float = _doc(1.0, "synthetic with like: multiply the published node and edge counts by this")
    num_nodes: Union[int, None] = _doc(None, "synthetic: number of nodes (null: 20,000, or the published count "
                                       "with like)")
    num_edges: Union[int, None] = _doc(None, "synthetic: rows of the edge list (null: num_nodes x avg_degree / 2, or "
                                       "the published count with like)")
    avg_degree: Union[float, None] = _doc(None, "synthetic: mean undirected degree (null: 20)")
    num_communities: Union[int, None] = _doc(None, "synthetic: number of planted communities (null: 50, or scaled "
                                             "with like)")
    num_features: Union[int, None] = _doc(None, "synthetic-arxiv / -products: node feature width (null: 128 / 100)")
    num_classes: Union[int, None] = _doc(None, "synthetic-arxiv / -products: number of classes (null: 40 / 47)")
    p_intra: float = _doc(0.8, "synthetic: share of edges inside a node's community")
    feature_noise: float = _doc(2.0, "synthetic-arxiv / -products: std of the noise on the class-centroid features "
                                "(see graphscale.data.synthetic)")
    seed: int = _doc(0, "synthetic: generator seed")
    # ogbn-proteins (and its synthetic twin): node features are aggregated edge features.
    node_feat_aggr: str = _choice("sum", "sum", "mean", doc="proteins: how edge features become node features")
    # A partitioned store (graphscale data partition; docs/partitioned.md): each rank opens only its parts.
    partitions: Union[str, None] = _doc(None, "folder of a partitioned store written by 'graphscale data partition'; "
                                        "the data set, its shape and the partition come from its meta.json "
                                        "(null = load the whole data set in every process)")
    store_verify: str = _choice("sha256", "sha256", "size", doc="partitions: check each opened part file's byte "
                                "size and .npy header (size) and also its sha256 (sha256, reads every file once)")


@dataclass
class SamplerConfig:
    """How the graph is cut into training steps and how evaluation sees it."""

    name: str = _choice("random", "random", "full", "cluster", "neighbor", doc="random: a fresh random node "
                        "partition per epoch, one part per step; full: the whole graph per step; cluster: Cluster-GCN, "
                        "num_parts fixed clusters (partitioner), clusters_per_batch merged per step; neighbor: "
                        "GraphSAGE neighbour sampling, batch_size training nodes per step with fanouts neighbours per hop")
    num_parts: int = _doc(10, "random: parts per epoch (steps per epoch)")
    eval_name: str = _choice("full", "full", "random", "metis", "layerwise", "parts", doc="evaluation on the full graph, "
                             "on a partition (this partitioner) into eval_parts parts, or layerwise: the full-graph "
                             "output one layer at a time over eval_batch_size nodes (models with inference_layers: sage); "
                             "parts: each rank predicts its own parts of data.partitions (the default with a store)")
    eval_parts: int = _doc(5, "evaluation parts when eval_name is a partitioner")
    eval_views: int = _doc(1, "independent partitions whose predictions are averaged (RevGNN multi-view)")
    # Cluster-GCN (name=cluster); see docs/partitioning.md.
    partitioner: str = _choice("metis", "metis", "random", "contiguous", doc="cluster: how the num_parts "
                               "clusters are computed (once, cached under cache_dir)")
    clusters_per_batch: int = _doc(1, "cluster: q, clusters merged per step (edges between them kept)")
    diag_lambda: Union[float, None] = _doc(None, "cluster: null = the model normalises; a number >= 0 = "
                                           "Cluster-GCN's diagonal enhancement (A'+I row-normalised + lambda*diag)")
    imbalance: float = _doc(0.03, "metis: allowed part-size imbalance (0.03 = largest part <= 1.03 x mean)")
    vertex_weight: str = _choice("none", "none", "degree", "train", doc="metis: balance node counts (none), "
                                 "edges (degree), or node counts and training nodes (train)")
    cache_dir: str = _doc("", "folder for cached partitions; empty = the trainer's (<data.root>/partitions)")
    # Neighbour sampling (name=neighbor; graphscale.sampling.neighbor, docs/sampling.md).
    fanouts: list[int] = field(default_factory=lambda: [15, 10, 5], metadata={"doc": "neighbor: neighbours "
                               "sampled per node and hop, one entry per model layer (-1 = all)"})
    batch_size: int = _doc(1024, "neighbor: training (seed) nodes per step")
    prefetch: int = _doc(0, "neighbor: batches a background thread samples ahead (0 = sample inline)")
    eval_batch_size: int = _doc(65_536, "eval_name=layerwise: nodes per block of layer-wise inference")


@dataclass
class ModelConfig:
    """The network. ``name`` picks from the model registry in :mod:`graphscale.train.build`."""

    name: str = _choice("deepergcn", "deepergcn", "gcn", "lgcn", "revgnn", "wt-revgnn", "deq-gnn", "sage",
                        doc="model from the registry")
    hidden_channels: int = _doc(64, "width of every hidden layer")
    num_layers: int = _doc(7, "number of graph convolutions")
    dropout: float = _doc(0.1, "dropout probability")
    aggr: str = _choice("softmax", "softmax", "mean", "max", "add", "sum", doc="GENConv aggregation")
    t: float = _doc(1.0, "softmax aggregation temperature (initial value)")
    learn_t: bool = _doc(True, "learn the softmax temperature")
    norm: str = _choice("layer", "layer", "batch", "none", doc="normalisation inside blocks (none: sage only)")
    residual: bool = _doc(False, "sage: add each hidden layer's input to its output")
    block: str = _choice("res+", "res+", "res", "plain", doc="DeeperGCN block type")
    mlp_layers: int = _doc(2, "GENConv MLP depth")
    conv: str = _choice("graphscale", "graphscale", "pyg", doc="deepergcn / revgnn / wt-revgnn / deq-gnn: GENConv "
                        "implementation (graphscale = fused message and aggregation through graphscale.ops; pyg = "
                        "PyG's GENConv, the reference; same weights)")
    # Deep blocks (graphscale.nn: revgnn, wt-revgnn, deq-gnn)
    num_groups: int = _doc(2, "revgnn / wt-revgnn: channel groups C of each reversible block")
    solver: str = _choice("anderson", "anderson", "fixed-point", "broyden", doc="deq-gnn: fixed-point solver")
    max_iter: int = _doc(30, "deq-gnn: solver iteration limit (forward and adjoint)")
    tol: float = _doc(1e-3, "deq-gnn: solver tolerance (relative residual)")


@dataclass
class MemoryConfig:
    """Memory techniques applied on top of the model (see graphscale.memory)."""

    # Activation compression (ActNN / EXACT; graphscale.memory, docs/compression.md).
    compression: str = _choice("none", "none", "layers", "hooks", doc="none; layers: compress_model (compressed "
                               "Linear/ReLU/Dropout/norm/aggregation); hooks: quantize every saved activation")
    bits: int = _doc(2, "compression: bits per stored activation value (1, 2, 4 or 8)")
    group_size: int = _doc(256, "compression: values per quantization group (ActNN); 0 = per node row (EXACT)")
    projection: float = _doc(1.0, "compression layers: random projection keeping this fraction of the features "
                             "of Linear inputs (EXACT; 1.0 = off)")
    compression_strict: bool = _doc(False, "compression layers: fail (not warn) when modules stay uncompressed")


@dataclass
class TrainConfig:
    """Optimisation, seeds, devices, evaluation and checkpoint cadence."""

    epochs: int = _doc(100, "training epochs")
    lr: float = _doc(0.01, "Adam learning rate")
    weight_decay: float = _doc(0.0, "Adam weight decay")
    grad_clip: float = _doc(0.0, "clip the gradient norm at this value (0 = off)")
    seed: int = _doc(0, "seed for partitions, dropout and initialisation")
    device: str = _doc("auto", "auto | cpu | cuda | cuda:N")
    eval_every: int = _doc(1, "evaluate every N epochs (and at the last)")
    checkpoint_every: int = _doc(1, "write a checkpoint every N epochs (and at the last)")
    patience: int = _doc(0, "stop after N evaluations without a better validation score (0 = off)")
    precision: str = _choice("fp32", "fp32", "bf16", "fp16", doc="standard mode: fp32, or mixed precision: the "
                             "forward under torch.autocast in bf16 (CPU, recent GPUs) or fp16 (CUDA only, with "
                             "loss scaling); see docs/precision.md")
    # Multi-process data parallel (torchrun / --nproc; graphscale.train.distributed, docs/distributed.md).
    grad_accum: int = _doc(1, "sampler steps per optimiser step, gradients averaged (global batch = "
                           "nproc x grad_accum steps)")
    distributed: bool = _doc(False, "join a process group (gloo on CPU, nccl on GPU) and train under DDP even as a "
                             "single process: runs the distributed path on one device (--distributed)")
    dist_timeout: float = _doc(600.0, "distributed: seconds before a rendezvous or collective that waits "
                               "on a missing rank fails")
    ddp_static_graph: bool = _doc(True, "DDP static_graph: the same parameters are used every step (handles "
                                  "unused parameters and recomputation inside backward)")
    ddp_find_unused: bool = _doc(False, "DDP find_unused_parameters (only for models whose used parameters "
                                 "change between steps; needs ddp_static_graph=false)")
    comm_hook: str = _choice("none", "none", "powersgd", "signsgd", doc="gradient communication: plain "
                             "all-reduce, PowerSGD low-rank, or 1-bit sign with error feedback")
    data_prep: str = _choice("node", "node", "job", doc="who writes / downloads the data set and partition caches "
                             "under data.root first: node = local rank 0 of every machine (a disk per machine); "
                             "job = global rank 0 only (data.root on a filesystem every machine shares)")
    powersgd_rank: int = _doc(1, "powersgd: rank of the gradient factors")
    powersgd_start_iter: int = _doc(10, "powersgd: plain all-reduce steps before compression starts")
    # Layer-wise training (L-GCN / L2-GCN, graphscale.train.layerwise; docs/layerwise.md).
    mode: str = _choice("standard", "standard", "layerwise", doc="standard: end-to-end training; layerwise: "
                        "L-GCN (one layer at a time on aggregated features, no graph in the loop)")
    layer_epochs: int = _doc(80, "layerwise: epochs per layer (controller none); max epochs per layer (l2o)")
    batch_size: int = _doc(256, "layerwise: training nodes per mini-batch")
    storage: str = _choice("memory", "memory", "mmap", doc="layerwise: where the [N, F] feature matrices live")
    storage_dir: str = _doc("", "layerwise mmap: folder for the feature files (default <log.out>/features)")
    controller: str = _choice("none", "none", "l2o", doc="layerwise: none = fixed layer_epochs; l2o = L2-GCN's "
                              "learned stopping controller")
    controller_path: str = _doc("", "l2o: controller file to load (trained here and saved there if missing)")
    l2o_rounds: int = _doc(40, "l2o: REINFORCE episodes when training the controller")
    l2o_sample_nodes: int = _doc(1024, "l2o: nodes per episode subgraph")
    l2o_min_epochs: int = _doc(10, "l2o: epochs before the first stop decision of a layer")
    l2o_decision_step: int = _doc(5, "l2o: epochs between stop decisions")
    l2o_threshold: float = _doc(0.0, "l2o: stop when P(stop) >= this (deployment); 0 = median rule: stop where the "
                                "sampled policy would have with probability 1/2 (1 - prod(1 - p) >= 0.5)")
    l2o_time_ratio: float = _doc(1e-2, "l2o: reward cost per epoch, in units of training loss")
    l2o_lr: float = _doc(0.05, "l2o: controller learning rate")
    l2o_hidden: int = _doc(16, "l2o: controller GRU width")


@dataclass
class LogConfig:
    """Where results go and how progress shows."""

    out: str = _doc("runs/default", "output folder: checkpoint.pt, results.json, log.jsonl, config.yaml")
    progress: bool = _doc(True, "progress bars (tqdm)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --------------------------------------------------------------------------------------------
def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp, f: dataclasses.Field | None) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (int -> float, ...)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg, f)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: got {value!r}", key=path)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})", key=path)
        return [_coerce(f"{path}[{i}]", v, item_tp, None) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}", key=path)
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r} ({type(value).__name__})", key=path)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # `num_nodes: 1e6` is written as a float
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r} ({type(value).__name__})", key=path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r} ({type(value).__name__})", key=path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r} ({type(value).__name__})", key=path)
        choices = (f.metadata.get("choices") if f is not None else None) or ()
        if choices and value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}"
                              f"{_did_you_mean(value, choices)}", key=path)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping (section), got {value!r}", key=path)
        return _build(tp, value, path)
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}", key=path)


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _build(cls, mapping: dict, prefix: str = ""):
    fields = _fields(cls)
    kwargs = {}
    for key, value in (mapping or {}).items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            where = f"section '{prefix}'" if prefix else "the config"
            raise ConfigError(f"unknown key '{path}' in {where}{_did_you_mean(str(key), fields)}; "
                              f"valid keys: {', '.join(fields)}", key=path)
        f, tp = fields[key]
        kwargs[key] = _coerce(path, value, tp, f)
    obj = cls(**kwargs)
    return obj


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: YAML 1.1 (PyYAML's) reads ``1e-3`` and
    ``5E-4`` as strings because they lack a dot, though every ML config writes learning rates so."""


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
# Added after PyYAML's own resolvers, so integers (``1_000``) stay integers: resolvers are tried in order.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _yaml_load(text):
    return yaml.load(text, Loader=_Loader)


def from_dict(mapping: dict | None) -> Config:
    """Build a :class:`Config` from a nested mapping (as read from YAML). Every key in ``mapping``
    counts as explicitly set (:func:`explicit_keys`)."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(mapping).__name__}")
    cfg = _build(Config, mapping)
    object.__setattr__(cfg, "_sources", {k: "" for k in _flatten(mapping)})
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def explicit_keys(cfg: Config) -> dict[str, str]:
    """``{dotted key: where it was set}`` for the keys a file or override set explicitly (``""`` when
    the config came from a mapping); empty for a :class:`Config` built in code. Keys left at their
    defaults are not in it: the per-component check (:mod:`graphscale.train.schema`) only rejects
    explicitly set keys that the chosen components do not use."""
    return dict(getattr(cfg, "_sources", {}))


def _flatten(mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in (mapping or {}).items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:  # a section: its keys are the config keys
            out += _flatten(v, path + ".")
        else:
            out.append(path)
    return out


def _set_path(mapping: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override key {dotted!r} is not of the form section.key")
    node = mapping
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: '{p}' is a value, not a section")
        node = child
    try:
        value = _yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {dotted}={raw!r}: not a valid value ({exc})") from None
    node[parts[-1]] = value


def apply_overrides(mapping: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a nested mapping (values parsed as YAML scalars)."""
    out = _deepcopy(mapping)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. model.num_layers=28)")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), raw.strip())
    return out


def _deepcopy(m):
    if isinstance(m, dict):
        return {k: _deepcopy(v) for k, v in m.items()}
    if isinstance(m, list):
        return [_deepcopy(v) for v in m]
    return m


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of every ``section.key`` (and section) in a YAML text, from PyYAML's node tree."""
    lines: dict[str, int] = {}
    root = yaml.compose(text, Loader=_Loader)
    if not isinstance(root, yaml.MappingNode):
        return lines
    for knode, vnode in root.value:
        section = str(knode.value)
        lines[section] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                lines[f"{section}.{k2.value}"] = k2.start_mark.line + 1
    return lines


def _read_yaml(path) -> tuple[dict, dict[str, str]]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    try:
        mapping = _yaml_load(text)
        lines = _key_lines(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if mapping is None:
        raise ConfigError(f"{path}: the file holds no settings (empty); to run on the defaults, leave the "
                          f"config file out (graphscale train key=value ...)")
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, train:, ...), "
                          f"got {type(mapping).__name__}")
    return mapping, {k: f"{path}:{line}" for k, line in lines.items()}


def _source_of(key: str | None, sources: dict[str, str]) -> str:
    if key and not sources.get(key):  # a bad section name: where its first key was set
        inner = [v for k, v in sources.items() if k.startswith(key + ".") and v]
        if inner:
            return inner[0]
    while key:
        if sources.get(key):
            return sources[key]
        key = key.rpartition(".")[0]
    return ""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides.

    An error names where the bad value came from: ``FILE:LINE`` for a key in the file, the override
    itself for one given on the command line (which wins over the file)."""
    mapping: dict = {}
    sources: dict[str, str] = {}
    if path is not None:
        mapping, sources = _read_yaml(path)
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        sources[key] = f"command-line override {item!r}"
    try:
        if overrides:
            mapping = apply_overrides(mapping, overrides)
        cfg = from_dict(mapping)
    except ConfigError as exc:
        where = _source_of(exc.key, sources) or (str(path) if path is not None else "")
        raise ConfigError(f"{where}: {exc}" if where else str(exc), key=exc.key) from None
    object.__setattr__(cfg, "_sources", {k: sources.get(k, "") or _source_of(k, sources)
                                         for k in _flatten(mapping)})
    return cfg


def where(cfg: Config, key: str) -> str:
    """``" (FILE:LINE)"`` or ``" (command-line override ...)"`` for an explicitly set key, else ``""``."""
    src = explicit_keys(cfg).get(key, "")
    return f" ({src})" if src else ""


def describe() -> str:
    """Every section and key with type, default and help: printed by ``graphscale train --list-keys``."""
    lines = []
    for sec_name, (_, sec_tp) in _fields(Config).items():
        lines.append(f"{sec_name}:")
        for name, (f, tp) in _fields(sec_tp).items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata.get("doc", "")
            choices = f.metadata.get("choices")
            extra = f" [{' | '.join(choices)}]" if choices else ""
            lines.append(f"  {name}: {default!r}  ({_type_name(tp)}){extra}  {doc}")
    return "\n".join(lines)
