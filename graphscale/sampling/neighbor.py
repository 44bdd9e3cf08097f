"""Node-wise neighbour sampling (GraphSAGE) in plain torch ops: no compiled extension.

Hamilton, Ying, Leskovec, "Inductive Representation Learning on Large Graphs" (NeurIPS 2017):
a mini-batch of seed nodes, then for hop ``h = 1..L`` at most ``fanouts[h-1]`` in-neighbours of every
node first reached at hop ``h - 1``. The output is PyG ``NeighborLoader``'s: a relabelled subgraph
whose nodes are the seeds first, then the nodes new at hop 1, hop 2, ...; edges grouped by hop;
``n_id``, ``e_id``, ``batch_size``, ``num_sampled_nodes``, ``num_sampled_edges``.

How it stays vectorised (one Python step per hop, never per node):

* uniform without replacement: nodes with ``degree <= fanout`` keep all their in-edges; for the
  others Floyd's algorithm (Bentley & Floyd, CACM 1987) draws a uniform ``fanout``-subset of
  ``0..degree-1`` for all of them at once, ``fanout`` vector steps of ``O(fanout)`` each;
* weighted (probability proportional to the edge weight, sequentially without replacement):
  Efraimidis-Spirakis keys ``log(u) / w`` over the frontier's edges, top-``fanout`` per node by a sort;
* relabelling: a persistent ``global -> local`` array (``-1`` = not in the batch) that is read,
  written for the new nodes (first occurrence wins, found with a deterministic ``scatter_reduce``
  ``amin``) and reset for the batch's nodes at the end, so a batch costs ``O(its size)``, not ``O(N)``.

Randomness is a pure function of ``(seed, epoch, batch index)``: a batch is the same whether it is
sampled in the main process, a prefetch thread or a worker process, and a resumed run replays it.

:func:`sample_neighbors_loop` is the same sampler written as a plain Python loop (``random.sample``
per node): the naive floor the benchmark compares against, and an independent oracle in tests.
"""
from __future__ import annotations

import math
import queue
import random
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
import torch.utils.data
from torch import Tensor

from graphscale.errors import ConfigError, DataError
from graphscale.ops import CSR, as_csr
from graphscale.sampling.samplers import epoch_seed
from graphscale.sampling.subgraph import Subgraph

__all__ = ["NeighborBatch", "NeighborSampler", "check_fanouts", "check_batch_size", "sample_neighbors",
           "sample_neighbors_loop", "batch_seed"]

_BIG = torch.iinfo(torch.int64).max


# --------------------------------------------------------------------------- checks
def check_fanouts(fanouts, key: str = "fanouts") -> list[int]:
    """Validate a fanout list (``-1`` = all neighbours, else ``>= 1``); returns it as ints."""
    if isinstance(fanouts, (str, bytes)) or not isinstance(fanouts, Sequence):
        raise ConfigError(f"{key} must be a list of neighbours per hop, e.g. [15, 10, 5] (-1 = all), "
                          f"got {fanouts!r}")
    if len(fanouts) == 0:
        raise ConfigError(f"{key} is empty; expected one entry per layer, e.g. [15, 10, 5] (-1 = all)")
    for f in fanouts:
        if isinstance(f, bool) or not isinstance(f, int) or (f < 1 and f != -1):
            raise ConfigError(f"{key}={list(fanouts)!r}: every fanout must be an integer >= 1 or -1 (all "
                              f"neighbours), got {f!r}")
    return [int(f) for f in fanouts]


