"""Compression of the functional calls inside module forwards (``F.relu``, ``F.dropout``, ``F.gelu``, ...).

ActNN (Chen et al., ICML 2021) and EXACT (Liu et al., ICLR 2022) compress layers; a PyG user writes
``x = F.dropout(F.relu(self.bn(self.conv1(x, edge_index))), p=0.5, training=self.training)``, whose
activation and dropout are no modules at all. This module covers them.

Mechanism: a :class:`torch.overrides.TorchFunctionMode` (:class:`FunctionalCompression`) that the
model's root forward enters (forward pre-hook) and leaves (forward post-hook). Every Python-level torch
call of that forward goes through it; the calls in :data:`COVERED` whose input needs a gradient are
rerouted to a compressed twin, every other call runs unchanged. Why this and not the alternatives:

* ``torch.fx`` rewriting needs a traceable forward: PyG convolutions, ``if`` on tensor values and
  ``data.x`` attribute access do not trace, and a rewritten forward replaces the user's code.
  A function mode needs nothing from the forward; control flow runs as written.
* A scoped ``saved_tensors_hooks`` rule sees *tensors*, not ops: it cannot tell ReLU's saved output
  (where a 1-bit mask is exact) from a Linear input (where a quantized copy is right), and it would
  quantize again what compressed layers already store. The mode acts on the op itself, so each op
  gets the storage its backward needs, and compressed layers are never touched: their Functions are
  called directly (no torch function dispatch), and the ops inside a Function's forward run with
  grad disabled, where the mode does nothing.

What a covered op stores for backward (exact types of the torch callables, see :data:`COVERED`):

=====================================  ===============================================  =============
op                                      stored                                           gradient
=====================================  ===============================================  =============
relu (F / torch / Tensor, and ``_``)    1-bit mask (``x > 0``)                           exact
``F.leaky_relu``                        1-bit mask (``x > 0``)                           exact
``F.dropout`` (not ``inplace``)         bit-packed keep mask, or a seed (``dropout_mask``) exact
gelu, silu, elu, selu, celu, mish,      the derivative ``f'(x)`` quantized (``bits``,    unbiased
hardswish, hardtanh, relu6, softplus,   ``group_size``); backward ``g * f'(x)``
logsigmoid, sigmoid, tanh
``F.linear`` with a leaf weight         the input quantized (as ``QLinear``)             unbiased
``F.batch_norm`` (2-D / 3-D),           quantized ``x_hat`` + float32 ``rstd``           as the layers
``F.layer_norm`` (unless ``norms=False``) (as ``QBatchNorm1d`` / ``QLayerNorm``)
=====================================  ===============================================  =============

Storing ``f'(x)`` instead of ``x`` makes the backward linear in what is stored (``g * f'(x)``), so
the stochastic rounding stays unbiased; quantizing ``x`` (what torch saves, and what the hooks would
quantize) gives a biased ``f'(dequantized x)``. ``f'`` is computed in the forward by autograd on a
detached copy (``f`` is elementwise, so the vector-Jacobian product with ones is the derivative).

Not covered (they run as written, and :func:`graphscale.memory.find_uncompressed` lists them when it
sees them save an activation): any other call (softmax, matmul, ``*`` of two activations, ...),
``out=`` forms, in-place dropout, and every call made inside a module that ``compress_model`` left
uncompressed (a listed PyG convolution, a max / min aggregation): those keep their storage as listed.

Detection (:class:`Recorder`): one forward with a second, lower function mode that remembers the
torch call currently running, a ``saved_tensors_hooks`` pair that attributes every float activation
saved to (innermost running module, that call) and hands the tensor on to the hooks that were active
outside (so byte counting and outer compression are unaffected), and forward hooks for the module stack.
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from graphscale.errors import ConfigError
from graphscale.memory.compressed_layers import (_Compressed, _apply_keep, pack_mask, qbatch_norm, qdropout,
                                                 qlayer_norm, qlinear, stash, unpack_mask, unstash)
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.hooks import _broadcast, _keep_leaf, step_inputs

__all__ = ["UncompressedLayersError", "FunctionalCompression", "FunctionalRule", "Recorder", "COVERED", "FUNCTIONAL_MODULES", "op_label",
           "install_functional_rule", "functional_rule", "detect_uncovered"]

class UncompressedLayersError(ConfigError):
    """``compress_model(strict=True)`` found modules or calls it cannot compress."""


_PASS = object()  # an adapter's "not for me": the call runs unchanged


# --------------------------------------------------------------------------------------------
class _MaskActFn(torch.autograd.Function):
    """ReLU (``slope=0``) / leaky ReLU keeping the 1-bit mask ``x > 0`` (torch's backward reads the
    same sign: ``threshold_backward(g, out, 0)`` / ``leaky_relu_backward(g, x, slope)``)."""

    @staticmethod
    def forward(ctx, x, slope, inplace):
        keep = x > 0
        if inplace:
            out = x.relu_() if slope == 0.0 else F.leaky_relu_(x, slope)
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x) if slope == 0.0 else F.leaky_relu(x, slope)
        ctx.shape, ctx.slope = x.shape, slope
        ctx.save_for_backward(pack_mask(keep))
        return out

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        keep = unpack_mask(packed, ctx.shape)
        if ctx.slope == 0.0:
            return _apply_keep(g, keep, 1.0), None, None
        return torch.where(keep, g, g * ctx.slope), None, None


def _same(t):
    return t


class _DerivativeFn(torch.autograd.Function):
    """Elementwise ``f(x)`` storing ``f'(x)`` compressed; backward ``g * f'(x)`` (unbiased: linear in
    the stored tensor). ``f'`` comes from autograd on a detached copy, under identity saved-tensor
    hooks so that its transient graph is neither counted nor compressed by enclosing hooks."""

    @staticmethod
    def forward(ctx, x, fn, inplace, cfg):
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
            xd = x.detach().requires_grad_()
            y = fn(xd)
            (d,) = torch.autograd.grad(y, xd, torch.ones_like(y))
        out = y.detach()
        ctx.save_for_backward(*stash(ctx, d, cfg, project=False, is_input=False))
        if inplace:
            x.copy_(out)
            ctx.mark_dirty(x)
            return x
        return out

    @staticmethod
    def backward(ctx, g):
        d = unstash(ctx).to(g.dtype)
        return g * d, None, None, None


# --------------------------------------------------------------------------------------------
# Adapters: ``adapter(rule, args, kwargs)`` -> the compressed result, or _PASS (run the call as is).
def _wants_grad(x) -> bool:
    return (isinstance(x, Tensor) and x.requires_grad and x.is_floating_point() and x.layout == torch.strided)


def _split(args, kwargs, first="input"):
    """``(x, rest_args, rest_kwargs)``: the tensor argument may come positionally or by name."""
    if args:
        return args[0], list(args[1:]), dict(kwargs)
    kw = dict(kwargs)
    return kw.pop(first, kw.pop("self", None)), [], kw


def _take(rest, kw, name, pos, default):
    """Remove argument ``name`` (positional index ``pos`` among ``rest``) and return its value."""
    if name in kw:
        return kw.pop(name)
    if pos is not None and len(rest) > pos:
        return rest.pop(pos)
    return default


def _relu(inplace_default: bool, has_inplace_arg: bool):
    def adapter(rule, args, kwargs):
        x, rest, kw = _split(args, kwargs)
        inplace = _take(rest, kw, "inplace", 0, inplace_default) if has_inplace_arg else inplace_default
        if not _wants_grad(x) or rest or kw:
            return _PASS
        return _MaskActFn.apply(x, 0.0, bool(inplace))
    return adapter


def _leaky_relu(rule, args, kwargs):
    x, rest, kw = _split(args, kwargs)
    slope = _take(rest, kw, "negative_slope", 0, 0.01)
    inplace = _take(rest, kw, "inplace", 0, False)
    if not _wants_grad(x) or rest or kw or not isinstance(slope, (int, float)):
        return _PASS
    return _MaskActFn.apply(x, float(slope), bool(inplace))


def _dropout(rule, args, kwargs):
    x, rest, kw = _split(args, kwargs)
    p = _take(rest, kw, "p", 0, 0.5)
    training = _take(rest, kw, "training", 0, True)
    inplace = _take(rest, kw, "inplace", 0, False)
    if not _wants_grad(x) or rest or kw or inplace or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        return _PASS
    return qdropout(x, float(p), bool(training), rule.cfg.dropout_mask)


def _torch_dropout(rule, args, kwargs):  # torch.dropout(input, p, train)
    x, rest, kw = _split(args, kwargs)
    p = _take(rest, kw, "p", 0, None)
    train = _take(rest, kw, "train", 0, None)
    if not _wants_grad(x) or rest or kw or not isinstance(p, (int, float)) or train is None or not 0.0 <= p <= 1.0:
        return _PASS
    return qdropout(x, float(p), bool(train), rule.cfg.dropout_mask)


def _pointwise(fn: Callable, inplace_pos: int | None = None):
    """An elementwise activation ``fn(x, *params)``; ``inplace_pos``: index of ``inplace`` among the
    arguments after ``x`` (``None``: no such argument)."""
    def adapter(rule, args, kwargs):
        x, rest, kw = _split(args, kwargs)
        if "out" in kw or not _wants_grad(x):
            return _PASS
        inplace = _take(rest, kw, "inplace", inplace_pos, False) if inplace_pos is not None else False
        return _DerivativeFn.apply(x, lambda t: fn(t, *rest, **kw), bool(inplace), rule.cfg)
    return adapter


def _linear(rule, args, kwargs):
    x, rest, kw = _split(args, kwargs)
    w = _take(rest, kw, "weight", 0, None)
    b = _take(rest, kw, "bias", 0, None)
    # A leaf weight (a parameter) is kept by reference on ctx, as QLinear does; a computed weight is an
    # activation of its own, which qlinear would keep unreported, so that call runs as written.
    if (rest or kw or not isinstance(x, Tensor) or not x.is_floating_point() or not isinstance(w, Tensor)
            or w.dim() != 2 or not w.is_leaf or not w.requires_grad or (b is not None and not b.is_leaf)):
        return _PASS
    return qlinear(x, w, b, rule.cfg)


def _batch_norm(rule, args, kwargs):
    x, rest, kw = _split(args, kwargs)
    names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults = (None, None, None, None, False, 0.1, 1e-5)
    vals = [_take(rest, kw, n, 0, d) for n, d in zip(names, defaults)]
    rm, rv, w, b, training, momentum, eps = vals
    if (not rule.norms or rest or kw or not _wants_grad(x) or x.dim() not in (2, 3)
            or (training and rm is not None and momentum is None)):
        return _PASS
    return qbatch_norm(x, rm, rv, w, b, bool(training), momentum, eps, None, rule.cfg)


def _layer_norm(rule, args, kwargs):
    x, rest, kw = _split(args, kwargs)
    shape = _take(rest, kw, "normalized_shape", 0, None)
    w = _take(rest, kw, "weight", 0, None)
    b = _take(rest, kw, "bias", 0, None)
    eps = _take(rest, kw, "eps", 0, 1e-5)
    if not rule.norms or rest or kw or not _wants_grad(x) or shape is None:
        return _PASS
    return qlayer_norm(x, shape, w, b, eps, rule.cfg)


#: torch callable (the object a TorchFunctionMode receives) -> (label, adapter).
COVERED: dict = {
    F.relu: ("F.relu", _relu(False, True)),
    F.relu_: ("F.relu_", _relu(True, False)),
    torch.relu: ("torch.relu", _relu(False, False)),
    torch.relu_: ("torch.relu_", _relu(True, False)),
    Tensor.relu: ("Tensor.relu", _relu(False, False)),
    Tensor.relu_: ("Tensor.relu_", _relu(True, False)),
    F.leaky_relu: ("F.leaky_relu", _leaky_relu),
    F.dropout: ("F.dropout", _dropout),
    torch.dropout: ("torch.dropout", _torch_dropout),
    F.gelu: ("F.gelu", _pointwise(F.gelu)),
    F.silu: ("F.silu", _pointwise(F.silu, 0)),
    F.elu: ("F.elu", _pointwise(F.elu, 1)),
    F.selu: ("F.selu", _pointwise(F.selu, 0)),
    F.celu: ("F.celu", _pointwise(F.celu, 1)),
    F.mish: ("F.mish", _pointwise(F.mish, 0)),
    F.hardswish: ("F.hardswish", _pointwise(F.hardswish, 0)),
    F.hardtanh: ("F.hardtanh", _pointwise(F.hardtanh, 2)),
    F.relu6: ("F.relu6", _pointwise(F.relu6, 0)),
    F.softplus: ("F.softplus", _pointwise(F.softplus)),
    F.logsigmoid: ("F.logsigmoid", _pointwise(F.logsigmoid)),
    torch.sigmoid: ("torch.sigmoid", _pointwise(torch.sigmoid)),
    Tensor.sigmoid: ("Tensor.sigmoid", _pointwise(torch.sigmoid)),
    torch.tanh: ("torch.tanh", _pointwise(torch.tanh)),
    Tensor.tanh: ("Tensor.tanh", _pointwise(torch.tanh)),
    F.linear: ("F.linear", _linear),
    F.batch_norm: ("F.batch_norm", _batch_norm),
    F.layer_norm: ("F.layer_norm", _layer_norm),
}

_NORM_CALLS = (F.batch_norm, F.layer_norm)

#: torch activation modules (exact types) whose forward is one covered call: the functional rule covers
#: them, so ``find_uncompressed`` does not list them.
FUNCTIONAL_MODULES = (nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.ReLU6,
                      nn.Softplus, nn.LogSigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)


def op_label(func) -> str:
    """A short name for a torch callable: ``F.relu``, ``torch.matmul``, ``Tensor.__mul__``."""
    if func is None:
        return "a custom autograd.Function"
    if func in COVERED:
        return COVERED[func][0]
    name = getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", "") or ""
    if module in ("torch.nn.functional", "torch._C._nn"):
        return f"F.{name}"
    if qual.startswith(("TensorBase.", "_TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    if module.startswith("torch") or qual.startswith("_VariableFunctionsClass"):
        return f"torch.{name}"
    return name


# --------------------------------------------------------------------------------------------
class FunctionalRule:
    """The functional rule of one root module: its configuration (``cfg=None``: off, the ``disable``
    switch), ``norms``, the modules it must not act in, and what the last check found uncovered."""

    def __init__(self, cfg: CompressionConfig | None, norms: bool = True, strict: bool = False):
        self.cfg, self.norms, self.strict = cfg, norms, strict
        self.exempt_depth = 0
        self.handles: list = []
        self.checked = False      # the first training forward has been checked
        self.report = True        # warn / raise after a check (off while find_uncompressed runs one)
        self.uncovered: list[tuple[str, str]] = []
        self.static: set[str] = set()
        self.active_ctx: list = []
        self.rerouting = 0        # > 0 while a covered call runs its compressed twin

    def acts(self) -> bool:
        return self.cfg is not None and self.exempt_depth == 0 and torch.is_grad_enabled()


class FunctionalCompression(TorchFunctionMode):
    """Reroutes the calls of :data:`COVERED` to their compressed twins while ``rule.acts()``."""

    def __init__(self, rule: FunctionalRule):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = COVERED.get(func)
        if entry is not None and self.rule.acts():
            self.rule.rerouting += 1
            try:
                out = entry[1](self.rule, args, kwargs)
            finally:
                self.rule.rerouting -= 1
            if out is not _PASS:
                return out
        return func(*args, **kwargs)


class _CurrentCall(TorchFunctionMode):
    """Remembers the torch call running (the outermost one: a mode is off while it handles a call)."""

    def __init__(self):
        super().__init__()
        self.current = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        prev, self.current = self.current, func
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.current = prev


def _function_label() -> str:
    """The custom ``autograd.Function`` whose ``apply`` is running (a saved tensor outside any torch call
    comes from one: ``Function.apply`` is no torch function), named by module and class, e.g.
    ``graphscale.ops.reference.SoftmaxAggr``; found on the Python stack (only during the checked forward)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "apply":
            cls = frame.f_locals.get("cls")
            if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
                return f"{cls.__module__}.{cls.__qualname__}"
        frame = frame.f_back
    return op_label(None)


