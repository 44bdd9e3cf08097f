"""Training and evaluation batches from the parts of a partitioned store that one rank owns.

:class:`RankParts` opens the parts a rank owns (:func:`graphscale.data.part_store.owned_parts`:
part ``p`` to rank ``p mod W``) and gives them one *local* id space: the owned parts in ascending
order, each with its inner nodes then its halo nodes; edges likewise (each part's intra edges, then
its entering edges). Batches are :class:`~graphscale.sampling.subgraph.Subgraph` objects whose
``node_ids`` / ``edge_ids`` are those local ids, so the trainer gathers features exactly as it does
in memory (``x[sub.node_ids]``), here from the memory-mapped ``x.npy`` of each part
(:class:`RowStore`).

:class:`StoreClusterSampler` is Cluster-GCN (Chiang et al., KDD 2019, Sec. 3.2) on the rank's parts:
``q`` parts per step, the edges between two chosen parts kept (they are the entering edges whose
source part is in the batch), and with a ``--halo 1`` store also each part's 1-hop in-neighbours
from outside the batch (features included; they feed the inner nodes and carry no loss). With one
process and no gradient accumulation its batches are those of the in-memory
:class:`~graphscale.sampling.cluster.ClusterGCNSampler` on the same partition and seed, node for node
and edge for edge (``tests/train/test_partitioned.py``).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from graphscale.data.part_store import Part, files_of, gather_rows, open_part, verify_files
from graphscale.errors import ConfigError
from graphscale.sampling.cluster import diag_enhanced_weights
from graphscale.sampling.samplers import epoch_seed
from graphscale.sampling.subgraph import Subgraph


class RowStore:
    """Rows of several ``[n_k, F]`` arrays (memory-mapped ``.npy`` files) addressed as one ``[sum n_k, F]``
    matrix; ``store[idx]`` reads only rows ``idx`` (:func:`graphscale.data.part_store.gather_rows`).
    Quacks like the in-memory feature tensor where the trainer uses it (indexing, ``size``, ``to``)."""

    def __init__(self, arrays: list, device: torch.device | str = "cpu"):
        self.arrays = arrays
        sizes = [a.shape[0] for a in arrays]
        self.offsets = torch.zeros(len(arrays) + 1, dtype=torch.long)
        self.offsets[1:] = torch.tensor(sizes, dtype=torch.long).cumsum(0)
        self.device = torch.device(device)
        self.shape = (int(self.offsets[-1]), *arrays[0].shape[1:])
        self.dtype = torch.from_numpy(np.empty(0, arrays[0].dtype)).dtype

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def to(self, device) -> "RowStore":
        out = RowStore.__new__(RowStore)
        out.__dict__.update(self.__dict__)
        out.device = torch.device(device)
        return out

    def __getitem__(self, idx: Tensor) -> Tensor:
        return gather_rows(self.arrays, self.offsets, idx).to(self.device)

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays)


def _subgraph(node_ids: Tensor, ei: Tensor, lid: Tensor, diag_lambda: float | None) -> Subgraph:
    """The batch, with Cluster-GCN's diagonal-enhanced weights when ``diag_lambda`` is set."""
    weight = None
    if diag_lambda is not None:  # A + I adds one self-loop per node; drop the graph's own
        keep = (ei[0] != ei[1]).nonzero().view(-1)
        ei, lid = ei[:, keep], lid[keep]
        weight = diag_enhanced_weights(ei, node_ids.numel(), diag_lambda)
    return Subgraph(node_ids, ei, lid, weight)


def _narrow(index: Tensor) -> Tensor:
    """``index`` (positions ``< 2**31``) as int32 where it fits: half the bytes of int64."""
    return index.int() if index.numel() < 2**31 else index


