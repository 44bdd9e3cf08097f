"""Node-level Graph Neural Tangent Kernel for transductive node classification.

The same recursion as the graph-level GNTK (Du et al., NeurIPS 2019; see :mod:`graphscale.gntk.kernel`)
run on *one* graph against itself, without the readout: ``Sigma`` and ``Theta`` are ``[N, N]`` over the
node pairs ``(u, v)``, and the kernel between nodes ``u`` and ``v`` is ``Theta^(L)[u, v]`` (with jumping
knowledge ``Sigma^(0)[u, v] + sum_l Theta^(l)[u, v]``). Its readout is the graph-level kernel:
``2 * node_kernel(G).sum() == gram_matrix([G])[0, 0]``, and on the disjoint union of two graphs the sum
over the cross block is their graph-level kernel value / 2 (tested).

Memory: the kernel holds ``3 + jk`` dense ``[N, N]`` matrices at its peak (Sigma, Theta, the
aggregation output, the jumping-knowledge sum), e.g. 1.6 GB for 10,000 nodes in float32. The sparse
aggregation ``C A S A^T C`` and the ReLU updates run in row chunks so nothing else of size ``N^2`` is
allocated; :func:`node_kernel_bytes` gives the figure, and :func:`node_kernel` refuses (before any work)
when it exceeds the budget.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import Tensor

from graphscale.errors import ConfigError, DataError
from graphscale.gntk.kernel import GNTKConfig, recursion, relu_update


def node_kernel_bytes(num_nodes: int, cfg: GNTKConfig, dtype: torch.dtype = torch.float64,
                      row_chunk: int | None = None) -> int:
    """Peak bytes of :func:`node_kernel`: ``(3 + jk) N^2`` plus ``7 * row_chunk * N`` temporaries."""
    item = torch.empty((), dtype=dtype).element_size()
    rc = row_chunk or _row_chunk(num_nodes, dtype)
    return item * ((3 + int(cfg.jk)) * num_nodes * num_nodes + 7 * rc * num_nodes)


def _row_chunk(n: int, dtype) -> int:
    # ~64 MiB per temporary row slab: small next to the N^2 state, large enough for efficient kernels.
    item = torch.empty((), dtype=dtype).element_size()
    return max(1, min(n, (64 << 20) // (item * n)))


def memory_budget(device) -> int:
    """Bytes the kernel may use: 80 % of the free memory on ``device`` (CUDA) or of MemAvailable (CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(0.8 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _scaled_adjacency(edge_index: Tensor, n: int, scale: str, dtype, device) -> Tensor:
    """Sparse CSR ``C (A + I)``: binary symmetric adjacency with self-loops, rows scaled by ``c_u``."""
    ei = edge_index.to(torch.long).cpu()
    ei = ei[:, ei[0] != ei[1]]
    loops = torch.arange(n).repeat(2, 1)
    ei = torch.cat([ei, ei.flip(0), loops], 1)
    ids = torch.unique(ei[0] * n + ei[1])
    row, col = ids // n, ids % n
    val = torch.ones(ids.numel(), dtype=dtype)
    if scale == "degree":
        deg = torch.bincount(row, minlength=n).to(dtype)  # = |N(u)| + 1 (self-loop included)
        val = val / deg[row]
    crow = torch.zeros(n + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(row, minlength=n), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": nothing the user can act on
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, (n, n), check_invariants=False).to(device)


def _csr_rows(a: Tensor, r0: int, r1: int) -> Tensor:
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    s, e = int(crow[r0]), int(crow[r1])
    return torch.sparse_csr_tensor(crow[r0:r1 + 1] - s, col[s:e], val[s:e], (r1 - r0, a.shape[1]),
                                   check_invariants=False)


def node_kernel(edge_index: Tensor, x: Tensor, cfg: GNTKConfig = GNTKConfig(), *, num_nodes: int | None = None,
                dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                max_bytes: int | None = None, row_chunk: int | None = None) -> Tensor:
    """Node-level GNTK ``[N, N]`` of one graph (Du et al., NeurIPS 2019, without the graph readout).

    Args:
        edge_index: ``[2, E]`` edges (either or both directions; self-loops are added by the kernel).
        x: ``[N, F]`` node features (``Sigma^(0) = x x^T``).
        cfg: :class:`~graphscale.gntk.kernel.GNTKConfig` (layers, mlp_layers, scale, jk).
        num_nodes: ``N`` (default ``x.size(0)``).
        dtype: ``torch.float64`` or ``torch.float32`` (half the memory).
        device: where to compute.
        max_bytes: memory budget; default 80 % of the free memory of ``device``. The call is refused
            with :class:`ConfigError` naming the bytes needed when the kernel cannot fit.
        row_chunk: rows per temporary slab (default: ~64 MiB slabs).

    Returns:
        ``[N, N]`` symmetric positive semi-definite kernel on ``device``.
    """
    if dtype not in (torch.float64, torch.float32):
        raise ConfigError(f"gntk dtype must be torch.float64 or torch.float32, got {dtype}")
    if x is None or x.dim() != 2:
        raise DataError(f"node GNTK needs node features x of shape [N, F], got "
                        f"{None if x is None else list(x.shape)}")
    n = int(num_nodes if num_nodes is not None else x.size(0))
    if n <= 0 or x.size(0) != n:
        raise DataError(f"node GNTK: x has {x.size(0)} rows, num_nodes is {n}; expected N >= 1 rows")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise DataError(f"node GNTK: edge_index must be [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise DataError(f"node GNTK: edge_index holds ids in [{int(edge_index.min())}, {int(edge_index.max())}], "
                        f"expected [0, {n - 1}]")
    rc = int(row_chunk or _row_chunk(n, dtype))
    need = node_kernel_bytes(n, cfg, dtype, rc)
    budget = memory_budget(device) if max_bytes is None else int(max_bytes)
    if need > budget:
        half = node_kernel_bytes(n, cfg, torch.float32, rc) if dtype == torch.float64 else None
        hint = f"; float32 needs {half:,} bytes" if half else ""
        raise ConfigError(f"node GNTK on {n:,} nodes needs {need:,} bytes ({need / 2**30:.2f} GiB: {3 + int(cfg.jk)} "
                          f"dense [N, N] {str(dtype).replace('torch.', '')} matrices) but the budget is {budget:,} "
                          f"bytes ({budget / 2**30:.2f} GiB){hint}; use dtype=float32, jk=False, a subgraph, or "
                          f"raise max_bytes")
    a = _scaled_adjacency(edge_index, n, cfg.scale, dtype, device)
    slabs = [(r0, min(n, r0 + rc), _csr_rows(a, r0, min(n, r0 + rc))) for r0 in range(0, n, rc)]

    def aggregate(s: Tensor) -> Tensor:
        # out[r] = (C A)[r] S (C A)^T = ((C A) ((C A)[r] S)^T)^T: two sparse products per row slab.
        out = torch.empty_like(s)
        for r0, r1, ar in slabs:
            p = torch.sparse.mm(ar, s)
            out[r0:r1] = torch.sparse.mm(a, p.t().contiguous()).t()
        return out

    def relu(sigma: Tensor, ntk: Tensor, k: int):
        d = torch.diagonal(sigma).sqrt()
        for r0, r1, _ in slabs:
            s_new, t_new = relu_update(sigma[r0:r1], ntk[r0:r1], d[r0:r1, None], d[None, :])
            sigma[r0:r1] = s_new
            ntk[r0:r1] = t_new
        return sigma, ntk

    xx = x.to(device=device, dtype=dtype)
    return recursion(xx @ xx.T, aggregate, relu, lambda s: s, cfg)


# ------------------------------------------------------------------------ prediction
def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((y.size, k))
    out[np.arange(y.size), y] = 1.0
    return out


def predict(kernel: np.ndarray, y: np.ndarray, train: np.ndarray, target: np.ndarray, *, method: str = "krr",
            reg: float = 1e-2, C: float = 1.0) -> np.ndarray:
    """Predict labels of ``target`` nodes from ``train`` nodes with a precomputed kernel.

    ``method='krr'``: kernel ridge regression on one-hot labels, ``argmax K_tT (K_TT + reg * mean(diag) I)^-1 Y``;
    ``method='svm'``: ``sklearn.svm.SVC(kernel='precomputed', C=C)``.
    """
    k_tt = kernel[np.ix_(train, train)]
    k_xt = kernel[np.ix_(target, train)]
    if method == "krr":
        k = int(y.max()) + 1
        lam = reg * float(np.mean(np.diag(k_tt)))
        alpha = np.linalg.solve(k_tt + lam * np.eye(len(train)), _one_hot(y[train], k))
        return np.argmax(k_xt @ alpha, axis=1)
    if method == "svm":
        from sklearn.svm import SVC

        return SVC(kernel="precomputed", C=C).fit(k_tt, y[train]).predict(k_xt)
    raise ConfigError(f"node GNTK prediction method must be 'krr' or 'svm', got {method!r}")


def evaluate_split(kernel: np.ndarray, y: np.ndarray, split: dict, *, regs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                   Cs=(1e-2, 1e-1, 1.0, 10.0, 100.0)) -> dict:
    """Pick method (kernel ridge regression / SVM), its regulariser and raw vs normalised kernel on the
    validation nodes; report validation and test accuracy of the pick and of every candidate.

    ``split`` maps ``'train'``, ``'valid'``, ``'test'`` to node index arrays (Planetoid public split).
    """
    y = np.asarray(y)
    tr, va, te = (np.asarray(split[k]) for k in ("train", "valid", "test"))
    d = np.sqrt(np.clip(np.diag(kernel), 1e-300, None))
    variants = {"raw": kernel, "normalized": kernel / d[:, None] / d[None, :]}
    rows = []
    for vname, k in variants.items():
        for method, grid, key in (("krr", regs, "reg"), ("svm", Cs, "C")):
            for v in grid:
                kw = {key: v}
                idx = np.concatenate([va, te])
                pred = predict(k, y, tr, idx, method=method, **kw)
                rows.append({"kernel": vname, "method": method, key: v,
                             "valid_acc": float(np.mean(pred[:len(va)] == y[va])),
                             "test_acc": float(np.mean(pred[len(va):] == y[te]))})
    best = max(rows, key=lambda r: r["valid_acc"])
    return {"best": best, "candidates": rows}


def evaluate_planetoid(name: str, root: str, cfg: GNTKConfig = GNTKConfig(), *, dtype=torch.float64,
                       device="cpu", max_bytes: int | None = None) -> dict:
    """Node-level GNTK on a Planetoid set (public split): kernel, selection on validation, test accuracy.

    ``root`` is the Planetoid folder (e.g. ``../shared/data/planetoid``); features are the row-normalised
    bag-of-words of :func:`graphscale.data.load_dataset`.
    """
    import time

    from graphscale.data import load_dataset

    ds = load_dataset(name, root)
    t0 = time.perf_counter()
    k = node_kernel(ds.edge_index, ds.x, cfg, dtype=dtype, device=device, max_bytes=max_bytes)
    seconds = time.perf_counter() - t0
    kern = k.double().cpu().numpy()
    res = evaluate_split(kern, ds.y.numpy(), {s: v.numpy() for s, v in ds.split.items()})
    res.update({"dataset": name, "num_nodes": ds.num_nodes, "kernel_seconds": seconds,
                "kernel_bytes": node_kernel_bytes(ds.num_nodes, cfg, dtype)})
    return res
