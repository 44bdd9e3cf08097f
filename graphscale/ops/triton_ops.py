"""Autograd Functions over the Triton launchers in ``graphscale_triton`` (imported lazily).

Same semantics as :mod:`graphscale.ops.reference` (the specification). Each Function keeps what
backward needs through ``ctx.save_for_backward`` only, in one place; ``ctx.adj`` is the graph
structure (owned by the caller, not an activation).
"""
from __future__ import annotations

import torch
from torch import Tensor

from graphscale.ops.csr import CSR

__all__ = ["spmm", "softmax_aggr", "TritonSpMM", "TritonSoftmaxAggr"]


def _kernels():
    from graphscale_triton import softmax_aggr as sk
    from graphscale_triton import spmm as mk
    return mk, sk


class TritonSpMM(torch.autograd.Function):
    """sum / mean / max / min SpMM; backward over the cached transposed CSR."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, w: Tensor | None, reduce: str):
        mk, _ = _kernels()
        out, arg = mk.spmm_forward(adj.rowptr, adj.col, x, w, reduce)
        ctx.adj, ctx.reduce = adj, reduce
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None,
                              w if ctx.needs_input_grad[1] else None, arg)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, arg = ctx.saved_tensors
        adj: CSR = ctx.adj
        mk, _ = _kernels()
        at = adj.t()
        gx, gw = mk.spmm_backward(adj.rowptr, at.rowptr, at.col, at.perm, g.contiguous(), x, w, arg,
                                  ctx.reduce, adj.num_cols, need_x=ctx.needs_input_grad[1],
                                  need_weight=ctx.needs_input_grad[2])
        return None, gx, gw, None


class TritonSoftmaxAggr(torch.autograd.Function):
    """Fused softmax aggregation; saves ``x``, ``edge_attr``, ``t``, ``out``, ``lse`` (no ``[E, F]``)."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, t: Tensor, ea: Tensor | None, relu: bool, eps: float):
        _, sk = _kernels()
        out, lse = sk.softmax_aggr_forward(adj.rowptr, adj.col, x, t, ea, relu, eps)
        ctx.adj, ctx.relu, ctx.eps = adj, relu, eps
        ctx.save_for_backward(x, ea, t, out, lse)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, ea, t, out, lse = ctx.saved_tensors
        adj: CSR = ctx.adj
        _, sk = _kernels()
        at = adj.t()
        gx, gea, gt = sk.softmax_aggr_backward(at.rowptr, at.col, at.perm, g.contiguous(), x, t, ea, out, lse,
                                               ctx.relu, ctx.eps, need_edge_attr=ctx.needs_input_grad[3],
                                               need_t=ctx.needs_input_grad[2])
        return None, gx, gt, gea, None, None


def spmm(adj: CSR, x: Tensor, reduce: str = "sum", edge_weight: Tensor | None = None) -> Tensor:
    return TritonSpMM.apply(adj, x, edge_weight, reduce)


def softmax_aggr(adj: CSR, x: Tensor, t: Tensor, edge_attr: Tensor | None = None, relu: bool = True,
                 eps: float = 0.0) -> Tensor:
    return TritonSoftmaxAggr.apply(adj, x, t.to(x.dtype), edge_attr, relu, eps)
