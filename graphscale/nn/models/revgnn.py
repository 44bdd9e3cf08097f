"""RevGNN and WT-RevGNN: memory-flat deep GNNs from grouped reversible blocks.

Li, Müller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021. The
ogbn-proteins recipe (their Sec. 4 and PyG's ``examples/rev_gnn.py``): a linear node encoder and
edge encoder, ``L`` grouped reversible blocks whose group function is
``LayerNorm -> ReLU -> Dropout -> GENConv`` (max or softmax aggregation, edge features), then
``LayerNorm -> ReLU -> Dropout -> Linear``. WT-RevGNN ties all blocks' weights; DEQ-GNN replaces
the stack with one equilibrium block.

All models take ``(x, edge_index, edge_attr=None)`` and return ``[N, out_channels]`` logits (the
trainer's interface).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
import torch_geometric.nn as pyg_nn

from graphscale.errors import ConfigError
from graphscale.nn.conv import GENConv, layer_graph
from graphscale.nn.reversible import GroupRevBlock, RevStack
from graphscale.nn.weight_tied import WeightTiedReversible

__all__ = ["GENBlock", "RevGNN", "gen_conv_class", "CONVS"]

CONVS = ("graphscale", "pyg")


def gen_conv_class(conv: str) -> type:
    """The GENConv class of ``conv``: ``'graphscale'`` (:class:`graphscale.nn.GENConv`, fused through
    :mod:`graphscale.ops`) or ``'pyg'`` (:class:`torch_geometric.nn.GENConv`, the reference)."""
    if conv not in CONVS:
        raise ConfigError(f"unknown conv {conv!r}; expected one of {', '.join(CONVS)}")
    return GENConv if conv == "graphscale" else pyg_nn.GENConv


class GENBlock(nn.Module):
    """``LayerNorm -> ReLU -> Dropout -> GENConv``: the group function of RevGNN (pre-activation).

    Args:
        channels: input = output width.
        aggr, t, learn_t, mlp_layers: GENConv options (its MLP uses LayerNorm: BatchNorm's running
            statistics do not survive recomputation).
        dropout: dropout probability (seeded per step by the reversible / equilibrium wrapper).
        edge_features: the conv receives edge features of width ``channels``.
        conv: ``'graphscale'`` or ``'pyg'`` GENConv (:func:`gen_conv_class`; same parameters).

    Shapes: ``x [N, channels]``, ``edge_attr [E, channels]`` (optional) -> ``[N, channels]``.
    """

    def __init__(self, channels: int, aggr: str = "max", t: float = 1.0, learn_t: bool = True,
                 mlp_layers: int = 1, dropout: float = 0.1, edge_features: bool = True, conv: str = "graphscale"):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)
        learn_t = learn_t and aggr == "softmax"
        self.conv = gen_conv_class(conv)(channels, channels, aggr=aggr, t=t, learn_t=learn_t, num_layers=mlp_layers,
                            norm="layer")
        self.edge_features = edge_features

    def forward(self, x: Tensor, edge_index, edge_attr: Tensor | None = None) -> Tensor:
        h = self.drop(F.relu(self.norm(x)))
        return self.conv(h, edge_index, edge_attr if self.edge_features else None)


class RevGNN(nn.Module):
    """RevGNN / WT-RevGNN (Li et al., ICML 2021): deep grouped reversible GENConv stacks.

    Args:
        in_channels: node feature width.
        hidden_channels: block width ``D`` (divisible by ``num_groups``).
        out_channels: outputs (tasks / classes).
        num_layers: number of reversible blocks ``L``.
        num_groups: channel groups ``C >= 2``.
        edge_dim: edge feature width, or None.
        dropout, aggr, t, learn_t, mlp_layers: block options (see :class:`GENBlock`).
        weight_tied: one block reused ``L`` times (WT-RevGNN): parameters O(1) in depth.
        disable: plain autograd (no memory saving), for comparison.
        conv: ``'graphscale'`` (default) or ``'pyg'`` GENConv in every block (same parameters).

    Edge features are encoded to width ``D`` and split into ``C`` groups like the node features,
    one slice per group. Shapes: ``x [N, F]``, ``edge_attr [E, edge_dim]`` -> ``[N, out]``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                 num_groups: int = 2, edge_dim: int | None = None, dropout: float = 0.1, aggr: str = "max",
                 t: float = 1.0, learn_t: bool = True, mlp_layers: int = 1, weight_tied: bool = False,
                 disable: bool = False, conv: str = "graphscale"):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        if num_groups < 2 or hidden_channels % num_groups != 0:
            raise ConfigError(f"hidden_channels={hidden_channels} must split into num_groups={num_groups} "
                              f"(>= 2) equal groups")
        self.node_encoder = nn.Linear(in_channels, hidden_channels)
        self.edge_encoder = nn.Linear(edge_dim, hidden_channels) if edge_dim else None
        width = hidden_channels // num_groups
        gen_conv_class(conv)  # a bad name fails here, before any block is built
        self.conv_name = conv

        def block() -> GroupRevBlock:
            return GroupRevBlock(GENBlock(width, aggr, t, learn_t, mlp_layers, dropout, edge_dim is not None, conv),
                                 num_groups=num_groups, disable=disable)
        if weight_tied:
            self.blocks = WeightTiedReversible(block(), num_layers)
        else:
            self.blocks = RevStack([block() for _ in range(num_layers)], disable=disable)
        self.out_norm = nn.LayerNorm(hidden_channels)
        # Modules rather than F.relu / F.dropout, so that compress_model can swap them (1-bit ReLU
        # mask, packed or seeded dropout mask); no parameters, so checkpoints are unaffected.
        self.out_act = nn.ReLU()
        self.out_drop = nn.Dropout(dropout)
        self.lin = nn.Linear(hidden_channels, out_channels)

    @property
    def dropout(self) -> float:
        """Dropout probability (of the decoder's ``out_drop``, the same as the blocks')."""
        return self.out_drop.p

    def forward(self, x: Tensor, edge_index, edge_attr: Tensor | None = None) -> Tensor:
        if self.conv_name == "graphscale":  # one CSR (and one edge-feature permutation) for every block
            edge_index, edge_attr = layer_graph(edge_index, x.size(0), edge_attr)
        h = self.node_encoder(x)
        if self.edge_encoder is not None and edge_attr is not None:
            h = self.blocks(h, edge_index, self.edge_encoder(edge_attr))
        else:
            h = self.blocks(h, edge_index)
        return self.lin(self.out_drop(self.out_act(self.out_norm(h))))
