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
(see :func:`quantize_noise`), so ``u`` has 16 random bits: ``u = k / 2**16``, and the mean of
``mn + q * scale`` is ``x`` to within ``2**-16 * scale`` (the noise's resolution).
Codes are packed ``8 // bits`` to a byte.

Statistics are float16 unless a row's minimum or step is outside float16's range (|v| > 65504), in
which case the whole tensor's statistics use bfloat16 (same 16 bits, float32's range). A constant row
gets ``scale = 0`` and dequantizes exactly to its (16-bit) minimum.

CUDA tensors use the Triton kernels in ``graphscale_triton.quantize``; everything else runs the
pure-torch reference here (also the test oracle; DESIGN.md rule 2).
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from graphscale._features import TRITON_INTERPRET, WITH_TRITON
from graphscale.errors import ConfigError

__all__ = ["SUPPORTED_BITS", "QuantizedTensor", "Projected", "quantize", "dequantize", "pack_codes",
           "unpack_codes", "quantize_noise", "rademacher", "next_seed", "set_seed", "check_bits",
           "check_group_size", "check_kept_frac", "project_quantize", "hash_mask",
           "check_dropout_mask", "DROPOUT_MASKS"]

SUPPORTED_BITS = (1, 2, 4, 8)
BACKENDS = ("auto", "torch", "triton")
_M32 = 0xFFFFFFFF
_FP16_MAX = 65504.0


# --------------------------------------------------------------------------------------------
# Argument checks (clear messages before any work; DESIGN.md rule 13).
def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def check_group_size(group_size) -> int | None:
    """``None`` means per-row (EXACT); otherwise a positive int (ActNN groups)."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ConfigError(f"group_size must be a positive int (or None for per-row quantization), "
                          f"got {group_size!r}")
    return group_size


def check_kept_frac(kept_frac) -> float:
    if not isinstance(kept_frac, (int, float)) or isinstance(kept_frac, bool) or not 0.0 < kept_frac <= 1.0:
        raise ConfigError(f"projection kept_frac must be in (0, 1] (1 = no projection), got {kept_frac!r}")
    return float(kept_frac)


DROPOUT_MASKS = ("packed", "seed")


def check_dropout_mask(mode) -> str:
    if mode not in DROPOUT_MASKS:
        raise ConfigError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {mode!r}")
    return mode


def _check_float(x, what: str = "quantize") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got dtype {x.dtype} "
                        f"(integer and bool tensors are stored as they are)")


# --------------------------------------------------------------------------------------------
# Seeds: a counter-based stream so each quantized tensor gets fresh, reproducible noise.
_seed_lock = threading.Lock()
_seed_state = {"base": 0, "counter": itertools.count()}


def set_seed(seed: int) -> None:
    """Restart the stream of quantization seeds at ``seed`` (the trainer seeds it per run)."""
    with _seed_lock:
        _seed_state["base"] = int(seed)
        _seed_state["counter"] = itertools.count()


def next_seed() -> int:
    """The next seed of the stream: a pure function of (base seed, number of calls so far)."""
    with _seed_lock:
        n = next(_seed_state["counter"])
        base = _seed_state["base"]
    return _fmix32_int(_fmix32_int((base & _M32) ^ 0x9E3779B9) ^ (n & _M32)) | ((n >> 32) << 32)


def _fmix32_int(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def _keys(seed: int) -> tuple[int, int]:
    """Two uint32 stream keys of a seed (the Triton kernel receives the same keys)."""
    k1 = _fmix32_int((seed & _M32) ^ _fmix32_int((seed >> 32) + 0x632BE5AB))
    return k1, _fmix32_int(k1 + 0x9E3779B9)


# Counter hash of element index i = hi * 2**32 + lo (uint32 arithmetic, wrapping multiplies):
#     h = mix(lo ^ k1 ^ (hi * 0x9E3779B9)),     u = (h >> 8) / 2**24
# with mix = Wellons' "lowbias32" (two multiply-xorshift rounds, full avalanche). The torch version
# runs in int32 (two's-complement wrap, logical shifts by masking) and in place: measured here on
# 3.9M elements, one thread, out-of-place ops took 420 ms per hash (a fresh 15 MB buffer per op,
# page-faulted in), in-place ops 30 ms; int32 multiplies are vectorised, int64 ones are not
# (0.04 vs 0.57 ms per 173k elements).
_C1 = 0x7FEB352D
_C2 = 0x846CA68B - (1 << 32)  # as signed int32
_GOLD = 0x9E3779B9


def _s32(v: int) -> int:
    v &= _M32
    return v - (1 << 32) if v >= (1 << 31) else v


def _mix_(h: Tensor, t: Tensor | None = None) -> Tensor:
    """lowbias32 on int32 bits, in place (``t``: a scratch buffer of ``h``'s shape, reused if given)."""
    if t is None:
        t = torch.empty_like(h)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=t).bitwise_and_(0xFFFF))
    h.mul_(_C1)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 15, out=t).bitwise_and_(0x1FFFF))
    h.mul_(_C2)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=t).bitwise_and_(0xFFFF))
    return h


