"""CSR construction, backend selection and bad-input errors of graphscale.ops."""
from __future__ import annotations

import pytest
import torch

from graphscale import _features
from graphscale.errors import ConfigError, DataError
from graphscale.ops import CSR, as_csr, resolve_backend, softmax_aggr, spmm

CPU = torch.device("cpu")


def test_csr_from_edge_index_layout(graph):
    ei = graph(11, 37)
    adj = CSR.from_edge_index(ei, 11)
    assert adj.shape == (11, 11) and adj.num_edges == ei.size(1)
    # rows are destinations, perm maps CSR positions back to edge_index columns
    assert torch.equal(adj.row, ei[1, adj.perm]) and torch.equal(adj.col, ei[0, adj.perm])
    assert torch.equal(adj.rowptr.diff(), torch.bincount(ei[1], minlength=11))
    at = adj.t()
    assert at.shape == (11, 11) and at.t() is adj
    assert torch.equal(at.col, adj.row[at.perm]) and torch.equal(at.row, adj.col[at.perm])



def test_csr_and_transpose_freed_without_cyclic_gc(graph):
    # A training step's CSR (and the transpose its backward builds) must go as soon as the step's
    # tensors do: a CSR <-> transpose reference cycle kept every step's index arrays until one of
    # Python's rare full collections (docs/partitioned.md, Measured)
    import gc
    import weakref
    ei = graph(11, 37)
    x = torch.randn(11, 3, requires_grad=True)
    gc.disable()
    try:
        adj = as_csr(ei, 11)
        spmm(adj, x, "mean").sum().backward()  # backward builds and caches adj.t()
        assert adj._t is not None
        refs = [weakref.ref(adj), weakref.ref(adj._t)]
        del adj
        del ei  # the as_csr cache entry goes with its edge_index
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_csr_transpose_outliving_its_csr(graph):
    ei = graph(11, 37)
    adj = CSR.from_edge_index(ei, 11)
    keep = (adj.rowptr.clone(), adj.col.clone(), adj.perm.clone())
    at = adj.t()
    del adj  # only the transpose is kept: its t() is the same CSR again (perm back to edge_index order)
    back = at.t()
    assert all(torch.equal(a, b) for a, b in zip((back.rowptr, back.col, back.perm), keep))
    assert back.t() is at and at.t() is back

def test_as_csr_inputs_and_cache(graph):
    ei = graph(11, 37)
    a = as_csr(ei, 11)
    assert as_csr(ei, 11) is a  # same tensor, same version: conversion reused
    ei.add_(0)                  # in-place change bumps the version: rebuilt
    assert as_csr(ei, 11) is not a
    assert as_csr(a) is a
    w = torch.rand(ei.size(1))
    assert torch.equal(as_csr(ei, 11, w).value, w[a.perm])
    with pytest.raises(TypeError, match="edge_index"):
        as_csr([[0, 1], [1, 0]])


def test_as_csr_caches_sparse_adjacency_until_modified(graph):
    ei = graph(11, 37)
    w = torch.rand(ei.size(1))
    adj_t = torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), w, (11, 11)).coalesce().to_sparse_csr()
    a = as_csr(adj_t)
    assert as_csr(adj_t) is a                       # the layers of one forward share one conversion
    a_t = a.t()
    adj_t.values().mul_(2.0)                        # in-place change of the weights: rebuilt
    b = as_csr(adj_t)
    assert b is not a and torch.equal(b.value, adj_t.values()) and b.t() is not a_t
    dense = torch.zeros(11, 11).index_put_((ei[1], ei[0]), 2.0 * w, accumulate=True)
    x = torch.randn(11, 3)
    assert torch.allclose(spmm(b, x), dense @ x, atol=1e-6)
    leaf = adj_t.detach().requires_grad_(True)      # weights with autograd history: never cached
    assert as_csr(leaf) is not as_csr(leaf)


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv("GRAPHSCALE_BACKEND", raising=False)
    assert resolve_backend(None, CPU) == "torch"
    assert resolve_backend(None, torch.device("cuda")) == ("triton" if _features.WITH_TRITON else "torch")
    monkeypatch.setenv("GRAPHSCALE_BACKEND", "torch")
    assert resolve_backend(None, torch.device("cuda")) == "torch"      # env beats auto
    monkeypatch.setenv("GRAPHSCALE_BACKEND", "nope")
    assert resolve_backend("torch", CPU) == "torch"                    # argument beats env
    with pytest.raises(ConfigError, match=r"'nope'.*auto, torch, triton"):
        resolve_backend(None, CPU)
    with pytest.raises(ConfigError, match=r"'cuda_magic'.*auto, torch, triton"):
        resolve_backend("cuda_magic", CPU)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch, graph):
    monkeypatch.setattr(_features, "WITH_TRITON", True)
    monkeypatch.setattr(_features, "TRITON_INTERPRET", False)
    adj = CSR.from_edge_index(graph(), 11)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        spmm(adj, torch.randn(11, 4), backend="triton")
    monkeypatch.setattr(_features, "WITH_TRITON", False)
    monkeypatch.setattr(_features, "_has", lambda m: False)
    with pytest.raises(ImportError, match="pip install triton"):
        resolve_backend("triton", CPU)


def test_index_out_of_range():
    with pytest.raises(DataError, match=r"max source 5.*\[0, 5\)"):
        CSR.from_edge_index(torch.tensor([[0, 5], [1, 2]]), 5)
    with pytest.raises(DataError, match="min -1"):
        CSR.from_edge_index(torch.tensor([[0, -1], [1, 2]]), 5)
    with pytest.raises(DataError, match="col out of range"):
        CSR(torch.tensor([0, 1, 2]), torch.tensor([0, 7]))
    with pytest.raises(DataError, match="end at E=2"):
        CSR(torch.tensor([0, 1, 3]), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="non-decreasing"):
        CSR(torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]))


def test_bad_shapes_and_dtypes(graph):
    ei = graph(11, 37)
    adj = CSR.from_edge_index(ei, 11)
    x = torch.randn(11, 4)
    with pytest.raises(ValueError, match="12 rows but the adjacency has 11"):
        spmm(adj, torch.randn(12, 4))
    with pytest.raises(ValueError, match="2-D"):
        spmm(adj, torch.randn(11))
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        spmm(adj, torch.ones(11, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"unsupported reduce 'median'.*sum, mean, max, min"):
        spmm(adj, x, "median")
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[43\]"):
        spmm(adj, x, edge_weight=torch.ones(5))
    with pytest.raises(TypeError, match="edge_weight has dtype torch.float64 but x has torch.float32"):
        spmm(adj, x, edge_weight=torch.ones(adj.num_edges, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"edge_attr must have shape \[43, 4\]"):
        softmax_aggr(adj, x, 1.0, torch.ones(adj.num_edges, 3))
    with pytest.raises(ValueError, match="one-element"):
        softmax_aggr(adj, x, torch.ones(2))
    with pytest.raises(TypeError, match="graphscale.ops.CSR"):
        spmm(ei, x)
    with pytest.raises(TypeError, match="int64 or int32"):
        CSR.from_edge_index(ei.float(), 11)
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        CSR.from_edge_index(ei.t().contiguous(), 11)


def test_non_contiguous_input_is_read_correctly(graph):
    adj = CSR.from_edge_index(graph(11, 37), 11)
    base = torch.randn(4, 11)
    xt = base.t()  # [11, 4] strided view
    assert not xt.is_contiguous()
    for reduce in ("sum", "max"):
        torch.testing.assert_close(spmm(adj, xt, reduce), spmm(adj, xt.contiguous(), reduce))
