"""DeeperGCN (Li, Xiong, Thabet, Ghanem, "DeeperGCN: All You Need to Train Deeper GCNs", 2020).

Takes ``(x, edge_index, edge_attr=None)`` and returns logits ``[N, out_channels]``, the interface the
trainer relies on.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import DeepGCNLayer

from graphscale.errors import ConfigError
from graphscale.nn.conv import layer_graph
from graphscale.nn.models.revgnn import gen_conv_class


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(channels, elementwise_affine=True)
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    raise ConfigError(f"unknown norm {kind!r}; expected 'layer' or 'batch'")


class DeeperGCN(nn.Module):
    """DeeperGCN (Li, Xiong, Thabet, Ghanem, 2020, "DeeperGCN: All You Need to Train Deeper GCNs").

    Pre-activation residual blocks (``res+``: norm -> ReLU -> dropout -> GENConv -> + input) around
    GENConv (softmax aggregation with a learnable temperature by default).
    Edge features (ogbn-proteins) are encoded by a linear layer and passed to every convolution.

    Args:
        in_channels: node feature width ``F_in``.
        hidden_channels: width ``H`` of every block.
        out_channels: number of outputs (tasks or classes) ``C``.
        num_layers: number of GENConv layers ``L >= 1``.
        edge_dim: edge feature width, or ``None`` for graphs without edge features.
        dropout: dropout probability inside blocks.
        aggr, t, learn_t, mlp_layers: GENConv options.
        norm: ``'layer'`` or ``'batch'``.
        block: ``'res+'`` (pre-activation), ``'res'`` or ``'plain'``.
        conv: ``'graphscale'`` (:class:`graphscale.nn.GENConv`: fused message + aggregation through
            :mod:`graphscale.ops`) or ``'pyg'`` (:class:`torch_geometric.nn.GENConv`, the reference).
            Same parameters either way: a state dict loads across.

    Shapes: ``x [N, F_in]``, ``edge_index [2, E]``, ``edge_attr [E, edge_dim]`` -> ``[N, C]``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                 edge_dim: int | None = None, dropout: float = 0.1, aggr: str = "softmax",
                 t: float = 1.0, learn_t: bool = True, mlp_layers: int = 2, norm: str = "layer",
                 block: str = "res+", conv: str = "graphscale"):
        super().__init__()
        gen_cls = gen_conv_class(conv)
        self.conv_name = conv
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        self.dropout = dropout
        self.node_encoder = nn.Linear(in_channels, hidden_channels)
        self.edge_encoder = nn.Linear(edge_dim, hidden_channels) if edge_dim else None
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            conv = gen_cls(hidden_channels, hidden_channels, aggr=aggr, t=t, learn_t=learn_t,
                           num_layers=mlp_layers, norm=norm,
                           edge_dim=hidden_channels if edge_dim else None)
            self.layers.append(DeepGCNLayer(conv, make_norm(norm, hidden_channels),
                                            nn.ReLU(inplace=False), block=block, dropout=dropout))
        self.out_norm = make_norm(norm, hidden_channels)
        self.lin = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        if self.conv_name == "graphscale":  # one CSR (and one edge-feature permutation) for every layer
            edge_index, edge_attr = layer_graph(edge_index, x.size(0), edge_attr)
        x = self.node_encoder(x)
        e = self.edge_encoder(edge_attr) if (self.edge_encoder is not None and edge_attr is not None) else None
        x = self.layers[0].conv(x, edge_index, e)
        for layer in self.layers[1:]:
            x = layer(x, edge_index, e)
        x = F.relu(self.out_norm(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.lin(x)