def check_batch_size(batch_size, key: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{key} must be an integer >= 1 (seed nodes per mini-batch), got {batch_size!r}")
    return int(batch_size)


def _check_nodes(nodes: Tensor, num_nodes: int, key: str) -> Tensor:
    if not isinstance(nodes, Tensor) or nodes.dim() != 1 or nodes.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"{key} must be a 1-D int64 tensor of node ids, got "
                          f"{getattr(nodes, 'dtype', type(nodes).__name__)} of shape {tuple(getattr(nodes, 'shape', ()))}")
    if nodes.numel():
        lo, hi = int(nodes.min()), int(nodes.max())
        if lo < 0 or hi >= num_nodes:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"{key} holds node id {bad}, outside the graph; expected ids in [0, {num_nodes})")
    return nodes.long()


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of mini-batch ``index`` of ``epoch`` (independent of who samples it)."""
    return (epoch_seed(seed, epoch) * 1_000_033 + int(index) * 104_729 + 7) % (2**63 - 1)


# --------------------------------------------------------------------------- output
@dataclass
class NeighborBatch(Subgraph):
    """A sampled mini-batch: a :class:`~graphscale.sampling.subgraph.Subgraph` (``node_ids``,
    local ``edge_index``, ``edge_ids``) with PyG ``NeighborLoader``'s bookkeeping.

    Attributes:
        batch_size: ``b``; the seeds are ``node_ids[:b]`` (local ids ``0..b-1``).
        num_sampled_nodes: ``[L + 1]`` nodes new at hop ``0`` (= ``b``), ``1``, ..., ``L`` (in that
            order in ``node_ids``).
        num_sampled_edges: ``[L]`` edges sampled at hop ``1..L`` (in that order in ``edge_index``);
            hop ``h``'s edges end at nodes of hop ``h - 1``.

    ``edge_index [2, E_sub]`` flows ``edge_index[0] -> edge_index[1]`` (source -> destination), as in PyG.
    """

    batch_size: int = 0
    num_sampled_nodes: list = field(default_factory=list)
    num_sampled_edges: list = field(default_factory=list)

    @property
    def n_id(self) -> Tensor:
        return self.node_ids

    @property
    def e_id(self) -> Tensor:
        return self.edge_ids

    @property
    def seed_ids(self) -> Tensor:
        """Global ids of the seed nodes (the nodes whose outputs the batch computes)."""
        return self.node_ids[:self.batch_size]


# --------------------------------------------------------------------------- sampling
def _csr(graph, num_nodes: Optional[int]) -> CSR:
    if isinstance(graph, CSR):
        if graph.num_rows != graph.num_cols:
            raise DataError(f"neighbour sampling needs a square adjacency, got a CSR of shape {graph.shape}")
        return graph
    return as_csr(graph, num_nodes)


def _ranges(start: Tensor, counts: Tensor, total: int) -> Tensor:
    """Concatenated ``arange(start[i], start[i] + counts[i])`` for all ``i``."""
    excl = torch.cumsum(counts, 0) - counts
    return torch.arange(total, device=start.device) + torch.repeat_interleave(start - excl, counts, output_size=total)


def _floyd(deg: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """``[m, k]`` offsets: row ``i`` a uniform ``k``-subset of ``0..deg[i]-1`` (all ``deg > k``),
    by Floyd's algorithm run for all rows at once."""
    m = deg.numel()
    sel = torch.empty(m, k, dtype=torch.long, device=deg.device)
    # float64 draws: the rounding bias of floor(u * n) is < n / 2^53 per value
    u = torch.rand(k, m, dtype=torch.float64, generator=gen, device=deg.device)
    for j in range(k):
        top = deg - (k - j)  # Floyd: draw t in [0, top]; if taken already, take top itself
        t = torch.minimum(u[j].mul_(top + 1).long(), top)
        if j:
            t = torch.where((sel[:, :j] == t.unsqueeze(1)).any(1), top, t)
        sel[:, j] = t
    return sel


