"""Graph convolutions that aggregate through :mod:`graphscale.ops` (so the device's fastest backend,
and later activation compression of the aggregation, apply to them).

They follow PyG's ``MessagePassing`` input conventions -- ``x`` (or a ``(x_src, x_dst)`` pair),
``edge_index [2, E]`` or a ``torch.sparse`` ``adj_t`` or a :class:`graphscale.ops.CSR`, edge
weights / features in ``edge_index`` order -- and their parameters have the same names and shapes
as the PyG convolution of the same name, so ``ours.load_state_dict(pyg_conv.state_dict())`` gives
the same function (tests check outputs and gradients).

An ``edge_index`` is turned into a CSR once and reused while the tensor is unchanged
(:func:`graphscale.ops.as_csr`), so a stack of layers sorts the edges once per forward.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.conv.gen_conv import MLP
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.norm import MessageNorm

from graphscale import ops
from graphscale.errors import ConfigError
from graphscale.ops import CSR

__all__ = ["GCNConv", "SAGEConv", "GENConv"]

PairTensor = Tuple[Tensor, Optional[Tensor]]


def _pair(x: Union[Tensor, PairTensor]) -> PairTensor:
    return (x, x) if isinstance(x, Tensor) else x


def _adj(edge_index, x_src: Tensor, x_dst: Optional[Tensor], size=None) -> CSR:
    if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided:
        if size is None:
            size = (x_src.size(0), (x_dst if x_dst is not None else x_src).size(0))
        return ops.as_csr(edge_index, tuple(size))
    return ops.as_csr(edge_index)


def _to_edge_list(adj, edge_weight: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """``(edge_index, edge_weight)`` of any accepted adjacency (weights in that edge_index order)."""
    if isinstance(adj, Tensor) and adj.layout == torch.strided:
        return adj, edge_weight
    if edge_weight is not None:
        raise ValueError("edge_weight goes with an edge_index; a sparse adjacency / CSR carries its values")
    csr = ops.as_csr(adj)
    return torch.stack([csr.col, csr.row]), csr.value


class GCNConv(nn.Module):
    """Graph convolution of Kipf & Welling (ICLR 2017), ``X' = D^-1/2 (A + I) D^-1/2 X W + b``.

    Same arguments, parameters (``lin.weight``, ``bias``) and normalisation (PyG's ``gcn_norm``) as
    :class:`torch_geometric.nn.GCNConv`; the propagation is :func:`graphscale.ops.spmm`.

    Args:
        in_channels, out_channels: ``F_in``, ``F_out``.
        improved: self-loop weight 2 instead of 1.
        cached: normalise once and reuse (transductive training on one graph).
        add_self_loops, normalize, bias: as in PyG. With ``normalize=False`` the given weights are
            used as they are (pass a pre-normalised :class:`~graphscale.ops.CSR` to skip all per-call work).
        backend: aggregation backend (``None`` = ``GRAPHSCALE_BACKEND`` / auto).

    Shapes: ``x [N, F_in]``, ``edge_index [2, E]`` (or ``adj_t`` / CSR), ``edge_weight [E]`` -> ``[N, F_out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, cached: bool = False,
                 add_self_loops: bool = True, normalize: bool = True, bias: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.cached, self.add_self_loops, self.normalize = improved, cached, add_self_loops, normalize
        self.backend = backend
        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._cached_adj: Optional[CSR] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self._cached_adj = None

    def normalized_adj(self, edge_index, num_nodes: int, edge_weight: Optional[Tensor] = None,
                       dtype: Optional[torch.dtype] = None) -> CSR:
        """The CSR this layer propagates over (normalised unless ``normalize=False``)."""
        if not self.normalize:
            if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided:
                return ops.as_csr(edge_index, num_nodes, edge_weight)
            return ops.as_csr(edge_index)
        ei, w = _to_edge_list(edge_index, edge_weight)
        ei, w = gcn_norm(ei, w, num_nodes, self.improved, self.add_self_loops, "source_to_target", dtype)
        return CSR.from_edge_index(ei, num_nodes, w)

    def forward(self, x: Tensor, edge_index, edge_weight: Optional[Tensor] = None) -> Tensor:
        if self.cached and self._cached_adj is not None:
            adj = self._cached_adj
        else:
            adj = self.normalized_adj(edge_index, x.size(0), edge_weight, x.dtype)
            if self.cached:
                self._cached_adj = adj
        w = adj.value
        if w is not None and w.dtype != x.dtype:
            w = w.to(x.dtype)
        out = ops.spmm(adj, self.lin(x), "sum", w, backend=self.backend)
        return out + self.bias if self.bias is not None else out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"


class SAGEConv(nn.Module):
    """GraphSAGE convolution (Hamilton, Ying, Leskovec, NeurIPS 2017):
    ``x'_i = W_l AGG_{j in N(i)} x_j + W_r x_i`` (+ optional L2 normalisation).

    Same arguments and parameters (``lin_l.weight``, ``lin_l.bias``, ``lin_r.weight``) as
    :class:`torch_geometric.nn.SAGEConv` for ``aggr`` in ``mean | sum | max | min`` (``'add'`` is an
    alias of ``'sum'``); the aggregation is :func:`graphscale.ops.spmm`.

    Shapes: ``x [N, F_in]`` or ``(x_src [N_s, F_s], x_dst [N_d, F_d])``, ``edge_index [2, E]`` (or
    ``adj_t`` / CSR) -> ``[N_d, F_out]``.
    """

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int, aggr: str = "mean",
                 normalize: bool = False, root_weight: bool = True, bias: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        aggr = "sum" if aggr == "add" else aggr
        if aggr not in ops.REDUCES:
            raise ConfigError(f"unsupported SAGEConv aggr {aggr!r}; expected one of {', '.join(ops.REDUCES)}")
        self.in_channels, self.out_channels, self.aggr = in_channels, out_channels, aggr
        self.normalize, self.root_weight, self.backend = normalize, root_weight, backend
        ins = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        self.lin_l = Linear(ins[0], out_channels, bias=bias)
        if root_weight:
            self.lin_r = Linear(ins[1], out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_l.reset_parameters()
        if self.root_weight:
            self.lin_r.reset_parameters()

    def forward(self, x: Union[Tensor, PairTensor], edge_index, size=None) -> Tensor:
        x_src, x_dst = _pair(x)
        adj = _adj(edge_index, x_src, x_dst, size)
        out = self.lin_l(ops.spmm(adj, x_src, self.aggr, backend=self.backend))
        if self.root_weight and x_dst is not None:
            out = out + self.lin_r(x_dst)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, aggr={self.aggr})"


class _SoftmaxT(nn.Module):
    # Holds the inverse temperature under PyG's parameter name (``aggr_module.t``).
    def __init__(self, t: float, learn: bool):
        super().__init__()
        self._init_t, self.learn = t, learn
        self.t = nn.Parameter(torch.full((1,), float(t))) if learn else float(t)

    def reset_parameters(self) -> None:
        if isinstance(self.t, Tensor):
            self.t.data.fill_(self._init_t)


class GENConv(nn.Module):
    """GENeralized graph convolution of DeeperGCN (Li, Xiong, Thabet, Ghanem 2020, arXiv:2006.07739):
    ``x'_i = MLP(x_i + softmax-AGG_{j in N(i)}(relu(x_j + e_ji) + eps))`` with a (learnable) inverse
    temperature ``t``; the aggregation is the fused :func:`graphscale.ops.softmax_aggr`, which keeps no
    ``[E, F]`` message tensor for backward.

    Same arguments and parameter names as :class:`torch_geometric.nn.GENConv` for ``aggr='softmax'``
    (``aggr_module.t``, ``lin_src``, ``lin_edge``, ``lin_dst``, ``mlp``, ``msg_norm``), so a PyG
    state dict loads as is.

    Args:
        in_channels, out_channels: as in PyG (int or ``(F_src, F_dst)``).
        aggr: ``'softmax'`` (other PyG aggregations are not fused here; use PyG's GENConv).
        t, learn_t: initial inverse temperature and whether it is learned.
        msg_norm, learn_msg_scale: MessageNorm (DeeperGCN's MsgNorm).
        norm, num_layers, expansion, eps, bias, edge_dim: as in PyG.
        backend: aggregation backend (``None`` = ``GRAPHSCALE_BACKEND`` / auto).

    Shapes: ``x [N, F_in]`` or a pair, ``edge_index [2, E]`` (or ``adj_t`` / CSR),
    ``edge_attr [E, edge_dim]`` in ``edge_index`` order -> ``[N_d, F_out]``.
    """

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int, aggr: str = "softmax",
                 t: float = 1.0, learn_t: bool = False, msg_norm: bool = False, learn_msg_scale: bool = False,
                 norm: str = "batch", num_layers: int = 2, expansion: int = 2, eps: float = 1e-7,
                 bias: bool = False, edge_dim: Optional[int] = None, backend: Optional[str] = None):
        super().__init__()
        if aggr != "softmax":
            raise ConfigError(f"graphscale GENConv fuses aggr='softmax' only, got {aggr!r}; use "
                              f"torch_geometric.nn.GENConv for other aggregations")
        self.in_channels, self.out_channels, self.eps, self.backend = in_channels, out_channels, eps, backend
        self.aggr_module = _SoftmaxT(t, learn_t)
        ins = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        if ins[0] != out_channels:
            self.lin_src = Linear(ins[0], out_channels, bias=bias)
        if edge_dim is not None and edge_dim != out_channels:
            self.lin_edge = Linear(edge_dim, out_channels, bias=bias)
        if ins[1] != out_channels:
            self.lin_dst = Linear(ins[1], out_channels, bias=bias)
        channels = [out_channels] + [out_channels * expansion] * (num_layers - 1) + [out_channels]
        self.mlp = MLP(channels, norm=norm, bias=bias)
        if msg_norm:
            self.msg_norm = MessageNorm(learn_msg_scale)

    def reset_parameters(self) -> None:
        for m in self.children():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for sub in m.modules():
                    if sub is not m and hasattr(sub, "reset_parameters"):
                        sub.reset_parameters()

    def forward(self, x: Union[Tensor, PairTensor], edge_index, edge_attr: Optional[Tensor] = None,
                size=None) -> Tensor:
        x_src, x_dst = _pair(x)
        if hasattr(self, "lin_src"):
            x_src = self.lin_src(x_src)
        adj = _adj(edge_index, x_src, x_dst, size)
        if edge_attr is not None:
            if hasattr(self, "lin_edge"):
                edge_attr = self.lin_edge(edge_attr)
            edge_attr = adj.edge_order(edge_attr)
        t = self.aggr_module.t
        if isinstance(t, Tensor) and t.dtype != x_src.dtype:
            t = t.to(x_src.dtype)
        out = ops.softmax_aggr(adj, x_src, t, edge_attr, relu=True, eps=self.eps, backend=self.backend)
        if hasattr(self, "msg_norm"):
            out = self.msg_norm(x_dst if x_dst is not None else x_src, out)
        if x_dst is not None:
            out = out + (self.lin_dst(x_dst) if hasattr(self, "lin_dst") else x_dst)
        return self.mlp(out)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, aggr=softmax)"
