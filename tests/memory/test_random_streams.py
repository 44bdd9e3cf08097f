"""Seeded random streams (graphscale.memory.random_streams): the noise and its hash against their
definitions, and the one test that the numpy CPU fast path gives the torch specification's bits."""
from __future__ import annotations

import importlib

import numpy as np
import torch

from graphscale.memory.random_streams import _hash, _keys, hash_mask, quantize_noise

RS = importlib.import_module("graphscale.memory.random_streams")
Q = importlib.import_module("graphscale.memory.quantize")

BITS = (1, 2, 4, 8)
_M32 = 0xFFFFFFFF


def _lowbias32(h: int) -> int:
    """Wellons' lowbias32 in exact integer arithmetic: the definition both array forms implement."""
    h &= _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def test_uniform_noise_is_uniform_and_counter_based():
    u = quantize_noise(500, 401, seed=3)  # odd width: the last hash of each row serves one value
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert torch.equal(u * 2**16, (u * 2**16).round())  # 16 bits per value
    # the two halves of a row come from one hash but are not the same numbers
    assert abs(float(torch.corrcoef(torch.stack([u[:, :200].reshape(-1), u[:, 201:].reshape(-1)]))[0, 1])) < 0.01
    assert not torch.equal(u, quantize_noise(500, 401, seed=4))
    # the definition: column c < H of row r is the low half of _hash(r * H + c), column H + c the high half
    h = _hash(torch.tensor([7 * 201 + 5]), 3).long() & 0xFFFFFFFF
    assert float(u[7, 5]) * 2**16 == float(h & 0xFFFF) and float(u[7, 206]) * 2**16 == float(h >> 16)


def test_hash_matches_uint32_definition():
    # The int32 torch hash (and the Triton kernel, tested in test_quantize_triton) implement
    # h = lowbias32(lo ^ k1 ^ (hi * 0x9E3779B9)) in wrapping uint32 arithmetic.
    def ref(i, seed):
        return _lowbias32((i & 0xFFFFFFFF) ^ _keys(seed)[0] ^ (((i >> 32) * 0x9E3779B9) & 0xFFFFFFFF))

    idx = [0, 1, 2, 1000, 2**31 - 1, 2**31 + 5, 2**32 + 7, 3 * 2**40 + 11]
    got = (_hash(torch.tensor(idx), 7).long() & 0xFFFFFFFF).tolist()
    assert got == [ref(i, 7) for i in idx]
    small = torch.arange(5000, dtype=torch.int32)
    assert torch.equal(_hash(small, 3), _hash(small.long(), 3))  # int32 fast path == int64 path



# --------------------------------------------------------------------------------------------
# The numpy CPU fast path (random_streams._noise_blocks_np and hash_mask's numpy branch,
# quantize._stats_from_range_np and _codes_into_np, bitpack._pack_rows_np_) against the torch
# specification: the same bits on odd (non-power-of-two) shapes, every bit width, several block sizes
# and row offsets.
ODD = [(1, 1), (1, 7), (64, 1), (53, 45), (40, 33), (9, 12), (300, 8), (7, 256), (129, 3), (3, 1001)]


def _torch_path(monkeypatch) -> None:
    """Send CPU tensors down the torch specification instead of the numpy twins."""
    monkeypatch.setattr(RS, "_np_path", lambda *a: False)
    monkeypatch.setattr(Q, "_np_path", lambda *a: False)
    monkeypatch.setattr(Q, "_stats_from_range_np", lambda *a: None)


def _blocks(it, to_torch=False):
    # the generators reuse their buffers: copy each block before the next
    return [(r0, r1, torch.from_numpy(lo.astype(np.int64)), torch.from_numpy(hi.astype(np.int64)))
            if to_torch else (r0, r1, lo.long(), hi.long()) for r0, r1, lo, hi in it]


