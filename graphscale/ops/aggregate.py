"""Neighbour aggregation ops and backend dispatch: the seam every graphscale layer aggregates through.

Backend choice: the ``backend=`` argument, else the ``GRAPHSCALE_BACKEND`` environment variable,
else ``auto`` (Triton for CUDA tensors when triton is installed, the pure-torch reference
otherwise). Inputs are validated here, before any kernel runs, so a bad index or shape is a clear
error instead of an out-of-bounds read.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from graphscale import _features
from graphscale.errors import ConfigError
from graphscale.ops import reference
from graphscale.ops.csr import CSR

__all__ = ["spmm", "softmax_aggr", "gen_aggr", "resolve_backend", "BACKENDS", "REDUCES", "GEN_REDUCES"]

BACKENDS = ("auto", "torch", "triton")
REDUCES = ("sum", "mean", "max", "min")
GEN_REDUCES = ("sum", "mean", "max", "min", "pmean")
TIES = ("split", "first")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _explicit(backend: str | None) -> str:
    """The backend name asked for (argument > env var), lower case; ``'auto'`` if none."""
    return str(backend if backend is not None else os.environ.get("GRAPHSCALE_BACKEND", "auto")).lower()


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``'torch'`` or ``'triton'`` for tensors on ``device`` (argument > env var > auto)."""
    name = backend if backend is not None else os.environ.get("GRAPHSCALE_BACKEND", "auto")
    name = str(name).lower()
    if name not in BACKENDS:
        raise ConfigError(f"unknown aggregation backend {name!r}; expected one of {', '.join(BACKENDS)} "
                          f"(argument or GRAPHSCALE_BACKEND)")
    if name == "auto":
        return "triton" if (device.type == "cuda" and _features.WITH_TRITON) else "torch"
    if name == "triton":
        if not _features.WITH_TRITON:
            _features.require("triton", "the Triton aggregation backend")
        if device.type != "cuda" and not _features.TRITON_INTERPRET:
            raise ConfigError(f"backend 'triton' needs CUDA tensors, got tensors on {device}; set "
                              f"TRITON_INTERPRET=1 (before importing graphscale) to run the kernels on CPU, "
                              f"or use backend 'torch'")
    return name


def _check_adj(adj) -> CSR:
    if not isinstance(adj, CSR):
        raise TypeError(f"adj must be a graphscale.ops.CSR (build one with CSR.from_edge_index or "
                        f"graphscale.ops.as_csr), got {type(adj).__name__}")
    return adj


