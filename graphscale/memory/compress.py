"""``compress_model``: swap a model's layers for activation-compressed ones, in place.

ActNN (Chen et al., ICML 2021) converts a model's layers to quantizing twins (``actnn.QModule``) with
optimisation levels L0-L5; EXACT (Liu et al., ICLR 2022) does the same for GNNs with per-node
quantization and random projection. :func:`compress_model` does both through one registry of
replacements (:func:`register_compressed`), keeps every parameter and buffer (same objects, same
``state_dict`` keys, so optimisers and checkpoints are unaffected), and reports the modules it could
not compress (:func:`find_uncompressed`) instead of skipping them silently. :func:`hook_compression`
is the model-agnostic alternative (every saved activation, via saved-tensor hooks).

Presets (``preset=``):

=========  ====================================================================================
``L0``     nothing compressed (ActNN L0)
``L1``     4-bit Linear / aggregation inputs, norm layers exact (ActNN L1: "4-bit conv + 32-bit bn")
``L2``     4-bit everywhere (ActNN L2)
``L3``     2-bit everywhere (ActNN L3 *without* its adaptive per-group bit allocation)
``exact``  2-bit per-node statistics (EXACT, no projection)
``exact-rp`` 2-bit per-node + random projection keeping 1/8 of the features (EXACT's headline)
=========  ====================================================================================
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch
from torch import nn

from graphscale.errors import ConfigError
from graphscale.memory.hooks import compressed_activations, step_inputs
from graphscale.memory.compressed_layers import (QBatchNorm1d, QDropout, QLayerNorm, QLinear, QPyGLinear, QReLU,
                                                 QSAGEConv, _Compressed, _PyGLinear, _SAGEConv)
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.functional import (FUNCTIONAL_MODULES, UncompressedLayersError, detect_uncovered,
                                          functional_rule, install_functional_rule)
from graphscale.nn.conv import _Fused as _FusedConv

__all__ = ["compress_model", "find_uncompressed", "register_compressed", "PRESETS", "hook_compression",
           "UncompressedLayersError"]


#: preset name -> keyword arguments of :func:`compress_model` (``None``: compression off).
PRESETS: dict[str, dict | None] = {
    "L0": None,
    "L1": {"bits": 4, "group_size": 256, "norms": False},
    "L2": {"bits": 4, "group_size": 256},
    "L3": {"bits": 2, "group_size": 256},
    "exact": {"bits": 2, "group_size": None},
    "exact-rp": {"bits": 2, "group_size": None, "kept_frac": 0.125},
}

# exact type -> (converter(module, cfg) -> module, is_norm). Subclasses are not matched: a subclass may
# have its own forward, which the replacement would silently drop.
_REPLACEMENTS: dict[type, tuple[Callable, bool]] = {}


def register_compressed(cls: type, converter: Callable[[nn.Module, CompressionConfig | None], nn.Module],
                        norm: bool = False) -> None:
    """Register ``converter(module, cfg)`` as the compressed replacement of modules of exact type ``cls``
    (``norm=True``: skipped by presets that keep normalisation layers exact)."""
    _REPLACEMENTS[cls] = (converter, norm)


register_compressed(nn.Linear, QLinear.convert)
register_compressed(nn.ReLU, QReLU.convert)
register_compressed(nn.Dropout, QDropout.convert)
register_compressed(nn.LayerNorm, QLayerNorm.convert, norm=True)
register_compressed(nn.BatchNorm1d, QBatchNorm1d.convert, norm=True)
if _PyGLinear is not None:
    def _pyg_linear(m, cfg):
        if isinstance(m.weight, nn.parameter.UninitializedParameter):
            raise ConfigError("compress_model: a lazily initialised torch_geometric Linear (in_channels=-1) "
                              "must see one forward pass before it can be compressed")
        return QPyGLinear.convert(m, cfg)
    register_compressed(_PyGLinear, _pyg_linear)

if _SAGEConv is not None:
    register_compressed(_SAGEConv, QSAGEConv.convert)

_HOOKED: dict[type, type] = {}


def _hooked_class(cls: type) -> type:
    """``cls`` whose forward runs inside :func:`compressed_activations` (the scoped hooks fallback)."""
    if cls not in _HOOKED:
        def forward(self, *args, **kwargs):
            c = self.compression
            if c is None or not (self.training and torch.is_grad_enabled()):
                return cls.forward(self, *args, **kwargs)
            with compressed_activations(c.bits, c.group_size, backend=c.backend,
                                        compress_inputs=c.compress_inputs):
                return cls.forward(self, *args, **kwargs)

        _HOOKED[cls] = type(f"Hooked{cls.__name__}", (_Compressed, cls),
                            {"forward": forward, "__module__": __name__,
                             "__doc__": f"{cls.__name__} whose saved activations are quantized by saved-tensor "
                                        f"hooks during its forward (compress_model(..., hooks_fallback=True))."})
    return _HOOKED[cls]


def _hooked(m: nn.Module, cfg: CompressionConfig | None) -> nn.Module:
    if cfg is not None and cfg.kept_frac < 1.0:  # the hooks never project (see graphscale.memory.hooks)
        cfg = dataclasses.replace(cfg, kept_frac=1.0)
    return _hooked_class(type(m)).convert(m, cfg)


# Aggregations whose backward compares the saved input with the saved output (arg-max / arg-min:
# torch's scatter_reduce amax / amin routes the gradient to the entries equal to the result, divided
# by their count). Quantized copies of both are almost never equal, so under saved-tensor hooks the
# count is 0 and the gradient NaN (measured: the RevGNN recipe, GENConv aggr='max', 2-bit hooks:
# every gradient below the aggregation NaN). Their forward runs under identity hooks instead.
_EXACT_UNDER_HOOKS = {"MaxAggregation", "MinAggregation"}


def _exact_under_hooks(m: nn.Module) -> bool:
    return any(c.__name__ in _EXACT_UNDER_HOOKS for c in type(m).__mro__)


def _keep_exact_under_hooks(model: nn.Module) -> None:
    """Run every max / min aggregation of ``model`` under identity saved-tensor hooks (innermost hooks
    win), so what it saves stays exact while the hooks of an enclosing scope compress the rest.
    Idempotent."""
    for m in model.modules():
        if not _exact_under_hooks(m) or getattr(m, "_graphscale_exact_hooks", None) is not None:
            continue
        stack = []

        def pre(module, args, stack=stack):
            ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
            ctx.__enter__()
            stack.append(ctx)

        def post(module, args, output, stack=stack):
            if stack:
                stack.pop().__exit__(None, None, None)

        m._graphscale_exact_hooks = (m.register_forward_pre_hook(pre),
                                     m.register_forward_hook(post, always_call=True))


# Modules that hold no float activations of their own (containers, identity, index-only aggregations).
_PASSTHROUGH = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity)
_PASSTHROUGH_NAMES = {"SumAggregation", "MeanAggregation", "MultiAggregation"}


def _is_passthrough(m: nn.Module) -> bool:
    if type(m) in _PASSTHROUGH or type(m).__name__ in _PASSTHROUGH_NAMES:
        return True
    return isinstance(m, nn.Dropout) and m.p == 0.0


def _does_own_work(m: nn.Module) -> bool:
    """A leaf module, or a PyG message-passing layer (its propagate runs in its own forward)."""
    if not any(True for _ in m.children()):
        return True
    try:
        from torch_geometric.nn.conv import MessagePassing
    except ImportError:  # pragma: no cover
        return False
    return isinstance(m, MessagePassing)


# Library code (C++ ops, nested calls a function mode does not see, Functions that keep tensors on ctx):
# its modules are judged by class. A module defined anywhere else is user code: the functional rule acts
# in its forward and the forward check lists what it leaves.
_LIBRARIES = ("torch", "torch_geometric", "graphscale")


def _library_class(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] in _LIBRARIES


def _judged_by_forward(model: nn.Module) -> set[int]:
    """ids of graphscale's fused convs (:mod:`graphscale.nn.conv`) and of their aggregation modules.

    What such a conv saves depends on the path its forward takes (fused: the graphscale op's own
    storage, e.g. nothing but the adjacency for ``sum`` / ``mean``; PyG's path under explainers, hooks
    or unfused aggregations: PyG's), so it is judged like user code: the functional rule acts in its
    forward, its Linear / norm / activation children are compressed as usual, and the first training
    forward's check (:class:`~graphscale.memory.functional.Recorder`) lists what it still saves.
    """
    ids = set()
    for m in model.modules():
        if isinstance(m, _FusedConv):
            ids.add(id(m))
            aggr = getattr(m, "aggr_module", None)
            if aggr is not None:
                ids.update(id(a) for a in aggr.modules())
    return ids


def _static_uncompressed(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    out = []
    by_forward = _judged_by_forward(model)
    for name, m in model.named_modules():
        if (isinstance(m, _Compressed) or type(m) in _REPLACEMENTS or type(m) in FUNCTIONAL_MODULES
                or _is_passthrough(m) or not _library_class(m) or id(m) in by_forward):
            continue
        if _does_own_work(m):
            out.append((name or "<root>", type(m).__name__, m))
    return out


def find_uncompressed(model: nn.Module, example_inputs=None) -> list[tuple[str, str]]:
    """What stays uncompressed: ``[(qualified name, what)]``; ``what`` is a class name for a module, or
    ``'CALL in forward'`` (e.g. ``('encoder', 'F.softmax in forward')``) for a torch call inside a
    module's forward that saves an activation and has no compressed form.

    Modules (always listed, no forward needed): leaf modules and PyG message-passing layers of torch,
    PyG or graphscale that are neither compressed, nor registered (:func:`register_compressed`), nor
    covered by the functional rule (torch activation modules such as ``nn.GELU``, whose forward is one
    covered call), nor known to save no float activations. Modules defined elsewhere (the user's own)
    and graphscale's fused convs (``graphscale.nn.GCNConv`` / ``SAGEConv`` / ``GENConv`` and their
    aggregation modules: what they save depends on the path that runs) are judged by what their forward
    saves, below.

    Calls (see :mod:`graphscale.memory.functional`; the calls it covers, ``F.relu``, ``F.dropout``,
    ``F.gelu``, ..., are not listed): found by running a forward, so

    * with ``example_inputs`` (a tensor, a tuple of positional arguments, or a dict of keyword
      arguments of ``model``'s forward): one training forward is run now and checked; the model's
      training flags, buffers (BatchNorm statistics) and RNG state are restored afterwards;
    * without: the result of the check ``compress_model`` made at the model's first training forward
      (nothing before that forward, and nothing for a model ``compress_model`` never saw).

    Calls inside a module that is listed itself are not listed again.
    """
    static = _static_uncompressed(model)
    out = [(n, c) for n, c, _ in static]
    rule = functional_rule(model)
    if example_inputs is not None:
        exempt = [m for _, _, m in static] + [m for m in model.modules() if _exact_under_hooks(m)]
        calls = detect_uncovered(model, example_inputs, rule.cfg if rule is not None else None,
                                 rule.norms if rule is not None else True, exempt, {n for n, _, _ in static})
        if rule is not None:
            rule.uncovered, rule.checked = calls, True
    else:
        calls = list(rule.uncovered) if rule is not None else []
    return out + [c for c in calls if c not in out]


def _resolve(preset, bits, group_size, kept_frac, norms, disable):
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown compression preset {preset!r}; expected one of {', '.join(PRESETS)}")
        opts = PRESETS[preset]
        if opts is None:
            return None, None, True
        bits = opts.get("bits", bits)
        group_size = opts.get("group_size", group_size)
        kept_frac = opts.get("kept_frac", kept_frac)
        norms = opts.get("norms", norms)
        return CompressionConfig(bits, group_size, kept_frac, dropout_mask=opts.get("dropout_mask", "packed")), \
            norms, disable
    cfg = CompressionConfig(bits, group_size, kept_frac)  # validates everything up front
    return cfg, norms, disable


def compress_model(model: nn.Module, bits: int = 2, group_size: int | None = 256, kept_frac: float = 1.0,
                   preset: str | None = None, norms: bool = True, strict: bool = False, disable: bool = False,
                   backend: str | None = None, hooks_fallback: bool = False,
                   compress_inputs: bool = False, dropout_mask: str | None = None,
                   example_inputs=None) -> nn.Module:
    """Replace ``model``'s supported layers by activation-compressed twins, in place, and compress the
    activation / dropout / norm calls inside its module forwards; returns the model.

    Supported modules (exact types): ``nn.Linear`` and PyG's ``Linear`` (input quantized, optionally
    projected), ``nn.ReLU`` (1-bit mask), ``nn.Dropout`` (packed mask), ``nn.LayerNorm`` /
    ``nn.BatchNorm1d`` (quantized ``x_hat``), PyG's ``SAGEConv`` (mean / sum), plus anything added with
    :func:`register_compressed`. Parameters and buffers are shared with the originals.

    Functional calls (``F.relu``, ``x.relu()``, ``F.dropout``, ``F.gelu``, ``torch.sigmoid``,
    ``F.batch_norm``, ... in a user's ``forward``; the list and what each stores is in
    :mod:`graphscale.memory.functional`): the model's forward runs inside a
    :class:`torch.overrides.TorchFunctionMode` that reroutes them to compressed twins (1-bit masks for
    ReLU / leaky ReLU / dropout, the quantized derivative for smooth activations). A function mode
    rather than ``torch.fx`` because PyG convolutions and data-dependent control flow do not trace; rather
    than a saved-tensor rule because that sees tensors, not ops, so it could neither give ReLU an exact
    mask nor tell what a compressed layer already stores. The rule does not act inside modules left
    uncompressed (those listed by :func:`find_uncompressed`), which keep their storage as listed.
    The first training forward is checked for calls that save an activation and have no compressed
    form (``F.softmax``, ``torch.matmul`` of activations, ...): they are listed like modules (warning,
    or :class:`UncompressedLayersError` with ``strict``, raised by that forward); give
    ``example_inputs`` to run that check here instead.

    Calling it again re-configures the compressed layers and the rule (idempotent for the same arguments).

    Args:
        model: any ``nn.Module`` (a supported module itself is converted and returned).
        bits: 1, 2, 4 or 8.
        group_size: values per quantization group (ActNN) or ``None`` for per-row (EXACT).
        kept_frac: random projection of Linear inputs keeping this fraction of features (EXACT);
            1.0 = off.
        preset: a name from :data:`PRESETS` (overrides ``bits`` / ``group_size`` / ``kept_frac`` / ``norms``).
        norms: also compress LayerNorm / BatchNorm1d.
        strict: raise :class:`UncompressedLayersError` listing the modules left uncompressed
            (default: warn with the list).
        disable: swap the layers but store activations exactly (the off switch; same modules, same
            results as the original up to floating-point reassociation).
        backend: quantization backend ('torch' | 'triton' | 'auto').
        hooks_fallback: cover the modules that have no replacement (those :func:`find_uncompressed`
            lists, e.g. PyG message-passing layers and their aggregations) with saved-tensor hooks
            scoped to their forward: every float tensor they save is quantized (no projection, no
            1-bit masks; see :mod:`graphscale.memory.hooks` for the caveat). Inside a hooked module the
            functional rule still reroutes the calls it covers (exact masks, stored derivatives: kept on
            ``ctx`` or as uint8, so the hooks do not quantize them again). Max / min aggregations
            keep what they save exact (their backward compares saved input and output; quantized
            copies would make the gradient NaN).
        compress_inputs: also compress layer inputs without autograd history (the step's input
            features; default: kept by reference, see :class:`CompressionConfig`).
        dropout_mask: ``'packed'`` (1 bit per element, torch's Bernoulli draw) or ``'seed'`` (0 bytes:
            the mask regenerated in backward from a seed); default: the preset's, else ``'packed'``.
        example_inputs: arguments of one forward (a tensor, a tuple, or a dict of keyword arguments):
            check the functional calls now (see :func:`find_uncompressed`) instead of at the first
            training forward; the model's state is restored afterwards.
    """
    cfg, norms, disable = _resolve(preset, bits, group_size, kept_frac, norms, disable)
    if cfg is not None and (backend is not None or compress_inputs or dropout_mask is not None):
        cfg = dataclasses.replace(cfg, backend=backend, compress_inputs=bool(compress_inputs),
                                  dropout_mask=dropout_mask or cfg.dropout_mask)
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress_model expects an nn.Module, got {type(model).__name__}")
    use = None if disable else cfg

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, _Compressed):
            is_norm = isinstance(m, (QLayerNorm, QBatchNorm1d))
            m.compression = use if (norms or not is_norm) else None
            if type(m) in _HOOKED.values() and use is not None and use.kept_frac < 1.0:
                m.compression = dataclasses.replace(use, kept_frac=1.0)
            return m
        entry = _REPLACEMENTS.get(type(m))
        if entry is None:
            if hooks_fallback and not _is_passthrough(m) and _does_own_work(m) and not _exact_under_hooks(m):
                return _hooked(m, use)
            return m
        fn, is_norm = entry
        if is_norm and not norms:
            return m
        return fn(m, use)

    root = convert(model)
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not child:
                setattr(parent, name, new)

    if hooks_fallback:
        _keep_exact_under_hooks(root)
    _track_inputs(root)
    static = _static_uncompressed(root)
    # The functional rule keeps out of every module left uncompressed (listed: its storage stays as it
    # is), out of max / min aggregations (exact on purpose) and, with norms=False, out of norm layers.
    exact_norms = [(n, m) for n, m in root.named_modules() if not norms and type(m) in (nn.LayerNorm, nn.BatchNorm1d)]
    exempt = [m for _, _, m in static] + [m for m in root.modules() if _exact_under_hooks(m)] + \
        [m for _, m in exact_norms]
    rule = install_functional_rule(root, use, norms, strict, exempt,
                                   {n for n, _, _ in static} | {n or "<root>" for n, _ in exact_norms})
    left = [(n, c) for n, c, _ in static]
    if not norms:
        left = [(n, c) for n, c in left if c not in ("LayerNorm", "BatchNorm1d")]
    if example_inputs is not None and use is not None:
        calls = detect_uncovered(root, example_inputs, use, norms, exempt, rule.static)
        rule.uncovered, rule.checked = calls, True
        left += calls
    if left:
        listing = ", ".join(f"{n} ({c})" for n, c in left)
        msg = (f"compress_model left {len(left)} module(s) uncompressed (their saved activations stay "
               f"full precision): {listing}. Use hooks_fallback=True (or hook_compression(model)) to cover "
               f"them or register_compressed() to add a replacement (strict=True turns this warning into an error).")
        if strict:
            raise UncompressedLayersError(msg)
        warnings.warn(msg, stacklevel=2)
    return root


def _flat_tensors(args, kwargs) -> list:
    out = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            out += [b for b in a if isinstance(b, torch.Tensor)]
        elif isinstance(a, torch.Tensor):
            out.append(a)
    return out


def _track_inputs(root: nn.Module) -> None:
    """Make ``root``'s forward declare its tensor arguments the step inputs (see ``step_inputs``)."""
    if getattr(root, "_graphscale_input_tracker", None) is not None:
        return
    state = {"ctx": None}

    def pre(module, args, kwargs):
        if state["ctx"] is None:
            state["ctx"] = step_inputs(_flat_tensors(args, kwargs))
            state["ctx"].__enter__()

    def post(module, args, kwargs, output):
        if state["ctx"] is not None:
            ctx, state["ctx"] = state["ctx"], None
            ctx.__exit__(None, None, None)

    root._graphscale_input_tracker = (root.register_forward_pre_hook(pre, with_kwargs=True),
                                      root.register_forward_hook(post, with_kwargs=True, always_call=True))


# --------------------------------------------------------------------------------------------
class _HookState:
    def __init__(self, kwargs):
        self.kwargs = kwargs
        self.ctx = None
        self.handles = []


def hook_compression(model: nn.Module, bits: int = 2, group_size: int | None = 256, min_numel: int = 1024,
                     disable: bool = False, backend: str | None = None, compress_inputs: bool = False) -> nn.Module:
    """Make ``model``'s forward run inside :func:`~graphscale.memory.hooks.compressed_activations`
    while training (forward pre/post hooks; the module, its parameters and ``state_dict`` are untouched).

    Every float activation any op saves is quantized (ActNN/GACT style), except inside max / min
    aggregations, which keep theirs exact (see ``hooks_fallback`` of :func:`compress_model`). Calling it again replaces
    the previous settings; ``disable=True`` removes the hooks. Returns the model.
    """
    CompressionConfig(bits, group_size, 1.0, backend)  # validate now, not at the first forward
    old = getattr(model, "_graphscale_hook_compression", None)
    if old is not None:
        for h in old.handles:
            h.remove()
        del model._graphscale_hook_compression
    if disable:
        tracker = getattr(model, "_graphscale_input_tracker", None)
        if tracker is not None and not any(isinstance(m, _Compressed) for m in model.modules()):
            for h in tracker:
                h.remove()
            model._graphscale_input_tracker = None
        return model
    state = _HookState(dict(bits=bits, group_size=group_size, min_numel=min_numel, backend=backend,
                            compress_inputs=compress_inputs))

    def pre(module, args):
        if module.training and torch.is_grad_enabled() and state.ctx is None:
            state.ctx = compressed_activations(**state.kwargs)
            state.ctx.__enter__()

    def post(module, args, output):
        if state.ctx is not None:
            ctx, state.ctx = state.ctx, None
            ctx.__exit__(None, None, None)

    state.handles = [model.register_forward_pre_hook(pre),
                     model.register_forward_hook(post, always_call=True)]
    model._graphscale_hook_compression = state
    _keep_exact_under_hooks(model)
    _track_inputs(model)
    return model
