"""Autotuning with a way out: every graphscale Triton kernel is a :class:`TunedKernel`.

A :class:`TunedKernel` holds one ``@triton.jit`` function, its list of ``triton.Config`` (block sizes,
``num_warps``) and the autotune key. A launch either lets ``triton.autotune`` pick the fastest
config for the key (the default: the first launch for a new key times every surviving config, later
launches reuse the winner), or runs **one pinned config**, chosen by

* the launcher's ``config=`` argument (an index into ``KERNELS[name].configs``), else
* :func:`pin` (a context manager: ``with pin(spmm_fwd=2): ...``), else
* the ``GRAPHSCALE_TRITON_CONFIG`` environment variable: ``"spmm_fwd=2,spmm_bwd=0"``, or ``"*=0"``
  for the first config of every kernel.

Pinning is how the CPU tests reach every config: under ``TRITON_INTERPRET=1`` autotuning works
(timed with a wall clock, once per config) but checks only the winner, and each config is a
different program (other masks, other loop trip counts) that must agree with the reference.

Depends on torch and triton only.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Sequence

import triton
import triton.testing  # do_bench (imported by triton itself today; named here for older versions)

__all__ = ["ENV", "KERNELS", "TunedKernel", "pin", "pinned_index"]

ENV = "GRAPHSCALE_TRITON_CONFIG"

#: name -> TunedKernel, filled as the kernel modules are imported.
KERNELS: dict[str, "TunedKernel"] = {}
_PINS: dict[str, int] = {}


def _bench(kernel_call: Callable[[], None], quantiles=None):
    """Autotune's timer. On a GPU, ``triton.testing.do_bench`` with short windows (5 ms warm-up,
    25 ms of repeats per config: tuning a kernel with 6 configs costs ~0.2 s plus compiles, which
    keeps the device check inside its budget). Under the interpreter there is no device driver:
    one wall-clock run per config."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        t0 = time.perf_counter()
        kernel_call()
        ms = (time.perf_counter() - t0) * 1e3
        return [ms, ms, ms] if quantiles else ms
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def _env_pins() -> dict[str, int]:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return {}
    pins = {}
    for part in raw.split(","):
        name, sep, idx = part.partition("=")
        name = name.strip()
        if not sep or not idx.strip().lstrip("-").isdigit():
            raise ValueError(f"{ENV}={raw!r}: expected comma-separated name=index pairs (e.g. 'spmm_fwd=2,"
                             f"spmm_bwd=0' or '*=0'), got {part!r}")
        if name != "*" and name not in KERNELS:
            raise ValueError(f"{ENV}: unknown kernel {name!r}; expected '*' or one of {', '.join(sorted(KERNELS))}")
        pins[name] = int(idx)
    return pins


def pinned_index(name: str) -> int | None:
    """The pinned config index of kernel ``name`` (:func:`pin` first, then the environment), or None."""
    if name in _PINS:
        return _PINS[name]
    env = _env_pins()
    return env.get(name, env.get("*"))


@contextlib.contextmanager
def pin(**indices: int):
    """Pin configs for the duration of a ``with`` block: ``with pin(spmm_fwd=3, spmm_bwd=1): ...``."""
    for name, idx in indices.items():
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; expected one of {', '.join(sorted(KERNELS))}")
        KERNELS[name].config(idx)  # range check now, not at launch
    old = dict(_PINS)
    _PINS.update(indices)
    try:
        yield
    finally:
        _PINS.clear()
        _PINS.update(old)


class TunedKernel:
    """One jit kernel, its autotune configs and key; launch with :meth:`launch`.

    Args:
        name: registry name (``KERNELS[name]``; used by :func:`pin` and the environment variable).
        fn: the ``@triton.jit`` function.
        configs: ``triton.Config`` list; their ``kwargs`` are the tuned constexprs.
        key: argument names whose values select a tuning entry (tensor dtypes are added by triton).
        prune: optional ``early_config_prune(configs, named_args, **kwargs) -> configs``.
    """

    def __init__(self, name: str, fn, configs: Sequence[triton.Config], key: Sequence[str], prune=None):
        if name in KERNELS:
            raise ValueError(f"kernel name {name!r} registered twice")
        self.name, self.fn, self.configs = name, fn, list(configs)
        self.tuned = triton.autotune(configs=self.configs, key=list(key), do_bench=_bench,
                                     prune_configs_by={"early_config_prune": prune} if prune else None)(fn)
        KERNELS[name] = self

    def config(self, index: int) -> triton.Config:
        if not 0 <= index < len(self.configs):
            raise ValueError(f"{self.name}: config index {index} out of range; it has {len(self.configs)} "
                             f"configs (0..{len(self.configs) - 1})")
        return self.configs[index]

    def launch(self, grid: Callable[[dict], tuple], *args, config: int | None = None, **kwargs) -> triton.Config | None:
        """Run the kernel on ``grid(meta)``; returns the pinned config, or None when autotuned."""
        idx = config if config is not None else pinned_index(self.name)
        if idx is None:
            self.tuned[grid](*args, **kwargs)
            return None
        cfg = self.config(idx)
        self.fn[grid](*args, **kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return cfg

    @property
    def best_config(self) -> triton.Config | None:
        """The config the last autotuned launch ran (None before any)."""
        return getattr(self.tuned, "best_config", None)
