"""Cluster-GCN batches (Chiang, Liu, Si, Li, Bengio, Hsieh, KDD 2019, "Cluster-GCN: An Efficient
Algorithm for Training Deep and Large Graph Convolutional Networks").

The graph's nodes are split once into ``P`` clusters (any ``part`` assignment: METIS as in the paper,
see :mod:`graphscale.sampling.partition`); every step merges ``q`` randomly chosen clusters and keeps
all edges among them, including the edges *between* the chosen clusters ("stochastic multiple
partitions", Sec. 3.2), which restores the between-cluster links a single-cluster batch loses.

Memory layout (what the sampler holds, all int64 index arrays; no features):

* ``node_perm [N]`` nodes sorted by cluster, ``node_ptr [P+1]`` cluster boundaries in it (CSR by
  cluster), ``part [N]`` the assignment, ``rank [N]`` each node's position inside its cluster;
* ``edge_perm [E']`` global edge ids sorted by the cluster of their source, ``edge_ptr [P+1]``; with
  ``q = 1`` only the ``E'`` within-cluster edges are kept (the others can never be in a batch).

That is ``24 N + 8 E'`` bytes (+ ``16 P``) next to the graph's own ``16 E`` (edge_index) plus its features. The
graph's ``edge_index`` is referenced, not copied; node features, labels and edge features are
gathered per batch by the trainer (``x[sub.node_ids]``, ``edge_attr[sub.edge_ids]``), so at most
one batch's features exist at a time. PyG's ``ClusterData`` instead stores a full permuted copy of
the data object (features included) next to the original.

Diagonal enhancement (Sec. 3.3, eq. 10-11): with ``diag_lambda`` set, each batch carries precomputed
propagation weights ``Ã + λ diag(Ã)`` with ``Ã = (D + I)^{-1} (A + I)`` of the batch's adjacency:
the edge ``j -> i`` weighs ``1 / (d_i + 1)`` and node ``i``'s self-loop ``(1 + λ) / (d_i + 1)``
(``d_i`` = in-degree of ``i`` within the batch), stored in :attr:`Subgraph.edge_weight`.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from graphscale.errors import ConfigError, DataError
from graphscale.sampling.samplers import epoch_seed
from graphscale.sampling.subgraph import Subgraph


def diag_enhanced_weights(edge_index: Tensor, num_nodes: int, diag_lambda: float) -> Tensor:
    """Cluster-GCN's normalisation ``Ã + λ diag(Ã)``, ``Ã = (D + I)^{-1}(A + I)`` (eq. 10-11).

    Args:
        edge_index: ``[2, E]`` local edges ``j -> i`` (``edge_index[1]`` aggregates), without
            self-loops.
        num_nodes: ``n``.
        diag_lambda: ``λ >= 0``; ``0`` gives the plain row normalisation ``(D + I)^{-1}(A + I)``.

    Returns:
        ``FloatTensor[E + n]``: the weight of every edge, then of every node's self-loop (the
        :attr:`Subgraph.edge_weight` layout).
    """
    dst = edge_index[1]
    inv = 1.0 / (torch.bincount(dst, minlength=num_nodes).to(torch.float32) + 1.0)
    return torch.cat([inv[dst], (1.0 + float(diag_lambda)) * inv])


def diag_normalize(sub: Subgraph, diag_lambda: float) -> Subgraph:
    """``sub`` with Cluster-GCN's diagonal-enhanced weights attached (self-loops of the input are
    dropped first: ``A + I`` adds exactly one per node). Use it on evaluation subgraphs (the full
    graph or evaluation partitions) so they are normalised as the training batches were."""
    ei, eids = sub.edge_index, sub.edge_ids
    loops = ei[0] == ei[1]
    if bool(loops.any()):
        ei, eids = ei[:, ~loops], eids[~loops]
    return Subgraph(sub.node_ids, ei, eids, diag_enhanced_weights(ei, sub.num_nodes, diag_lambda))


class ClusterGCNSampler:
    """Cluster-GCN training batches: ``q`` random clusters per step, edges among them kept.

    Args:
        edge_index: ``[2, E]`` global edge list (kept by reference).
        num_nodes: ``N``.
        part: ``LongTensor[N]`` cluster of every node, values in ``[0, num_parts)`` (e.g. from
            ``partition('metis', ...)``; hand-made in tests).
        num_parts: number of clusters ``P`` (default ``part.max() + 1``).
        clusters_per_batch: ``q``, clusters merged per step, ``1 <= q <= P``; an epoch has
            ``ceil(P / q)`` steps and visits every cluster once.
        seed: run seed; the cluster order of epoch ``e`` is a pure function of
            :func:`~graphscale.sampling.samplers.epoch_seed` ``(seed, e)``.
        diag_lambda: ``None``: batches carry no weights (the model normalises, e.g. GCNConv's
            symmetric normalisation); a number ``λ >= 0``: diagonal-enhanced weights
            (:func:`diag_enhanced_weights`) in :attr:`Subgraph.edge_weight`.

    Yields (per step) a :class:`Subgraph`: ``node_ids`` are the chosen clusters' nodes, cluster
    after cluster; ``edge_ids`` the kept global edge ids.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, part: Tensor, num_parts: int | None = None,
                 clusters_per_batch: int = 1, seed: int = 0, diag_lambda: float | None = None):
        part = torch.as_tensor(part)
        if part.dim() != 1 or part.numel() != num_nodes:
            raise DataError(f"part must be a LongTensor of shape [{num_nodes}], got {tuple(part.shape)}")
        if part.dtype.is_floating_point or part.dtype == torch.bool:
            raise DataError(f"part must hold integer cluster ids, got dtype {part.dtype}")
        part = part.long()
        if num_parts is None:
            num_parts = int(part.max()) + 1 if num_nodes else 0
        if num_nodes and (int(part.min()) < 0 or int(part.max()) >= num_parts):
            raise DataError(f"part holds cluster ids in [{int(part.min())}, {int(part.max())}], expected "
                            f"ids in [0, {num_parts})")
        if not isinstance(clusters_per_batch, int) or not 1 <= clusters_per_batch <= max(num_parts, 1):
            raise ConfigError(f"clusters_per_batch must be an integer in [1, num_parts={num_parts}], got "
                              f"{clusters_per_batch!r}")
        if diag_lambda is not None and not (math.isfinite(diag_lambda) and diag_lambda >= 0):
            raise ConfigError(f"diag_lambda must be None or a finite number >= 0, got {diag_lambda!r}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise DataError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        self.edge_index, self.num_nodes, self.num_parts = edge_index, num_nodes, num_parts
        self.q, self.seed, self.diag_lambda = clusters_per_batch, seed, diag_lambda

        self.part = part
        self.node_perm = torch.argsort(part, stable=True)
        sizes = torch.bincount(part, minlength=num_parts)
        self.node_ptr = torch.zeros(num_parts + 1, dtype=torch.long)
        self.node_ptr[1:] = sizes.cumsum(0)
        self.rank = torch.empty(num_nodes, dtype=torch.long)
        self.rank[self.node_perm] = torch.arange(num_nodes) - self.node_ptr[part[self.node_perm]]

        src_part = part[edge_index[0]]
        if self.q == 1:  # only within-cluster edges can ever be kept
            eids = (src_part == part[edge_index[1]]).nonzero().view(-1)
            src_part = src_part[eids]
            self.edge_perm = eids[torch.argsort(src_part, stable=True)]
        else:
            self.edge_perm = torch.argsort(src_part, stable=True)
        self.edge_ptr = torch.zeros(num_parts + 1, dtype=torch.long)
        self.edge_ptr[1:] = torch.bincount(src_part, minlength=num_parts).cumsum(0)
        del src_part

    def __len__(self) -> int:
        return math.ceil(self.num_parts / self.q)

    def index_bytes(self) -> int:
        """Bytes of the index arrays this sampler holds (its whole memory, the graph excluded)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.part, self.node_perm, self.node_ptr, self.rank, self.edge_perm, self.edge_ptr))

    def batch(self, clusters: Tensor) -> Subgraph:
        """The subgraph of the union of ``clusters`` (distinct ids) with every edge among them."""
        clusters = torch.as_tensor(clusters, dtype=torch.long).view(-1)
        cl = clusters.tolist()
        np_, ep = self.node_ptr.tolist(), self.edge_ptr
        node_ids = torch.cat([self.node_perm[np_[c]:np_[c + 1]] for c in cl])
        eids = torch.cat([self.edge_perm[int(ep[c]):int(ep[c + 1])] for c in cl])
        src, dst = self.edge_index[0, eids], self.edge_index[1, eids]
        # Local id of a node = start of its cluster inside this batch + its rank in the cluster.
        # Clusters not in the batch get an offset so negative that their nodes' local ids are < 0:
        # one comparison then finds the edges leaving the batch (edges were stored by source cluster,
        # so only the target can lie outside).
        offset = torch.full((self.num_parts,), -self.num_nodes - 1, dtype=torch.long)
        sizes = self.node_ptr[clusters + 1] - self.node_ptr[clusters]
        offset[clusters] = sizes.cumsum(0) - sizes
        ei = torch.stack([offset[self.part[src]] + self.rank[src], offset[self.part[dst]] + self.rank[dst]])
        keep = None
        if self.q > 1:
            keep = ei[1] >= 0
        if self.diag_lambda is not None:  # A + I adds one self-loop per node; drop the graph's own
            keep = (src != dst) if keep is None else keep & (src != dst)
        if keep is not None:
            keep = keep.nonzero().view(-1)
            ei, eids = ei[:, keep], eids[keep]
        weight = None
        if self.diag_lambda is not None:
            weight = diag_enhanced_weights(ei, node_ids.numel(), self.diag_lambda)
        return Subgraph(node_ids, ei, eids, weight)

    def epoch(self, epoch: int) -> Iterator[Subgraph]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_parts, generator=g)
        for start in range(0, self.num_parts, self.q):
            yield self.batch(order[start:start + self.q])

    def transform(self, sub: Subgraph) -> Subgraph:
        """Normalise an evaluation subgraph as the training batches are (identity when
        ``diag_lambda`` is None)."""
        return sub if self.diag_lambda is None else diag_normalize(sub, self.diag_lambda)


def build_cluster_sampler(edge_index: Tensor, num_nodes: int, num_parts: int, clusters_per_batch: int = 1,
                          partitioner: str = "metis", diag_lambda: float | None = None,
                          imbalance: float = 0.03, vertex_weight: str = "none", seed: int = 0,
                          cache_dir: str | None = None, train_mask: Tensor | None = None
                          ) -> ClusterGCNSampler:
    """Partition once (cached under ``cache_dir``), then wrap the assignment in a
    :class:`ClusterGCNSampler`. The partition is a function of ``seed`` alone (fixed clusters for
    the whole run, as in the paper); the batch order changes every epoch.

    Args: as :class:`ClusterGCNSampler` and :func:`graphscale.sampling.partition.partition`;
    ``vertex_weight`` is a :func:`~graphscale.sampling.partition.vertex_weights` kind (METIS only).
    """
    from graphscale.sampling.partition import check_num_parts, partition, vertex_weights

    check_num_parts(num_parts, num_nodes)
    if not isinstance(clusters_per_batch, int) or not 1 <= clusters_per_batch <= num_parts:
        raise ConfigError(f"clusters_per_batch must be an integer in [1, num_parts={num_parts}], got "
                          f"{clusters_per_batch!r}")
    kwargs = {}
    if partitioner == "metis":
        vw = vertex_weights(vertex_weight, edge_index, num_nodes, train_mask)
        kwargs = {"imbalance": imbalance, **({} if vw is None else {"vertex_weight": vw})}
    elif vertex_weight != "none":
        raise ConfigError(f"vertex_weight={vertex_weight!r} needs partitioner='metis', got {partitioner!r}")
    part = partition(partitioner, edge_index, num_nodes, num_parts, seed=seed, cache_dir=cache_dir, **kwargs)
    return ClusterGCNSampler(edge_index, num_nodes, part, num_parts, clusters_per_batch, seed, diag_lambda)
