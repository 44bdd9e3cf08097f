"""The bytes autograd saves for backward, counted exactly (the base every layer may import).

:class:`SavedBytes` / :func:`count_saved_bytes` see saved tensors through
:func:`torch.autograd.graph.saved_tensors_hooks` and de-duplicate them by storage (a tensor saved by
five ops, or a view of it, counts once). Custom :class:`torch.autograd.Function`\\ s that keep tensors
on ``ctx`` directly (not through ``save_for_backward``) are invisible to those hooks; they call
:func:`report_ctx` so the count stays complete. The count is exact and device-agnostic.

This module sits below ``graphscale.nn`` (whose reversible and equilibrium Functions report their
``ctx`` stashes) and ``graphscale.memory`` (which re-exports it next to the profiler and RSS checks),
so the import direction data -> sampling -> nn -> memory -> train holds.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["SavedBytes", "count_saved_bytes", "report_ctx", "tensor_bytes"]


_active = threading.local()


def _counters() -> list["SavedBytes"]:
    if not hasattr(_active, "stack"):
        _active.stack = []
    return _active.stack


def _storages(t: Tensor) -> Iterator[tuple[tuple, int]]:
    """``(key, nbytes)`` of every storage behind ``t``; the key identifies the storage."""
    if t.is_sparse:
        yield from _storages(t._indices())
        yield from _storages(t._values())
        return
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        compressed = t.crow_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr) else t.ccol_indices()
        plain = t.col_indices() if t.layout in (torch.sparse_csr, torch.sparse_bsr) else t.row_indices()
        for part in (compressed, plain, t.values()):
            yield from _storages(part)
        return
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        yield (("id", id(t)), t.numel() * t.element_size())
        return
    ptr = st.data_ptr()
    if ptr == 0 or st.nbytes() == 0:  # freed (resize_(0)) or empty: holds nothing
        return
    yield ((str(t.device), ptr), st.nbytes())


def tensor_bytes(*tensors: Tensor) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and repeats counted once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if isinstance(t, Tensor):
            for key, nbytes in _storages(t):
                seen[key] = nbytes
    return sum(seen.values())


@dataclass
class SavedBytes:
    """Result of :func:`count_saved_bytes`.

    Attributes:
        saved: bytes of distinct storages autograd saved for backward (hooks).
        ctx: bytes of distinct storages custom Functions reported with :func:`report_ctx`
            (storages already counted in ``saved`` are not counted again).
        num_saved: number of pack events (a tensor saved twice counts twice here only).
    """

    saved: int = 0
    ctx: int = 0
    num_saved: int = 0
    _seen: dict = field(default_factory=dict, repr=False)
    _exclude: set = field(default_factory=set, repr=False)

    @property
    def total(self) -> int:
        """All activation bytes held for backward: ``saved + ctx``."""
        return self.saved + self.ctx

    def _add(self, t: Tensor, kind: str) -> None:
        for key, nbytes in _storages(t):
            if key in self._exclude or key in self._seen:
                continue
            self._seen[key] = nbytes
            if kind == "saved":
                self.saved += nbytes
            else:
                self.ctx += nbytes


@contextlib.contextmanager
def count_saved_bytes(exclude: nn.Module | Iterable[Tensor] | None = None) -> Iterator[SavedBytes]:
    """Count the activation bytes saved for backward by the code run inside the block.

    Example::

        with count_saved_bytes(exclude=model) as c:
            loss = model(x, edge_index).sum()
        print(c.total)   # exact bytes autograd (and reporting custom Functions) hold for backward

    Args:
        exclude: a module (its parameters and buffers) or tensors whose storages are not activations
            (weights saved by ``linear`` for the input gradient are parameters, counted elsewhere).

    Counting happens when a tensor is saved; a storage later freed in place (``resize_(0)``, as
    reversible blocks do with their inputs) stays counted, so free before saving or report via
    :func:`report_ctx` what is really kept.
    """
    counter = SavedBytes()
    if exclude is not None:
        tensors = list(exclude.parameters()) + list(exclude.buffers()) if isinstance(exclude, nn.Module) \
            else list(exclude)
        for t in tensors:
            counter._exclude.update(key for key, _ in _storages(t))

    def pack(t: Tensor):
        counter.num_saved += 1
        counter._add(t, "saved")
        return t

    stack = _counters()
    stack.append(counter)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield counter
    finally:
        stack.remove(counter)


def report_ctx(*tensors: Tensor) -> None:
    """Protocol for custom autograd Functions: report tensors kept on ``ctx`` for backward.

    Call it from ``forward`` with every tensor stored as a ``ctx`` attribute (not through
    ``save_for_backward``, which the hooks already see). Outside :func:`count_saved_bytes` it does
    nothing and costs one attribute lookup.
    """
    stack = getattr(_active, "stack", None)
    if not stack:
        return
    for counter in stack:
        for t in tensors:
            if isinstance(t, Tensor):
                counter._add(t, "ctx")