class RankParts:
    """The parts of a store that one rank owns, in one local id space (module docstring).

    Args:
        root: the store folder.
        meta: its ``meta.json`` (:func:`graphscale.data.part_store.read_meta`).
        parts: the part ids to open (ascending).
        checksum: verify each opened file's sha256 (size and ``.npy`` header are always checked).
        cross: read the entering edges' index arrays (:func:`~graphscale.data.part_store.open_part`).
            Batches of several parts, halo stores and random batches need them; ``False`` (a
            Cluster-GCN run with ``q = 1`` on a store without a halo never reads them) keeps 40 bytes
            per entering edge out of memory, and those uses are refused.

    Attributes:
        parts: the opened :class:`~graphscale.data.part_store.Part` objects.
        num_nodes: ``L``, local nodes (inner and halo of every owned part).
        x: :class:`RowStore` ``[L, F]``; ``edge_attr``: ``[local edges, D]`` or ``None``.
        y: ``[L]`` / ``[L, T]`` labels (zero on halo rows); ``split``: key -> local ids of inner nodes.
        global_ids: ``[L]`` global node id of every local node.
        halo: whether the store holds halo nodes (written with ``--halo 1``).
    """

    def __init__(self, root: str, meta: dict, parts: list[int], checksum: bool = True, cross: bool = True):
        if not cross and int(meta["halo"]) == 1:
            raise ConfigError(f"the store {root} has halo nodes: its batches and evaluation need the entering edges "
                              f"(RankParts(cross=False) is for stores without a halo)")
        verify_files(root, meta, files_of(meta, parts), checksum=checksum)
        self.root, self.meta, self.num_parts_total = root, meta, int(meta["num_parts"])
        self.cross = cross
        self.parts: list[Part] = [open_part(root, meta, p, cross=cross) for p in parts]
        self.index = {p: k for k, p in enumerate(parts)}
        self.owned_index = torch.full((self.num_parts_total,), -1, dtype=torch.long)  # part id -> k (-1: not owned)
        self.owned_index[torch.tensor(parts, dtype=torch.long)] = torch.arange(len(parts))
        self.halo = int(meta["halo"]) == 1
        nsz = [P.nodes.numel() for P in self.parts]
        self.node_off = torch.zeros(len(parts) + 1, dtype=torch.long)
        self.node_off[1:] = torch.tensor(nsz, dtype=torch.long).cumsum(0)
        esz = [P.num_intra + P.num_cross for P in self.parts]
        self.edge_off = torch.zeros(len(parts) + 1, dtype=torch.long)
        self.edge_off[1:] = torch.tensor(esz, dtype=torch.long).cumsum(0)
        self.num_nodes = int(self.node_off[-1])
        # Each part's intra edges in global edge-id order (the file holds them in CSR order: by target,
        # ids ascending inside a row only), as int32 positions (4 bytes per edge, no expanded target
        # array kept): a one-part batch is then already in the order ClusterGCNSampler gives, with no
        # per-step sort of its edges (measured on synthetic products x0.2, 64 parts, q=1: the argsort
        # and the three gathers by its permutation were ~70% of a 55 ms batch).
        self._by_eid = [_narrow(torch.argsort(P.eid)) for P in self.parts]
        # the entering edges as the writer stores them: ids ascending (checked, else batches sort)
        self._cross_sorted = [cross and bool((P.cross_eid[1:] > P.cross_eid[:-1]).all()) for P in self.parts]
        self.x = RowStore([P.x for P in self.parts])
        self.edge_attr = None
        if meta["edge_dim"] is not None:
            self.edge_attr = RowStore([a for P in self.parts for a in (P.edge_attr, P.cross_edge_attr)])
        ys = []
        for P in self.parts:
            pad = torch.zeros((P.num_halo, *P.y.shape[1:]), dtype=P.y.dtype)
            ys.append(torch.cat([P.y, pad]))
        self.y = torch.cat(ys)
        self.global_ids = torch.cat([P.nodes for P in self.parts])
        self.split = {k: torch.cat([self.node_off[i] + P.split[k] for i, P in enumerate(self.parts)])
                      for k in self.parts[0].split}

    def index_bytes(self) -> int:
        """Bytes of the in-memory arrays (indices and labels; features stay mapped)."""
        total = 0
        for P in self.parts:
            total += sum(t.numel() * t.element_size() for t in (P.nodes, P.rowptr, P.col, P.eid, P.cross_src,
                                                                 P.cross_part, P.cross_pos, P.cross_dst, P.cross_eid, P.y)
                         if t is not None)
        return total + sum(t.numel() * t.element_size() for t in (self.y, self.global_ids, *self._by_eid))

    def intra_edges(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Intra edges of owned part ``self.parts[k]`` in global edge-id order: ``(src, dst, pos)``,
        ``[e]`` int64 each: part-local source and target, and the edge's position in the part's
        stored (CSR) order (its local edge id minus ``edge_off[k]``)."""
        P, by = self.parts[k], self._by_eid[k]
        return P.col[by], P.intra_dst()[by], by.long()

    def batch(self, parts: list[int], halo: bool | None = None, diag_lambda: float | None = None) -> Subgraph:
        """The subgraph of the owned ``parts`` (global part ids, distinct) with every edge among them,
        and with ``halo`` (default: when the store has halo nodes) also the edges entering from
        outside the batch, their sources appended as halo nodes (deduplicated).

        Node order: the chosen parts' inner nodes, part after part (ascending global id inside a
        part), then the halo nodes (ascending global id). Edge order: by the position of the source's
        part in ``parts`` (halo sources last), then by global edge id -- as
        :meth:`graphscale.sampling.cluster.ClusterGCNSampler.batch` orders them.

        Args:
            parts: part ids this rank owns.
            halo: include the halo (needs a ``--halo 1`` store).
            diag_lambda: attach Cluster-GCN's diagonal-enhanced weights (self-loops dropped).
        """
        halo = self.halo if halo is None else halo
        if halo and not self.halo:
            raise ConfigError("halo batches need a store written with --halo 1")
        ks = [self.index[p] for p in parts]
        if len(ks) == 1 and not halo:
            return self._one_part(ks[0], diag_lambda)
        if not self.cross:
            raise ConfigError(f"a batch of {len(ks)} parts needs the edges between them, but these parts were opened "
                              f"without their entering edges (RankParts(cross=False))")
        inner = torch.tensor([self.parts[k].num_inner for k in ks], dtype=torch.long)
        boff = torch.zeros(len(ks) + 1, dtype=torch.long)
        boff[1:] = inner.cumsum(0)
        n_in = int(boff[-1])
        where = torch.full((self.num_parts_total,), -1, dtype=torch.long)
        where[torch.tensor(parts, dtype=torch.long)] = torch.arange(len(parts))
        node_ids = torch.cat([torch.arange(int(self.node_off[k]), int(self.node_off[k]) + self.parts[k].num_inner)
                              for k in ks])
        # a one-part batch comes out in (key, edge id) order by construction: the part's intra edges
        # (key 0, ids ascending), then with a halo its entering edges (key 1, ids ascending; no
        # entering edge has its source in a one-part batch); others are sorted below
        in_order = len(ks) == 1 and self._cross_sorted[ks[0]]
        src, dst, key, eid, lid = [], [], [], [], []
        h_glob, h_row, h_src_at = [], [], []
        for i, k in enumerate(ks):
            P, b, eo = self.parts[k], int(boff[i]), int(self.edge_off[k])
            # (sorted below otherwise: there the stored order is as good and needs no gathers)
            s_k, d_k, pos = self.intra_edges(k) if in_order else (P.col, P.intra_dst(), torch.arange(P.num_intra))
            src.append(b + s_k)
            dst.append(b + d_k)
            lid.append(eo + pos)
            cpos = where[P.cross_part]
            inb = (cpos >= 0).nonzero().view(-1)
            src.append(boff[cpos[inb]] + P.cross_pos[inb])
            dst.append(b + P.cross_dst[inb])
            lid.append(eo + P.num_intra + inb)
            if not in_order:
                key += [torch.full((P.num_intra,), i, dtype=torch.long), cpos[inb]]
                eid += [P.eid, P.cross_eid[inb]]
            if halo:
                ext = (cpos < 0).nonzero().view(-1)
                g = P.cross_src[ext]
                halo_ids = P.nodes[P.num_inner:]
                h_glob.append(g)
                h_row.append(int(self.node_off[k]) + P.num_inner + torch.searchsorted(halo_ids, g))
                h_src_at.append(len(src))  # filled below, once the halo nodes are numbered
                src.append(g)
                dst.append(b + P.cross_dst[ext])
                lid.append(eo + P.num_intra + ext)
                if not in_order:
                    key.append(torch.full((ext.numel(),), len(ks), dtype=torch.long))
                    eid.append(P.cross_eid[ext])
        if halo and h_glob:
            glob = torch.cat(h_glob)
            uniq, inv = torch.unique(glob, return_inverse=True)
            rows = torch.empty(uniq.numel(), dtype=torch.long)
            rows[inv] = torch.cat(h_row)  # any copy of a halo node holds the same feature row
            node_ids = torch.cat([node_ids, rows])
            start = 0
            for at, g in zip(h_src_at, h_glob):
                src[at] = n_in + inv[start:start + g.numel()]
                start += g.numel()
        if in_order:
            ei, lid = torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(lid)
        else:
            src, dst, key, eid, lid = (torch.cat(t) for t in (src, dst, key, eid, lid))
            order = torch.argsort(key * (int(self.meta["num_edges"]) + 1) + eid, stable=True)
            ei = torch.stack([src[order], dst[order]])
            lid = lid[order]
        return _subgraph(node_ids, ei, lid, diag_lambda)

    def _one_part(self, k: int, diag_lambda: float | None) -> Subgraph:
        """:meth:`batch` of the one owned part ``self.parts[k]`` without a halo (Cluster-GCN with
        ``q = 1``): its inner nodes and intra edges, in edge-id order as stored in ``_by_eid``, written
        straight into the batch's arrays (no sort, no concatenation)."""
        P, by = self.parts[k], self._by_eid[k]
        no = int(self.node_off[k])
        ei = torch.empty((2, P.num_intra), dtype=torch.long)
        torch.index_select(P.col, 0, by, out=ei[0])
        torch.index_select(P.intra_dst(), 0, by, out=ei[1])
        lid = by.long().add_(int(self.edge_off[k]))
        return _subgraph(torch.arange(no, no + P.num_inner), ei, lid, diag_lambda)


    def blocks(self, parts: list[int], diag_lambda: float | None = None) -> tuple[Subgraph, list[int]]:
        """The owned ``parts`` side by side, each exactly as it is alone (its inner nodes and intra
        edges, and with a halo store its halo nodes and entering edges; no edge between two parts
        and no node shared): one block-diagonal batch whose outputs are, part by part, those of the
        part alone -- evaluation runs several parts per forward pass this way.

        Returns:
            ``(subgraph, starts)``: ``starts[i]`` is the first row of ``parts[i]`` in the batch (its
            ``num_inner`` inner rows come first, then its halo rows).
        """
        node_ids, src, dst, lid, starts = [], [], [], [], []
        off = 0
        for p in parts:
            k = self.index[p]
            P, no, eo = self.parts[k], int(self.node_off[k]), int(self.edge_off[k])
            rows = P.nodes.numel() if self.halo else P.num_inner
            starts.append(off)
            node_ids.append(torch.arange(no, no + rows))
            src.append(off + P.col)
            dst.append(off + P.intra_dst())
            lid.append(eo + torch.arange(P.num_intra))
            if self.halo:
                src.append(off + P.num_inner + torch.searchsorted(P.nodes[P.num_inner:], P.cross_src))
                dst.append(off + P.cross_dst)
                lid.append(eo + P.num_intra + torch.arange(P.num_cross))
            off += rows
        ei, lid = torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(lid)
        return _subgraph(torch.cat(node_ids), ei, lid, diag_lambda), starts


