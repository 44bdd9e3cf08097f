"""Deep equilibrium blocks: implicit gradients vs unrolled, solvers, statistics, failures."""
import math

import pytest
import torch
from torch import nn

from graphscale.errors import ConfigError, TrainingError
from graphscale.memory.accounting import count_saved_bytes
from graphscale.nn.deq import DEQBlock, DEQConvergenceWarning
from graphscale.nn.solvers import SOLVERS, get_solver


class Contractive(nn.Module):
    """``z -> tanh(W z A_mean + U x)`` with ``||W|| < 1``: a contraction in z."""

    def __init__(self, d, scale=0.3, p=0.0):
        super().__init__()
        self.W, self.U = nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(p)
        with torch.no_grad():
            self.W.weight.mul_(scale / max(1e-6, float(torch.linalg.matrix_norm(self.W.weight, 2))))

    def forward(self, z, x, edge_index, *args):
        src, dst = edge_index
        agg = torch.zeros_like(z).index_add_(0, dst, z[src]) / 4.0  # mean-ish over ~4 neighbours
        return torch.tanh(self.W(self.drop(agg)) + self.U(x))


def setup(d=5, n=20, seed=0, **kw):
    torch.manual_seed(seed)
    ei = torch.stack([torch.arange(n).repeat_interleave(4), torch.randint(0, n, (4 * n,))])
    return Contractive(d, **kw).double(), torch.randn(n, d, dtype=torch.float64), ei


def grads(block, x, ei, seed=3):
    block.zero_grad()
    xx = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    z = block(xx, ei)
    (z.pow(3).sum() + z.sum()).backward()
    return z.detach(), [xx.grad] + [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("solver", ["fixed-point", "anderson", "broyden"])
def test_implicit_gradients_match_unrolled(solver):
    f, x, ei = setup()
    z_i, g_i = grads(DEQBlock(f, solver=solver, max_iter=200, tol=1e-11), x, ei)
    z_u, g_u = grads(DEQBlock(f, max_iter=80, disable=True), x, ei)  # contraction 0.3^80: exact
    torch.testing.assert_close(z_i, z_u, rtol=1e-8, atol=1e-9)
    for a, b in zip(g_i, g_u):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_dropout_is_one_fixed_function_per_call():
    f, x, ei = setup(p=0.3)
    z_i, g_i = grads(DEQBlock(f, solver="anderson", max_iter=200, tol=1e-11), x, ei)
    z_u, g_u = grads(DEQBlock(f, max_iter=80, disable=True), x, ei)
    torch.testing.assert_close(z_i, z_u, rtol=1e-8, atol=1e-9)
    for a, b in zip(g_i, g_u):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_stats_exposed_and_returned():
    f, x, ei = setup()
    block = DEQBlock(f, solver="anderson", max_iter=50, tol=1e-6)
    z, stats = block(x.requires_grad_(), ei, return_stats=True)
    assert stats["forward_converged"] and stats["forward_residual"] <= 1e-6
    assert 1 < stats["forward_iterations"] <= 50
    z.sum().backward()
    assert block.stats["backward_converged"] and block.stats["backward_iterations"] >= 1
    # Anderson needs fewer evaluations than plain iteration on a slower contraction
    f2, x2, ei2 = setup(scale=0.9)
    iters = {}
    for s in ("fixed-point", "anderson"):
        b = DEQBlock(f2, solver=s, max_iter=300, tol=1e-8)
        with torch.no_grad():
            b(x2, ei2)
        iters[s] = b.stats["forward_iterations"]
    assert iters["anderson"] < iters["fixed-point"]


def test_memory_independent_of_iterations():
    f, x, ei = setup(d=8, n=50)
    f = f.float()
    x = x.float().requires_grad_(True)

    def saved(block):
        with count_saved_bytes(exclude=f) as c:
            z = block(x, ei)
        z.sum().backward()
        return c.total
    implicit = {it: saved(DEQBlock(f, solver="fixed-point", max_iter=it, tol=1e-30, warn=False)) for it in (5, 40)}
    assert implicit[5] == implicit[40] == 2 * 50 * 8 * 4  # Z* and X, whatever the iterations
    assert saved(DEQBlock(f, max_iter=40, disable=True)) > 5 * saved(DEQBlock(f, max_iter=5, disable=True))


def test_non_convergence_warns_with_residual():
    f, x, ei = setup(scale=0.95)
    block = DEQBlock(f, solver="fixed-point", max_iter=3, tol=1e-10)
    with pytest.warns(DEQConvergenceWarning, match=r"relative residual \S+ > tol 1e-10 after 3 iterations"):
        with torch.no_grad():
            block(x, ei)
    assert not block.stats["forward_converged"]


class Exploding(nn.Module):
    def forward(self, z, x, edge_index):
        return 3.0 * z + x  # expansive: the iteration blows up


class NaNs(nn.Module):
    def forward(self, z, x, edge_index):
        return torch.log(z - 1.0) + x  # NaN at z = 0


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_divergence_raises_training_error(solver):
    x = torch.randn(10, 3)
    if solver == "fixed-point":  # (Anderson and Broyden solve this affine map exactly: z* = -x / 2)
        with pytest.raises(TrainingError, match="diverged: relative residual"):
            with torch.no_grad():
                DEQBlock(Exploding(), solver=solver, max_iter=200, tol=1e-6)(x, None)
    with pytest.raises(TrainingError, match="nan|NaN"):
        with torch.no_grad():
            DEQBlock(NaNs(), solver=solver, max_iter=10)(x, None)


def test_bad_configuration_errors():
    f, x, ei = setup()
    with pytest.raises(ConfigError, match="unknown fixed-point solver 'newton'; expected one of anderson, broyden"):
        DEQBlock(f, solver="newton")
    with pytest.raises(ConfigError, match="unknown fixed-point solver"):
        get_solver("picard")
    with pytest.raises(ConfigError, match="max_iter must be >= 1"):
        DEQBlock(f, max_iter=0)

    class Shrink(nn.Module):
        def forward(self, z, x, edge_index):
            return z[:, :2]
    with pytest.raises(ConfigError, match="must keep the shape of z"):
        with torch.no_grad():
            DEQBlock(Shrink())(x, ei)
    with pytest.raises(ConfigError, match="BatchNorm"):
        DEQBlock(nn.BatchNorm1d(5))


def test_solvers_find_known_fixed_point():
    # z = 0.5 z + 1 has z* = 2 everywhere
    for name, solver in SOLVERS.items():
        res = solver(lambda z: 0.5 * z + 1.0, torch.zeros(7, 3, dtype=torch.float64), max_iter=100, tol=1e-10)
        assert res.converged, name
        torch.testing.assert_close(res.z, torch.full((7, 3), 2.0, dtype=torch.float64), rtol=1e-8, atol=1e-8)
        assert len(res.trace) == res.iterations and math.isfinite(res.residual)
