"""graphscale convolutions vs the PyG convolution of the same name, option by option, on the same
weights (``load_state_dict`` of the PyG conv's state): outputs and gradients of inputs, edge weights /
features and every parameter, float64. Each row also asserts which path ran (the fused graphscale op,
or PyG's message + aggregate), so a row never compares PyG with itself by accident."""
from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pygnn
from torch_geometric.nn.aggr import MaxAggregation

from graphscale.errors import ConfigError
from graphscale.nn import GCNConv, GENConv, SAGEConv
from graphscale.nn.conv import fused_reduce, layer_graph
from graphscale.ops import CSR

# float64 throughout: differences are then summation order only.
TOL = dict(rtol=1e-9, atol=1e-10)
FUSED_FNS = {"SpMMSumMeanBackward", "SpMMMaxMinBackward", "SoftmaxAggrBackward", "GenAggrBackward"}


@pytest.fixture(autouse=True)
def _fuse_small_graphs(monkeypatch):
    # the test graphs are tiny (degree ~4): fuse GENConv anyway (the degree rule has its own test)
    monkeypatch.setattr(GENConv, "fuse_min_degree", 0.0)


def _graph(n=13, e=50, seed=0, n_src=None):
    g = torch.Generator().manual_seed(seed)
    n_src = n if n_src is None else n_src
    ei = torch.stack([torch.randint(0, n_src - 1, (e,), generator=g), torch.randint(0, n - 1, (e,), generator=g)])
    ei[1][ei[1] == 2] = 3  # node 2 receives nothing; the last node is isolated
    return torch.cat([ei, torch.tensor([[1, 1, 4], [5, 5, 4]])], 1)  # a duplicate and a self-loop


def _autograd_names(out: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _check(ours, ref, run, tensors, fused: bool):
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # and back: the same keys both ways
    ours, ref = ours.double(), ref.double()
    out, out_ref = run(ours), run(ref)
    assert bool(_autograd_names(out) & FUSED_FNS) == fused, _autograd_names(out)
    assert not _autograd_names(out_ref) & FUSED_FNS
    torch.testing.assert_close(out, out_ref, **TOL)
    go = torch.randn_like(out)
    p, p_ref = list(ours.parameters()), list(ref.parameters())
    assert [q.shape for q in p] == [q.shape for q in p_ref]
    g = torch.autograd.grad(out, tensors + p, go, allow_unused=True)
    g_ref = torch.autograd.grad(out_ref, tensors + p_ref, go, allow_unused=True)
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)


# (constructor kwargs, fused?) -- the option table of docs/pyg.md
GCN_OPTIONS = [
    ({}, True), (dict(improved=True), True), (dict(cached=True), True), (dict(add_self_loops=False), True),
    (dict(normalize=False, bias=False), True), (dict(aggr="mean"), True), (dict(aggr="max"), True),
    (dict(aggr="min"), True), (dict(aggr="sum"), True), (dict(flow="target_to_source"), False),
    (dict(decomposed_layers=2), False), (dict(aggr="std"), False),
]


