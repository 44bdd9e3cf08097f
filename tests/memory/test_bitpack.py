"""Bit packing (graphscale.memory.bitpack): exact round trips at every bit width."""
from __future__ import annotations

import math

import pytest
import torch

from graphscale.memory.bitpack import pack_codes, unpack_codes

BITS = (1, 2, 4, 8)


def _levels(bits):
    return (1 << bits) - 1


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (13, 37), (2, 300)])
def test_pack_unpack_round_trip_exact(bits, shape):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, _levels(bits) + 1, shape, generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], math.ceil(shape[1] * bits / 8))
    assert torch.equal(unpack_codes(packed, bits, shape[1]), codes)
