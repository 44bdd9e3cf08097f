"""Triton quantize/pack and unpack/dequantize kernels against the torch reference, on CPU through
``TRITON_INTERPRET=1``. The interpreter flag must be set before Triton kernels are defined, so the
check runs in a fresh subprocess (the rest of the suite keeps compiled-mode Triton untouched).

The main check runs autotuned (the interpreter times every config once); then every autotune config
of both kernels is pinned in turn and must give the same bits (block sizes change masks and grids,
never the codes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from graphscale._features import WITH_TRITON

_CHECK = textwrap.dedent(r"""
    import sys
    import torch
    dev = sys.argv[1]
    from graphscale.memory.quantize import dequantize, quantize
    from graphscale_triton.quantize import QUANTIZE, DEQUANTIZE
    from graphscale_triton.tuning import pin
    n = 0
    for bits in (1, 2, 4, 8):
        for group_size, shape in ((None, (13, 37)), (16, (5, 19)), (None, (3, 300)), (7, (1, 1))):
            x = torch.randn(*shape, device=dev) * 2 + 0.5
            ref = quantize(x, bits, group_size, seed=11, backend="torch")
            tri = quantize(x, bits, group_size, seed=11, backend="triton")
            # Same hash, same float32 arithmetic: the codes agree bit for bit.
            assert torch.equal(ref.packed, tri.packed), (bits, group_size, shape)
            assert torch.equal(ref.mn, tri.mn) and torch.equal(ref.scale, tri.scale)
            a = dequantize(ref, backend="torch")
            b = dequantize(ref, backend="triton")
            assert torch.equal(a, b), (bits, group_size, shape)
            n += 1
    # Non-float32 inputs and outputs go through the same kernels.
    x = torch.randn(6, 10, dtype=torch.float16, device=dev)
    assert torch.equal(quantize(x, 4, None, seed=2, backend="torch").packed,
                       quantize(x, 4, None, seed=2, backend="triton").packed)
    # Every config of both kernels, pinned, on shapes that span one and several blocks.
    m = 0
    for idx in range(max(len(QUANTIZE.configs), len(DEQUANTIZE.configs))):
        with pin(quantize=idx % len(QUANTIZE.configs), dequantize=idx % len(DEQUANTIZE.configs)):
            for bits, group_size, shape in ((2, None, (5, 1030)), (1, 16, (3, 37)), (4, None, (2, 333))):
                x = torch.randn(*shape, device=dev)
                ref = quantize(x, bits, group_size, seed=5, backend="torch")
                tri = quantize(x, bits, group_size, seed=5, backend="triton")
                assert torch.equal(ref.packed, tri.packed), (idx, bits, group_size, shape)
                assert torch.equal(dequantize(ref, backend="torch"), dequantize(ref, backend="triton")), idx
                m += 1
    print("TRITON_OK", n, "CONFIGS_OK", m)
""")


@pytest.mark.skipif(not WITH_TRITON, reason="triton is not installed")
def test_triton_kernels_match_reference_interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _CHECK, "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON_OK 16 CONFIGS_OK 15" in proc.stdout


@pytest.mark.skipif(not (WITH_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA device")
def test_triton_kernels_match_reference_cuda():
    # The same check compiled for real (the device check's step a): the interpreter accepts programs
    # that a real compile may reject, and a GPU may contract (x - mn) * inv + u into one FMA.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _CHECK, "cuda"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON_OK 16 CONFIGS_OK 15" in proc.stdout
