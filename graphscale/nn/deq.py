"""Deep equilibrium (DEQ) GNN blocks: an infinitely deep weight-tied network in O(1) memory.

Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019; as a GNN block in Li, Müller,
Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021, Sec. 3.3.

The block's output is the fixed point ``Z* = f(Z*, X, A)`` found by a root solver
(:mod:`graphscale.nn.solvers`). Backward uses the implicit function theorem instead of storing the
solver's iterations: with ``J = df/dZ`` at ``Z*`` and ``G = dL/dZ*``, the adjoint ``u`` solves the
linear fixed point ``u = J^T u + G`` (found by the same solver, each step one vector-Jacobian
product), and the parameter / input gradients are ``(df/dtheta)^T u``, ``(df/dX)^T u``. Memory is one
evaluation of ``f`` at a time plus the solver's own history (Anderson: ``m`` copies of ``Z``).

Randomness inside ``f`` (dropout) is drawn from one seed per call and every evaluation of ``f``
runs under it (DESIGN.md rule 7), so ``f`` is one fixed function while it is being solved.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor, nn

from graphscale.errors import ConfigError, TrainingError
from graphscale.saved_bytes import report_ctx
from graphscale.nn.reversible import SeededRNG, autocast_state, check_reversible_module
from graphscale.nn.solvers import SolverResult, get_solver

__all__ = ["DEQBlock", "DEQConvergenceWarning"]

_SEED_MOD = 2**62


class DEQConvergenceWarning(UserWarning):
    """A DEQ solve stopped at ``max_iter`` above its tolerance."""


class DEQBlock(nn.Module):
    """Deep equilibrium block ``Z* = f(Z*, X, edge_index, *args)`` with implicit backward.

    Args:
        f: module ``f(z, x, edge_index, *args) -> z`` with ``z`` of the shape of ``x`` (for a GNN:
            input injection + a graph convolution, e.g. ``LayerNorm(relu(conv(z) + x))``). It should
            be contractive in ``z`` for the solve to converge.
        solver: forward solver name from :data:`graphscale.nn.solvers.SOLVERS` (``fixed-point``,
            ``anderson``, ``broyden``).
        max_iter, tol: forward solver limits (relative residual).
        backward_solver, backward_max_iter, backward_tol: the same for the adjoint solve (default:
            the forward ones).
        solver_options: extra keyword arguments for the solvers (e.g. ``{"m": 5}`` for Anderson).
        disable: unroll ``max_iter`` fixed-point steps with plain autograd instead (stores every
            iteration; the memory baseline and test oracle).
        preserve_rng_state: seed dropout inside ``f`` once per call (see the module docstring).
        warn: warn (:class:`DEQConvergenceWarning`) when a solve ends above its tolerance.
        divergence_threshold: a relative residual above this (or NaN / inf) raises
            :class:`~graphscale.errors.TrainingError`.

    Attributes:
        stats: convergence of the last call: ``forward_iterations``, ``forward_residual``,
            ``forward_converged``, and after backward ``backward_iterations``, ``backward_residual``,
            ``backward_converged``. :meth:`forward` with ``return_stats=True`` returns them too.

    Shapes: ``x [N, D]`` -> ``Z* [N, D]``.
    """

    def __init__(self, f: nn.Module, solver: str = "anderson", max_iter: int = 30, tol: float = 1e-4,
                 backward_solver: str | None = None, backward_max_iter: int | None = None,
                 backward_tol: float | None = None, solver_options: dict | None = None, disable: bool = False,
                 preserve_rng_state: bool = True, warn: bool = True, divergence_threshold: float = 1e3):
        super().__init__()
        self.f = f
        check_reversible_module(f)  # BatchNorm running stats would be updated once per solver iteration
        get_solver(solver)
        get_solver(backward_solver or solver)
        if max_iter < 1:
            raise ConfigError(f"DEQBlock: max_iter must be >= 1, got {max_iter}")
        if not tol > 0:
            raise ConfigError(f"DEQBlock: tol must be > 0, got {tol}")
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.backward_solver = backward_solver or solver
        self.backward_max_iter = backward_max_iter or max_iter
        self.backward_tol = backward_tol or tol
        self.solver_options = dict(solver_options or {})
        self.disable = disable
        self.preserve_rng_state = preserve_rng_state
        self.warn = warn
        self.divergence_threshold = divergence_threshold
        self.stats: dict[str, Any] = {}

    def _solve(self, name: str, g: Callable[[Tensor], Tensor], z0: Tensor, max_iter: int, tol: float,
               what: str) -> SolverResult:
        res = get_solver(name)(g, z0, max_iter=max_iter, tol=tol, **self._options(name))
        bad = not torch.isfinite(res.z).all() or not (res.residual == res.residual) \
            or res.residual > self.divergence_threshold
        if bad:
            raise TrainingError(
                f"DEQ {what} solve diverged: relative residual {res.residual:.3g} after {res.iterations} "
                f"iterations of '{name}' (NaN/inf or above {self.divergence_threshold:g}); make f contractive "
                f"(smaller weights, normalisation, lower learning rate) or try another solver")
        if not res.converged and self.warn:
            warnings.warn(f"DEQ {what} solve did not converge: relative residual {res.residual:.3g} > tol "
                          f"{tol:g} after {res.iterations} iterations of '{name}'", DEQConvergenceWarning,
                          stacklevel=3)
        return res

    def _options(self, name: str) -> dict:
        import inspect
        from graphscale.nn.solvers import SOLVERS
        params = inspect.signature(SOLVERS[name]).parameters
        return {k: v for k, v in self.solver_options.items() if k in params}

    def forward(self, x: Tensor, edge_index: Any, *args, return_stats: bool = False):
        """``x [N, D]`` -> ``Z* [N, D]`` (and :attr:`stats` when ``return_stats``)."""
        devices = [x.device.index or 0] if x.is_cuda else []
        seed = None
        if self.preserve_rng_state and self.training:
            seed = int(torch.randint(0, _SEED_MOD, (1,)).item())
        self.stats = {}

        def f(z: Tensor, xx: Tensor = x, aa: tuple = args) -> Tensor:
            with SeededRNG(seed, devices):
                out = self.f(z, xx, edge_index, *aa)
            if out.shape != z.shape:
                raise ConfigError(f"DEQBlock: f returned {tuple(out.shape)} for z of shape {tuple(z.shape)}; "
                                  f"f(z, x, ...) must keep the shape of z")
            return out

        if self.disable:  # unrolled: plain autograd through max_iter steps
            z = torch.zeros_like(x)
            res = float("inf")
            for _ in range(self.max_iter):
                z_new = f(z)
                res = float((z_new - z).detach().norm() / (z_new.detach().norm() + 1e-9))
                z = z_new
            self.stats = {"forward_iterations": self.max_iter, "forward_residual": res,
                          "forward_converged": res <= self.tol}
            return (z, dict(self.stats)) if return_stats else z

        with torch.no_grad():
            result = self._solve(self.solver, f, torch.zeros_like(x), self.max_iter, self.tol, "forward")
        self.stats.update(forward_iterations=result.iterations, forward_residual=result.residual,
                          forward_converged=result.converged)
        params = [p for p in self.f.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or bool(params) or any(isinstance(a, Tensor) and a.requires_grad for a in args))
        if not needs_grad:
            z = result.z
        else:
            z = _DEQFunction.apply(_DEQMeta(self, f, len(args), params, result.z), x, *args, *params)
        return (z, self.stats) if return_stats else z

    def extra_repr(self) -> str:
        return (f"solver={self.solver!r}, max_iter={self.max_iter}, tol={self.tol:g}, "
                f"backward_solver={self.backward_solver!r}, disable={self.disable}")


class _DEQMeta:
    __slots__ = ("block", "f", "num_args", "params", "z_star")

    def __init__(self, block, f, num_args, params, z_star):
        self.block, self.f, self.num_args, self.params, self.z_star = block, f, num_args, params, z_star


class _DEQFunction(torch.autograd.Function):
    """Attach the solved ``Z*`` to ``(x, args, params)``: forward returns it, backward is implicit."""

    @staticmethod
    def forward(ctx, meta: _DEQMeta, x: Tensor, *rest: Tensor) -> Tensor:
        args = rest[:meta.num_args]
        z_star = meta.z_star
        meta.z_star = None
        ctx.meta = meta
        ctx.autocast = autocast_state(x.device.type)
        ctx.z = z_star.detach()  # an alias of the output, not a copy
        ctx.x = x.detach()
        ctx.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        ctx.need = [x.requires_grad] + [isinstance(a, Tensor) and a.requires_grad for a in args]
        report_ctx(ctx.z, ctx.x, *[a for a in ctx.args if isinstance(a, Tensor)])
        return z_star

    @staticmethod
    def backward(ctx, grad: Tensor):
        meta: _DEQMeta = ctx.meta
        block = meta.block
        with torch.enable_grad(), torch.autocast(**ctx.autocast):  # f as the forward ran it (train.precision)
            z = ctx.z.clone().requires_grad_(True)
            x = ctx.x.clone().requires_grad_(ctx.need[0])
            args = [a.clone().requires_grad_(True) if need else a for a, need in zip(ctx.args, ctx.need[1:])]
            fz = meta.f(z, x, tuple(args))

            def adjoint(u: Tensor) -> Tensor:  # u -> J^T u + G
                (vjp,) = torch.autograd.grad(fz, z, u, retain_graph=True)
                return vjp + grad

            res = block._solve(block.backward_solver, adjoint, grad.clone(), block.backward_max_iter,
                               block.backward_tol, "backward (adjoint)")
            block.stats.update(backward_iterations=res.iterations, backward_residual=res.residual,
                               backward_converged=res.converged)
            wrt = ([x] if ctx.need[0] else []) + [a for a, need in zip(args, ctx.need[1:]) if need] + meta.params
            grads = list(torch.autograd.grad(fz, wrt, res.z, allow_unused=True)) if wrt else []
        gx = grads.pop(0) if ctx.need[0] else None
        gargs = [grads.pop(0) if need else None for need in ctx.need[1:]]
        return (None, gx, *gargs, *grads)
