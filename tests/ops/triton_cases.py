"""Triton kernels vs the reference, run under ``TRITON_INTERPRET=1`` on CPU (small shapes).

Not collected directly (no ``test_`` prefix): ``test_triton.py`` runs this file in a subprocess with
the interpreter switched on before triton kernels are defined, so the rest of the suite never pays
for the interpreter. Run it by hand with
``TRITON_INTERPRET=1 python -m pytest -q tests/ops/triton_cases.py``, or on a GPU (compiled for real)
with ``python -m pytest -q tests/ops/triton_cases.py`` (the device check's step a).

Configs: every test pins config 0 of each kernel (autotuning under the interpreter times every config
and would check only the winner) except ``test_every_config_*``, which pins each autotune config of
each kernel in turn on a skewed graph, with and without the row split, and
``test_autotuned_launch``, which lets ``triton.autotune`` choose.

Ties: the kernels route the max / min gradient of tied messages to the first edge (CSR order), so
they are compared with the reference's ``ties='first'`` (the reference's default, ``'split'``, is
PyG's rule; see ``docs/ops.md``).
"""
from __future__ import annotations

import os

import pytest
import torch

from graphscale.ops import CSR, softmax_aggr, spmm
from graphscale.ops.triton_ops import CHUNK_ENV

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
REDUCES = ["sum", "mean", "max", "min"]
KERNEL_NAMES = ("spmm_fwd", "spmm_bwd", "softmax_fwd", "softmax_bwd")


def _registry():
    from graphscale_triton import softmax_aggr as _s, spmm as _m  # noqa: F401  (registers the kernels)
    from graphscale_triton.tuning import KERNELS
    return KERNELS


def _num_configs() -> int:
    return max(len(_registry()[name].configs) for name in KERNEL_NAMES)


@pytest.fixture(autouse=True)
def _pinned_first_config(request, monkeypatch):
    torch.manual_seed(0)  # reproducible draws: float32 sums over ~200 edges differ by order only
    if "autotuned" not in request.node.name:
        monkeypatch.setenv("GRAPHSCALE_TRITON_CONFIG", "*=0")
    monkeypatch.delenv(CHUNK_ENV, raising=False)


def _hub_graph(graph, n=11, e=37, seed=0):
    # node 0 receives 40 edges (more than one BLOCK_E step) with repeated sources (ties for max/min)
    ei = graph(n, e, seed=seed)
    hub = torch.stack([torch.arange(40) % 7 + 1, torch.zeros(40, dtype=torch.long)])
    return torch.cat([ei, hub], 1).to(DEV)


