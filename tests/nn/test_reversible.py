"""Grouped reversible blocks: exact gradients, reconstruction, freed storage, flat memory, errors."""
import pytest
import torch
from torch import nn
from torch_geometric.nn import GENConv, SAGEConv

from graphscale.errors import ConfigError
from graphscale.memory.accounting import count_saved_bytes
from graphscale.nn.reversible import GroupRevBlock, RevStack


class Block(nn.Module):
    """LayerNorm -> ReLU -> Dropout -> SAGEConv (the benchmark's block), width ``c``."""

    def __init__(self, c, p=0.0):
        super().__init__()
        self.norm, self.drop, self.conv = nn.LayerNorm(c), nn.Dropout(p), SAGEConv(c, c)

    def forward(self, x, edge_index, *args):
        return self.conv(self.drop(self.norm(x).relu()), edge_index)


class EdgeBlock(nn.Module):
    """GENConv with edge features (the RevGNN-proteins block)."""

    def __init__(self, c, p=0.1):
        super().__init__()
        self.norm, self.drop = nn.LayerNorm(c), nn.Dropout(p)
        self.conv = GENConv(c, c, aggr="softmax", learn_t=True, edge_dim=c, num_layers=1)

    def forward(self, x, edge_index, edge_attr):
        return self.conv(self.drop(self.norm(x).relu()), edge_index, edge_attr)


def graph(n=40, e=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=g)


def grads_of(model, x, ei, *args, seed=7):
    """Loss gradients w.r.t. the input, the tensor args and all parameters (one training step)."""
    model.zero_grad()
    xx = x.detach().clone().requires_grad_(True)
    aa = [a.detach().clone().requires_grad_(True) for a in args]
    torch.manual_seed(seed)
    out = model(xx * 1.0, ei, *aa)
    (out.pow(2).sum() + out.sum()).backward()
    return out.detach(), [xx.grad] + [a.grad for a in aa] + [p.grad.clone() for p in model.parameters()]


