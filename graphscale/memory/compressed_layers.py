"""Compressed layers: the forward is exact, backward reads low-bit copies of what it needs.

ActNN (Chen et al., ICML 2021) / EXACT (Liu et al., ICLR 2022) layer replacements:

* :class:`QLinear` (also for PyG's ``Linear``) keeps its input quantized (optionally randomly projected
  first, EXACT) -- the weight gradient ``g^T x`` is linear in the stored input, so it stays unbiased;
* :class:`QReLU` keeps a 1-bit mask (exact gradient), :class:`QDropout` a bit-packed keep mask
  (exact gradient);
* :class:`QLayerNorm` / :class:`QBatchNorm1d` keep the quantized normalised input ``x_hat`` and the
  float32 per-row (per-channel) ``rstd``.

Every layer quantizes through one :class:`~graphscale.memory.hooks.SharedQuantized` cache, so a tensor
fed to several compressed ops (e.g. SAGE's root and neighbour paths) is stored once. Compressed copies
live on ``ctx`` and are reported to :func:`graphscale.memory.accounting.report_ctx`; masks and
statistics go through ``save_for_backward``.

Each Function takes ``cfg=None`` to store its input exactly (the ``disable`` path and the gradcheck
oracle). Modules subclass the torch / PyG module they replace, so parameters, buffers and
``state_dict`` keys are unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphscale.saved_bytes import report_ctx
from graphscale.memory.hooks import SharedQuantized, _finite, _keep_leaf
from graphscale.memory.bitpack import pack_codes, unpack_codes
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.compression_options import check_dropout_mask
from graphscale.memory.random_streams import hash_mask

__all__ = ["QLinear", "QReLU", "QDropout", "QLayerNorm", "QBatchNorm1d", "qlinear", "qrelu", "qdropout",
           "qlayer_norm", "qbatch_norm", "pack_mask", "unpack_mask", "shared_cache", "stash", "unstash"]

#: The process-wide quantize-once cache used by every compressed layer.
shared_cache = SharedQuantized()


def stash(ctx, x: Tensor, cfg: CompressionConfig | None, project: bool = True,
          is_input: bool = True) -> tuple[Tensor, ...]:
    """Keep ``x`` for backward: compressed on ``ctx.stored`` (shared, reported to the accounting), or
    returned as ``(x,)`` for the caller to put last in ``save_for_backward``: with ``cfg=None``, for
    leaf inputs (parameters, input features: alive anyway, a copy would only add bytes; see
    ``CompressionConfig.compress_inputs``), and for tensors holding inf / NaN. ``is_input=False``
    marks a tensor computed inside the Function (no history, yet an activation)."""
    if cfg is None or (is_input and _keep_leaf(x, cfg.compress_inputs)):
        ctx.stored = None
        return (x,)
    q = shared_cache.get(x, cfg, project=project)
    if not _finite(q.q if hasattr(q, "q") else q):
        ctx.stored = None
        return (x,)
    ctx.stored = q
    report_ctx(*q.tensors())
    return ()


def unstash(ctx) -> Tensor:
    """The stored input of :func:`stash` (dequantized, or the exact tensor saved last)."""
    if ctx.stored is None:
        return ctx.saved_tensors[-1]
    return ctx.stored.dequantize()


def pack_mask(mask: Tensor) -> Tensor:
    """Bool tensor -> ``uint8 [ceil(numel / 8)]`` (1 bit per element, the first in the lowest bit)."""
    if mask.device.type == "cpu":
        # numpy's packbits: measured 0.01 ms vs 0.2 ms for the torch bit loop on 347k values (unpack:
        # 0.03 vs 1.3 ms), one thread.
        return torch.from_numpy(np.packbits(mask.reshape(-1).numpy(), bitorder="little"))
    return pack_codes(mask.reshape(1, -1), 1).view(-1)


def unpack_mask(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`pack_mask`: a bool tensor of ``shape``."""
    n = math.prod(shape)
    if packed.device.type == "cpu":
        bits = torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little"))
    else:
        bits = unpack_codes(packed.view(1, -1), 1, n)
    return bits.reshape(shape).view(torch.bool)  # 0 / 1 bytes: a valid bool view, no conversion pass


