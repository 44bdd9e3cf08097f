"""The pure-torch reference (the specification) against PyG's scatter / SoftmaxAggregation, an
independent implementation, plus gradcheck of every reference autograd Function in float64."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn.aggr import SoftmaxAggregation
from torch_geometric.utils import scatter

from graphscale.ops import CSR, gen_aggr, reference, softmax_aggr, spmm

REDUCES = ["sum", "mean", "max", "min"]


def _pyg_spmm(ei, x, w, reduce, n):
    msg = x[ei[0]] if w is None else x[ei[0]] * w[:, None]
    return scatter(msg, ei[1], 0, dim_size=n, reduce=reduce)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_matches_pyg(graph, tol, reduce, weighted, dtype):
    ei = graph(11, 37)
    x = torch.randn(11, 7, dtype=dtype, requires_grad=True)
    w = torch.randn(ei.size(1), dtype=dtype, requires_grad=True) if weighted else None
    adj = CSR.from_edge_index(ei, 11, w)
    out = spmm(adj, x, reduce, backend="torch")
    ref = _pyg_spmm(ei, x, w, reduce, 11)
    torch.testing.assert_close(out, ref, **tol[dtype])
    assert out[3].abs().sum() == 0 and out[10].abs().sum() == 0  # empty row / isolated node: zeros
    go = torch.randn_like(out)
    inputs = (x, w) if weighted else (x,)
    for a, b in zip(torch.autograd.grad(out, inputs, go, retain_graph=True), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, b, **tol[dtype])


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_gradcheck(graph, reduce):
    ei = graph(9, 23, seed=1)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(ei.size(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: spmm(CSR.from_edge_index(ei, 9, w), x, reduce, backend="torch"),
                                    (x, w))


def test_spmm_bipartite_and_sparse_input(graph, tol):
    ei = graph(8, 30, num_src=13)
    x = torch.randn(13, 5)
    adj = CSR.from_edge_index(ei, (13, 8))
    out = spmm(adj, x, "sum")
    torch.testing.assert_close(out, _pyg_spmm(ei, x, None, "sum", 8), **tol[torch.float32])
    adj_t = torch.sparse_coo_tensor(ei.flip(0), torch.ones(ei.size(1)), (8, 13))  # PyG adj_t layout
    torch.testing.assert_close(spmm(CSR.from_sparse(adj_t), x, "sum"), out, **tol[torch.float32])


def test_max_ties_first_edge_rule():
    # three edges into node 0 carry the same value: with ties='first' the gradient goes to the first (CSR order).
    ei = torch.tensor([[1, 2, 1], [0, 0, 0]])
    x = torch.ones(3, 2, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    out = spmm(CSR.from_edge_index(ei, 3), x, "max", w, ties="first")
    out.sum().backward()
    assert w.grad.tolist() == [2.0, 0.0, 0.0]
    assert x.grad[1].tolist() == [1.0, 1.0] and x.grad[2].tolist() == [0.0, 0.0]


def test_max_ties_split_rule():
    # default ties='split': the three tied edges share the gradient; source 1 sends two of them.
    ei = torch.tensor([[1, 2, 1], [0, 0, 0]])
    x = torch.ones(3, 2, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    spmm(CSR.from_edge_index(ei, 3), x, "max", w).sum().backward()
    torch.testing.assert_close(w.grad, torch.full((3,), 2 / 3))
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0], [2 / 3, 2 / 3], [1 / 3, 1 / 3]]))


@pytest.mark.parametrize("reduce", ["max", "min"])
@pytest.mark.parametrize("weighted", [False, True])
def test_ties_match_torch_scatter_reduce(reduce, weighted, monkeypatch):
    # integer-valued features and weights: most extrema tie, many at exactly 0 (where torch counts the
    # zero the output starts from as one more tie). Small row blocks too (several blocks per op).
    g = torch.Generator().manual_seed(3)
    n, f = 17, 6
    ei = torch.randint(0, n - 1, (2, 90), generator=g)
    x = torch.randint(-2, 3, (n, f), generator=g).double().requires_grad_()
    w = torch.randint(0, 3, (ei.size(1),), generator=g).double().requires_grad_() if weighted else None
    msg = x[ei[0]] * (w[:, None] if weighted else 1)
    want = torch.zeros(n, f, dtype=torch.float64).scatter_reduce(0, ei[1][:, None].expand(-1, f), msg,
                                                                  "a" + reduce, include_self=False)
    go = torch.randn(n, f, dtype=torch.float64, generator=g)
    inputs = (x, w) if weighted else (x,)
    g_want = torch.autograd.grad(want, inputs, go)
    for block in (reference._BLOCK_ELEMS, 13):
        monkeypatch.setattr(reference, "_BLOCK_ELEMS", block)
        adj = CSR.from_edge_index(ei, n)
        out = spmm(adj, x, reduce, adj.edge_order(w) if weighted else None)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        for a, b in zip(torch.autograd.grad(out, inputs, go), g_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "pmean"])
@pytest.mark.parametrize("values", ["tied", "continuous", "continuous-no-ea-grad"])
def test_gen_aggr_matches_torch(reduce, values, monkeypatch):
    # GENConv's messages relu(x_j + e) + eps reduced per row, vs the same composed from torch ops
    # (scatter_reduce, include_self=False; PowerMeanAggregation's inner clamp and power). max / min
    # take their arg path on row blocks without ties and recompute the blocks with ties: rounded
    # values tie in most blocks, continuous ones in none (x has a hub source so the blocks mix).
    g = torch.Generator().manual_seed(4)
    n, f = 13, 5
    ei = torch.randint(0, n - 1, (2, 70), generator=g)
    x = torch.randn(n, f, dtype=torch.float64, generator=g)
    ea = torch.randn(ei.size(1), f, dtype=torch.float64, generator=g)
    if values == "tied":
        x, ea = x.round(decimals=1), ea.round(decimals=1)
    x = x.requires_grad_()
    ea = ea.requires_grad_(values != "continuous-no-ea-grad")
    p = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    m = (x[ei[0]] + ea).relu() + 1e-7
    if reduce == "pmean":
        m = m.clamp(1e-4, 100.0).pow(p)
    how = {"pmean": "mean", "max": "amax", "min": "amin"}.get(reduce, reduce)
    want = torch.zeros(n, f, dtype=torch.float64).scatter_reduce(0, ei[1][:, None].expand(-1, f), m, how,
                                                                  include_self=False)
    go = torch.randn(n, f, dtype=torch.float64, generator=g)
    inputs = (x, ea) if ea.requires_grad else (x,)
    inputs = inputs + (p,) if reduce == "pmean" else inputs
    g_want = torch.autograd.grad(want, inputs, go)
    for block in (reference._BLOCK_ELEMS, 11):
        monkeypatch.setattr(reference, "_BLOCK_ELEMS", block)
        adj = CSR.from_edge_index(ei, n)
        out = gen_aggr(adj, x, adj.edge_order(ea), reduce, eps=1e-7, p=p, clamp=(1e-4, 100.0))
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(out, inputs, go), g_want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gen_aggr_gradcheck_and_errors():
    g = torch.Generator().manual_seed(5)
    ei = torch.randint(0, 7, (2, 20), generator=g)
    adj = CSR.from_edge_index(ei, 8)
    x = torch.rand(8, 3, dtype=torch.float64, generator=g).requires_grad_()
    ea = torch.rand(20, 3, dtype=torch.float64, generator=g).requires_grad_()
    p = torch.tensor([2.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, ea, p: gen_aggr(adj, x, ea, "pmean", eps=1e-3, p=p,
                                                              clamp=(1e-4, 100.0)), (x, ea, p))
    assert torch.autograd.gradcheck(lambda x, ea: gen_aggr(adj, x, ea, "mean", eps=1e-3), (x, ea))
    with pytest.raises(ValueError, match="'median'"):
        gen_aggr(adj, x, ea, "median")
    with pytest.raises(ValueError, match="needs p"):
        gen_aggr(adj, x, ea, "pmean")
    with pytest.raises(ValueError, match="ties"):
        spmm(adj, x, "max", ties="last")


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_max_fallback_matches_fast_path(graph, monkeypatch, reduce):
    ei = graph(11, 37)
    x = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ei.size(1), dtype=torch.float64, requires_grad=True)
    adj = CSR.from_edge_index(ei, 11)
    fast = spmm(adj, x, reduce, w[adj.perm])
    monkeypatch.setattr(reference, "_MM_REDUCE", None)
    slow = spmm(adj, x, reduce, w[adj.perm])
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    go = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, (x, w), go), torch.autograd.grad(slow, (x, w), go)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_ea", [False, True])
def test_softmax_matches_pyg(graph, tol, dtype, with_ea):
    ei = graph(11, 37, seed=2)
    x = torch.randn(11, 7, dtype=dtype, requires_grad=True)
    ea = torch.randn(ei.size(1), 7, dtype=dtype, requires_grad=True) if with_ea else None
    agg = SoftmaxAggregation(t=0.7, learn=True).to(dtype)
    adj = CSR.from_edge_index(ei, 11)
    out = softmax_aggr(adj, x, agg.t, adj.edge_order(ea), backend="torch")
    msg = (x[ei[0]] if ea is None else x[ei[0]] + ea).relu() + 1e-7
    ref = agg(msg, ei[1], dim_size=11)
    torch.testing.assert_close(out, ref, **tol[dtype])
    assert out[3].abs().sum() == 0 and out[10].abs().sum() == 0
    go = torch.randn_like(out)
    inputs = [x, agg.t] + ([ea] if with_ea else [])
    for a, b in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, b, **tol[dtype])


@pytest.mark.parametrize("relu", [True, False])
def test_softmax_gradcheck(graph, relu):
    ei = graph(9, 23, seed=3)
    adj = CSR.from_edge_index(ei, 9)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(adj.num_edges, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, ea, t: softmax_aggr(adj, x, t, ea, relu=relu, eps=1e-3,
                                                                  backend="torch"), (x, ea, t))


# Half precision against an independent float64 oracle (PyG's scatter on the same, already rounded,
# inputs). The reference computes in float32 and rounds once to the half type, so each output may be
# off from the exact value by half a unit in the last place (relative 2**-8 for bfloat16's 8
# significand bits, 2**-11 for float16's 11) plus float32 accumulation error (~1e-7 of the summed
# magnitudes: the atol). Gradients go through the same rounding once more on the way in (the
# upstream gradient is half precision too), so they get the same bound.
HALF_TOL = {torch.bfloat16: dict(rtol=2.0 ** -8, atol=1e-5), torch.float16: dict(rtol=2.0 ** -11, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduce", REDUCES)
def test_half_precision_matches_float64_oracle(graph, reduce, dtype):
    ei = graph(11, 37)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 5, generator=g).to(dtype).requires_grad_()
    w = torch.rand(ei.size(1), generator=g).add_(0.5).to(dtype)
    adj = CSR.from_edge_index(ei, 11, w)
    out = spmm(adj, x, reduce, backend="torch")
    assert out.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    ref = _pyg_spmm(ei, x64, w.double(), reduce, 11)
    torch.testing.assert_close(out.double(), ref, **HALF_TOL[dtype])
    go = torch.randn(out.shape, generator=g).to(dtype)
    (gx,) = torch.autograd.grad(out, x, go)
    (gx64,) = torch.autograd.grad(ref, x64, go.double())
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.double(), gx64, **HALF_TOL[dtype])


def test_saved_tensors_are_visible_to_hooks(graph):
    # Activation compression hooks what autograd saves: the Functions must save through
    # save_for_backward, never stash activations on ctx.
    adj = CSR.from_edge_index(graph(11, 37), 11)
    x = torch.randn(11, 5, requires_grad=True)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        spmm(adj, x, "max").sum().backward()
        softmax_aggr(adj, x, torch.ones(1, requires_grad=True)).sum().backward()
    assert any(t is x for t in seen)                     # both save x
    assert sum(t is x for t in seen) >= 2                # max recomputes its ties from x (no arg saved)
    assert sum(t.shape == (11, 5) and t.is_floating_point() for t in seen) >= 3  # x, out, lse
