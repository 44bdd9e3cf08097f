"""Quantized storage (graphscale.memory.quantize): unbiasedness, error bounds, formats, the blocked codes."""
from __future__ import annotations

import math

import pytest
import torch

from graphscale.errors import ConfigError
from graphscale.memory.bitpack import pack_codes, unpack_codes
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.quantize import dequantize, project_quantize, quantize
from graphscale.memory.random_streams import quantize_noise, rademacher

BITS = (1, 2, 4, 8)
GROUPS = (None, 256, 7)  # per-row (EXACT), ActNN default, an odd group that splits rows


def _levels(bits):
    return (1 << bits) - 1


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_dequantization_error_below_scale(bits, group_size):
    x = torch.randn(29, 45) * 3 + 1
    q = quantize(x, bits, group_size, seed=5)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == x.dtype
    # Per-element bound: |y - x| < scale of the element's row/group (stochastic rounding moves < 1 step).
    if group_size is None:
        step = q.scale.float()[:, None].expand_as(x)
    else:
        flat = q.scale.float().repeat_interleave(group_size)[: x.numel()]
        step = flat.view_as(x)
    assert bool(((y - x).abs() <= step * (1 + 1e-6)).all())
    # The statistics are 16-bit and the codes never clip: the stored range covers the data.
    assert q.mn.dtype == torch.float16 and q.scale.dtype == torch.float16


@pytest.mark.parametrize("bits,group_size", [(1, None), (2, 256), (2, None), (4, 8), (8, 64)])
def test_stochastic_rounding_unbiased(bits, group_size):
    torch.manual_seed(0)
    x = torch.randn(4, 64)  # 256 values: whole groups of 8, 64 and 256, so every copy has the same groups
    n = 2000
    # n copies in one call: each copy has the same statistics and its own noise (counter-based hash).
    draws = dequantize(quantize(x.repeat(n, 1), bits, group_size, seed=7)).view(n, *x.shape)
    step = quantize(x, bits, group_size, seed=0).scale.float()
    step = (step[:, None].expand_as(x) if group_size is None
            else step.repeat_interleave(group_size)[: x.numel()].view_as(x))
    # Each draw is x + e with E[e] = 0 and Var[e] = f(1 - f) step^2 <= step^2 / 4 (f = fractional part);
    # the mean of n draws lies within 5 standard errors, sqrt(step^2 / 4 / n), of x.
    tol = 5 * step / 2 / math.sqrt(n) + 1e-7
    err = (draws.mean(0) - x).abs()
    assert bool((err <= tol).all()), float((err / tol).max())
    assert bool((draws.var(0) <= step ** 2 / 4 * 1.25 + 1e-12).all())
    # Not a degenerate (deterministic) rounding: interior values do vary.
    assert float(draws.var(0).mean()) > 0.01 * float((step ** 2).mean()) / 4


def test_reproducible_and_no_global_rng():
    x = torch.randn(17, 33)
    state = torch.get_rng_state()
    a = quantize(x, 2, 256, seed=42)
    b = quantize(x, 2, 256, seed=42)
    c = quantize(x, 2, 256)  # from the seed stream
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.packed, b.packed)
    assert not torch.equal(a.packed, quantize(x, 2, 256, seed=43).packed)
    assert torch.equal(c.packed, quantize(x, 2, 256, seed=c.seed).packed)


def test_nbytes_and_ratio():
    x = torch.randn(1000, 256)
    q = quantize(x, 2, 256)
    assert q.nbytes == 1000 * 256 // 4 + 1000 * (2 + 2)  # codes + float16 min and scale per group
    assert x.numel() * 4 / q.nbytes > 15.0
    r = quantize(x, 2, None)  # per-row: one group per node
    assert r.nbytes == 1000 * 64 + 1000 * 4
    assert quantize(torch.randn(3, 5), 1, 256).packed.numel() == 2  # smaller than a group: 15 bits -> 2 bytes
    assert quantize(torch.randn(300), 2, 256).packed.shape == (2, 64)  # tail group padded to 256


def test_tail_group_padding_keeps_range():
    # 300 values >= 1 in groups of 256: the padded tail group must not reach down to 0.
    x = torch.rand(300) * 100 + 1
    for seed in range(20):
        y = dequantize(quantize(x, 2, 256, seed=seed))
        assert float(y.min()) >= 0.99


def test_constant_rows_and_zero_range_exact():
    x = torch.tensor([[0.5] * 9, [0.0] * 9, [-2.0] * 9])
    for bits in BITS:
        q = quantize(x, bits, None, seed=1)
        assert torch.equal(dequantize(q), x)  # values exact in float16 -> scale 0 -> exact
        assert float(q.scale.float().abs().max()) == 0.0
    c = torch.full((4, 6), 0.1)  # not exact in float16: tiny step, stays unbiased and within it
    q = quantize(c, 2, None, seed=2)
    assert float((dequantize(q) - c).abs().max()) <= float(q.scale.float().max())