class Recorder:
    """Attributes every float activation saved during a forward of ``root`` to ``(module path, call)``.

    Entered before the compression mode (so it sees only the calls that mode let through). Kept out:
    parameters and buffers, step inputs and other tensors :func:`~graphscale.memory.hooks._keep_leaf`
    keeps by reference, what compressed layers save (their own small statistics), and what runs under
    inner saved-tensor hooks (hooked modules, compressed aggregations: those are compressed), and what
    the compressed twin of a covered call saves (masks, per-channel ``rstd``) while ``rule.rerouting``,
    and norm calls when the rule keeps norms exact (``norms=False``: exact on request, as norm modules),
    and broadcast views of tensors without history (per-node counts expanded over the features: graph
    structure, which the hooks keep exact too). A tensor saved by a custom ``autograd.Function`` is
    named by its class (e.g. ``graphscale.ops.reference.SoftmaxAggr``).
    """

    def __init__(self, root: nn.Module, rule: FunctionalRule):
        self.root, self.rule = root, rule
        self.found: dict[tuple[str, str], None] = {}
        self.stack: list[tuple[str, nn.Module]] = []
        self._handles: list = []
        self._param_keys = {p.untyped_storage().data_ptr() for p in list(root.parameters()) + list(root.buffers())
                            if p.layout == torch.strided}

    def _pack(self, t):
        outer = self._outer
        packed = outer[0](t) if outer is not None else t
        if (self.stack and not self.rule.rerouting and isinstance(t, Tensor) and t.is_floating_point()
                and t.layout == torch.strided):
            name, mod = self.stack[-1]
            norm_kept = not self.rule.norms and self._calls.current in _NORM_CALLS  # exact on request
            # A broadcast view of a tensor without history (e.g. the per-node edge count a mean
            # aggregation divides by, expanded over the features) is graph structure, not an
            # activation; the hooks keep it exact too (graphscale.memory.hooks._broadcast).
            structure = _broadcast(t) and t.grad_fn is None and not t.requires_grad
            if (not isinstance(mod, _Compressed) and not norm_kept and not structure and not _keep_leaf(t, False)
                    and t.untyped_storage().data_ptr() not in self._param_keys):
                call = self._calls.current
                label = op_label(call) if call is not None else _function_label()
                self.found[(name or "<root>", f"{label} in forward")] = None
        return (packed,)

    def _unpack(self, box):
        outer = self._outer
        return outer[1](box[0]) if outer is not None else box[0]

    def __enter__(self):
        # The root is running already when a forward pre-hook enters the recorder (hooks added now
        # would not fire for this call): it starts on the stack.
        self.stack = [("", self.root)]
        for name, m in self.root.named_modules():
            if m is self.root:
                continue

            def pre(module, args, name=name):
                self.stack.append((name, module))

            def post(module, args, output):
                if self.stack:
                    self.stack.pop()
            self._handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post, always_call=True)]
        # Hand every saved tensor on to the hooks active outside (the innermost hooks win, so without
        # this a count_saved_bytes or compressed_activations around the forward would not see them).
        self._outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        self._calls = _CurrentCall()
        self._calls.__enter__()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._calls.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def uncovered(self, static: set[str]) -> list[tuple[str, str]]:
        """What was found, without entries inside modules already listed by class (``static``)."""
        def listed(path):
            return any(path == s or path.startswith(s + ".") for s in static) or ("<root>" in static)
        return [k for k in self.found if not listed(k[0])]


