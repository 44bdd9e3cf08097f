"""CSR adjacency: the graph container every aggregation op reads.

Rows are **destination** nodes and columns are **source** nodes, as in PyG's default
``flow="source_to_target"``: an ``edge_index`` column ``(j, i)`` sends a message from ``j`` to ``i``,
so it lands in row ``i = edge_index[1]`` at column ``j = edge_index[0]``. (This is PyG's ``adj_t``.)

The transposed CSR (rows = sources), which backward passes walk to sum gradients per source node
without atomics, is built on first use and cached on the object, as are the expanded row index and
a few small per-dtype buffers.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Optional

import torch
from torch import Tensor

from graphscale.errors import DataError
from graphscale.saved_bytes import report_ctx

__all__ = ["CSR", "as_csr", "keep_edge_weight"]

_INDEX_DTYPES = (torch.int64, torch.int32)


def _check_index(name: str, t: Tensor, dim: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be an int64 or int32 tensor, got dtype {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimension(s), got shape {tuple(t.shape)}")


class CSR:
    """Compressed sparse row adjacency ``[num_rows (destinations), num_cols (sources)]``.

    Args:
        rowptr: ``[num_rows + 1]`` int64, non-decreasing, ``rowptr[0] == 0``, ``rowptr[-1] == E``.
        col: ``[E]`` int64 source node of each edge, in ``[0, num_cols)``.
        num_cols: number of source nodes (defaults to ``num_rows``: a square adjacency).
        value: optional ``[E]`` edge weights in CSR order (used when an op gets no ``edge_weight``).
        perm: optional ``[E]`` int64: ``perm[k]`` is the id, in the caller's original edge order, of
            the edge stored at CSR position ``k`` (so ``edge_attr[perm]`` is in CSR order).
        validate: check the invariants (one pass over the indices; a bad CSR would otherwise read
            out of bounds inside a kernel).

    Build it from PyG inputs with :meth:`from_edge_index` or :meth:`from_sparse`.
    """

    def __init__(self, rowptr: Tensor, col: Tensor, num_cols: Optional[int] = None,
                 value: Optional[Tensor] = None, perm: Optional[Tensor] = None, validate: bool = True):
        _check_index("rowptr", rowptr, 1)
        _check_index("col", col, 1)
        if rowptr.numel() < 1:
            raise ValueError("rowptr must have num_rows + 1 >= 1 entries, got an empty tensor")
        self.rowptr = rowptr.long().contiguous()
        self.col = col.long().contiguous()
        self.num_rows = rowptr.numel() - 1
        self.num_cols = self.num_rows if num_cols is None else int(num_cols)
        self.perm = None if perm is None else perm.long().contiguous()
        if value is not None:
            if not isinstance(value, Tensor) or value.dim() != 1 or value.numel() != col.numel():
                raise ValueError(f"value must be a [E={col.numel()}] tensor, got "
                                 f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}")
        self.value = value
        if validate:
            self.validate()
        self._row: Optional[Tensor] = None
        self._t: Optional[CSR] = None
        # On a transpose built by t(): (weak reference to the CSR it is the transpose of, that CSR's
        # tensors). Weak, so that a CSR and its cached transpose form no reference cycle (below).
        self._of: Optional[tuple] = None
        self._cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes=None, edge_weight: Optional[Tensor] = None) -> "CSR":
        """CSR of a PyG ``edge_index [2, E]`` (``edge_index[0]`` = source, ``[1]`` = destination).

        Args:
            edge_index: ``[2, E]`` int64 / int32.
            num_nodes: ``N`` (square), a pair ``(num_src, num_dst)`` for bipartite graphs, or
                ``None`` for ``max(edge_index) + 1``.
            edge_weight: optional ``[E]`` weights in ``edge_index`` order; stored in CSR order as
                :attr:`value` (a differentiable gather, so gradients flow back to ``edge_weight``).

        Duplicate edges and self-loops are kept as they are; edges keep their input order inside a
        row (stable sort), and :attr:`perm` maps CSR positions back to ``edge_index`` columns.
        """
        _check_index("edge_index", edge_index, 2)
        if edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        src, dst = edge_index[0].long(), edge_index[1].long()
        if num_nodes is None:
            n = int(edge_index.max()) + 1 if edge_index.numel() else 0
            num_src = num_dst = n
        elif isinstance(num_nodes, (tuple, list)):
            num_src, num_dst = (int(v) for v in num_nodes)
        else:
            num_src = num_dst = int(num_nodes)
        if num_src < 0 or num_dst < 0:
            raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
        if edge_index.numel():
            lo, hi = int(edge_index.min()), (int(src.max()), int(dst.max()))
            if lo < 0 or hi[0] >= num_src or hi[1] >= num_dst:
                raise DataError(f"edge_index out of range: min {lo}, max source {hi[0]}, max destination "
                                f"{hi[1]}; expected sources in [0, {num_src}) and destinations in [0, {num_dst})")
        if edge_weight is not None:
            if not isinstance(edge_weight, Tensor) or edge_weight.shape != (src.numel(),):
                raise ValueError(f"edge_weight must have shape [E={src.numel()}], got "
                                 f"{tuple(edge_weight.shape) if isinstance(edge_weight, Tensor) else edge_weight!r}")
        perm = torch.sort(dst, stable=True).indices
        counts = torch.bincount(dst, minlength=num_dst)
        rowptr = torch.zeros(num_dst + 1, dtype=torch.long, device=dst.device)
        torch.cumsum(counts, 0, out=rowptr[1:])
        value = None if edge_weight is None else edge_weight.index_select(0, perm)
        return cls(rowptr, src.index_select(0, perm), num_cols=num_src, value=value, perm=perm, validate=False)

    @classmethod
    def from_sparse(cls, adj_t: Tensor) -> "CSR":
        """CSR of a ``torch.sparse`` adjacency ``adj_t [num_dst, num_src]`` (COO or CSR layout),
        PyG's transposed-adjacency convention; its values become :attr:`value`."""
        if not isinstance(adj_t, Tensor) or adj_t.layout not in (torch.sparse_coo, torch.sparse_csr):
            raise TypeError(f"expected a torch.sparse COO or CSR tensor, got "
                            f"{getattr(adj_t, 'layout', type(adj_t).__name__)}")
        if adj_t.dim() != 2:
            raise ValueError(f"sparse adjacency must be 2-D, got shape {tuple(adj_t.shape)}")
        if adj_t.layout == torch.sparse_coo:
            adj_t = adj_t.coalesce()
            idx = adj_t.indices()
            return cls.from_edge_index(torch.stack([idx[1], idx[0]]), (adj_t.size(1), adj_t.size(0)),
                                       edge_weight=adj_t.values())
        return cls(adj_t.crow_indices(), adj_t.col_indices(), num_cols=adj_t.size(1), value=adj_t.values())

    def validate(self) -> None:
        """Raise :class:`~graphscale.errors.DataError` if the CSR invariants do not hold."""
        rp, col, e = self.rowptr, self.col, self.col.numel()
        if int(rp[0]) != 0 or int(rp[-1]) != e:
            raise DataError(f"rowptr must start at 0 and end at E={e}, got {int(rp[0])} .. {int(rp[-1])}")
        if self.num_rows and bool((rp[1:] < rp[:-1]).any()):
            raise DataError("rowptr must be non-decreasing")
        if e and (int(col.min()) < 0 or int(col.max()) >= self.num_cols):
            raise DataError(f"col out of range: min {int(col.min())}, max {int(col.max())}; expected "
                            f"[0, {self.num_cols})")
        if self.perm is not None and self.perm.shape != col.shape:
            raise DataError(f"perm must have shape [E={e}], got {tuple(self.perm.shape)}")
        if rp.device != col.device:
            raise DataError(f"rowptr on {rp.device} but col on {col.device}")

    # ------------------------------------------------------------------ properties / caches
    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.num_cols)

    @property
    def row(self) -> Tensor:
        """``[E]`` destination row of every edge (expanded ``rowptr``; cached)."""
        if self._row is None:
            counts = self.rowptr[1:] - self.rowptr[:-1]
            self._row = torch.repeat_interleave(torch.arange(self.num_rows, device=self.device), counts,
                                                output_size=self.num_edges)
        return self._row

    def degree(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[num_rows]`` number of stored edges per destination (duplicates counted), cached."""
        key = ("deg", dtype)
        if key not in self._cache:
            self._cache[key] = (self.rowptr[1:] - self.rowptr[:-1]).to(dtype)
        return self._cache[key]

    def ones(self, dtype: torch.dtype) -> Tensor:
        """``[E]`` ones of ``dtype`` (the implicit edge weight), cached."""
        key = ("ones", dtype)
        if key not in self._cache:
            self._cache[key] = torch.ones(self.num_edges, dtype=dtype, device=self.device)
        return self._cache[key]

    def cached(self, key, build):
        """``build()`` once per ``key``, kept on this CSR (kernel schedules and other per-graph
        structures that live as long as the graph)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def t(self) -> "CSR":
        """The transposed CSR ``[num_cols, num_rows]`` (rows = sources), built once and cached.

        Its :attr:`perm` maps each of its positions to the position of the same edge in *this* CSR,
        which is how backward kernels find per-edge values (weights, arg-max, edge features). The
        transpose's own ``t()`` is this CSR again (the same object while it lives).
        """
        if self._t is not None:
            return self._t
        if self._of is not None:  # this is a transpose: its transpose is the CSR it was built from
            ref, (rowptr, col, num_cols, value, perm) = self._of
            parent = ref()
            if parent is None:  # that object is gone (only this transpose was kept): the same CSR again
                parent = CSR(rowptr, col, num_cols, value, perm, validate=False)
                parent._t, self._of = self, (weakref.ref(parent), self._of[1])
            return parent
        perm = torch.sort(self.col, stable=True).indices
        counts = torch.bincount(self.col, minlength=self.num_cols)
        rowptr = torch.zeros(self.num_cols + 1, dtype=torch.long, device=self.device)
        torch.cumsum(counts, 0, out=rowptr[1:])
        at = CSR(rowptr, self.row.index_select(0, perm), num_cols=self.num_rows, perm=perm, validate=False)
        # The transpose refers back to this CSR weakly (and to its tensors, which it shares): with a
        # strong reference both would form a cycle that only Python's cyclic gc frees, and the
        # per-step CSRs of a training loop (E-sized index arrays, ~60 bytes per edge with the
        # transpose and caches) piled up between gc's rare full collections: measured +12 MB per
        # Cluster-GCN step (250k edges) held, 64 steps per epoch (docs/partitioned.md, Measured).
        at._of = (weakref.ref(self), (self.rowptr, self.col, self.num_cols, self.value, self.perm))
        self._t = at
        return at

    def edge_order(self, edge_values: Optional[Tensor]) -> Optional[Tensor]:
        """Reorder per-edge values given in the original ``edge_index`` order into CSR order."""
        if edge_values is None or self.perm is None:
            return edge_values
        if edge_values.size(0) != self.num_edges:
            raise ValueError(f"per-edge values must have {self.num_edges} rows (one per edge), got "
                             f"{tuple(edge_values.shape)}")
        return edge_values.index_select(0, self.perm)

    def sparse_tensor(self, value: Optional[Tensor], dtype: torch.dtype) -> Tensor:
        """``torch.sparse_csr_tensor`` view of the structure with ``value`` (or ones), no copy."""
        vals = self.ones(dtype) if value is None else value
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(self.rowptr, self.col, vals, self.shape, check_invariants=False)

    def to(self, device) -> "CSR":
        """Copy to ``device`` (caches are rebuilt there on demand)."""
        mv = (lambda t: None if t is None else t.to(device))
        return CSR(mv(self.rowptr), mv(self.col), self.num_cols, mv(self.value), mv(self.perm), validate=False)

    def __repr__(self) -> str:
        return (f"CSR(num_rows={self.num_rows}, num_cols={self.num_cols}, num_edges={self.num_edges}, "
                f"weighted={self.value is not None}, device={self.device})")


# A handful of recent edge_index / sparse-adjacency -> CSR conversions, keyed by the input tensor's
# identity and versions, so the layers of one forward pass (all given the same graph) sort the edges
# and build the transpose once. Measured (GCN on Cora, 3 layers, one thread): one CSR.t() sort per
# layer per step was 1.5 ms of a 43 ms compressed step before sparse inputs were cached too.
_RECENT: dict = {}
_RECENT_MAX = 8


def _versions(adj: Tensor) -> tuple:
    """Version counters that change when ``adj`` (values, or the index tensors of a sparse one) is
    modified in place."""
    if adj.layout == torch.sparse_csr:
        return adj._version, adj.crow_indices()._version, adj.col_indices()._version
    if adj.layout == torch.sparse_coo:
        return adj._version, adj._indices()._version
    return (adj._version,)


def _cached(adj: Tensor, nn_key, build) -> CSR:
    key = id(adj)
    hit = _RECENT.get(key)
    versions = _versions(adj)
    if hit is not None:
        ref, old, n, csr = hit
        if ref() is adj and old == versions and n == nn_key:
            return csr
    csr = build()
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.pop(next(iter(_RECENT)))
    try:
        ref = weakref.ref(adj, lambda _r, k=key: _RECENT.pop(k, None))
    except TypeError:
        return csr
    _RECENT[key] = (ref, versions, nn_key, csr)
    return csr


def as_csr(adj, num_nodes=None, edge_weight: Optional[Tensor] = None) -> CSR:
    """Accept what PyG convolutions accept and return a :class:`CSR`.

    Args:
        adj: a :class:`CSR`; an ``edge_index [2, E]`` tensor; or a ``torch.sparse`` ``adj_t``
            ``[num_dst, num_src]`` (COO / CSR).
        num_nodes: ``N`` or ``(num_src, num_dst)`` for an ``edge_index`` (default: max index + 1).
        edge_weight: ``[E]`` weights in ``edge_index`` order (only with an ``edge_index``).

    Conversions of an ``edge_index`` without weights, and of sparse adjacencies, are cached while
    the tensor lives and is not modified in place.
    """
    if isinstance(adj, CSR):
        if edge_weight is not None:
            raise ValueError("edge_weight goes with an edge_index; a CSR carries its own value (or pass "
                             "edge_weight in CSR order to the op)")
        return adj
    if isinstance(adj, Tensor) and adj.layout != torch.strided:
        if edge_weight is not None:
            raise ValueError("edge_weight goes with an edge_index; a sparse adjacency carries its values")
        if adj.layout not in (torch.sparse_coo, torch.sparse_csr) or adj.requires_grad:
            return CSR.from_sparse(adj)  # (values with autograd history must not outlive their step)
        return _cached(adj, ("sparse", tuple(adj.shape)), lambda: CSR.from_sparse(adj))
    if not isinstance(adj, Tensor):
        raise TypeError(f"expected an edge_index tensor, a torch.sparse adjacency or a graphscale CSR, "
                        f"got {type(adj).__name__}")
    if edge_weight is not None:
        return CSR.from_edge_index(adj, num_nodes, edge_weight)
    nn_key = tuple(num_nodes) if isinstance(num_nodes, (tuple, list)) else num_nodes
    return _cached(adj, nn_key, lambda: CSR.from_edge_index(adj, num_nodes))


def keep_edge_weight(ctx, w: Optional[Tensor], needed: bool, w_needs_grad: bool) -> Optional[Tensor]:
    """For an aggregation Function's ``forward``: what to pass to ``ctx.save_for_backward`` for the edge
    weights ``w [E]`` (``needed``: backward reads them).

    Weights that need no gradient (GCN's normalisation, a CSR's ``value``) are graph structure, like
    ``ctx.adj``: they are kept on ``ctx.edge_weight`` and reported to byte counts
    (:func:`graphscale.saved_bytes.report_ctx`), so saved-tensor hooks -- activation compression and
    its first-forward check -- never take them for an activation (returns ``None``). Weights with a
    gradient are an activation and are returned to be saved. Backward reads ``ctx.edge_weight`` when the
    saved slot is ``None``.
    """
    ctx.edge_weight = None
    if w is None or not needed:
        return None
    if w_needs_grad:
        return w
    ctx.edge_weight = w
    report_ctx(w)
    return None


def kept_edge_weight(ctx, saved: Optional[Tensor]) -> Optional[Tensor]:
    """For the same Function's ``backward``: the edge weights :func:`keep_edge_weight` kept, from the
    saved slot (``saved``) or, where that is ``None``, from ``ctx.edge_weight``."""
    return ctx.edge_weight if saved is None else saved
