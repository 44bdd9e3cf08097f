"""Layer-wise feature machinery: A_hat, block propagation, feature stores, batches, layer-wise inference."""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from graphscale.errors import ConfigError, DataError
from graphscale.sampling.feature_store import FeatureStore, map_rows, node_batches
from graphscale.sampling.propagation import aggregate, gcn_adjacency, layerwise_inference, propagate

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def random_graph(n: int, e: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([ei, ei.flip(0)], 1)  # undirected, with a few self-loops and duplicates


def test_gcn_adjacency_matches_pyg_gcn_norm():
    n = 37
    ei = random_graph(n, 90)
    ei = torch.cat([ei, torch.tensor([[3, 3], [3, 3]])], 1)  # explicit self-loops too
    adj = gcn_adjacency(ei, n, torch.float64)
    idx, w = gcn_norm(ei, None, n, add_self_loops=True, dtype=torch.float64)
    dense = torch.zeros(n, n, dtype=torch.float64).index_put_((idx[1], idx[0]), w, accumulate=True)
    assert adj.layout == torch.sparse_csr
    torch.testing.assert_close(adj.to_dense(), dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("storage", ["memory", "mmap"])
def test_propagate_in_blocks_equals_spmm(storage, tmp_path):
    n, f = 53, 7
    adj = gcn_adjacency(random_graph(n, 120), n, torch.float64)
    x = torch.randn(n, f, dtype=torch.float64)
    store = FeatureStore(storage, str(tmp_path / "feat"), dtype=torch.float64)
    out = store.empty(n, f)
    propagate(adj, x, out, block_rows=10)  # odd block size: last block short
    torch.testing.assert_close(out, adj.to_dense() @ x, rtol=0, atol=1e-12)
    y = map_rows(lambda r: r * 2, out, store.empty(n, f), batch_size=9)
    torch.testing.assert_close(y, 2 * out)


def test_mmap_store_is_a_file_and_release_deletes_it(tmp_path):
    store = FeatureStore("mmap", str(tmp_path / "f"))
    buf = store.empty(11, 3)
    files = os.listdir(tmp_path / "f")
    assert len(files) == 1 and os.path.getsize(tmp_path / "f" / files[0]) == 11 * 3 * 4
    buf[:] = torch.arange(33.0).view(11, 3)
    raw = torch.from_file(str(tmp_path / "f" / files[0]), shared=False, size=33, dtype=torch.float32)
    assert torch.equal(raw.view(11, 3), buf)  # writes reach the file
    store.release(buf)
    assert os.listdir(tmp_path / "f") == []


def test_store_rejects_what_does_not_fit(tmp_path):
    with pytest.raises(DataError, match=r"GiB of memory is available: use storage='mmap'"):
        FeatureStore("memory").empty(10**12, 128)
    with pytest.raises(DataError, match=r"GiB of disk but .* has only"):
        FeatureStore("mmap", str(tmp_path)).empty(10**13, 128)
    with pytest.raises(ConfigError, match=r"'ssd' is not one of"):
        FeatureStore("ssd")
    with pytest.raises(ConfigError, match="needs a folder"):
        FeatureStore("mmap")


def test_node_batches_cover_every_node_once():
    nodes = torch.arange(100, 143)
    batches = list(node_batches(nodes, 10, torch.Generator().manual_seed(1)))
    assert [b.numel() for b in batches] == [10, 10, 10, 10, 3]
    assert torch.equal(torch.cat(batches).sort().values, nodes)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        next(node_batches(nodes, 0))


def test_layerwise_inference_matches_dense_layers():
    """A GCN layer and a GraphSAGE-style layer (aggregate + root term) through the batch contract."""
    n, f, h = 47, 5, 6
    torch.manual_seed(0)
    adj = gcn_adjacency(random_graph(n, 100), n, torch.float64)
    x = torch.randn(n, f, dtype=torch.float64)
    w1, w2, w3 = (torch.randn(f, h, dtype=torch.float64), torch.randn(h, 3, dtype=torch.float64),
                  torch.randn(h, 3, dtype=torch.float64))
    layers = [lambda xs, a, xd: torch.relu(aggregate(a, xs) @ w1),
              lambda xs, a, xd: aggregate(a, xs) @ w2 + xd @ w3]
    out = layerwise_inference(layers, x, adj, batch_size=8)
    d = adj.to_dense()
    h1 = torch.relu(d @ x @ w1)
    torch.testing.assert_close(out, d @ h1 @ w2 + h1 @ w3, rtol=1e-12, atol=1e-12)


def test_layerwise_inference_bad_input():
    n = 10
    adj = gcn_adjacency(random_graph(n, 20), n)
    with pytest.raises(ConfigError, match="at least one layer, got 0"):
        layerwise_inference([], torch.randn(n, 3), adj)
    with pytest.raises(DataError, match="x has 9 rows"):
        layerwise_inference([lambda xs, a, xd: xd], torch.randn(9, 3), adj)
    with pytest.raises(DataError, match="sparse CSR"):
        layerwise_inference([lambda xs, a, xd: xd], torch.randn(n, 3), adj.to_dense())
