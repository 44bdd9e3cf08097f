"""Compress every activation autograd saves, for any model: ``with compressed_activations(bits=2): ...``.

The model-agnostic form of ActNN (Chen et al., ICML 2021) / GACT (Liu et al., ICML 2022): a
:func:`torch.autograd.graph.saved_tensors_hooks` pair quantizes each saved floating-point tensor on
pack (:mod:`graphscale.memory.quantize`) and dequantizes it when backward unpacks it. Kept as they are:
integer / bool tensors (indices, masks), tensors smaller than ``min_numel``, per-row statistics
(``[..., 1]`` tensors such as LayerNorm's mean and rstd: 1/D of the bytes, and backward divides by
them), expanded views of smaller tensors (a zero stride: e.g. per-node counts broadcast over the
features, which a mean aggregation divides by), tensors holding inf / NaN,
and leaves (parameters, input features) and their views -- those usually stay alive outside autograd
anyway, so a compressed copy would only add bytes. ``compress_inputs=True`` compresses leaves without
grad too (worth it when the step's input is a fresh gather, as under subgraph sampling). A tensor
saved by several ops is quantized once and the packed copy shared (EXACT's trick), keyed by the
tensor's identity and version.

Caveat (as for GACT): an op whose backward is nonlinear in what it saved sees a quantized value. ReLU
saving its output is exact at 0 but a positive value smaller than its group's step may read back as 0;
the layer-level replacements (:mod:`graphscale.memory.compressed_layers`) store exact 1-bit masks instead.
The hooks do not apply random projection (its reconstruction is unbiased only where the backward is
linear in the saved tensor, i.e. for matmul inputs; use :func:`graphscale.memory.compress_model`).

The innermost ``saved_tensors_hooks`` wins, so byte counting under this context goes through the
``report_ctx`` protocol of :mod:`graphscale.memory.accounting`: nest ``count_saved_bytes`` outside.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch import Tensor

from graphscale.errors import ConfigError
from graphscale.saved_bytes import report_ctx
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.quantize import Projected, QuantizedTensor

__all__ = ["compressed_activations", "SharedQuantized", "step_inputs"]


class SharedQuantized:
    """Quantize-once cache: the same live tensor (same version) maps to one compressed copy.

    Entries are keyed by ``id`` and checked against a weak reference, so a recycled ``id`` never
    returns a stale copy; an entry disappears with its tensor. Callers pass intermediate activations
    only (tensors created afresh by every forward), so a copy is never reused across steps.
    """

    def __init__(self):
        self._entries: dict[int, tuple] = {}

    def get(self, t: Tensor, cfg: CompressionConfig, project: bool = True):
        if t.grad_fn is None and t._base is None:
            # No history: possibly data that outlives the step (full-batch features); caching it would
            # reuse one draw of the rounding noise in every step.
            return cfg.compress(t, project=project)
        key = id(t)
        hit = self._entries.get(key)
        if hit is not None:
            ref, version, hcfg, hproj, value = hit
            if ref() is t and version == t._version and hcfg == cfg and hproj == project:
                return value
        value = cfg.compress(t, project=project)
        entries = self._entries
        try:
            ref = weakref.ref(t, lambda _r, k=key: entries.pop(k, None))
        except TypeError:  # not weak-referenceable: no sharing
            return value
        entries[key] = (ref, t._version, cfg, project, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


# The tensors passed to the forward of the model being compressed (set by compress_model /
# hook_compression around the root forward): only those leaves are "inputs held by the caller".
_step_inputs = threading.local()


@contextlib.contextmanager
def step_inputs(tensors) -> Iterator[None]:
    """Declare ``tensors`` the current step's inputs (kept by reference, not compressed) while the block
    runs; other tensors without autograd history are compressed as activations."""
    prev = getattr(_step_inputs, "ids", None)
    _step_inputs.ids = {id(t): weakref.ref(t) for t in tensors if isinstance(t, Tensor)}
    try:
        yield
    finally:
        _step_inputs.ids = prev


def _keep_leaf(t: Tensor, compress_inputs: bool) -> bool:
    """Keep by reference: a leaf (or a view of one) that requires grad (a parameter, a differentiated
    input), or -- unless ``compress_inputs`` -- a step input. Outside :func:`step_inputs` every leaf
    counts as an input; inside, a grad-free leaf that is not an input (e.g. features aggregated from
    the raw input) is an activation."""
    base = t._base if t._base is not None else t
    if not base.is_leaf:
        return False
    if base.requires_grad:
        return True
    if compress_inputs:
        return False
    ids = getattr(_step_inputs, "ids", None)
    if ids is None:
        return True
    ref = ids.get(id(base))
    return ref is not None and ref() is base


def _broadcast(t: Tensor) -> bool:
    """An expanded view (a zero stride over a dimension longer than 1), e.g. PyG's mean aggregation
    dividing by ``count.view(-1, 1).expand_as(out)``: its storage is the small unexpanded tensor, so a
    quantized copy would be larger than keeping it, and a backward that divides by it (``g / count``)
    would divide by noisy values (measured: relative gradient error 0.77 below a 2-bit SAGEConv
    aggregating over ``edge_index``)."""
    return any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape))


def _finite(q) -> bool:
    # Statistics are inf / NaN exactly when the data has inf / NaN (e.g. -inf fill values of an
    # empty max-reduction): quantizing would spread that over the whole row or group.
    return bool(torch.isfinite(q.mn).all() and torch.isfinite(q.scale).all())


@contextlib.contextmanager
def compressed_activations(bits: int = 2, group_size: int | None = 256, min_numel: int = 1024,
                           enabled: bool = True, backend: str | None = None,
                           kept_frac: float = 1.0, compress_inputs: bool = False) -> Iterator[CompressionConfig | None]:
    """Quantize the activations autograd saves inside the block; backward dequantizes them.

    Example::

        with compressed_activations(bits=2):
            loss = loss_fn(model(x, edge_index)[train], y[train])
        loss.backward()          # may run outside the block

    Args:
        bits: 1, 2, 4 or 8 bits per value.
        group_size: values per quantization group (ActNN; default 256) or ``None`` for per-row
            statistics (EXACT).
        min_numel: saved float tensors with fewer elements are kept exactly (small tensors save
            little and are often reused statistics).
        enabled: ``False`` makes the block a no-op (the ``disable=`` switch, DESIGN.md rule 6).
        backend: quantization backend (``'torch'``, ``'triton'`` or ``'auto'``).
        kept_frac: must be 1.0 here (see the module docstring); projection is a layer-level option.
        compress_inputs: also quantize saved leaves without grad (input features).

    Yields the :class:`CompressionConfig` in use (``None`` when disabled).
    """
    cfg = CompressionConfig(bits, group_size, 1.0, backend, bool(compress_inputs))  # validates the arguments
    if kept_frac != 1.0:
        raise ConfigError(f"compressed_activations does not apply random projection (kept_frac={kept_frac!r}): "
                          f"its reconstruction is unbiased only for matmul inputs; use "
                          f"compress_model(..., kept_frac=...) for the layers that support it")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ConfigError(f"min_numel must be a non-negative int, got {min_numel!r}")
    if not enabled:
        yield None
        return
    cache = SharedQuantized()

    def pack(t: Tensor):
        if (not t.is_floating_point() or t.numel() < min_numel or t.layout != torch.strided
                or (t.dim() >= 2 and t.shape[-1] == 1) or _broadcast(t) or _keep_leaf(t, cfg.compress_inputs)):
            report_ctx(t)
            return t
        q = cache.get(t, cfg, project=False)
        if not _finite(q.q if isinstance(q, Projected) else q):
            report_ctx(t)
            return t
        report_ctx(*q.tensors())
        return q

    def unpack(obj):
        if isinstance(obj, (QuantizedTensor, Projected)):
            return obj.dequantize(cfg.backend)
        return obj

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield cfg
    finally:
        cache.clear()
