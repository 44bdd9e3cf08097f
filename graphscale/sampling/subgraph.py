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
    """

    node_ids: Tensor
    edge_index: Tensor
    edge_ids: Tensor

    @property
    def num_nodes(self) -> int:
        return self.node_ids.numel()


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