def _mix_int(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def _hash(idx: Tensor, seed: int) -> Tensor:
    """uint32 hash of ``(seed, idx)`` as int32 bits; the Triton kernel computes the same function."""
    k1, _ = _keys(seed)
    if idx.dtype == torch.int32:  # < 2**31 elements: hi = 0
        return _mix_(torch.bitwise_xor(idx, _s32(k1)))
    lo = (idx & _M32) ^ k1 ^ (((idx >> 32) * _GOLD) & _M32)
    return _mix_(lo.to(torch.int32))  # int64 -> int32 keeps the low 32 bits


def _index(rows: int, cols: int, device) -> Tensor:
    n = rows * cols
    return torch.arange(n, device=device, dtype=torch.int32 if n < 2**31 else torch.int64).view(rows, cols)


def quantize_noise(rows: int, cols: int, seed: int, device=None) -> Tensor:
    """The rounding noise ``u [rows, cols]`` of :func:`quantize` (and, thresholded, :func:`hash_mask`).

    Definition (the blocked torch path and the Triton kernel compute the same values): with ``H =
    ceil(cols / 2)``, column ``c`` of row ``r`` reads the 32-bit hash ``h = _hash(r * H + c mod H)``;
    columns ``c < H`` take its low 16 bits, columns ``c >= H`` its high 16 bits, and ``u = bits16 /
    2**16``. Halving the hashes halves the cost of the dominant passes (the multiply-xorshift
    rounds); 16 bits of noise bound the rounding bias by ``2**-16`` of a step.
    """
    half = -(-cols // 2)
    h = _hash(_index(rows, half, device).view(-1), seed).view(rows, half).long() & _M32
    u = torch.cat([h & 0xFFFF, (h >> 16)[:, : cols - half]], 1)
    return u.to(torch.float32) * 2.0 ** -16


# Blocked evaluation: the elementwise work (hash, scaling, rounding, packing) runs over blocks of
# whole rows of about _BLOCK elements with scratch buffers reused from block to block, so the ~20
# passes per value stay in cache instead of streaming fresh full-size temporaries through memory
# (each a page-faulted allocation). Measured here (one thread, 2708 x 1433 float32, 2 bits, groups of
# 256): quantize 76 -> 36 ms; the hash alone 40 ms unblocked, 24 / 14 / 22 ms in blocks of 16k / 64k / 256k.
_BLOCK = 1 << 16
_PAD_COPY_MAX = 1 << 20  # up to this many values a tail group is padded by copying the tensor once


def _hash_blocks(rows: int, cols: int, seed: int, step: int, device=None, row0: int = 0):
    """Yield ``(r0, r1, h)`` over blocks of ``step`` rows ``r0 <= r < r1`` of ``[rows, cols]``: ``h [r1 - r0,
    cols]`` int32 = ``_hash`` of the indices ``(row0 + r) * cols + c`` (a reused buffer: consume it
    before the next step)."""
    if rows * cols == 0:
        return
    if (row0 + rows) * cols >= 2**31:  # int64 indices (hi != 0): the unblocked definition per block
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            idx = torch.arange((row0 + r0) * cols, (row0 + r1) * cols, device=device, dtype=torch.int64)
            yield r0, r1, _hash(idx, seed).view(r1 - r0, cols)
        return
    k1 = _s32(_keys(seed)[0])
    m = min(step, rows)
    ar = torch.arange(m * cols, device=device, dtype=torch.int32).view(m, cols)
    h, t = torch.empty_like(ar), torch.empty_like(ar)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        hh, tt = h[: r1 - r0], t[: r1 - r0]
        torch.add(ar[: r1 - r0], (row0 + r0) * cols, out=hh).bitwise_xor_(k1)
        yield r0, r1, _mix_(hh, tt)


def _noise_blocks(rows: int, cols: int, seed: int, block: int | None = None, device=None, row0: int = 0):
    """Yield ``(r0, r1, lo, hi)`` over blocks of rows: the 16-bit noise of :func:`quantize_noise` for
    columns ``[0, H)`` (``lo [r1 - r0, H]``) and ``[H, cols)`` (``hi [r1 - r0, cols - H]``) as int32 in
    ``[0, 2**16)``, of rows ``row0 + r``. Reused buffers: consume them before the next step."""
    half = -(-cols // 2)
    step = max(1, (block or _BLOCK) // max(cols, 1))
    lo = torch.empty(min(step, rows), half, dtype=torch.int32, device=device)
    for r0, r1, h in _hash_blocks(rows, half, seed, step, device, row0):
        ll = lo[: r1 - r0]
        torch.bitwise_and(h, 0xFFFF, out=ll)
        hi = h[:, : cols - half].bitwise_right_shift_(16).bitwise_and_(0xFFFF)
        yield r0, r1, ll, hi


# CPU tensors run the same blocked arithmetic through numpy: its ufuncs on uint32 wrap and shift
# logically as the definition does, and cost ~0.7 us per call against ~7 us for a torch op, which
# dominates at these block sizes (measured: the hash of 32k values 0.048 vs 0.095 ms, one thread).
# The torch functions above stay the specification and the path for other devices; tests check
# that both give identical bits.
def _np_path(device, rows: int, half: int) -> bool:
    return torch.device(device).type == "cpu" and rows * half < 2**31


def _noise_blocks_np(rows: int, cols: int, seed: int, block: int | None = None, row0: int = 0):
    """numpy twin of :func:`_noise_blocks`: ``(r0, r1, lo, hi)`` as uint32 arrays (reused buffers)."""
    half = -(-cols // 2)
    if rows * cols == 0:
        return
    step = max(1, (block or _BLOCK) // max(cols, 1))
    m = min(step, rows)
    ar = np.arange(m * half, dtype=np.uint32).reshape(m, half)
    h, t = np.empty_like(ar), np.empty_like(ar)
    k1 = np.uint32(_keys(seed)[0])
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        hh, tt = h[: r1 - r0], t[: r1 - r0]
        np.add(ar[: r1 - r0], np.uint32((row0 + r0) * half), out=hh)
        np.bitwise_xor(hh, k1, out=hh)
        for shift, mul in ((16, _C1), (15, _C2 & _M32), (16, None)):  # lowbias32, as _mix_
            np.right_shift(hh, np.uint32(shift), out=tt)
            np.bitwise_xor(hh, tt, out=hh)
            if mul is not None:
                np.multiply(hh, np.uint32(mul), out=hh)
        np.bitwise_and(hh, np.uint32(0xFFFF), out=tt)
        np.right_shift(hh, np.uint32(16), out=hh)
        yield r0, r1, tt, hh[:, : cols - half]


def hash_mask(shape, keep_prob: float, seed: int, device=None) -> Tensor:
    """Bool tensor of ``shape``, each element ``True`` with probability ``keep_prob`` (rounded to a
    multiple of 2**-16): ``quantize_noise < keep_prob`` over the ``[shape[0], -1]`` view, so it is
    regenerated from the seed alone (no stored mask)."""
    shape = torch.Size(shape)
    rows = shape[0] if len(shape) >= 1 else 1
    cols = math.prod(shape) // rows if rows else 0
    out = torch.empty(rows, cols, dtype=torch.bool, device=device)
    half = -(-cols // 2)
    thr = int(round(keep_prob * 2**16))  # keep where the 16 noise bits (u * 2**16) are < thr
    if _np_path(out.device, rows, half):
        o = out.numpy()
        for r0, r1, lo, hi in _noise_blocks_np(rows, cols, seed):
            np.less(lo, np.uint32(thr), out=o[r0:r1, :half])
            np.less(hi, np.uint32(thr), out=o[r0:r1, half:])
        return out.view(shape)
    for r0, r1, lo, hi in _noise_blocks(rows, cols, seed, device=device):
        torch.lt(lo, thr, out=out[r0:r1, :half])
        torch.lt(hi, thr, out=out[r0:r1, half:])
    return out.view(shape)


# --------------------------------------------------------------------------------------------
# Bit packing (pure torch).
def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes ``[R, C]`` (each in ``[0, 2**bits)``) into ``uint8 [R, ceil(C*bits/8)]``."""
    check_bits(bits)
    vpb = 8 // bits
    R, C = codes.shape
    nb = -(-C // vpb)
    c = codes.to(torch.uint8)
    if nb * vpb != C:
        c = torch.nn.functional.pad(c, (0, nb * vpb - C))
    c = c.view(R, nb, vpb)
    out = c[:, :, 0].clone()
    for k in range(1, vpb):  # uint8 in place: no int32 temporaries of the full size
        out.bitwise_or_(c[:, :, k] << (k * bits))
    return out


def unpack_codes(packed: Tensor, bits: int, cols: int) -> Tensor:
    """Inverse of :func:`pack_codes`: ``uint8 [R, NB]`` -> codes ``uint8 [R, cols]``."""
    check_bits(bits)
    vpb = 8 // bits
    R, nb = packed.shape
    codes = torch.empty(R, nb, vpb, dtype=torch.uint8, device=packed.device)
    for k in range(vpb):
        torch.bitwise_right_shift(packed, k * bits, out=codes[:, :, k]).bitwise_and_((1 << bits) - 1)
    return codes.view(R, nb * vpb)[:, :cols]


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


def rademacher(d: int, k: int, seed: int, device=None, dtype=torch.float32) -> Tensor:
    """Random ``[d, k]`` matrix with entries ``+-1/sqrt(k)`` from the counter hash of ``seed``.

    ``E[R R^T] = I_d``: projecting with ``R`` and back with ``R^T`` is unbiased (EXACT, Sec. 3.2).
    """
    sign = (_hash(_index(d, k, device).view(-1), seed) & 1).to(dtype) * 2 - 1
    return (sign / math.sqrt(k)).view(d, k)


# --------------------------------------------------------------------------------------------
def _pick_backend(x: Tensor, backend: str | None) -> str:
    name = backend or os.environ.get("GRAPHSCALE_BACKEND", "auto")
    if name not in BACKENDS:
        raise ConfigError(f"unknown quantization backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        # Triton only for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1 when asked explicitly).
        return "triton" if (x.is_cuda and WITH_TRITON) else "torch"
    if name == "triton":
        if not WITH_TRITON:
            from graphscale._features import require
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
    levels = (1 << bits) - 1
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
    _check_float(x)
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


# 2-bit codes b0..b3 as the bytes of a little-endian int32 word w: (w * _PACK2) >> 24 = b0 | b1 << 2 |
# b2 << 4 | b3 << 6 (the other partial products wrap above bit 31 or sum below bit 24 without carry).
_PACK2 = (1 << 24) + (1 << 18) + (1 << 12) + (1 << 6)
_LITTLE = sys.byteorder == "little"


def _noisy_values_into(vv: Tensor, xs: Tensor, mnf: Tensor, inv: Tensor, lo: Tensor, hi: Tensor, bits: int) -> None:
    """``vv [k, C] = (xs - mn) * inv + u`` in float32 (the steps both code paths share): ``mnf``, ``inv``
    ``[k]`` per row, ``lo [k, H]`` / ``hi [k, C - H]`` the int32 16-bit noise of :func:`quantize_noise`."""
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
    step = max(1, (block or _BLOCK) // cols)
    m = min(step, rows)
    v = torch.empty(m, cols, dtype=torch.float32, device=x2d.device)
    c = torch.zeros(m, nb * vpb, dtype=torch.uint8, device=x2d.device)  # padding codes stay 0
    fast2 = bits == 2 and cols % 4 == 0 and _LITTLE
    for r0, r1, lo, hi in _noise_blocks(rows, cols, seed, block, x2d.device, row0):
        g0, g1 = row0 + r0, row0 + r1
        vv, cc = v[: r1 - r0], c[: r1 - r0]
        _noisy_values_into(vv, x2d[r0:r1], mnf[g0:g1], inv[g0:g1], lo, hi, bits)
        cc[:, :cols].copy_(vv)
        out = packed[g0:g1]
        if bits == 8:
            out.copy_(cc)
        elif fast2:
            w = cc.view(torch.int32)
            out.copy_(w.mul_(_PACK2).bitwise_right_shift_(24).bitwise_and_(0xFF))
        else:
            c3 = cc.view(r1 - r0, nb, vpb)
            out.copy_(c3[:, :, 0])
            for k in range(1, vpb):
                out.bitwise_or_(c3[:, :, k] << (k * bits))


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
    step = max(1, (block or _BLOCK) // cols)
    m = min(step, rows)
    v = torch.empty(m, cols, dtype=torch.float32, device=x2d.device)
    c = np.zeros((m, nb * vpb), np.uint8)  # padding codes stay 0
    fast2 = bits == 2 and cols % 4 == 0 and _LITTLE
    for r0, r1, lo, hi in _noise_blocks_np(rows, cols, seed, block, row0):
        g0, g1, k = row0 + r0, row0 + r1, r1 - r0
        vv, cc = v[:k], c[:k]
        # the noise as int32 views (< 2**16: the same values)
        _noisy_values_into(vv, x2d[r0:r1], mnf[g0:g1], inv[g0:g1], torch.from_numpy(lo.view(np.int32)),
                           torch.from_numpy(hi.view(np.int32)), bits)
        np.copyto(cc[:, :cols], vv.numpy(), casting="unsafe")  # truncation = floor for these values >= 0
        out = P[g0:g1]
        if bits == 8:
            out[...] = cc
        elif fast2:
            w = cc.view(np.uint32)
            np.multiply(w, np.uint32(_PACK2), out=w)
            np.right_shift(w, np.uint32(24), out=w)
            np.copyto(out, w, casting="unsafe")
        else:
            c3 = cc.reshape(k, nb, vpb)
            out[...] = c3[:, :, 0]
            for j in range(1, vpb):
                out |= c3[:, :, j] << np.uint8(j * bits)


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


_CODE_TABLES: dict = {}


def _code_table(bits: int, device) -> Tensor:
    """``[256, 8 // bits]`` float32: the codes packed in each byte value (the byte-wise inverse of
    :func:`pack_codes`). A gather from it unpacks 2-bit codes in 17 ms instead of 41 ms for shifts
    and masks (2708 x 1433 values, one thread)."""
    key = (bits, str(device))
    if key not in _CODE_TABLES:
        vpb = 8 // bits
        b = torch.arange(256, dtype=torch.int32)
        _CODE_TABLES[key] = torch.stack([(b >> (k * bits)) & ((1 << bits) - 1) for k in range(vpb)], 1).float().to(device)
    return _CODE_TABLES[key]


def _dequantize_reference(packed: Tensor, mn: Tensor, scale: Tensor, bits: int, cols: int,
                          block: int | None = None) -> Tensor:
    """``codes * scale + mn`` as float32 ``[R, cols]``, unpacked in blocks of rows (see ``_BLOCK``)."""
    R, nb = packed.shape
    vpb = 8 // bits
    out = torch.empty(R, cols, dtype=torch.float32, device=packed.device)
    if R * cols == 0:
        return out
    sf, mf = scale.float(), mn.float()
    step = max(1, (block or _BLOCK) // cols)
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
    _check_float(x, "project_quantize")
    check_kept_frac(kept_frac)
    seed = next_seed() if seed is None else int(seed)
    d = x.shape[-1]
    k = max(1, math.ceil(kept_frac * d))
    with torch.no_grad():
        r = rademacher(d, k, seed ^ 0x5BD1E995, device=x.device, dtype=torch.float32)
        y = x.detach().reshape(-1, d).float() @ r
    q = quantize(y, bits, group_size, seed=seed, backend=backend)
    return Projected(q, seed ^ 0x5BD1E995, d, x.shape, x.dtype)



# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressionConfig:
    """How activations are stored: ``bits`` per value, groups of ``group_size`` values (ActNN) or
    per-row statistics (``group_size=None``, EXACT), and an optional random projection keeping
    ``kept_frac`` of the feature columns (EXACT; 1.0 = off). ``backend`` as in :func:`quantize`.
    ``compress_inputs``: also compress inputs without autograd history (the step's input features);
    by default they are kept by reference -- free when the caller holds them anyway (full-batch
    training), and no per-step quantization of a large feature matrix. ``dropout_mask``: how
    ``QDropout`` keeps its keep mask for backward -- ``'packed'`` (1 bit per element; the mask is
    torch's own Bernoulli draw, so a seeded run drops the same units as ``nn.Dropout``) or ``'seed'``
    (0 bytes: the mask is a counter-hash of a seed drawn from torch's RNG, regenerated in backward;
    DESIGN.md rule 7)."""

    bits: int = 2
    group_size: int | None = 256
    kept_frac: float = 1.0
    backend: str | None = None
    compress_inputs: bool = False
    dropout_mask: str = "packed"

    def __post_init__(self):
        check_bits(self.bits)
        check_group_size(self.group_size)
        check_kept_frac(self.kept_frac)
        check_dropout_mask(self.dropout_mask)
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"unknown quantization backend {self.backend!r}; expected one of "
                              f"{', '.join(BACKENDS)}")

    def compress(self, x: Tensor, project: bool = True) -> QuantizedTensor | Projected:
        """Quantize ``x`` (projecting its last dimension first when ``kept_frac < 1`` and ``project``)."""
        if project and self.kept_frac < 1.0 and x.dim() >= 1 and x.shape[-1] > 1:
            return project_quantize(x, self.kept_frac, self.bits, self.group_size, backend=self.backend)
        return quantize(x, self.bits, self.group_size, backend=self.backend)


__all__.append("CompressionConfig")
