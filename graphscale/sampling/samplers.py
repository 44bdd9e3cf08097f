"""Training samplers: what one epoch's steps look like.

A sampler has ``len(sampler)`` steps per epoch and ``sampler.epoch(epoch)`` yielding
:class:`~graphscale.sampling.subgraph.Subgraph` objects. Randomness is a pure function of
``(seed, epoch)``, so a resumed run replays exactly the batches an uninterrupted run would see.
Samplers are picked by name from :data:`graphscale.train.build.SAMPLERS`.
"""
from __future__ import annotations

from typing import Iterator

from torch import Tensor

from graphscale.sampling.partition import check_num_parts, partition
from graphscale.sampling.subgraph import Subgraph, full_graph, part_subgraphs


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)


class FullGraphSampler:
    """One step per epoch on the whole graph (full-batch training)."""

    def __init__(self, edge_index: Tensor, num_nodes: int):
        self.graph = full_graph(edge_index, num_nodes)

    def __len__(self) -> int:
        return 1

    def epoch(self, epoch: int) -> Iterator[Subgraph]:
        yield self.graph


class PartitionSampler:
    """A fresh partition per epoch, one part per step (DeeperGCN / RevGNN on ogbn-proteins use
    ``partitioner='random'``: "we randomly split the graph into 10 subgraphs" each epoch).

    Args:
        edge_index: ``[2, E]`` global edge list.
        num_nodes: ``N``.
        num_parts: parts per epoch, ``1 <= num_parts <= N``.
        seed: run seed; each epoch uses :func:`epoch_seed`.
        partitioner: a name from :data:`graphscale.sampling.partition.PARTITIONERS`.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, num_parts: int, seed: int = 0,
                 partitioner: str = "random"):
        check_num_parts(num_parts, num_nodes)
        self.edge_index, self.num_nodes, self.num_parts = edge_index, num_nodes, num_parts
        self.seed, self.partitioner = seed, partitioner

    def __len__(self) -> int:
        return self.num_parts

    def epoch(self, epoch: int) -> Iterator[Subgraph]:
        part = partition(self.partitioner, self.edge_index, self.num_nodes, self.num_parts,
                         seed=epoch_seed(self.seed, epoch))
        yield from part_subgraphs(self.edge_index, part, self.num_parts)