# --------------------------------------------------------------------------------------------
def functional_rule(root: nn.Module) -> FunctionalRule | None:
    return getattr(root, "_graphscale_functional", None)


def install_functional_rule(root: nn.Module, cfg: CompressionConfig | None, norms: bool, strict: bool,
                            exempt: list[nn.Module], static: set[str]) -> FunctionalRule:
    """Install (or re-configure) the functional rule on ``root``: its forward enters
    :class:`FunctionalCompression` while grad is enabled, and its first training forward is checked
    for activation-saving calls the rule does not cover (warning, or ``UncompressedLayersError`` with
    ``strict``). ``exempt``: modules inside which the rule does not act."""
    rule = functional_rule(root)
    if rule is not None:
        for h in rule.handles:
            h.remove()
        rule.cfg, rule.norms, rule.strict = cfg, norms, strict
        rule.checked, rule.uncovered, rule.exempt_depth = False, [], 0
    else:
        rule = FunctionalRule(cfg, norms, strict)
        root._graphscale_functional = rule
    rule.static = static

    def enter_exempt(module, args):
        rule.exempt_depth += 1

    def leave_exempt(module, args, output):
        rule.exempt_depth = max(rule.exempt_depth - 1, 0)

    for m in exempt:
        rule.handles += [m.register_forward_pre_hook(enter_exempt),
                         m.register_forward_hook(leave_exempt, always_call=True)]

    def pre(module, args):
        if not torch.is_grad_enabled() or rule.cfg is None:  # nothing saved / the off switch
            rule.active_ctx.append(())
            return
        ctxs = []
        if not rule.checked and module.training:
            ctxs.append(Recorder(root, rule))
        ctxs.append(FunctionalCompression(rule))
        for c in ctxs:
            c.__enter__()
        rule.active_ctx.append(tuple(ctxs))

    def post(module, args, output):
        if not rule.active_ctx:
            return
        ctxs = rule.active_ctx.pop()
        for c in reversed(ctxs):
            c.__exit__(None, None, None)
        rec = next((c for c in ctxs if isinstance(c, Recorder)), None)
        if rec is not None:
            rule.uncovered, rule.checked = rec.uncovered(rule.static), True
            if rule.uncovered and rule.report:
                _report(rule.uncovered, rule.strict)

    rule.handles += [root.register_forward_pre_hook(pre), root.register_forward_hook(post, always_call=True)]
    return rule


