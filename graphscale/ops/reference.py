"""Pure-torch aggregation ops: the specification, the CPU path and the test oracle (DESIGN rule 2).

Semantics (every backend must match them, outputs and gradients):

* ``spmm(adj, x, reduce, w)``: ``out[i] = REDUCE_{e=(j->i)} w_e * x[j]`` over the stored edges of row
  ``i`` (duplicates count twice, self-loops are ordinary edges); ``w_e = 1`` without weights.
  ``mean`` divides the weighted sum by the number of stored edges of the row (PyG's ``aggr='mean'``
  of ``w_e x_j`` messages). ``max`` / ``min`` are per feature; the gradient of a row is **split
  evenly among the edges whose message attains the extremum** (ties share it), and when the extremum
  is exactly 0 the count has one more (phantom) member, so ``k`` tied messages get ``g / (k + 1)``
  each: the rule of PyG's max / min aggregation, ``zeros(N, F).scatter_reduce_(..., 'amax' / 'amin',
  include_self=False)`` (torch-scatter absent), whose backward counts the initial zero as a tie.
  ``ties='first'`` instead routes it all to the first edge (CSR order) attaining the extremum: the
  rule of the Triton kernels. Rows without edges give 0.
* ``gen_aggr(adj, x, edge_attr, reduce)``: GENConv's messages ``m_e = relu(x[j] + edge_attr[e]) + eps``
  reduced by ``sum | mean | max | min`` (ties as above) or ``pmean``: the mean of
  ``clamp(m_e, lo, hi) ** p`` (the inner part of PyG's ``PowerMeanAggregation``; ``p`` learnable).
* ``softmax_aggr(adj, x, t, edge_attr)``: GENConv's softmax aggregation (Li et al. 2020, DeeperGCN,
  eq. 4): messages ``m_e = relu(x[j] + edge_attr[e]) + eps`` (``relu`` optional), then per row
  and feature ``out[i] = sum_e softmax_e(t * m_e) * m_e`` with an inverse temperature ``t``
  (scalar, learnable). Rows without edges give 0. Gradients (``a_e`` = softmax weight):
  ``d out / d m_e = a_e (1 + t (m_e - out_i))`` and ``d out / d t = sum_e a_e m_e (m_e - out_i)``.

The autograd Functions here save what backward needs with ``ctx.save_for_backward`` only (so
``saved_tensors_hooks`` -- activation compression, byte counting -- see every activation), in one
place per Function; ``ctx.adj`` is the graph structure, owned by the caller, not an activation, and so
are edge weights that need no gradient (kept on ``ctx`` by :func:`~graphscale.ops.csr.keep_edge_weight`
and reported to byte counts).

CPU fast paths (measured on the 2-core dev machine, arxiv-sized random graph, 169k nodes, 2.3M
edges, 128 features): ``torch.sparse.mm`` on CSR ~300-640 ms (busy machine) vs ~1270 ms for
gather + ``index_add_``; ``torch.sparse.mm(..., reduce='amax')`` ~510 ms and it does not
materialise the ``[E, F]`` messages. ``torch.sparse.sampled_addmm`` gives the edge-weight gradient
(an SDDMM) without ``[E, F]`` temporaries either.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from graphscale.ops.csr import CSR, keep_edge_weight, kept_edge_weight

__all__ = ["spmm", "softmax_aggr", "gen_aggr", "SpMMSumMean", "SpMMMaxMin", "SpMMMaxMinFirst", "SoftmaxAggr",
           "GenAggr"]

# torch's CPU CSR kernel for max/min also returns the arg index (first edge attaining it; E for an
# empty row). Private but present since torch 2.0; a gather + scatter fallback covers its absence.
_MM_REDUCE = getattr(torch.ops.aten, "_sparse_mm_reduce_impl", None)


def _rows(t: Tensor, idx: Tensor) -> Tensor:
    # index_select, not t[idx]: 4-6x faster for row gathers on CPU (measured, 100k x 32, 1 thread).
    return t.index_select(0, idx)


def _inv_degree(adj: CSR, dtype: torch.dtype) -> Tensor:
    return 1.0 / adj.degree(dtype).clamp(min=1)


def _sddmm(adj: CSR, a: Tensor, b: Tensor) -> Tensor:
    """``[E]``: ``<a[row_e], b[col_e]>`` for every stored edge (the edge-weight gradient)."""
    if a.device.type == "cpu" and adj.num_edges:
        pattern = adj.sparse_tensor(None, a.dtype)
        return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.t(), beta=0.0).values()
    return (_rows(a, adj.row) * _rows(b, adj.col)).sum(-1)


def _spmm_sum(adj: CSR, w: Tensor | None, x: Tensor) -> Tensor:
    if x.device.type == "cpu":
        return torch.sparse.mm(adj.sparse_tensor(w, x.dtype), x)
    msg = _rows(x, adj.col) if w is None else _rows(x, adj.col) * w[:, None]
    return torch.zeros(adj.num_rows, x.size(1), dtype=x.dtype, device=x.device).index_add_(0, adj.row, msg)


class SpMMSumMean(torch.autograd.Function):
    """``sum`` / ``mean`` aggregation; backward walks the transposed CSR (``A^T g``)."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, w: Tensor | None, mean: bool):
        out = _spmm_sum(adj, w, x)
        if mean:
            out.mul_(_inv_degree(adj, x.dtype)[:, None])
        ctx.adj, ctx.mean, ctx.has_w = adj, mean, w is not None
        # Saved: x only for the weight gradient (SDDMM), w only for the input gradient.
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None,
                              keep_edge_weight(ctx, w, ctx.needs_input_grad[1], ctx.needs_input_grad[2]))
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        w = kept_edge_weight(ctx, w)
        adj: CSR = ctx.adj
        g = g.contiguous()
        if ctx.mean:
            g = g * _inv_degree(adj, g.dtype)[:, None]
        gx = gw = None
        if ctx.needs_input_grad[1]:
            at = adj.t()
            gx = _spmm_sum(at, None if w is None else _rows(w, at.perm), g)
        if ctx.needs_input_grad[2]:
            gw = _sddmm(adj, g, x)
        return None, gx, gw, None


