"""Triton fused softmax aggregation (GENConv / DeeperGCN, Li et al. 2020).

Messages ``m_e = relu(x[col_e] + edge_attr[e]) + eps`` are built on the fly and reduced per
destination row and feature with an online softmax (running max, running sum of ``exp``, running
weighted sum), so the ``[E, F]`` messages and softmax weights never exist in memory. Forward keeps
``out`` and the log-sum-exp ``lse [R, F]``; backward walks the transposed CSR (one program per
source node or work item), recomputes each message and its weight ``a_e = exp(t m_e - lse_i)``,
and applies ``d out/d m_e = a_e (1 + t (m_e - out_i))`` and ``d out/d t = sum_e a_e m_e (m_e - out_i)``.

Skewed graphs: rows longer than ``chunk`` edges are split into work items
(:mod:`graphscale_triton.schedule`); each item of a split row leaves its online-softmax state
(max, sum, weighted sum) and a combine kernel merges the states exactly (log-sum-exp rescaling),
in chunk order, so results stay deterministic. Backward splits long source rows the same way and
sums the partial ``grad_x`` in a second pass.

Tuning: ``BLOCK_E``, ``BLOCK_F`` (forward only) and ``num_warps`` are autotuned keyed on ``F``, a
log2 bucket of the average degree and the flags (see :mod:`graphscale_triton.tuning`; tests pin
each config).

Plain launchers (DESIGN rule 4); autograd lives in ``graphscale.ops``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphscale_triton.schedule import RowSchedule
from graphscale_triton.spmm import (_FLOATS, _FWD_CONFIGS, _BWD_CONFIGS, _acc, _acc_torch, _bwd_block_f, _check,
                                    _combine_block_f, _deg_key, _fwd_prune, _sched_args, combine, resolve_schedule)
from graphscale_triton.tuning import TunedKernel

__all__ = ["softmax_aggr_forward", "softmax_aggr_backward", "SOFTMAX_FWD", "SOFTMAX_BWD"]


@triton.jit
def _softmax_fwd_kernel(
    rowptr_ptr,  # *int64 [R + 1] CSR row pointer (rows = destinations)
    col_ptr,     # *int64 [E] source node of each edge
    x_ptr,       # *float [C, F] source features
    ea_ptr,      # *float [E, F] edge features in CSR order (unused unless HAS_EA)
    t_ptr,       # *float [1] inverse temperature
    out_ptr,     # *float [R, F] output
    lse_ptr,     # *float32|64 [R, F] log-sum-exp of t * m per row (saved for backward)
    item_row_ptr,    # *int64 [W] schedule (unused unless SPLIT)
    item_start_ptr,  # *int64 [W]
    item_slot_ptr,   # *int64 [W] partial slot, -1 = whole row
    pm_ptr,      # *ACC [P, F] partial running max of split rows
    ps_ptr,      # *ACC [P, F] partial running sum of exp
    pa_ptr,      # *ACC [P, F] partial running weighted sum
    F,           # feature width
    eps,         # added to every message
    CHUNK,       # edges per work item (SPLIT)
    DEG_KEY,     # log2 bucket of the average degree: autotune key only
    HAS_EA: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    if SPLIT:
        row = tl.load(item_row_ptr + pid)
        start = tl.load(item_start_ptr + pid)
        end = tl.minimum(start + CHUNK, tl.load(rowptr_ptr + row + 1))
        slot = tl.load(item_slot_ptr + pid) + tl.zeros([BLOCK_F], dtype=tl.int64)  # as a vector: masks stay vectors
    else:
        row = pid.to(tl.int64)
        start = tl.load(rowptr_ptr + row)
        end = tl.load(rowptr_ptr + row + 1)
    t = tl.load(t_ptr).to(ACC)
    run_max = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
    run_sum = tl.zeros([BLOCK_F], dtype=ACC)
    run_acc = tl.zeros([BLOCK_F], dtype=ACC)
    for k in range(start, end, BLOCK_E):
        offs_e = k + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        c = tl.load(col_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        m2 = emask[:, None] & fmask[None, :]
        m = tl.load(x_ptr + c[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
        if HAS_EA:
            m += tl.load(ea_ptr + offs_e[:, None].to(tl.int64) * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
        if RELU:
            m = tl.maximum(m, 0.0)
        m = m + eps
        a = tl.where(m2, m * t, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(a, axis=0))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)  # no edge seen yet in this lane
        scale = tl.exp(run_max - safe)
        p = tl.exp(a - safe[None, :])  # exp(-inf) = 0 on masked lanes
        run_sum = run_sum * scale + tl.sum(p, axis=0)
        run_acc = run_acc * scale + tl.sum(p * m, axis=0)
        run_max = new_max
    if SPLIT:
        is_part = fmask & (slot >= 0)
        pbase = tl.maximum(slot, 0) * F + offs_f
        tl.store(pm_ptr + pbase, run_max.to(pm_ptr.dtype.element_ty), mask=is_part)
        tl.store(ps_ptr + pbase, run_sum.to(ps_ptr.dtype.element_ty), mask=is_part)
        tl.store(pa_ptr + pbase, run_acc.to(pa_ptr.dtype.element_ty), mask=is_part)
        direct = fmask & (slot < 0)
    else:
        direct = fmask
    has = run_sum > 0
    out = tl.where(has, run_acc / tl.where(has, run_sum, 1.0), 0.0)
    lse = tl.where(has, run_max + tl.log(tl.where(has, run_sum, 1.0)), 0.0)
    base = row * F + offs_f
    tl.store(out_ptr + base, out.to(out_ptr.dtype.element_ty), mask=direct)
    tl.store(lse_ptr + base, lse.to(lse_ptr.dtype.element_ty), mask=direct)


@triton.jit
def _softmax_combine_kernel(
    split_row_ptr,  # *int64 [S] rows that were split
    split_ptr_ptr,  # *int64 [S + 1] partial slots of each split row
    pm_ptr,         # *ACC [P, F] partial running max
    ps_ptr,         # *ACC [P, F] partial sum of exp (relative to the partial max)
    pa_ptr,         # *ACC [P, F] partial weighted sum (relative to the partial max)
    out_ptr,        # *float [R, F]
    lse_ptr,        # *ACC [R, F]
    F,
    ACC: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    s = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    row = tl.load(split_row_ptr + s)
    p0 = tl.load(split_ptr_ptr + s)
    p1 = tl.load(split_ptr_ptr + s + 1)
    run_max = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
    run_sum = tl.zeros([BLOCK_F], dtype=ACC)
    run_acc = tl.zeros([BLOCK_F], dtype=ACC)
    for p in range(p0, p1):
        off = p * F + offs_f
        m = tl.load(pm_ptr + off, mask=fmask, other=float("-inf")).to(ACC)
        new_max = tl.maximum(run_max, m)
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        a_old = tl.exp(run_max - safe)
        a_new = tl.exp(m - safe)
        run_sum = run_sum * a_old + tl.load(ps_ptr + off, mask=fmask, other=0.0).to(ACC) * a_new
        run_acc = run_acc * a_old + tl.load(pa_ptr + off, mask=fmask, other=0.0).to(ACC) * a_new
        run_max = new_max
    has = run_sum > 0
    out = tl.where(has, run_acc / tl.where(has, run_sum, 1.0), 0.0)
    lse = tl.where(has, run_max + tl.log(tl.where(has, run_sum, 1.0)), 0.0)
    base = row * F + offs_f
    tl.store(out_ptr + base, out.to(out_ptr.dtype.element_ty), mask=fmask)
    tl.store(lse_ptr + base, lse.to(lse_ptr.dtype.element_ty), mask=fmask)


@triton.jit
def _softmax_bwd_kernel(
    trowptr_ptr,  # *int64 [C + 1] transposed CSR row pointer (rows = sources)
    tcol_ptr,     # *int64 [E] destination row of each transposed position
    tpos_ptr,     # *int64 [E] forward CSR position of each transposed position
    x_ptr,        # *float [C, F] source features
    ea_ptr,       # *float [E, F] edge features in forward CSR order (unused unless HAS_EA)
    t_ptr,        # *float [1] inverse temperature
    out_ptr,      # *float [R, F] forward output
    lse_ptr,      # *float32|64 [R, F] forward log-sum-exp
    g_ptr,        # *float [R, F] upstream gradient
    gx_ptr,       # *float [C, F] out: gradient w.r.t. x
    gea_ptr,      # *float [E, F] out: gradient w.r.t. edge features, forward CSR order
    gt_ptr,       # *float32|64 [W * NFB] out: per-program partial gradient w.r.t. t
    item_row_ptr,    # *int64 [W] schedule over the transposed CSR (unused unless SPLIT)
    item_start_ptr,  # *int64 [W]
    item_slot_ptr,   # *int64 [W]
    part_ptr,     # *ACC [P, F] partial grad_x of split source rows
    F,
    eps,
    NFB,          # number of feature blocks
    CHUNK,        # edges per work item (SPLIT)
    DEG_KEY,      # log2 bucket of the average out-degree: autotune key only
    HAS_EA: tl.constexpr,
    NEED_EA: tl.constexpr,
    NEED_T: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0)
    fb = tl.program_id(1)
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    if SPLIT:
        src = tl.load(item_row_ptr + pid)
        start = tl.load(item_start_ptr + pid)
        end = tl.minimum(start + CHUNK, tl.load(trowptr_ptr + src + 1))
        slot = tl.load(item_slot_ptr + pid) + tl.zeros([BLOCK_F], dtype=tl.int64)  # as a vector: masks stay vectors
    else:
        src = pid.to(tl.int64)
        start = tl.load(trowptr_ptr + src)
        end = tl.load(trowptr_ptr + src + 1)
    t = tl.load(t_ptr).to(ACC)
    xs = tl.load(x_ptr + src * F + offs_f, mask=fmask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    gt_acc = tl.zeros([BLOCK_F], dtype=ACC)
    for k in range(start, end, BLOCK_E):
        offs_e = k + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        dst = tl.load(tcol_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        pos = tl.load(tpos_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        m2 = emask[:, None] & fmask[None, :]
        pre = tl.zeros([BLOCK_E, BLOCK_F], dtype=ACC) + xs[None, :]
        if HAS_EA:
            pre += tl.load(ea_ptr + pos[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
        if RELU:
            m = tl.maximum(pre, 0.0) + eps
        else:
            m = pre + eps
        nd = dst[:, None] * F + offs_f[None, :]
        lse = tl.load(lse_ptr + nd, mask=m2, other=0.0).to(ACC)
        out = tl.load(out_ptr + nd, mask=m2, other=0.0).to(ACC)
        g = tl.load(g_ptr + nd, mask=m2, other=0.0).to(ACC)
        alpha = tl.where(m2, tl.exp(m * t - lse), 0.0)
        ga = g * alpha
        d = m - out
        if NEED_T:
            gt_acc += tl.sum(ga * m * d, axis=0)
        gm = ga * (1.0 + t * d)
        if RELU:
            gm = tl.where(pre > 0, gm, 0.0)
        acc += tl.sum(gm, axis=0)
        if NEED_EA:
            tl.store(gea_ptr + pos[:, None] * F + offs_f[None, :], gm.to(gea_ptr.dtype.element_ty), mask=m2)
    if SPLIT:
        tl.store(part_ptr + tl.maximum(slot, 0) * F + offs_f, acc.to(part_ptr.dtype.element_ty),
                 mask=fmask & (slot >= 0))
        direct = fmask & (slot < 0)
    else:
        direct = fmask
    tl.store(gx_ptr + src * F + offs_f, acc.to(gx_ptr.dtype.element_ty), mask=direct)
    if NEED_T:
        tl.store(gt_ptr + pid.to(tl.int64) * NFB + fb, tl.sum(gt_acc, axis=0))


_KEY = ["F", "DEG_KEY", "HAS_EA", "RELU", "SPLIT"]
SOFTMAX_FWD = TunedKernel("softmax_fwd", _softmax_fwd_kernel, _FWD_CONFIGS, _KEY, prune=_fwd_prune)
SOFTMAX_BWD = TunedKernel("softmax_bwd", _softmax_bwd_kernel, _BWD_CONFIGS, _KEY + ["NEED_EA", "NEED_T"])


def softmax_aggr_forward(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                         edge_attr: torch.Tensor | None = None, relu: bool = True,
                         eps: float = 0.0, *, schedule="auto", chunk: int | None = None,
                         config: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [R, F], lse [R, F])`` of the softmax aggregation over a CSR.

    Args:
        rowptr: ``[R + 1]``; col: ``[E]``; x: ``[C, F]``; t: one-element tensor (inverse temperature);
        edge_attr: ``[E, F]`` in CSR order or None; relu / eps: message ``relu(x_j + e) + eps``.
        schedule / chunk / config: as in :func:`graphscale_triton.spmm.spmm_forward` (``config``
            indexes ``SOFTMAX_FWD.configs``).
    """
    _check("rowptr", rowptr, (torch.int64,), 1)
    _check("col", col, (torch.int64,), 1)
    _check("x", x, _FLOATS, 2)
    if t.numel() != 1:
        raise ValueError(f"t must have one element, got shape {tuple(t.shape)}")
    if edge_attr is not None:
        _check("edge_attr", edge_attr, (x.dtype,), 2)
        if edge_attr.shape != (col.numel(), x.size(1)):
            raise ValueError(f"edge_attr must have shape [{col.numel()}, {x.size(1)}], got {tuple(edge_attr.shape)}")
    num_rows, num_f = rowptr.numel() - 1, x.size(1)
    acc_dtype = _acc_torch(x.dtype)
    out = torch.empty(num_rows, num_f, dtype=x.dtype, device=x.device)
    lse = torch.empty(num_rows, num_f, dtype=acc_dtype, device=x.device)
    if num_rows == 0 or num_f == 0:
        return out, lse
    s = resolve_schedule(rowptr, col.numel(), schedule, chunk)
    parts = None
    if s is not None and s.num_partials:
        parts = [torch.empty(s.num_partials, num_f, dtype=acc_dtype, device=x.device) for _ in range(3)]
    pm, ps, pa = parts if parts is not None else (out, out, out)
    n_prog = num_rows if s is None else s.num_items
    item_row, item_start, item_slot, chnk = _sched_args(s, rowptr)
    SOFTMAX_FWD.launch(lambda meta: (n_prog, triton.cdiv(num_f, meta["BLOCK_F"])),
                       rowptr, col, x, edge_attr if edge_attr is not None else x, t.contiguous(), out, lse,
                       item_row, item_start, item_slot, pm, ps, pa, num_f, float(eps), chnk,
                       _deg_key(col.numel(), num_rows), HAS_EA=edge_attr is not None, RELU=relu,
                       ACC=_acc(x.dtype), SPLIT=s is not None, config=config)
    if parts is not None and s.split_row.numel():
        block_f = _combine_block_f(num_f)
        _softmax_combine_kernel[(s.split_row.numel(), triton.cdiv(num_f, block_f))](
            s.split_row, s.split_ptr, pm, ps, pa, out, lse, num_f, ACC=_acc(x.dtype), BLOCK_F=block_f, num_warps=4)
    return out, lse


