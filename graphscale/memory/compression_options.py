"""The accepted values of every activation-compression option, and the validators that enforce them.

Options of ActNN (Chen et al., ICML 2021: ``bits`` per value, per-group statistics over ``group_size``
values) and EXACT (Liu et al., ICLR 2022: per-row statistics, ``group_size=None``; a random projection
keeping ``kept_frac`` of the feature columns), plus how ``QDropout`` keeps its mask and which backend
quantizes. Each ``check_*`` returns the value it accepts or raises a :class:`~graphscale.errors.ConfigError`
naming the bad value and what was expected, before any work starts (DESIGN.md rule 13).

This module is the bottom of :mod:`graphscale.memory`: :mod:`~graphscale.memory.bitpack`,
:mod:`~graphscale.memory.quantize` and :mod:`~graphscale.memory.compression_config` all check their
arguments here, so it imports nothing of the package but the errors.
"""
from __future__ import annotations

from torch import Tensor

from graphscale.errors import ConfigError

__all__ = ["SUPPORTED_BITS", "BACKENDS", "DROPOUT_MASKS", "check_bits", "check_group_size", "check_kept_frac",
           "check_dropout_mask", "check_backend"]

#: Bit widths a code can have (``8 // bits`` codes per byte).
SUPPORTED_BITS = (1, 2, 4, 8)
#: Quantization backends: ``auto`` = Triton for CUDA tensors, the torch reference otherwise.
BACKENDS = ("auto", "torch", "triton")
#: How ``QDropout`` keeps its keep mask: ``packed`` (1 bit per element) or ``seed`` (regenerated).
DROPOUT_MASKS = ("packed", "seed")


def check_bits(bits) -> int:
    """``bits`` must be one of :data:`SUPPORTED_BITS` (an int, not a bool)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def check_group_size(group_size) -> int | None:
    """``None`` means per-row (EXACT); otherwise a positive int (ActNN groups)."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ConfigError(f"group_size must be a positive int (or None for per-row quantization), "
                          f"got {group_size!r}")
    return group_size


def check_kept_frac(kept_frac) -> float:
    """The fraction of feature columns EXACT's random projection keeps: in ``(0, 1]`` (1 = no projection)."""
    if not isinstance(kept_frac, (int, float)) or isinstance(kept_frac, bool) or not 0.0 < kept_frac <= 1.0:
        raise ConfigError(f"projection kept_frac must be in (0, 1] (1 = no projection), got {kept_frac!r}")
    return float(kept_frac)


def check_dropout_mask(mode) -> str:
    """One of :data:`DROPOUT_MASKS`."""
    if mode not in DROPOUT_MASKS:
        raise ConfigError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {mode!r}")
    return mode


def check_backend(name) -> str:
    """One of :data:`BACKENDS`."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown quantization backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def check_float(x, what: str = "quantize") -> None:
    """``x`` must be a floating-point tensor (integer and bool tensors are stored as they are)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} expects a floating-point tensor, got dtype {x.dtype} "
                        f"(integer and bool tensors are stored as they are)")
