"""Triton CSR SpMM: ``out[i] = REDUCE_{e in row i} w_e * x[col_e]`` for sum / mean / max / min.

Forward is row-parallel over the CSR (one program per destination row -- or per work item of a
long row, see below -- and feature block, no atomics). Backward walks the *transposed* CSR (one
program per source node or work item): it sums the gradient of every out-edge into ``grad_x[j]``
and writes each edge's weight gradient exactly once, so results are deterministic. max / min
record, per row and feature, the CSR position of the first edge attaining the extremum (``arg``;
-1 for an empty row) and backward routes the gradient there.

Skewed graphs: rows longer than ``chunk`` edges are cut into work items of ``chunk`` edges
(:mod:`graphscale_triton.schedule`: row split with a deterministic two-pass combine; why split and
not atomics or degree groups is written there). Without long rows the launch is one program per row.

Tuning: :class:`graphscale_triton.tuning.TunedKernel` autotunes ``BLOCK_E`` (edges per step),
``BLOCK_F`` (features per program, forward only) and ``num_warps``, keyed on the feature width
``F``, the reduce, the weights flag and a log2 bucket of the average degree (``DEG_KEY``: short
rows want small edge blocks); tensor dtypes are part of every key. Backward keeps ``BLOCK_F`` fixed
by the width because its weight-gradient partials are laid out per feature block. Tests pin each
config (``config=`` / ``GRAPHSCALE_TRITON_CONFIG``) and compare it with the reference.

Plain launchers (DESIGN rule 4): tensors in, tensors out; autograd and dispatch live in
``graphscale.ops``. Depends on torch and triton only. All offsets that scale with ``E`` or
``N * F`` are computed in int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphscale_triton.schedule import RowSchedule, build_schedule, default_chunk
from graphscale_triton.tuning import TunedKernel

__all__ = ["spmm_forward", "spmm_backward", "REDUCE_CODES", "SPMM_FWD", "SPMM_BWD"]

REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2, "min": 3}


@triton.jit
def _spmm_fwd_kernel(
    rowptr_ptr,   # *int64 [R + 1] CSR row pointer (rows = destinations)
    col_ptr,      # *int64 [E] source node of each edge
    w_ptr,        # *float [E] edge weights (unused unless HAS_W)
    x_ptr,        # *float [C, F] contiguous source features
    out_ptr,      # *float [R, F] output
    arg_ptr,      # *int64 [R, F] arg edge position for max/min (unused for sum/mean)
    item_row_ptr,    # *int64 [W] schedule: row of each work item (unused unless SPLIT)
    item_start_ptr,  # *int64 [W] schedule: first edge of each work item
    item_slot_ptr,   # *int64 [W] schedule: partial slot, -1 = the item is its whole row
    part_ptr,     # *ACC [P, F] partial reductions of split rows (unused unless SPLIT)
    part_arg_ptr,  # *int64 [P, F] partial arg positions (max/min with SPLIT)
    F,            # feature width
    CHUNK,        # edges per work item (SPLIT)
    DEG_KEY,      # log2 bucket of the average degree: autotune key only
    HAS_W: tl.constexpr,
    REDUCE: tl.constexpr,   # 0 sum, 1 mean, 2 max, 3 min
    ACC: tl.constexpr,      # accumulation dtype (float32, or float64 for float64 inputs)
    SPLIT: tl.constexpr,    # programs walk schedule items instead of whole rows
    BLOCK_E: tl.constexpr,  # edges per step
    BLOCK_F: tl.constexpr,  # features per program
):
    pid = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    if SPLIT:
        row = tl.load(item_row_ptr + pid)
        start = tl.load(item_start_ptr + pid)
        row_start = tl.load(rowptr_ptr + row)
        row_end = tl.load(rowptr_ptr + row + 1)
        end = tl.minimum(start + CHUNK, row_end)
        slot = tl.load(item_slot_ptr + pid) + tl.zeros([BLOCK_F], dtype=tl.int64)  # as a vector: masks stay vectors
    else:
        row = pid.to(tl.int64)
        row_start = tl.load(rowptr_ptr + row)
        row_end = tl.load(rowptr_ptr + row + 1)
        start = row_start
        end = row_end
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
    if SPLIT:
        # items of split rows leave the raw partial (no mean division, no empty-row zero) for the combine
        is_part = slot >= 0
        pbase = tl.maximum(slot, 0) * F + offs_f
        tl.store(part_ptr + pbase, acc.to(part_ptr.dtype.element_ty), mask=fmask & is_part)
        if REDUCE >= 2:
            tl.store(part_arg_ptr + pbase, best, mask=fmask & is_part)
        direct = fmask & (slot < 0)
    else:
        direct = fmask
    if REDUCE == 1:
        acc = acc / tl.maximum(row_end - row_start, 1).to(ACC)
    base = row * F + offs_f
    if REDUCE >= 2:
        acc = tl.where(best >= 0, acc, 0.0)
        tl.store(arg_ptr + base, best, mask=direct)
    tl.store(out_ptr + base, acc.to(out_ptr.dtype.element_ty), mask=direct)


@triton.jit
def _combine_kernel(
    split_row_ptr,  # *int64 [S] rows that were split
    split_ptr_ptr,  # *int64 [S + 1] partial slots of each split row
    part_ptr,       # *ACC [P, F] partials in chunk order
    part_arg_ptr,   # *int64 [P, F] partial arg positions (max/min)
    rowptr_ptr,     # *int64 [R + 1] (mean's degree)
    out_ptr,        # *float [R, F] output rows to fill
    arg_ptr,        # *int64 [R, F] arg output (max/min)
    F,
    REDUCE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    s = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    fmask = offs_f < F
    row = tl.load(split_row_ptr + s)
    p0 = tl.load(split_ptr_ptr + s)
    p1 = tl.load(split_ptr_ptr + s + 1)
    if REDUCE <= 1:
        acc = tl.zeros([BLOCK_F], dtype=ACC)
    else:
        if REDUCE == 2:
            acc = tl.full([BLOCK_F], float("-inf"), dtype=ACC)
        else:
            acc = tl.full([BLOCK_F], float("inf"), dtype=ACC)
        best = tl.full([BLOCK_F], -1, dtype=tl.int64)
    for p in range(p0, p1):
        v = tl.load(part_ptr + p * F + offs_f, mask=fmask, other=0.0).to(ACC)
        if REDUCE <= 1:
            acc += v
        else:
            a = tl.load(part_arg_ptr + p * F + offs_f, mask=fmask, other=-1)
            if REDUCE == 2:
                better = (v > acc) & (a >= 0)
            else:
                better = (v < acc) & (a >= 0)
            acc = tl.where(better, v, acc)  # strict: on ties the earlier chunk keeps the arg
            best = tl.where(better, a, best)
    if REDUCE == 1:
        acc = acc / tl.maximum(tl.load(rowptr_ptr + row + 1) - tl.load(rowptr_ptr + row), 1).to(ACC)
    base = row * F + offs_f
    if REDUCE >= 2:
        acc = tl.where(best >= 0, acc, 0.0)
        tl.store(arg_ptr + base, best, mask=fmask)
    tl.store(out_ptr + base, acc.to(out_ptr.dtype.element_ty), mask=fmask)


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
    item_row_ptr,    # *int64 [W] schedule over the transposed CSR (unused unless SPLIT)
    item_start_ptr,  # *int64 [W]
    item_slot_ptr,   # *int64 [W]
    part_ptr,     # *ACC [P, F] partial grad_x of split source rows
    F,            # feature width
    E,            # number of edges
    CHUNK,        # edges per work item (SPLIT)
    DEG_KEY,      # log2 bucket of the average out-degree: autotune key only
    HAS_W: tl.constexpr,
    REDUCE: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_W: tl.constexpr,
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
    acc = tl.zeros([BLOCK_F], dtype=ACC)
    if NEED_W:
        xs = tl.load(x_ptr + src * F + offs_f, mask=fmask, other=0.0).to(ACC)
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
        if SPLIT:
            is_part = slot >= 0
            tl.store(part_ptr + tl.maximum(slot, 0) * F + offs_f, acc.to(part_ptr.dtype.element_ty),
                     mask=fmask & is_part)
            direct = fmask & (slot < 0)
        else:
            direct = fmask
        tl.store(gx_ptr + src * F + offs_f, acc.to(gx_ptr.dtype.element_ty), mask=direct)


def _fwd_prune(configs, named_args, **kwargs):
    # a feature block wider than the (power-of-two rounded) width only adds masked lanes
    width = max(triton.next_power_of_2(max(int(named_args["F"]), 1)), 32)
    kept = [c for c in configs if c.kwargs["BLOCK_F"] <= width]
    return kept or configs[:1]


def _cfg(block_e, block_f, warps):
    kw = {"BLOCK_E": block_e} if block_f is None else {"BLOCK_E": block_e, "BLOCK_F": block_f}
    return triton.Config(kw, num_warps=warps)


# Candidates, not measurements: no GPU has run these yet (docs/ops.md, "GPU verification"). Small
# edge blocks for short rows (arxiv's median in-degree is ~6), wide feature blocks for F >= 128.
_FWD_CONFIGS = [_cfg(16, 32, 1), _cfg(32, 32, 2), _cfg(32, 64, 2), _cfg(16, 128, 4), _cfg(32, 128, 4),
                _cfg(64, 128, 8), _cfg(32, 256, 8)]
_BWD_CONFIGS = [_cfg(16, None, 2), _cfg(32, None, 4), _cfg(64, None, 4), _cfg(64, None, 8)]
_KEY = ["F", "DEG_KEY", "HAS_W", "REDUCE", "SPLIT"]

SPMM_FWD = TunedKernel("spmm_fwd", _spmm_fwd_kernel, _FWD_CONFIGS, _KEY, prune=_fwd_prune)
SPMM_BWD = TunedKernel("spmm_bwd", _spmm_bwd_kernel, _BWD_CONFIGS, _KEY + ["NEED_X", "NEED_W"])


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bwd_block_f(num_f: int) -> int:
    # fixed (not tuned) in backward: the per-feature-block weight-gradient buffer is sized by it
    return max(min(triton.next_power_of_2(max(num_f, 1)), 128), 16)


def _combine_block_f(num_f: int) -> int:
    return max(min(triton.next_power_of_2(max(num_f, 1)), 128), 16)


def _deg_key(num_edges: int, num_rows: int) -> int:
    return min(int(num_edges // max(num_rows, 1)).bit_length(), 16)


def _check(name: str, t: torch.Tensor, dtype=None, dim=None) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    if dtype is not None and t.dtype not in dtype:
        raise TypeError(f"{name} must have dtype in {dtype}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_schedule(rowptr: torch.Tensor, num_edges: int, schedule, chunk: int | None) -> RowSchedule | None:
    """``schedule`` as given (a :class:`RowSchedule` or None), or built when it is ``"auto"``."""
    if isinstance(schedule, RowSchedule) or schedule is None:
        return schedule
    if schedule != "auto":
        raise ValueError(f"schedule must be 'auto', None or a RowSchedule, got {schedule!r}")
    return build_schedule(rowptr, chunk if chunk is not None else default_chunk(rowptr.numel() - 1, num_edges))


def _sched_args(s: RowSchedule | None, fallback: torch.Tensor) -> tuple:
    if s is None:
        return fallback, fallback, fallback, 1
    return s.item_row, s.item_start, s.item_slot, s.chunk


def combine(s: RowSchedule, part: torch.Tensor, part_arg: torch.Tensor | None, rowptr: torch.Tensor,
            out: torch.Tensor, arg: torch.Tensor | None, reduce_code: int) -> None:
    """Pass 2 of the row split: merge the partials of every split row into ``out`` (and ``arg``)."""
    num_f = out.size(1)
    if s.split_row.numel() == 0 or num_f == 0:
        return
    block_f = _combine_block_f(num_f)
    _combine_kernel[(s.split_row.numel(), triton.cdiv(num_f, block_f))](
        s.split_row, s.split_ptr, part, part_arg if part_arg is not None else s.split_ptr, rowptr, out,
        arg if arg is not None else s.split_ptr, num_f, REDUCE=reduce_code, ACC=_acc(part.dtype),
        BLOCK_F=block_f, num_warps=4)


def spmm_forward(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None,
                 reduce: str = "sum", *, schedule="auto", chunk: int | None = None,
                 config: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out [R, F], arg [R, F] int64 or None)`` for a CSR (``rowptr [R+1]``, ``col [E]``) and
    ``x [C, F]``. ``arg`` (max/min only) holds the CSR position of the winning edge, -1 if none.

    Keyword args:
        schedule: ``"auto"`` (build the row split for ``chunk``; one device sync -- callers that launch
            repeatedly pass a cached :class:`~graphscale_triton.schedule.RowSchedule`), a schedule, or
            None (one program per row).
        chunk: edges per work item for ``"auto"`` (default :func:`~graphscale_triton.schedule.default_chunk`).
        config: pin ``SPMM_FWD.configs[config]`` instead of autotuning.
    """
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
    s = resolve_schedule(rowptr, col.numel(), schedule, chunk)
    part = part_arg = None
    if s is not None and s.num_partials:
        part = torch.empty(s.num_partials, num_f, dtype=_acc_torch(x.dtype), device=x.device)
        part_arg = torch.empty(s.num_partials, num_f, dtype=torch.int64, device=x.device) if code >= 2 else None
    n_prog = num_rows if s is None else s.num_items
    item_row, item_start, item_slot, chnk = _sched_args(s, rowptr)
    SPMM_FWD.launch(lambda meta: (n_prog, triton.cdiv(num_f, meta["BLOCK_F"])),
                    rowptr, col, weight if weight is not None else x, x, out, arg if arg is not None else rowptr,
                    item_row, item_start, item_slot, part if part is not None else out,
                    part_arg if part_arg is not None else rowptr, num_f, chnk, _deg_key(col.numel(), num_rows),
                    HAS_W=weight is not None, REDUCE=code, ACC=_acc(x.dtype), SPLIT=s is not None, config=config)
    if part is not None:
        combine(s, part, part_arg, rowptr, out, arg, code)
    return out, arg


