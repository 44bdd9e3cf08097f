"""Partitioning and sampling: node partitions, induced subgraphs, cluster batches, neighbour sampling."""
from graphscale.sampling.cluster import ClusterGCNSampler, build_cluster_sampler, diag_enhanced_weights, diag_normalize
from graphscale.sampling.neighbor import NeighborBatch, NeighborSampler, sample_neighbors
from graphscale.sampling.partition import PARTITIONERS, edge_cut, partition, register_partitioner
from graphscale.sampling.subgraph import Subgraph, full_graph, part_subgraphs

__all__ = ["PARTITIONERS", "partition", "register_partitioner", "edge_cut", "Subgraph", "full_graph",
           "part_subgraphs", "ClusterGCNSampler", "build_cluster_sampler", "diag_enhanced_weights",
           "diag_normalize", "NeighborSampler", "NeighborBatch", "sample_neighbors"]
