"""Data: OGB loading (through ``ogb``), synthetic OGB-format sets, readers for local raw data."""
from graphscale.data.datasets import DATASETS, NodeDataset, load_dataset
from graphscale.data.graph_classification import Graph, GraphDataset, load_graph_dataset, write_gin_txt
from graphscale.data.synthetic import SyntheticSpec, write_synthetic

__all__ = ["DATASETS", "NodeDataset", "load_dataset", "SyntheticSpec", "write_synthetic",
           "Graph", "GraphDataset", "load_graph_dataset", "write_gin_txt"]
