"""Grouped reversible GNN blocks whose activation memory does not grow with depth.

Li, Müller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021, Sec. 3.1.
Node features ``X [N, D]`` are split into ``C`` groups ``X_1..X_C`` along the channels and

    X'_0 = sum_{i>=2} X_i,        X'_i = X_i + f_i(X'_{i-1}, A, U)        (i = 1..C)

which is inverted group by group, backwards: ``X_i = X'_i - f_i(X'_{i-1})`` for ``i = C..2``, then
``X'_0 = sum_{i>=2} X_i`` and ``X_1 = X'_1 - f_1(X'_0)``. A block therefore never has to keep its
input: backward rebuilds it from the output.

How this differs from PyG's ``GroupAddRev`` (measured in ``docs/deep-blocks.md``):

* A whole stack of blocks is one :class:`torch.autograd.Function` (:class:`RevStack`). Its backward
  walks the blocks in reverse in a plain loop, so the autograd engine sees one node instead of one
  per block, and ``ctx`` holds only a detached alias of the output. PyG builds one
  ``InvertibleFunction`` per block whose ``ctx`` holds the block's output *tensor with its grad_fn*
  (a reference cycle per block, output -> grad_fn -> ctx -> output, left to Python's cyclic
  garbage collector) and runs a re-entrant ``torch.autograd.grad`` per block inside the engine.
* Inversion and recomputation are fused: for group ``i`` the inverse needs ``f_i(X'_{i-1})``, the
  very value whose vector-Jacobian product backward needs. Evaluating it once with grad enabled
  gives both the reconstructed ``X_i`` and the graph for the gradient, so a block costs one
  no-grad forward + one forward + one backward (PyG: one no-grad forward, one inverse, one
  recomputation, one backward).

Randomness (dropout inside ``f_i``) is made identical between the forward, the inverse and the
recomputation (DESIGN.md rule 7) by drawing one seed per call from the global generator and running
each ``f_i`` evaluation with the generator seeded from ``(seed, block, group)`` (:class:`SeededRNG`),
restoring the caller's RNG state afterwards. The disabled path
uses the same seeding, so ``disable=True`` and ``disable=False`` compute the same function.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from graphscale.errors import ConfigError
from graphscale.saved_bytes import report_ctx

__all__ = ["GroupRevBlock", "RevStack", "SeededRNG", "check_reversible_module", "run_reversible"]

_SEED_MOD = 2**62


def check_reversible_module(module: nn.Module) -> None:
    """Reject modules that break recomputation: BatchNorm that tracks running statistics.

    A reversible block evaluates ``f_i`` twice per training step (forward, then inverse + recompute
    in backward), so a BatchNorm would update its running mean/variance twice per step with
    different momentum semantics. Use LayerNorm, or BatchNorm with ``track_running_stats=False``.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
            where = f" (at '{name}')" if name else ""
            raise ConfigError(
                f"{type(sub).__name__}{where} inside a reversible block: its running statistics would be "
                f"updated again when backward recomputes the block; use nn.LayerNorm, or "
                f"{type(sub).__name__}(..., track_running_stats=False)")


def _seed_for(seed: int, block: int, group: int) -> int:
    return (seed * 1_000_003 + block * 65_537 + group + 1) % _SEED_MOD


def autocast_state(device_type: str) -> dict:
    """The caller's ``torch.autocast`` settings for ``device_type``, to re-enter them in a backward
    that recomputes the forward (autocast is off during backward; torch.utils.checkpoint does the same):
    a bf16 forward must be recomputed in bf16, or reconstruction and gradients would not match it."""
    return {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type), "cache_enabled": torch.is_autocast_cache_enabled()}