def make_stack(depth, c, groups=2, p=0.0, seed=1, block=Block, **kw):
    torch.manual_seed(seed)
    return RevStack([GroupRevBlock(block(c // groups, p), num_groups=groups) for _ in range(depth)], **kw).double()


@pytest.mark.parametrize("groups,p", [(2, 0.0), (3, 0.3)])
def test_stack_gradients_equal_disabled_run(groups, p):
    ei = graph()
    x = torch.randn(40, 6 * groups, dtype=torch.float64)
    rev = make_stack(4, 6 * groups, groups, p)
    ref = make_stack(4, 6 * groups, groups, p, disable=True)
    ref.load_state_dict(rev.state_dict())
    out_r, g_r = grads_of(rev, x, ei)
    out_d, g_d = grads_of(ref, x, ei)
    torch.testing.assert_close(out_r, out_d, rtol=1e-10, atol=1e-10)  # float64: reconstruction error only
    for a, b in zip(g_r, g_d):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_edge_features_split_and_whole_get_gradients():
    """An edge tensor of width D is split across groups; one of another width goes whole to each."""
    ei = graph()
    c, groups = 8, 2
    x = torch.randn(40, c, dtype=torch.float64)
    edge_split = torch.randn(ei.size(1), c, dtype=torch.float64)      # width D: split into [E, D/2]
    rev = make_stack(3, c, groups, 0.2, block=EdgeBlock)
    ref = make_stack(3, c, groups, 0.2, block=EdgeBlock, disable=True)
    ref.load_state_dict(rev.state_dict())
    out_r, g_r = grads_of(rev, x, ei, edge_split)
    out_d, g_d = grads_of(ref, x, ei, edge_split)
    torch.testing.assert_close(out_r, out_d, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_r, g_d):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    assert g_r[1].abs().sum() > 0

    edge_whole = torch.randn(ei.size(1), c // groups, dtype=torch.float64)  # group width: passed whole
    out_r, g_r = grads_of(rev, x, ei, edge_whole)
    out_d, g_d = grads_of(ref, x, ei, edge_whole)
    for a, b in zip(g_r, g_d):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_single_blocks_chained_and_gradcheck():
    ei = graph(12, 40)
    torch.manual_seed(0)
    blocks = nn.ModuleList([GroupRevBlock(Block(2), num_groups=2) for _ in range(2)]).double()
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)

    def fn(x):
        h = x * 1.0  # the blocks free their input: give them a temporary
        for b in blocks:
            h = b(h, ei)
        return h
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_inputs_reconstructed_after_120_blocks_float32():
    torch.manual_seed(0)
    ei = graph(300, 1500)
    stack = RevStack([GroupRevBlock(Block(8), num_groups=2) for _ in range(120)]).eval()
    x = torch.randn(300, 16)
    with torch.no_grad():
        y = stack(x, ei)
        x_rec = stack.inverse(y, ei)
    # float32 round-off accumulated over 120 inversions
    torch.testing.assert_close(x_rec, x, rtol=1e-4, atol=1e-4)


def test_forward_frees_input_and_backward_restores_it():
    torch.manual_seed(0)
    ei = graph(50, 200)
    stack = RevStack([GroupRevBlock(Block(4), num_groups=2) for _ in range(5)])
    x = torch.randn(50, 8, requires_grad=True)
    h = x * 2.0
    expected = h.detach().clone()
    y = stack(h, ei)
    assert h.untyped_storage().nbytes() == 0  # really freed
    y.sum().backward()
    assert h.untyped_storage().nbytes() == h.numel() * 4
    torch.testing.assert_close(h.detach(), expected, rtol=1e-5, atol=1e-5)  # reconstructed
    torch.testing.assert_close(x.grad.shape, x.shape)

    # free_input=False keeps it; an input without grad is never freed
    keep = RevStack(list(stack.blocks), free_input=False)
    h2 = x * 2.0
    keep(h2, ei).sum().backward()
    assert h2.untyped_storage().nbytes() == h2.numel() * 4
    plain = torch.randn(50, 8)
    stack(plain, ei).sum().backward()
    assert plain.untyped_storage().nbytes() == plain.numel() * 4


def saved_bytes(model, n=200, e=1000, c=16, **kw):
    ei = graph(n, e)
    x = torch.randn(n, c, requires_grad=True)
    with count_saved_bytes(exclude=model) as counter:
        out = model(x * 1.0, ei)
    out.sum().backward()
    return counter.total


def test_saved_bytes_flat_in_depth():
    """Exact accounting: the stack keeps its output alone, whatever the depth."""
    torch.manual_seed(0)
    shallow = RevStack([GroupRevBlock(Block(8, 0.1), num_groups=2) for _ in range(2)])
    deep = RevStack([GroupRevBlock(Block(8, 0.1), num_groups=2) for _ in range(40)])
    b2, b40 = saved_bytes(shallow), saved_bytes(deep)
    assert b2 == b40 == 200 * 16 * 4   # the output [N, D] float32
    # the disabled (plain autograd) stack grows linearly
    deep.disable = True
    shallow.disable = True
    assert saved_bytes(deep) > 10 * saved_bytes(shallow)


def test_repeated_backward_with_retain_graph_matches_disabled_run():
    """Backward releases the stack output; a second backward (retain_graph) recomputes it from the input."""
    ei = graph()
    x = torch.randn(40, 12, dtype=torch.float64)
    rev, ref = make_stack(3, 12, 2, 0.3), make_stack(3, 12, 2, 0.3, disable=True)
    ref.load_state_dict(rev.state_dict())
    grads = []
    for model in (rev, ref):
        model.zero_grad()
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(3)
        loss = model(xx * 1.0, ei).pow(2).sum()
        loss.backward(retain_graph=True)
        loss.backward()  # accumulates: every gradient is twice the single-step one
        grads.append([xx.grad] + [q.grad for q in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_parameter_gradients_share_one_buffer():
    """The stack hands out its parameter gradients as views of one buffer (no per-tensor heap blocks)."""
    ei = graph()
    rev = make_stack(5, 8).float()
    rev(torch.randn(40, 8, requires_grad=True), ei).sum().backward()
    grads = [q.grad for q in rev.parameters()]
    assert all(g is not None and g.shape == q.shape for g, q in zip(grads, rev.parameters()))
    assert len({g.untyped_storage().data_ptr() for g in grads}) == 1
    ref = make_stack(5, 8, disable=True).float()
    ref.load_state_dict(rev.state_dict())
    torch.manual_seed(0)
    x = torch.randn(40, 8)
    for m in (rev, ref):
        m.zero_grad()
    rev(x.clone().requires_grad_(True), ei).sum().backward()
    ref(x.clone().requires_grad_(True), ei).sum().backward()
    for a, b in zip(rev.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_output_modified_in_place_is_detected():
    torch.manual_seed(0)
    stack = RevStack([GroupRevBlock(Block(4), num_groups=2)])
    y = stack(torch.randn(30, 8, requires_grad=True) * 1.0, graph(30, 90))
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_rng_state_after_step_matches_disabled_path():
    """Seeding consumes one draw per call in both paths; dropout does not perturb the caller's RNG."""
    ei = graph()
    x = torch.randn(40, 8, dtype=torch.float64)
    rev = make_stack(3, 8, 2, 0.5)
    ref = make_stack(3, 8, 2, 0.5, disable=True)
    ref.load_state_dict(rev.state_dict())
    grads_of(rev, x, ei, seed=3)
    after_rev = torch.rand(3)
    grads_of(ref, x, ei, seed=3)
    after_ref = torch.rand(3)
    torch.testing.assert_close(after_rev, after_ref)


def test_bad_inputs_have_clear_errors():
    ei = graph()
    block = GroupRevBlock(Block(3), num_groups=2)
    with pytest.raises(ConfigError, match="7 channels cannot be split into 2"):
        block(torch.randn(40, 7), ei)

    class Grow(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 5)

        def forward(self, x, edge_index):
            return self.lin(x)
    with pytest.raises(ConfigError, match=r"returned \(40, 5\) for an input of shape \(40, 3\)"):
        GroupRevBlock(Grow(), num_groups=2)(torch.randn(40, 6, requires_grad=True), ei)

    class WithBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x, edge_index):
            return self.bn(x)
    with pytest.raises(ConfigError, match="BatchNorm1d.*running statistics.*LayerNorm"):
        GroupRevBlock(WithBN(), num_groups=2)
    # without running statistics BatchNorm is a deterministic function of the input: accepted
    GroupRevBlock(nn.BatchNorm1d(3, track_running_stats=False), num_groups=2)

    with pytest.raises(ConfigError, match="num_groups must be >= 2"):
        GroupRevBlock(Block(3), num_groups=1)
    with pytest.raises(ConfigError, match="give num_groups"):
        GroupRevBlock(Block(3))
    with pytest.raises(ConfigError, match="takes GroupRevBlock"):
        RevStack([Block(3)])


def test_revgnn_model_matches_disabled_and_registry_builds_all():
    from graphscale.nn.models import RevGNN
    from graphscale.train.build import DatasetInfo, build_model
    from graphscale.train.config import load_config

    ei = graph(30, 120)
    x, ea = torch.randn(30, 5, dtype=torch.float64), torch.rand(120, 3, dtype=torch.float64)
    torch.manual_seed(0)
    rev = RevGNN(5, 8, 4, num_layers=3, edge_dim=3, dropout=0.2, aggr="softmax").double()
    torch.manual_seed(0)
    ref = RevGNN(5, 8, 4, num_layers=3, edge_dim=3, dropout=0.2, aggr="softmax", disable=True).double()
    ref.load_state_dict(rev.state_dict())
    out_r, g_r = grads_of(rev, x, ei, ea)
    out_d, g_d = grads_of(ref, x, ei, ea)
    torch.testing.assert_close(out_r, out_d, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_r, g_d):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)

    info = DatasetInfo(num_features=5, num_outputs=4, edge_dim=3)
    counts = {}
    for name in ("revgnn", "wt-revgnn", "deq-gnn"):
        cfg = load_config("configs/quickstart-revgnn.yaml", [f"model.name={name}", "model.num_layers=4"]).model
        model = build_model(cfg, info)
        out = model(x.float(), ei, ea.float())
        assert out.shape == (30, 4)
        out.sum().backward()
        assert model.node_encoder.weight.grad.abs().sum() > 0 and model.edge_encoder.weight.grad.abs().sum() > 0
        counts[name] = sum(p.numel() for p in model.parameters())
    assert counts["wt-revgnn"] < counts["revgnn"]
    with pytest.raises(ConfigError, match="hidden_channels=9 must split into num_groups=2"):
        RevGNN(5, 9, 4, num_layers=2)
