"""Training from a partitioned store (``data.partitions``; docs/partitioned.md).

* :func:`resolve_store_config` -- reads the store's ``meta.json`` and fills the ``data`` section from
  it (the data set and its shape are the store's), the sampler's ``num_parts`` / ``partitioner`` and
  the evaluation (``sampler.eval_name=parts``); a key the config sets explicitly must agree with the
  store, and samplers or evaluations that need the whole graph are refused -- all before any part is
  opened or any process group joined.
* :func:`open_rank_data` -- this rank's parts (:class:`~graphscale.sampling.store_sampler.RankParts`,
  part ``p`` to rank ``p mod W``), files verified, features memory-mapped; shaped like a
  :class:`~graphscale.data.datasets.NodeDataset` where the trainer reads one.
* :func:`evaluate_store` -- each rank predicts its own parts (with their halo when the store has
  one), the rows of the split nodes are gathered by node id on rank 0 and scored there with the data
  set's metric (OGB Evaluator): no rank holds all features, only the ``[split nodes, T]`` logits.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from graphscale.data.part_store import SPLITS, StoreError, owned_parts, read_meta
from graphscale.errors import ConfigError
from graphscale.sampling.store_sampler import RankParts, StoreClusterSampler, StoreRandomSampler
from graphscale.train import distributed
from graphscale.train.config import Config, explicit_keys, where

#: data keys that do not describe the data set (not recorded in, nor compared with, the store)
DATA_KEYS_NOT_IN_STORE = ("root", "partitions", "store_verify")
#: samplers that need the whole graph in every process
WHOLE_GRAPH_SAMPLERS = ("full", "neighbor")
STORE_SAMPLERS = ("cluster", "random")
_FIXED_BY_STORE = ("imbalance", "vertex_weight", "cache_dir")


def resolve_store_config(cfg: Config) -> Config:
    """Fill ``cfg`` (in place) from the store ``cfg.data.partitions`` names and check it; returns it.

    Rules (each violation a :class:`~graphscale.errors.ConfigError` or
    :class:`~graphscale.data.part_store.StoreError` naming the key or file):

    * ``data.*`` (except ``root``, ``partitions``, ``store_verify``) are taken from the store; one set
      explicitly must equal the store's value (a store of another data set or shape is refused);
    * ``sampler.name`` must be ``cluster`` or ``random``; ``full`` / ``neighbor`` need the whole graph;
    * with ``cluster``, ``sampler.num_parts`` / ``sampler.partitioner`` are the store's (explicit
      values must agree); with ``random``, ``num_parts`` is the random parts per epoch, as in memory;
      ``imbalance`` / ``vertex_weight`` were fixed when the store was written (an explicit value must
      be the recorded one), ``cache_dir`` does not apply;
    * ``sampler.eval_name`` is ``parts`` (the default with a store); ``full`` / ``random`` / ``metis``
      / ``layerwise`` set explicitly are refused (they need the whole graph);
    * ``train.mode=layerwise`` is refused (it aggregates over the whole graph).
    """
    d, s = cfg.data, cfg.sampler
    if not d.partitions:
        if s.eval_name == "parts":
            raise ConfigError(f"sampler.eval_name=parts{where(cfg, 'sampler.eval_name')} evaluates the parts of a "
                              f"partitioned store, but data.partitions is not set; set data.partitions=DIR or "
                              f"another sampler.eval_name", key="sampler.eval_name")
        return cfg
    if cfg.train.mode == "layerwise":
        raise ConfigError(f"data.partitions{where(cfg, 'data.partitions')} with train.mode=layerwise: layer-wise "
                          f"training aggregates over the whole graph; use train.mode=standard with "
                          f"sampler.name=cluster", key="train.mode")
    if s.name not in STORE_SAMPLERS:
        why = "needs the whole graph in every process" if s.name in WHOLE_GRAPH_SAMPLERS else \
            "has no partitioned-store version yet"
        raise ConfigError(f"sampler.name={s.name}{where(cfg, 'sampler.name')} {why}, but data.partitions="
                          f"{d.partitions} gives each process only its parts; use sampler.name=cluster or random",
                          key="sampler.name")
    explicit = explicit_keys(cfg)
    root = os.path.expanduser(d.partitions)
    meta = read_meta(root)
    written = meta.get("method_options", {})
    for key in _FIXED_BY_STORE:  # accepted only where it states what the store was written with
        if f"sampler.{key}" in explicit and not (s.name == "cluster" and written.get(key, object()) == getattr(s, key)):
            raise ConfigError(f"sampler.{key}={getattr(s, key)!r} is set{where(cfg, 'sampler.' + key)} but with "
                              f"data.partitions the partition is the store's, fixed when it was written (with "
                              f"{key}={written.get(key, 'not recorded')!r}); remove it", key=f"sampler.{key}")
    if s.eval_name != "parts":
        if "sampler.eval_name" in explicit:
            raise ConfigError(f"sampler.eval_name={s.eval_name}{where(cfg, 'sampler.eval_name')} needs the whole "
                              f"graph, but data.partitions={d.partitions} gives each process only its parts; use "
                              f"sampler.eval_name=parts (each process predicts its own parts)", key="sampler.eval_name")
        s.eval_name = "parts"
    stored = meta["data_config"]
    for key, value in stored.items():
        if key in DATA_KEYS_NOT_IN_STORE or not hasattr(d, key):
            continue
        if f"data.{key}" in explicit and getattr(d, key) != value:
            raise StoreError(f"data.{key}={getattr(d, key)!r}{where(cfg, 'data.' + key)} but the store {root} was "
                             f"written from data.{key}={value!r} ({root}/meta.json); use a store of this data set "
                             f"(graphscale data partition) or drop data.{key}")
    for key, value in stored.items():
        if key not in DATA_KEYS_NOT_IN_STORE and hasattr(d, key):
            setattr(d, key, value)
    fixed = (("num_parts", meta["num_parts"]), ("partitioner", meta["method"])) if s.name == "cluster" else ()
    for key, value in fixed:  # Cluster-GCN's clusters are the store's parts
        if f"sampler.{key}" in explicit and getattr(s, key) != value:
            raise StoreError(f"sampler.{key}={getattr(s, key)!r}{where(cfg, 'sampler.' + key)} but the store {root} "
                             f"has {key}={value!r} ({root}/meta.json); drop sampler.{key} or write a store with it")
        setattr(s, key, value)
    return cfg


def check_store_world(cfg: Config, world_size: int) -> None:
    """Refuse ``world_size`` processes (times ``train.grad_accum`` groups) on a store with fewer parts,
    before any process is started (the same checks run again in every rank)."""
    meta = read_meta(os.path.expanduser(cfg.data.partitions))
    owned_parts(meta["num_parts"], 0, world_size)
    groups = world_size * cfg.train.grad_accum
    if groups > meta["num_parts"]:
        raise ConfigError(f"{world_size} process(es) x train.grad_accum={cfg.train.grad_accum} = {groups} groups of "
                          f"parts, but the store {cfg.data.partitions} has only {meta['num_parts']} part(s); partition "
                          f"into >= {groups} parts or lower train.grad_accum", key="train.grad_accum")


@dataclass
class RankData:
    """This rank's share of a store, with the attributes of a
    :class:`~graphscale.data.datasets.NodeDataset` that the trainer reads (``x``, ``y``,
    ``edge_attr``, ``split`` in local ids; ``num_nodes`` = local nodes)."""

    name: str
    parts: RankParts
    meta: dict
    root: str
    owned: list
    task: str
    num_outputs: int
    metric: str
    evaluator: str | None

    @property
    def x(self):
        return self.parts.x

    @property
    def y(self):
        return self.parts.y

    @property
    def edge_attr(self):
        return self.parts.edge_attr

    @property
    def split(self):
        return self.parts.split

    @property
    def num_nodes(self) -> int:
        return self.parts.num_nodes

    @property
    def edge_index(self):
        return None  # never the whole graph

    def describe(self) -> str:
        m = self.meta
        return (f"{self.name} from the store {self.root}: {m['num_nodes']:,} nodes, {m['num_edges']:,} edges in "
                f"{m['num_parts']} parts; this process holds parts {_ranges(self.owned)} ({self.num_nodes:,} local "
                f"nodes, features memory-mapped)")


def _ranges(parts: list) -> str:
    if len(parts) <= 6:
        return ", ".join(map(str, parts))
    return f"{parts[0]}, {parts[1]}, ..., {parts[-1]} ({len(parts)})"


def open_rank_data(cfg: Config, rank: int, world_size: int) -> RankData:
    """Open this rank's parts of ``cfg.data.partitions`` (files verified as ``data.store_verify`` says).
    Every rank agrees on success before training, so a file only one rank cannot read stops all."""
    root = os.path.expanduser(cfg.data.partitions)
    error, data = None, None
    try:
        meta = read_meta(root)
        owned = owned_parts(meta["num_parts"], rank, world_size)
        parts = RankParts(root, meta, owned, checksum=cfg.data.store_verify == "sha256",
                          cross=needs_cross_edges(cfg, meta))
        data = RankData(meta["dataset"], parts, meta, root, owned, meta["task"], int(meta["num_outputs"]),
                        meta["metric"], meta["evaluator"])
    except StoreError as exc:
        error = str(exc)
    distributed.agree(error, StoreError)
    return data


def needs_cross_edges(cfg: Config, meta: dict) -> bool:
    """Whether training and evaluation read the parts' entering edges: batches of several parts
    (``clusters_per_batch > 1``, random batches) and halo stores do; Cluster-GCN with one part per
    step on a store without a halo never does, so a rank does not hold them (40 bytes per entering
    edge in memory)."""
    s = cfg.sampler
    return int(meta["halo"]) == 1 or s.name != "cluster" or s.clusters_per_batch > 1


def build_store_sampler(cfg: Config, data: RankData, rank: int, world_size: int):
    """The store version of ``sampler.name``: Cluster-GCN over the store's parts, or random parts
    of the rank's nodes every epoch."""
    s = cfg.sampler
    if s.name == "random":
        return StoreRandomSampler(data.parts, s.num_parts, seed=cfg.train.seed, rank=rank, world_size=world_size,
                                  grad_accum=cfg.train.grad_accum)
    return StoreClusterSampler(data.parts, clusters_per_batch=s.clusters_per_batch, seed=cfg.train.seed,
                               diag_lambda=s.diag_lambda, rank=rank, world_size=world_size,
                               grad_accum=cfg.train.grad_accum)


