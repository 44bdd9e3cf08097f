"""Triton kernels for activation compression: stochastic quantize + bit-pack, unpack + dequantize.

Layout (shared with the pure-torch reference in ``graphscale.memory.quantize``): the tensor is viewed
as a contiguous ``[R, C]`` matrix (one row per node for EXACT's per-row mode, one row per group of
``group_size`` values for ActNN's per-group mode). Row ``r`` has a minimum ``mn[r]`` and a step
``scale[r]`` (16-bit floats); value ``x`` becomes the integer code
``floor((x - mn) * inv_scale + u)`` clamped to ``[0, 2**bits - 1]``, with ``u`` uniform in
``[0, 1)`` drawn from a counter-based hash of ``(key, position)`` -- unbiased stochastic rounding
(to 2**-16 of a step) that consumes no global RNG state and is reproducible from the key. One
32-bit hash serves two values: with ``H = ceil(C / 2)``, column ``c`` of row ``r`` hashes ``r * H +
c mod H`` and takes the low 16 bits for ``c < H``, the high 16 bits otherwise (the torch reference
computes each hash once for both; recomputing it per value here is free next to the memory traffic). ``8 // bits`` codes
share a byte, the first in the lowest bits.

Tuning: ``BLOCK_B`` (bytes per program) and ``num_warps`` are autotuned keyed on the packed row
width ``NB`` and ``BITS`` (:mod:`graphscale_triton.tuning`; the tests pin each config and check it
bit for bit against the torch reference). Both kernels only store, so re-running them while tuning
is harmless. Both launch with ``enable_fp_fusion=False``: a GPU compile would otherwise contract
``(x - mn) * inv + u`` (and ``mn + code * scale``) into one FMA, rounding once where the torch
reference rounds twice, and the codes would no longer match the reference bit for bit.

Plain launchers only (DESIGN.md rule 4): tensors in, tensors out; dispatch and fallbacks live in
graphscale. Depends on torch and triton only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphscale_triton.tuning import TunedKernel

__all__ = ["quantize_pack_forward", "unpack_dequantize_forward", "QUANTIZE", "DEQUANTIZE"]


@triton.jit
def _mix(h):
    # Wellons' "lowbias32": a bijection on uint32 with full avalanche (wrapping multiplies).
    h ^= h >> 16
    h *= 0x7FEB352D
    h ^= h >> 15
    h *= 0x846CA68B
    h ^= h >> 16
    return h


@triton.jit
def _quantize_pack_kernel(
    x_ptr,      # *fp32|fp16|bf16 [R, C] contiguous input values
    mn_ptr,     # *fp16|bf16 [R] row minimum (rounded down to the 16-bit grid)
    inv_ptr,    # *fp32 [R] 1 / scale (0 where the row is constant)
    out_ptr,    # *uint8 [R, NB] packed codes
    C,          # columns per row
    NB,         # bytes per packed row = ceil(C / VPB)
    key1,       # uint32 stream key derived from the seed
    BITS: tl.constexpr,
    VPB: tl.constexpr,      # values per byte = 8 // BITS
    BLOCK_B: tl.constexpr,  # bytes handled by one program
):
    row = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, VPB)
    col = b[:, None] * VPB + k[None, :]
    mask = col < C
    idx = row.to(tl.int64) * C + col
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    mn = tl.load(mn_ptr + row).to(tl.float32)
    inv = tl.load(inv_ptr + row)
    H = (C + 1) // 2
    upper = col >= H
    pidx = row.to(tl.int64) * H + tl.where(upper, col - H, col)
    lo = (pidx & 0xFFFFFFFF).to(tl.uint32)
    hi = (pidx >> 32).to(tl.uint32)
    h = _mix(lo ^ key1.to(tl.uint32) ^ (hi * 0x9E3779B9))
    h16 = tl.where(upper, h >> 16, h & 0xFFFF)
    u = h16.to(tl.float32) * 1.52587890625e-05  # 16 bits / 2**16: uniform in [0, 1)
    code = tl.floor((x - mn) * inv + u)
    code = tl.minimum(tl.maximum(code, 0.0), (1 << BITS) - 1.0)
    code = tl.where(mask, code, 0.0).to(tl.int32)
    shifted = code << (k[None, :] * BITS)
    byte = tl.sum(shifted, axis=1)  # disjoint bit fields: the sum is a bitwise or
    tl.store(out_ptr + row.to(tl.int64) * NB + b, byte.to(tl.uint8), mask=b < NB)


@triton.jit
def _unpack_dequantize_kernel(
    packed_ptr,  # *uint8 [R, NB] packed codes
    mn_ptr,      # *fp16|bf16 [R] row minimum
    scale_ptr,   # *fp16|bf16 [R] row step
    out_ptr,     # *fp32|fp16|bf16 [R, C] output values
    C,           # columns per row
    NB,          # bytes per packed row
    BITS: tl.constexpr,
    VPB: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    row = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, VPB)
    byte = tl.load(packed_ptr + row.to(tl.int64) * NB + b, mask=b < NB, other=0).to(tl.int32)
    code = (byte[:, None] >> (k[None, :] * BITS)) & ((1 << BITS) - 1)
    mn = tl.load(mn_ptr + row).to(tl.float32)
    scale = tl.load(scale_ptr + row).to(tl.float32)
    val = mn + code.to(tl.float32) * scale
    col = b[:, None] * VPB + k[None, :]
    tl.store(out_ptr + row.to(tl.int64) * C + col, val.to(out_ptr.dtype.element_ty), mask=col < C)


def _prune(configs, named_args, **kwargs):
    # a block far wider than the packed row is all masked lanes
    width = max(triton.next_power_of_2(max(int(named_args["NB"]), 1)), 64)
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= width]
    return kept or configs[:1]


# Candidates, not measurements (no GPU run yet): 256 bytes = 1024 2-bit values covers a default
# group (256 values) or a typical node row (64-512 features) in one program.
_CONFIGS = [triton.Config({"BLOCK_B": b}, num_warps=w) for b, w in ((64, 1), (128, 2), (256, 4), (512, 4), (256, 8))]
QUANTIZE = TunedKernel("quantize", _quantize_pack_kernel, _CONFIGS, ["NB", "BITS"], prune=_prune)
DEQUANTIZE = TunedKernel("dequantize", _unpack_dequantize_kernel, _CONFIGS, ["NB", "BITS"], prune=_prune)


def quantize_pack_forward(x2d: torch.Tensor, mn: torch.Tensor, inv_scale: torch.Tensor, bits: int,
                          key: int, *, config: int | None = None) -> torch.Tensor:
    """Stochastically quantize the rows of ``x2d [R, C]`` and pack them into ``uint8 [R, ceil(C*bits/8)]``.

    ``mn [R]`` (16-bit float) and ``inv_scale [R]`` (float32) come from the caller; ``key`` is a
    uint32 stream key (the same key and input give the same codes). ``config`` pins
    ``QUANTIZE.configs[config]`` instead of autotuning.
    """
    assert x2d.dim() == 2 and x2d.is_contiguous()
    R, C = x2d.shape
    vpb = 8 // bits
    nb = (C + vpb - 1) // vpb
    out = torch.empty((R, nb), dtype=torch.uint8, device=x2d.device)
    if R == 0 or nb == 0:
        return out
    QUANTIZE.launch(lambda meta: (R, triton.cdiv(nb, meta["BLOCK_B"])), x2d, mn, inv_scale, out, C, nb,
                    key & 0xFFFFFFFF, BITS=bits, VPB=vpb, config=config, enable_fp_fusion=False)
    return out


def unpack_dequantize_forward(packed: torch.Tensor, mn: torch.Tensor, scale: torch.Tensor, bits: int,
                              cols: int, dtype: torch.dtype, *, config: int | None = None) -> torch.Tensor:
    """Inverse of :func:`quantize_pack_forward` up to the rounding: ``[R, cols]`` values of ``dtype``
    (``config`` pins ``DEQUANTIZE.configs[config]``)."""
    assert packed.dim() == 2 and packed.is_contiguous()
    R, nb = packed.shape
    out = torch.empty((R, cols), dtype=dtype, device=packed.device)
    if R == 0 or nb == 0:
        return out
    DEQUANTIZE.launch(lambda meta: (R, triton.cdiv(nb, meta["BLOCK_B"])), packed, mn, scale, out, cols, nb,
                      BITS=bits, VPB=8 // bits, config=config, enable_fp_fusion=False)
    return out
