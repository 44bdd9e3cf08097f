"""Functional aggregation ops: the dispatch seam every graphscale layer aggregates through.

``spmm(adj, x, reduce)`` (sum / mean / max / min, optional edge weights) and ``softmax_aggr`` / ``gen_aggr`` (GENConv /
DeeperGCN) over a :class:`CSR` adjacency, with a pure-torch reference (:mod:`graphscale.ops.reference`,
the specification and CPU path) and Triton kernels for CUDA tensors (``graphscale_triton``).
Backend: ``backend=`` argument > ``GRAPHSCALE_BACKEND`` > auto. See ``docs/ops.md``.
"""
from graphscale.ops.aggregate import BACKENDS, GEN_REDUCES, REDUCES, gen_aggr, resolve_backend, softmax_aggr, spmm
from graphscale.ops.csr import CSR, as_csr

__all__ = ["CSR", "as_csr", "spmm", "softmax_aggr", "gen_aggr", "resolve_backend", "BACKENDS", "REDUCES",
           "GEN_REDUCES"]
