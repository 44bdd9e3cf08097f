"""Graph-level GNTK: agreement with the unbatched Kronecker oracle, symmetry / PSD, invariances,
resumable chunks, bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import graphscale.gntk.kernel as K
from graphscale.errors import ConfigError, DataError
from graphscale.gntk.kernel import GNTKConfig, combine_layers, gram_matrix, layer_grams, make_blocks, normalize_gram

from .conftest import one_hot, random_graphs
from .kron_oracle import adjacency, gram as oracle_gram

# float64: relative 1e-8, not 1e-14, because sqrt(1 - lam^2) at lam = 1 - eps turns a rounding
# difference of 1e-16 in lam into ~1e-8 (both implementations hit it on every self node pair).
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def _oracle(graphs, cfg):
    k = 1 + max(int(g.tags.max()) for g in graphs)
    return oracle_gram([(adjacency(g.num_nodes, g.edges), one_hot(g, k)) for g in graphs],
                       cfg.layers, cfg.mlp_layers, cfg.scale, cfg.jk)


@pytest.mark.parametrize("cfg", [GNTKConfig(1, 1, "uniform", False), GNTKConfig(2, 2, "degree", True),
                                 GNTKConfig(3, 1, "degree", False), GNTKConfig(2, 3, "uniform", True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_kronecker_oracle(graphs, cfg, dtype):
    ref = _oracle(graphs, cfg)
    # chunk_nodes=12 cuts 9 graphs of 1..9 nodes into several blocks of mixed sizes (padding inside).
    got = gram_matrix(graphs, cfg, dtype=dtype, chunk_nodes=12, progress=False)
    assert len(make_blocks(np.array([g.num_nodes for g in graphs]), 12)) > 2
    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(ref).max())


def test_block_size_does_not_change_result(graphs):
    cfg = GNTKConfig(2, 2, "degree", True)
    one = gram_matrix(graphs, cfg, chunk_nodes=10_000, progress=False)   # one block
    many = gram_matrix(graphs, cfg, chunk_nodes=1, progress=False, workers=1)  # one graph per block
    np.testing.assert_allclose(one, many, rtol=1e-9)
    threads = torch.get_num_threads()
    np.testing.assert_array_equal(gram_matrix(graphs, cfg, chunk_nodes=1, progress=False, workers=3), many)
    assert torch.get_num_threads() == threads


def test_symmetric_psd():
    gs = random_graphs(1, 20, nmax=12)
    for cfg in (GNTKConfig(2, 2, "degree", True), GNTKConfig(3, 1, "uniform", False)):
        g = gram_matrix(gs, cfg, chunk_nodes=30, progress=False)
        np.testing.assert_array_equal(g, g.T)
        ev = np.linalg.eigvalsh(normalize_gram(g))
        assert ev.min() > -1e-9, ev.min()


def test_invariant_to_node_relabelling_and_graph_order(graphs):
    cfg = GNTKConfig(2, 2, "degree", True)
    base = gram_matrix(graphs, cfg, chunk_nodes=15, progress=False)
    rng = np.random.default_rng(5)
    perm_graphs = []
    for g in graphs:
        p = rng.permutation(g.num_nodes)          # new id of old node u is p[u]
        tags = np.empty_like(g.tags)
        tags[p] = g.tags
        perm_graphs.append(type(g)(g.num_nodes, p[g.edges], tags))
    np.testing.assert_allclose(gram_matrix(perm_graphs, cfg, chunk_nodes=15, progress=False), base, rtol=1e-9)
    order = rng.permutation(len(graphs))
    shuffled = gram_matrix([graphs[i] for i in order], cfg, chunk_nodes=15, progress=False)
    np.testing.assert_allclose(shuffled, base[np.ix_(order, order)], rtol=1e-9)


def test_features_argument_equals_one_hot_tags(graphs):
    cfg = GNTKConfig(2, 1, "degree", True)
    k = 1 + max(int(g.tags.max()) for g in graphs)
    a = gram_matrix(graphs, cfg, progress=False)
    b = gram_matrix(graphs, cfg, features=[one_hot(g, k + 2) for g in graphs], progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_chunks_resume_and_refuse_other_computation(graphs, tmp_path, monkeypatch):
    cfg = GNTKConfig(2, 2, "degree", True)
    d = tmp_path / "chunks"
    full = gram_matrix(graphs, cfg, chunk_nodes=12, chunk_dir=str(d), progress=False)
    files = sorted(f for f in os.listdir(d) if f.startswith("chunk_"))
    nb = len(make_blocks(np.array([g.num_nodes for g in graphs]), 12))
    assert len(files) == nb * (nb + 1) // 2
    # Lose two chunks (one diagonal, one off-diagonal) as a crash would; the rerun computes only those.
    os.remove(d / "chunk_00001_00001.npz")
    os.remove(d / files[-1])
    calls = []
    real = K.block_pair
    monkeypatch.setattr(K, "block_pair", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    again = gram_matrix(graphs, cfg, chunk_nodes=12, chunk_dir=str(d), progress=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(again, full)
    with pytest.raises(ConfigError, match="another computation.*config"):
        gram_matrix(graphs, GNTKConfig(1, 2, "degree", True), chunk_nodes=12, chunk_dir=str(d), progress=False)
    assert not [f for f in os.listdir(d) if ".tmp" in f]


def test_bad_input():
    g = random_graphs(2, 3)
    with pytest.raises(DataError, match="graph 1 is empty"):
        gram_matrix([g[0], type(g[0])(0, np.zeros((2, 0), np.int64), np.zeros(0, np.int64))], progress=False)
    with pytest.raises(DataError, match="no node tags/features"):
        gram_matrix([type(g[0])(g[0].num_nodes, g[0].edges, None)], progress=False)
    with pytest.raises(DataError, match=r"features of graph 0 must be \[num_nodes"):
        gram_matrix(g, features=[np.ones((99, 2))] * 3, progress=False)
    with pytest.raises(DataError, match="no graphs"):
        gram_matrix([], progress=False)
    with pytest.raises(ConfigError, match="scale must be one of"):
        GNTKConfig(scale="mean")
    with pytest.raises(ConfigError, match="layers must be an integer >= 1"):
        GNTKConfig(layers=0)
    with pytest.raises(ConfigError, match="dtype"):
        gram_matrix(g, dtype=torch.float16, progress=False)


@pytest.mark.parametrize("mlp,scale", [(2, "degree"), (1, "uniform")])
def test_one_layer_pass_gives_every_smaller_L_and_both_readouts(graphs, mlp, scale):
    # One pass at L=3 must reproduce separate passes at L=1, 2, 3 with and without jumping knowledge.
    parts = layer_grams(graphs, GNTKConfig(3, mlp, scale, jk=False), chunk_nodes=12, progress=False)
    assert parts.shape == (4, len(graphs), len(graphs))
    for L in (1, 2, 3):
        for jk in (True, False):
            cfg = GNTKConfig(L, mlp, scale, jk)
            sep = gram_matrix(graphs, cfg, chunk_nodes=12, progress=False)
            np.testing.assert_allclose(combine_layers(parts, L, jk), sep, rtol=1e-12, atol=0)
            np.testing.assert_allclose(sep, _oracle(graphs, cfg), rtol=1e-8, atol=1e-8 * np.abs(sep).max())
    # the layers really differ (a readout mix-up would not pass unnoticed above)
    assert not np.allclose(parts[1], parts[2]) and not np.allclose(parts[3], combine_layers(parts, 3, True))
    np.testing.assert_allclose(parts[0], 2.0 * np.array([[float((one_hot(a, 3) @ one_hot(b, 3).T).sum())
                                                           for b in graphs] for a in graphs]), rtol=1e-12)
    with pytest.raises(ConfigError, match=r"layers must be in \[1, 3\]"):
        combine_layers(parts, 4, True)


def test_layer_grams_chunks_resume_and_are_not_mixed_with_plain_chunks(graphs, tmp_path, monkeypatch):
    cfg = GNTKConfig(2, 2, "degree", True)
    d = tmp_path / "layers"
    full = layer_grams(graphs, cfg, chunk_nodes=12, chunk_dir=str(d), progress=False)
    # jk does not change a per-layer pass, so the same folder serves it
    os.remove(d / "chunk_00000_00001.npz")
    calls = []
    real = K.block_pair
    monkeypatch.setattr(K, "block_pair", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    again = layer_grams(graphs, GNTKConfig(2, 2, "degree", False), chunk_nodes=12, chunk_dir=str(d), progress=False)
    assert len(calls) == 1 and calls[0]["per_layer"]
    np.testing.assert_array_equal(again, full)
    with pytest.raises(ConfigError, match="another computation"):
        gram_matrix(graphs, cfg, chunk_nodes=12, chunk_dir=str(d), progress=False)
    with pytest.raises(ConfigError, match="another computation"):
        gram_matrix(graphs, cfg, chunk_nodes=12, chunk_dir=str(tmp_path / "plain"), progress=False) is None or \
            layer_grams(graphs, cfg, chunk_nodes=12, chunk_dir=str(tmp_path / "plain"), progress=False)


def test_config_name_round_trips_and_bad_names_are_refused():
    for cfg in (GNTKConfig(11, 3, "degree", True), GNTKConfig(1, 2, "uniform", False)):
        assert GNTKConfig.parse(cfg.name) == cfg
    assert GNTKConfig(1, 2, "degree", True).name == "L1-R2-degree-jk"
    for bad in ("L1-R2", "L1-R2-mean", "1-2-degree", "Lx-R2-degree", "L1-R2-degree-kj", "L1-R2-degree-jk-x"):
        with pytest.raises(ConfigError, match=repr(bad)):
            GNTKConfig.parse(bad)
    with pytest.raises(ConfigError, match="layers must be an integer >= 1"):
        GNTKConfig.parse("L0-R2-degree")


def _mkl_max_threads():
    """``mkl_get_max_threads`` of torch's bundled MKL (the calling thread's setting), or None."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*"))
    try:
        return ctypes.CDLL(libs[0]).mkl_get_max_threads if libs else None
    except (OSError, AttributeError):
        return None


def test_every_worker_computes_with_one_intra_op_thread(graphs, monkeypatch):
    # gram_matrix runs block pairs in worker threads with one intra-op thread each. torch applies its thread
    # setting to a new thread lazily (at the first large element-wise op), so before the fix the first block
    # pair of every worker ran its matmuls with MKL at the process default.
    mkl = _mkl_max_threads()
    if mkl is None or torch.get_num_threads() < 2:
        pytest.skip("needs torch's MKL and at least 2 intra-op threads")
    seen = []
    real = K.block_pair
    monkeypatch.setattr(K, "block_pair", lambda *a, **kw: seen.append(mkl()) or real(*a, **kw))
    gram_matrix(graphs, GNTKConfig(2, 1, "uniform", False), chunk_nodes=4, workers=2, progress=False)
    assert len(seen) > 4 and set(seen) == {1}, seen
