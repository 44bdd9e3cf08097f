"""Fixed-point solvers for deep equilibrium blocks (registry keyed by name).

A solver finds ``z* = g(z*)`` for a map ``g: Tensor -> Tensor`` of one fixed shape, starting from
``z0``, and stops when the relative residual ``||g(z) - z|| / (||g(z)|| + eps)`` falls below ``tol``
or after ``max_iter`` evaluations of ``g``. The same solvers serve the forward problem and the
adjoint (backward) problem of :class:`graphscale.nn.deq.DEQBlock`.

* ``fixed-point``: ``z <- g(z)`` (Picard / forward iteration), the baseline.
* ``anderson``: Anderson acceleration (Anderson 1965; the form of Bai, Kolter, Koltun, "Deep
  Equilibrium Models", NeurIPS 2019 and the implicit-layers tutorial by Kolter, Duvenaud, Johnson):
  the next iterate mixes the last ``m`` images with weights that minimise the combined residual.
* ``broyden``: limited-memory "good" Broyden quasi-Newton on ``g(z) - z = 0`` (Broyden 1965; the
  solver of the DEQ paper), inverse Jacobian kept as ``-I + U V^T``.

Add a solver with ``@register_solver("name")``; a function ``(g, z0, max_iter, tol, **options) ->
SolverResult``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from graphscale.errors import ConfigError

__all__ = ["SolverResult", "SOLVERS", "register_solver", "get_solver", "fixed_point", "anderson", "broyden"]

_EPS = 1e-9


@dataclass
class SolverResult:
    """Outcome of a solve.

    Attributes:
        z: the last iterate (the solution if ``converged``), shape of ``z0``.
        iterations: evaluations of ``g`` used.
        residual: relative residual ``||g(z) - z|| / (||g(z)|| + eps)`` at the last (or, for
            Broyden, the best) iterate ``z``; the returned tensor is its image ``g(z)``, one more
            contraction step closer for a contractive ``g``.
        converged: ``residual <= tol``.
        trace: residual after every iteration (for logging / plots).
    """

    z: Tensor
    iterations: int
    residual: float
    converged: bool
    trace: list[float] = field(default_factory=list)


Solver = Callable[..., SolverResult]
SOLVERS: dict[str, Solver] = {}


def register_solver(name: str):
    def deco(fn: Solver) -> Solver:
        SOLVERS[name] = fn
        return fn
    return deco


def get_solver(name: str) -> Solver:
    """The solver registered as ``name``; a :class:`ConfigError` listing the valid names otherwise."""
    if name not in SOLVERS:
        raise ConfigError(f"unknown fixed-point solver {name!r}; expected one of {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


def _rel(gz: Tensor, z: Tensor) -> float:
    return float((gz - z).norm() / (gz.norm() + _EPS))


def _finite(r: float) -> bool:
    return r == r and r != float("inf")


@register_solver("fixed-point")
def fixed_point(g: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int = 50, tol: float = 1e-4) -> SolverResult:
    """Forward iteration ``z_{k+1} = g(z_k)``; converges linearly when ``g`` is a contraction."""
    z, trace = z0, []
    res, k = float("inf"), 0
    for k in range(1, max_iter + 1):
        gz = g(z)
        res = _rel(gz, z)
        trace.append(res)
        z = gz
        if res <= tol or not _finite(res):
            break
    return SolverResult(z, k, res, res <= tol, trace)


@register_solver("anderson")
def anderson(g: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int = 50, tol: float = 1e-4, m: int = 5,
             lam: float = 1e-4, beta: float = 1.0) -> SolverResult:
    """Anderson acceleration with memory ``m``, relative ridge ``lam`` and mixing ``beta``.

    Keeps ``m`` past iterates and images (``2 m`` tensors of the shape of ``z0``): memory is O(m), not
    O(iterations).
    """
    shape, d = z0.shape, z0.numel()
    dt = z0.dtype
    X = z0.new_zeros(m, d)
    F = z0.new_zeros(m, d)
    X[0] = z0.reshape(-1)
    F[0] = g(z0).reshape(-1)
    trace = [_rel(F[0], X[0])]
    if trace[0] <= tol or max_iter <= 1 or not _finite(trace[0]):
        return SolverResult(F[0].view(shape).clone(), 1, trace[0], trace[0] <= tol, trace)
    X[1] = F[0]
    F[1] = g(F[0].view(shape)).reshape(-1)
    trace.append(_rel(F[1], X[1]))
    k, best = 1, 1
    # the small bordered least-squares system, solved in float64 for stability
    H = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=z0.device)
    H[0, 1:] = H[1:, 0] = 1
    y = torch.zeros(m + 1, 1, dtype=torch.float64, device=z0.device)
    y[0] = 1
    for k in range(2, max_iter):
        if trace[-1] <= tol or not _finite(trace[-1]):
            break
        n = min(k, m)
        G = (F[:n] - X[:n]).double()
        GG = G @ G.T
        # ridge relative to the residuals' scale, so it does not swamp them near convergence
        H[1:n + 1, 1:n + 1] = GG + lam * float(GG.diagonal().max()) * torch.eye(n, dtype=torch.float64,
                                                                                 device=z0.device)
        alpha = torch.linalg.solve(H[:n + 1, :n + 1], y[:n + 1])[1:n + 1, 0].to(dt)
        X[k % m] = beta * (alpha @ F[:n]) + (1 - beta) * (alpha @ X[:n])
        F[k % m] = g(X[k % m].view(shape)).reshape(-1)
        trace.append(_rel(F[k % m], X[k % m]))
        best = k
    i = best % m
    res = trace[-1]
    # return the image g(z) of the last iterate: one free extra contraction step
    return SolverResult(F[i].view(shape).clone(), len(trace), res, res <= tol, trace)


@register_solver("broyden")
def broyden(g: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int = 50, tol: float = 1e-4,
            memory: int = 30) -> SolverResult:
    """Limited-memory good Broyden on ``r(z) = g(z) - z = 0`` with unit steps.

    The inverse Jacobian of ``r`` starts at ``-I`` (so the first step is a fixed-point step) and gets
    a rank-one update per iteration, keeping the last ``memory`` pairs.
    """
    shape = z0.shape
    x = z0.reshape(-1)
    gx_full = g(z0).reshape(-1)
    r = gx_full - x
    trace = [float(r.norm() / (gx_full.norm() + _EPS))]
    U: list[Tensor] = []
    VT: list[Tensor] = []

    def matvec(v: Tensor) -> Tensor:  # (-I + U V^T) v
        out = -v
        for u, vt in zip(U, VT):
            out = out + u * (vt @ v)
        return out

    def rmatvec(v: Tensor) -> Tensor:  # v^T (-I + U V^T)
        out = -v
        for u, vt in zip(U, VT):
            out = out + vt * (v @ u)
        return out

    best_x, best_res, best_img = x, trace[0], gx_full
    k = 1
    while k < max_iter and trace[-1] > tol and _finite(trace[-1]):
        dx = -matvec(r)
        x_new = x + dx
        gx_new = g(x_new.view(shape)).reshape(-1)
        r_new = gx_new - x_new
        k += 1
        res = float(r_new.norm() / (gx_new.norm() + _EPS))
        trace.append(res)
        dr = r_new - r
        x, r = x_new, r_new
        if res < best_res:
            best_x, best_res, best_img = x, res, gx_new
        vt = rmatvec(dx)
        denom = vt @ dr
        if denom.abs() > _EPS:
            U.append((dx - matvec(dr)) / denom)
            VT.append(vt)
            if len(U) > memory:
                U.pop(0)
                VT.pop(0)
    return SolverResult(best_img.view(shape).clone(), k, best_res, best_res <= tol, trace)