class StoreClusterSampler:
    """Cluster-GCN batches over the parts one rank owns (module docstring).

    The rank's steps are planned so that ``W`` ranks equal one rank with ``grad_accum = W`` (and any
    ``W x A`` the same ``G = W x A``): the parts are dealt to ``G`` groups, part ``p`` to group
    ``p mod G`` (so group ``g`` lives on rank ``g mod W``). Micro-step ``a`` of optimiser step ``k``
    on rank ``r`` is batch ``k`` of group ``r + a W``: the group's parts shuffled with seed
    ``epoch_seed(seed, epoch) + g`` and cut into batches of ``q``; a group with fewer batches than
    the largest repeats its first ones (every rank takes the same number of steps). With ``G = 1``
    this is exactly :class:`~graphscale.sampling.cluster.ClusterGCNSampler`'s epoch.

    Args:
        parts: the rank's :class:`RankParts`.
        clusters_per_batch: ``q``, ``1 <= q <=`` the smallest group's part count.
        seed: run seed.
        diag_lambda: as :class:`~graphscale.sampling.cluster.ClusterGCNSampler`.
        rank, world_size, grad_accum: ``r``, ``W``, ``A``; ``W x A`` must not exceed the store's parts.

    ``len(sampler)`` is the epoch's global step count ``S x G`` (``S`` batches per group), so the
    trainer's per-rank count is ``S x A``; :meth:`epoch` yields only this rank's micro-steps.
    """

    rank_local = True  # epoch() already yields only this rank's steps (no dealing by the trainer)

    def __init__(self, parts: RankParts, clusters_per_batch: int = 1, seed: int = 0,
                 diag_lambda: float | None = None, rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        num = parts.num_parts_total
        groups = world_size * grad_accum
        if groups > num:
            raise ConfigError(f"{world_size} process(es) x train.grad_accum={grad_accum} = {groups} groups of parts, "
                              f"but the store has only {num} part(s); partition into >= {groups} parts")
        self.slots = [list(range(g, num, groups)) for g in range(groups)]
        smallest = min(len(s) for s in self.slots)
        if not isinstance(clusters_per_batch, int) or not 1 <= clusters_per_batch <= smallest:
            raise ConfigError(f"sampler.clusters_per_batch={clusters_per_batch!r}: expected an integer in [1, "
                              f"{smallest}] (the store's {num} parts dealt to {groups} = processes x grad_accum groups)")
        if clusters_per_batch > 1 and not parts.cross:
            raise ConfigError(f"sampler.clusters_per_batch={clusters_per_batch} keeps the edges between the parts of "
                              f"a batch, but the parts were opened without their entering edges (cross=False)")
        self.parts, self.q, self.seed, self.diag_lambda = parts, clusters_per_batch, seed, diag_lambda
        self.rank, self.world_size, self.grad_accum, self.groups = rank, world_size, grad_accum, groups
        self.steps = max(math.ceil(len(s) / self.q) for s in self.slots)
        for g in self.mine():
            missing = [p for p in self.slots[g] if p not in parts.index]
            if missing:
                raise ConfigError(f"rank {rank} does not hold part {missing[0]} of its group {g}")

    def mine(self) -> list[int]:
        """This rank's groups, one per micro-step: ``r, r + W, ..., r + (A - 1) W``."""
        return [self.rank + a * self.world_size for a in range(self.grad_accum)]

    def __len__(self) -> int:
        return self.steps * self.groups

    def group_batches(self, group: int, epoch: int) -> list[list[int]]:
        """The part lists of group ``group``'s batches in ``epoch`` (before padding)."""
        slot = self.slots[group]
        g = torch.Generator().manual_seed((epoch_seed(self.seed, epoch) + group) % (2**63 - 1))
        order = torch.randperm(len(slot), generator=g).tolist()
        shuffled = [slot[i] for i in order]
        return [shuffled[i:i + self.q] for i in range(0, len(shuffled), self.q)]

    def epoch(self, epoch: int) -> Iterator[Subgraph]:
        plans = {g: self.group_batches(g, epoch) for g in self.mine()}
        for k in range(self.steps):
            for g in self.mine():
                plan = plans[g]
                yield self.parts.batch(plan[k % len(plan)], diag_lambda=self.diag_lambda)


class StoreRandomSampler:
    """Random-partition batches inside the rank's parts (DeeperGCN / RevGNN's "randomly split the graph
    into subgraphs" each epoch, :class:`~graphscale.sampling.samplers.PartitionSampler` in memory).

    The store's parts are dealt to ``G = W x A`` groups as by :class:`StoreClusterSampler`; every
    epoch, each group's inner nodes (ascending global id) are split at random into ``k =
    ceil(num_parts / G)`` chunks of equal size (+-1) -- ``random_partition``'s rule, seeded with
    ``epoch_seed(seed, epoch) + g`` -- and each step is one chunk with every edge among its nodes that
    the group's parts hold (intra and entering edges). With ``G = 1`` the batches are exactly the
    in-memory ``PartitionSampler``'s (random partitioner) on the same seed. The halo is not used
    (a random chunk's neighbours are mostly in other chunks).

    Args:
        parts: the rank's :class:`RankParts`.
        num_parts: random chunks per epoch over all groups (``sampler.num_parts``).
        seed, rank, world_size, grad_accum: as :class:`StoreClusterSampler`.
    """

    rank_local = True

    def __init__(self, parts: RankParts, num_parts: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1):
        total = parts.num_parts_total
        groups = world_size * grad_accum
        if groups > total:
            raise ConfigError(f"{world_size} process(es) x train.grad_accum={grad_accum} = {groups} groups of parts, "
                              f"but the store has only {total} part(s); partition into >= {groups} parts")
        if not isinstance(num_parts, int) or num_parts < 1:
            raise ConfigError(f"sampler.num_parts must be >= 1, got {num_parts!r}")
        if not parts.cross:
            raise ConfigError("random batches keep the edges between a group's parts, but the parts were opened "
                              "without their entering edges (RankParts(cross=False))")
        self.parts, self.seed, self.rank, self.world_size, self.grad_accum = parts, seed, rank, world_size, grad_accum
        self.groups, self.k = groups, math.ceil(num_parts / groups)
        self.slots = [list(range(g, total, groups)) for g in range(groups)]
        smallest = min(sum(int(parts.meta["parts"][p]["inner"]) for p in sl) for sl in self.slots)
        if self.k > smallest:
            raise ConfigError(f"sampler.num_parts={num_parts}: {self.k} random parts per group, but a group of the "
                              f"store's parts holds only {smallest} nodes")
        self._plan = {}
        for g in self.mine():
            ks = [parts.index[p] for p in self.slots[g]]
            rows = torch.cat([parts.node_off[k] + torch.arange(parts.parts[k].num_inner) for k in ks])
            glob = parts.global_ids[rows]
            order = torch.argsort(glob)
            self._plan[g] = (ks, rows[order])

    def mine(self) -> list[int]:
        return [self.rank + a * self.world_size for a in range(self.grad_accum)]

    def __len__(self) -> int:
        return self.k * self.groups

    def _group_epoch(self, g: int, epoch: int) -> list[Subgraph]:
        rp = self.parts
        ks, rows = self._plan[g]
        n = rows.numel()
        gen = torch.Generator().manual_seed((epoch_seed(self.seed, epoch) + g) % (2**63 - 1))
        perm = torch.randperm(n, generator=gen)
        chunk_sorted = torch.empty(n, dtype=torch.long)
        chunk_sorted[perm] = torch.arange(n) * self.k // n  # chunk of the i-th node in global-id order
        chunk = torch.full((rp.num_nodes,), -1, dtype=torch.long)
        chunk[rows] = chunk_sorted
        pos = torch.empty(rp.num_nodes, dtype=torch.long)  # position inside its chunk (ascending global id)
        counts = torch.bincount(chunk_sorted, minlength=self.k)
        start = torch.zeros(self.k + 1, dtype=torch.long)
        start[1:] = counts.cumsum(0)
        by_chunk = torch.argsort(chunk_sorted, stable=True)
        pos[rows[by_chunk]] = torch.arange(n) - start[chunk_sorted[by_chunk]]
        src, dst, eid, lid = [], [], [], []
        for k in ks:
            P, no, eo = rp.parts[k], int(rp.node_off[k]), int(rp.edge_off[k])
            s_rows, d_rows = no + P.col, no + P.intra_dst()
            src.append(s_rows), dst.append(d_rows), eid.append(P.eid), lid.append(eo + torch.arange(P.num_intra))
            src_k = rp.owned_index[P.cross_part]
            inb = (src_k >= 0).nonzero().view(-1)
            src.append(rp.node_off[src_k[inb]] + P.cross_pos[inb])
            dst.append(no + P.cross_dst[inb])
            eid.append(P.cross_eid[inb])
            lid.append(eo + P.num_intra + inb)
        src, dst, eid, lid = (torch.cat(t) for t in (src, dst, eid, lid))
        cs, cd = chunk[src], chunk[dst]
        keep = ((cs == cd) & (cd >= 0)).nonzero().view(-1)
        src, dst, eid, lid, c = src[keep], dst[keep], eid[keep], lid[keep], cd[keep]
        order = torch.argsort(c * (int(rp.meta["num_edges"]) + 1) + eid)
        src, dst, lid, c = src[order], dst[order], lid[order], c[order]
        e_counts = torch.bincount(c, minlength=self.k).tolist()
        out, e0 = [], 0
        sorted_rows = rows[by_chunk]
        for j in range(self.k):
            a, b = int(start[j]), int(start[j + 1])
            e1 = e0 + e_counts[j]
            ei = torch.stack([pos[src[e0:e1]], pos[dst[e0:e1]]])
            out.append(Subgraph(sorted_rows[a:b], ei, lid[e0:e1]))
            e0 = e1
        return out

    def epoch(self, epoch: int) -> Iterator[Subgraph]:
        plans = {g: self._group_epoch(g, epoch) for g in self.mine()}
        for j in range(self.k):
            for g in self.mine():
                yield plans[g][j]


__all__ = ["RowStore", "RankParts", "StoreClusterSampler", "StoreRandomSampler"]
