"""DEQ-GNN (Li, Müller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021,
Sec. 3.3): one equilibrium block of the RevGNN recipe's ``GENBlock``, implicit backward.

Takes ``(x, edge_index, edge_attr=None)`` and returns ``[N, out_channels]`` logits (the trainer's
interface).
"""
from __future__ import annotations

from torch import Tensor, nn

from graphscale.nn.conv import layer_graph
from graphscale.nn.deq import DEQBlock
from graphscale.nn.models.revgnn import GENBlock

__all__ = ["DEQGNN"]


class _DEQCell(nn.Module):
    """``f(z, x) = LayerNorm(x + GENBlock(z))``: input injection + one pre-activation GENConv."""

    def __init__(self, channels: int, aggr: str, t: float, learn_t: bool, mlp_layers: int, dropout: float,
                 edge_features: bool, conv: str = "graphscale"):
        super().__init__()
        self.block = GENBlock(channels, aggr, t, learn_t, mlp_layers, dropout, edge_features, conv)
        self.norm = nn.LayerNorm(channels)

    def forward(self, z: Tensor, x: Tensor, edge_index, edge_attr: Tensor | None = None) -> Tensor:
        return self.norm(x + self.block(z, edge_index, edge_attr))


class DEQGNN(nn.Module):
    """DEQ-GNN (Li et al., ICML 2021, Sec. 3.3): one equilibrium GENConv block, implicit backward.

    ``Z* = LayerNorm(X_enc + GENBlock(Z*))`` solved by ``solver`` (:mod:`graphscale.nn.solvers`),
    then ``LayerNorm -> ReLU -> Dropout -> Linear``. Parameters and activation memory are those of
    one block, whatever the effective depth (solver iterations).

    Args:
        in_channels, hidden_channels, out_channels, edge_dim, dropout, aggr, t, learn_t, mlp_layers:
            as in :class:`RevGNN`.
        solver, max_iter, tol: the fixed-point solve (forward and adjoint).
        disable: unroll ``max_iter`` steps with plain autograd instead.
        conv: ``'graphscale'`` (default) or ``'pyg'`` GENConv (same parameters).

    The last solve's statistics are on ``model.deq.stats``. Shapes as :class:`RevGNN`.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, edge_dim: int | None = None,
                 dropout: float = 0.1, aggr: str = "softmax", t: float = 1.0, learn_t: bool = True,
                 mlp_layers: int = 1, solver: str = "anderson", max_iter: int = 30, tol: float = 1e-3,
                 disable: bool = False, conv: str = "graphscale"):
        super().__init__()
        self.node_encoder = nn.Linear(in_channels, hidden_channels)
        self.edge_encoder = nn.Linear(edge_dim, hidden_channels) if edge_dim else None
        self.conv_name = conv
        cell = _DEQCell(hidden_channels, aggr, t, learn_t, mlp_layers, dropout, edge_dim is not None, conv)
        self.deq = DEQBlock(cell, solver=solver, max_iter=max_iter, tol=tol, disable=disable)
        self.out_norm = nn.LayerNorm(hidden_channels)
        self.out_act = nn.ReLU()  # modules, so that compress_model can swap them (see RevGNN)
        self.out_drop = nn.Dropout(dropout)
        self.lin = nn.Linear(hidden_channels, out_channels)

    @property
    def dropout(self) -> float:
        """Dropout probability (of the decoder's ``out_drop``, the same as the cell's)."""
        return self.out_drop.p

    @property
    def stats(self) -> dict:
        """Convergence of the last forward / backward solve (see :class:`DEQBlock`)."""
        return self.deq.stats

    def forward(self, x: Tensor, edge_index, edge_attr: Tensor | None = None) -> Tensor:
        if self.conv_name == "graphscale":  # one CSR (and one edge-feature permutation) for every solver step
            edge_index, edge_attr = layer_graph(edge_index, x.size(0), edge_attr)
        h = self.node_encoder(x)
        if self.edge_encoder is not None and edge_attr is not None:
            z = self.deq(h, edge_index, self.edge_encoder(edge_attr))
        else:
            z = self.deq(h, edge_index)
        return self.lin(self.out_drop(self.out_act(self.out_norm(z))))
