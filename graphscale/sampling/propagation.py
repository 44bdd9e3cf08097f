"""Propagation over the whole graph in row blocks, and layer-by-layer inference.

Layer-wise GCN training (L-GCN; You, Chen, Wang, Shen, CVPR 2020, "L2-GCN: Layer-Wise and Learned
Efficient Training of Graph Convolutional Networks") never runs a graph convolution inside the
training loop. For every layer ``l`` the current node features are aggregated once over the whole
graph, ``A_hat H_{l-1}`` with ``A_hat = D^-1/2 (A + I) D^-1/2``; the layer's transform is then
trained on mini-batches of rows of that matrix (training nodes only), like an MLP.

* :func:`gcn_adjacency` -- ``A_hat`` as a ``torch.sparse_csr`` matrix (row = target node).
* :func:`aggregate` -- the one place a feature matrix is multiplied by the adjacency (through
  :mod:`graphscale.ops`).
* :func:`propagate` -- row-block aggregation from one buffer into another, so only a block of
  output rows lives on the compute device at a time.
* :func:`layerwise_inference` -- generic layer-by-layer inference for any stack of layers on a big
  graph (one layer's activations in memory at a time).

The ``[N, F]`` buffers come from :class:`graphscale.sampling.feature_store.FeatureStore`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from graphscale.errors import ConfigError, DataError
from graphscale.ops import CSR, spmm
from graphscale.sampling.feature_store import FeatureStore


# --------------------------------------------------------------------------- adjacency
def gcn_adjacency(edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The GCN propagation matrix ``A_hat = D^-1/2 (A + I) D^-1/2`` as a sparse CSR tensor.

    Kipf & Welling (ICLR 2017) normalisation, identical to PyG's ``gcn_norm`` with
    ``add_self_loops=True``: existing self-loops are replaced by one self-loop of weight 1, a
    duplicated edge counts as often as it appears, and the degree is the in-degree of the target.

    Args:
        edge_index: ``[2, E]`` long, messages flow ``edge_index[0] -> edge_index[1]``.
        num_nodes: ``N``.
        dtype: value dtype.

    Returns:
        ``[N, N]`` ``torch.sparse_csr`` tensor; row ``i`` holds the weights of ``i``'s in-neighbours,
        so ``A_hat @ X`` aggregates messages at their targets.
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise DataError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    src, dst = edge_index[0].long(), edge_index[1].long()
    keep = src != dst
    loops = torch.arange(num_nodes, dtype=torch.long)
    src, dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
    deg = torch.zeros(num_nodes, dtype=dtype).index_add_(0, dst, torch.ones(dst.numel(), dtype=dtype))
    dinv = deg.pow(-0.5)
    weight = dinv[src] * dinv[dst]
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notices, once per call
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, (num_nodes, num_nodes)).coalesce()
        return coo.to_sparse_csr()


def aggregate(adj: Tensor, x: Tensor) -> Tensor:
    """``adj @ x`` for a sparse CSR ``adj [R, N]`` and dense ``x [N, F]`` -> ``[R, F]``.

    The single aggregation seam of layer-wise training: every propagation in this module goes
    through here.
    """
    # Through the ops seam: torch.sparse.mm on CPU (its measured fastest path), Triton on CUDA.
    return spmm(CSR.from_sparse(adj), x, "sum")


def _row_block(adj: Tensor, r0: int, r1: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(crow, col, values)`` of rows ``r0:r1`` of a CSR matrix, ``crow`` rebased to 0."""
    crow = adj.crow_indices()
    a, b = int(crow[r0]), int(crow[r1])
    return crow[r0:r1 + 1] - a, adj.col_indices()[a:b], adj.values()[a:b]


def _compact_block(adj: Tensor, r0: int, r1: int) -> tuple[Tensor, Tensor]:
    """Rows ``r0:r1`` of ``adj`` as ``(block [r1 - r0, n_src] CSR, cols [n_src])``: the columns are
    relabelled to index ``cols``, the distinct in-neighbours of the rows."""
    crow, col, val = _row_block(adj, r0, r1)
    cols, inv = torch.unique(col, return_inverse=True)
    return torch.sparse_csr_tensor(crow, inv, val, (r1 - r0, cols.numel()), check_invariants=False), cols


# --------------------------------------------------------------------------- row-block passes
def propagate(adj: Tensor, x: Tensor, out: Tensor, block_rows: int = 65_536,
              device: torch.device | str | None = None) -> Tensor:
    """``out[:] = adj @ x`` one block of ``block_rows`` output rows at a time.

    Only the rows of ``x`` a block needs (its in-neighbours) are moved to ``device``, so the peak on
    the device is one block of output plus its neighbourhood, whatever ``N`` is. ``x`` and ``out`` may
    be mmap-backed host tensors (:class:`FeatureStore`).

    Args:
        adj: ``[N, N]`` sparse CSR (host).
        x: ``[N, F]`` dense (host).
        out: ``[N, F]`` preallocated (host); returned.
        block_rows: output rows per block.
        device: where the block product runs (default: ``x``'s device).
    """
    n = adj.size(0)
    device = torch.device(device) if device is not None else x.device
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        if device == x.device:  # x is already there: no gather, columns keep their global ids
            crow, col, val = _row_block(adj, r0, r1)
            out[r0:r1] = aggregate(torch.sparse_csr_tensor(crow, col, val, (r1 - r0, x.size(0))), x)
        else:  # move only the block's in-neighbour rows
            block, cols = _compact_block(adj, r0, r1)
            out[r0:r1] = aggregate(block.to(device), x[cols].to(device)).to(out.device)
    return out




