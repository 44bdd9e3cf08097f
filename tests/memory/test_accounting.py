import os
import pathlib

import pytest
import torch
from torch import nn

from graphscale.memory.accounting import (count_saved_bytes, peak_rss_subprocess, profiled_forward_bytes,
                                          report_ctx, state_bytes, tensor_bytes)


def test_saved_bytes_dedups_by_storage_and_excludes_params():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16, bias=False)
    x = torch.randn(100, 16, requires_grad=True)
    with count_saved_bytes(exclude=lin) as c:
        h = lin(x)           # saves x (and the weight, excluded)
        y = (h * h).sum()    # saves h twice: counted once
        z = (x[:50] * 2.0).sum()  # view of x: its storage is already counted
    assert c.saved == x.numel() * 4 + h.numel() * 4
    assert c.ctx == 0 and c.total == c.saved
    assert c.num_saved >= 3
    y.backward()
    z.backward()


def test_saved_bytes_grow_linearly_with_depth():
    def run(depth):
        layers = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(depth)])
        x = torch.randn(64, 8)
        with count_saved_bytes(exclude=layers) as c:
            layers(x).sum()
        return c.total
    b1, b4 = run(1), run(4)
    # linear saves its input, tanh its output, which is the next linear's input (one storage):
    # x plus one [64, 8] float32 activation per block
    act = 64 * 8 * 4
    assert b1 == 2 * act and b4 == 5 * act


class _Stash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.kept = x.detach().clone()  # invisible to saved_tensors_hooks
        report_ctx(ctx.kept)
        return x * 1.0

    @staticmethod
    def backward(ctx, g):
        return g


def test_ctx_protocol_reports_stashed_tensors_once():
    x = torch.randn(32, 4, requires_grad=True)
    with count_saved_bytes() as c:
        y = _Stash.apply(x)
    assert c.saved == 0
    assert c.ctx == 32 * 4 * 4
    report_ctx(torch.ones(10))  # outside a counter: ignored, no error
    y.sum().backward()


def test_profiler_cross_check_sees_ctx_stash():
    x = torch.randn(256, 64, requires_grad=True)
    held, y = profiled_forward_bytes(lambda: _Stash.apply(x))
    # output + the stash (both 64 KiB) are held; allow allocator rounding
    assert 2 * 256 * 64 * 4 <= held <= 2 * 256 * 64 * 4 + 4096
    del y


def test_state_bytes_counts_tied_weights_once():
    lin = nn.Linear(10, 10)
    tied = nn.Sequential(lin, lin)
    opt = torch.optim.Adam(tied.parameters())
    tied(torch.randn(3, 10)).sum().backward()
    opt.step()
    s = state_bytes(tied, opt)
    p = (10 * 10 + 10) * 4
    assert s["params"] == p and s["grads"] == p
    assert s["optimizer"] >= 2 * p  # exp_avg + exp_avg_sq (+ step scalars)
    assert s["total"] == s["params"] + s["grads"] + s["optimizer"]
    assert tensor_bytes(lin.weight, lin.weight[:2]) == 400


def test_peak_rss_subprocess_sees_allocation():
    here = str(pathlib.Path(__file__).parent)
    env = {"PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    small = peak_rss_subprocess("_rss_target:touch", {"mib": 1}, timeout=120, env=env)
    big = peak_rss_subprocess("_rss_target:touch", {"mib": 200}, timeout=120, env=env)
    assert big["result"] == 200 * 2**20 // 4
    assert big["peak_rss"] - big["base_rss"] > 190 * 2**20
    assert small["peak_rss"] - small["base_rss"] < 100 * 2**20


def test_peak_rss_subprocess_reports_child_failure():
    with pytest.raises(RuntimeError, match="no_such_module_xyz"):
        peak_rss_subprocess("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="module:function"):
        peak_rss_subprocess("math.factorial")
    with pytest.raises(RuntimeError, match="exit code"):
        peak_rss_subprocess("math:no_such_function")


def test_profiled_peak_bytes_follows_allocations_in_time_order():
    from graphscale.memory.accounting import profiled_peak_bytes

    def fn():
        big = torch.empty(1_000_000)        # 4 MB, freed before the end
        big.fill_(1.0)
        del big
        return torch.empty(250_000)          # 1 MB, still alive at the end

    peak, net, out = profiled_peak_bytes(fn)
    assert out.numel() == 250_000
    assert 4_000_000 <= peak < 4_100_000     # the 4 MB tensor, not the sum of both
    assert 1_000_000 <= net < 1_100_000
