"""Bit packing of low-bit integer codes: ``8 // bits`` codes to a byte, code ``k`` of a byte in bits
``[k * bits, (k + 1) * bits)`` (little-endian within the byte).

The storage of ActNN (Chen et al., ICML 2021) and EXACT (Liu et al., ICLR 2022): 2-bit activations
take a quarter of a byte each. The packed layout is shared with the Triton kernels in
``graphscale_triton.quantize`` and with the 1-bit masks of :mod:`graphscale.memory.compressed_layers`.

* :func:`pack_codes` / :func:`unpack_codes`: the public pure-torch form (the specification);
* ``_pack_rows_`` / ``_pack_rows_np_``: the in-place packing :func:`graphscale.memory.quantize.quantize`
  runs on each block of codes (torch, and numpy on CPU; the same bits);
* ``_code_table``: the byte-wise inverse that :func:`graphscale.memory.quantize.dequantize` gathers from.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor

from graphscale.memory.compression_options import check_bits

__all__ = ["pack_codes", "unpack_codes"]


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


# 2-bit codes b0..b3 as the bytes of a little-endian int32 word w: (w * _PACK2) >> 24 = b0 | b1 << 2 |
# b2 << 4 | b3 << 6 (the other partial products wrap above bit 31 or sum below bit 24 without carry).
_PACK2 = (1 << 24) + (1 << 18) + (1 << 12) + (1 << 6)
_LITTLE = sys.byteorder == "little"


def _word_packable(bits: int, cols: int) -> bool:
    # Whole int32 words of codes only (no padding codes, which the in-place multiply would overwrite).
    return bits == 2 and cols % 4 == 0 and _LITTLE


def _pack_rows_(out: Tensor, codes: Tensor, bits: int, cols: int) -> None:
    """Pack ``codes`` (uint8 ``[k, NB * 8 // bits]``, ``cols`` real codes per row, the padding 0) into
    ``out`` (uint8 ``[k, NB]``); the same bits as :func:`pack_codes`. ``codes`` is scratch: it may be
    overwritten."""
    vpb = 8 // bits
    if bits == 8:
        out.copy_(codes)
    elif _word_packable(bits, cols):
        w = codes.view(torch.int32)
        out.copy_(w.mul_(_PACK2).bitwise_right_shift_(24).bitwise_and_(0xFF))
    else:
        c3 = codes.view(codes.shape[0], -1, vpb)
        out.copy_(c3[:, :, 0])
        for k in range(1, vpb):
            out.bitwise_or_(c3[:, :, k] << (k * bits))


def _pack_rows_np_(out: np.ndarray, codes: np.ndarray, bits: int, cols: int) -> None:
    """numpy twin of :func:`_pack_rows_` (uint8 arrays; ``codes`` may be overwritten)."""
    vpb = 8 // bits
    if bits == 8:
        out[...] = codes
    elif _word_packable(bits, cols):
        w = codes.view(np.uint32)
        np.multiply(w, np.uint32(_PACK2), out=w)
        np.right_shift(w, np.uint32(24), out=w)
        np.copyto(out, w, casting="unsafe")
    else:
        c3 = codes.reshape(codes.shape[0], -1, vpb)
        out[...] = c3[:, :, 0]
        for j in range(1, vpb):
            out |= c3[:, :, j] << np.uint8(j * bits)


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
