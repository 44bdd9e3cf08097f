"""Degree-balanced work schedule for the row-parallel CSR kernels (row split, two-pass combine).

One program per CSR row is the natural SpMM schedule, but on a skewed graph (ogbn-products: average
in-degree ~50, maximum in the tens of thousands; arxiv: ~14 and ~13k) one program then walks a
thousand times the edges of a typical one and the whole launch waits for it. The schedule here cuts
every row longer than ``chunk`` edges into ``ceil(degree / chunk)`` **work items** of at most
``chunk`` consecutive edges (the row-split / merge-path idea: bounded work per program):

* pass 1 (the kernel itself) runs one program per work item; an item that covers a whole row writes
  the output directly, an item of a split row writes its partial result (sum, or max/min value with
  its arg position, or the online-softmax state) to a ``[num_partials, F]`` buffer;
* pass 2 (a small combine kernel) merges the partials of each split row in chunk order.

Why two passes rather than atomics: results stay deterministic (the same bits every run, as the
unsplit kernels' are), max/min keep torch's first-edge tie rule (chunks merge in order with a strict
comparison), and the softmax state merges exactly (log-sum-exp); float atomics give none of these.
Why split rather than group rows by degree: grouping balances rows against each other but still
leaves one program per longest row; splitting bounds every program's work. When no row is longer
than ``chunk`` the schedule is ``None`` and the kernels launch exactly one program per row (no
index arrays, no partials): balanced graphs pay nothing.

Depends on torch and triton only.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RowSchedule", "build_schedule", "default_chunk"]


class RowSchedule(NamedTuple):
    """Work items over a CSR with ``R`` rows (all int64, on the CSR's device).

    Attributes:
        chunk: edges per work item (the last item of a row may hold fewer).
        item_row: ``[W]`` row of each item.
        item_start: ``[W]`` first CSR position of each item (its end is ``min(start + chunk, rowptr[row + 1])``).
        item_slot: ``[W]`` partial-buffer row of the item, or -1 when the item is its whole row.
        split_row: ``[S]`` the rows cut into several items.
        split_ptr: ``[S + 1]`` slots of split row ``s`` are ``split_ptr[s] .. split_ptr[s + 1]``.
        num_partials: ``split_ptr[-1]``.
    """

    chunk: int
    item_row: torch.Tensor
    item_start: torch.Tensor
    item_slot: torch.Tensor
    split_row: torch.Tensor
    split_ptr: torch.Tensor
    num_partials: int

    @property
    def num_items(self) -> int:
        return self.item_row.numel()


def default_chunk(num_rows: int, num_edges: int) -> int:
    """Edges per work item: 8x the average degree rounded up to a power of two, at least 256.

    A row is split only when it is far longer than a typical row (8x average): short-tailed graphs
    keep the one-program-per-row launch, and a 13k-edge arxiv hub becomes ~50 items of 256 edges.
    (A starting point for hardware; the device check reports the time with and without splitting.)
    """
    avg = num_edges / max(num_rows, 1)
    chunk = 256
    while chunk < 8 * avg:
        chunk *= 2
    return chunk


def build_schedule(rowptr: torch.Tensor, chunk: int) -> RowSchedule | None:
    """The row-split schedule of ``rowptr [R + 1]`` for ``chunk`` edges per item, or None when no
    row has more than ``chunk`` edges. One device sync (the item count); cache the result."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 edge per work item, got {chunk}")
    deg = rowptr[1:] - rowptr[:-1]
    if deg.numel() == 0 or int(deg.max()) <= chunk:
        return None
    dev = rowptr.device
    num_rows = deg.numel()
    n_items = torch.clamp((deg + chunk - 1) // chunk, min=1)  # an empty row still gets its zero written
    first = torch.cumsum(n_items, 0) - n_items                 # first item of each row
    total = int(first[-1] + n_items[-1])
    item_row = torch.repeat_interleave(torch.arange(num_rows, device=dev), n_items, output_size=total)
    k = torch.arange(total, device=dev) - first.index_select(0, item_row)  # item's index inside its row
    item_start = rowptr[:-1].index_select(0, item_row) + k * chunk
    split = n_items > 1
    item_split = split.index_select(0, item_row)
    item_slot = torch.full((total,), -1, dtype=torch.long, device=dev)
    num_partials = int(item_split.sum())
    item_slot[item_split] = torch.arange(num_partials, device=dev)
    split_row = torch.nonzero(split).flatten()
    split_ptr = torch.zeros(split_row.numel() + 1, dtype=torch.long, device=dev)
    torch.cumsum(n_items.index_select(0, split_row), 0, out=split_ptr[1:])
    return RowSchedule(chunk, item_row, item_start, item_slot, split_row, split_ptr, num_partials)
