"""Seeded, counter-based random streams: the rounding noise of quantization, seed-regenerated dropout
masks and the Rademacher projection matrices, all independent of ``torch``'s global RNG.

ActNN (Chen et al., ICML 2021) rounds stochastically (``q = floor(v + u)``, ``u ~ U[0, 1)``) so the
dequantized activation is unbiased; EXACT (Liu et al., ICLR 2022) also projects with a random ``+-1``
matrix. Both draw their randomness here, from a hash of ``(seed, element index)``: a value depends on its
position only, so any block of it can be regenerated (in backward, in another block order, by the
Triton kernel in ``graphscale_triton.quantize``) without storing it.

What is here:

* the seed stream (:func:`set_seed`, :func:`next_seed`): one fresh seed per quantized tensor, a pure
  function of (base seed, number of draws);
* the 32-bit counter hash, ``h(i) = lowbias32(lo ^ k1 ^ (hi * 0x9E3779B9))`` of the index ``i = hi *
  2**32 + lo`` and the key ``k1`` of the seed, in two forms that give the same bits: torch (int32,
  in place; the specification and the path of every non-CPU device) and numpy (uint32; the CPU fast
  path). Seeds become keys through murmur3's ``fmix32`` on Python ints;
* :func:`quantize_noise` (the 16-bit noise of :func:`graphscale.memory.quantize.quantize`) and its
  blocked evaluation, :func:`hash_mask` (dropout keep masks, DESIGN.md rule 7), :func:`rademacher`.

``tests/memory/test_random_streams.py`` checks that the torch and numpy forms agree bit for bit.
"""
from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["set_seed", "next_seed", "quantize_noise", "hash_mask", "rademacher"]

_M32 = 0xFFFFFFFF


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
    """murmur3's 32-bit finalizer on a Python int (seeds and keys only: a few scalars per tensor)."""
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


# --------------------------------------------------------------------------------------------
# Counter hash of element index i = hi * 2**32 + lo (uint32 arithmetic, wrapping multiplies):
#     h = mix(lo ^ k1 ^ (hi * 0x9E3779B9))
# (each h gives two 16-bit noise values, see quantize_noise) with mix = Wellons' "lowbias32" (two multiply-xorshift rounds, full avalanche). The torch version
# runs in int32 (two's-complement wrap, logical shifts by masking) and in place: measured here on
# 3.9M elements, one thread, out-of-place ops took 420 ms per hash (a fresh 15 MB buffer per op,
# page-faulted in), in-place ops 30 ms; int32 multiplies are vectorised, int64 ones are not
# (0.04 vs 0.57 ms per 173k elements).
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_GOLD = 0x9E3779B9


def _s32(v: int) -> int:
    """The int32 with the bits of the uint32 ``v``."""
    v &= _M32
    return v - (1 << 32) if v >= (1 << 31) else v


def _mix_(h: Tensor, t: Tensor | None = None) -> Tensor:
    """lowbias32 on int32 bits, in place (``t``: a scratch buffer of ``h``'s shape, reused if given)."""
    if t is None:
        t = torch.empty_like(h)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=t).bitwise_and_(0xFFFF))
    h.mul_(_C1)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 15, out=t).bitwise_and_(0x1FFFF))
    h.mul_(_s32(_C2))
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=t).bitwise_and_(0xFFFF))
    return h


