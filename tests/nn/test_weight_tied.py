"""Weight-tied stacks: O(1) parameters, exact gradients (vs disabled / untied-equivalent runs)."""
import pytest
import torch
from torch import nn
from torch_geometric.nn import SAGEConv

from graphscale.errors import ConfigError
from graphscale.memory.accounting import count_saved_bytes
from graphscale.nn.reversible import GroupRevBlock
from graphscale.nn.weight_tied import WeightTiedResidual, WeightTiedReversible


class Block(nn.Module):
    def __init__(self, c, p=0.0):
        super().__init__()
        self.norm, self.drop, self.conv = nn.LayerNorm(c), nn.Dropout(p), SAGEConv(c, c)

    def forward(self, x, edge_index, *args):
        return self.conv(self.drop(self.norm(x).relu()), edge_index)


def num_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameters_do_not_grow_with_depth():
    torch.manual_seed(0)
    rb = GroupRevBlock(Block(4), num_groups=2)
    assert num_params(WeightTiedReversible(rb, 1)) == num_params(WeightTiedReversible(rb, 500)) == num_params(rb)
    b = Block(8)
    assert num_params(WeightTiedResidual(b, 300)) == num_params(b)


def run(model, x, ei, seed=5):
    model.zero_grad()
    xx = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(xx * 1.0, ei)
    out.pow(2).sum().backward()
    return out.detach(), [xx.grad] + [p.grad.clone() for p in model.parameters()]


def test_wt_revgnn_gradients_equal_disabled_run():
    ei = torch.randint(0, 30, (2, 120), generator=torch.Generator().manual_seed(0))
    x = torch.randn(30, 8, dtype=torch.float64)
    torch.manual_seed(0)
    block = GroupRevBlock(Block(4, p=0.3), num_groups=2).double()
    out_r, g_r = run(WeightTiedReversible(block, 12), x, ei)
    block.disable = True
    out_d, g_d = run(WeightTiedReversible(block, 12), x, ei)
    torch.testing.assert_close(out_r, out_d, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_r, g_d):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_wt_resgnn_equals_explicit_loop():
    ei = torch.randint(0, 30, (2, 120), generator=torch.Generator().manual_seed(1))
    x = torch.randn(30, 6, dtype=torch.float64)
    torch.manual_seed(0)
    block = Block(6).double()
    out, g = run(WeightTiedResidual(block, 5), x, ei)
    h = x.clone()
    for _ in range(5):
        h = h + block(h, ei)
    torch.testing.assert_close(out, h.detach())
    assert all(t is not None and torch.isfinite(t).all() for t in g)


def test_wt_revgnn_saved_bytes_flat_wt_resgnn_linear():
    torch.manual_seed(0)
    ei = torch.randint(0, 100, (2, 400))
    rb = GroupRevBlock(Block(8), num_groups=2)
    res = Block(16)

    def saved(model):
        x = torch.randn(100, 16, requires_grad=True)
        with count_saved_bytes(exclude=model) as c:
            out = model(x * 1.0, ei)
        out.sum().backward()
        return c.total
    assert saved(WeightTiedReversible(rb, 2)) == saved(WeightTiedReversible(rb, 30)) == 100 * 16 * 4
    assert saved(WeightTiedResidual(res, 30)) > 10 * saved(WeightTiedResidual(res, 2))


def test_bad_depth_and_block():
    with pytest.raises(ConfigError, match="num_layers must be an integer >= 1, got 0"):
        WeightTiedResidual(Block(4), 0)
    with pytest.raises(ConfigError, match="takes a GroupRevBlock"):
        WeightTiedReversible(Block(4), 3)