# --------------------------------------------------------------------------------------------
class _QLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cfg):
        out = F.linear(x, weight, bias)
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        ctx.stored = None
        if weight.requires_grad:
            ctx.save_for_backward(*stash(ctx, x, cfg))
        ctx.weight = weight  # a parameter: kept alive by the module, not an activation
        return out

    @staticmethod
    def backward(ctx, g):
        w = ctx.weight
        gx = gw = gb = None
        g2 = g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[0]:
            gx = (g2 @ w.to(g2.dtype)).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            x = unstash(ctx)
            gw = g2.t() @ x.reshape(-1, x.shape[-1]).to(g2.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None


def qlinear(x: Tensor, weight: Tensor, bias: Tensor | None, cfg: CompressionConfig | None) -> Tensor:
    """``F.linear`` that keeps ``x`` compressed for the weight gradient. Shapes: ``x [..., in]`` ->
    ``[..., out]``."""
    return _QLinearFn.apply(x, weight, bias, cfg)


class _QReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = torch.relu(x)
        ctx.shape = x.shape
        ctx.save_for_backward(pack_mask(out > 0))
        return out

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        return torch.mul(g, unpack_mask(packed, ctx.shape).view(torch.uint8))  # see _apply_keep


def qrelu(x: Tensor) -> Tensor:
    """ReLU storing a 1-bit mask for backward (exact gradient, 1/32 of the float32 output)."""
    return _QReLUFn.apply(x)


class _QDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        # The same draw as torch's CPU dropout (a float bernoulli_ of x's shape and dtype), so a seeded
        # compressed run drops the same units as the uncompressed one; kept as 1 bit per element.
        keep = torch.empty_like(x).bernoulli_(1.0 - p).bool()
        ctx.scale = 1.0 / (1.0 - p)
        ctx.shape = x.shape
        ctx.save_for_backward(pack_mask(keep))
        return _apply_keep(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        return _apply_keep(g, unpack_mask(packed, ctx.shape), ctx.scale), None


class _SeedDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        # One int64 drawn from torch's RNG (so torch.manual_seed fixes the masks) is all that is kept:
        # backward regenerates the same mask from it (DESIGN.md rule 7: randomness stored as RNG state).
        ctx.seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64))
        ctx.p, ctx.shape = p, x.shape
        keep = hash_mask(x.shape, 1.0 - p, ctx.seed, device=x.device)
        return _apply_keep(x, keep, 1.0 / (1.0 - p))

    @staticmethod
    def backward(ctx, g):
        keep = hash_mask(ctx.shape, 1.0 - ctx.p, ctx.seed, device=g.device)
        return _apply_keep(g, keep, 1.0 / (1.0 - ctx.p)), None


def _apply_keep(x: Tensor, keep: Tensor, scale: float) -> Tensor:
    """``x * keep * scale`` for a bool ``keep``; through its uint8 view (measured 0.27 + 0.08 ms vs 0.61 ms
    for the bool product on [2708, 128], one thread: the bool operand takes a slower promotion path)."""
    return torch.mul(x, keep.view(torch.uint8)).mul_(scale)


def qdropout(x: Tensor, p: float, training: bool = True, mask: str = "packed") -> Tensor:
    """Dropout keeping its keep mask for backward bit-packed (``mask='packed'``: 1 bit per element,
    torch's Bernoulli draw) or as a seed only (``mask='seed'``: 0 bytes, the mask regenerated from a
    counter hash in backward; keep probability ``1 - p`` to within 2**-16)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if check_dropout_mask(mask) == "seed":
        return _SeedDropoutFn.apply(x, p)
    return _QDropoutFn.apply(x, p)


# --------------------------------------------------------------------------------------------
def _norm_backward(g_hat: Tensor, x_hat: Tensor, rstd: Tensor, dim: int) -> Tensor:
    # d/dx of (x - mean) * rstd along ``dim``: rstd * (g - mean(g) - x_hat * mean(g * x_hat)).
    return rstd * (g_hat - g_hat.mean(dim, keepdim=True) - x_hat * (g_hat * x_hat).mean(dim, keepdim=True))


_UNIT: dict = {}


def _unit_affine(n: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Cached ``(ones [n], zeros [n])`` (constants, never written)."""
    key = (n, dtype, str(device))
    if key not in _UNIT:
        _UNIT[key] = (torch.ones(n, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device))
    return _UNIT[key]


