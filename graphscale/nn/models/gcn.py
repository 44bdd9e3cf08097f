"""GCN (Kipf & Welling, ICLR 2017), the baseline of the Planetoid and Cluster-GCN recipes."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from graphscale.errors import ConfigError
from graphscale.sampling.subgraph import with_self_loops


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