# --------------------------------------------------------------------------- inference
def edge_adjacency(graph, num_nodes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[N, N]`` sparse CSR tensor with one entry of weight 1 per edge (row = target), duplicates
    kept as separate entries (so a ``mean`` aggregation over a row block counts them as
    ``SAGEConv`` on the ``edge_index`` does). ``graph``: ``edge_index [2, E]`` or a square
    :class:`~graphscale.ops.CSR` (its structure; its values are not used)."""
    csr = graph if isinstance(graph, CSR) else CSR.from_edge_index(graph, num_nodes)
    if csr.shape != (num_nodes, num_nodes):
        raise DataError(f"the graph has shape {list(csr.shape)}, expected [N, N] with N = {num_nodes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(csr.rowptr, csr.col, torch.ones(csr.num_edges, dtype=dtype),
                                       (num_nodes, num_nodes), check_invariants=False)


def model_inference(model, x: Tensor, adj, batch_size: int = 65_536, device: torch.device | str | None = None,
                    store: FeatureStore | None = None) -> Tensor:
    """Layer-wise full-graph output of any model exposing ``inference_layers()`` (a list of
    :data:`LayerFn`; e.g. :class:`graphscale.nn.models.SAGE`), in eval mode, without gradients.
    Raises :class:`~graphscale.errors.ConfigError` for a model without it."""
    get = getattr(model, "inference_layers", None)
    if get is None:
        raise ConfigError(f"{type(model).__name__} has no inference_layers(): layer-wise inference needs a model "
                          f"whose layers run one at a time (e.g. model.name=sage)")
    was = model.training
    model.eval()
    try:
        return layerwise_inference(get(), x, adj, batch_size=batch_size, device=device, store=store)
    finally:
        model.train(was)


LayerFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def layerwise_inference(layers: Sequence[LayerFn], x: Tensor, adj, batch_size: int = 65_536,
                        device: torch.device | str | None = None,
                        store: FeatureStore | None = None) -> Tensor:
    """Run a deep GNN on a large graph one layer at a time (all nodes of layer ``l`` before layer
    ``l + 1``), so only one layer's input and output ``[N, F]`` matrices exist at a time, on the host
    (or in mmap files), and the device holds one batch and its 1-hop neighbourhood.

    This is the inference scheme of layer-wise models (L-GCN, You et al., CVPR 2020) and of
    neighbour-sampling trainers for full-graph evaluation (GraphSAGE, Hamilton et al., 2017).

    Contract of a layer: ``layer(x_src, adj_block, x_dst) -> out`` where, for a batch of ``b``
    target nodes,

    * ``x_src [n_src, F_in]`` are the features of the batch's in-neighbours (the nodes with a
      nonzero in ``adj``'s rows of the batch), on ``device``;
    * ``adj_block`` is a ``[b, n_src]`` sparse CSR tensor: the batch's rows of ``adj`` with columns
      relabelled to index ``x_src`` (``aggregate(adj_block, x_src)`` is ``(adj @ x)[batch]``);
    * ``x_dst [b, F_in]`` are the batch's own features (root / skip terms);
    * ``out [b, F_out]`` is the layer's output for the batch.

    Every layer whose output at node ``i`` depends only on ``i``'s in-neighbours through ``adj`` fits
    (GCN: ``relu(lin(aggregate(adj_block, x_src)))``; GraphSAGE-mean with a row-normalised ``adj``:
    ``lin_l(aggregate(adj_block, x_src)) + lin_r(x_dst)``; attention from ``adj_block``'s indices).
    Pass the same ``adj`` to every layer (build it once, e.g. :func:`gcn_adjacency`). A layer that
    needs nothing from the graph may ignore ``x_src``/``adj_block``.

    Args:
        layers: callables as above, applied in order (e.g. ``functools.partial``s or modules).
        x: ``[N, F]`` input features (host; mmap-backed is fine).
        adj: ``[N, N]`` sparse CSR propagation matrix, row = target; or a graphscale
            :class:`~graphscale.ops.CSR` / an ``edge_index [2, E]``, turned into one by
            :func:`edge_adjacency` (weight 1 per edge, duplicates kept: what ``SAGEConv`` sees).
        batch_size: target nodes per batch (contiguous ranges of node ids).
        device: where layers run (default: ``x``'s device).
        store: allocates the intermediate ``[N, F]`` buffers (default: host memory).

    Returns:
        ``[N, F_out]`` output of the last layer (host; from ``store``).
    """
    if len(layers) < 1:
        raise ConfigError(f"layerwise_inference needs at least one layer, got {len(layers)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"layerwise_inference batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(adj, CSR) or (isinstance(adj, Tensor) and adj.layout == torch.strided
                                and adj.dtype in (torch.int64, torch.int32)):  # an edge_index
        adj = edge_adjacency(adj, x.size(0), x.dtype)
    if adj.layout != torch.sparse_csr:
        raise DataError(f"adj must be a sparse CSR tensor (torch.sparse_csr), got layout {adj.layout}")
    if adj.size(0) != x.size(0) or adj.size(1) != x.size(0):
        raise DataError(f"adj has shape {list(adj.shape)} but x has {x.size(0)} rows; expected [N, N] with N = {x.size(0)}")
    store = store or FeatureStore("memory")
    device = torch.device(device) if device is not None else x.device
    n, h = x.size(0), x
    for li, layer in enumerate(layers):
        out = None
        for r0 in range(0, n, batch_size):
            r1 = min(n, r0 + batch_size)
            block, cols = _compact_block(adj, r0, r1)
            res = layer(h[cols].to(device), block.to(device), h[r0:r1].to(device))
            if out is None:
                out = store.empty(n, res.size(1), what=f"layer {li + 1} activations", dtype=res.dtype)
            out[r0:r1] = res.to(out.device)
        if h is not x:
            store.release(h)
        h = out
    return h
