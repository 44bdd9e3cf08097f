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


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r}; expected one of {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg, info)


@register_model("deepergcn")
def _deepergcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import DeeperGCN
    return DeeperGCN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers,
                     edge_dim=info.edge_dim, dropout=cfg.dropout, aggr=cfg.aggr, t=cfg.t,
                     learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers, norm=cfg.norm, block=cfg.block,
                     conv=cfg.conv)


@register_model("gcn")
def _gcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import GCN
    return GCN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers, cfg.dropout)


def _revgnn(cfg: ModelConfig, info: DatasetInfo, weight_tied: bool) -> nn.Module:
    from graphscale.nn.models import RevGNN
    return RevGNN(info.num_features, cfg.hidden_channels, info.num_outputs, cfg.num_layers,
                  num_groups=cfg.num_groups, edge_dim=info.edge_dim, dropout=cfg.dropout, aggr=cfg.aggr,
                  t=cfg.t, learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers, weight_tied=weight_tied)


@register_model("revgnn")
def _revgnn_untied(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return _revgnn(cfg, info, weight_tied=False)


@register_model("wt-revgnn")
def _revgnn_tied(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return _revgnn(cfg, info, weight_tied=True)


@register_model("deq-gnn")
def _deq_gnn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    from graphscale.nn.models import DEQGNN
    return DEQGNN(info.num_features, cfg.hidden_channels, info.num_outputs, edge_dim=info.edge_dim,
                  dropout=cfg.dropout, aggr=cfg.aggr, t=cfg.t, learn_t=cfg.learn_t, mlp_layers=cfg.mlp_layers,
                  solver=cfg.solver, max_iter=cfg.max_iter, tol=cfg.tol)


# --------------------------------------------------------------------------------------------
# Samplers: fn(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir) -> sampler with
# len(sampler) steps per epoch and sampler.epoch(epoch) -> Iterator[Subgraph].
SAMPLERS: dict[str, Callable] = {}


def register_sampler(name: str):
    def deco(fn):
        SAMPLERS[name] = fn
        return fn
    return deco


def build_sampler(cfg: SamplerConfig, edge_index, num_nodes: int, seed: int, cache_dir: str | None = None,
                  train_mask=None):
    """``train_mask`` (``BoolTensor[N]``, optional) reaches builders that balance training nodes
    (``cluster`` with ``vertex_weight=train``)."""
    if cfg.name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {cfg.name!r}; expected one of {', '.join(sorted(SAMPLERS))}")
    extra = {} if train_mask is None else {"train_mask": train_mask}
    return SAMPLERS[cfg.name](cfg, edge_index, num_nodes, seed, cache_dir, **extra)


@register_sampler("full")
def _full(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, **_):
    from graphscale.sampling.samplers import FullGraphSampler
    return FullGraphSampler(edge_index, num_nodes)


@register_sampler("random")
def _random(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, **_):
    from graphscale.sampling.samplers import PartitionSampler
    return PartitionSampler(edge_index, num_nodes, cfg.num_parts, seed, partitioner="random")


@register_sampler("cluster")
def _cluster(cfg: SamplerConfig, edge_index, num_nodes, seed, cache_dir, train_mask=None):
    from graphscale.sampling.cluster import build_cluster_sampler
    return build_cluster_sampler(edge_index, num_nodes, num_parts=cfg.num_parts,
                                 clusters_per_batch=cfg.clusters_per_batch, partitioner=cfg.partitioner,
                                 diag_lambda=cfg.diag_lambda, imbalance=cfg.imbalance,
                                 vertex_weight=cfg.vertex_weight, seed=seed,
                                 cache_dir=cfg.cache_dir or cache_dir, train_mask=train_mask)


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
