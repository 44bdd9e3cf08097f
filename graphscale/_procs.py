"""The process table, read from ``/proc`` without third-party packages (Linux).

Used by the launcher (``graphscale train --nproc``: kill a torchrun agent and every worker) and by the
benchmarks' memory sampler (:mod:`graphscale.bench.procmem`: every process of a run).
"""
from __future__ import annotations

import os


def children_map() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every process visible in ``/proc`` (empty without ``/proc``)."""
    out: dict[int, list[int]] = {}
    if not os.path.isdir("/proc"):
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before their children."""
    kids = children_map()
    order, todo = [], [pid]
    while todo:
        p = todo.pop()
        order.append(p)
        todo += kids.get(p, [])
    return order
