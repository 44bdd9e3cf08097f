"""compress_model on functional calls in module forwards (graphscale.memory.functional): exact bytes,
gradients against float32 / analytic derivatives, and what find_uncompressed lists."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphscale.memory import (UncompressedLayersError, compress_model, compressed_activations, count_saved_bytes,
                               find_uncompressed)
from graphscale.memory.random_streams import set_seed

N, D = 100, 64  # N * D = 6400 values: 25 groups of 256


def _qbytes(numel: int, bits: int = 2, group: int = 256) -> int:
    """A quantized copy: the codes of whole groups + float16 (min, step) per group."""
    groups = math.ceil(numel / group)
    return groups * group * bits // 8 + groups * 4


def _mask_bytes(numel: int) -> int:
    return math.ceil(numel / 8)


class FunctionalNet(nn.Module):
    """Linear -> F.relu -> F.dropout -> Linear -> F.gelu -> Linear, as a user writes it."""

    def __init__(self, d: int = D, p: float = 0.5):
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.p = p

    def forward(self, x):
        h = F.relu(self.lin1(x))
        h = F.dropout(h, self.p, self.training)
        h = F.gelu(self.lin2(h))
        return self.lin3(h)


def _saved(model, x):
    model.train()
    with count_saved_bytes(exclude=[*model.parameters(), x]) as c:
        model(x)
    return c


def test_functional_calls_saved_bytes_exact():
    torch.manual_seed(0)
    model, x = FunctionalNet(), torch.randn(N, D)
    nd = N * D
    # float32: relu output, dropout's float mask (CPU), lin2 input, gelu input, lin3 input: 5 x [N, D] float32
    assert _saved(model, x).total == 5 * 4 * nd
    compress_model(model, bits=2, strict=True)
    c = _saved(model, x)
    # relu: 1-bit mask; dropout: 1-bit keep mask; lin2 input, gelu derivative, lin3 input: 2 bits + (min, step)
    # per 256 values; lin1's input is the step input (kept by reference, not counted)
    assert c.total == 2 * _mask_bytes(nd) + 3 * _qbytes(nd) == 6700
    compress_model(model, bits=4, strict=True)
    assert _saved(model, x).total == 2 * _mask_bytes(nd) + 3 * _qbytes(nd, bits=4)
    compress_model(model, disable=True)  # the off switch: exact storage again (Linear inputs + torch's ops)
    assert _saved(model, x).total == 5 * 4 * nd


def test_functional_calls_and_module_forms_store_the_same():
    class ModuleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1, self.act, self.drop, self.lin2 = nn.Linear(D, D), nn.ReLU(), nn.Dropout(0.5), nn.Linear(D, D)

        def forward(self, x):
            return self.lin2(self.drop(self.act(self.lin1(x))))

    class MethodNet(ModuleNet):
        def forward(self, x):
            return self.lin2(F.dropout(self.lin1(x).relu(), 0.5, self.training))

    x = torch.randn(N, D)
    a, b = compress_model(ModuleNet(), bits=2), compress_model(MethodNet(), bits=2)
    # relu mask + dropout mask + lin2 input: no tensor compressed twice, none left in float32
    assert _saved(a, x).total == _saved(b, x).total == 2 * _mask_bytes(N * D) + _qbytes(N * D)


def test_relu_leaky_relu_dropout_gradients_exact():
    class Masks(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(D))

        def forward(self, x):
            h = x * self.w
            h = F.leaky_relu(h, 0.2) + torch.relu(h - 0.1)
            h = F.dropout(h, 0.3, self.training)
            h2 = (h + 1).relu_()  # in place on an intermediate
            return F.relu(h2, inplace=False) * 2

    torch.manual_seed(0)
    ref = Masks()
    x = torch.randn(N, D, requires_grad=True)
    g = torch.randn(N, D)

    def grads(model):
        torch.manual_seed(3)
        out = model(x)
        return out, torch.autograd.grad(out, [x, model.w], g)

    out0, g0 = grads(ref)
    model = Masks()
    model.load_state_dict(ref.state_dict())
    compress_model(model, bits=2, strict=True)
    with count_saved_bytes(exclude=[*model.parameters(), x]) as c:
        out1, g1 = grads(model)
    assert torch.equal(out0, out1)  # same dropout draw, exact forward
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)  # masks: exact gradients
    # x * w saves x and w (input and parameter, excluded); then 5 masks of 1 bit per value:
    # leaky_relu, relu, dropout, relu_, relu (`* 2` saves nothing)
    assert c.total == 5 * _mask_bytes(N * D)


@pytest.mark.parametrize("name,fn,deriv", [
    ("gelu", F.gelu, lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    ("sigmoid", torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))),
    ("tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    ("silu", F.silu, lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))),
    ("elu", F.elu, lambda x: torch.where(x > 0, torch.ones_like(x), torch.exp(x))),
])
def test_smooth_activation_gradient_unbiased_against_analytic(name, fn, deriv):
    class Act(nn.Module):
        def forward(self, x):
            return fn(x * 1.0)  # an intermediate, so its derivative is an activation to store

    torch.manual_seed(0)
    x = torch.randn(64, 256, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, 256, dtype=torch.float64)
    exact = g * deriv(x.detach())
    model = Act()
    compress_model(model, bits=8, strict=True)
    got8 = torch.autograd.grad(model(x), x, g)[0]
    # 8 bits: one step of the derivative's range per group of 256 is < 1 % of it
    assert float((got8 - exact).norm() / exact.norm()) < 0.01
    compress_model(model, bits=2, strict=True)
    draws = []
    for k in range(64):
        set_seed(k)
        draws.append(torch.autograd.grad(model(x), x, g)[0])
    one = float((draws[0] - exact).norm() / exact.norm())
    mean = float((torch.stack(draws).mean(0) - exact).norm() / exact.norm())
    assert one > 0.02  # 2 bits really are stored (a single draw is noisy) ...
    assert mean < one / 4  # ... and unbiased: the mean of 64 draws shrinks like 1/sqrt(64) = 1/8


def test_gradients_match_fp32_within_quantisation_tolerance():
    torch.manual_seed(0)
    ref, x = FunctionalNet(), torch.randn(N, D)

    def grads(model):
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout draw in both models
        model(x).pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    g0 = grads(ref)
    model = FunctionalNet()
    model.load_state_dict(ref.state_dict())
    compress_model(model, bits=8, strict=True)
    assert float((grads(model) - g0).norm() / g0.norm()) < 0.02
    compress_model(model, disable=True)
    torch.testing.assert_close(grads(model), g0, rtol=1e-5, atol=1e-6)


class Inner(nn.Module):
    def forward(self, h):
        return F.relu(h) * torch.sigmoid(h)  # relu and sigmoid are covered; the product of two activations is not


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
        self.inner = Inner()
        self.w = nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        h = F.relu(self.enc(x))
        h = self.inner(h)
        return torch.softmax(h @ self.w, -1)


ODD_LEFT = [("inner", "Tensor.mul in forward"), ("<root>", "Tensor.matmul in forward"),
            ("<root>", "torch.softmax in forward")]


def test_find_uncompressed_lists_uncovered_calls_with_module_path():
    torch.manual_seed(0)
    model, x = Odd(), torch.randn(64, 16)
    assert find_uncompressed(model) == []  # no forward seen: calls are invisible
    assert find_uncompressed(model, x) == ODD_LEFT
    assert find_uncompressed(model, (x,)) == ODD_LEFT and find_uncompressed(model, {"x": x}) == ODD_LEFT
    with pytest.raises(UncompressedLayersError, match=r"inner \(Tensor.mul in forward\).*torch.softmax"):
        compress_model(model, strict=True, example_inputs=x)
    assert find_uncompressed(FunctionalNet(), torch.randn(N, D)) == []  # every call covered


def test_first_training_forward_is_checked():
    torch.manual_seed(0)
    model, x = Odd(), torch.randn(64, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress_model(model, bits=2)  # no module left: silent until a forward shows the calls
        model.eval()
        model(x)  # eval / no-grad forwards save nothing and are not checked
    model.train()
    with pytest.warns(UserWarning, match=r"3 call\(s\).*<root> \(Tensor.matmul in forward\)"):
        model(x)
    assert find_uncompressed(model) == ODD_LEFT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)  # checked once
    compress_model(model, bits=2, strict=True)
    with pytest.raises(UncompressedLayersError, match="Tensor.mul"):
        model(x)


def test_find_uncompressed_forward_leaves_model_state_alone():
    torch.manual_seed(0)
    model, x = Odd(), torch.randn(64, 16)
    compress_model(model, bits=2)
    model.eval()
    bn = model.enc[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    state = torch.random.get_rng_state()
    assert find_uncompressed(model, x) == ODD_LEFT
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not model.training and not bn.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]


def test_norms_false_keeps_functional_norms_exact_and_unlisted():
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D)
            self.gamma = nn.Parameter(torch.ones(D))

        def forward(self, x):
            return F.layer_norm(self.lin(x), (D,), self.gamma, None)

    x = torch.randn(N, D)
    exact = compress_model(Normed(), bits=2, norms=False, strict=True, example_inputs=x)
    comp = compress_model(Normed(), bits=2, strict=True, example_inputs=x)
    # torch's layer_norm saves input, mean and rstd ([N, 1] each); the compressed one x_hat (2 bits) + rstd
    assert _saved(exact, x).total == 4 * N * D + 2 * 4 * N
    assert _saved(comp, x).total == _qbytes(N * D) + 4 * N


def test_rule_stays_out_of_listed_modules():
    from torch_geometric.nn import GATConv

    class WithGat(nn.Module):
        def __init__(self):
            super().__init__()
            self.gat = GATConv(D, D, heads=1)

        def forward(self, x, ei):
            return F.relu(self.gat(x, ei))

    torch.manual_seed(0)
    model, x = WithGat(), torch.randn(N, D)
    ei = torch.randint(0, N, (2, 400))
    with pytest.warns(UserWarning, match=r"gat \(GATConv\)"):
        compress_model(model, bits=2)
    # the listed GATConv keeps its own storage (its leaky_relu / dropout inside stay torch's), only the
    # outer relu is rerouted: the listing is the whole truth
    assert find_uncompressed(model, (x, ei)) == [("gat", "GATConv")]
    torch.manual_seed(1)
    ref = WithGat()
    ref.load_state_dict(model.state_dict())
    out = model(x, ei)
    torch.testing.assert_close(out, ref(x, ei))


def test_hooks_keep_expanded_views_exact():
    # PyG's mean aggregation divides by per-node counts broadcast over the features (a zero-stride
    # view): quantizing that view made the gradient of everything below it noisy.
    from torch_geometric.utils import scatter
    torch.manual_seed(0)
    x = torch.randn(300, 64)
    w = torch.randn(64, 64, requires_grad=True)
    index = torch.randint(0, 50, (300,))
    g = torch.randn(50, 64)
    ref = torch.autograd.grad(scatter(x @ w, index, 0, dim_size=50, reduce="mean"), w, g)[0]
    with compressed_activations(bits=2):
        out = scatter(x @ w, index, 0, dim_size=50, reduce="mean")
    got = torch.autograd.grad(out, w, g)[0]
    torch.testing.assert_close(got, ref)  # the aggregation's backward reads only the exact counts