class _QLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, cfg):
        k = len(normalized_shape)
        x2 = x.reshape(-1, math.prod(normalized_shape))
        # torch's kernel with a unit affine gives x_hat and rstd (measured 1.0 ms vs 5.6 ms for var_mean
        # + arithmetic on [2708, 128], one thread; 0.26 ms with ones / zeros vs 0.45 ms without any
        # affine, which takes a slower path; x * 1 + 0 is x exactly).
        one, zero = _unit_affine(x2.shape[1], x2.dtype, x2.device)
        x_hat, _, rstd = torch.native_layer_norm(x2, (x2.shape[1],), one, zero, eps)
        rstd = rstd.view(-1, 1)
        out = x_hat.view(x.shape)
        if weight is not None and bias is not None:
            out = torch.addcmul(bias, out, weight)  # one pass (measured 0.12 vs 0.81 ms for * then +)
        elif weight is not None:
            out = out * weight
        elif bias is not None:
            out = out + bias
        ctx.x_shape, ctx.k = x.shape, k
        ctx.weight, ctx.has_bias = weight, bias is not None
        ctx.save_for_backward(rstd, *stash(ctx, x_hat, cfg, project=False, is_input=False))
        return out

    @staticmethod
    def backward(ctx, g):
        rstd = ctx.saved_tensors[0]
        x_hat = unstash(ctx).to(g.dtype)
        w = ctx.weight
        g2 = g.reshape(x_hat.shape)
        rows, n = x_hat.shape
        # torch's fused kernel with mean 0 and rstd 1 on the stored x_hat computes g_hat - mean(g_hat) -
        # x_hat * mean(g_hat * x_hat) and the affine gradients in one pass (measured 1.0 ms vs 5.0 ms for
        # _norm_backward's elementwise ops on [2708, 128], one thread); the real rstd scales gx after.
        mask = [ctx.needs_input_grad[0], w is not None and ctx.needs_input_grad[1], False]
        zero, one = x_hat.new_zeros(rows, 1), x_hat.new_ones(rows, 1)
        gx, gw, _ = torch.ops.aten.native_layer_norm_backward(g2, x_hat, (n,), zero, one,
                                                              w.reshape(n) if w is not None else None, None, mask)
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (the kernel wants a bias for it)
        if gx is not None:
            gx = gx.mul_(rstd).view(ctx.x_shape)
        if gw is not None:
            gw = gw.view(w.shape)
        if gb is not None:
            gb = gb.view(w.shape if w is not None else ctx.x_shape[-ctx.k:])
        return gx, gw, gb, None, None, None


def qlayer_norm(x: Tensor, normalized_shape, weight: Tensor | None, bias: Tensor | None, eps: float,
                cfg: CompressionConfig | None) -> Tensor:
    """LayerNorm keeping the quantized normalised input and the float32 ``rstd [rows, 1]``."""
    return _QLayerNormFn.apply(x, weight, bias, tuple(normalized_shape), eps, cfg)


