"""Gradient-communication compression through DDP communication hooks (``train.comm_hook``).

* ``powersgd``: PyTorch's PowerSGD hook (Vogels, Karimireddy, Jaggi, NeurIPS 2019, "PowerSGD:
  Practical Low-Rank Gradient Compression for Distributed Optimization"): each gradient matrix is
  sent as two rank-``r`` factors, with error feedback and warm start; plain all-reduce for the first
  ``train.powersgd_start_iter`` steps. Used as shipped; we only count its bytes.
* ``signsgd``: an error-feedback 1-bit compressor (Karimireddy et al., ICML 2019, "Error Feedback
  Fixes SignSGD and other Gradient Compression Schemes"; the 1-bit stage of Tang et al., ICML 2021,
  "1-bit Adam"). Per DDP bucket ``g`` (flat, ``n`` elements) on every rank:
  ``p = g + e``; ``scale = mean|p|``; send ``sign(p)`` packed 8 per byte plus ``scale``
  (``ceil(n/8) + 4`` bytes instead of ``4n``); keep ``e = p - scale * sign(p)`` for the next step;
  after an all-gather every rank decodes ``mean_r scale_r * sign(p_r)`` as the averaged gradient.
  The scaled mean (not a bare majority vote) keeps the step size of plain averaging, and the residual
  ``e`` re-injects what the signs lost, which is what makes the compressed run converge.

Bytes on the wire are counted in the hooks (:class:`CommStats`): the payload one rank hands to its
collectives per step, summed over steps (the ring/tree algorithm's own factor of about ``2(W-1)/W``
is not included, the same for every hook). ``uncompressed_bytes`` is what plain all-reduce of the
same buckets would hand over. Hook state (residuals, PowerSGD's factors) is per rank and not
checkpointed: a resumed compressed run restarts error feedback from zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from graphscale.errors import ConfigError

HOOKS = ("none", "powersgd", "signsgd")
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass
class CommStats:
    """Bytes one rank handed to gradient collectives, and what plain all-reduce would have sent."""

    hook: str = "none"
    steps: int = 0
    bytes: int = 0
    uncompressed_bytes: int = 0

    def add(self, sent: int, plain: int, last_bucket: bool) -> None:
        self.bytes += int(sent)
        self.uncompressed_bytes += int(plain)
        self.steps += int(last_bucket)

    def as_dict(self) -> dict:
        ratio = self.uncompressed_bytes / self.bytes if self.bytes else float("nan")
        return {"comm_hook": self.hook, "comm_steps": self.steps, "comm_bytes": self.bytes,
                "comm_uncompressed_bytes": self.uncompressed_bytes, "comm_compression": ratio}


# ------------------------------------------------------------------------------------------ bit packing
def pack_signs(x: Tensor) -> Tensor:
    """``x >= 0`` as bits, 8 per byte (most significant first): ``[n]`` -> ``uint8[ceil(n/8)]``."""
    bits = (x >= 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8) * _BIT_WEIGHTS.to(bits.device)).sum(1, dtype=torch.uint8)


def unpack_signs(packed: Tensor, n: int, dtype=torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs`: ``uint8[ceil(n/8)]`` -> ``[n]`` of ``+1`` / ``-1``."""
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)).ne(0).view(-1)[:n]
    return bits.to(dtype) * 2 - 1


# ------------------------------------------------------------------------------------------ signSGD
@dataclass
class SignState:
    """Per-rank state of :func:`signsgd_hook`: the error-feedback residual of every bucket."""

    process_group: object = None
    error_feedback: bool = True
    residuals: dict = field(default_factory=dict)
    stats: CommStats = field(default_factory=lambda: CommStats("signsgd"))


