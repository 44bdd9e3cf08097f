"""Node-level GNTK: its readout is the graph-level kernel, row chunks change nothing, memory refusal,
prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphscale.errors import ConfigError, DataError
from graphscale.gntk.kernel import GNTKConfig, gram_matrix
from graphscale.gntk.node import evaluate_split, node_kernel, node_kernel_bytes, predict

from .conftest import one_hot, random_graphs


def _union(gs, k):
    offs = np.cumsum([0] + [g.num_nodes for g in gs])
    ei = np.concatenate([np.concatenate([g.edges, g.edges[::-1]], 1) + o for g, o in zip(gs, offs)], 1)
    x = np.concatenate([one_hot(g, k) for g in gs])
    return torch.as_tensor(ei), torch.as_tensor(x), offs


@pytest.mark.parametrize("cfg", [GNTKConfig(2, 2, "degree", True), GNTKConfig(3, 1, "uniform", False)])
def test_node_kernel_readout_is_graph_kernel(cfg):
    # Identity: on the disjoint union of graphs (block-diagonal adjacency, per-node normalisers equal to
    # each graph's own) the node kernel's block (i, j) sums to half the graph-level value G[i, j].
    gs = random_graphs(3, 4, nmin=2)
    gram = gram_matrix(gs, cfg, progress=False)
    ei, x, offs = _union(gs, 3)
    kn = node_kernel(ei, x, cfg).numpy()
    blocks = np.array([[2 * kn[offs[i]:offs[i + 1], offs[j]:offs[j + 1]].sum() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(blocks, gram, rtol=1e-9)
    # single graph: 2 * sum of all node pairs = the graph's self kernel
    e0 = torch.as_tensor(gs[0].edges)
    single = node_kernel(e0, torch.as_tensor(one_hot(gs[0], 3)), cfg).numpy()
    np.testing.assert_allclose(2 * single.sum(), gram[0, 0], rtol=1e-9)


def test_row_chunks_float32_symmetric_psd():
    g = random_graphs(4, 1, nmin=40, nmax=40, p=0.1)[0]
    cfg = GNTKConfig(2, 2, "degree", True)
    x = torch.as_tensor(one_hot(g, 3))
    ei = torch.as_tensor(g.edges)
    full = node_kernel(ei, x, cfg)
    chunked = node_kernel(ei, x, cfg, row_chunk=7)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=0)
    f32 = node_kernel(ei, x, cfg, dtype=torch.float32, row_chunk=9)
    torch.testing.assert_close(f32.double(), full, rtol=1e-4, atol=1e-4 * full.abs().max().item())
    torch.testing.assert_close(full, full.T)
    assert torch.linalg.eigvalsh(full).min() > -1e-9 * full.abs().max()


def test_memory_refusal_names_bytes():
    cfg = GNTKConfig(2, 1, "degree", True)
    need = node_kernel_bytes(20_000, cfg, torch.float64, row_chunk=100)
    assert need == 8 * (4 * 20_000 ** 2 + 7 * 100 * 20_000)
    x = torch.zeros(20_000, 1)  # nothing is allocated before the refusal
    with pytest.raises(ConfigError, match=f"needs {need:,} bytes.*budget is 1,000,000 bytes.*float32 needs"):
        node_kernel(torch.zeros(2, 0, dtype=torch.long), x, cfg, max_bytes=1_000_000, row_chunk=100)


def test_bad_input():
    with pytest.raises(DataError, match=r"node features x of shape \[N, F\]"):
        node_kernel(torch.zeros(2, 0, dtype=torch.long), None)
    with pytest.raises(DataError, match=r"ids in \[0, 5\], expected \[0, 2\]"):
        node_kernel(torch.tensor([[0], [5]]), torch.ones(3, 2))


def test_predict_and_select_on_validation():
    # Two clusters with a block kernel: both methods recover the labels; selection uses validation only.
    y = np.array([0] * 10 + [1] * 10)
    kern = np.where(y[:, None] == y[None, :], 1.0, 0.1) + np.eye(20)
    tr, va, te = np.array([0, 1, 10, 11]), np.array([2, 3, 12, 13]), np.arange(4, 10)
    for method in ("krr", "svm"):
        assert (predict(kern, y, tr, te, method=method) == y[te]).all()
    res = evaluate_split(kern, y, {"train": tr, "valid": va, "test": te}, regs=(1e-2,), Cs=(1.0,))
    assert res["best"]["valid_acc"] == 1.0 and res["best"]["test_acc"] == 1.0
    with pytest.raises(ConfigError, match="'krr' or 'svm'"):
        predict(kern, y, tr, te, method="knn")


def test_cora_accuracy(shared_data):  # 10 CPU-s: in the default suite (it was marked slow and never ran)
    from graphscale.gntk.node import evaluate_planetoid

    res = evaluate_planetoid("cora", str(shared_data / "planetoid"), GNTKConfig(2, 1, "degree", True),
                             dtype=torch.float32)
    assert res["best"]["test_acc"] > 0.75, res["best"]