def _report(left: list[tuple[str, str]], strict: bool) -> None:
    listing = ", ".join(f"{n} ({c})" for n, c in left)
    msg = (f"compress_model: {len(left)} call(s) in module forwards save activations that stay full precision "
           f"(no compressed form): {listing}. Replace them by covered calls or modules, or cover them with "
           f"hook_compression / compressed_activations (strict=True turns this warning into an error).")
    if strict:
        raise UncompressedLayersError(msg)
    warnings.warn(msg, stacklevel=3)


def _flat(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def detect_uncovered(root: nn.Module, example_inputs, cfg: CompressionConfig | None, norms: bool,
                     exempt: list[nn.Module], static: set[str]) -> list[tuple[str, str]]:
    """Run one training forward of ``root`` on ``example_inputs`` (a tensor, a tuple of positional
    arguments or a dict of keyword arguments) and return the ``(module path, 'CALL in forward')`` of
    every activation-saving call the functional rule does not cover. The model is left as it was:
    training flags, buffers (BatchNorm running statistics) and the RNG state are restored, and
    nothing is kept for backward."""
    args, kwargs = _flat(example_inputs)
    rule = functional_rule(root)
    temporary = rule is None
    if temporary:  # not compressed (yet): check against the rule compress_model would install
        rule = install_functional_rule(root, cfg or CompressionConfig(), norms, False, exempt, static)
    saved_cfg = rule.cfg
    if rule.cfg is None:  # compress_model(disable=True): check what the enabled rule would leave
        rule.cfg = cfg or CompressionConfig()
    training = {m: m.training for m in root.modules()}
    buffers = [(b, b.detach().clone()) for b in root.buffers()]
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
    devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    rule.checked, rule.report = False, False
    try:
        root.train()
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), step_inputs(tensors):
            root(*args, **kwargs)
        found = list(rule.uncovered)
    finally:
        rule.report, rule.cfg = True, saved_cfg
        for m, flag in training.items():
            m.training = flag
        with torch.no_grad():
            for b, old in buffers:
                b.copy_(old)
        if temporary:
            for h in rule.handles:
                h.remove()
            del root._graphscale_functional
    return found
