"""Partitioning and sampling: node partitions, induced subgraphs, cluster batches."""
from graphscale.sampling.partition import PARTITIONERS, partition, register_partitioner
from graphscale.sampling.subgraph import Subgraph, full_graph, part_subgraphs

__all__ = ["PARTITIONERS", "partition", "register_partitioner", "Subgraph", "full_graph", "part_subgraphs"]
