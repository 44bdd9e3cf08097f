"""graphscale convolutions vs the PyG convolution of the same name, on the same weights
(``load_state_dict`` of the PyG conv's state): outputs and gradients of inputs, edge weights /
features and every parameter."""
from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pygnn

from graphscale.errors import ConfigError
from graphscale.nn import GCNConv, GENConv, SAGEConv
from graphscale.ops import CSR

# float64 throughout: differences are then summation order only.
TOL = dict(rtol=1e-9, atol=1e-10)


def _graph(n=13, e=50, seed=0, n_src=None):
    g = torch.Generator().manual_seed(seed)
    n_src = n if n_src is None else n_src
    ei = torch.stack([torch.randint(0, n_src - 1, (e,), generator=g), torch.randint(0, n - 1, (e,), generator=g)])
    ei[1][ei[1] == 2] = 3  # node 2 receives nothing; the last node is isolated
    return torch.cat([ei, torch.tensor([[1, 1, 4], [5, 5, 4]])], 1)  # a duplicate and a self-loop


def _check(ours, ref, run, tensors):
    ours.load_state_dict(ref.state_dict())
    ours, ref = ours.double(), ref.double()
    out, out_ref = run(ours), run(ref)
    torch.testing.assert_close(out, out_ref, **TOL)
    go = torch.randn_like(out)
    p, p_ref = list(ours.parameters()), list(ref.parameters())
    assert [q.shape for q in p] == [q.shape for q in p_ref]
    g = torch.autograd.grad(out, tensors + p, go)
    g_ref = torch.autograd.grad(out_ref, tensors + p_ref, go)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kwargs", [{}, dict(improved=True), dict(add_self_loops=False),
                                    dict(normalize=False, bias=False)])
@pytest.mark.parametrize("weighted", [False, True])
def test_gcn_matches_pyg(kwargs, weighted):
    torch.manual_seed(0)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(ei.size(1), dtype=torch.float64, requires_grad=True) if weighted else None
    tensors = [x] + ([w] if weighted else [])
    _check(GCNConv(6, 5, **kwargs), pygnn.GCNConv(6, 5, **kwargs), lambda m: m(x, ei, w), tensors)


def test_gcn_sparse_and_csr_inputs_and_cache():
    torch.manual_seed(1)
    ei = _graph()
    x = torch.randn(13, 6)
    ref = pygnn.GCNConv(6, 5)
    ours = GCNConv(6, 5, cached=True)
    ours.load_state_dict(ref.state_dict())
    want = ref(x, ei)
    # A sparse adj_t coalesces duplicates (weight 2), which changes gcn_norm's kept self-loop weight:
    # compare with PyG on the same coalesced edge list.
    adj_t = torch.sparse_coo_tensor(ei.flip(0), torch.ones(ei.size(1)), (13, 13)).coalesce()  # PyG's adj_t layout
    fresh = GCNConv(6, 5)
    fresh.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fresh(x, adj_t), ref(x, adj_t.indices().flip(0), adj_t.values()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x, ei), want, rtol=1e-5, atol=1e-6)
    # cached: the first graph's normalisation is reused even when another graph is passed
    torch.testing.assert_close(ours(x, CSR.from_edge_index(torch.zeros(2, 0, dtype=torch.long), 13)), want,
                               rtol=1e-5, atol=1e-6)
    fresh = GCNConv(6, 5)
    fresh.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fresh(x, CSR.from_edge_index(ei, 13)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggr", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("kwargs", [{}, dict(normalize=True, root_weight=False)])
def test_sage_matches_pyg(aggr, kwargs):
    torch.manual_seed(2)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    pyg_aggr = "add" if aggr == "sum" else aggr
    _check(SAGEConv(6, 4, aggr=aggr, **kwargs), pygnn.SAGEConv(6, 4, aggr=pyg_aggr, **kwargs),
           lambda m: m(x, ei), [x])


def test_sage_bipartite():
    torch.manual_seed(3)
    ei = _graph(n=7, e=30, n_src=11)
    xs = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    xd = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    _check(SAGEConv((6, 3), 4), pygnn.SAGEConv((6, 3), 4), lambda m: m((xs, xd), ei), [xs, xd])


@pytest.mark.parametrize("kwargs", [dict(learn_t=True, edge_dim=8), dict(learn_t=True, edge_dim=5, msg_norm=True,
                                                                         learn_msg_scale=True, norm="layer"),
                                    dict(t=0.5, num_layers=1)])
@pytest.mark.parametrize("in_channels", [5, 7])
def test_gen_matches_pyg(kwargs, in_channels):
    torch.manual_seed(4)
    ei = _graph()
    x = torch.randn(13, in_channels, dtype=torch.float64, requires_grad=True)
    edim = kwargs.get("edge_dim")
    ea = torch.randn(ei.size(1), edim, dtype=torch.float64, requires_grad=True) if edim else None
    tensors = [x] + ([ea] if edim else [])
    _check(GENConv(in_channels, 5, **kwargs), pygnn.GENConv(in_channels, 5, **kwargs),
           lambda m: m(x, ei, ea), tensors)


def test_gen_rejects_other_aggregations():
    with pytest.raises(ConfigError, match="'powermean'"):
        GENConv(4, 4, aggr="powermean")
    with pytest.raises(ConfigError, match="'median'"):
        SAGEConv(4, 4, aggr="median")


def test_deepergcn_graphscale_conv_matches_pyg_conv():
    from graphscale.nn.models import DeeperGCN
    torch.manual_seed(5)
    ei = _graph()
    x = torch.randn(13, 6, dtype=torch.float64)
    ea = torch.randn(ei.size(1), 3, dtype=torch.float64)
    ref = DeeperGCN(6, 8, 4, num_layers=3, edge_dim=3, dropout=0.0).double().eval()
    ours = DeeperGCN(6, 8, 4, num_layers=3, edge_dim=3, dropout=0.0, conv="graphscale").double().eval()
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x, ei, ea), ref(x, ei, ea), **TOL)
    with pytest.raises(ConfigError, match="'dgl'"):
        DeeperGCN(6, 8, 4, num_layers=1, conv="dgl")