@torch.no_grad()
def predict_store(trainer) -> dict:
    """``{split: (global ids, logits, labels)}`` of this rank's inner split nodes: every owned part
    predicted as if alone (with its halo where the store has one; :meth:`RankParts.blocks`),
    normalised as training batches are."""
    trainer.model.eval()
    rp: RankParts = trainer.data.parts
    s = trainer.cfg.sampler
    out = {k: ([], [], []) for k in SPLITS}
    # clusters_per_batch parts per forward pass, side by side (block-diagonal): each part's outputs are
    # those of the part alone, at the cost of a training step's memory
    owned = [P.index for P in rp.parts]
    for i in range(0, len(owned), s.clusters_per_batch):
        chunk = owned[i:i + s.clusters_per_batch]
        sub, starts = rp.blocks(chunk, diag_lambda=s.diag_lambda)
        logits = trainer._forward(sub).float().cpu()
        for p, start in zip(chunk, starts):
            part = rp.parts[rp.index[p]]
            for k in SPLITS:
                loc = part.split[k]
                out[k][0].append(part.nodes[loc])
                out[k][1].append(logits[start + loc])
                out[k][2].append(part.y[loc])
    return {k: tuple(torch.cat(v) for v in out[k]) for k in SPLITS}


def evaluate_store(trainer) -> dict:
    """Scores of every split: predictions of all ranks gathered by node id on rank 0, scored there,
    broadcast (collective: every rank calls it; a problem found on rank 0 is raised on every rank)."""
    mine = predict_store(trainer)
    gathered = distributed.gather_object(mine)
    scores, error = None, None
    if trainer.is_main:
        scores = {}
        sizes = trainer.data.meta["split_sizes"]
        for k in SPLITS:
            ids = torch.cat([g[k][0] for g in gathered])
            distinct = torch.unique(ids).numel()
            if ids.numel() != sizes[k] or distinct != ids.numel():
                error = (f"evaluation gathered {ids.numel()} {k} predictions ({distinct} distinct nodes) but the "
                         f"store {trainer.data.root} has {sizes[k]} {k} nodes")
                break
            order = torch.argsort(ids)
            logits = torch.cat([g[k][1] for g in gathered])[order]
            y = torch.cat([g[k][2] for g in gathered])[order]
            scores[k] = trainer.metric(y, logits) if ids.numel() else float("nan")
    scores, error = distributed.broadcast_object((scores, error))
    if error:
        raise StoreError(error)
    return scores