class SeededRNG:
    """Context: run under a fixed seed, restoring the caller's RNG state afterwards.

    ``seed=None`` does nothing. ``devices`` are the CUDA device indices whose generator is seeded
    too. Used to make dropout identical across re-evaluations of one block (DESIGN.md rule 7).
    It touches the default generators directly: ``torch.manual_seed`` / ``fork_rng`` also queue
    seeds for every lazy device backend (capturing a stack trace each time), which measured ~1 ms
    per call here -- as much as a small block.
    """

    __slots__ = ("seed", "devices", "_saved")

    def __init__(self, seed: int | None, devices: Sequence[int] = ()):
        self.seed, self.devices, self._saved = seed, list(devices), None

    def __enter__(self):
        if self.seed is None:
            return
        gens = [torch.default_generator] + [torch.cuda.default_generators[d] for d in self.devices]
        self._saved = [(g, g.get_state()) for g in gens]
        for g in gens:
            g.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self._saved is not None:
            for g, state in self._saved:
                g.set_state(state)
            self._saved = None
        return False


class GroupRevBlock(nn.Module):
    """One grouped reversible block ``X -> X'`` (RevGNN, Li et al., ICML 2021, Eq. 3-4).

    Args:
        fn: the function ``f_i(x_i, edge_index, *args) -> [N, D/C]`` of each group: either one module
            (deep-copied ``num_groups - 1`` times, copies re-initialised with ``reset_parameters``
            where they have it) or a sequence of ``C`` modules. Any PyG-style convolution, or a
            small module around one (norm -> act -> dropout -> conv), works; its output must have the
            shape of its input.
        num_groups: ``C >= 2``; required when ``fn`` is one module.
        disable: run plain autograd (stores every activation; for testing and comparison).
        free_input: free the storage of the input in forward (restored, reconstructed, in
            backward) when it requires grad. The caller must not read the input between forward and
            backward -- a freed tensor has no data. Even without it the block keeps no reference to
            its input, so an input nobody else holds is freed anyway.
        preserve_rng_state: make dropout inside ``fn`` identical in forward and recomputation by
            seeding every evaluation (see the module docstring).

    Shapes: ``x [N, D]`` with ``D % C == 0``; ``edge_index`` anything ``fn`` accepts (``[2, E]``,
    SparseTensor, ...); each tensor in ``args`` whose size along the split dimension equals ``D``
    is split into ``C`` groups like ``x`` (e.g. edge features of width ``D``), other arguments are
    passed whole to every group. Returns ``[N, D]``.
    """

    def __init__(self, fn: nn.Module | Sequence[nn.Module], num_groups: int | None = None, split_dim: int = -1,
                 disable: bool = False, free_input: bool = True, preserve_rng_state: bool = True):
        super().__init__()
        if isinstance(fn, nn.Module) and not isinstance(fn, nn.ModuleList):
            if num_groups is None:
                raise ConfigError("GroupRevBlock(fn, num_groups=None): give num_groups (>= 2) when fn is one module")
            if num_groups < 2:
                raise ConfigError(f"num_groups must be >= 2 (X'_0 is the sum of groups 2..C), got {num_groups}")
            fns = [fn]
            for _ in range(num_groups - 1):
                f = copy.deepcopy(fn)
                for m in f.modules():
                    if m is not f and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                if hasattr(f, "reset_parameters"):
                    f.reset_parameters()
                fns.append(f)
        else:
            fns = list(fn)
            if num_groups is not None and num_groups != len(fns):
                raise ConfigError(f"num_groups={num_groups} but {len(fns)} modules were given")
            if len(fns) < 2:
                raise ConfigError(f"a grouped reversible block needs >= 2 groups, got {len(fns)} module(s)")
        self.fns = nn.ModuleList(fns)
        for f in self.fns:
            check_reversible_module(f)
        self.split_dim = split_dim
        self.disable = disable
        self.free_input = free_input
        self.preserve_rng_state = preserve_rng_state

    @property
    def num_groups(self) -> int:
        return len(self.fns)

    def reset_parameters(self) -> None:
        for f in self.fns:
            for m in f.modules():
                if hasattr(m, "reset_parameters") and m is not self:
                    m.reset_parameters()

    # -- the math (shared by the reversible and the disabled path) --------------------------
    def _split(self, x: Tensor) -> list[Tensor]:
        d = x.size(self.split_dim)
        if d % self.num_groups != 0:
            raise ConfigError(f"GroupRevBlock: {d} channels cannot be split into {self.num_groups} equal groups; "
                              f"use a channel count divisible by {self.num_groups}")
        return list(torch.chunk(x, self.num_groups, dim=self.split_dim))

    def _split_args(self, args: tuple, channels: int) -> list[list[Any]]:
        per_group: list[list[Any]] = [[] for _ in range(self.num_groups)]
        for a in args:
            split = isinstance(a, Tensor) and a.dim() > 0 and a.size(self.split_dim) == channels
            parts = torch.chunk(a, self.num_groups, dim=self.split_dim) if split else [a] * self.num_groups
            for g, p in enumerate(parts):
                per_group[g].append(p)
        return per_group

    def _f(self, g: int, h: Tensor, edge_index: Any, args: list, seed: int | None, block: int,
           devices: list[int]) -> Tensor:
        with SeededRNG(None if seed is None else _seed_for(seed, block, g), devices):
            out = self.fns[g](h, edge_index, *args)
        if not isinstance(out, Tensor) or out.shape != h.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"GroupRevBlock: group {g} module {type(self.fns[g]).__name__} returned {shape} for "
                              f"an input of shape {tuple(h.shape)}; a reversible block's function must keep "
                              f"the shape of its input")
        return out

    def forward_math(self, x: Tensor, edge_index: Any, args: tuple, seed: int | None = None, block: int = 0,
                     devices: Sequence[int] = ()) -> Tensor:
        """``X -> X'`` with ordinary autograd (no memory saving)."""
        xs = self._split(x)
        gargs = self._split_args(args, x.size(self.split_dim))
        h = sum(xs[1:])
        ys = []
        for g in range(self.num_groups):
            h = xs[g] + self._f(g, h, edge_index, gargs[g], seed, block, list(devices))
            ys.append(h)
        return torch.cat(ys, dim=self.split_dim)

    def inverse(self, y: Tensor, edge_index: Any, *args, seed: int | None = None, block: int = 0,
                devices: Sequence[int] = ()) -> Tensor:
        """``X' -> X``: the inverse of :meth:`forward_math` (same ``seed`` for dropout)."""
        ys = self._split(y)
        gargs = self._split_args(args, y.size(self.split_dim))
        xs: list[Tensor] = [None] * self.num_groups  # type: ignore[list-item]
        for g in range(self.num_groups - 1, 0, -1):
            xs[g] = ys[g] - self._f(g, ys[g - 1], edge_index, gargs[g], seed, block, list(devices))
        xs[0] = ys[0] - self._f(0, sum(xs[1:]), edge_index, gargs[0], seed, block, list(devices))
        return torch.cat(xs, dim=self.split_dim)

    def forward(self, x: Tensor, edge_index: Any, *args) -> Tensor:
        """Shapes: ``x [N, D]`` -> ``[N, D]`` (see the class docstring for ``args``)."""
        return run_reversible([self], x, edge_index, args, disable=self.disable, free_input=self.free_input,
                          preserve_rng_state=self.preserve_rng_state, training=self.training)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, disable={self.disable}"


