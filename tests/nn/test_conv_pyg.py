"""graphscale convolutions inside PyG's machinery: ``to_hetero``, ``torch_geometric.explain`` (edge masks
take PyG's unfused path), ``torch_geometric.nn.Sequential``, ``torch.compile``, ``state_dict`` both ways,
and max / min gradients at ties equal to PyG's."""
from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pygnn
from torch_geometric.data import Data, HeteroData
from torch_geometric.explain import Explainer, GNNExplainer

from graphscale.nn import GCNConv, GENConv, SAGEConv
from graphscale.ops import reference

# the fused autograd Functions and the graph walk that finds them, shared with the conv tests
from test_conv import FUSED_FNS
from test_conv import _autograd_names as _names


@pytest.fixture(autouse=True)
def _fuse_small_graphs(monkeypatch):
    # the test graphs are tiny (degree ~4): fuse GENConv anyway (the degree rule has its own test)
    monkeypatch.setattr(GENConv, "fuse_min_degree", 0.0)


def _hetero():
    g = torch.Generator().manual_seed(0)
    d = HeteroData()
    d["paper"].x = torch.randn(20, 5, generator=g)
    d["author"].x = torch.randn(7, 4, generator=g)
    ei = torch.stack([torch.randint(0, 7, (30,), generator=g), torch.randint(0, 20, (30,), generator=g)])
    d["author", "writes", "paper"].edge_index = ei
    d["paper", "rev_writes", "author"].edge_index = ei.flip(0)
    d["paper", "cites", "paper"].edge_index = torch.randint(0, 20, (2, 40), generator=g)
    return d


class _Net(torch.nn.Module):
    def __init__(self, conv_cls, **kw):
        super().__init__()
        self.c1 = conv_cls((-1, -1), 8, **kw)
        self.c2 = conv_cls((-1, -1), 3, **kw)

    def forward(self, x, edge_index):
        return self.c2(self.c1(x, edge_index).relu(), edge_index)


@pytest.mark.parametrize("aggr", ["mean", "max"])
def test_to_hetero_matches_pyg(aggr):
    # The failure: to_hetero treats only MessagePassing modules as edge-level (one per edge type,
    # called on (x_src, x_dst)); lazy (-1, -1) sizes make per-type input widths work.
    d = _hetero()
    torch.manual_seed(1)
    ours = pygnn.to_hetero(_Net(SAGEConv, aggr=aggr), d.metadata(), aggr="sum")
    ref = pygnn.to_hetero(_Net(pygnn.SAGEConv, aggr=aggr), d.metadata(), aggr="sum")
    out = ours(d.x_dict, d.edge_index_dict)  # materialise the lazy weights
    ref(d.x_dict, d.edge_index_dict)
    ref.load_state_dict(ours.state_dict())
    out, want = ours(d.x_dict, d.edge_index_dict), ref(d.x_dict, d.edge_index_dict)
    assert set(out) == {"paper", "author"}
    for k in out:
        torch.testing.assert_close(out[k], want[k], rtol=1e-5, atol=1e-6)
    assert _names(out["paper"]) & FUSED_FNS


def test_to_hetero_gen_with_edge_features():
    d = _hetero()
    for et in d.edge_types:
        d[et].edge_attr = torch.randn(d[et].edge_index.size(1), 6)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = GENConv((-1, -1), 6, aggr="powermean", learn_p=True, edge_dim=6, norm="layer")

        def forward(self, x, edge_index, edge_attr):
            return self.c(x, edge_index, edge_attr)

    model = pygnn.to_hetero(Net(), d.metadata(), aggr="sum")
    out = model(d.x_dict, d.edge_index_dict, d.edge_attr_dict)
    assert out["paper"].shape == (20, 6) and out["author"].shape == (7, 6)
    out["paper"].sum().backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if n.endswith(".p"))