def _check_x(adj: CSR, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [num_src_nodes, F], got shape {tuple(x.shape)}")
    if x.size(0) != adj.num_cols:
        raise ValueError(f"x has {x.size(0)} rows but the adjacency has {adj.num_cols} source nodes")
    if x.device != adj.device:
        raise ValueError(f"x is on {x.device} but the adjacency is on {adj.device}")
    return x.contiguous()  # kernels index rows densely; a strided view is copied, not misread


def _check_edge(adj: CSR, name: str, v: Tensor | None, x: Tensor, dim: int) -> Tensor | None:
    if v is None:
        return None
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
    if v.dtype != x.dtype and v.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        v = v.to(x.dtype)  # autocast (train.precision=bf16) mixes dtypes by design: aggregate in x's
    if v.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {v.dtype} but x has {x.dtype}; cast one of them")
    want = (adj.num_edges,) if dim == 1 else (adj.num_edges, x.size(1))
    if tuple(v.shape) != want:
        raise ValueError(f"{name} must have shape {list(want)} (one row per edge, CSR order), got {list(v.shape)}")
    if v.device != x.device:
        raise ValueError(f"{name} is on {v.device} but x is on {x.device}")
    return v  # not made contiguous here: the reference reads row slices of a strided view as well


def spmm(adj: CSR, x: Tensor, reduce: str = "sum", edge_weight: Tensor | None = None, *,
         backend: str | None = None, ties: str = "split") -> Tensor:
    """Aggregate source features into destinations: ``out[i] = REDUCE_{j->i} w_ji * x[j]``.

    The sparse-dense product behind GCN (Kipf & Welling 2017) and GraphSAGE (Hamilton et al. 2017)
    aggregation; semantics are specified in :mod:`graphscale.ops.reference`.

    Args:
        adj: :class:`CSR` ``[N_dst, N_src]`` (rows = destinations).
        x: ``[N_src, F]`` floating-point features.
        reduce: ``'sum' | 'mean' | 'max' | 'min'``; empty rows give 0.
        edge_weight: ``[E]`` weights in CSR order (default ``adj.value``; ``None`` = all ones).
        backend: ``'auto' | 'torch' | 'triton'`` (default: ``GRAPHSCALE_BACKEND`` or auto).
        ties: ``max`` / ``min`` gradient at tied messages: ``'split'`` (default; PyG's and torch
            ``scatter_reduce``'s rule, see :mod:`graphscale.ops.reference`) or ``'first'`` (all to the
            first edge in CSR order). The Triton kernels implement ``'first'`` only: with ``'split'``,
            ``max`` / ``min`` on CUDA run the pure-torch reference under ``auto``, and an explicit
            ``backend='triton'`` is a ``ConfigError``.

    Returns:
        ``[N_dst, F]``, differentiable w.r.t. ``x`` and ``edge_weight``.
    """
    adj = _check_adj(adj)
    if reduce not in REDUCES:
        raise ValueError(f"unsupported reduce {reduce!r}; expected one of {', '.join(REDUCES)}")
    x = _check_x(adj, x)
    w = _check_edge(adj, "edge_weight", adj.value if edge_weight is None else edge_weight, x, 1)
    if ties not in TIES:
        raise ValueError(f"unsupported ties {ties!r}; expected one of {', '.join(TIES)}")
    use_triton = resolve_backend(backend, x.device) == "triton"
    if use_triton and reduce in ("max", "min") and ties == "split":
        if _explicit(backend) == "triton":
            raise ConfigError(f"backend 'triton' implements {reduce} with ties='first' only (the gradient of tied "
                              f"messages goes to the first edge); pass ties='first' or backend='torch'")
        use_triton = False  # the reference runs on CUDA tensors too
    if use_triton:
        from graphscale.ops import triton_ops
        return triton_ops.spmm(adj, x, reduce, None if w is None else w.contiguous())
    return reference.spmm(adj, x, reduce, w, ties)


def softmax_aggr(adj: CSR, x: Tensor, t: Tensor | float = 1.0, edge_attr: Tensor | None = None, *,
                 relu: bool = True, eps: float = 1e-7, backend: str | None = None) -> Tensor:
    """GENConv's softmax aggregation (Li, Xiong, Thabet, Ghanem 2020, "DeeperGCN", eq. 4).

    ``m_e = relu(x[j] + edge_attr[e]) + eps`` for every edge ``e = (j -> i)``, then per destination and
    feature ``out[i] = sum_e softmax_e(t * m_e) * m_e``. Rows without edges give 0.

    Args:
        adj: :class:`CSR` ``[N_dst, N_src]``.
        x: ``[N_src, F]`` source features.
        t: inverse temperature: a float or a one-element tensor (e.g. a learnable ``Parameter``;
            its gradient is computed).
        edge_attr: optional ``[E, F]`` edge features in CSR order (``adj.edge_order(edge_attr)``).
        relu: apply the ReLU of the message function (GENConv); ``False`` gives ``m_e = x_j + e + eps``.
        eps: added to every message (GENConv's ``eps``, default ``1e-7``).
        backend: ``'auto' | 'torch' | 'triton'``.

    Returns:
        ``[N_dst, F]``, differentiable w.r.t. ``x``, ``edge_attr`` and ``t``.
    """
    adj = _check_adj(adj)
    x = _check_x(adj, x)
    ea = _check_edge(adj, "edge_attr", edge_attr, x, 2)
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise ValueError(f"t must be a scalar or one-element tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"t must be floating-point, got dtype {t.dtype}")
        t = t.reshape(())
    else:
        t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
    if resolve_backend(backend, x.device) == "triton":
        from graphscale.ops import triton_ops
        return triton_ops.softmax_aggr(adj, x, t, None if ea is None else ea.contiguous(), relu, float(eps))
    return reference.softmax_aggr(adj, x, t, ea, relu, float(eps))


def gen_aggr(adj: CSR, x: Tensor, edge_attr: Tensor, reduce: str = "sum", *, eps: float = 1e-7,
             p: Tensor | float | None = None, clamp: tuple[float | None, float | None] = (None, None),
             backend: str | None = None) -> Tensor:
    """GENConv's message and aggregation fused (Li, Xiong, Thabet, Ghanem 2020, "DeeperGCN", eq. 3-5),
    for the aggregations other than softmax (:func:`softmax_aggr`).

    ``m_e = relu(x[j] + edge_attr[e]) + eps`` for every edge ``e = (j -> i)``, then per destination and
    feature ``sum | mean | max | min`` of the ``m_e``, or ``'pmean'``: ``mean_e clamp(m_e, lo, hi) ** p``
    (the inner mean of PyG's ``PowerMeanAggregation``; the caller applies the outer
    ``clamp(., lo, hi) ** (1 / p)``). ``max`` / ``min`` split the gradient evenly among tied
    messages. Rows without edges give 0. No ``[E, F]`` tensor is saved for backward, and the
    messages are built block by block (never all ``E`` at once).

    Args:
        adj: :class:`CSR` ``[N_dst, N_src]``.
        x: ``[N_src, F]`` source features.
        edge_attr: ``[E, F]`` edge features in CSR order (``adj.edge_order(edge_attr)``).
            Without edge features the messages are per node: use :func:`spmm` on ``relu(x) + eps``.
        reduce: ``'sum' | 'mean' | 'max' | 'min' | 'pmean'``.
        eps: added to every message.
        p: ``'pmean'`` only: the power, a float or a one-element tensor (learnable; gets a gradient).
        clamp: ``'pmean'`` only: ``(lo, hi)`` bounds of the messages before the power (``None`` = open).
        backend: ``'auto' | 'torch'``: this op has no Triton kernel; the pure-torch reference runs
            on every device, and ``'triton'`` is an error.

    Returns:
        ``[N_dst, F]``, differentiable w.r.t. ``x``, ``edge_attr`` and ``p``.
    """
    adj = _check_adj(adj)
    if reduce not in GEN_REDUCES:
        raise ValueError(f"unsupported reduce {reduce!r}; expected one of {', '.join(GEN_REDUCES)}")
    x = _check_x(adj, x)
    if edge_attr is None:
        raise ValueError("gen_aggr needs edge_attr; without edge features use spmm(adj, relu(x) + eps, reduce)")
    ea = _check_edge(adj, "edge_attr", edge_attr, x, 2)
    if resolve_backend(backend, x.device) == "triton" and _explicit(backend) == "triton":
        raise ConfigError("backend 'triton' has no kernel for gen_aggr (GENConv sum / mean / max / min / "
                          "powermean with edge features); use backend 'torch' or 'auto'")
    pt = None
    if reduce == "pmean":
        if p is None:
            raise ValueError("reduce='pmean' needs p")
        pt = p.reshape(()) if isinstance(p, Tensor) else torch.tensor(float(p), dtype=x.dtype, device=x.device)
    lo = -float("inf") if clamp[0] is None else float(clamp[0])
    hi = float("inf") if clamp[1] is None else float(clamp[1])
    return reference.gen_aggr(adj, x, ea, reduce, float(eps), pt, lo, hi)
