"""PyG's ``GCNConv``, ``SAGEConv`` and ``GENConv`` with message passing fused through :mod:`graphscale.ops`.

Each class **is** the PyG class of the same name (a subclass, so a ``MessagePassing``): same
constructor options with PyG's semantics, same parameters (``state_dict`` loads both ways), same
``forward``. Only :meth:`propagate` differs: where the aggregation has a fused graphscale op it runs
``message`` + ``aggregate`` as one op over a CSR (no ``[E, F]`` message tensor saved for backward,
Triton on CUDA where a kernel exists), and otherwise it is PyG's own (the ``propagate`` PyG generates
for its class, or ``MessagePassing.propagate`` under ``explain`` / ``decomposed_layers > 1``, as PyG does):

* explainers (``conv.explain = True``, edge masks), message / aggregate hooks, ``decomposed_layers > 1``,
  ``flow='target_to_source'``, PyG ``EdgeIndex`` / ``SparseTensor`` inputs, ``fused=False``, and
  aggregations without a fused op (lists, ``Aggregation`` objects other than the built-in ones,
  ``'std'``, ``'lstm'``, ``softmax_sg`` ...) take PyG's path, exactly as PyG would compute them;
* propagate hooks and message-and-aggregate hooks run on the fused path too, as in PyG's own fused
  (sparse-input) path.

Inputs: what PyG takes (``x`` or ``(x_src, x_dst)``, ``edge_index [2, E]``, a ``torch.sparse`` ``adj_t``)
and a :class:`graphscale.ops.CSR`. An ``edge_index`` is turned into a CSR once and reused while the
tensor is unchanged (:func:`graphscale.ops.as_csr`), so a stack of layers sorts the edges once.
Per-edge values (``edge_weight``, ``edge_attr``) are in ``edge_index`` order, as in PyG.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch_geometric.nn as pyg_nn
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import (MaxAggregation, MeanAggregation, MinAggregation, PowerMeanAggregation,
                                     SoftmaxAggregation, SumAggregation)

from graphscale import ops
from graphscale.errors import ConfigError
from graphscale.ops import CSR

__all__ = ["GCNConv", "SAGEConv", "GENConv", "fused_reduce", "layer_graph"]

# Built-in aggregation modules with a fused op, by exact type (a subclass may change the semantics).
_SIMPLE = {SumAggregation: "sum", MeanAggregation: "mean", MaxAggregation: "max", MinAggregation: "min"}


def fused_reduce(conv: MessagePassing) -> Optional[str]:
    """The graphscale reduce that ``conv``'s aggregation fuses to (``'sum' | 'mean' | 'max' | 'min' |
    'softmax' | 'pmean'``), or ``None`` when it runs PyG's generic message + aggregate path."""
    m = getattr(conv, "aggr_module", None)
    if type(m) in _SIMPLE:
        return _SIMPLE[type(m)]
    if type(m) is SoftmaxAggregation and m.channels == 1 and not m.semi_grad:
        return "softmax"
    if type(m) is PowerMeanAggregation and m.channels == 1:
        return "pmean"
    return None


def _check_backend(backend: Optional[str]) -> Optional[str]:
    if backend is not None and str(backend).lower() not in ops.BACKENDS:
        raise ConfigError(f"unknown aggregation backend {backend!r}; expected one of {', '.join(ops.BACKENDS)}")
    return backend


