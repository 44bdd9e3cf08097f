"""Where the ``[N, F]`` feature matrices of layer-wise training and inference live.

* :class:`FeatureStore` -- allocates ``[N, F]`` buffers in host memory or in memory-mapped files
  (``storage='memory' | 'mmap'``), checking first that they fit.
* :func:`map_rows` -- a row-batched transform from one buffer into another (a frozen layer applied
  to a store), only one batch on the compute device at a time.
* :func:`node_batches` -- seeded shuffled mini-batches of node ids.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Iterator

import torch
from torch import Tensor

from graphscale.errors import ConfigError, DataError

STORAGES = ("memory", "mmap")


# --------------------------------------------------------------------------- feature storage
def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class FeatureStore:
    """Allocates the ``[N, F]`` feature buffers of layer-wise training, in RAM or in mmap files.

    With ``storage='memory'`` buffers are ordinary host tensors; with ``storage='mmap'`` each buffer
    is a file in ``folder`` mapped with :func:`torch.from_file` (``shared=True``: writes go to the
    file, the OS pages rows in and out), so a feature matrix larger than RAM still works. Either way
    buffers stay on the host; training moves only mini-batches to the compute device.

    Args:
        storage: ``'memory'`` or ``'mmap'``.
        folder: where mmap files go (required for ``'mmap'``; created if missing).
        dtype: element type of every buffer.

    Raises:
        ConfigError: unknown storage or a missing folder for mmap.
        DataError: from :meth:`empty` when a buffer does not fit (RAM for ``'memory'``, free disk
            space in ``folder`` for ``'mmap'``), before anything is allocated.
    """

    def __init__(self, storage: str = "memory", folder: str | None = None, dtype: torch.dtype = torch.float32):
        if storage not in STORAGES:
            raise ConfigError(f"storage {storage!r} is not one of {STORAGES}")
        if storage == "mmap":
            if not folder:
                raise ConfigError("storage='mmap' needs a folder for the memory-mapped feature files")
            os.makedirs(folder, exist_ok=True)
        self.storage, self.folder, self.dtype = storage, folder, dtype
        self._files: dict[int, str] = {}  # id(tensor) -> path, to delete on release
        self._count = 0

    def check_fits(self, num_rows: int, width: int, what: str = "features", dtype: torch.dtype | None = None) -> int:
        """Raise :class:`DataError` unless a ``[num_rows, width]`` buffer fits; return its bytes."""
        nbytes = int(num_rows) * int(width) * torch.empty((), dtype=dtype or self.dtype).element_size()
        if self.storage == "memory":
            avail = _available_memory_bytes()
            if avail is not None and nbytes > avail:
                raise DataError(f"{what} [{num_rows}, {width}] need {nbytes / 2**30:.2f} GiB but only "
                                f"{avail / 2**30:.2f} GiB of memory is available: use storage='mmap' with "
                                f"a folder on a disk that has the space")
        else:
            free = shutil.disk_usage(self.folder).free
            if nbytes > free:
                raise DataError(f"{what} [{num_rows}, {width}] need {nbytes / 2**30:.2f} GiB of disk but "
                                f"{self.folder!r} has only {free / 2**30:.2f} GiB free: choose another "
                                f"folder (train.storage_dir)")
        return nbytes

    def empty(self, num_rows: int, width: int, what: str = "features", dtype: torch.dtype | None = None) -> Tensor:
        """A new uninitialised ``[num_rows, width]`` host buffer (checked with :meth:`check_fits`) of
        ``dtype`` (default: the store's)."""
        dtype = dtype or self.dtype
        self.check_fits(num_rows, width, what, dtype)
        if self.storage == "memory":
            return torch.empty(num_rows, width, dtype=dtype)
        self._count += 1
        path = os.path.join(self.folder, f"features_{os.getpid()}_{self._count}.bin")
        numel = int(num_rows) * int(width)
        with open(path, "wb") as fh:  # sparse file of the right size; pages appear when written
            fh.truncate(numel * torch.empty((), dtype=dtype).element_size())
        buf = torch.from_file(path, shared=True, size=numel, dtype=dtype).view(num_rows, width)
        self._files[id(buf)] = path
        return buf

    def release(self, buf: Tensor) -> None:
        """Forget a buffer made by :meth:`empty` (its mmap file is deleted; the mapping lives until
        the last reference to ``buf`` goes)."""
        path = self._files.pop(id(buf), None)
        if path is not None and os.path.exists(path):
            os.unlink(path)

    def release_all(self) -> None:
        for path in self._files.values():
            if os.path.exists(path):
                os.unlink(path)
        self._files.clear()


@torch.no_grad()
def map_rows(fn: Callable[[Tensor], Tensor], x: Tensor, out: Tensor, batch_size: int = 65_536,
             device: torch.device | str | None = None) -> Tensor:
    """``out[i] = fn(x[i])`` in row batches moved to ``device`` (a frozen layer applied to a store)."""
    device = torch.device(device) if device is not None else x.device
    for r0 in range(0, x.size(0), batch_size):
        r1 = min(x.size(0), r0 + batch_size)
        out[r0:r1] = fn(x[r0:r1].to(device)).to(out.device)
    return out


def node_batches(nodes: Tensor, batch_size: int, generator: torch.Generator | None = None,
                 shuffle: bool = True) -> Iterator[Tensor]:
    """Shuffled mini-batches of ``nodes`` (the last one may be smaller)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = nodes[torch.randperm(nodes.numel(), generator=generator)] if shuffle else nodes
    for i in range(0, order.numel(), batch_size):
        yield order[i:i + batch_size]


