"""Triton fused softmax aggregation (GENConv / DeeperGCN, Li et al. 2020).

Messages ``m_e = relu(x[col_e] + edge_attr[e]) + eps`` are built on the fly and reduced per
destination row and feature with an online softmax (running max, running sum of ``exp``, running
weighted sum), so the ``[E, F]`` messages and softmax weights never exist in memory. Forward keeps
``out`` and the log-sum-exp ``lse [R, F]``; backward walks the transposed CSR (one program per
source node), recomputes each message and its weight ``a_e = exp(t m_e - lse_i)``, and applies
``d out/d m_e = a_e (1 + t (m_e - out_i))`` and ``d out/d t = sum_e a_e m_e (m_e - out_i)``.

Plain launchers (DESIGN rule 4); autograd lives in ``graphscale.ops``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphscale_triton.spmm import _FLOATS, _acc, _blocks, _check

__all__ = ["softmax_aggr_forward", "softmax_aggr_backward"]


@triton.jit
def _softmax_fwd_kernel(
    rowptr_ptr,  # *int64 [R + 1] CSR row pointer (rows = destinations)
    col_ptr,     # *int64 [E] source node of each edge
    x_ptr,       # *float [C, F] source features
    ea_ptr,      # *float [E, F] edge features in CSR order (unused unless HAS_EA)
    t_ptr,       # *float [1] inverse temperature
    out_ptr,     # *float [R, F] output
    lse_ptr,     # *float32|64 [R, F] log-sum-exp of t * m per row (saved for backward)
    F,           # feature width
    eps,         # added to every message
    HAS_EA: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    row = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
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
    has = run_sum > 0
    out = tl.where(has, run_acc / tl.where(has, run_sum, 1.0), 0.0)
    lse = tl.where(has, run_max + tl.log(tl.where(has, run_sum, 1.0)), 0.0)
    base = row.to(tl.int64) * F + offs_f
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
    gt_ptr,       # *float32|64 [C * NFB] out: per-program partial gradient w.r.t. t
    F,
    eps,
    NFB,          # number of feature blocks
    HAS_EA: tl.constexpr,
    NEED_EA: tl.constexpr,
    NEED_T: tl.constexpr,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    src = tl.program_id(0)
    fb = tl.program_id(1)
    offs_f = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    start = tl.load(trowptr_ptr + src)
    end = tl.load(trowptr_ptr + src + 1)
    t = tl.load(t_ptr).to(ACC)
    xs = tl.load(x_ptr + src.to(tl.int64) * F + offs_f, mask=fmask, other=0.0).to(ACC)
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
    tl.store(gx_ptr + src.to(tl.int64) * F + offs_f, acc.to(gx_ptr.dtype.element_ty), mask=fmask)
    if NEED_T:
        tl.store(gt_ptr + src.to(tl.int64) * NFB + fb, tl.sum(gt_acc, axis=0))


def softmax_aggr_forward(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                         edge_attr: torch.Tensor | None = None, relu: bool = True,
                         eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [R, F], lse [R, F])`` of the softmax aggregation over a CSR.

    Args:
        rowptr: ``[R + 1]``; col: ``[E]``; x: ``[C, F]``; t: one-element tensor (inverse temperature);
        edge_attr: ``[E, F]`` in CSR order or None; relu / eps: message ``relu(x_j + e) + eps``.
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
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(num_rows, num_f, dtype=x.dtype, device=x.device)
    lse = torch.empty(num_rows, num_f, dtype=acc_dtype, device=x.device)
    if num_rows == 0 or num_f == 0:
        return out, lse
    block_e, block_f = _blocks(num_f, not x.is_cuda)
    _softmax_fwd_kernel[(num_rows, triton.cdiv(num_f, block_f))](
        rowptr, col, x, edge_attr if edge_attr is not None else x, t.contiguous(), out, lse, num_f,
        float(eps), HAS_EA=edge_attr is not None, RELU=relu, ACC=_acc(x.dtype),
        BLOCK_E=block_e, BLOCK_F=block_f)
    return out, lse


def softmax_aggr_backward(t_rowptr: torch.Tensor, t_col: torch.Tensor, t_pos: torch.Tensor, grad_out: torch.Tensor,
                          x: torch.Tensor, t: torch.Tensor, edge_attr: torch.Tensor | None, out: torch.Tensor,
                          lse: torch.Tensor, relu: bool = True, eps: float = 0.0, need_edge_attr: bool = False,
                          need_t: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x [C, F], grad_edge_attr [E, F] or None, grad_t [] or None)``; the transposed CSR is
    ``t_rowptr [C + 1]``, ``t_col [E]`` (destinations), ``t_pos [E]`` (forward CSR positions)."""
    for name, v in (("t_rowptr", t_rowptr), ("t_col", t_col), ("t_pos", t_pos)):
        _check(name, v, (torch.int64,), 1)
    _check("grad_out", grad_out, _FLOATS, 2)
    _check("x", x, (grad_out.dtype,), 2)
    _check("out", out, (grad_out.dtype,), 2)
    _check("lse", lse, None, 2)
    if edge_attr is not None:
        _check("edge_attr", edge_attr, (x.dtype,), 2)
    num_c, num_f, num_e = x.size(0), x.size(1), t_col.numel()
    block_e, block_f = _blocks(num_f, not x.is_cuda)
    nfb = triton.cdiv(num_f, block_f) if num_f else 0
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    gx = torch.zeros_like(x)
    gea = torch.zeros(num_e, num_f, dtype=x.dtype, device=x.device) if need_edge_attr else None
    gt_part = torch.zeros(max(num_c * nfb, 1), dtype=acc_dtype, device=x.device)
    if num_c and nfb:
        _softmax_bwd_kernel[(num_c, nfb)](
            t_rowptr, t_col, t_pos, x, edge_attr if edge_attr is not None else x, t.contiguous(), out, lse,
            grad_out, gx, gea if gea is not None else gx, gt_part, num_f, float(eps), nfb,
            HAS_EA=edge_attr is not None, NEED_EA=need_edge_attr, NEED_T=need_t, RELU=relu,
            ACC=_acc(x.dtype), BLOCK_E=block_e, BLOCK_F=block_f)
    gt = gt_part.sum().to(t.dtype).reshape(t.shape) if need_t else None
    return gx, gea, gt