def _row_blocks(adj: CSR, width: int) -> list[tuple[int, int, int, int, Tensor, Tensor]]:
    """``(r0, r1, e0, e1, offsets, row)`` blocks of whole rows holding about ``_BLOCK_ELEMS / width``
    edges each (a row longer than that is a block of its own), with the block-local ``offsets``
    (``segment_reduce``) and ``row`` of its edges; cached per width on the CSR. The ops below walk
    them so that no ``[E, F]`` temporary is ever alive, only ``[E_block, F]`` ones."""
    step = max(1, _BLOCK_ELEMS // max(1, width))

    def build():
        rp = adj.rowptr
        e = adj.num_edges
        cuts = torch.searchsorted(rp, torch.arange(step, e, step, device=rp.device)).tolist() if e > step else []
        rows = sorted(set([0] + [c for c in cuts if 0 < c < adj.num_rows] + [adj.num_rows]))
        offs = rp[torch.tensor(rows, device=rp.device)].tolist()
        return [(r0, r1, e0, e1, rp[r0:r1 + 1] - e0, adj.row[e0:e1] - r0)
                for r0, r1, e0, e1 in zip(rows[:-1], rows[1:], offs[:-1], offs[1:]) if r0 < r1]
    return adj.cached(("row_blocks", step), build)


# Elements per [E_block, F] temporary. Measured (this 2-core machine, 2,000 nodes x degree 600, F=16,
# GENConv max aggregation with edge features, forward + backward): 2^20..2^22 within noise of each
# other; the temporaries then stay in cache-sized pieces and the allocator reuses them.
_BLOCK_ELEMS = 1 << 21


def _source_sum(adj: CSR, gm: Tensor) -> Tensor:
    """``[N_src, F]``: per source node, the sum of the ``[E, F]`` per-edge rows ``gm`` (CSR order).
    A CSR product over the transposed structure (rows = sources, columns = edge positions). Measured
    on the 2-core machine (torch profiler, GENConv max backward, 1.2M edges, F=16): ``index_add_`` over
    ``col`` 2.3 s, this product below the 0.13 s of the smallest listed op after the switch."""
    at = adj.t()
    if gm.device.type == "cpu":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            sel = torch.sparse_csr_tensor(at.rowptr, at.perm, at.ones(gm.dtype), (adj.num_cols, adj.num_edges),
                                          check_invariants=False)
        return torch.sparse.mm(sel, gm)
    return torch.zeros(adj.num_cols, gm.size(1), dtype=gm.dtype, device=gm.device).index_add_(0, adj.col, gm)


def _segment_extreme(v: Tensor, offsets: Tensor, is_max: bool) -> Tensor:
    out = torch.segment_reduce(v, "max" if is_max else "min", offsets=offsets, axis=0, unsafe=True)
    return torch.where(torch.isfinite(out), out, 0) if v.dtype.is_floating_point else out


def _tie_share(msg: Tensor, offsets: Tensor, row: Tensor, g: Tensor, is_max: bool) -> Tensor:
    """``[E_b, F]`` gradient of the block's max / min w.r.t. its messages, by the rule of PyG's max / min
    aggregation, which is ``torch.zeros(N, F).scatter_reduce_(0, index, msg, 'amax' / 'amin',
    include_self=False)`` (without torch-scatter): ``g`` of a row is split evenly among the messages
    equal to the extremum, and torch's backward counts the zero the output was initialised with as
    one more tie when the extremum is exactly 0 (measured, torch 2.13: messages ``[0, 1, 0]`` under
    ``amin`` get ``[1/3, 0, 1/3]``), so such a row passes on only ``k / (k + 1)`` of its gradient.
    The extremum is recomputed from ``msg`` itself, so the rule holds even when what was saved for
    backward is a quantized copy (the count is never 0)."""
    ext = _segment_extreme(msg, offsets, is_max)
    hit = (msg == ext.index_select(0, row)).to(msg.dtype)
    count = torch.segment_reduce(hit, "sum", offsets=offsets, axis=0, unsafe=True).add_(ext == 0)
    return hit.mul_((g / count.clamp_min_(1)).index_select(0, row))


class SpMMMaxMinFirst(torch.autograd.Function):
    """``max`` / ``min`` with ``ties='first'``: the gradient of a row goes to the **first** edge (CSR order)
    attaining the extremum, the rule of the Triton kernels (``graphscale_triton.spmm``), kept here as
    their oracle. Saves ``arg [N, F]`` (edge position, ``E`` = empty row)."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, w: Tensor | None, is_max: bool):
        if _MM_REDUCE is not None and x.device.type == "cpu":
            with torch.enable_grad():  # the kernel fills `arg` only when an input requires grad
                out, arg = _MM_REDUCE(adj.sparse_tensor(w, x.dtype), x.detach().requires_grad_(),
                                      "amax" if is_max else "amin")
            out = out.detach()
        else:
            msg = _rows(x, adj.col) if w is None else _rows(x, adj.col) * w[:, None]
            idx = adj.row[:, None].expand_as(msg)
            out = torch.full((adj.num_rows, x.size(1)), -torch.inf if is_max else torch.inf, dtype=x.dtype,
                             device=x.device).scatter_reduce_(0, idx, msg, "amax" if is_max else "amin")
            pos = torch.arange(adj.num_edges, device=x.device)[:, None].expand_as(msg)
            pos = torch.where(msg == _rows(out, adj.row), pos, adj.num_edges)
            arg = torch.full_like(out, adj.num_edges, dtype=torch.long).scatter_reduce_(0, idx, pos, "amin")
            out = torch.where(arg < adj.num_edges, out, 0)
        ctx.adj = adj
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None,
                              keep_edge_weight(ctx, w, ctx.needs_input_grad[1], ctx.needs_input_grad[2]), arg)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, arg = ctx.saved_tensors
        w = kept_edge_weight(ctx, w)
        adj: CSR = ctx.adj
        pad = torch.zeros(1, dtype=torch.long, device=g.device)
        # Position E marks an empty row: it maps to source 0 with coefficient 0 (no contribution).
        src = torch.cat([adj.col, pad]).index_select(0, arg.view(-1)).view_as(arg)  # [N, F] winning source
        gx = gw = None
        if ctx.needs_input_grad[1]:
            coef = torch.cat([adj.ones(g.dtype) if w is None else w, pad.to(g.dtype)])
            gsrc = g * coef.index_select(0, arg.view(-1)).view_as(g)
            gx = torch.zeros(adj.num_cols, g.size(1), dtype=g.dtype, device=g.device).scatter_add_(0, src, gsrc)
        if ctx.needs_input_grad[2]:
            gw = torch.zeros(adj.num_edges + 1, dtype=g.dtype, device=g.device)
            gw.index_add_(0, arg.view(-1), (g * x.gather(0, src)).view(-1))
            gw = gw[:-1]
        return None, gx, gw, None


class SpMMMaxMin(torch.autograd.Function):
    """``max`` / ``min`` aggregation. Forward: torch's CSR reduce kernel (no ``[E, F]`` messages).
    Backward: the gradient of a row is split among its messages that attain the extremum (the PyG /
    torch ``scatter_reduce`` rule of :func:`_tie_share`), recomputed block by block from the saved ``x`` (and
    ``w``): saves ``x`` and ``w``, nothing ``[E, F]``."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, w: Tensor | None, is_max: bool):
        if _MM_REDUCE is not None and x.device.type == "cpu":
            out, _ = _MM_REDUCE(adj.sparse_tensor(w, x.dtype), x, "amax" if is_max else "amin")
            out = torch.where(adj.degree(x.dtype)[:, None] > 0, out, 0)
        else:
            out = torch.zeros(adj.num_rows, x.size(1), dtype=x.dtype, device=x.device)
            for r0, r1, e0, e1, offsets, _ in _row_blocks(adj, x.size(1)):
                msg = _rows(x, adj.col[e0:e1])
                if w is not None:
                    msg = msg * w[e0:e1, None]
                out[r0:r1] = _segment_extreme(msg, offsets, is_max)
        ctx.adj, ctx.is_max = adj, is_max
        ctx.save_for_backward(x, keep_edge_weight(ctx, w, True, ctx.needs_input_grad[2]))
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        w = kept_edge_weight(ctx, w)
        adj: CSR = ctx.adj
        need_x, need_w = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gsrc = torch.empty(adj.num_edges, x.size(1), dtype=g.dtype, device=g.device) if need_x else None
        gw = torch.zeros(adj.num_edges, dtype=g.dtype, device=g.device) if need_w else None
        for r0, r1, e0, e1, offsets, row in _row_blocks(adj, x.size(1)):
            xs = _rows(x, adj.col[e0:e1])
            msg = xs if w is None else xs * w[e0:e1, None]
            gm = _tie_share(msg, offsets, row, g[r0:r1], ctx.is_max)
            if need_w:
                gw[e0:e1] = (gm * xs).sum(-1)
            if need_x:
                gsrc[e0:e1] = gm if w is None else gm.mul_(w[e0:e1, None])
        return None, None if gsrc is None else _source_sum(adj, gsrc), gw, None


class GenAggr(torch.autograd.Function):
    """GENConv's message + aggregation in one pass (no ``[E, F]`` activation saved):
    ``m_e = relu(x[j] + edge_attr[e]) + eps``, then per row ``sum | mean | max | min`` of ``m_e``, or
    of ``clamp(m_e, lo, hi) ** p`` (``'pmean'``: the inner mean of PyG's ``PowerMeanAggregation``).
    Walks row blocks (:func:`_row_blocks`) forward and backward; saves ``x``, ``edge_attr`` and
    ``p``, and recomputes the messages in backward. ``max`` / ``min`` also save ``arg [N, F]`` (the
    edge attaining the extremum) for the row blocks without ties: there backward touches ``N * F``
    entries instead of recomputing the ``E * F`` messages (measured on this machine: the fully
    recomputing backward made the layer 1.2x slower than PyG's at degree 600); blocks with a tie
    (equal messages, or an extremum of exactly 0) are recomputed and split by :func:`_tie_share`."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, ea: Tensor, p: Tensor | None, reduce: str, eps: float,
                lo: float | None, hi: float | None):
        out = torch.zeros(adj.num_rows, x.size(1), dtype=x.dtype, device=x.device)
        extreme = reduce in ("max", "min")
        track = extreme and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        arg = torch.full(out.shape, -1, dtype=torch.long, device=x.device) if track else None
        tied: list[int] = []
        for b, (r0, r1, e0, e1, offsets, row) in enumerate(_row_blocks(adj, x.size(1))):
            m = (_rows(x, adj.col[e0:e1]) + ea[e0:e1]).clamp_min_(0).add_(eps)
            if extreme:
                ext = out[r0:r1] = _segment_extreme(m, offsets, reduce == "max")
                if track:
                    hit = (m == ext.index_select(0, row)).nonzero()  # [K, 2]: (local edge, feature)
                    filled = offsets[1:] > offsets[:-1]
                    if hit.size(0) != int(filled.sum()) * m.size(1) or bool(((ext == 0) & filled[:, None]).any()):
                        tied.append(b)  # some entry has 2+ equal messages (or the phantom tie at 0)
                    else:
                        arg[r0 + row.index_select(0, hit[:, 0]), hit[:, 1]] = e0 + hit[:, 0]
                continue
            if reduce == "pmean":
                m = m.clamp_(lo, hi).pow_(p)
            out[r0:r1] = torch.segment_reduce(m, "sum", offsets=offsets, axis=0, unsafe=True)
        if reduce in ("mean", "pmean"):
            out.mul_(_inv_degree(adj, x.dtype)[:, None])
        ctx.adj, ctx.reduce, ctx.eps, ctx.lo, ctx.hi, ctx.tied = adj, reduce, eps, lo, hi, set(tied)
        ctx.save_for_backward(x, ea, p, arg)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, ea, p, arg = ctx.saved_tensors
        adj: CSR = ctx.adj
        reduce = ctx.reduce
        if arg is not None:
            return GenAggr._extreme_backward(ctx, g, x, ea, arg)
        need_x, need_ea = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_p = reduce == "pmean" and ctx.needs_input_grad[3]
        if reduce in ("mean", "pmean"):
            g = g * _inv_degree(adj, g.dtype)[:, None]
        gm_all = torch.empty(adj.num_edges, x.size(1), dtype=g.dtype, device=g.device) if need_x or need_ea else None
        gp = torch.zeros((), dtype=g.dtype, device=g.device) if need_p else None
        for r0, r1, e0, e1, offsets, row in _row_blocks(adj, x.size(1)):
            pre = _rows(x, adj.col[e0:e1]) + ea[e0:e1]
            m = pre.clamp_min(0).add_(ctx.eps)
            if reduce in ("max", "min"):
                gm = _tie_share(m, offsets, row, g[r0:r1], reduce == "max")
            else:
                gm = _rows(g[r0:r1], row)
                if reduce == "pmean":
                    inside = (m >= ctx.lo) & (m <= ctx.hi)
                    mc = m.clamp_(ctx.lo, ctx.hi)
                    if need_p:
                        gp += (gm * mc.pow(p) * mc.log()).sum()
                    gm = gm.mul_(mc.pow_(p - 1).mul_(p)).mul_(inside)
            if gm_all is not None:  # relu: the gradient flows where pre > 0
                torch.ops.aten.threshold_backward.grad_input(gm, pre, 0, grad_input=gm_all[e0:e1])
        gx = _source_sum(adj, gm_all) if need_x else None
        gea = gm_all if need_ea else None
        return None, gx, gea, None if gp is None else gp.reshape(p.shape), None, None, None, None

    @staticmethod
    def _extreme_backward(ctx, g: Tensor, x: Tensor, ea: Tensor, arg: Tensor):
        adj: CSR = ctx.adj
        need_x, need_ea = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        f = x.size(1)
        dense = need_ea or bool(ctx.tied)  # an [E, F] gradient is needed (for edge_attr, or tied blocks)
        gm_all = torch.zeros(adj.num_edges, f, dtype=g.dtype, device=g.device) if dense else None
        gx = torch.zeros_like(x) if need_x and not dense else None
        for b, (r0, r1, e0, e1, offsets, row) in enumerate(_row_blocks(adj, f)):
            if b in ctx.tied:
                pre = _rows(x, adj.col[e0:e1]) + ea[e0:e1]
                m = pre.clamp_min(0).add_(ctx.eps)
                gm = _tie_share(m, offsets, row, g[r0:r1], ctx.reduce == "max")
                torch.ops.aten.threshold_backward.grad_input(gm, pre, 0, grad_input=gm_all[e0:e1])
                continue
            a = arg[r0:r1]
            rr, ff = (a >= 0).nonzero(as_tuple=True)
            e = a[rr, ff]
            src = adj.col.index_select(0, e)
            # relu: the gradient flows where the winning message's pre-activation is > 0
            val = torch.where(x[src, ff] + ea[e, ff] > 0, g[r0:r1][rr, ff], 0)
            if dense:
                gm_all[e, ff] = val
            else:
                gx.index_put_((src, ff), val, accumulate=True)
        if dense:
            gx = _source_sum(adj, gm_all) if need_x else None
        return None, gx, gm_all if need_ea else None, None, None, None, None, None


def _messages(adj: CSR, x: Tensor, ea: Tensor | None, relu: bool, eps: float,
              keep_pre: bool = True) -> tuple[Tensor | None, Tensor]:
    """``(pre, m)``: pre-activations ``x[j] + e`` and messages ``relu(pre) + eps``; with
    ``keep_pre=False`` ``m`` is built in place of ``pre`` (one ``[E, F]`` buffer, not three)."""
    pre = _rows(x, adj.col)
    if ea is not None:
        pre.add_(ea)
    if not keep_pre:
        m = pre.clamp_min_(0) if relu else pre
        return None, m.add_(eps) if eps else m
    m = pre.clamp_min(0) if relu else pre.clone()
    return pre, m.add_(eps) if eps else m


def _segment(adj: CSR, v: Tensor, how: str) -> Tensor:
    return torch.segment_reduce(v, how, offsets=adj.rowptr, axis=0, unsafe=True)


class SoftmaxAggr(torch.autograd.Function):
    """Softmax aggregation; saves ``x``, ``edge_attr``, ``t``, ``out`` and the per-row log-sum-exp
    ``lse [N, F]`` and recomputes the ``[E, F]`` messages in backward (no ``[E, F]`` activation)."""

    @staticmethod
    def forward(ctx, adj: CSR, x: Tensor, t: Tensor, ea: Tensor | None, relu: bool, eps: float):
        _, m = _messages(adj, x, ea, relu, eps, keep_pre=False)
        a = m * t
        amax = _segment(adj, a, "max")
        amax = torch.where(torch.isfinite(amax), amax, 0)  # empty rows (-inf)
        p = a.sub_(_rows(amax, adj.row)).exp_()
        s = _segment(adj, p, "sum")
        out = _segment(adj, p.mul_(m), "sum").div_(s.clamp_min(torch.finfo(s.dtype).tiny))
        lse = amax + torch.log(s)  # -inf on empty rows; never read there
        ctx.adj, ctx.relu, ctx.eps = adj, relu, eps
        ctx.save_for_backward(x, ea, t, out, lse)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, ea, t, out, lse = ctx.saved_tensors
        adj: CSR = ctx.adj
        row = adj.row
        pre, m = _messages(adj, x, ea, ctx.relu, ctx.eps)
        alpha = (m * t).sub_(_rows(lse, row)).exp_()
        ga = alpha.mul_(_rows(g, row))  # dL/d out_i * a_e
        d = m - _rows(out, row)
        # sum_e ga * m * d as one dot product: one [E, F] temporary instead of two
        gt = torch.dot(ga.view(-1), (m * d).view(-1)).reshape(t.shape) if ctx.needs_input_grad[2] else None
        gm = ga.mul_(d.mul_(t).add_(1))
        if ctx.relu:
            # relu's own backward kernel: ~50x faster than masked_fill_ with a bool mask here
            gm = torch.ops.aten.threshold_backward(gm, pre, 0)
        # per-source sums by a CSR product over the transposed structure (no [E, F] gather by perm;
        # faster than index_add_, which has write conflicts)
        gx = _source_sum(adj, gm) if ctx.needs_input_grad[1] else None
        gea = gm if ctx.needs_input_grad[3] else None
        return None, gx, gt, gea, None, None


# ------------------------------------------------------------------------------------ functional
def _upcast(x: Tensor) -> Tensor:
    # CPU sparse kernels cover float32/float64; half precision is computed in float32.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def spmm(adj: CSR, x: Tensor, reduce: str = "sum", edge_weight: Tensor | None = None,
         ties: str = "split") -> Tensor:
    """Reference :func:`graphscale.ops.spmm` (inputs already validated by the dispatcher)."""
    dtype = x.dtype
    x, w = _upcast(x), None if edge_weight is None else _upcast(edge_weight)
    if reduce in ("sum", "mean"):
        out = SpMMSumMean.apply(adj, x, w, reduce == "mean")
    elif ties == "first":
        out = SpMMMaxMinFirst.apply(adj, x, w, reduce == "max")
    else:
        out = SpMMMaxMin.apply(adj, x, w, reduce == "max")
    return out.to(dtype)


def gen_aggr(adj: CSR, x: Tensor, edge_attr: Tensor, reduce: str, eps: float, p: Tensor | None = None,
             lo: float | None = None, hi: float | None = None) -> Tensor:
    """Reference :func:`graphscale.ops.gen_aggr` (inputs already validated by the dispatcher)."""
    dtype = x.dtype
    x, ea = _upcast(x), _upcast(edge_attr)
    p = None if p is None else p.to(x.dtype)
    return GenAggr.apply(adj, x, ea, p, reduce, eps, lo, hi).to(dtype)


def softmax_aggr(adj: CSR, x: Tensor, t: Tensor, edge_attr: Tensor | None = None, relu: bool = True,
                 eps: float = 0.0) -> Tensor:
    """Reference :func:`graphscale.ops.softmax_aggr` (inputs already validated by the dispatcher)."""
    dtype = x.dtype
    ea = None if edge_attr is None else _upcast(edge_attr)
    x = _upcast(x)
    return SoftmaxAggr.apply(adj, x, t.to(x.dtype), ea, relu, eps).to(dtype)