def _compare(fn, inputs, tol, dtype):
    outs = [fn(backend) for backend in ("torch", "triton")]
    torch.testing.assert_close(outs[1], outs[0], **tol[dtype])
    go = torch.randn_like(outs[0])
    grads = [torch.autograd.grad(o, inputs, go) for o in outs]
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **tol[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_triton_matches_reference(graph, tol, reduce, weighted, dtype):
    ei = _hub_graph(graph)
    adj = CSR.from_edge_index(ei, 11)
    x = torch.randn(11, 19, dtype=dtype, device=DEV).round(decimals=1).requires_grad_()  # ties too
    w = torch.randn(adj.num_edges, dtype=dtype, device=DEV, requires_grad=True) if weighted else None
    inputs = (x, w) if weighted else (x,)
    _compare(lambda b: spmm(adj, x, reduce, w, backend=b, ties="first"), inputs, tol, dtype)


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_triton_gradcheck(graph, reduce):
    ei = graph(8, 9, seed=4).to(DEV)
    adj = CSR.from_edge_index(ei, 8)
    x = torch.randn(8, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    w = torch.rand(adj.num_edges, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: spmm(adj, x, reduce, w, backend="triton", ties="first"), (x, w), fast_mode=True)


def test_spmm_triton_wide_features_and_bipartite(graph, tol):
    ei = graph(7, 12, num_src=9).to(DEV)  # 130 features: two feature blocks of 128
    adj = CSR.from_edge_index(ei, (9, 7))
    x = torch.randn(9, 130, device=DEV, requires_grad=True)
    for reduce in ("sum", "max"):
        _compare(lambda b: spmm(adj, x, reduce, backend=b, ties="first"), (x,), tol, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_ea", [False, True])
def test_softmax_triton_matches_reference(graph, tol, dtype, with_ea):
    ei = _hub_graph(graph, seed=5)
    adj = CSR.from_edge_index(ei, 11)
    x = torch.randn(11, 19, dtype=dtype, device=DEV, requires_grad=True)
    ea = torch.randn(adj.num_edges, 19, dtype=dtype, device=DEV, requires_grad=True) if with_ea else None
    t = torch.tensor([0.8], dtype=dtype, device=DEV, requires_grad=True)
    inputs = (x, t, ea) if with_ea else (x, t)
    _compare(lambda b: softmax_aggr(adj, x, t, ea, backend=b), inputs, tol, dtype)


@pytest.mark.parametrize("relu", [True, False])
def test_softmax_triton_gradcheck(graph, relu):
    ei = graph(8, 9, seed=6).to(DEV)
    adj = CSR.from_edge_index(ei, 8)
    x = torch.randn(8, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    ea = torch.randn(adj.num_edges, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    t = torch.tensor([1.3], dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, ea, t: softmax_aggr(adj, x, t, ea, relu=relu, eps=1e-3,
                                                                  backend="triton"), (x, ea, t), fast_mode=True)


def test_launchers_reject_bad_inputs():
    from graphscale_triton.spmm import spmm_forward
    from graphscale_triton.softmax_aggr import softmax_aggr_forward
    rowptr = torch.tensor([0, 1, 2], device=DEV)
    col = torch.tensor([1, 0], device=DEV)
    x = torch.randn(3, 2, device=DEV)
    with pytest.raises(ValueError, match="x must be contiguous"):
        spmm_forward(rowptr, col, x.t())
    with pytest.raises(TypeError, match="col must have dtype"):
        spmm_forward(rowptr, col.int(), x[:2])
    with pytest.raises(TypeError, match="weight must have dtype"):
        spmm_forward(rowptr, col, x[:2], torch.ones(2, dtype=torch.float64, device=DEV))
    with pytest.raises(ValueError, match="unsupported reduce 'prod'"):
        spmm_forward(rowptr, col, x[:2], reduce="prod")
    with pytest.raises(ValueError, match="t must have one element"):
        softmax_aggr_forward(rowptr, col, x[:2], torch.ones(2, device=DEV))


def _skewed_graph(n=23, seed=7, hub_in=90, hub_out=75, rand=40):
    """Odd-sized graph with a hub destination (row 0: ``hub_in`` in-edges, more than every BLOCK_E) and
    a hub source (node 1: ``hub_out`` out-edges), plus duplicates, self-loops, an empty row (3) and an
    isolated node (n - 1)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n - 1, (rand,), generator=g)
    dst = torch.randint(0, n - 1, (rand,), generator=g)
    dst[dst == 3] = 4
    hub_in = torch.stack([torch.arange(hub_in) % min(9, n - 3) + 2, torch.zeros(hub_in, dtype=torch.long)])  # repeated sources: ties
    hub_out = torch.stack([torch.ones(hub_out, dtype=torch.long), torch.arange(hub_out) % (n - 4) + 2])
    hub_out[1][hub_out[1] == 3] = 5
    return torch.cat([torch.stack([src, dst]), hub_in, hub_out], 1).to(DEV), n


@pytest.mark.parametrize("chunk", ["24", "off"])  # 24: not a multiple of any block; splits both hubs
@pytest.mark.parametrize("idx", range(7))
def test_every_config_spmm(monkeypatch, tol, idx, chunk):
    reg = _registry()
    if idx >= _num_configs():
        pytest.skip("fewer configs")  # (the range above covers the longest config list; asserted below)
    fwd, bwd = idx % len(reg["spmm_fwd"].configs), idx % len(reg["spmm_bwd"].configs)
    monkeypatch.setenv("GRAPHSCALE_TRITON_CONFIG", f"spmm_fwd={fwd},spmm_bwd={bwd}")
    monkeypatch.setenv(CHUNK_ENV, chunk)
    ei, n = _skewed_graph()
    adj = CSR.from_edge_index(ei, n)
    x = torch.randn(n, 37, device=DEV).round(decimals=1).requires_grad_()  # 37: two blocks of 32, one of 64+
    w = torch.randn(adj.num_edges, device=DEV, requires_grad=True)
    for reduce in REDUCES:
        _compare(lambda b: spmm(adj, x, reduce, w, backend=b, ties="first"), (x, w), tol, torch.float32)
    from graphscale.ops.triton_ops import schedule_of
    s = schedule_of(adj)
    assert (s is None) == (chunk == "off")
    if s is not None:  # the hubs really were split: row 0 into >= ceil(90 / 24) = 4 items, source 1 into >= 4
        assert s.split_row.tolist() == [0] and s.num_partials >= 4
        st = schedule_of(adj.t())
        assert 1 in st.split_row.tolist() and st.num_partials >= 4


@pytest.mark.parametrize("chunk", ["24", "off"])
@pytest.mark.parametrize("idx", range(7))
def test_every_config_softmax(monkeypatch, tol, idx, chunk):
    reg = _registry()
    if idx >= _num_configs():
        pytest.skip("fewer configs")
    fwd, bwd = idx % len(reg["softmax_fwd"].configs), idx % len(reg["softmax_bwd"].configs)
    monkeypatch.setenv("GRAPHSCALE_TRITON_CONFIG", f"softmax_fwd={fwd},softmax_bwd={bwd}")
    monkeypatch.setenv(CHUNK_ENV, chunk)
    ei, n = _skewed_graph(seed=8)
    adj = CSR.from_edge_index(ei, n)
    x = torch.randn(n, 37, device=DEV, requires_grad=True)
    ea = torch.randn(adj.num_edges, 37, device=DEV, requires_grad=True)
    t = torch.tensor([1.4], device=DEV, requires_grad=True)
    _compare(lambda b: softmax_aggr(adj, x, t, ea, backend=b), (x, t, ea), tol, torch.float32)


def test_config_lists_fit_the_parametrization():
    assert _num_configs() <= 7, "raise the range() of test_every_config_* to cover every config"


def test_split_schedule_in_float64_gradcheck(monkeypatch):
    monkeypatch.setenv(CHUNK_ENV, "4")
    ei, n = _skewed_graph(n=8, seed=9, hub_in=11, hub_out=9, rand=6)
    adj = CSR.from_edge_index(ei, n)
    x = torch.randn(n, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    w = torch.rand(adj.num_edges, dtype=torch.float64, device=DEV, requires_grad=True)
    for reduce in ("sum", "max"):
        assert torch.autograd.gradcheck(lambda x, w: spmm(adj, x, reduce, w, backend="triton", ties="first"), (x, w),
                                        fast_mode=True)
    t = torch.tensor([0.9], dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: softmax_aggr(adj, x, t, eps=1e-3, backend="triton"), (x, t),
                                    fast_mode=True)


def test_autotuned_launch(tol):
    from graphscale_triton.tuning import KERNELS
    ei, n = _skewed_graph(seed=10)
    adj = CSR.from_edge_index(ei, n)
    x = torch.randn(n, 21, device=DEV, requires_grad=True)
    _compare(lambda b: spmm(adj, x, "mean", backend=b), (x,), tol, torch.float32)
    assert KERNELS["spmm_fwd"].best_config is not None and KERNELS["spmm_bwd"].best_config is not None


def test_pin_errors():
    from graphscale_triton.tuning import pin, pinned_index
    _registry()
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        with pin(nope=0):
            pass
    with pytest.raises(ValueError, match=r"config index 99 out of range"):
        with pin(spmm_fwd=99):
            pass
    with pin(spmm_fwd=2):
        assert pinned_index("spmm_fwd") == 2
    assert pinned_index("spmm_fwd") == 0  # back to the fixture's '*=0'


def test_split_results_are_deterministic(monkeypatch):
    # two passes, no atomics: the same inputs give the same bits, outputs and gradients
    monkeypatch.setenv(CHUNK_ENV, "24")
    ei, n = _skewed_graph(seed=11)
    adj = CSR.from_edge_index(ei, n)
    x = torch.randn(n, 19, device=DEV, requires_grad=True)
    go = torch.randn(n, 19, device=DEV)
    for reduce in ("sum", "max"):
        runs = []
        for _ in range(2):
            out = spmm(adj, x, reduce, backend="triton", ties="first")
            runs.append((out, *torch.autograd.grad(out, (x,), go)))
        for a, b in zip(*runs):
            assert torch.equal(a, b), reduce