class _Fused:
    """``propagate`` with a fused path; mixed into each PyG conv subclass below.

    ``propagate`` is assigned in each class body (not only inherited from here): PyG compiles a
    class's ``propagate`` from a template unless the class defines its own, which it then keeps.
    """

    fused: bool = True  # False: always PyG's message + aggregate path (for comparisons)

    def _fusable(self, edge_index, kwargs: dict) -> bool:
        if not self.fused or self.explain or self.decomposed_layers > 1:
            return False
        if self.flow != "source_to_target" or self.node_dim not in (-2, 0):
            return False
        if (self._message_forward_pre_hooks or self._message_forward_hooks
                or self._aggregate_forward_pre_hooks or self._aggregate_forward_hooks):
            return False  # hooks that must see per-edge messages
        if isinstance(edge_index, CSR):
            return True
        if not isinstance(edge_index, Tensor) or isinstance(edge_index, EdgeIndex):
            return False
        return fused_reduce(self) is not None

    def _propagate(self, edge_index, size=None, **kwargs):
        if not self._fusable(edge_index, kwargs):
            if isinstance(edge_index, CSR):
                edge_index, kwargs = self._unfuse_csr(edge_index, kwargs)
            if self.explain or self.decomposed_layers > 1:  # as PyG: the generic propagate
                return MessagePassing.propagate(self, edge_index, size, **kwargs)
            return self._pyg_propagate(edge_index, size, **kwargs)
        return self._fused_propagate(edge_index, size, kwargs)

    def _pyg_propagate(self, edge_index, size=None, **kwargs):
        """PyG's class's own ``propagate``: the one PyG generates from its template for that class
        (faster per call than the generic ``MessagePassing.propagate``), made on first use."""
        pyg_cls = self._PYG
        if "_jinja_propagate" not in pyg_cls.__dict__:
            # PyG generates it when the first instance of its class is built: build a tiny one (its
            # random initialisation must not move the caller's random stream)
            with torch.random.fork_rng(devices=[]):
                pyg_cls(1, 1)
        return pyg_cls.propagate(self, edge_index, size=size, **kwargs)

    def _fused_propagate(self, edge_index, size, kwargs):
        for hook in self._propagate_forward_pre_hooks.values():
            res = hook(self, (edge_index, size, kwargs))
            if res is not None:
                edge_index, size, kwargs = res
        for hook in self._message_and_aggregate_forward_pre_hooks.values():
            res = hook(self, (edge_index, kwargs))
            if res is not None:
                edge_index, kwargs = res
        out = self._fused_aggregate(edge_index, size, **kwargs)
        for hook in self._message_and_aggregate_forward_hooks.values():
            res = hook(self, (edge_index, kwargs), out)
            if res is not None:
                out = res
        out = self.update(out)
        for hook in self._propagate_forward_hooks.values():
            res = hook(self, (edge_index, size, kwargs), out)
            if res is not None:
                out = res
        return out

    @torch.compiler.disable  # sorting edges into a CSR (and its cache) is data-dependent: a graph break
    def _adj(self, edge_index, x_src: Tensor, x_dst: Optional[Tensor], size) -> CSR:
        if isinstance(edge_index, CSR):
            return edge_index
        if edge_index.layout != torch.strided:
            return ops.as_csr(edge_index)
        n_src = x_src.size(0) if size is None or size[0] is None else int(size[0])
        if size is not None and size[1] is not None:
            n_dst = int(size[1])
        else:
            n_dst = x_dst.size(0) if x_dst is not None else n_src
        return ops.as_csr(edge_index, (n_src, n_dst))

    def _unfuse_csr(self, adj: CSR, kwargs: dict):
        # PyG's path needs an edge_index: the CSR's edges in CSR order, per-edge values reordered.
        kwargs = dict(kwargs)
        for key in ("edge_weight", "edge_attr"):
            if kwargs.get(key) is not None:
                kwargs[key] = adj.edge_order(kwargs[key])
        if "edge_weight" in kwargs and kwargs["edge_weight"] is None and adj.value is not None:
            kwargs["edge_weight"] = adj.value
        return torch.stack([adj.col, adj.row]), kwargs


def _pair(x):
    return (x, x) if isinstance(x, Tensor) else x