def test_out_of_float16_range_uses_bfloat16():
    x = torch.randn(8, 16) * 1e6
    q = quantize(x, 8, None, seed=0)
    assert q.mn.dtype == torch.bfloat16 and q.scale.dtype == torch.bfloat16
    y = dequantize(q)
    assert bool(((y - x).abs() <= q.scale.float()[:, None] * (1 + 1e-6)).all())
    tiny = torch.randn(4, 8) * 1e-9  # step below float16's smallest subnormal: rounded up, still bounded
    qt = quantize(tiny, 2, None, seed=0)
    assert bool((qt.scale.float() > 0).all())
    assert bool(((dequantize(qt) - tiny).abs() <= qt.scale.float()[:, None]).all())


def test_dtypes_and_shapes_round_trip():
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(3, 4, 5).to(dtype)
        y = dequantize(quantize(x, 8, 16, seed=0))
        assert y.dtype == dtype and y.shape == x.shape
        assert float((y.float() - x.float()).abs().max()) < 0.1
    assert dequantize(quantize(torch.randn(7), 4, None, seed=0)).shape == (7,)
    empty = torch.randn(0, 5)
    assert dequantize(quantize(empty, 2, None)).shape == (0, 5)


def test_rademacher_and_projection_unbiased():
    r = rademacher(16, 4, seed=9)
    assert torch.equal(r.abs(), torch.full((16, 4), 0.5))
    assert torch.equal(r, rademacher(16, 4, seed=9))
    # E[R R^T] = I: average over seeds.
    # Entries of R R^T - I have standard deviation 1/2; the mean of 400 draws is within 5 sigma (0.125).
    acc = sum(rademacher(16, 4, seed=s) @ rademacher(16, 4, seed=s).t() for s in range(400)) / 400
    assert float((acc - torch.eye(16)).abs().max()) < 0.125
    torch.manual_seed(0)
    x = torch.randn(5, 24)
    p = project_quantize(x, 0.25, 8, None, seed=1)
    assert p.q.shape == (5, 6) and dequantize(p).shape == x.shape
    n = 300
    draws = torch.stack([dequantize(project_quantize(x, 0.25, 2, 256, seed=s)) for s in range(n)])
    z = (draws.mean(0) - x).abs() / (draws.var(0) / n).sqrt()
    assert float(z.max()) < 5.0


def test_bad_input_messages():
    x = torch.randn(4, 4)
    with pytest.raises(ConfigError, match=r"bits must be one of \(1, 2, 4, 8\), got 3"):
        quantize(x, 3)
    with pytest.raises(ConfigError, match="bits must be one of"):
        quantize(x, True)
    for g in (0, -4, 2.5):
        with pytest.raises(ConfigError, match="group_size must be a positive int"):
            quantize(x, 2, g)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        quantize(torch.arange(8), 2)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.bool"):
        quantize(torch.ones(3, dtype=torch.bool), 2)
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        quantize([1.0, 2.0], 2)
    for k in (0.0, 1.5, -1):
        with pytest.raises(ConfigError, match=r"kept_frac must be in \(0, 1\]"):
            CompressionConfig(kept_frac=k)
    with pytest.raises(ConfigError, match="unknown quantization backend 'cuda'"):
        quantize(x, 2, backend="cuda")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_blocked_codes_match_elementwise_definition(bits, group_size):
    # The torch path runs in blocks of rows; any block size gives the codes of the definition
    # q = clamp(floor((x - mn) / scale + u), 0, levels), u = quantize_noise(rows, cols, seed).
    import importlib
    Q = importlib.import_module("graphscale.memory.quantize")
    x = torch.randn(53, 45) * 2 + 0.5
    q = quantize(x, bits, group_size, seed=9)
    x2d, cols = Q._view_rows(x, group_size)
    mn, _, inv = Q._row_stats(x2d, bits)
    u = quantize_noise(*x2d.shape, 9)
    codes = ((x2d - mn.float()[:, None]) * inv[:, None] + u).floor().clamp(0, _levels(bits)).to(torch.uint8)
    assert torch.equal(q.packed, pack_codes(codes, bits))
    for block in (1, 64, 1000, 10**6):
        packed, mn2, scale2, cols2 = Q._quantize_reference(x, bits, group_size, 9, block=block)
        assert torch.equal(packed, q.packed) and torch.equal(mn2, q.mn) and cols2 == cols
        # Dequantized values: codes * scale + mn (the table gather and the shift path alike).
        vals = unpack_codes(packed, bits, cols).float() * scale2.float()[:, None] + mn2.float()[:, None]
        assert torch.equal(Q._dequantize_reference(packed, mn2, scale2, bits, cols, block=block), vals)
    assert torch.equal(unpack_codes(q.packed, bits, cols), codes)