@pytest.mark.parametrize("kwargs,fused", GCN_OPTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gcn_options_match_pyg(kwargs, fused, weighted):
    torch.manual_seed(0)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(ei.size(1), dtype=torch.float64, requires_grad=True) if weighted else None
    tensors = [x] + ([w] if weighted else [])
    _check(GCNConv(6, 5, **kwargs), pygnn.GCNConv(6, 5, **kwargs), lambda m: m(x, ei, w), tensors, fused)


SAGE_OPTIONS = [
    (dict(aggr="mean"), True), (dict(aggr="max"), True), (dict(aggr="min"), True), (dict(aggr="add"), True),
    (dict(aggr="sum"), True), (dict(normalize=True, root_weight=False), True), (dict(bias=False), True),
    (dict(project=True), True), (dict(project=True, aggr="max", normalize=True), True),
    (dict(aggr=MaxAggregation()), True), (dict(aggr=["mean", "max"]), False), (dict(aggr="std"), False),
    (dict(aggr="mean", flow="target_to_source"), False),
]


@pytest.mark.parametrize("kwargs,fused", SAGE_OPTIONS)
def test_sage_options_match_pyg(kwargs, fused):
    torch.manual_seed(2)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    ref_kwargs = dict(kwargs)
    if isinstance(kwargs.get("aggr"), MaxAggregation):
        ref_kwargs["aggr"] = MaxAggregation()
    _check(SAGEConv(6, 4, **kwargs), pygnn.SAGEConv(6, 4, **ref_kwargs), lambda m: m(x, ei), [x], fused)


@pytest.mark.parametrize("aggr", ["mean", "max"])
def test_sage_bipartite(aggr):
    torch.manual_seed(3)
    ei = _graph(n=7, e=30, n_src=11)
    xs = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    xd = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    _check(SAGEConv((6, 3), 4, aggr=aggr), pygnn.SAGEConv((6, 3), 4, aggr=aggr), lambda m: m((xs, xd), ei),
           [xs, xd], True)


GEN_OPTIONS = [
    (dict(learn_t=True), True), (dict(t=0.5, num_layers=1), True), (dict(aggr="softmax_sg"), False),
    (dict(aggr="powermean", p=2.5), True), (dict(aggr="powermean", learn_p=True, p=1.5), True),
    (dict(aggr="powermean"), True), (dict(aggr="power", learn_p=True), True),
    (dict(aggr="mean"), True), (dict(aggr="max"), True), (dict(aggr="min"), True), (dict(aggr="add"), True),
    (dict(aggr="sum"), True), (dict(aggr=["mean", "max"]), False), (dict(aggr="var"), False),
    (dict(msg_norm=True, learn_msg_scale=True, norm="layer"), True),
    (dict(num_layers=3, expansion=3, norm="instance", eps=1e-3, bias=True), True),
]


@pytest.mark.parametrize("kwargs,fused", GEN_OPTIONS)
@pytest.mark.parametrize("edge_dim", [None, 5, 8])
def test_gen_options_match_pyg(kwargs, fused, edge_dim):
    torch.manual_seed(4)
    ei = _graph()
    x = torch.randn(13, 7, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(ei.size(1), edge_dim or 1, dtype=torch.float64, requires_grad=True)
    ea = ea if edge_dim else None
    tensors = [x] + ([ea] if edge_dim else [])
    kwargs = dict(kwargs, edge_dim=edge_dim)
    ours = GENConv(7, 5, **kwargs)
    if edge_dim and fused and fused_reduce(ours) not in GENConv.fused_edge_reduces:
        fused = False  # sum / mean / powermean with edge features: PyG's path by default (slower fused) ...
        _check(GENConv(7, 5, **kwargs), pygnn.GENConv(7, 5, **kwargs), lambda m: m(x, ei, ea), tensors, False)
        ours.fused_edge_reduces = frozenset({fused_reduce(ours)})  # ... and fused on request
        fused = True
    _check(ours, pygnn.GENConv(7, 5, **kwargs), lambda m: m(x, ei, ea), tensors, fused)


@pytest.mark.parametrize("aggr", ["softmax", "max", "powermean"])
def test_gen_bipartite_and_lazy(aggr):
    torch.manual_seed(5)
    ei = _graph(n=7, e=30, n_src=11)
    xs = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    xd = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(ei.size(1), 5, dtype=torch.float64, requires_grad=True)
    learn_p = aggr == "powermean"
    ours, ref = GENConv((-1, -1), 5, aggr=aggr, learn_p=learn_p), pygnn.GENConv((6, 4), 5, aggr=aggr, learn_p=learn_p)
    ours.double()((xs, xd), ei, ea)  # materialise the lazy Linear
    _check(ours, ref, lambda m: m((xs, xd), ei, ea), [xs, xd, ea], aggr in GENConv.fused_edge_reduces)


def test_sparse_and_csr_inputs_and_cache():
    torch.manual_seed(1)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64)
    adj_t = torch.sparse_coo_tensor(ei.flip(0), torch.ones(ei.size(1), dtype=torch.float64), (13, 13)).coalesce()
    for ours, ref in [(GCNConv(6, 5), pygnn.GCNConv(6, 5)), (SAGEConv(6, 5), pygnn.SAGEConv(6, 5)),
                      (GENConv(6, 6, edge_dim=None), pygnn.GENConv(6, 6))]:
        ours.load_state_dict(ref.state_dict())
        ours, ref = ours.double(), ref.double()
        torch.testing.assert_close(ours(x, adj_t), ref(x, adj_t), **TOL)  # PyG's semantics of a sparse adj_t
        torch.testing.assert_close(ours(x, CSR.from_edge_index(ei, 13)), ref(x, ei), **TOL)
    ref = pygnn.GCNConv(6, 5).double()
    ours = GCNConv(6, 5, cached=True).double()
    ours.load_state_dict(ref.state_dict())
    want = ref(x, ei)
    torch.testing.assert_close(ours(x, ei), want, **TOL)
    # cached: the first graph's normalisation is reused even when another graph is passed (PyG's rule)
    torch.testing.assert_close(ours(x, ei[:, :5]), want, **TOL)


def test_gen_edge_attr_in_csr_input_order():
    torch.manual_seed(6)
    ei = _graph()
    x = torch.randn(13, 4, dtype=torch.float64)
    ea = torch.randn(ei.size(1), 4, dtype=torch.float64)
    ref = pygnn.GENConv(4, 4, aggr="max")
    ours = GENConv(4, 4, aggr="max")
    ours.load_state_dict(ref.state_dict())
    ours, ref = ours.double().eval(), ref.double().eval()
    torch.testing.assert_close(ours(x, CSR.from_edge_index(ei, 13), ea), ref(x, ei, ea), **TOL)


def test_fused_flag_and_reduce_names():
    assert fused_reduce(SAGEConv(4, 4, aggr="add")) == "sum"
    assert fused_reduce(GENConv(4, 4)) == "softmax"
    assert fused_reduce(GENConv(4, 4, aggr="power")) == "pmean"
    assert fused_reduce(GENConv(4, 4, aggr="softmax_sg")) is None
    assert fused_reduce(SAGEConv(4, 4, aggr=["mean", "max"])) is None
    torch.manual_seed(7)
    ei = _graph()
    x = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    conv = SAGEConv(4, 4).double()
    assert _autograd_names(conv(x, ei)) & FUSED_FNS
    conv.fused = False
    assert not _autograd_names(conv(x, ei)) & FUSED_FNS


def test_bad_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="'cuda-magic'"):
        SAGEConv(4, 4, backend="cuda-magic")
    with pytest.raises(ConfigError, match="'nope'"):
        GENConv(4, 4, backend="nope")


