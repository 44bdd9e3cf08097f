"""Induced subgraphs of node parts, built without copying the graph's features.

A :class:`Subgraph` holds global node ids, the local ``edge_index`` and the global edge ids; the
trainer gathers ``x[node_ids]`` and ``edge_attr[edge_ids]`` only for the part it is about to use,
so at most one part's features are materialised at a time (no full permuted copy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class Subgraph:
    """One training or evaluation step's graph.

    Attributes:
        node_ids: ``LongTensor[n_sub]``, global ids of the subgraph's nodes (local id = position).
        edge_index: ``LongTensor[2, e_sub]``, local ids.
        edge_ids: ``LongTensor[e_sub]``, global ids of the kept edges (index into ``edge_attr``).
        edge_weight: optional ``FloatTensor[e_sub + n_sub]``: precomputed propagation weights
            (Cluster-GCN's diagonal-enhanced normalisation, :mod:`graphscale.sampling.cluster`):
            the weight of every edge of ``edge_index``, followed by the weight of every node's
            self-loop (the diagonal). ``None``: the model normalises the adjacency itself.
            :meth:`propagation` gives the PyG form (edge_index with self-loops, weights).
    """

    node_ids: Tensor
    edge_index: Tensor
    edge_ids: Tensor
    edge_weight: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.node_ids.numel()

    def propagation(self) -> tuple[Tensor, Tensor | None]:
        """``(edge_index [2, e_sub + n_sub] with self-loops appended, edge_weight)`` when
        ``edge_weight`` is set (ready for a PyG conv with ``normalize=False``), else
        ``(edge_index, None)``."""
        if self.edge_weight is None:
            return self.edge_index, None
        return with_self_loops(self.edge_index, self.edge_weight, self.num_nodes), self.edge_weight


def with_self_loops(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    """Append the ``num_nodes`` self-loops that the trailing entries of a
    :attr:`Subgraph.edge_weight` (length ``E + N``) belong to; checks the length."""
    if edge_weight.numel() != edge_index.size(1) + num_nodes:
        raise ValueError(f"edge_weight has {edge_weight.numel()} entries, expected edges + nodes = "
                         f"{edge_index.size(1)} + {num_nodes}")
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, -1)
    return torch.cat([edge_index, loops], dim=1)


def part_subgraphs(edge_index: Tensor, part: Tensor, num_parts: int) -> Iterator[Subgraph]:
    """Yield the induced subgraph of every part ``0..num_parts-1`` of a node assignment.

    One pass over the edges groups those whose two ends share a part (O(E log E) for the sort);
    each part's edges are then relabelled to local ids.

    Args:
        edge_index: ``LongTensor[2, E]`` global edge list.
        part: ``LongTensor[N]`` node -> part, values in ``[0, num_parts)``.
        num_parts: number of parts.
    """
    num_nodes = part.numel()
    src_part = part[edge_index[0]]
    keep = src_part == part[edge_index[1]]
    kept_ids = keep.nonzero().view(-1)
    kept_part = src_part[kept_ids]
    order = torch.argsort(kept_part, stable=True)
    kept_ids = kept_ids[order]
    edge_counts = torch.bincount(kept_part, minlength=num_parts).tolist()

    node_order = torch.argsort(part, stable=True)
    node_counts = torch.bincount(part, minlength=num_parts).tolist()
    local = torch.empty(num_nodes, dtype=torch.long)  # global -> local id within its own part
    e_start = n_start = 0
    for p in range(num_parts):
        nodes = node_order[n_start:n_start + node_counts[p]]
        eids = kept_ids[e_start:e_start + edge_counts[p]]
        n_start += node_counts[p]
        e_start += edge_counts[p]
        local[nodes] = torch.arange(nodes.numel())
        yield Subgraph(nodes, local[edge_index[:, eids]], eids)


def full_graph(edge_index: Tensor, num_nodes: int) -> Subgraph:
    """The whole graph as one :class:`Subgraph` (identity ids)."""
    return Subgraph(torch.arange(num_nodes), edge_index, torch.arange(edge_index.size(1)))
