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
``|mn + q * scale - x| < scale``. ``u`` comes from a counter-based hash of ``(seed, element index)``:
reproducible, independent of ``torch``'s global RNG. Codes are packed ``8 // bits`` to a byte.

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
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from graphscale._features import TRITON_INTERPRET, WITH_TRITON
from graphscale.errors import ConfigError

__all__ = ["SUPPORTED_BITS", "QuantizedTensor", "Projected", "quantize", "dequantize", "pack_codes",
           "unpack_codes", "stochastic_uniform", "rademacher", "next_seed", "set_seed", "check_bits",
           "check_group_size", "check_kept_frac", "project_quantize"]

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


def _mix_(h: Tensor) -> Tensor:
    """lowbias32 on int32 bits, in place."""
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


def stochastic_uniform(idx: Tensor, seed: int) -> Tensor:
    """Uniform ``[0, 1)`` float32 noise (24 random bits) for integer element indices ``idx``."""
    h = _hash(idx, seed)
    return h.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(2.0 ** -24)


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
    lo, hi = xf.amin(1), xf.amax(1)
    span = (hi - lo) / levels
    # Half the float16 maximum leaves room for the outward rounding of mn and scale.
    fits = x2d.shape[0] == 0 or bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()
                                     and lo.abs().max() <= _FP16_MAX / 2 and span.max() <= _FP16_MAX / 2)
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
        x2d, cols = _view_rows(x.detach(), group_size)
        mn, scale, inv = _row_stats(x2d, bits)
        if _pick_backend(x, backend) == "triton":
            from graphscale_triton.quantize import quantize_pack_forward
            packed = quantize_pack_forward(x2d, mn, inv, bits, _keys(seed)[0])
        else:
            packed = pack_codes(_codes_reference(x2d, mn, inv, bits, seed), bits)
    return QuantizedTensor(packed, mn, scale, bits, x.shape, x.dtype, group_size, cols, seed)


def _codes_reference(x2d: Tensor, mn: Tensor, inv: Tensor, bits: int, seed: int) -> Tensor:
    R, C = x2d.shape
    u = stochastic_uniform(_index(R, C, x2d.device), seed)
    # floor((x - mn) * inv + u), in place (the same float32 operations, in the same order, as Triton)
    v = torch.sub(x2d.float(), mn.float()[:, None])
    v.mul_(inv[:, None]).add_(u)
    return v.floor_().clamp_(0, (1 << bits) - 1).to(torch.uint8)


def dequantize(q: QuantizedTensor | Projected, backend: str | None = None) -> Tensor:
    """Values of a :class:`QuantizedTensor` (or :class:`Projected`) in the original shape and dtype."""
    if isinstance(q, Projected):
        return q.dequantize(backend)
    if _pick_backend(q.packed, backend) == "triton":
        from graphscale_triton.quantize import unpack_dequantize_forward
        vals = unpack_dequantize_forward(q.packed, q.mn, q.scale, q.bits, q.cols, torch.float32)
    else:
        vals = unpack_codes(q.packed, q.bits, q.cols).float()
        vals.mul_(q.scale.float()[:, None]).add_(q.mn.float()[:, None])
    n = math.prod(q.shape)
    flat = vals.reshape(-1)
    if flat.numel() != n:  # per-group padding
        flat = flat[:n]
    return flat.view(q.shape).to(q.dtype)


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
    training), and no per-step quantization of a large feature matrix."""

    bits: int = 2
    group_size: int | None = 256
    kept_frac: float = 1.0
    backend: str | None = None
    compress_inputs: bool = False

    def __post_init__(self):
        check_bits(self.bits)
        check_group_size(self.group_size)
        check_kept_frac(self.kept_frac)
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"unknown quantization backend {self.backend!r}; expected one of "
                              f"{', '.join(BACKENDS)}")

    def compress(self, x: Tensor, project: bool = True) -> QuantizedTensor | Projected:
        """Quantize ``x`` (projecting its last dimension first when ``kept_frac < 1`` and ``project``)."""
        if project and self.kept_frac < 1.0 and x.dim() >= 1 and x.shape[-1] > 1:
            return project_quantize(x, self.kept_frac, self.bits, self.group_size, backend=self.backend)
        return quantize(x, self.bits, self.group_size, backend=self.backend)


__all__.append("CompressionConfig")