@pytest.mark.parametrize("conv_cls", [GCNConv, SAGEConv])
def test_gnn_explainer_edge_masks_take_the_unfused_path(conv_cls):
    # "Could not compute gradients for edges" was the error: the explainer sets `explain` on
    # every MessagePassing module and multiplies the messages by its edge mask, which needs per-edge
    # messages (PyG's path), exactly as PyG's own convs do.
    g = torch.Generator().manual_seed(2)
    data = Data(x=torch.randn(15, 4, generator=g), edge_index=torch.randint(0, 15, (2, 50), generator=g))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = conv_cls(4, 8), conv_cls(8, 3)

        def forward(self, x, edge_index):
            return self.c2(self.c1(x, edge_index).relu(), edge_index)

    torch.manual_seed(3)
    model = Net()
    explainer = Explainer(model, GNNExplainer(epochs=5), explanation_type="model", node_mask_type="attributes",
                          edge_mask_type="object",
                          model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"))
    expl = explainer(data.x, data.edge_index, index=3)
    assert expl.edge_mask.shape == (50,) and bool((expl.edge_mask > 0).any())
    assert not any(m.explain for m in model.modules() if isinstance(m, pygnn.MessagePassing))  # switched back
    assert _names(model(data.x.requires_grad_(), data.edge_index)) & FUSED_FNS  # fused again afterwards


def test_edge_mask_path_equals_pyg_conv():
    # Under an edge mask our conv computes what PyG's conv computes (the unfused path, mask applied).
    g = torch.Generator().manual_seed(4)
    x, ei = torch.randn(12, 4, generator=g), torch.randint(0, 12, (2, 40), generator=g)
    mask = torch.rand(40, generator=g)
    ours, ref = SAGEConv(4, 3, aggr="max"), pygnn.SAGEConv(4, 3, aggr="max")
    ours.load_state_dict(ref.state_dict())
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
    for m in (ours, ref):
        set_masks(m, mask, ei, apply_sigmoid=True)
    torch.testing.assert_close(ours(x, ei), ref(x, ei))
    for m in (ours, ref):
        clear_masks(m)


def test_pyg_sequential():
    g = torch.Generator().manual_seed(5)
    x, ei = torch.randn(10, 4, generator=g).requires_grad_(), torch.randint(0, 10, (2, 30), generator=g)
    ea = torch.randn(30, 6, generator=g)
    model = pygnn.Sequential("x, edge_index, edge_attr", [
        (SAGEConv(4, 6, aggr="max"), "x, edge_index -> x"), torch.nn.ReLU(),
        (GENConv(6, 6, edge_dim=6, norm="layer"), "x, edge_index, edge_attr -> x"),
        (GCNConv(6, 2), "x, edge_index -> x"),
    ])
    out = model(x, ei, ea)
    assert out.shape == (10, 2)
    assert {"SpMMMaxMinBackward", "SoftmaxAggrBackward", "SpMMSumMeanBackward"} <= _names(out)


@pytest.mark.parametrize("conv", ["sage-max", pytest.param("gen-softmax", marks=pytest.mark.slow),
                                  pytest.param("gcn", marks=pytest.mark.slow)])  # 15-26 s each, compile time
def test_torch_compile_forward_backward_equal_eager(conv):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 5, generator=g, requires_grad=True)
    ei, ea = torch.randint(0, 16, (2, 60), generator=g), torch.randn(60, 5, generator=g)
    torch.manual_seed(7)
    m = {"sage-max": lambda: SAGEConv(5, 5, aggr="max"), "gcn": lambda: GCNConv(5, 5),
         "gen-softmax": lambda: GENConv(5, 5, learn_t=True, edge_dim=5, norm="layer")}[conv]()
    args = (x, ei, ea) if conv.startswith("gen") else (x, ei)
    torch._dynamo.reset()
    compiled = torch.compile(m)
    out_c, out_e = compiled(*args), m(*args)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    params = [x] + list(m.parameters())
    for a, b in zip(torch.autograd.grad(out_c.square().sum(), params), torch.autograd.grad(out_e.square().sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["GCNConv", "SAGEConv", "GENConv"])
def test_state_dict_round_trip_with_pyg(name):
    g = torch.Generator().manual_seed(8)
    x, ei = torch.randn(11, 6, generator=g), torch.randint(0, 11, (2, 40), generator=g)
    kw = dict(learn_t=True, msg_norm=True, learn_msg_scale=True) if name == "GENConv" else {}
    torch.manual_seed(9)
    ours = getattr(__import__("graphscale.nn", fromlist=[name]), name)(6, 6, **kw).eval()
    ref = getattr(pygnn, name)(6, 6, **kw).eval()
    ref.load_state_dict(ours.state_dict())      # ours -> PyG
    torch.testing.assert_close(ref(x, ei), ours(x, ei), rtol=1e-5, atol=1e-6)
    torch.manual_seed(10)
    ref2 = getattr(pygnn, name)(6, 6, **kw).eval()
    ours.load_state_dict(ref2.state_dict())     # and PyG -> ours
    torch.testing.assert_close(ours(x, ei), ref2(x, ei), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggr", ["max", "min"])
def test_tied_max_gradients_equal_pyg_sage(aggr, monkeypatch):
    # Integer-valued (binary) features as in raw CiteSeer: most per-feature maxima tie. The issue measured
    # differences up to 0.49 in d out / d x; the rule is now PyG's (torch scatter_reduce), checked exactly.
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 2, (40, 9), generator=g).double().requires_grad_()
    ei = torch.randint(0, 40, (2, 160), generator=g)
    ours, ref = SAGEConv(9, 4, aggr=aggr).double(), pygnn.SAGEConv(9, 4, aggr=aggr).double()
    ours.load_state_dict(ref.state_dict())
    go = torch.randn(40, 4, dtype=torch.float64, generator=g)
    (want,) = torch.autograd.grad(ref(x, ei), x, go)
    for block in (reference._BLOCK_ELEMS, 20):  # one row block, and many
        monkeypatch.setattr(reference, "_BLOCK_ELEMS", block)
        out = ours(x, ei)
        assert "SpMMMaxMinBackward" in _names(out)
        (got,) = torch.autograd.grad(out, x, go)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_hooks_on_the_fused_path_and_message_hooks_unfuse():
    g = torch.Generator().manual_seed(12)
    x, ei = torch.randn(10, 4, generator=g, requires_grad=True), torch.randint(0, 10, (2, 40), generator=g)
    conv = SAGEConv(4, 3, aggr="max")
    seen = []
    h1 = conv.register_propagate_forward_pre_hook(lambda m, inputs: seen.append("pre") or None)
    h2 = conv.register_propagate_forward_hook(lambda m, inputs, out: out * 2)  # a hook may replace the output
    doubled = conv.propagate(ei, x=(x, x))
    assert seen == ["pre"] and "SpMMMaxMinBackward" in _names(doubled)
    h2.remove()
    torch.testing.assert_close(doubled, 2 * conv.propagate(ei, x=(x, x)))
    h1.remove()
    msgs = []
    conv.register_message_forward_hook(lambda m, inputs, out: msgs.append(out.shape))
    out = conv(x, ei)  # a message hook needs per-edge messages: PyG's path
    assert msgs == [(40, 4)] and "SpMMMaxMinBackward" not in _names(out)
