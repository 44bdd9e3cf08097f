"""Atomic files: a crash or kill mid-write never corrupts the last good checkpoint, cache entry or
results file. Every writer goes to a temporary file in the target's folder, flushes it to disk,
then renames it over the target (readers see the old file or the new one, never half of one)."""
from __future__ import annotations

import json
import os
import tempfile

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write) -> None:
    """Call ``write(binary_file)`` on a temporary sibling of ``path``, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        # mkstemp creates 0600; a result or checkpoint gets the mode any new file would (0666 - umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_json(obj, path: str) -> None:
    """JSON (indented) written atomically."""
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def save_text(text: str, path: str) -> None:
    """Text written atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode()))
