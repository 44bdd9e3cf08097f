"""Triton CSR SpMM: ``out[i] = REDUCE_{e in row i} w_e * x[col_e]`` for sum / mean / max / min.

Forward is row-parallel over the CSR (one program per destination row and feature block, no
atomics). Backward walks the *transposed* CSR (one program per source node): it sums the
gradient of every out-edge into ``grad_x[j]`` and writes each edge's weight gradient exactly once,
so results are deterministic. max / min record, per row and feature, the CSR position of the first
edge attaining the extremum (``arg``; -1 for an empty row) and backward routes the gradient there.

Plain launchers (DESIGN rule 4): tensors in, tensors out; autograd and dispatch live in
``graphscale.ops``. Depends on torch and triton only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["spmm_forward", "spmm_backward", "REDUCE_CODES"]

REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2, "min": 3}


@triton.jit
def _spmm_fwd_kernel(
    rowptr_ptr,  # *int64 [R + 1] CSR row pointer (rows = destinations)
    col_ptr,     # *int64 [E] source node of each edge
    w_ptr,       # *float [E] edge weights (unused unless HAS_W)
    x_ptr,       # *float [C, F] contiguous source features
    out_ptr,     # *float [R, F] output
    arg_ptr,     # *int64 [R, F] arg edge position for max/min (unused for sum/mean)
    F,           # feature width
    HAS_W: tl.constexpr,
    REDUCE: tl.constexpr,   # 0 sum, 1 mean, 2 max, 3 min
    ACC: tl.constexpr,      # accumulation dtype (float32, or float64 for float64 inputs)
    BLOCK_E: tl.constexpr,  # edges per step
    BLOCK_F: tl.constexpr,  # features per program
):
    row = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    start = tl.load(rowptr_ptr + row)
    end = tl.load(rowptr_ptr + row + 1)
    if REDUCE <= 1:
        acc = tl.zeros([BLOCK_F], dtype=ACC)
    else:
        if REDUCE == 2:
            acc = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
        else:
            acc = tl.full([BLOCK_F], float("inf"), dtype=ACC)
        best = tl.full([BLOCK_F], -1, dtype=tl.int64)
    for k in range(start, end, BLOCK_E):
        offs_e = k + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        c = tl.load(col_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        m2 = emask[:, None] & fmask[None, :]
        v = tl.load(x_ptr + c[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
        if HAS_W:
            w = tl.load(w_ptr + offs_e, mask=emask, other=0.0).to(ACC)
            v = v * w[:, None]
        if REDUCE <= 1:
            acc += tl.sum(v, axis=0)
        else:
            if REDUCE == 2:
                v = tl.where(m2, v, float("-inf"))
                blk = tl.max(v, axis=0)
                better = blk > acc
            else:
                v = tl.where(m2, v, float("inf"))
                blk = tl.min(v, axis=0)
                better = blk < acc
            # first position in this block attaining the block's extremum (strict `better` across
            # blocks keeps the first block on ties): torch's argmax convention.
            cand = tl.where((v == blk[None, :]) & m2, offs_e[:, None].to(tl.int64), 9223372036854775807)
            pos = tl.min(cand, axis=0)
            acc = tl.where(better, blk, acc)
            best = tl.where(better, pos, best)
    if REDUCE == 1:
        acc = acc / tl.maximum(end - start, 1).to(ACC)
    if REDUCE >= 2:
        acc = tl.where(best >= 0, acc, 0.0)
        tl.store(arg_ptr + row.to(tl.int64) * F + offs_f, best, mask=fmask)
    tl.store(out_ptr + row.to(tl.int64) * F + offs_f, acc.to(out_ptr.dtype.element_ty), mask=fmask)


@triton.jit
def _spmm_bwd_kernel(
    rowptr_ptr,   # *int64 [R + 1] forward CSR row pointer (for mean's 1 / degree)
    trowptr_ptr,  # *int64 [C + 1] transposed CSR row pointer (rows = sources)
    tcol_ptr,     # *int64 [E] destination row of each transposed position
    tpos_ptr,     # *int64 [E] forward CSR position of each transposed position
    w_ptr,        # *float [E] edge weights in forward CSR order (unused unless HAS_W)
    g_ptr,        # *float [R, F] upstream gradient
    x_ptr,        # *float [C, F] forward input (read only if NEED_W)
    arg_ptr,      # *int64 [R, F] arg positions (max/min only)
    gx_ptr,       # *float [C, F] out: gradient w.r.t. x
    gw_ptr,       # *float32|64 [NFB, E] out: per-feature-block partial weight gradients
    F,            # feature width
    E,            # number of edges
    HAS_W: tl.constexpr,
    REDUCE: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_W: tl.constexpr,
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
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    if NEED_W:
        xs = tl.load(x_ptr + src.to(tl.int64) * F + offs_f, mask=fmask, other=0.0).to(ACC)
    for k in range(start, end, BLOCK_E):
        offs_e = k + tl.arange(0, BLOCK_E)
        emask = offs_e < end
        dst = tl.load(tcol_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        pos = tl.load(tpos_ptr + offs_e, mask=emask, other=0).to(tl.int64)
        m2 = emask[:, None] & fmask[None, :]
        g = tl.load(g_ptr + dst[:, None] * F + offs_f[None, :], mask=m2, other=0.0).to(ACC)
        if REDUCE == 1:
            deg = tl.load(rowptr_ptr + dst + 1, mask=emask, other=1) - tl.load(rowptr_ptr + dst, mask=emask, other=0)
            g = g / tl.maximum(deg, 1).to(ACC)[:, None]
        if REDUCE >= 2:
            a = tl.load(arg_ptr + dst[:, None] * F + offs_f[None, :], mask=m2, other=-1)
            g = tl.where(a == pos[:, None], g, 0.0)
        if NEED_X:
            if HAS_W:
                w = tl.load(w_ptr + pos, mask=emask, other=0.0).to(ACC)
                acc += tl.sum(g * w[:, None], axis=0)
            else:
                acc += tl.sum(g, axis=0)
        if NEED_W:
            gw = tl.sum(g * xs[None, :], axis=1)
            tl.store(gw_ptr + fb.to(tl.int64) * E + pos, gw.to(gw_ptr.dtype.element_ty), mask=emask)
    if NEED_X:
        tl.store(gx_ptr + src.to(tl.int64) * F + offs_f, acc.to(gx_ptr.dtype.element_ty), mask=fmask)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(num_f: int, interpret: bool) -> tuple[int, int]:
    block_f = min(triton.next_power_of_2(max(num_f, 1)), 128)
    return (16 if interpret else 32), max(block_f, 16)


def _check(name: str, t: torch.Tensor, dtype=None, dim=None) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    if dtype is not None and t.dtype not in dtype:
        raise TypeError(f"{name} must have dtype in {dtype}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def spmm_forward(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None,
                 reduce: str = "sum") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out [R, F], arg [R, F] int64 or None)`` for a CSR (``rowptr [R+1]``, ``col [E]``) and
    ``x [C, F]``. ``arg`` (max/min only) holds the CSR position of the winning edge, -1 if none."""
    if reduce not in REDUCE_CODES:
        raise ValueError(f"unsupported reduce {reduce!r}; expected one of {', '.join(REDUCE_CODES)}")
    _check("rowptr", rowptr, (torch.int64,), 1)
    _check("col", col, (torch.int64,), 1)
    _check("x", x, _FLOATS, 2)
    if weight is not None:
        _check("weight", weight, (x.dtype,), 1)
    num_rows, num_f = rowptr.numel() - 1, x.size(1)
    out = torch.empty(num_rows, num_f, dtype=x.dtype, device=x.device)
    code = REDUCE_CODES[reduce]
    arg = torch.empty(num_rows, num_f, dtype=torch.int64, device=x.device) if code >= 2 else None
    if num_rows == 0 or num_f == 0:
        return out, arg
    block_e, block_f = _blocks(num_f, not x.is_cuda)
    grid = (num_rows, triton.cdiv(num_f, block_f))
    _spmm_fwd_kernel[grid](rowptr, col, weight if weight is not None else x, x, out,
                           arg if arg is not None else rowptr, num_f,
                           HAS_W=weight is not None, REDUCE=code, ACC=_acc(x.dtype),
                           BLOCK_E=block_e, BLOCK_F=block_f)
    return out, arg