class _QBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, mean, rstd, batch_stats, cfg):
        # x2 [M, C]; (mean, rstd) [C] are batch statistics or the running ones.
        x_hat = (x2 - mean) * rstd
        out = x_hat
        if weight is not None:
            out = out * weight
        if bias is not None:
            out = out + bias
        ctx.weight, ctx.has_bias, ctx.batch_stats = weight, bias is not None, batch_stats
        ctx.save_for_backward(rstd, *stash(ctx, x_hat, cfg, project=False, is_input=False))
        return out

    @staticmethod
    def backward(ctx, g):
        rstd = ctx.saved_tensors[0]
        x_hat = unstash(ctx).to(g.dtype)
        w = ctx.weight
        gw = gb = None
        if w is not None and ctx.needs_input_grad[1]:
            gw = (g * x_hat).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        g_hat = g * w if w is not None else g
        gx = None
        if ctx.needs_input_grad[0]:
            gx = _norm_backward(g_hat, x_hat, rstd, 0) if ctx.batch_stats else g_hat * rstd
        return gx, gw, gb, None, None, None, None


def qbatch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None,
                bias: Tensor | None, training: bool, momentum: float | None, eps: float,
                num_batches_tracked: Tensor | None, cfg: CompressionConfig | None) -> Tensor:
    """BatchNorm over ``x [N, C]`` or ``[N, C, L]`` (statistics per channel ``C``) keeping the quantized
    ``x_hat``; running statistics are updated as :func:`torch.nn.functional.batch_norm` does."""
    if x.dim() not in (2, 3):
        raise ValueError(f"QBatchNorm1d expects a [N, C] or [N, C, L] input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    x2 = x if x.dim() == 2 else x.movedim(1, -1).reshape(-1, c)
    batch_stats = training or running_mean is None
    if batch_stats:
        with torch.no_grad():
            var, mean = torch.var_mean(x2, dim=0, correction=0)
            if training and running_mean is not None:
                m = x2.shape[0]
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(1)
                f = (1.0 / float(num_batches_tracked)) if momentum is None else momentum
                running_mean.mul_(1 - f).add_(mean, alpha=f)
                running_var.mul_(1 - f).add_(var * (m / max(m - 1, 1)), alpha=f)
    else:
        mean, var = running_mean, running_var
    rstd = torch.rsqrt(var + eps)
    out = _QBatchNormFn.apply(x2, weight, bias, mean, rstd, batch_stats, cfg)
    if x.dim() == 3:
        out = out.view(x.shape[0], x.shape[2], c).movedim(-1, 1)
    return out


# --------------------------------------------------------------------------------------------
# Modules. ``compression`` is a CompressionConfig or None (None = store exactly: the disable switch).
class _Compressed:
    compression: CompressionConfig | None = None

    @classmethod
    def convert(cls, module: nn.Module, cfg: CompressionConfig | None):
        """A compressed module sharing ``module``'s parameters, buffers and hooks (same objects)."""
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
        new.compression = cfg
        return new

    def extra_repr(self) -> str:  # type: ignore[override]
        base = super().extra_repr()  # type: ignore[misc]
        c = self.compression
        tag = "compression=off" if c is None else (
            f"bits={c.bits}, group_size={c.group_size}" + (f", kept_frac={c.kept_frac}" if c.kept_frac < 1 else ""))
        return f"{base}, {tag}" if base else tag


class QLinear(_Compressed, nn.Linear):
    """:class:`torch.nn.Linear` keeping its input quantized for the weight gradient (ActNN/EXACT).

    Shapes: ``[..., in_features] -> [..., out_features]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return qlinear(x, self.weight, self.bias, self.compression)


class QReLU(_Compressed, nn.ReLU):
    """:class:`torch.nn.ReLU` with a 1-bit mask for backward (``inplace`` is ignored: same memory)."""

    def forward(self, x: Tensor) -> Tensor:
        return qrelu(x) if self.compression is not None else torch.relu(x)


class QDropout(_Compressed, nn.Dropout):
    """:class:`torch.nn.Dropout` keeping a bit-packed keep mask (1 bit per element) or, with
    ``CompressionConfig(dropout_mask='seed')``, only the seed it regenerates the mask from."""

    def forward(self, x: Tensor) -> Tensor:
        if self.compression is None:
            return F.dropout(x, self.p, self.training)
        return qdropout(x, self.p, self.training, self.compression.dropout_mask)


class QLayerNorm(_Compressed, nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` keeping the quantized normalised input and float32 ``rstd`` per row."""

    def forward(self, x: Tensor) -> Tensor:
        return qlayer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, self.compression)