def spmm_backward(rowptr: torch.Tensor, t_rowptr: torch.Tensor, t_col: torch.Tensor, t_pos: torch.Tensor,
                  grad_out: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor | None,
                  arg: torch.Tensor | None, reduce: str, num_cols: int, need_x: bool = True,
                  need_weight: bool = False, *, schedule="auto", chunk: int | None = None,
                  config: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(grad_x [C, F], grad_weight [E])`` of :func:`spmm_forward`.

    Args:
        rowptr: forward CSR row pointer ``[R + 1]``.
        t_rowptr, t_col, t_pos: transposed CSR: row pointer ``[C + 1]``, destination row of every
            position ``[E]``, and the forward CSR position of every position ``[E]``.
        grad_out: ``[R, F]``; x: ``[C, F]`` (needed for ``need_weight``); weight: ``[E]`` or None;
        arg: ``[R, F]`` from the forward (max/min).
        schedule / chunk / config: as in :func:`spmm_forward`, over the **transposed** CSR
            (``config`` indexes ``SPMM_BWD.configs``).
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
    block_f = _bwd_block_f(num_f)
    nfb = triton.cdiv(num_f, block_f) if num_f else 0
    gx = torch.zeros(num_cols, num_f, dtype=grad_out.dtype, device=grad_out.device) if need_x else None
    acc_dtype = _acc_torch(grad_out.dtype)
    gw_part = torch.zeros(max(nfb, 1), num_e, dtype=acc_dtype, device=grad_out.device) if need_weight else None
    if num_cols and nfb and (need_x or need_weight):
        s = resolve_schedule(t_rowptr, num_e, schedule, chunk)
        part = None
        if s is not None and s.num_partials and need_x:
            part = torch.empty(s.num_partials, num_f, dtype=acc_dtype, device=grad_out.device)
        n_prog = num_cols if s is None else s.num_items
        item_row, item_start, item_slot, chnk = _sched_args(s, t_rowptr)
        SPMM_BWD.launch(lambda meta: (n_prog, nfb),
                        rowptr, t_rowptr, t_col, t_pos, weight if weight is not None else grad_out, grad_out,
                        x if x is not None else grad_out, arg if arg is not None else t_col,
                        gx if gx is not None else grad_out, gw_part if gw_part is not None else grad_out,
                        item_row, item_start, item_slot, part if part is not None else grad_out,
                        num_f, num_e, chnk, _deg_key(num_e, num_cols),
                        HAS_W=weight is not None, REDUCE=code, NEED_X=need_x, NEED_W=need_weight,
                        ACC=_acc(grad_out.dtype), SPLIT=s is not None, BLOCK_F=block_f, config=config)
        if part is not None:
            combine(s, part, None, t_rowptr, gx, None, REDUCE_CODES["sum"])
    gw = gw_part.sum(0).to(grad_out.dtype) if need_weight else None
    return gx, gw