class RevStack(nn.Module):
    """A stack of :class:`GroupRevBlock`\\ s run as one memory-flat autograd node.

    Activation memory is O(1) in depth: the forward keeps only the stack's output (and the
    arguments); backward walks the blocks in reverse, reconstructing each block's input from its
    output and back-propagating through one recomputed group at a time. Time per layer is constant
    in depth (no per-block autograd nodes, no reference cycles).

    Args:
        blocks: the blocks, applied in order. The same block may appear several times (weight
            tying, see :mod:`graphscale.nn.weight_tied`); its parameters' gradients are summed.
        disable: plain autograd through every block (for tests and comparison).
        free_input, preserve_rng_state: as in :class:`GroupRevBlock`.

    Shapes: ``x [N, D]``, ``edge_index``, ``*args`` as for :class:`GroupRevBlock` -> ``[N, D]``.
    """

    def __init__(self, blocks: Iterable[GroupRevBlock], disable: bool = False, free_input: bool = True,
                 preserve_rng_state: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ConfigError("RevStack needs at least one block")
        for b in self.blocks:
            if not isinstance(b, GroupRevBlock):
                raise ConfigError(f"RevStack takes GroupRevBlock modules, got {type(b).__name__}")
        self.disable = disable
        self.free_input = free_input
        self.preserve_rng_state = preserve_rng_state

    def forward(self, x: Tensor, edge_index: Any, *args) -> Tensor:
        return run_reversible(list(self.blocks), x, edge_index, args, disable=self.disable,
                          free_input=self.free_input, preserve_rng_state=self.preserve_rng_state,
                          training=self.training)

    def inverse(self, y: Tensor, edge_index: Any, *args, seed: int | None = None) -> Tensor:
        """Reconstruct the stack's input from its output (no grad; ``seed`` as drawn in forward)."""
        devices = [y.device.index or 0] if y.is_cuda else []
        with torch.no_grad():
            for i in range(len(self.blocks) - 1, -1, -1):
                y = self.blocks[i].inverse(y, edge_index, *args, seed=seed, block=i, devices=devices)
        return y

    def extra_repr(self) -> str:
        return f"depth={len(self.blocks)}, disable={self.disable}"


# --------------------------------------------------------------------------------------------
def _unique_params(blocks: Sequence[GroupRevBlock]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for b in blocks:
        for p in b.parameters():
            if p.requires_grad and id(p) not in seen:
                seen[id(p)] = p
    return list(seen.values())


def run_reversible(blocks: Sequence[GroupRevBlock], x: Tensor, edge_index: Any, args: tuple = (), *,
                   disable: bool = False, free_input: bool = True, preserve_rng_state: bool = True,
                   training: bool = True) -> Tensor:
    """Apply ``blocks`` in order as one memory-flat autograd node (the engine of :class:`RevStack`).

    ``blocks`` may repeat one block (weight tying) without registering it more than once anywhere.
    ``training`` turns on per-call seeding of randomness inside the blocks. Other arguments as in
    :class:`GroupRevBlock`.
    """
    blocks = list(blocks)
    devices = [x.device.index or 0] if x.is_cuda else []
    seed = None
    if preserve_rng_state and training:
        # one draw from the caller's generator per call: reproducible under torch.manual_seed
        seed = int(torch.randint(0, _SEED_MOD, (1,)).item())
    params = _unique_params(blocks)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in params)
        or any(isinstance(a, Tensor) and a.requires_grad for a in args))
    if disable or not needs_grad:
        h = x
        for i, b in enumerate(blocks):
            h = b.forward_math(h, edge_index, args, seed, i, devices)
        return h
    meta = _StackMeta(blocks, edge_index, seed, devices, free_input, len(args), params)
    return _RevStackFunction.apply(meta, x, *args, *params)