def test_gen_low_degree_takes_pyg_path(monkeypatch):
    monkeypatch.setattr(GENConv, "fuse_min_degree", 20.0)  # the default
    g = torch.Generator().manual_seed(8)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    for e, fused in ((199, False), (200, True)):  # average in-degree 19.9 / 20
        ei = torch.randint(0, 10, (2, e), generator=g)
        ours, ref = GENConv(4, 4, aggr="max").double(), pygnn.GENConv(4, 4, aggr="max").double()
        _check(ours, ref, lambda m: m(x, ei), [x], fused)


def test_layer_graph_permutes_edge_features_once():
    g = torch.Generator().manual_seed(9)
    ei = torch.randint(0, 10, (2, 200), generator=g)
    ea = torch.randn(200, 3, dtype=torch.float64, generator=g)
    x = torch.randn(10, 3, dtype=torch.float64)
    adj, ea_csr = layer_graph(ei, 10, ea, min_degree=20)
    assert isinstance(adj, CSR) and adj.perm is None
    assert layer_graph(ei, 10, ea, min_degree=20)[0] is adj  # cached while ei lives
    torch.testing.assert_close(ea_csr, ea[CSR.from_edge_index(ei, 10).perm])
    ref = pygnn.GENConv(3, 3, aggr="max").double().eval()
    ours = GENConv(3, 3, aggr="max").double().eval()
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x, adj, ea_csr), ref(x, ei, ea), **TOL)
    same = layer_graph(ei, 10, ea, min_degree=21)  # average degree 20 < 21: unchanged
    assert same[0] is ei and same[1] is ea
