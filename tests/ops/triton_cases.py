"""Triton kernels vs the reference, run under ``TRITON_INTERPRET=1`` on CPU (small shapes).

Not collected directly (no ``test_`` prefix): ``test_triton.py`` runs this file in a subprocess with
the interpreter switched on before triton kernels are defined, so the rest of the suite never pays
for the interpreter. Run it by hand with
``TRITON_INTERPRET=1 python -m pytest -q tests/ops/triton_cases.py``.
"""
from __future__ import annotations

import os

import pytest
import torch

from graphscale.ops import CSR, softmax_aggr, spmm

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
REDUCES = ["sum", "mean", "max", "min"]


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
    _compare(lambda b: spmm(adj, x, reduce, w, backend=b), inputs, tol, dtype)


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_triton_gradcheck(graph, reduce):
    ei = graph(8, 9, seed=4).to(DEV)
    adj = CSR.from_edge_index(ei, 8)
    x = torch.randn(8, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    w = torch.rand(adj.num_edges, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: spmm(adj, x, reduce, w, backend="triton"), (x, w), fast_mode=True)


def test_spmm_triton_wide_features_and_bipartite(graph, tol):
    ei = graph(7, 12, num_src=9).to(DEV)  # 130 features: two feature blocks of 128
    adj = CSR.from_edge_index(ei, (9, 7))
    x = torch.randn(9, 130, device=DEV, requires_grad=True)
    for reduce in ("sum", "max"):
        _compare(lambda b: spmm(adj, x, reduce, backend=b), (x,), tol, torch.float32)


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