class _StackMeta:
    """Non-tensor state of one stack call (kept off ``ctx`` attributes that autograd inspects)."""

    __slots__ = ("blocks", "edge_index", "seed", "devices", "free_input", "num_args", "params")

    def __init__(self, blocks, edge_index, seed, devices, free_input, num_args, params):
        self.blocks, self.edge_index, self.seed, self.devices = blocks, edge_index, seed, devices
        self.free_input, self.num_args, self.params = free_input, num_args, params


class _RevStackFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta: _StackMeta, x: Tensor, *rest: Tensor) -> Tensor:
        args = rest[:meta.num_args]
        h = x.detach()
        for i, b in enumerate(meta.blocks):  # grad is off inside Function.forward
            h = b.forward_math(h, meta.edge_index, args, meta.seed, i, meta.devices)
        y = h
        # only a tensor that owns its whole storage is freed (freeing a view would free its base)
        st = x.untyped_storage()
        freed = (meta.free_input and x.requires_grad and x.is_contiguous() and x.storage_offset() == 0
                 and st.nbytes() == x.numel() * x.element_size())
        if freed:
            x.untyped_storage().resize_(0)
        ctx.meta = meta
        ctx.autocast = autocast_state(x.device.type)
        ctx.x = x if freed else None  # the (empty) input, refilled with its reconstruction in backward
        ctx.x_shape = x.shape
        # a detached alias of the output: no grad_fn, hence no ctx -> output -> grad_fn -> ctx cycle
        ctx.y = y.detach()
        ctx.y_version = y._version
        ctx.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        ctx.args_need_grad = [isinstance(a, Tensor) and a.requires_grad for a in args]
        report_ctx(ctx.y, *[a for a in args if isinstance(a, Tensor)])
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        meta: _StackMeta = ctx.meta
        if ctx.y is None:
            # a repeated backward (retain_graph=True): the first one released the output; recompute it
            # from the input it reconstructed (one extra no-grad forward, only on this path)
            with torch.no_grad(), torch.autocast(**ctx.autocast):
                y = ctx.x_rec
                for i, b in enumerate(meta.blocks):
                    y = b.forward_math(y, meta.edge_index, ctx.args, meta.seed, i, meta.devices)
        else:
            if ctx.y._version != ctx.y_version:
                raise RuntimeError("the output of a reversible stack was modified in place after the forward; "
                                   "backward reconstructs the inputs from it, so it must stay unchanged "
                                   "(clone it before modifying)")
            # release ctx's alias: once the last block is inverted nothing needs the stack output, and
            # holding it through the whole backward kept one more [N, D] tensor alive at the peak
            y, ctx.y = ctx.y, None
        pindex = {id(p): k for k, p in enumerate(meta.params)}
        pgrads = _FlatGrads(meta.params)
        agrads: list[Tensor | None] = [None] * len(ctx.args)
        own = False  # the stack's output and its incoming gradient are not ours to overwrite
        with torch.autocast(**ctx.autocast):  # recompute under the forward's autocast (train.precision=bf16)
            for i in range(len(meta.blocks) - 1, -1, -1):
                y, grad_y = _block_backward(meta.blocks[i], i, y, grad_y, meta, ctx.args, ctx.args_need_grad,
                                            pindex, pgrads, agrads, own)
                own = True
        if ctx.x is not None:  # give the freed input its storage back, filled with the reconstruction
            x = ctx.x
            x.untyped_storage().resize_(y.numel() * y.element_size())
            # not a user modification: keep the version counter that other nodes' checks rely on
            with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(x):
                x.copy_(y.view(ctx.x_shape))
            ctx.x_rec = x
        else:
            ctx.x_rec = y.view(ctx.x_shape)
        return (None, grad_y, *agrads, *pgrads.grads)


