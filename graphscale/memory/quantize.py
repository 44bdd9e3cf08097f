"""Quantized storage for activations: stochastic low-bit codes, bit-packed, with 16-bit row statistics.

Implements the storage format of

* ActNN (Chen, Zheng, Li, Chen, Stoica, Mahoney, Gonzalez, ICML 2021, "ActNN: Reducing Training
  Memory Footprint via 2-Bit Activation Compressed Training"): per-group min / scale quantization
  (groups of ``group_size`` consecutive values, default 256) with unbiased stochastic rounding;
* EXACT (Liu, Zhou, Rong, Jiang, Chen, Hu, Huang, ICLR 2022, "EXACT: Scalable Graph Neural Networks
  Training via Extreme Activation Compression"): per-row (per-node) quantization, optionally after a
  random projection of the feature dimension (Rademacher, ``kept_frac`` of the columns kept).

Format: the tensor is viewed as a contiguous ``[R, C]`` matrix (per-row: ``R = shape[0]``; per-group:
``R = ceil(numel / group_size)``, ``C = group_size``, the tail padded with its last value). Row ``r`` stores
``mn[r]`` (rounded *down* to the 16-bit grid) and ``scale[r] = (max - mn) / (2**bits - 1)`` (rounded
*up*), so every value lies in ``[mn, mn + (2**bits - 1) * scale]`` and the codes never clip. Code
``q = floor((x - mn) / scale + u)``, ``u ~ U[0, 1)``, has ``E[mn + q * scale] = x`` (unbiased) and
``|mn + q * scale - x| < scale``. ``u`` comes from a counter-based hash of ``(seed, position)``:
reproducible, independent of ``torch``'s global RNG. One 32-bit hash serves two values of a row
(see :func:`graphscale.memory.random_streams.quantize_noise`), so ``u`` has 16 random bits: ``u = k / 2**16``, and the mean of
``mn + q * scale`` is ``x`` to within ``2**-16 * scale`` (the noise's resolution).
Codes are packed ``8 // bits`` to a byte.

Statistics are float16 unless a row's minimum or step is outside float16's range (|v| > 65504), in
which case the whole tensor's statistics use bfloat16 (same 16 bits, float32's range). A constant row
gets ``scale = 0`` and dequantizes exactly to its (16-bit) minimum.

What is here: the containers (:class:`QuantizedTensor`, :class:`Projected`), :func:`quantize` /
:func:`dequantize` / :func:`project_quantize`, the row statistics, and the blocked code computation.
CUDA tensors use the Triton kernels in ``graphscale_triton.quantize``; everything else runs the
pure-torch reference here (also the test oracle; DESIGN.md rule 2), CPU tensors through numpy twins
of its hash, statistics and packing steps that give the same bits (measured faster; see
``_codes_into_np``). The noise and seeds come from :mod:`graphscale.memory.random_streams`, the bit
packing from :mod:`graphscale.memory.bitpack`, the argument checks from
:mod:`graphscale.memory.compression_options`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from graphscale._features import TRITON_INTERPRET, WITH_TRITON, require
from graphscale.memory.bitpack import _code_table, _pack_rows_, _pack_rows_np_
from graphscale.memory.compression_options import (check_backend, check_bits, check_float, check_group_size,
                                                   check_kept_frac)
# set_seed is re-exported: callers seed the noise of quantize() here (graphscale.bench.compression).
from graphscale.memory.random_streams import (_keys, _noise_blocks, _noise_blocks_np, _np_path, _rows_per_block,
                                              next_seed, rademacher, set_seed)

__all__ = ["QuantizedTensor", "Projected", "quantize", "dequantize", "project_quantize", "set_seed"]

_FP16_MAX = 65504.0
_PAD_COPY_MAX = 1 << 20  # up to this many values a tail group is padded by copying the tensor once


# --------------------------------------------------------------------------------------------
@dataclass
class QuantizedTensor:
    """A tensor stored as bit-packed stochastic codes plus 16-bit per-row (or per-group) statistics.

    Attributes:
        packed: ``uint8 [R, ceil(C * bits / 8)]`` codes.
        mn, scale: ``[R]`` float16 (bfloat16 when out of float16's range) minimum and step.
        bits: 1, 2, 4 or 8.
        shape, dtype: of the original tensor.
        group_size: values per group (ActNN) or ``None`` for per-row (EXACT).
        cols: ``C``, values per row of the ``[R, C]`` view.
        seed: the noise seed (``quantize(x, seed=q.seed)`` gives the same codes again).
    """

    packed: Tensor
    mn: Tensor
    scale: Tensor
    bits: int
    shape: torch.Size
    dtype: torch.dtype
    group_size: int | None
    cols: int
    seed: int

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes plus statistics."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The tensors this object keeps alive (for :func:`graphscale.memory.accounting.report_ctx`)."""
        return self.packed, self.mn, self.scale

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def dequantize(self, backend: str | None = None) -> Tensor:
        return dequantize(self, backend=backend)


@dataclass
class Projected:
    """A random projection (EXACT) of the last dimension followed by quantization.

    ``x [..., D]`` is stored as ``quantize(x @ R)`` with ``R = rademacher(D, k, seed)`` (``k =
    ceil(kept_frac * D)``); :meth:`dequantize` returns ``deq @ R.T``, an unbiased estimate of ``x``
    because ``E[R R^T] = I``. ``R`` is regenerated from ``seed``, never stored.
    """

    q: QuantizedTensor
    proj_seed: int
    in_features: int
    shape: torch.Size
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.q.nbytes

    def tensors(self) -> tuple[Tensor, ...]:
        return self.q.tensors()

    @property
    def device(self) -> torch.device:
        return self.q.device

    def dequantize(self, backend: str | None = None) -> Tensor:
        y = self.q.dequantize(backend)
        r = rademacher(self.in_features, y.shape[-1], self.proj_seed, device=y.device, dtype=y.dtype)
        return (y @ r.t()).reshape(self.shape).to(self.dtype)


# --------------------------------------------------------------------------------------------
def _pick_backend(x: Tensor, backend: str | None) -> str:
    name = backend or os.environ.get("GRAPHSCALE_BACKEND", "auto")
    check_backend(name)
    if name == "auto":
        # Triton only for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1 when asked explicitly).
        return "triton" if (x.is_cuda and WITH_TRITON) else "torch"
    if name == "triton":
        if not WITH_TRITON:
            require("triton", "the Triton quantization backend")
        if not x.is_cuda and not TRITON_INTERPRET:
            return "torch"  # Triton kernels cannot run on CPU tensors outside the interpreter
    return name


def _view_rows(x: Tensor, group_size: int | None) -> tuple[Tensor, int]:
    if group_size is None:
        rows = x.shape[0] if x.dim() >= 2 else 1
        x2d = x.reshape(rows, math.prod(x.shape) // rows if rows else 0)
        return x2d.contiguous(), x2d.shape[1]
    flat = x.reshape(-1)
    group_size = max(1, min(group_size, flat.numel()))  # a tensor smaller than a group is one group
    pad = (-flat.numel()) % group_size
    if pad:  # repeat the last value: zeros would widen the tail group's range (and round values to 0)
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.contiguous().view(-1, group_size), group_size


def _round(v: Tensor, dtype: torch.dtype, down: bool) -> Tensor:
    """``v`` (float32) rounded to ``dtype`` toward -inf (``down``) or +inf."""
    r = v.to(dtype)
    if down:
        bad = r.float() > v
        return torch.where(bad, torch.nextafter(r, torch.full_like(r, -math.inf)), r)
    bad = r.float() < v
    return torch.where(bad, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def _row_stats(x2d: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(mn, scale, inv_scale)``: 16-bit min (rounded down), 16-bit step (rounded up), float32 1/step."""
    if x2d.shape[1] == 0:
        z = torch.zeros(x2d.shape[0], device=x2d.device)
        return z.half(), z.half(), z
    xf = x2d.float()
    # amin + amax, not aminmax: measured 0.04 vs 2.5 ms on [1354, 256] (one thread).
    return _stats_from_range(xf.amin(1), xf.amax(1), bits)


def _stats_from_range(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    if lo.device.type == "cpu" and lo.dtype == torch.float32:
        got = _stats_from_range_np(lo.detach().numpy(), hi.detach().numpy(), bits)
        if got is not None:
            return got
    return _stats_from_range_torch(lo, hi, bits)


def _stats_from_range_np(lo: np.ndarray, hi: np.ndarray, bits: int):
    """numpy twin of :func:`_stats_from_range_torch` for the float16 case (``None`` otherwise): the same
    IEEE operations on arrays of one value per row, ~1 us per call instead of ~7 us."""
    levels = (1 << bits) - 1
    with np.errstate(all="ignore"):
        span = (hi - lo) / np.float32(levels)
        if lo.shape[0] and not (max(float(np.abs(lo).max()), float(span.max())) <= _FP16_MAX / 2):
            return None
        mn = lo.astype(np.float16)
        down = mn.astype(np.float32) > lo
        mn[down] = np.nextafter(mn[down], np.float16(-np.inf))
        want = (hi - mn.astype(np.float32)) / np.float32(levels)
        scale = want.astype(np.float16)
        up = scale.astype(np.float32) < want
        scale[up] = np.nextafter(scale[up], np.float16(np.inf))
        s = scale.astype(np.float32)
        inv = np.where(s > 0, np.float32(1.0) / np.where(s > 0, s, np.float32(1.0)), np.float32(0.0))
    return torch.from_numpy(mn), torch.from_numpy(scale), torch.from_numpy(inv.astype(np.float32, copy=False))


def _stats_from_range_torch(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    levels = (1 << bits) - 1
    span = (hi - lo) / levels
    # Half the float16 maximum leaves room for the outward rounding of mn and scale.
    # One reduction and one host sync: inf / NaN anywhere make the maximum inf / NaN, which fails too.
    fits = lo.shape[0] == 0 or bool(torch.maximum(lo.abs().amax(), span.amax()) <= _FP16_MAX / 2)
    dtype = torch.float16 if fits else torch.bfloat16
    mn = _round(lo, dtype, down=True)
    scale = _round((hi - mn.float()) / levels, dtype, down=False)
    # The step is rounded up, so (hi - mn) / scale <= levels: codes never clip. A constant row whose
    # value is exact in 16 bits gets scale 0 (inv 0, every code 0, dequantized exactly).
    s = scale.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    return mn, scale, inv


def quantize(x: Tensor, bits: int = 2, group_size: int | None = 256, seed: int | None = None,
             backend: str | None = None) -> QuantizedTensor:
    """Quantize ``x`` to ``bits``-bit stochastic codes (ActNN per-group / EXACT per-row).

    Args:
        x: floating-point tensor of any shape (per-row mode views it as ``[shape[0], -1]``).
        bits: 1, 2, 4 or 8.
        group_size: values per group (ActNN, default 256) or ``None`` for one group per row (EXACT).
        seed: noise seed; ``None`` takes the next seed of the stream (:func:`set_seed`).
        backend: ``'torch'`` | ``'triton'`` | ``'auto'`` (default: ``GRAPHSCALE_BACKEND`` env var, then
            auto = Triton for CUDA tensors).

    Returns a :class:`QuantizedTensor`; ``dequantize(q)`` is an unbiased estimate of ``x`` with
    elementwise error below the row's ``scale``.
    """
    check_float(x)
    check_bits(bits)
    check_group_size(group_size)
    seed = next_seed() if seed is None else int(seed)
    with torch.no_grad():
        if _pick_backend(x, backend) == "triton":
            x2d, cols = _view_rows(x.detach(), group_size)
            mn, scale, inv = _row_stats(x2d, bits)
            from graphscale_triton.quantize import quantize_pack_forward
            packed = quantize_pack_forward(x2d, mn, inv, bits, _keys(seed)[0])
        else:
            packed, mn, scale, cols = _quantize_reference(x.detach(), bits, group_size, seed)
    return QuantizedTensor(packed, mn, scale, bits, x.shape, x.dtype, group_size, cols, seed)


def _quantize_reference(x: Tensor, bits: int, group_size: int | None, seed: int,
                        block: int | None = None) -> tuple[Tensor, Tensor, Tensor, int]:
    """The torch path of :func:`quantize`: ``(packed, mn, scale, cols)``. Per-group, the whole groups are
    read in place (no padded copy of the tensor); only the tail group is padded."""
    parts = []
    if group_size is None:
        x2d, cols = _view_rows(x, None)
        parts.append(x2d)
    else:
        flat = x.reshape(-1)
        cols = max(1, min(group_size, flat.numel()))
        whole = flat.numel() // cols
        pad = (-flat.numel()) % cols
        if pad and flat.numel() <= _PAD_COPY_MAX:
            # one padded copy: a pass over a small tensor costs less than a second call for the tail group
            # (measured 0.98 vs 1.19 ms on 2708 x 32 values, one thread)
            parts.append(torch.cat([flat, flat[-1:].expand(pad)]).view(-1, cols))
        else:
            if whole:
                parts.append(flat[: whole * cols].view(whole, cols))
            if pad:
                tail = flat[whole * cols:]  # the tail group, padded with its last value (see _view_rows)
                parts.append(torch.cat([tail, tail[-1:].expand(pad)]).view(1, cols))
    if cols == 0 or not parts:
        return _empty_codes(x, bits, cols)
    lo = torch.cat([p.amin(1).float() for p in parts])  # amin + amax: see _row_stats
    hi = torch.cat([p.amax(1).float() for p in parts])
    mn, scale, inv = _stats_from_range(lo, hi, bits)
    vpb = 8 // bits
    packed = torch.empty(lo.shape[0], -(-cols // vpb), dtype=torch.uint8, device=x.device)
    row0 = 0
    for p in parts:
        if _np_path(x.device, row0 + p.shape[0], -(-cols // 2)):
            _codes_into_np(packed, p, mn, inv, bits, seed, row0, block)
        else:
            _codes_into(packed, p, mn, inv, bits, seed, row0, block)
        row0 += p.shape[0]
    return packed, mn, scale, cols


def _empty_codes(x, bits, cols):
    rows = 1 if x.dim() < 2 else x.shape[0]
    mn, scale, _ = _row_stats(torch.zeros(rows, 0, device=x.device), bits)
    return torch.empty(rows, 0, dtype=torch.uint8, device=x.device), mn, scale, cols


def _noisy_values_into(vv: Tensor, xs: Tensor, mnf: Tensor, inv: Tensor, lo: Tensor, hi: Tensor, bits: int) -> None:
    """``vv [k, C] = (xs - mn) * inv + u`` in float32 (the steps both code paths share): ``mnf``, ``inv``
    ``[k]`` per row, ``lo [k, H]`` / ``hi [k, C - H]`` the int32 16-bit noise of ``random_streams.quantize_noise``."""
    half = lo.shape[1]
    if xs.dtype == torch.float32:
        torch.sub(xs, mnf[:, None], out=vv)
    else:
        vv.copy_(xs).sub_(mnf[:, None])
    vv.mul_(inv[:, None])
    vv[:, :half].add_(lo, alpha=2.0 ** -16)
    vv[:, half:].add_(hi, alpha=2.0 ** -16)
    if bits == 8:
        # x >= mn gives fl(x - mn) >= 0 and inv >= 0, so v >= 0; and v <= levels up to two float32
        # roundings (< 2**-16 for levels <= 15) plus u <= 1 - 2**-16 stays below levels + 1: the
        # truncation needs no clamp below 8 bits (one pass less), the Triton kernel's clamp is a no-op.
        vv.clamp_(0, (1 << bits) - 1)


def _codes_into(packed: Tensor, x2d: Tensor, mn: Tensor, inv: Tensor, bits: int, seed: int, row0: int,
                block: int | None = None) -> None:
    """Codes ``floor((x - mn) * inv + u)`` (in the levels; clamped at 8 bits) of rows ``row0 + r`` of the ``[R, C]``
    view, bit-packed into ``packed[row0 + r]``; the same float32 operations, in the same order, as
    the Triton kernel (``u * 2**16`` is an integer below 2**16, so adding ``k * 2**-16`` equals adding
    ``u``, and clamping before truncation equals flooring before clamping for these non-negative
    values)."""
    rows, cols = x2d.shape
    vpb = 8 // bits
    nb = packed.shape[1]
    mnf = mn.float()
    step = _rows_per_block(cols, block)
    m = min(step, rows)
    v = torch.empty(m, cols, dtype=torch.float32, device=x2d.device)
    c = torch.zeros(m, nb * vpb, dtype=torch.uint8, device=x2d.device)  # padding codes stay 0
    for r0, r1, lo, hi in _noise_blocks(rows, cols, seed, block, x2d.device, row0):
        g0, g1 = row0 + r0, row0 + r1
        vv, cc = v[: r1 - r0], c[: r1 - r0]
        _noisy_values_into(vv, x2d[r0:r1], mnf[g0:g1], inv[g0:g1], lo, hi, bits)
        cc[:, :cols].copy_(vv)
        _pack_rows_(packed[g0:g1], cc, bits, cols)


def _codes_into_np(packed: Tensor, x2d: Tensor, mn: Tensor, inv: Tensor, bits: int, seed: int, row0: int,
                   block: int | None = None) -> None:
    """:func:`_codes_into` for CPU tensors: the hash and the packing through numpy (see ``_np_path``), the
    broadcast and strided float32 steps through torch on the same memory (faster there: measured 19 vs
    45 us for the per-row scaling of a 64k block); the same operations in the same order, so the
    same bits."""
    rows, cols = x2d.shape
    vpb = 8 // bits
    nb = packed.shape[1]
    P = packed.numpy()
    mnf = mn.float()
    step = _rows_per_block(cols, block)
    m = min(step, rows)
    v = torch.empty(m, cols, dtype=torch.float32, device=x2d.device)
    c = np.zeros((m, nb * vpb), np.uint8)  # padding codes stay 0
    for r0, r1, lo, hi in _noise_blocks_np(rows, cols, seed, block, row0):
        g0, g1, k = row0 + r0, row0 + r1, r1 - r0
        vv, cc = v[:k], c[:k]
        # the noise as int32 views (< 2**16: the same values)
        _noisy_values_into(vv, x2d[r0:r1], mnf[g0:g1], inv[g0:g1], torch.from_numpy(lo.view(np.int32)),
                           torch.from_numpy(hi.view(np.int32)), bits)
        np.copyto(cc[:, :cols], vv.numpy(), casting="unsafe")  # truncation = floor for these values >= 0
        _pack_rows_np_(P[g0:g1], cc, bits, cols)


def dequantize(q: QuantizedTensor | Projected, backend: str | None = None) -> Tensor:
    """Values of a :class:`QuantizedTensor` (or :class:`Projected`) in the original shape and dtype."""
    if isinstance(q, Projected):
        return q.dequantize(backend)
    if _pick_backend(q.packed, backend) == "triton":
        from graphscale_triton.quantize import unpack_dequantize_forward
        vals = unpack_dequantize_forward(q.packed, q.mn, q.scale, q.bits, q.cols, torch.float32)
    else:
        vals = _dequantize_reference(q.packed, q.mn, q.scale, q.bits, q.cols)
    n = math.prod(q.shape)
    flat = vals.reshape(-1)
    if flat.numel() != n:  # per-group padding
        flat = flat[:n]
    return flat.view(q.shape).to(q.dtype)


def _dequantize_reference(packed: Tensor, mn: Tensor, scale: Tensor, bits: int, cols: int,
                          block: int | None = None) -> Tensor:
    """``codes * scale + mn`` as float32 ``[R, cols]``, unpacked in blocks of rows (see ``random_streams._BLOCK``)."""
    R, nb = packed.shape
    vpb = 8 // bits
    out = torch.empty(R, cols, dtype=torch.float32, device=packed.device)
    if R * cols == 0:
        return out
    sf, mf = scale.float(), mn.float()
    step = _rows_per_block(cols, block)
    c = torch.empty(min(step, R), nb, vpb, dtype=torch.uint8, device=packed.device)
    lut = _code_table(bits, packed.device) if bits < 8 and nb * vpb == cols else None
    idx = torch.empty(min(step, R) * nb, dtype=torch.int64, device=packed.device) if lut is not None else None
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        cc, o = c[: r1 - r0], out[r0:r1]
        if bits == 8:
            o.copy_(packed[r0:r1])
        elif lut is not None:  # one gather of vpb codes per byte, written straight into the output
            ii = idx[: (r1 - r0) * nb]
            ii.copy_(packed[r0:r1].reshape(-1))
            torch.index_select(lut, 0, ii, out=o.view(-1, vpb))
        else:
            for k in range(vpb):
                torch.bitwise_right_shift(packed[r0:r1], k * bits, out=cc[:, :, k]).bitwise_and_((1 << bits) - 1)
            o.copy_(cc.view(r1 - r0, nb * vpb)[:, :cols])
        o.mul_(sf[r0:r1, None]).add_(mf[r0:r1, None])
    return out


def project_quantize(x: Tensor, kept_frac: float, bits: int = 2, group_size: int | None = 256,
                     seed: int | None = None, backend: str | None = None) -> Projected:
    """EXACT's random projection then quantization: store ``quantize(x @ R)``, ``R [D, ceil(kept_frac*D)]``.

    Shapes: ``x [..., D]``; the projected ``[..., k]`` is quantized (``group_size`` as in :func:`quantize`).
    """
    check_float(x, "project_quantize")
    check_kept_frac(kept_frac)
    seed = next_seed() if seed is None else int(seed)
    d = x.shape[-1]
    k = max(1, math.ceil(kept_frac * d))
    with torch.no_grad():
        r = rademacher(d, k, seed ^ 0x5BD1E995, device=x.device, dtype=torch.float32)
        y = x.detach().reshape(-1, d).float() @ r
    q = quantize(y, bits, group_size, seed=seed, backend=backend)
    return Projected(q, seed ^ 0x5BD1E995, d, x.shape, x.dtype)