def _uniform_positions(csr: CSR, nodes: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """CSR positions of at most ``k`` uniformly chosen in-edges per node (``k = -1``: all), and the
    number taken per node."""
    # index_select, not t[idx]: advanced indexing was 58% of a batch's time (7.6 ms vs 0.4 ms a call,
    # arxiv-sized graph, 1 thread, torch 2.13 CPU)
    start = csr.rowptr.index_select(0, nodes)
    deg = csr.rowptr.index_select(0, nodes + 1) - start
    cnt = deg if k < 0 else torch.clamp(deg, max=k)
    total = int(cnt.sum())
    if k < 0:
        return _ranges(start, cnt, total), cnt
    big = (deg > k).nonzero().view(-1)
    pos = _ranges(start, cnt, total)  # the first cnt in-edges of every node ...
    if big.numel():  # ... except that nodes with more than k get Floyd's uniform k-subset instead
        excl = torch.cumsum(cnt, 0) - cnt
        slots = (excl.index_select(0, big).unsqueeze(1) + torch.arange(k, device=nodes.device)).view(-1)
        picked = start.index_select(0, big).unsqueeze(1) + _floyd(deg.index_select(0, big), k, gen)
        pos.index_copy_(0, slots, picked.view(-1))
    return pos, cnt


def _weighted_positions(csr: CSR, weight: Tensor, nodes: Tensor, k: int,
                        gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """At most ``k`` in-edges per node drawn one after another without replacement with probability
    proportional to ``weight`` (Efraimidis & Spirakis, IPL 2006: the ``k`` largest ``log(u) / w``);
    zero-weight edges are never drawn. ``k = -1``: every positive-weight edge."""
    start = csr.rowptr.index_select(0, nodes)
    deg = csr.rowptr.index_select(0, nodes + 1) - start
    total = int(deg.sum())
    pos = _ranges(start, deg, total)
    seg = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), deg, output_size=total)
    w = weight.index_select(0, pos)
    u = torch.rand(total, dtype=torch.float64, generator=gen, device=nodes.device).clamp_min_(1e-300)
    key = torch.log(u) / w.double()  # w = 0 -> -inf (never chosen below)
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]  # by node, best key first inside a node
    rank = torch.arange(total, device=nodes.device) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg,
                                                                              output_size=total)
    keep = w[order] > 0
    if k >= 0:
        keep &= rank < k
    chosen = order[keep]
    cnt = torch.bincount(seg[chosen], minlength=nodes.numel())
    return pos[chosen], cnt


