"""Whole models from the papers graphscale reproduces. Every model takes ``(x, edge_index,
edge_attr=None)`` and returns ``[N, out_channels]`` logits (the trainer's interface)."""
from graphscale.nn.models.deepergcn import DeeperGCN, make_norm
from graphscale.nn.models.deq_gnn import DEQGNN
from graphscale.nn.models.gcn import GCN
from graphscale.nn.models.layerwise_gcn import LayerwiseGCN
from graphscale.nn.models.revgnn import GENBlock, RevGNN
from graphscale.nn.models.sage import SAGE

__all__ = ["GCN", "LayerwiseGCN", "DeeperGCN", "make_norm", "GENBlock", "RevGNN", "DEQGNN", "SAGE"]
