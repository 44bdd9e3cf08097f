"""Gradient-communication compression through DDP communication hooks (``train.comm_hook``).

* ``powersgd``: PyTorch's PowerSGD hook (Vogels, Karimireddy, Jaggi, NeurIPS 2019, "PowerSGD:
  Practical Low-Rank Gradient Compression for Distributed Optimization"): each gradient matrix is
  sent as two rank-``r`` factors, with error feedback and warm start; plain all-reduce for the first
  ``train.powersgd_start_iter`` steps. Used as shipped; we only count its bytes.
* ``signsgd``: an error-feedback 1-bit compressor (Karimireddy et al., ICML 2019, "Error Feedback
  Fixes SignSGD and other Gradient Compression Schemes"; the 1-bit stage of Tang et al., ICML 2021,
  "1-bit Adam"). Per DDP bucket ``g`` (flat, ``n`` elements) on every rank:
  ``p = g + e``; one ``scale = mean|p|`` per parameter tensor of the bucket; send ``sign(p)`` packed 8
  per byte plus the ``k`` scales (``ceil(n/8) + 4k`` bytes instead of ``4n``); keep
  ``e = p - scale * sign(p)`` for the next step; after an all-gather every rank decodes
  ``mean_r scale_r * sign(p_r)`` as the averaged gradient. The scaled mean (not a bare majority vote)
  keeps the step size of plain averaging, and the residual ``e`` re-injects what the signs lost, which
  is what makes the compressed run converge. Scales and residuals belong to parameters, not to DDP's
  buckets: DDP rebuilds its buckets early in training (and a resumed run starts again from the
  initial layout), so per-bucket state would be applied to the wrong elements.

Bytes on the wire are counted in the hooks (:class:`CommStats`): the payload one rank hands to its
collectives per step, summed over steps (the ring/tree algorithm's own factor of about ``2(W-1)/W``
is not included, the same for every hook). ``uncompressed_bytes`` is what plain all-reduce of the
same buckets would hand over.

Checkpoints: :func:`register_comm_hook` returns the hook's state object; its ``state_dict()`` holds the
rank's error-feedback residuals (and PowerSGD's iteration counter and ``Q`` factors) keyed by
parameter name, plus the byte counters, and ``load_state_dict`` restores them, so a resumed run
continues error feedback exactly where the killed one stopped (the trainer gathers every rank's
state into the checkpoint; docs/distributed.md).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

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
    """Per-rank state of :func:`signsgd_hook`: the error-feedback residual of every parameter.

    ``names`` maps ``id(parameter)`` to its name in the wrapped module (filled by
    :func:`register_comm_hook`); residuals of unnamed parameters are keyed by identity and are not
    checkpointed.
    """

    process_group: object = None
    error_feedback: bool = True
    residuals: dict = field(default_factory=dict)  # parameter name -> residual [numel] float32
    stats: CommStats = field(default_factory=lambda: CommStats("signsgd"))
    names: dict = field(default_factory=dict)

    def key(self, param):
        return self.names.get(id(param), id(param))

    def state_dict(self) -> dict:
        return {"residuals": {k: v.detach().cpu().clone() for k, v in self.residuals.items() if isinstance(k, str)},
                "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.residuals = dict(state["residuals"])  # moved to the gradients' device on first use
        self.stats.__dict__.update(CommStats(**state["stats"]).__dict__)  # in place: callers hold .stats


def compress_sign_pieces(p: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Scaled sign of ``p`` ``[n]`` with one scale per consecutive piece of ``sizes`` (``sum = n``):
    (packed signs ``uint8[ceil(n/8)]``, scales ``float32[len(sizes)]`` = mean ``|piece|``, the decoded
    ``scale * sign(p)`` ``[n]``)."""
    pieces = p.split(sizes)
    scales = torch.stack([q.abs().mean() if q.numel() else q.new_zeros(()) for q in pieces]).to(torch.float32)
    expanded = scales.to(p.dtype).repeat_interleave(torch.tensor(sizes, device=p.device), output_size=p.numel())
    return pack_signs(p), scales, torch.where(p >= 0, expanded, -expanded)