def spmm_backward(rowptr: torch.Tensor, t_rowptr: torch.Tensor, t_col: torch.Tensor, t_pos: torch.Tensor,
                  grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor | None,
                  arg: torch.Tensor | None, reduce: str, num_cols: int, need_x: bool = True,
                  need_weight: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(grad_x [C, F], grad_weight [E])`` of :func:`spmm_forward`.

    Args:
        rowptr: forward CSR row pointer ``[R + 1]``.
        t_rowptr, t_col, t_pos: transposed CSR: row pointer ``[C + 1]``, destination row of every
            position ``[E]``, and the forward CSR position of every position ``[E]``.
        grad_out: ``[R, F]``; x: ``[C, F]`` (needed for ``need_weight``); weight: ``[E]`` or None;
        arg: ``[R, F]`` from the forward (max/min).
    """
    code = REDUCE_CODES[reduce]
    _check("grad_out", grad_out, _FLOATS, 2)
    for name, t in (("rowptr", rowptr), ("t_rowptr", t_rowptr), ("t_col", t_col), ("t_pos", t_pos)):
        _check(name, t, (torch.int64,), 1)
    if need_weight:
        if x is None:
            raise ValueError("need_weight=True needs the forward input x")
        _check("x", x, (grad_out.dtype,), 2)
    if code >= 2:
        if arg is None:
            raise ValueError(f"reduce={reduce!r} needs the forward's arg tensor")
        _check("arg", arg, (torch.int64,), 2)
    if weight is not None:
        _check("weight", weight, (grad_out.dtype,), 1)
    num_f, num_e = grad_out.size(1), t_col.numel()
    block_e, block_f = _blocks(num_f, not grad_out.is_cuda)
    nfb = triton.cdiv(num_f, block_f) if num_f else 0
    gx = torch.zeros(num_cols, num_f, dtype=grad_out.dtype, device=grad_out.device) if need_x else None
    acc_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    gw_part = torch.zeros(max(nfb, 1), num_e, dtype=acc_dtype, device=grad_out.device) if need_weight else None
    if num_cols and nfb and (need_x or need_weight):
        _spmm_bwd_kernel[(num_cols, nfb)](
            rowptr, t_rowptr, t_col, t_pos, weight if weight is not None else grad_out, grad_out,
            x if x is not None else grad_out, arg if arg is not None else t_col,
            gx if gx is not None else grad_out, gw_part if gw_part is not None else grad_out,
            num_f, num_e, HAS_W=weight is not None, REDUCE=code, NEED_X=need_x, NEED_W=need_weight,
            ACC=_acc(grad_out.dtype), BLOCK_E=block_e, BLOCK_F=block_f)
    gw = gw_part.sum(0).to(grad_out.dtype) if need_weight else None
    return gx, gw