def _mix_np_(h: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`_mix_` on uint32 arrays, in place (``t``: scratch of ``h``'s shape). uint32
    ufuncs wrap and shift logically as the definition does, so no masking is needed."""
    for shift, mul in ((16, _C1), (15, _C2), (16, None)):
        np.right_shift(h, np.uint32(shift), out=t)
        np.bitwise_xor(h, t, out=h)
        if mul is not None:
            np.multiply(h, np.uint32(mul), out=h)
    return h


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
    """The rounding noise ``u [rows, cols]`` of :func:`~graphscale.memory.quantize.quantize` (and,
    thresholded, of :func:`hash_mask`).

    Definition (the blocked torch and numpy paths and the Triton kernel compute the same values): with
    ``H = ceil(cols / 2)``, column ``c`` of row ``r`` reads the 32-bit hash ``h = _hash(r * H + c mod H)``;
    columns ``c < H`` take its low 16 bits, columns ``c >= H`` its high 16 bits, and ``u = bits16 /
    2**16``. Halving the hashes halves the cost of the dominant passes (the multiply-xorshift
    rounds); 16 bits of noise bound the rounding bias by ``2**-16`` of a step.
    """
    half = -(-cols // 2)
    h = _hash(_index(rows, half, device).view(-1), seed).view(rows, half).long() & _M32
    u = torch.cat([h & 0xFFFF, (h >> 16)[:, : cols - half]], 1)
    return u.to(torch.float32) * 2.0 ** -16


# --------------------------------------------------------------------------------------------
# Blocked evaluation: the elementwise work (hash, scaling, rounding, packing) runs over blocks of
# whole rows of about _BLOCK elements with scratch buffers reused from block to block, so the ~20
# passes per value stay in cache instead of streaming fresh full-size temporaries through memory
# (each a page-faulted allocation). Measured here (one thread, 2708 x 1433 float32, 2 bits, groups of
# 256): quantize 76 -> 36 ms; the hash alone 40 ms unblocked, 24 / 14 / 22 ms in blocks of 16k / 64k / 256k.
_BLOCK = 1 << 16


def _rows_per_block(cols: int, block: int | None = None) -> int:
    """Rows of ``cols`` values in one block of about ``block`` (default ``_BLOCK``) values. Every blocked
    loop over a ``[R, cols]`` view steps by this, so the noise blocks line up with the value blocks."""
    return max(1, (block or _BLOCK) // max(cols, 1))


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
    step = _rows_per_block(cols, block)
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
    """Whether the numpy twins serve a ``[rows, 2 * half]`` block on ``device`` (CPU, int32-sized indices)."""
    return torch.device(device).type == "cpu" and rows * half < 2**31


def _noise_blocks_np(rows: int, cols: int, seed: int, block: int | None = None, row0: int = 0):
    """numpy twin of :func:`_noise_blocks`: ``(r0, r1, lo, hi)`` as uint32 arrays (reused buffers)."""
    half = -(-cols // 2)
    if rows * cols == 0:
        return
    step = _rows_per_block(cols, block)
    m = min(step, rows)
    ar = np.arange(m * half, dtype=np.uint32).reshape(m, half)
    h, t = np.empty_like(ar), np.empty_like(ar)
    k1 = np.uint32(_keys(seed)[0])
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        hh, tt = h[: r1 - r0], t[: r1 - r0]
        np.add(ar[: r1 - r0], np.uint32((row0 + r0) * half), out=hh)
        np.bitwise_xor(hh, k1, out=hh)
        _mix_np_(hh, tt)
        np.bitwise_and(hh, np.uint32(0xFFFF), out=tt)
        np.right_shift(hh, np.uint32(16), out=hh)
        yield r0, r1, tt, hh[:, : cols - half]


# --------------------------------------------------------------------------------------------
def hash_mask(shape, keep_prob: float, seed: int, device=None) -> Tensor:
    """Bool tensor of ``shape``, each element ``True`` with probability ``keep_prob`` (rounded to a
    multiple of 2**-16): ``quantize_noise < keep_prob`` over the ``[shape[0], -1]`` view, so it is
    regenerated from the seed alone (no stored mask; DESIGN.md rule 7)."""
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


def rademacher(d: int, k: int, seed: int, device=None, dtype=torch.float32) -> Tensor:
    """Random ``[d, k]`` matrix with entries ``+-1/sqrt(k)`` from the counter hash of ``seed``.

    ``E[R R^T] = I_d``: projecting with ``R`` and back with ``R^T`` is unbiased (EXACT, Sec. 3.2).
    """
    sign = (_hash(_index(d, k, device).view(-1), seed) & 1).to(dtype) * 2 - 1
    return (sign / math.sqrt(k)).view(d, k)
