"""Partitioners: sizes, coverage, determinism, caching, METIS quality and input safety."""
from __future__ import annotations

import importlib
import os

import pytest
import torch

from graphscale.errors import ConfigError, DataError
from graphscale.sampling.partition import edge_cut, metis_input, partition, vertex_weights

pytest.importorskip("pymetis")
# the module (graphscale.sampling re-exports a function of the same name)
P = importlib.import_module("graphscale.sampling.partition")


def planted(n: int = 2000, k: int = 10, deg: int = 10, p_in: float = 0.9, seed: int = 0):
    """Planted-partition graph: ``k`` equal communities, share ``p_in`` of edges inside them."""
    g = torch.Generator().manual_seed(seed)
    comm = torch.arange(n) % k
    m = n * deg // 2
    src = torch.randint(0, n, (m,), generator=g)
    same = torch.rand(m, generator=g) < p_in
    # a random member of src's community: ids congruent to comm[src] mod k
    mate = comm[src] + k * torch.randint(0, n // k, (m,), generator=g)
    dst = torch.where(same, mate, torch.randint(0, n, (m,), generator=g))
    ei = torch.stack([src, dst])
    return torch.cat([ei, ei.flip(0)], dim=1), comm


@pytest.fixture(autouse=True)
def _fresh_memo():
    P.clear_memo()
    yield
    P.clear_memo()


@pytest.mark.parametrize("name", ["metis", "random", "contiguous"])
def test_sizes_coverage_determinism(name):
    ei, _ = planted()
    n, k = 2000, 16
    a = partition(name, ei, n, k, seed=3)
    assert a.shape == (n,) and a.dtype == torch.long
    counts = torch.bincount(a, minlength=k)
    assert counts.numel() == k and bool((counts > 0).all())
    assert int(counts.max()) <= (1 + 0.03) * n / k + 1  # default imbalance 3%
    P.clear_memo()
    assert torch.equal(a, partition(name, ei, n, k, seed=3))


def test_metis_seed_changes_result_and_imbalance_respected():
    ei, _ = planted(seed=1)
    a = partition("metis", ei, 2000, 8, seed=0)
    b = partition("metis", ei, 2000, 8, seed=12345)
    assert not torch.equal(a, b)
    for imb in (0.01, 0.1):
        c = partition("metis", ei, 2000, 10, seed=0, imbalance=imb)
        assert int(torch.bincount(c).max()) <= (1 + imb) * 200 + 1


def test_metis_cut_far_below_random_on_planted_graph():
    ei, comm = planted(n=4000, k=20, seed=2)
    metis = edge_cut(ei, partition("metis", ei, 4000, 20, seed=0))
    rand = edge_cut(ei, partition("random", ei, 4000, 20, seed=0))
    assert metis * 5 <= rand, (metis, rand)


def test_disk_cache_hit_skips_partitioner(tmp_path, monkeypatch):
    ei, _ = planted(n=500, k=5)
    calls = []
    real = P.PARTITIONERS["metis"]

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setitem(P.PARTITIONERS, "metis", counting)
    a = partition("metis", ei, 500, 5, seed=0, cache_dir=tmp_path)
    files = [f for f in os.listdir(tmp_path) if f.endswith(".pt")]
    assert len(calls) == 1 and len(files) == 1 and files[0].startswith("metis-")
    P.clear_memo()  # force the disk path, as a second process would
    b = partition("metis", ei, 500, 5, seed=0, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(a, b)
    # another parameter -> another key -> computed again
    partition("metis", ei, 500, 5, seed=0, cache_dir=tmp_path, imbalance=0.2)
    assert len(calls) == 2 and len(os.listdir(tmp_path)) == 2
    # another graph (one edge less) -> computed again
    partition("metis", ei[:, 1:], 500, 5, seed=0, cache_dir=tmp_path)
    assert len(calls) == 3


def test_corrupt_cache_file_is_recomputed(tmp_path):
    ei, _ = planted(n=300, k=3)
    a = partition("random", ei, 300, 3, seed=0, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        b = partition("random", ei, 300, 3, seed=0, cache_dir=tmp_path)
    assert torch.equal(a, b)


def test_metis_input_is_safe():
    # directed, duplicated, self-loops, one isolated node (4)
    ei = torch.tensor([[0, 0, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 0, 3]])
    rowptr, col, w = metis_input(ei, 5)
    assert w is None
    rows = torch.repeat_interleave(torch.arange(5), rowptr[1:] - rowptr[:-1])
    pairs = set(zip(rows.tolist(), col.tolist()))
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (0, 3), (3, 0)}
    assert len(pairs) == col.numel()  # no duplicates, no loops
    assert int(rowptr[5] - rowptr[4]) == 0
    # edge weights: max over copies in either direction; zero-weight edges dropped
    rowptr, col, w = metis_input(torch.tensor([[0, 1, 1], [1, 0, 2]]), 3, torch.tensor([2.0, 5.0, 0.0]))
    assert col.tolist() == [1, 0] and w.tolist() == [5.0, 5.0]


def _messy_graph(n: int = 300, e: int = 2000, seed: int = 0) -> torch.Tensor:
    """Directed random edges with duplicates (both orientations), self-loops and isolated nodes."""
    g = torch.Generator().manual_seed(seed)
    used = torch.tensor([i for i in range(n) if i % 15 != 0])  # nodes 0, 15, 30, ... isolated
    ei = used[torch.randint(0, used.numel(), (2, e), generator=g)]
    loops = used[::7].repeat(2, 1)
    return torch.cat([ei, ei[:, :300], ei[:, 300:600].flip(0), loops], dim=1)


@pytest.mark.parametrize("block_keys", [1, 5, 97, 1000, P.METIS_BLOCK_KEYS])
def test_metis_input_blocks_equal_the_all_at_once_construction(block_keys):
    # The unweighted CSR is built a block of rows at a time (low memory); the weighted path still
    # concatenates all 2E pairs and torch.unique-s them, which is how the unweighted one was built
    # before: with unit weights its structure must be the same, for any block size.
    ei = _messy_graph()
    ref_ptr, ref_col, ref_w = metis_input(ei, 300, torch.ones(ei.size(1)))
    rowptr, col, w = metis_input(ei, 300, block_keys=block_keys)
    assert w is None and rowptr.dtype == col.dtype == torch.long
    assert torch.equal(rowptr, ref_ptr) and torch.equal(col, ref_col)
    assert bool((ref_w == 1).all()) and int(rowptr[-1]) < 2 * ei.size(1)  # duplicates and loops were dropped
    # any integer dtype / layout of edge_index reads the same
    for other in (ei.int(), ei.t().contiguous().t()):
        rp, c, _ = metis_input(other, 300, block_keys=block_keys)
        assert torch.equal(rp, ref_ptr) and torch.equal(c, ref_col)


def test_metis_input_memory_is_the_result_plus_one_block():
    # The saving itself, counted by tracemalloc (numpy reports its buffers to it): with small blocks
    # the construction allocates the 2E-entry result buffer (its untouched tail is never resident and
    # is given back at the end), the scan's boolean masks and one block; as one block it also holds
    # all 2E keys, their concatenation and the deduplicated copy at once.
    import tracemalloc
    ei, _ = planted(n=20000, k=20, deg=10)
    u = ei.size(1) * 8  # bytes of one int64 [E] array
    peaks = {}
    for bk in (4096, 1 << 30):
        tracemalloc.start()
        try:
            metis_input(ei, 20000, block_keys=bk)
            peaks[bk] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[4096] < 3.5 * u, peaks[4096] / u  # measured 3.25
    assert peaks[4096] < 0.6 * peaks[1 << 30], (peaks[4096] / u, peaks[1 << 30] / u)  # measured 3.25 vs 6.47


def test_metis_input_without_edges_and_bad_block_size():
    rowptr, col, _ = metis_input(torch.empty(2, 0, dtype=torch.long), 4)
    assert rowptr.tolist() == [0, 0, 0, 0, 0] and col.numel() == 0
    with pytest.raises(ConfigError, match="block_keys"):
        metis_input(torch.tensor([[0], [1]]), 2, block_keys=0)


def test_metis_gets_the_relabelled_graph_without_isolated_nodes(monkeypatch):
    # What METIS is given (and so its partition): the symmetric CSR over the non-isolated nodes,
    # renumbered 0..n_conn-1 (relabelled in place in chunks now); checked against a relabelling
    # written out here on the all-at-once construction.
    import pymetis
    ei = _messy_graph(seed=1)
    seen = {}
    real = pymetis.part_graph

    def spy(k, adjacency, **kw):
        seen["ptr"], seen["adj"] = adjacency.adj_starts.copy(), adjacency.adjacent.copy()
        return real(k, adjacency, **kw)

    monkeypatch.setattr(P, "_SCAN_CHUNK", 7)  # several relabelling chunks on a small graph
    monkeypatch.setattr(pymetis, "part_graph", spy)
    P.metis_partition(ei, 300, 4, seed=0)
    rowptr, col, _ = metis_input(ei, 300, torch.ones(ei.size(1)))
    deg = rowptr[1:] - rowptr[:-1]
    conn = (deg > 0).nonzero().view(-1)
    assert conn.numel() == 280
    new_id = torch.full((300,), -1, dtype=torch.long)
    new_id[conn] = torch.arange(conn.numel())
    assert seen["ptr"].tolist() == [0] + deg[conn].cumsum(0).tolist()
    assert seen["adj"].tolist() == new_id[col].tolist()


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_metis_handles_isolated_loops_and_directed(k):
    # a directed path 0->1->2 with self-loops, plus isolated nodes 3..6
    ei = torch.tensor([[0, 1, 1, 2], [1, 1, 2, 2]])
    part = partition("metis", ei, 7, k, seed=0)
    counts = torch.bincount(part, minlength=k)
    assert counts.numel() == k and bool((counts > 0).all())  # every part non-empty, all nodes placed


def test_metis_on_graph_without_edges():
    part = partition("metis", torch.empty(2, 0, dtype=torch.long), 10, 3, seed=0)
    assert sorted(torch.bincount(part).tolist()) == [3, 3, 4]


def test_vertex_weights_balance_training_nodes():
    ei, comm = planted(n=2000, k=10, seed=4)
    train = comm < 2  # all training nodes sit in two communities
    plain = partition("metis", ei, 2000, 10, seed=0)
    vw = vertex_weights("train", ei, 2000, train)
    bal = partition("metis", ei, 2000, 10, seed=0, vertex_weight=vw, imbalance=0.1)
    per_part = lambda p: torch.bincount(p[train], minlength=10)  # noqa: E731
    print("train nodes per part", per_part(plain).tolist(), per_part(bal).tolist(), torch.bincount(bal).tolist())
    assert int(per_part(plain).min()) == 0  # METIS alone leaves parts without training nodes
    assert int(per_part(bal).min()) >= 20  # every part gets at least half its share (40)
    load = torch.zeros(10, dtype=torch.long).index_add_(0, bal, vw)
    assert int(load.max()) <= 1.1 * int(vw.sum()) / 10 + int(vw.max())  # the blended constraint holds
    deg = vertex_weights("degree", ei, 2000)
    assert deg.shape == (2000,) and int(deg.min()) >= 1
    partition("metis", ei, 2000, 4, seed=0, vertex_weight=deg.float() * 0.37)  # float weights scaled


def test_edge_weights_steer_the_cut():
    # 4-cycle 0-1-2-3-0: heavy edges 0-1 and 2-3 must not be cut when bisecting
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    part = partition("metis", ei, 4, 2, seed=0, edge_weight=torch.tensor([10, 1, 10, 1]))
    assert part[0] == part[1] and part[2] == part[3] and part[0] != part[2]
    part = partition("metis", ei, 4, 2, seed=0, edge_weight=torch.tensor([1, 10, 1, 10]))
    assert part[1] == part[2] and part[3] == part[0] and part[0] != part[1]


@pytest.mark.parametrize("k", [0, -1, 11, 2.5, True])
def test_num_parts_out_of_range(k):
    ei = torch.tensor([[0, 1], [1, 2]])
    for name in ("metis", "random", "contiguous"):
        with pytest.raises(ConfigError, match="num_parts"):
            partition(name, ei, 10, k)


@pytest.mark.parametrize("kw, match", [
    ({"vertex_weight": torch.ones(9)}, r"vertex_weight must have shape \[10\]"),
    ({"vertex_weight": -torch.ones(10)}, "non-negative"),
    ({"edge_weight": torch.ones(3)}, r"edge_weight must have shape \[2\]"),
    ({"edge_weight": torch.tensor([1.0, -2.0])}, "non-negative"),
    ({"edge_weight": torch.tensor([1.0, float("nan")])}, "NaN"),
    ({"imbalance": 0}, "imbalance"),
])
def test_bad_weights_rejected(kw, match):
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises((DataError, ConfigError), match=match):
        partition("metis", ei, 10, 2, **kw)


@pytest.mark.parametrize("ei, match", [
    (torch.tensor([[0, 1, 2]]), r"shape \[2, E\]"),
    (torch.tensor([[0, 1], [1, 10]]), r"ids in \[0, 10\)"),
    (torch.tensor([[0, -1], [1, 2]]), r"ids in \[0, 10\)"),
    (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), "integer"),
])
def test_bad_edge_index_rejected(ei, match):
    with pytest.raises(DataError, match=match):
        partition("metis", ei, 10, 2)


def test_unknown_partitioner_and_vertex_weight():
    with pytest.raises(ConfigError, match="expected one of"):
        partition("mettis", None, 10, 2)
    with pytest.raises(ConfigError, match="train_mask"):
        vertex_weights("train", torch.tensor([[0], [1]]), 2)
    with pytest.raises(ConfigError, match="unknown vertex weight"):
        vertex_weights("pagerank", torch.tensor([[0], [1]]), 2)
