"""``CompressionConfig``: how compressed layers and hooks store an activation, checked once at construction.

Gathers the options of ActNN (Chen et al., ICML 2021: ``bits``, per-group statistics over
``group_size`` values) and EXACT (Liu et al., ICLR 2022: per-row statistics, random projection keeping
``kept_frac`` of the columns) with the choices of this package (backend, whether step inputs are
compressed, how dropout keeps its mask). The accepted values and their validators live in
:mod:`graphscale.memory.compression_options`; the storage itself in :mod:`graphscale.memory.quantize`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from graphscale.memory.compression_options import (check_backend, check_bits, check_dropout_mask, check_group_size,
                                                   check_kept_frac)
from graphscale.memory.quantize import Projected, QuantizedTensor, project_quantize, quantize

__all__ = ["CompressionConfig"]


@dataclass(frozen=True)
class CompressionConfig:
    """How activations are stored: ``bits`` per value, groups of ``group_size`` values (ActNN) or
    per-row statistics (``group_size=None``, EXACT), and an optional random projection keeping
    ``kept_frac`` of the feature columns (EXACT; 1.0 = off). ``backend`` as in :func:`quantize`.
    ``compress_inputs``: also compress inputs without autograd history (the step's input features);
    by default they are kept by reference -- free when the caller holds them anyway (full-batch
    training), and no per-step quantization of a large feature matrix. ``dropout_mask``: how
    ``QDropout`` keeps its keep mask for backward -- ``'packed'`` (1 bit per element; the mask is
    torch's own Bernoulli draw, so a seeded run drops the same units as ``nn.Dropout``) or ``'seed'``
    (0 bytes: the mask is a counter-hash of a seed drawn from torch's RNG, regenerated in backward;
    DESIGN.md rule 7)."""

    bits: int = 2
    group_size: int | None = 256
    kept_frac: float = 1.0
    backend: str | None = None
    compress_inputs: bool = False
    dropout_mask: str = "packed"

    def __post_init__(self):
        check_bits(self.bits)
        check_group_size(self.group_size)
        check_kept_frac(self.kept_frac)
        check_dropout_mask(self.dropout_mask)
        if self.backend is not None:
            check_backend(self.backend)

    def compress(self, x: Tensor, project: bool = True) -> QuantizedTensor | Projected:
        """Quantize ``x`` (projecting its last dimension first when ``kept_frac < 1`` and ``project``)."""
        if project and self.kept_frac < 1.0 and x.dim() >= 1 and x.shape[-1] > 1:
            return project_quantize(x, self.kept_frac, self.bits, self.group_size, backend=self.backend)
        return quantize(x, self.bits, self.group_size, backend=self.backend)