class GCNConv(_Fused, pyg_nn.GCNConv):
    """Graph convolution of Kipf & Welling (ICLR 2017), ``X' = D^-1/2 (A + I) D^-1/2 X W + b``:
    :class:`torch_geometric.nn.GCNConv` (every option, PyG's normalisation ``gcn_norm``) whose
    propagation is :func:`graphscale.ops.spmm` for ``aggr`` in ``add | sum | mean | max | min``.

    Args:
        in_channels, out_channels, improved, cached, add_self_loops, normalize, bias, ``**kwargs``
            (``aggr``, ``flow``, ``node_dim``, ``decomposed_layers``): as in PyG.
        backend: aggregation backend (``None`` = ``GRAPHSCALE_BACKEND`` / auto).

    Shapes: ``x [N, F_in]``, ``edge_index [2, E]`` (or ``adj_t`` / :class:`~graphscale.ops.CSR`),
    ``edge_weight [E]`` -> ``[N, F_out]``. A CSR with ``normalize=False`` is propagated as it is
    (pre-normalised weights in ``CSR.value``: no per-call work at all).
    """

    propagate = _Fused._propagate
    _PYG = pyg_nn.GCNConv

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, cached: bool = False,
                 add_self_loops: Optional[bool] = None, normalize: bool = True, bias: bool = True,
                 backend: Optional[str] = None, **kwargs):
        super().__init__(in_channels, out_channels, improved=improved, cached=cached,
                         add_self_loops=add_self_loops, normalize=normalize, bias=bias, **kwargs)
        self.backend = _check_backend(backend)

    def forward(self, x: Tensor, edge_index, edge_weight: Optional[Tensor] = None) -> Tensor:
        if isinstance(edge_index, CSR) and self.normalize:
            edge_weight = edge_index.edge_order(edge_weight) if edge_weight is not None else edge_index.value
            edge_index = torch.stack([edge_index.col, edge_index.row])
        return super().forward(x, edge_index, edge_weight)

    def _fused_aggregate(self, edge_index, size, x: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        adj = self._adj(edge_index, x, None, size)
        w = adj.edge_order(edge_weight)
        if w is not None and w.dtype != x.dtype:
            w = w.to(x.dtype)
        return ops.spmm(adj, x, fused_reduce(self), w, backend=self.backend)


class SAGEConv(_Fused, pyg_nn.SAGEConv):
    """GraphSAGE convolution (Hamilton, Ying, Leskovec, NeurIPS 2017),
    ``x'_i = W_l AGG_{j in N(i)} x_j + W_r x_i`` (+ ``project``, ``normalize``):
    :class:`torch_geometric.nn.SAGEConv` (every option) whose aggregation is
    :func:`graphscale.ops.spmm` for ``aggr`` in ``mean | sum | add | max | min`` (``max`` / ``min``
    gradients split among ties exactly as PyG's).

    Args:
        in_channels, out_channels, aggr, normalize, root_weight, project, bias, ``**kwargs``: as in PyG.
        backend: aggregation backend (``None`` = ``GRAPHSCALE_BACKEND`` / auto).

    Shapes: ``x [N, F_in]`` or ``(x_src [N_s, F_s], x_dst [N_d, F_d])``, ``edge_index [2, E]`` (or
    ``adj_t`` / CSR) -> ``[N_d, F_out]``.
    """

    propagate = _Fused._propagate
    _PYG = pyg_nn.SAGEConv

    def __init__(self, in_channels, out_channels: int, aggr="mean", normalize: bool = False,
                 root_weight: bool = True, project: bool = False, bias: bool = True,
                 backend: Optional[str] = None, **kwargs):
        super().__init__(in_channels, out_channels, aggr=aggr, normalize=normalize, root_weight=root_weight,
                         project=project, bias=bias, **kwargs)
        self.backend = _check_backend(backend)

    def _fused_aggregate(self, edge_index, size, x) -> Tensor:
        x_src, x_dst = _pair(x)
        adj = self._adj(edge_index, x_src, x_dst, size)
        return ops.spmm(adj, x_src, fused_reduce(self), backend=self.backend)


class GENConv(_Fused, pyg_nn.GENConv):
    """GENeralized graph convolution of DeeperGCN (Li, Xiong, Thabet, Ghanem 2020, arXiv:2006.07739):
    ``x'_i = MLP(x_i + AGG_{j in N(i)}(relu(x_j + e_ji) + eps))``: :class:`torch_geometric.nn.GENConv`
    (every option) with the message construction fused into the aggregation:

    * ``softmax`` (learnable ``t``): :func:`graphscale.ops.softmax_aggr` (Triton on CUDA);
    * without edge features the message is a function of the source node, so ``powermean``
      (learnable ``p``) and ``sum | add | mean | max | min`` are :func:`graphscale.ops.spmm` on
      ``relu(x) + eps``;
    * with edge features, ``max | min``: :func:`graphscale.ops.gen_aggr`; ``sum | mean | powermean``
      take PyG's path (slower fused on CPU, see :attr:`fused_edge_reduces`).

    A fused path keeps no ``[E, F]`` message tensor for backward. ``softmax_sg``, per-channel
    ``t`` / ``p`` and other aggregations run PyG's path, and so does an ``edge_index`` whose average
    in-degree is below :attr:`fuse_min_degree` (20; there PyG's path was measured faster on CPU;
    a CSR or sparse ``adj_t`` input is always fused).

    Args:
        in_channels, out_channels, aggr, t, learn_t, p, learn_p, msg_norm, learn_msg_scale, norm,
            num_layers, expansion, eps, bias, edge_dim, ``**kwargs``: as in PyG.
        backend: aggregation backend (``None`` = ``GRAPHSCALE_BACKEND`` / auto).

    Shapes: ``x [N, F_in]`` or a pair, ``edge_index [2, E]`` (or ``adj_t`` / CSR),
    ``edge_attr [E, edge_dim]`` in ``edge_index`` order -> ``[N_d, F_out]``.
    """

    propagate = _Fused._propagate
    _PYG = pyg_nn.GENConv
    # Aggregations fused together with edge features (graphscale.ops.softmax_aggr / gen_aggr). Measured
    # on the 2-core CPU (2,000 nodes x degree 600, F=16, one layer forward + backward, PyG's time = 1):
    # softmax 0.67, max 0.75; sum 1.4, mean 1.24, powermean 1.27 -- those three take PyG's path unless
    # added here (per instance: conv.fused_edge_reduces = {...}; they then keep no [E, F] tensor for
    # backward, at that cost in time).
    fused_edge_reduces = frozenset({"softmax", "max", "min"})

    def __init__(self, in_channels, out_channels: int, aggr="softmax", t: float = 1.0, learn_t: bool = False,
                 p: float = 1.0, learn_p: bool = False, msg_norm: bool = False, learn_msg_scale: bool = False,
                 norm: str = "batch", num_layers: int = 2, expansion: int = 2, eps: float = 1e-7,
                 bias: bool = False, edge_dim: Optional[int] = None, backend: Optional[str] = None, **kwargs):
        super().__init__(in_channels, out_channels, aggr=aggr, t=t, learn_t=learn_t, p=p, learn_p=learn_p,
                         msg_norm=msg_norm, learn_msg_scale=learn_msg_scale, norm=norm, num_layers=num_layers,
                         expansion=expansion, eps=eps, bias=bias, edge_dim=edge_dim, **kwargs)
        self.backend = _check_backend(backend)

    # Below this average in-degree (edges / destination nodes) PyG's path is faster: measured on the
    # 2-core CPU, one thread, F=32, one layer forward + backward on a fresh graph each step (the CSR
    # built inside), graphscale / PyG time: softmax 1.74 / 1.29 / 0.99 / 1.0 at degree 2 / 10 / 20 /
    # 200, max 1.9 / 1.6 / 1.03 / 0.57.
    fuse_min_degree: float = 20.0

    def _fusable(self, edge_index, kwargs: dict) -> bool:
        if kwargs.get("edge_attr") is not None and fused_reduce(self) not in self.fused_edge_reduces:
            return False
        if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided and edge_index.dim() == 2:
            x = kwargs.get("x")
            x_dst = x[1] if isinstance(x, (tuple, list)) and x[1] is not None else _pair(x)[0]
            if edge_index.size(1) < self.fuse_min_degree * max(1, x_dst.size(0)):
                return False
        return _Fused._fusable(self, edge_index, kwargs)

    def _fused_aggregate(self, edge_index, size, x, edge_attr: Optional[Tensor] = None) -> Tensor:
        x_src, x_dst = _pair(x)
        adj = self._adj(edge_index, x_src, x_dst, size)
        if edge_attr is not None:
            if hasattr(self, "lin_edge"):
                edge_attr = self.lin_edge(edge_attr)
            if edge_attr.size(-1) != x_src.size(-1):
                raise ValueError(f"edge_attr has {edge_attr.size(-1)} features but x has {x_src.size(-1)}; "
                                 f"set edge_dim={edge_attr.size(-1)} to project them")
            edge_attr = adj.edge_order(edge_attr)
        reduce = fused_reduce(self)
        m = self.aggr_module
        if reduce == "softmax":
            t = m.t.to(x_src.dtype) if isinstance(m.t, Tensor) else m.t
            return ops.softmax_aggr(adj, x_src, t, edge_attr, relu=True, eps=self.eps, backend=self.backend)
        if reduce == "pmean":
            return self._powermean(adj, x_src, edge_attr, m)
        if edge_attr is None:  # the message relu(x_j) + eps is a function of the source node alone
            return ops.spmm(adj, x_src.relu() + self.eps, reduce, backend=self.backend)
        return ops.gen_aggr(adj, x_src, edge_attr, reduce, eps=self.eps, backend=self.backend)

    def _powermean(self, adj: CSR, x: Tensor, edge_attr: Optional[Tensor], m: PowerMeanAggregation) -> Tensor:
        # PyG's PowerMeanAggregation: with p a plain 1 (not learned) no clamp and no power at all.
        p, lo, hi = m.p, m.min_value, m.max_value
        if isinstance(p, Tensor):
            p = p.to(x.dtype)
        elif p == 1:
            if edge_attr is None:
                return ops.spmm(adj, x.relu() + self.eps, "mean", backend=self.backend)
            return ops.gen_aggr(adj, x, edge_attr, "mean", eps=self.eps, backend=self.backend)
        if edge_attr is None:
            inner = ops.spmm(adj, (x.relu() + self.eps).clamp(lo, hi).pow(p), "mean", backend=self.backend)
        else:
            inner = ops.gen_aggr(adj, x, edge_attr, "pmean", eps=self.eps, p=p, clamp=(lo, hi),
                                 backend=self.backend)
        return inner.clamp(lo, hi).pow(1.0 / p)


def layer_graph(edge_index, num_nodes: int, edge_attr: Optional[Tensor] = None,
                min_degree: Optional[float] = None):
    """``(graph, edge_attr)`` to hand to every layer of a model built from graphscale convs.

    When the graph is dense enough for the fused path (average in-degree ``>= min_degree``) this is
    a :class:`~graphscale.ops.CSR` whose edges are in CSR order and ``edge_attr [E, D]`` permuted into
    that order **once**: the layers then read edge features in place instead of each permuting its
    own ``[E, F]`` copy (``CSR.edge_order``). Otherwise (or for a non-``edge_index`` input) the inputs
    come back unchanged, and the layers take PyG's path. ``min_degree`` defaults to
    :attr:`GENConv.fuse_min_degree`.
    """
    min_degree = GENConv.fuse_min_degree if min_degree is None else min_degree
    if not isinstance(edge_index, Tensor) or edge_index.layout != torch.strided or \
            edge_index.size(1) < min_degree * max(1, num_nodes):
        return edge_index, edge_attr
    adj = _as_csr_compiled(edge_index, num_nodes)
    view = adj.cached("layer_graph", lambda: CSR(adj.rowptr, adj.col, adj.num_cols, validate=False))
    return view, adj.edge_order(edge_attr)


@torch.compiler.disable  # data-dependent sort (see _Fused._adj)
def _as_csr_compiled(edge_index: Tensor, num_nodes: int) -> CSR:
    return ops.as_csr(edge_index, num_nodes)