def sample_neighbors(graph, seeds: Tensor, fanouts: Sequence[int], generator: Optional[torch.Generator] = None,
                     edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                     _assoc: Optional[Tensor] = None) -> NeighborBatch:
    """Sample the ``len(fanouts)``-hop neighbourhood of ``seeds`` (GraphSAGE, Hamilton et al. 2017).

    Args:
        graph: a :class:`~graphscale.ops.CSR` (rows = destinations) or an ``edge_index [2, E]``
            (messages ``edge_index[0] -> edge_index[1]``; the in-neighbours of ``i`` are sampled).
        seeds: ``[b]`` distinct global node ids.
        fanouts: ``[L]`` in-neighbours per node and hop (``-1`` = all).
        generator: the randomness (default: torch's global generator).
        edge_weight: optional ``[E]`` non-negative weights in CSR order (``graph.value`` order for a
            CSR; ``edge_index`` column order for an ``edge_index``): sample proportionally to them.
        num_nodes: ``N`` for an ``edge_index`` (default: max id + 1).

    Returns:
        :class:`NeighborBatch` with ``node_ids [n_sub]`` (seeds first), ``edge_index [2, E_sub]``
        (local ids), ``edge_ids [E_sub]`` (ids in the original edge order: ``csr.perm`` applied),
        ``batch_size = b``, ``num_sampled_nodes [L + 1]``, ``num_sampled_edges [L]``.
    """
    fanouts = check_fanouts(fanouts)
    csr = _csr(graph, num_nodes)
    n = csr.num_rows
    seeds = _check_nodes(seeds, n, "seeds").to(csr.device)
    if edge_weight is not None:
        if isinstance(graph, Tensor):
            edge_weight = csr.edge_order(edge_weight)
        if edge_weight.shape != (csr.num_edges,):
            raise DataError(f"edge_weight must have shape [E={csr.num_edges}], got {tuple(edge_weight.shape)}")
        if edge_weight.numel() and float(edge_weight.min()) < 0:
            raise DataError(f"edge_weight must be >= 0 for weighted sampling, found {float(edge_weight.min())}")
    gen = generator if generator is not None else torch.default_generator
    assoc = _assoc if _assoc is not None else torch.full((n,), -1, dtype=torch.long, device=csr.device)
    b = seeds.numel()
    ar = torch.arange(b, device=csr.device)
    assoc.index_copy_(0, seeds, ar)
    if not bool((assoc.index_select(0, seeds) == ar).all()):
        assoc.index_fill_(0, seeds, -1)
        raise ConfigError(f"seeds must be distinct node ids; got {b} seeds with repeats")
    try:
        n_ids, srcs, dsts, eids = [seeds], [], [], []
        num_nodes_hop, num_edges_hop = [b], []
        frontier, lo, total_nodes = seeds, 0, b
        for k in fanouts:
            if edge_weight is None:
                pos, cnt = _uniform_positions(csr, frontier, k, gen)
            else:
                pos, cnt = _weighted_positions(csr, edge_weight, frontier, k, gen)
            src = csr.col.index_select(0, pos)
            dst = torch.repeat_interleave(torch.arange(lo, lo + frontier.numel(), device=csr.device), cnt,
                                          output_size=pos.numel())
            loc = assoc.index_select(0, src)
            cand = src.masked_select(loc < 0)
            if cand.numel():
                # Number the new nodes in order of first appearance (PyG's order), deterministically:
                # the smallest candidate position per node wins.
                idx = torch.arange(cand.numel(), device=csr.device)
                assoc.index_fill_(0, cand, _BIG)
                assoc.scatter_reduce_(0, cand, idx, "amin")
                new = cand.masked_select(assoc.index_select(0, cand) == idx)
                assoc.index_copy_(0, new, torch.arange(total_nodes, total_nodes + new.numel(), device=csr.device))
                loc = assoc.index_select(0, src)
            else:
                new = cand
            n_ids.append(new)
            srcs.append(loc)
            dsts.append(dst)
            eids.append(pos if csr.perm is None else csr.perm.index_select(0, pos))
            num_nodes_hop.append(new.numel())
            num_edges_hop.append(pos.numel())
            lo, total_nodes, frontier = total_nodes, total_nodes + new.numel(), new
        node_ids = torch.cat(n_ids)
    finally:
        assoc.index_fill_(0, torch.cat(n_ids), -1)  # leave the map clean for the next batch (O(batch), not O(N))
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)])
    return NeighborBatch(node_ids, edge_index, torch.cat(eids), batch_size=b,
                         num_sampled_nodes=num_nodes_hop, num_sampled_edges=num_edges_hop)


def sample_neighbors_loop(csr: CSR, seeds: Sequence[int], fanouts: Sequence[int], rng: random.Random) -> NeighborBatch:
    """The same sampler as a plain Python loop over nodes (``random.sample`` per node, a dict for
    relabelling): the naive floor of the benchmark and an independent oracle for tests. Uniform only."""
    fanouts = check_fanouts(fanouts)
    rowptr, col = csr.rowptr.tolist(), csr.col.tolist()
    perm = csr.perm.tolist() if csr.perm is not None else None
    local = {}
    for s in (int(v) for v in seeds):
        local[s] = len(local)
    frontier = list(local)
    src, dst, eid, nn_hop, ne_hop = [], [], [], [len(local)], []
    for k in fanouts:
        new, ne = [], 0
        for v in frontier:
            a, d = rowptr[v], rowptr[v + 1] - rowptr[v]
            offs = range(d) if (k < 0 or d <= k) else rng.sample(range(d), k)
            lv = local[v]
            for o in offs:
                u = col[a + o]
                if u not in local:
                    local[u] = len(local)
                    new.append(u)
                src.append(local[u])
                dst.append(lv)
                eid.append(a + o if perm is None else perm[a + o])
                ne += 1
        nn_hop.append(len(new))
        ne_hop.append(ne)
        frontier = new
    return NeighborBatch(torch.tensor(list(local), dtype=torch.long),
                         torch.tensor([src, dst], dtype=torch.long).view(2, -1), torch.tensor(eid, dtype=torch.long),
                         batch_size=nn_hop[0], num_sampled_nodes=nn_hop, num_sampled_edges=ne_hop)