def compress_sign(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``p`` ``[n]`` -> (packed signs ``uint8[ceil(n/8)]``, ``scale`` ``[1]`` = mean ``|p|``,
    the decoded ``scale * sign(p)`` ``[n]``)."""
    return compress_sign_pieces(p, [p.numel()])


def signsgd_hook(state: SignState, bucket):  # no annotations: DDP rejects string (postponed) ones
    """DDP communication hook: error-feedback 1-bit sign compression with an all-gather.

    Returns a ``torch.futures.Future[Tensor]`` of the bucket's averaged (decoded) gradient, as DDP expects.
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    grad = bucket.buffer()
    n = grad.numel()
    params = bucket.parameters()
    sizes = [g.numel() for g in bucket.gradients()]
    if sum(sizes) != n:
        raise RuntimeError(f"DDP bucket {bucket.index()} holds {n} values but its gradients {sum(sizes)}")
    p = grad.detach().to(torch.float32, copy=True)
    offsets = [0]
    for k in sizes:
        offsets.append(offsets[-1] + k)
    if state.error_feedback:
        for param, lo, hi in zip(params, offsets, offsets[1:]):
            e = state.residuals.get(state.key(param))
            if e is not None:
                p[lo:hi] += e.to(p.device)
    packed, scales, decoded = compress_sign_pieces(p, sizes)
    if state.error_feedback:
        rest = p - decoded
        for param, lo, hi in zip(params, offsets, offsets[1:]):
            state.residuals[state.key(param)] = rest[lo:hi]
    state.stats.add(packed.numel() + scales.numel() * 4, n * grad.element_size(), bucket.is_last())

    # One payload per rank (signs then the scales' bytes) so a single all-gather carries both.
    payload = torch.cat([packed, scales.view(torch.uint8)])
    gathered = [torch.empty_like(payload) for _ in range(world)]
    fut = dist.all_gather(gathered, payload, group=group, async_op=True).get_future()
    counts = torch.tensor(sizes, device=grad.device)
    nb = packed.numel()

    def decode(fut) -> Tensor:
        out = torch.zeros(n, dtype=torch.float32, device=grad.device)
        for chunk in gathered:
            s = chunk[nb:].clone().view(torch.float32)
            out += unpack_signs(chunk[:nb], n) * s.repeat_interleave(counts, output_size=n)
        grad.copy_(out.div_(world).to(grad.dtype))
        return grad

    return fut.then(decode)


# ------------------------------------------------------------------------------------------ PowerSGD
class PowerSGDHook:
    """PyTorch's ``powerSGD_hook`` with its bytes counted and its state kept per parameter.

    Counting: full buckets during the plain all-reduce warm-up, then the elements PowerSGD itself
    reports sending (``total_numel_after_compression``: the ``P`` and ``Q`` factors plus the tensors
    it leaves uncompressed).

    State: PowerSGD keys its error-feedback vectors and warm-start ``Q`` factors by DDP bucket index.
    DDP rebuilds its buckets once, early in training, and a resumed run's new DDP starts from the
    initial layout again, so this wrapper remembers which parameters each bucket's state was laid out
    for; when a bucket's parameters change, the state is cut into per-parameter pieces and reassembled
    in the new layout before PowerSGD sees it. Everything PowerSGD computes is per tensor (``P = MQ``,
    orthogonalisation, ``Q = M^T P``) or elementwise (error feedback, the averaged vectors), so the
    result does not depend on the layout. For the same reason the first ``Q`` of a matrix is drawn
    here from a generator seeded by ``(seed, parameter name)`` instead of PowerSGD's one draw per
    bucket (PowerSGD then orthogonalises it as usual).
    """

    def __init__(self, state, names: dict, seed: int = 0):
        self.state, self.names, self.seed = state, names, seed
        self.stats = CommStats("powersgd")
        self.layout: dict[int, tuple] = {}  # bucket index -> (keys, sizes, q plan) the state dicts hold
        self.pending: dict[str, dict] = {"error": {}, "q": {}}  # per-parameter pieces not yet in a bucket

    # -------------------------------------------------------------- layout
    def _plan(self, bucket) -> tuple:
        """(parameter keys, sizes, q plan) of a bucket; the q plan lists ``(position, n, m, r)`` of the
        compressed matrices in the order of PowerSGD's ``Q`` memory (grouped by shape, first seen first)."""
        from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress
        st = self.state
        keys = tuple(self.names.get(id(p), str(i)) for i, p in enumerate(bucket.parameters()))
        grads = bucket.gradients()
        groups: dict = {}
        for i, g in enumerate(grads):
            n, m = g.shape[0], g.numel() // max(g.shape[0], 1)
            r = min(n, m, st.matrix_approximation_rank)
            if g.dim() >= 1 and _should_compress(n, m, r, st.min_compression_rate)[0]:
                groups.setdefault((n, m), []).append((i, n, m, r))
        return keys, [g.numel() for g in grads], [x for group in groups.values() for x in group]

    def _to_pieces(self, idx: int) -> None:
        """Move bucket ``idx``'s state into per-parameter pieces (it is laid out for ``layout[idx]``)."""
        keys, sizes, qplan = self.layout.pop(idx)
        st = self.state
        err = st.error_dict.pop(idx, None)
        if err is not None:
            self.pending["error"].update({k: e.clone() for k, e in zip(keys, err.split(sizes))})
        q = st.q_memory_dict.pop(idx, None)
        st.p_memory_dict.pop(idx, None)
        if q is not None:
            self.pending["q"].update({keys[i]: piece.clone() for (i, _, m, r), piece in
                                      zip(qplan, q.split([m * r for _, _, m, r in qplan]))})

    def _assemble(self, idx: int, plan: tuple, like: Tensor) -> None:
        keys, sizes, qplan = plan
        st, err, qs = self.state, self.pending["error"], self.pending["q"]
        if any(k in err for k in keys):
            st.error_dict[idx] = torch.cat([err.pop(k).to(like) if k in err else like.new_zeros(s)
                                            for k, s in zip(keys, sizes)])
        if qplan and any(keys[i] in qs for i, *_ in qplan):
            st.q_memory_dict[idx] = torch.cat([qs.pop(keys[i]).to(like) if keys[i] in qs else
                                               self._init_q(keys[i], m, r, like) for i, _, m, r in qplan])
            st.p_memory_dict[idx] = like.new_empty(sum(n * r for _, n, _, r in qplan))
        self.layout[idx] = plan

    def _init_q(self, key: str, m: int, r: int, like: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(str(key).encode()))
        return torch.randn(m * r, generator=gen, dtype=like.dtype).to(like.device)

    def _prepare(self, bucket) -> None:
        idx, buf = bucket.index(), bucket.buffer()
        plan = self._plan(bucket)
        if idx in self.layout and self.layout[idx][0] != plan[0]:
            # DDP rebuilt its buckets: this and the later buckets (not yet called in this step; the
            # earlier ones kept their parameters) change layout.
            for j in sorted(j for j in self.layout if j >= idx):
                self._to_pieces(j)
        if idx not in self.layout:
            self._assemble(idx, plan, buf)
        st = self.state
        if st.iter >= st.start_powerSGD_iter and st.warm_start and idx not in st.p_memory_dict and plan[2]:
            keys, _, qplan = plan
            st.q_memory_dict[idx] = torch.cat([self._init_q(keys[i], m, r, buf) for i, _, m, r in qplan])
            st.p_memory_dict[idx] = buf.new_empty(sum(n * r for _, n, _, r in qplan))

    # -------------------------------------------------------------- hook
    def hook(self):
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
        stats = self.stats

        def powersgd_counting_hook(state, bucket):  # DDP wants a function (it reads __name__), unannotated
            buf = bucket.buffer()
            plain = buf.numel() * buf.element_size()
            self._prepare(bucket)
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

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """This rank's state, per parameter, on the host (the live state is left as it is)."""
        st = self.state
        err = {k: v.detach().cpu().clone() for k, v in self.pending["error"].items()}
        qs = {k: v.detach().cpu().clone() for k, v in self.pending["q"].items()}
        for idx, (keys, sizes, qplan) in self.layout.items():
            if idx in st.error_dict:
                err.update({k: e.detach().cpu().clone() for k, e in zip(keys, st.error_dict[idx].split(sizes))})
            if idx in st.q_memory_dict:
                pieces = st.q_memory_dict[idx].split([m * r for _, _, m, r in qplan])
                qs.update({keys[i]: piece.detach().cpu().clone() for (i, *_), piece in zip(qplan, pieces)})
        return {"iter": st.iter, "error": err, "q": qs, "numel_before": st.total_numel_before_compression,
                "numel_after": st.total_numel_after_compression, "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        st = self.state
        st.iter = state["iter"]
        st.total_numel_before_compression, st.total_numel_after_compression = state["numel_before"], state["numel_after"]
        st.error_dict.clear(), st.p_memory_dict.clear(), st.q_memory_dict.clear()
        self.layout = {}
        self.pending = {"error": dict(state["error"]), "q": dict(state["q"])}
        self.stats.__dict__.update(CommStats(**state["stats"]).__dict__)


def register_comm_hook(ddp_model, name: str, *, powersgd_rank: int = 1, powersgd_start_iter: int = 10,
                       error_feedback: bool = True, seed: int = 0):
    """Register hook ``name`` (``none`` | ``powersgd`` | ``signsgd``) on a DDP model.

    Returns the hook's state (:class:`SignState` or :class:`PowerSGDHook`: ``.stats`` is the
    :class:`CommStats` the hook fills; ``state_dict()`` / ``load_state_dict()`` for checkpoints), or
    ``None`` for ``none`` (DDP's built-in all-reduce, stateless)."""
    if name not in HOOKS:
        raise ConfigError(f"train.comm_hook={name!r}: expected one of {', '.join(HOOKS)}")
    if name == "none":
        return None
    names = {id(p): n for n, p in ddp_model.module.named_parameters()}
    if name == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
        if powersgd_rank < 1:
            raise ConfigError(f"train.powersgd_rank must be >= 1, got {powersgd_rank}")
        # PowerSGD needs start_powerSGD_iter > 1 with error feedback / warm start.
        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                   start_powerSGD_iter=max(2, powersgd_start_iter), random_seed=seed,
                                   use_error_feedback=error_feedback, warm_start=error_feedback)
        wrapper = PowerSGDHook(state, names, seed)
        ddp_model.register_comm_hook(state, wrapper.hook())
        return wrapper
    state = SignState(error_feedback=error_feedback, names=names)
    ddp_model.register_comm_hook(state, signsgd_hook)
    return state
