"""Baseline models.

Every model takes ``(x, edge_index, edge_attr=None)`` and returns logits ``[N, out_channels]``,
the interface the trainer relies on.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import DeepGCNLayer, GCNConv, GENConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from graphscale.errors import ConfigError
from graphscale.nn.conv import GENConv as GraphscaleGENConv
from graphscale.sampling.subgraph import with_self_loops


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(channels, elementwise_affine=True)
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    raise ConfigError(f"unknown norm {kind!r}; expected 'layer' or 'batch'")


class DeeperGCN(nn.Module):
    """DeeperGCN (Li, Xiong, Thabet, Ghanem, 2020, "DeeperGCN: All You Need to Train Deeper GCNs").

    Pre-activation residual blocks (``res+``: norm -> ReLU -> dropout -> GENConv -> + input) around
    PyG's :class:`~torch_geometric.nn.GENConv` with softmax aggregation and a learnable temperature.
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
        conv: ``'pyg'`` (PyG's GENConv) or ``'graphscale'`` (:class:`graphscale.nn.GENConv`, same
            parameters, fused softmax aggregation through :mod:`graphscale.ops`; ``aggr='softmax'`` only).

    Shapes: ``x [N, F_in]``, ``edge_index [2, E]``, ``edge_attr [E, edge_dim]`` -> ``[N, C]``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                 edge_dim: int | None = None, dropout: float = 0.1, aggr: str = "softmax",
                 t: float = 1.0, learn_t: bool = True, mlp_layers: int = 2, norm: str = "layer",
                 block: str = "res+", conv: str = "pyg"):
        super().__init__()
        if conv not in ("pyg", "graphscale"):
            raise ConfigError(f"unknown conv {conv!r}; expected 'pyg' or 'graphscale'")
        gen_cls = GENConv if conv == "pyg" else GraphscaleGENConv
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
        x = self.node_encoder(x)
        e = self.edge_encoder(edge_attr) if (self.edge_encoder is not None and edge_attr is not None) else None
        x = self.layers[0].conv(x, edge_index, e)
        for layer in self.layers[1:]:
            x = layer(x, edge_index, e)
        x = F.relu(self.out_norm(x))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.lin(x)


class GCN(nn.Module):
    """GCN (Kipf & Welling, ICLR 2017) on PyG's :class:`~torch_geometric.nn.GCNConv`.

    ``num_layers`` convolutions with ReLU and dropout between them.
    Shapes: ``x [N, F_in]``, ``edge_index [2, E]`` -> ``[N, C]``; ``edge_attr`` is ignored.

    Without ``edge_weight`` the adjacency is normalised as in the paper, ``D^-1/2 (A + I) D^-1/2``,
    once per forward (PyG's ``GCNConv`` would redo it in every layer). With ``edge_weight``
    (``[E + N]``: the weight of every edge, then of every node's self-loop, the
    :attr:`graphscale.sampling.Subgraph.edge_weight` layout, e.g. Cluster-GCN's diagonal-enhanced
    normalisation) those weights are used as they are.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2,
                 dropout: float = 0.5):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        # normalize=False: forward() normalises once for all layers (or takes given weights).
        self.convs = nn.ModuleList(GCNConv(a, b, cached=False, normalize=False)
                                   for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                edge_weight: Tensor | None = None) -> Tensor:
        if edge_weight is None:
            edge_index, edge_weight = gcn_norm(edge_index, None, x.size(0), add_self_loops=True,
                                               dtype=x.dtype)
        else:
            edge_index = with_self_loops(edge_index, edge_weight, x.size(0))
            edge_weight = edge_weight.to(x.dtype)
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, p=self.dropout, training=self.training)
            x = conv(x, edge_index, edge_weight)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x