# --------------------------------------------------------------------------- epochs of batches
class NeighborSampler:
    """Mini-batches of seed nodes with their sampled neighbourhoods, one epoch at a time (the
    training sampler of GraphSAGE; the counterpart of PyG's ``NeighborLoader``).

    Args:
        graph: :class:`~graphscale.ops.CSR` or ``edge_index [2, E]`` (in-neighbours are sampled).
        fanouts: ``[L]`` neighbours per hop, ``-1`` = all.
        batch_size: seed nodes per mini-batch (``>= 1``).
        input_nodes: ``[S]`` seed candidates (e.g. the training nodes; default all nodes), or a
            ``BoolTensor[N]`` mask.
        num_nodes: ``N`` for an ``edge_index`` (default: max id + 1).
        shuffle: a fresh seed order per epoch (else ``input_nodes`` order).
        drop_last: drop a last batch smaller than ``batch_size``.
        seed: run seed; epoch ``e``'s order and batch ``i``'s draws come from ``(seed, e, i)``.
        edge_weight: optional ``[E]`` weights (``edge_index`` order, or CSR order for a CSR):
            sample proportionally to them.
        prefetch: ``0`` = sample in the caller's thread; ``p >= 1`` = a background thread keeps up to
            ``p`` batches ready (torch ops release the GIL, so sampling overlaps the caller's work).
        num_workers: ``0`` = no worker processes; ``w >= 1`` = a ``torch.utils.data.DataLoader``
            with ``w`` processes samples the batches (``prefetch`` is then its ``prefetch_factor``).
        rank, world_size: under DDP, rank ``r`` takes batches ``r, r + W, ...`` of every epoch (the
            global batch order is the same on all ranks; ``len()`` is this rank's share).

    Batches are identical whatever ``prefetch`` / ``num_workers`` are (tested).
    """

    def __init__(self, graph, fanouts: Sequence[int], batch_size: int, input_nodes: Optional[Tensor] = None,
                 num_nodes: Optional[int] = None, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 edge_weight: Optional[Tensor] = None, prefetch: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.fanouts = check_fanouts(fanouts)
        self.batch_size = check_batch_size(batch_size)
        for key, v in (("prefetch", prefetch), ("num_workers", num_workers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{key} must be an integer >= 0, got {v!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ConfigError(f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size")
        self.csr = _csr(graph, num_nodes)
        n = self.csr.num_rows
        if input_nodes is None:
            input_nodes = torch.arange(n)
        elif isinstance(input_nodes, Tensor) and input_nodes.dtype == torch.bool:
            if input_nodes.shape != (n,):
                raise ConfigError(f"input_nodes mask must have shape [N={n}], got {tuple(input_nodes.shape)}")
            input_nodes = input_nodes.nonzero().view(-1)
        input_nodes = _check_nodes(input_nodes, n, "input_nodes")
        if input_nodes.numel() == 0:
            raise ConfigError("input_nodes is empty: no seed nodes to sample from")
        if torch.unique(input_nodes).numel() != input_nodes.numel():
            raise ConfigError(f"input_nodes holds repeated node ids ({input_nodes.numel()} ids, "
                              f"{torch.unique(input_nodes).numel()} distinct); expected distinct ids")
        self.input_nodes = input_nodes
        if edge_weight is not None and isinstance(graph, Tensor):
            edge_weight = self.csr.edge_order(edge_weight)
        if edge_weight is not None and edge_weight.numel() and float(edge_weight.min()) < 0:
            raise DataError(f"edge_weight must be >= 0 for weighted sampling, found {float(edge_weight.min())}")
        self.edge_weight = edge_weight
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.prefetch, self.num_workers = prefetch, num_workers
        self.rank, self.world_size = rank, world_size
        self._assoc: Optional[Tensor] = None

    # ------------------------------------------------------------------ batches
    @property
    def num_batches(self) -> int:
        """Batches per epoch over all ranks."""
        s = self.input_nodes.numel()
        return s // self.batch_size if self.drop_last else math.ceil(s / self.batch_size)

    def __len__(self) -> int:
        """This rank's batches per epoch."""
        total = self.num_batches
        return total // self.world_size + (1 if self.rank < total % self.world_size else 0)

    def seed_batches(self, epoch: int) -> list[Tensor]:
        """All ranks' seed batches of ``epoch`` (global ids), in order."""
        nodes = self.input_nodes
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            nodes = nodes[torch.randperm(nodes.numel(), generator=g)]
        out = list(torch.split(nodes, self.batch_size))
        if self.drop_last and out and out[-1].numel() < self.batch_size:
            out.pop()
        return out

    def sample(self, seeds: Tensor, generator: Optional[torch.Generator] = None) -> NeighborBatch:
        """One batch for ``seeds`` (reusing this sampler's relabelling buffer; not thread-safe)."""
        if self._assoc is None:
            self._assoc = torch.full((self.csr.num_rows,), -1, dtype=torch.long, device=self.csr.device)
        return sample_neighbors(self.csr, seeds, self.fanouts, generator, self.edge_weight, _assoc=self._assoc)

    def _batch(self, epoch: int, index: int, seeds: Tensor) -> NeighborBatch:
        return self.sample(seeds, torch.Generator(device=self.csr.device).manual_seed(batch_seed(self.seed, epoch, index)))

    def _jobs(self, epoch: int, steps: Optional[Sequence[int]]) -> list[tuple[int, Tensor]]:
        batches = self.seed_batches(epoch)
        if steps is None:
            return [(i, batches[i]) for i in range(self.rank, len(batches), self.world_size)]
        bad = [i for i in steps if not 0 <= i < len(batches)]
        if bad:
            raise ConfigError(f"batch index {bad[0]} out of range: epoch {epoch} has {len(batches)} batches")
        return [(i, batches[i]) for i in steps]

    def epoch(self, epoch: int, steps: Optional[Sequence[int]] = None) -> Iterator[NeighborBatch]:
        """This rank's batches of ``epoch``; or, with ``steps``, exactly the global batches with
        those indices, in that order (a trainer that deals batches to ranks itself; repeats allowed)."""
        jobs = self._jobs(epoch, steps)
        if self.num_workers > 0:
            yield from self._worker_epoch(epoch, jobs)
        elif self.prefetch > 0:
            yield from self._thread_epoch(epoch, jobs)
        else:
            for i, seeds in jobs:
                yield self._batch(epoch, i, seeds)

    def __iter__(self) -> Iterator[NeighborBatch]:
        return self.epoch(0)

    # ------------------------------------------------------------------ overlap
    def _thread_epoch(self, epoch: int, jobs) -> Iterator[NeighborBatch]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def work():
            try:
                for i, seeds in jobs:
                    if stop.is_set():
                        return
                    q.put(self._batch(epoch, i, seeds))
                q.put(done)
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)

        t = threading.Thread(target=work, name="graphscale-neighbor-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)

    def _worker_epoch(self, epoch: int, jobs) -> Iterator[NeighborBatch]:
        from torch.utils.data import DataLoader

        loader = DataLoader(_EpochJobs(self, epoch, jobs), batch_size=None, shuffle=False,
                            num_workers=self.num_workers, prefetch_factor=max(self.prefetch, 1) if self.num_workers else None,
                            collate_fn=_identity)
        yield from loader


def _identity(x):
    return x


class _EpochJobs(torch.utils.data.Dataset):
    """One epoch's batches as a map-style data set (a worker process samples item ``j``)."""

    def __init__(self, sampler: NeighborSampler, epoch: int, jobs):
        self.sampler, self.epoch, self.jobs = sampler, epoch, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, j: int) -> NeighborBatch:
        i, seeds = self.jobs[j]
        return self.sampler._batch(self.epoch, i, seeds)