class _FlatGrads:
    """The stack's parameter gradients as views of one buffer per (device, dtype).

    A deep stack has thousands of small parameters (a 1000-block RevGNN: 10,000 tensors of 128 B-4 KiB).
    Allocated one by one between backward's short-lived temporaries, those long-lived gradients pin
    the CPU heap: measured here (depth 1000, 5,000 nodes, 64 channels, with the output released early)
    peak RSS 560.6 MiB with per-tensor gradients, 559.1 MiB with one buffer. ``AccumulateGrad`` adopts
    the views as ``.grad`` (same layout as the parameter), so no copy is made when ``.grad`` is empty.
    """

    __slots__ = ("params", "grads", "_views")

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = params
        self.grads: list[Tensor | None] = [None] * len(params)
        self._views: list[Tensor] | None = None

    def _view(self, k: int) -> Tensor:
        if self._views is None:
            self._views = [None] * len(self.params)  # type: ignore[list-item]
            groups: dict[tuple, list[int]] = {}
            for j, p in enumerate(self.params):
                groups.setdefault((p.device, p.dtype), []).append(j)
            for (device, dtype), idx in groups.items():
                flat = torch.empty(sum(self.params[j].numel() for j in idx), device=device, dtype=dtype)
                off = 0
                for j in idx:
                    n = self.params[j].numel()
                    # contiguous parameters (all of PyG's) get a view of their own layout
                    self._views[j] = flat[off:off + n].view(self.params[j].shape)
                    off += n
        return self._views[k]

    def add(self, k: int, grad: Tensor) -> None:
        """Accumulate ``grad`` (never modified: autograd may hand back a tensor it aliases)."""
        p, have = self.params[k], self.grads[k]
        if have is None:
            self.grads[k] = self._view(k).copy_(grad) if p.is_contiguous() else grad
        elif p.is_contiguous():
            have.add_(grad)  # our own buffer
        else:
            self.grads[k] = have + grad