def test_numpy_cpu_path_matches_torch_path(monkeypatch):
    torch.manual_seed(0)
    # 1. The hash: 16-bit noise blocks, any block size, any first row.
    for rows, cols in ODD:
        for block, row0 in ((1, 0), (64, 5), (None, 1000)):
            a = _blocks(RS._noise_blocks(rows, cols, 17, block, row0=row0))
            b = _blocks(RS._noise_blocks_np(rows, cols, 17, block, row0), to_torch=True)
            assert [x[:2] for x in a] == [x[:2] for x in b], (rows, cols, block)
            for (_, _, la, ha), (_, _, lb, hb) in zip(a, b):
                assert torch.equal(la, lb) and torch.equal(ha, hb), (rows, cols, block, row0)

    # 2. Statistics: random rows plus constant (exact and inexact in float16), tiny and wide rows.
    special = torch.tensor([[0.5] * 6, [0.1] * 6, [1e-9, -2e-9, 0, 3e-9, 0, 1e-9],
                            [-3e4, 1e4, 0, 2, 2e4, -1], [-1, 1, -1, 1, -1, 1.0]])
    for bits in BITS:
        for shape in ODD:
            for x2d in ((torch.randn(*shape) * 3 + 1), special):
                lo, hi = x2d.amin(1), x2d.amax(1)
                got, want = Q._stats_from_range(lo, hi, bits), Q._stats_from_range_torch(lo, hi, bits)
                for g, w in zip(got, want):
                    assert g.dtype == w.dtype and torch.equal(g, w), (bits, shape)
        # out-of-float16-range statistics fall back to the torch (bfloat16) path
        assert Q._stats_from_range_np(np.array([1e6], np.float32), np.array([2e6], np.float32), bits) is None

    # 3. Codes and their packing, block by block, from a first row > 0 (the tail group's call).
    for bits in BITS:
        for shape in ODD:
            for dtype in (torch.float32, torch.float16, torch.float64, torch.bfloat16):
                x2d = (torch.randn(*shape) * 3 + 1).to(dtype)
                mn, _, inv = Q._stats_from_range_torch(x2d.float().amin(1), x2d.float().amax(1), bits)
                nb = -(-shape[1] // (8 // bits))
                for block, row0 in ((1, 0), (64, min(2, shape[0] - 1)), (None, 0)):
                    a = torch.zeros(shape[0], nb, dtype=torch.uint8)
                    b = torch.zeros_like(a)
                    Q._codes_into(a, x2d[row0:], mn, inv, bits, 17, row0, block)
                    Q._codes_into_np(b, x2d[row0:], mn, inv, bits, 17, row0, block)
                    assert torch.equal(a, b), (bits, shape, dtype, block, row0)

    # 4. End to end, quantize() and hash_mask() on each path; per-group tensors split into whole
    # groups plus a separately padded tail group (_PAD_COPY_MAX = 0) exercise the row offsets too.
    shapes = [(53, 45), (129, 3), (1, 1), (3, 1001), (301,), (5, 2, 3)]
    masks = [(123, 77), (64, 1), (5, 2, 3), (17,), (0, 4), (1000, 301)]  # the largest: 9 values on a threshold
    fast_q, fast_m = {}, {}
    for pass_ in ("numpy", "torch"):
        if pass_ == "torch":
            _torch_path(monkeypatch)
        for pad_max in (1 << 20, 0):
            monkeypatch.setattr(Q, "_PAD_COPY_MAX", pad_max)
            for bits in BITS:
                for group_size in (None, 7, 256):
                    for shape in shapes:
                        x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + shape[0]))
                        q = Q.quantize(x, bits, group_size, seed=5)
                        key = (pad_max, bits, group_size, shape)
                        if pass_ == "numpy":
                            fast_q[key] = q
                        else:
                            f = fast_q[key]
                            assert torch.equal(f.packed, q.packed) and torch.equal(f.mn, q.mn), key
                            assert torch.equal(f.scale, q.scale), key
        for shape in masks:
            for keep in (0.0, 0.3, 0.999, 1.0):
                m = hash_mask(shape, keep, seed=11)
                if pass_ == "numpy":
                    fast_m[shape, keep] = m
                else:
                    assert m.shape == torch.Size(shape) and torch.equal(fast_m[shape, keep], m), (shape, keep)
    # the seed mask is the noise of the definition thresholded
    assert torch.equal(fast_m[(123, 77), 0.3], quantize_noise(123, 77, 11) < 0.3)
