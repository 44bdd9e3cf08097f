"""``train.precision``: fp32, or mixed precision through :func:`torch.autocast` (bf16 / fp16).

Mixed precision as in Micikevicius et al., ICLR 2018, "Mixed Precision Training": parameters, optimizer
state and the loss stay fp32; the forward runs under ``torch.autocast(device_type, dtype)``, which runs
matrix products (``linear``, ``matmul``) in the low precision and keeps precision-sensitive ops in fp32.
The model's logits are cast back to fp32 before the loss and the metrics. fp16's narrow exponent range
needs loss scaling (``torch.amp.GradScaler``: the loss is multiplied before backward, gradients are
unscaled before clipping and the optimizer step, a step with inf/NaN gradients is skipped and the
scale lowered); bf16 has fp32's exponent range and needs none.

Which device runs what (checked before any data is loaded, :func:`check_precision_config`):

* ``fp32``: everywhere (autocast off).
* ``bf16``: CPU, and GPUs where ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
* ``fp16``: CUDA only (with a GradScaler); CPU autocast in fp16 is refused: use bf16 on CPU.

Recomputing layers (reversible stacks, DEQ blocks) replay the forward's autocast state in their
backward (:func:`graphscale.nn.reversible.autocast_state`), and ``graphscale.ops`` aggregation and the
activation quantizers of ``graphscale.memory`` take bf16 / fp16 inputs (see docs/precision.md).
"""
from __future__ import annotations

import contextlib

import torch

from graphscale.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` when ``device`` cannot run ``precision`` (before training starts)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision {precision!r} is not one of {', '.join(PRECISIONS)}",
                          key="train.precision")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision=fp16 on device {device}: fp16 autocast needs CUDA; use "
                          f"train.precision=bf16 on CPU (or fp32)", key="train.precision")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"train.precision=bf16 but the GPU {name!r} ({device}) does not support bf16 "
                          f"(torch.cuda.is_bf16_supported() is False); use train.precision=fp16 there "
                          f"(or fp32)", key="train.precision")


def check_precision_config(cfg) -> None:
    """:func:`check_precision` for ``cfg.train.precision`` on the device ``cfg.train.device`` resolves to."""
    from graphscale.train.run import resolve_device
    check_precision(cfg.train.precision, resolve_device(cfg.train.device))


class Precision:
    """Autocast and loss scaling for one run.

    Args:
        precision: ``'fp32' | 'bf16' | 'fp16'`` (checked with :func:`check_precision`).
        device: the training device.

    Use: ``with p.autocast(): out = model(...)``; ``p.scale(loss).backward()``; before clipping
    ``p.unscale_(opt)``; then ``p.step(opt)`` instead of ``opt.step()``.
    """

    def __init__(self, precision: str, device: torch.device):
        check_precision(precision, device)
        self.name, self.device_type = precision, device.type
        self.dtype = _DTYPES.get(precision)
        # fp16 only: bf16 keeps fp32's exponent range, so its gradients do not underflow
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        """The forward's context: ``torch.autocast`` in the low precision, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16, skipped when a gradient is inf/NaN, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        """The loss scaler's state for a checkpoint (``None`` without one)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