def _block_backward(block: GroupRevBlock, i: int, y: Tensor, grad_y: Tensor, meta: _StackMeta, args: tuple,
                    args_need_grad: list[bool], pindex: dict, pgrads: "_FlatGrads", agrads: list,
                    own: bool = False):
    """Invert block ``i`` and back-propagate through it, one group at a time.

    With ``G_g = dL/dX'_g`` (total, through later groups): going down ``g = C..2``, evaluating
    ``f_g(X'_{g-1})`` once with grad gives both ``X_g = X'_g - f_g(X'_{g-1})`` and the VJP
    ``G_{g-1} += J_{f_g}^T G_g``; then ``X'_0 = sum_{g>=2} X_g`` and ``f_1(X'_0)`` gives ``X_1`` and
    ``v = J_{f_1}^T G_1``. Gradients w.r.t. the inputs: ``dX_1 = G_1``, ``dX_g = G_g + v`` (g >= 2).
    """
    C = block.num_groups
    ys = block._split(y)
    gys = list(block._split(grad_y))
    gargs = block._split_args(args, y.size(block.split_dim))
    split_arg = [isinstance(a, Tensor) and a.dim() > 0 and a.size(block.split_dim) == y.size(block.split_dim)
                 for a in args]
    xs: list[Tensor] = [None] * C  # type: ignore[list-item]

    def vjp(g: int, h: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate f_g(h) with grad; return (f_g(h) detached, J^T grad_out w.r.t. h) and accumulate."""
        f = block.fns[g]
        params = [p for p in f.parameters() if p.requires_grad]
        with torch.enable_grad():
            h_in = h.detach().requires_grad_(True)
            a_in = [a.detach().requires_grad_(True) if need else a
                    for a, need in zip(gargs[g], args_need_grad)]
            out = block._f(g, h_in, meta.edge_index, a_in, meta.seed, i, meta.devices)
            wrt = [h_in] + [a for a, need in zip(a_in, args_need_grad) if need] + params
            grads = torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
        k = 1
        for j, need in enumerate(args_need_grad):
            if need:
                gr = grads[k]
                k += 1
                if gr is None:
                    continue
                if split_arg[j]:  # this group's slice of a split argument: scatter into the full grad
                    if agrads[j] is None:
                        agrads[j] = torch.zeros_like(args[j])
                    list(torch.chunk(agrads[j], C, dim=block.split_dim))[g].add_(gr)
                else:
                    agrads[j] = gr if agrads[j] is None else agrads[j] + gr
        for p, gr in zip(params, grads[k:]):
            if gr is not None:
                pgrads.add(pindex[id(p)], gr)
        gh = grads[0] if grads[0] is not None else torch.zeros_like(h)
        return out.detach(), gh

    # ``own``: y and grad_y were made by this backward (every block but the last one run), so the
    # input and its gradient are rebuilt in their buffers, group by group, instead of in new tensors:
    # two fewer [N, D] tensors at the peak (measured in the tensor-peak benchmark, docs/deep-blocks.md)
    for g in range(C - 1, 0, -1):
        fy, gh = vjp(g, ys[g - 1], gys[g])
        xs[g] = ys[g].sub_(fy) if own else ys[g] - fy
        gys[g - 1] = gys[g - 1].add_(gh) if own else gys[g - 1] + gh
    fy, v = vjp(0, sum(xs[1:]), gys[0])
    xs[0] = ys[0].sub_(fy) if own else ys[0] - fy
    if own:
        for g in range(1, C):
            gys[g].add_(v)
        return y, grad_y
    gxs = [gys[0]] + [gys[g] + v for g in range(1, C)]
    return torch.cat(xs, dim=block.split_dim), torch.cat(gxs, dim=block.split_dim)