class QBatchNorm1d(_Compressed, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` keeping the quantized normalised input and float32 ``rstd`` per
    channel. Shapes: ``[N, C]`` or ``[N, C, L]``."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_running = not self.training and self.track_running_stats
        return qbatch_norm(x, self.running_mean if (self.training or use_running) else None,
                           self.running_var if (self.training or use_running) else None,
                           self.weight, self.bias, self.training, self.momentum, self.eps,
                           self.num_batches_tracked if self.training else None, self.compression)


try:  # PyG's own Linear (used inside its convolutions): same forward as nn.Linear once initialised.
    from torch_geometric.nn.dense.linear import Linear as _PyGLinear

    class QPyGLinear(_Compressed, _PyGLinear):
        """:class:`torch_geometric.nn.Linear` keeping its input quantized (see :class:`QLinear`)."""

        def forward(self, x: Tensor) -> Tensor:
            return qlinear(x, self.weight, self.bias, self.compression)

    __all__.append("QPyGLinear")
except ImportError:  # pragma: no cover - PyG is a dependency; keep the module importable without it
    _PyGLinear = None
    QPyGLinear = None


try:  # PyG's SAGEConv: a replacement that aggregates after its neighbour Linear (mean / sum only).
    from torch_geometric.nn.aggr import MeanAggregation as _MeanAggr, SumAggregation as _SumAggr
    from torch_geometric.nn.conv import SAGEConv as _SAGEConv

    class QSAGEConv(_Compressed, _SAGEConv):
        """:class:`torch_geometric.nn.SAGEConv` (Hamilton et al., NeurIPS 2017) whose neighbour Linear
        runs *before* a mean / sum aggregation: ``agg_j(x_j) W^T + b = agg_j(x_j W^T) + b`` exactly (an
        empty neighbourhood gives 0 on both sides; GCNConv orders it the same way). ``lin_l`` then reads
        the layer input itself -- in the first layer the step's input features, kept by reference; in
        later layers the activation ``lin_r`` reads too, quantized once for both (EXACT's shared copy)
        -- instead of a separate ``[N, in_channels]`` aggregated tensor that must be quantized every
        step; the aggregation runs on ``out_channels`` columns, and whatever float tensors it saves
        are quantized by scoped saved-tensor hooks. Other aggregations and ``project=True`` run
        SAGEConv's own forward. Shapes and arguments as SAGEConv.
        """

        def _reorders(self) -> bool:
            return (not self.project and isinstance(self.aggr_module, (_MeanAggr, _SumAggr))
                    and type(self.aggr_module) in (_MeanAggr, _SumAggr))

        def forward(self, x, edge_index, size=None):
            if not self._reorders():
                return _SAGEConv.forward(self, x, edge_index, size)
            c = self.compression
            if isinstance(x, Tensor):
                x = (x, x)
            h = qlinear(x[0], self.lin_l.weight, None, c)
            if c is not None and self.training and torch.is_grad_enabled():
                from graphscale.memory.hooks import compressed_activations
                with compressed_activations(c.bits, c.group_size, backend=c.backend,
                                            compress_inputs=c.compress_inputs):
                    out = self.propagate(edge_index, x=(h, x[1]), size=size)
            else:
                out = self.propagate(edge_index, x=(h, x[1]), size=size)
            if self.lin_l.bias is not None:
                out = out + self.lin_l.bias
            if self.root_weight and x[1] is not None:
                out = out + qlinear(x[1], self.lin_r.weight, self.lin_r.bias, c)
            if self.normalize:
                out = F.normalize(out, p=2.0, dim=-1)
            return out

    __all__.append("QSAGEConv")
except ImportError:  # pragma: no cover
    _SAGEConv = None
    QSAGEConv = None
