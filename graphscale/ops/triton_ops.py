"""Autograd Functions over the Triton launchers in ``graphscale_triton`` (imported lazily).

Same semantics as :mod:`graphscale.ops.reference` (the specification). Each Function keeps what
backward needs through ``ctx.save_for_backward`` only, in one place; ``ctx.adj`` is the graph
structure (owned by the caller, not an activation).

Degree balancing: rows longer than ``chunk`` edges are split into work items
(``graphscale_triton.schedule``). The schedule of a CSR and of its transpose is built once (one
device sync) and cached on the CSR object. ``chunk`` defaults to
``graphscale_triton.schedule.default_chunk`` (8x the average degree, at least 256); the
``GRAPHSCALE_TRITON_CHUNK`` environment variable overrides it (a positive number of edges, or ``off``
for one program per row), which is how tests force splits on small graphs and how the device check
compares both schedules.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from graphscale.errors import ConfigError
from graphscale.ops.csr import CSR, keep_edge_weight, kept_edge_weight

__all__ = ["spmm", "softmax_aggr", "TritonSpMM", "TritonSoftmaxAggr", "CHUNK_ENV", "schedule_of"]

CHUNK_ENV = "GRAPHSCALE_TRITON_CHUNK"


def _kernels():
    from graphscale_triton import softmax_aggr as sk
    from graphscale_triton import spmm as mk
    return mk, sk


def _chunk_setting() -> int | None:
    """Edges per work item from ``GRAPHSCALE_TRITON_CHUNK``: an int, 0 for off, None = default."""
    raw = os.environ.get(CHUNK_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in ("off", "0"):
        return 0
    if not raw.isdigit():
        raise ConfigError(f"{CHUNK_ENV}={raw!r}: expected a positive number of edges per work item, or 'off'")
    return int(raw)


def schedule_of(adj: CSR):
    """The cached row-split schedule of ``adj`` (None: one program per row)."""
    from graphscale_triton.schedule import build_schedule, default_chunk
    chunk = _chunk_setting()
    if chunk == 0:
        return None
    if chunk is None:
        chunk = default_chunk(adj.num_rows, adj.num_edges)
    return adj.cached(("triton_schedule", chunk), lambda: build_schedule(adj.rowptr, chunk))


class TritonSpMM(torch.autograd.Function):
    """sum / mean / max / min SpMM; backward over the cached transposed CSR."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, w: Tensor | None, reduce: str):
        mk, _ = _kernels()
        out, arg = mk.spmm_forward(adj.rowptr, adj.col, x, w, reduce, schedule=schedule_of(adj))
        ctx.adj, ctx.reduce = adj, reduce
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None,
                              keep_edge_weight(ctx, w, ctx.needs_input_grad[1], ctx.needs_input_grad[2]), arg)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, arg = ctx.saved_tensors
        w = kept_edge_weight(ctx, w)
        adj: CSR = ctx.adj
        mk, _ = _kernels()
        at = adj.t()
        gx, gw = mk.spmm_backward(adj.rowptr, at.rowptr, at.col, at.perm, g.contiguous(), x, w, arg,
                                  ctx.reduce, adj.num_cols, need_x=ctx.needs_input_grad[1],
                                  need_weight=ctx.needs_input_grad[2], schedule=schedule_of(at))
        return None, gx, gw, None


class TritonSoftmaxAggr(torch.autograd.Function):
    """Fused softmax aggregation; saves ``x``, ``edge_attr``, ``t``, ``out``, ``lse`` (no ``[E, F]``)."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, t: Tensor, ea: Tensor | None, relu: bool, eps: float):
        _, sk = _kernels()
        out, lse = sk.softmax_aggr_forward(adj.rowptr, adj.col, x, t, ea, relu, eps, schedule=schedule_of(adj))
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
                                               need_t=ctx.needs_input_grad[2], schedule=schedule_of(at))
        return None, gx, gt, gea, None, None


def spmm(adj: CSR, x: Tensor, reduce: str = "sum", edge_weight: Tensor | None = None) -> Tensor:
    return TritonSpMM.apply(adj, x, edge_weight, reduce)


def softmax_aggr(adj: CSR, x: Tensor, t: Tensor, edge_attr: Tensor | None = None, relu: bool = True,
                 eps: float = 0.0) -> Tensor:
    return TritonSoftmaxAggr.apply(adj, x, t.to(x.dtype), edge_attr, relu, eps)
