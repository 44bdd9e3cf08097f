"""The library's GENConv models on graphscale convs (the default) vs the same models on PyG's GENConv
(``conv='pyg'``, the reference), same weights (state dict loaded across), float64: outputs and the
gradients of every parameter and of the inputs."""
from __future__ import annotations

import pytest
import torch

from graphscale.errors import ConfigError
from graphscale.nn.models import DEQGNN, DeeperGCN, RevGNN


@pytest.fixture(autouse=True)
def _fuse_small_graphs(monkeypatch):
    # the test graph is tiny (degree ~5): fuse GENConv anyway (tests/nn/test_conv.py tests the rule)
    from graphscale.nn import GENConv
    monkeypatch.setattr(GENConv, "fuse_min_degree", 0.0)


def _count_ops(monkeypatch) -> dict:
    # reversible / DEQ blocks hide their inner autograd graph, so count the graphscale.ops calls instead
    import graphscale.ops as ops
    calls = {}
    for name in ("spmm", "softmax_aggr", "gen_aggr"):
        fn = getattr(ops, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*a, **k)
        monkeypatch.setattr(ops, name, wrapped)
    return calls


def _data(seed=0, n=23, e=110, f=6, edim=3):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    x = torch.randn(n, f, dtype=torch.float64, generator=g).requires_grad_()
    ea = torch.randn(e, edim, dtype=torch.float64, generator=g).requires_grad_()
    return x, ei, ea


MODELS = {
    "deepergcn-softmax": lambda conv: DeeperGCN(6, 8, 4, num_layers=3, edge_dim=3, dropout=0.0, conv=conv),
    "deepergcn-max": lambda conv: DeeperGCN(6, 8, 4, num_layers=2, edge_dim=3, dropout=0.0, aggr="max", conv=conv),
    "revgnn-max": lambda conv: RevGNN(6, 8, 4, num_layers=3, edge_dim=3, dropout=0.0, aggr="max", conv=conv),
    "revgnn-softmax": lambda conv: RevGNN(6, 8, 4, num_layers=2, edge_dim=3, dropout=0.0, aggr="softmax", conv=conv),
    "wt-revgnn-max": lambda conv: RevGNN(6, 8, 4, num_layers=3, edge_dim=3, dropout=0.0, aggr="max",
                                         weight_tied=True, conv=conv),
    "deq-gnn-max": lambda conv: DEQGNN(6, 8, 4, edge_dim=3, dropout=0.0, aggr="max", max_iter=8, tol=1e-10,
                                       conv=conv),
    "deq-gnn-softmax": lambda conv: DEQGNN(6, 8, 4, edge_dim=3, dropout=0.0, aggr="softmax", max_iter=8,
                                           tol=1e-10, conv=conv),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("with_edges", [True, False])
def test_graphscale_conv_model_matches_pyg_conv_model(name, with_edges, monkeypatch):
    calls = _count_ops(monkeypatch)
    torch.manual_seed(1)
    ref = MODELS[name]("pyg").double()
    ours = MODELS[name]("graphscale").double()
    ours.load_state_dict(ref.state_dict())
    x, ei, ea = _data()
    args = (x, ei, ea) if with_edges else (x, ei)
    want = ref(*args)
    assert not calls
    out = ours(*args)
    assert sum(calls.values()) > 0  # the graphscale ops are on the path
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-10)
    go = torch.randn_like(out)
    inputs = [x, ea] if with_edges else [x]
    got = torch.autograd.grad(out, inputs + list(ours.parameters()), go, allow_unused=True)
    exp = torch.autograd.grad(want, inputs + list(ref.parameters()), go, allow_unused=True)
    for (pname, _), a, b in zip([("x", 0), ("edge_attr", 0)][:len(inputs)] + list(ours.named_parameters()),
                                got, exp):
        assert (a is None) == (b is None), pname
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=lambda m, n=pname: f"{n}: {m}")


def test_default_is_graphscale_and_bad_name_is_config_error():
    from graphscale.nn.conv import GENConv
    for model in (DeeperGCN(4, 4, 2, num_layers=1), RevGNN(4, 4, 2, num_layers=2), DEQGNN(4, 4, 2)):
        convs = [m for m in model.modules() if type(m).__name__ == "GENConv"]
        assert convs and all(isinstance(m, GENConv) for m in convs)
    for cls in (lambda c: DeeperGCN(4, 4, 2, num_layers=1, conv=c), lambda c: RevGNN(4, 4, 2, num_layers=1, conv=c),
                lambda c: DEQGNN(4, 4, 2, conv=c)):
        with pytest.raises(ConfigError, match="'dgl'"):
            cls("dgl")


def test_config_key_reaches_every_genconv_model():
    from graphscale.nn.conv import GENConv
    from graphscale.train.build import DatasetInfo, build_model, model_keys
    from graphscale.train.config import ModelConfig
    info = DatasetInfo(num_features=5, num_outputs=3, edge_dim=2)
    for name in ("deepergcn", "revgnn", "wt-revgnn", "deq-gnn"):
        assert "conv" in model_keys(name)
        for conv, cls in (("graphscale", GENConv), ("pyg", None)):
            model = build_model(ModelConfig(name=name, hidden_channels=8, num_layers=2, conv=conv), info)
            convs = [m for m in model.modules() if type(m).__name__ == "GENConv"]
            assert convs, name
            assert all(isinstance(m, GENConv) == (cls is not None) for m in convs), (name, conv)
    assert ModelConfig().conv == "graphscale"