def compress_sign(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``p`` ``[n]`` -> (packed signs ``uint8[ceil(n/8)]``, ``scale`` ``[1]`` = mean ``|p|``,
    the decoded ``scale * sign(p)`` ``[n]``)."""
    scale = p.abs().mean().reshape(1).to(torch.float32)
    packed = pack_signs(p)
    decoded = torch.where(p >= 0, scale, -scale).to(p.dtype)
    return packed, scale, decoded


def signsgd_hook(state: SignState, bucket):  # no annotations: DDP rejects string (postponed) ones
    """DDP communication hook: error-feedback 1-bit sign compression with an all-gather.

    Returns a ``torch.futures.Future[Tensor]`` of the bucket's averaged (decoded) gradient, as DDP expects.
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    grad = bucket.buffer()
    n, idx = grad.numel(), bucket.index()
    p = grad.detach().float()
    if state.error_feedback:
        e = state.residuals.get(idx)
        if e is not None and e.numel() == n:  # DDP rebuilds buckets after step 1: reset on a new layout
            p = p + e
    packed, scale, decoded = compress_sign(p)
    if state.error_feedback:
        state.residuals[idx] = p - decoded.float()
    state.stats.add(packed.numel() + scale.numel() * 4, n * grad.element_size(), bucket.is_last())

    # One payload per rank (signs then the scale's 4 bytes) so a single all-gather carries both.
    payload = torch.cat([packed, scale.view(torch.uint8)])
    gathered = [torch.empty_like(payload) for _ in range(world)]
    fut = dist.all_gather(gathered, payload, group=group, async_op=True).get_future()

    def decode(fut) -> Tensor:
        out = torch.zeros(n, dtype=torch.float32, device=grad.device)
        for chunk in gathered:
            s = chunk[-4:].clone().view(torch.float32)
            out += unpack_signs(chunk[:-4], n) * s
        grad.copy_(out.div_(world).to(grad.dtype))
        return grad

    return fut.then(decode)


# ------------------------------------------------------------------------------------------ PowerSGD
def _counting_powersgd(stats: CommStats):
    """PyTorch's ``powerSGD_hook`` with its bytes counted: full buckets during the plain all-reduce
    warm-up, then the elements PowerSGD itself reports sending (``total_numel_after_compression``:
    the ``P`` and ``Q`` factors plus the tensors it leaves uncompressed)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    def powersgd_counting_hook(state, bucket):  # DDP wants a function (it reads __name__), unannotated
        buf = bucket.buffer()
        plain = buf.numel() * buf.element_size()
        if state.iter < state.start_powerSGD_iter:
            sent = plain
            fut = psgd.powerSGD_hook(state, bucket)
        else:
            before = state.total_numel_after_compression
            fut = psgd.powerSGD_hook(state, bucket)
            sent = (state.total_numel_after_compression - before) * buf.element_size()
        stats.add(sent, plain, bucket.is_last())
        return fut
    return powersgd_counting_hook


def register_comm_hook(ddp_model, name: str, *, powersgd_rank: int = 1, powersgd_start_iter: int = 10,
                       error_feedback: bool = True, seed: int = 0) -> CommStats | None:
    """Register hook ``name`` (``none`` | ``powersgd`` | ``signsgd``) on a DDP model; return the
    :class:`CommStats` the hook fills (``None`` for ``none``: DDP's built-in all-reduce)."""
    if name not in HOOKS:
        raise ConfigError(f"train.comm_hook={name!r}: expected one of {', '.join(HOOKS)}")
    if name == "none":
        return None
    if name == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
        if powersgd_rank < 1:
            raise ConfigError(f"train.powersgd_rank must be >= 1, got {powersgd_rank}")
        # PowerSGD needs start_powerSGD_iter > 1 with error feedback / warm start.
        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                   start_powerSGD_iter=max(2, powersgd_start_iter), random_seed=seed,
                                   use_error_feedback=error_feedback, warm_start=error_feedback)
        stats = CommStats("powersgd")
        ddp_model.register_comm_hook(state, _counting_powersgd(stats))
        return stats
    state = SignState(error_feedback=error_feedback)
    ddp_model.register_comm_hook(state, signsgd_hook)
    return state.stats