def softmax_aggr_backward(t_rowptr: torch.Tensor, t_col: torch.Tensor, t_pos: torch.Tensor, grad_out: torch.Tensor,
                          x: torch.Tensor, t: torch.Tensor, edge_attr: torch.Tensor | None, out: torch.Tensor,
                          lse: torch.Tensor, relu: bool = True, eps: float = 0.0, need_edge_attr: bool = False,
                          need_t: bool = False, *, schedule="auto", chunk: int | None = None,
                          config: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x [C, F], grad_edge_attr [E, F] or None, grad_t [] or None)``; the transposed CSR is
    ``t_rowptr [C + 1]``, ``t_col [E]`` (destinations), ``t_pos [E]`` (forward CSR positions).
    schedule / chunk / config: over the transposed CSR (``config`` indexes ``SOFTMAX_BWD.configs``)."""
    for name, v in (("t_rowptr", t_rowptr), ("t_col", t_col), ("t_pos", t_pos)):
        _check(name, v, (torch.int64,), 1)
    _check("grad_out", grad_out, _FLOATS, 2)
    _check("x", x, (grad_out.dtype,), 2)
    _check("out", out, (grad_out.dtype,), 2)
    _check("lse", lse, None, 2)
    if edge_attr is not None:
        _check("edge_attr", edge_attr, (x.dtype,), 2)
    num_c, num_f, num_e = x.size(0), x.size(1), t_col.numel()
    block_f = _bwd_block_f(num_f)
    nfb = triton.cdiv(num_f, block_f) if num_f else 0
    acc_dtype = _acc_torch(x.dtype)
    gx = torch.zeros_like(x)
    gea = torch.zeros(num_e, num_f, dtype=x.dtype, device=x.device) if need_edge_attr else None
    gt_part = None
    if num_c and nfb:
        s = resolve_schedule(t_rowptr, num_e, schedule, chunk)
        n_prog = num_c if s is None else s.num_items
        part = None
        if s is not None and s.num_partials:
            part = torch.empty(s.num_partials, num_f, dtype=acc_dtype, device=x.device)
        gt_part = torch.zeros(n_prog * nfb, dtype=acc_dtype, device=x.device)
        item_row, item_start, item_slot, chnk = _sched_args(s, t_rowptr)
        SOFTMAX_BWD.launch(lambda meta: (n_prog, nfb),
                           t_rowptr, t_col, t_pos, x, edge_attr if edge_attr is not None else x, t.contiguous(),
                           out, lse, grad_out, gx, gea if gea is not None else gx, gt_part,
                           item_row, item_start, item_slot, part if part is not None else gx,
                           num_f, float(eps), nfb, chnk, _deg_key(num_e, num_c),
                           HAS_EA=edge_attr is not None, NEED_EA=need_edge_attr, NEED_T=need_t, RELU=relu,
                           ACC=_acc(x.dtype), SPLIT=s is not None, BLOCK_F=block_f, config=config)
        if part is not None:
            combine(s, part, None, t_rowptr, gx, None, 0)
    if need_t:
        gt = (gt_part.sum() if gt_part is not None else torch.zeros((), dtype=acc_dtype, device=x.device))
        gt = gt.to(t.dtype).reshape(t.shape)
    else:
        gt = None
    return gx, gea, gt
