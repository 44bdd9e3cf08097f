"""Partitioned store (issue 19): the writer, the reader, store batches and training from a store.

Equivalence checked here:

* the union of the parts is the graph: every node once as an inner node, every edge once (intra or
  entering), features / labels / edge features / splits row for row, halo = the in-neighbours;
* store batches (one process, no accumulation) are the in-memory ``ClusterGCNSampler`` batches on
  the same partition and seed, node for node and edge for edge (diagonal weights included);
* training from the store gives the in-memory Cluster-GCN run's parameters and losses (W = 1);
* 2 gloo processes from the store equal 1 process with ``grad_accum=2`` (parameters, losses and the
  gathered evaluation);
* ``--resume`` from the store ends where the uninterrupted run does.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from graphscale.data import SyntheticSpec, load_dataset
from graphscale.data.part_store import (META, SPLITS, StoreError, files_of, open_part, owned_parts, part_file,
                                        read_meta, verify_files)
from graphscale.errors import ConfigError, GraphscaleError
from graphscale.sampling.cluster import ClusterGCNSampler
from graphscale.sampling.partition import partition
from graphscale.sampling.store_sampler import RankParts, StoreClusterSampler
from graphscale.sampling.store_writer import write_store

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PRODUCTS = dict(num_nodes=600, avg_degree=8, num_communities=12, num_features=16, num_classes=5)
# a train config whose data section is the 600-node synthetic-products set above
TINY = ["data.name=synthetic-products", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
        "data.num_features=16", "data.num_classes=5", "sampler.name=cluster", "sampler.num_parts=6",
        "sampler.clusters_per_batch=2", "model.name=gcn", "model.hidden_channels=16", "model.num_layers=2",
        "model.dropout=0.0", "train.epochs=3", "train.device=cpu", "log.progress=false", "train.dist_timeout=60"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def products(root):
    return load_dataset("synthetic-products", root, synthetic=SyntheticSpec(**PRODUCTS))


@pytest.fixture(scope="module")
def proteins(root):  # multilabel, with edge features
    return load_dataset("synthetic-proteins", root, synthetic=SyntheticSpec(num_nodes=300, avg_degree=6,
                                                                            num_communities=8))


@pytest.fixture(scope="module")
def store(products, root, tmp_path_factory):
    """The 600-node set in 6 METIS parts, as 'graphscale data partition' writes it from TINY."""
    from graphscale.cli import main
    out = str(tmp_path_factory.mktemp("store") / "s6")
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text("data:\n  root: " + root + "\n")
    assert main(["data", "partition", str(cfg), *TINY, "--out", out, "--no-progress"]) == 0
    return out


def _union_checks(data, out, halo):
    meta = read_meta(out)
    verify_files(out, meta, list(meta["files"]), checksum=True)
    n, P = data.num_nodes, meta["num_parts"]
    book = np.load(os.path.join(out, "book.npy"))
    seen_nodes = torch.zeros(n, dtype=torch.long)
    seen_edges = torch.zeros(data.num_edges, dtype=torch.long)
    split_seen = {k: [] for k in SPLITS}
    ei = data.edge_index
    for p in range(P):
        part = open_part(out, meta, p)
        inner = part.nodes[:part.num_inner]
        assert torch.equal(inner, torch.sort(inner).values)
        assert (torch.from_numpy(book[inner.numpy()]) == p).all()
        seen_nodes[inner] += 1
        assert torch.equal(torch.from_numpy(np.asarray(part.x)), data.x[part.nodes])  # halo rows too
        assert torch.equal(part.y, data.y[inner])
        # intra edges: in-CSR rows are targets, col are sources, both inside the part
        dst = inner[part.intra_dst()]
        src = inner[part.col]
        assert torch.equal(ei[0, part.eid], src) and torch.equal(ei[1, part.eid], dst)
        # entering edges: source in another part, at cross_pos among that part's inner nodes
        assert torch.equal(ei[0, part.cross_eid], part.cross_src)
        assert torch.equal(ei[1, part.cross_eid], inner[part.cross_dst])
        assert (part.cross_part != p).all()
        assert torch.equal(torch.from_numpy(book[part.cross_src.numpy()]).long(), part.cross_part)
        for q in part.cross_part.unique().tolist():
            other = open_part(out, meta, q)
            sel = part.cross_part == q
            assert torch.equal(other.nodes[part.cross_pos[sel]], part.cross_src[sel])
        seen_edges[part.eid] += 1
        seen_edges[part.cross_eid] += 1
        # halo = the in-neighbours from other parts, exactly (halo 1), none otherwise
        halo_nodes = part.nodes[part.num_inner:]
        expect = torch.unique(part.cross_src) if halo else torch.empty(0, dtype=torch.long)
        assert torch.equal(halo_nodes, expect)
        if data.edge_attr is not None:
            assert torch.equal(torch.from_numpy(np.asarray(part.edge_attr)), data.edge_attr[part.eid])
            assert torch.equal(torch.from_numpy(np.asarray(part.cross_edge_attr)), data.edge_attr[part.cross_eid])
        for k in SPLITS:
            split_seen[k].append(inner[part.split[k]])
    assert (seen_nodes == 1).all(), "every node is the inner node of exactly one part"
    assert (seen_edges == 1).all(), "every edge is stored exactly once (intra or entering)"
    for k in SPLITS:
        assert torch.equal(torch.sort(torch.cat(split_seen[k])).values, torch.sort(data.split[k]).values)
    assert meta["num_nodes"] == n and meta["num_edges"] == data.num_edges


@pytest.mark.parametrize("halo", [0, 1])
def test_parts_union_is_the_graph(products, tmp_path, halo):
    out = str(tmp_path / "s")
    write_store(products, out, 5, "metis", halo=halo, seed=3, progress=False)
    _union_checks(products, out, halo)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n], "the temporary folder was renamed away"


@pytest.mark.parametrize("data_name", ["products", "proteins"])
def test_offloaded_metis_writes_the_same_store(data_name, request, tmp_path, monkeypatch):
    # offload=True (what 'graphscale data partition' does with METIS): while METIS runs, the features
    # and edges are on disk, not in memory, and the store is byte for byte the one written without it.
    import dataclasses

    import pymetis
    data = request.getfixturevalue(data_name)
    ref = write_store(data, str(tmp_path / "a"), 5, "metis", seed=3, progress=False)
    mine = dataclasses.replace(data)  # the fixture's own object stays untouched
    during = {}
    real = pymetis.part_graph

    def spy(*a, **kw):
        during["in_memory"] = [k for k in ("x", "edge_index", "edge_attr") if getattr(mine, k) is not None]
        during["on_disk"] = sorted(f for d, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".offload-"))
        return real(*a, **kw)

    monkeypatch.setattr(pymetis, "part_graph", spy)
    meta = write_store(mine, str(tmp_path / "b"), 5, "metis", seed=3, progress=False, offload=True)
    assert during["in_memory"] == []
    expect = ["x", "edge_index"] + (["edge_attr"] if data.edge_attr is not None else [])
    assert during["on_disk"] == sorted(f".offload-{k}.npy" for k in expect)
    assert meta["files"] == ref["files"]  # same partition, same bytes (sha256 per file)
    for k in expect:  # read back into memory, equal
        assert torch.equal(getattr(mine, k), getattr(data, k)) and getattr(mine, k) is not getattr(data, k)
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))  # the scratch files are gone


def test_parts_union_with_edge_features_and_multilabel(proteins, tmp_path):
    out = str(tmp_path / "s")
    write_store(proteins, out, 4, "random", halo=1, seed=0, progress=False)
    _union_checks(proteins, out, 1)
    meta = read_meta(out)
    assert meta["task"] == "multilabel" and meta["edge_dim"] == proteins.edge_attr.size(1)


@pytest.mark.parametrize("q,lam", [(1, None), (1, 1.0), (2, None), (3, 1.0)])
def test_store_batches_are_the_in_memory_cluster_batches(products, tmp_path, q, lam):
    out = str(tmp_path / "s")
    part = partition("metis", products.edge_index, products.num_nodes, 6, seed=0)
    write_store(products, out, 6, "metis", seed=0, part=part, progress=False)
    meta = read_meta(out)
    rp = RankParts(out, meta, list(range(6)))
    mem = ClusterGCNSampler(products.edge_index, products.num_nodes, part, 6, q, seed=4, diag_lambda=lam)
    st = StoreClusterSampler(rp, clusters_per_batch=q, seed=4, diag_lambda=lam)
    assert len(st) == len(mem)
    eid_of_local = torch.cat([torch.cat([P.eid, P.cross_eid]) for P in rp.parts])
    for epoch in (1, 2):
        pairs = list(zip(mem.epoch(epoch), st.epoch(epoch), strict=True))
        for a, b in pairs:
            assert torch.equal(rp.global_ids[b.node_ids], a.node_ids)
            assert torch.equal(b.edge_index, a.edge_index)
            assert torch.equal(eid_of_local[b.edge_ids], a.edge_ids)
            assert (a.edge_weight is None) == (b.edge_weight is None)
            if lam is not None:
                assert torch.equal(a.edge_weight, b.edge_weight)
            assert torch.equal(rp.x[b.node_ids], products.x[a.node_ids])
            assert torch.equal(rp.y[b.node_ids], products.y[a.node_ids])



def test_one_part_halo_batches_need_no_sort(products, tmp_path):
    # a one-part halo batch is built in (source part, edge id) order without sorting; the same batch
    # through the sorting path (as if the entering edges were not stored in id order) is identical.
    # (One-part batches without a halo are compared with the in-memory sampler's above.)
    out = str(tmp_path / "s")
    write_store(products, out, 5, "metis", halo=1, seed=0, progress=False)
    meta = read_meta(out)
    rp, sorting = RankParts(out, meta, list(range(5))), RankParts(out, meta, list(range(5)))
    assert all(rp._cross_sorted)
    sorting._cross_sorted = [False] * 5
    for p in range(5):
        a, b = rp.batch([p], diag_lambda=1.0), sorting.batch([p], diag_lambda=1.0)
        assert torch.equal(a.node_ids, b.node_ids) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.edge_ids, b.edge_ids) and torch.equal(a.edge_weight, b.edge_weight)
    assert rp._by_eid[0].dtype == torch.int32  # 4 bytes per intra edge kept for it


def test_parts_opened_without_entering_edges(products, tmp_path):
    # q = 1 without a halo never reads the entering edges: opened without them, the batches and the
    # evaluation blocks are the same, and every use that needs them is refused
    from graphscale.sampling.store_sampler import StoreRandomSampler
    from graphscale.train.config import load_config
    from graphscale.train.partitioned import needs_cross_edges
    out = str(tmp_path / "s")
    write_store(products, out, 6, "metis", seed=0, progress=False)
    meta = read_meta(out)
    full, lean = RankParts(out, meta, [1, 3, 5]), RankParts(out, meta, [1, 3, 5], cross=False)
    assert lean.parts[0].cross_src is None and lean.parts[0].num_cross == full.parts[0].num_cross > 0
    assert torch.equal(lean.edge_off, full.edge_off)
    cross = sum(P.num_cross for P in full.parts)
    assert full.index_bytes() - lean.index_bytes() == 40 * cross  # five int64 arrays per entering edge
    kw = dict(seed=2, diag_lambda=1.0, rank=1, world_size=2)  # rank 1 of 2 owns parts 1, 3, 5
    a, b = StoreClusterSampler(full, 1, **kw), StoreClusterSampler(lean, 1, **kw)
    for x, y in zip(a.epoch(3), b.epoch(3), strict=True):
        assert torch.equal(x.node_ids, y.node_ids) and torch.equal(x.edge_index, y.edge_index)
        assert torch.equal(x.edge_ids, y.edge_ids) and torch.equal(x.edge_weight, y.edge_weight)
    (bx, sx), (by, sy) = full.blocks([1, 5]), lean.blocks([1, 5])
    assert sx == sy and torch.equal(bx.edge_index, by.edge_index) and torch.equal(bx.edge_ids, by.edge_ids)
    with pytest.raises(ConfigError, match="entering edges"):
        lean.batch([1, 3])
    with pytest.raises(ConfigError, match="clusters_per_batch=2"):
        StoreClusterSampler(lean, 2, rank=1, world_size=2)
    with pytest.raises(ConfigError, match="random batches"):
        StoreRandomSampler(lean, 3, rank=1, world_size=2)
    halo = str(tmp_path / "h")
    write_store(products, halo, 3, "metis", halo=1, seed=0, progress=False)
    with pytest.raises(ConfigError, match="halo"):
        RankParts(halo, read_meta(halo), [0], cross=False)
    cfg = lambda *kv: load_config(None, ["sampler.name=cluster", *kv])  # noqa: E731
    assert not needs_cross_edges(cfg("sampler.clusters_per_batch=1"), meta)
    assert needs_cross_edges(cfg("sampler.clusters_per_batch=2"), meta)
    assert needs_cross_edges(cfg("sampler.clusters_per_batch=1"), read_meta(halo))
    assert needs_cross_edges(load_config(None, ["sampler.name=random"]), meta)

def test_store_random_batches_are_the_in_memory_random_partition_batches(products, tmp_path):
    from graphscale.sampling.samplers import PartitionSampler
    from graphscale.sampling.store_sampler import StoreRandomSampler
    out = str(tmp_path / "s")
    write_store(products, out, 6, "metis", seed=0, progress=False)
    rp = RankParts(out, read_meta(out), list(range(6)))
    mem = PartitionSampler(products.edge_index, products.num_nodes, 7, seed=5, partitioner="random")
    st = StoreRandomSampler(rp, 7, seed=5)
    eid_of_local = torch.cat([torch.cat([P.eid, P.cross_eid]) for P in rp.parts])
    assert len(st) == len(mem) == 7
    for epoch in (1, 2):
        for a, b in zip(mem.epoch(epoch), st.epoch(epoch), strict=True):
            assert torch.equal(rp.global_ids[b.node_ids], a.node_ids)
            assert torch.equal(b.edge_index, a.edge_index)
            assert torch.equal(eid_of_local[b.edge_ids], a.edge_ids)
    # two groups (2 processes, or grad_accum=2): each step's nodes come from its own group's parts only
    st2 = StoreRandomSampler(rp, 7, seed=5, grad_accum=2)
    steps = list(st2.epoch(1))
    assert len(st2) == 8 and len(steps) == 8
    book = torch.from_numpy(np.load(os.path.join(out, "book.npy"))).long()
    for i, sub in enumerate(steps):
        assert (book[rp.global_ids[sub.node_ids]] % 2 == i % 2).all()


def test_halo_batch_is_the_full_in_neighbourhood(products, tmp_path):
    out = str(tmp_path / "s")
    write_store(products, out, 5, "metis", halo=1, seed=0, progress=False)
    meta = read_meta(out)
    rp = RankParts(out, meta, list(range(5)))
    ei = products.edge_index
    for parts in ([2], [0, 3]):
        sub = rp.batch(parts)
        glob = rp.global_ids[sub.node_ids]
        inner = torch.cat([rp.parts[p].nodes[:rp.parts[p].num_inner] for p in parts])
        is_inner = torch.zeros(products.num_nodes, dtype=torch.bool)
        is_inner[inner] = True
        want = is_inner[ei[1]]  # every edge that ends at a batch node
        assert sub.edge_index.size(1) == int(want.sum())
        got = torch.stack([glob[sub.edge_index[0]], glob[sub.edge_index[1]]])
        key = lambda e: set(map(tuple, e.t().tolist()))  # noqa: E731
        assert key(got) == key(ei[:, want])
        halo = glob[inner.numel():]
        assert not is_inner[halo].any() and halo.unique().numel() == halo.numel()
        assert torch.equal(rp.x[sub.node_ids], products.x[glob])
        assert not torch.isin(rp.split["train"], sub.node_ids[inner.numel():]).any()  # halo rows carry no loss
    # evaluation blocks: parts side by side, each exactly its batch alone (halo rows not shared)
    blk, starts = rp.blocks([0, 3, 4])
    ends = starts[1:] + [blk.num_nodes]
    for p, a, b in zip([0, 3, 4], starts, ends):
        alone = rp.batch([p])
        assert torch.equal(rp.global_ids[blk.node_ids[a:b]], rp.global_ids[alone.node_ids])
        inside = (blk.edge_index[1] >= a) & (blk.edge_index[1] < b)
        assert bool(((blk.edge_index[0][inside] >= a) & (blk.edge_index[0][inside] < b)).all())
        key = lambda e: set(map(tuple, e.t().tolist()))  # noqa: E731
        assert key(blk.edge_index[:, inside] - a) == key(alone.edge_index)


# ----------------------------------------------------------------------------------- training
def _train(overrides, out, drop=()):
    from graphscale.train.api import train
    from graphscale.train.config import load_config
    base = [o for o in TINY if o.split("=")[0] not in drop]
    return train(load_config(None, [*base, *overrides, f"log.out={out}"]))


def _model(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def _worst(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("q", [2, 1])  # q = 1: the ranks open their parts without the entering edges
def test_training_from_the_store_equals_in_memory_cluster_gcn(store, root, tmp_path, q):
    mem = _train([f"data.root={root}", f"sampler.clusters_per_batch={q}"], tmp_path / "mem")
    st = _train([f"data.root={root}", f"data.partitions={store}", f"sampler.clusters_per_batch={q}"], tmp_path / "st")
    assert _worst(_model(tmp_path / "mem"), _model(tmp_path / "st")) <= 1e-6
    assert [r["loss"] for r in _rows(tmp_path / "mem")] == pytest.approx([r["loss"] for r in _rows(tmp_path / "st")],
                                                                        rel=1e-6)
    assert st["dataset"] == mem["dataset"] == "synthetic-products"
    assert st["config"]["sampler"]["eval_name"] == "parts" and st["config"]["data"]["partitions"] == store
    assert 0.0 <= st["best_valid"] <= 1.0


def test_random_batches_from_the_store_train_like_in_memory(store, root, tmp_path):
    drop = ("sampler.clusters_per_batch",)
    extra = [f"data.root={root}", "sampler.name=random", "sampler.num_parts=4", "train.epochs=2"]
    _train(extra, tmp_path / "mem", drop=drop)
    _train([*extra, f"data.partitions={store}"], tmp_path / "st", drop=drop)
    assert _worst(_model(tmp_path / "mem"), _model(tmp_path / "st")) <= 1e-6


def test_store_evaluation_scores_the_gathered_predictions(store, root, tmp_path):
    """The gathered per-part predictions, scored on rank 0, equal the metric recomputed here from the
    same model applied part by part to the in-memory graph."""
    from graphscale.sampling.subgraph import part_subgraphs
    from graphscale.train.config import load_config
    from graphscale.train.trainer import Trainer
    cfg = load_config(None, [*TINY, f"data.root={root}", f"data.partitions={store}", f"log.out={tmp_path / 'e'}",
                             "train.epochs=1"])
    tr = Trainer(cfg)
    tr._run()
    scores = tr.evaluate()
    data = load_dataset("synthetic-products", root, synthetic=SyntheticSpec(**PRODUCTS))
    book = torch.from_numpy(np.load(os.path.join(store, "book.npy"))).long()
    model = tr.model.eval()
    logits = torch.zeros(data.num_nodes, 5)
    with torch.no_grad():
        for sub in part_subgraphs(data.edge_index, book, 6):
            logits[sub.node_ids] = model(data.x[sub.node_ids], sub.edge_index)
    for k in SPLITS:
        idx = data.split[k]
        acc = float((logits[idx].argmax(-1) == data.y[idx]).double().mean())
        assert scores[k] == pytest.approx(acc, abs=1e-9)
    tr.run_ctx.close()


def test_resume_from_the_store_ends_like_an_uninterrupted_run(store, root, tmp_path):
    full = _train([f"data.root={root}", f"data.partitions={store}", "train.epochs=4"], tmp_path / "full")
    _train([f"data.root={root}", f"data.partitions={store}", "train.epochs=2"], tmp_path / "cut")
    from graphscale.train.api import train
    from graphscale.train.config import load_config
    res = train(load_config(None, [*TINY, f"data.root={root}", f"data.partitions={store}", "train.epochs=4",
                                   f"log.out={tmp_path / 'cut'}"]), resume=True)
    assert _worst(_model(tmp_path / "full"), _model(tmp_path / "cut")) == 0.0
    assert res["best_valid"] == full["best_valid"] and len(_rows(tmp_path / "cut")) == 4


def test_halo_store_trains_and_deep_models_run(products, root, tmp_path):
    out = str(tmp_path / "h")
    from graphscale.train.config import load_config, to_dict
    from graphscale.train.partitioned import DATA_KEYS_NOT_IN_STORE
    cfg = load_config(None, [*TINY, f"data.root={root}"])
    data_cfg = {k: v for k, v in to_dict(cfg)["data"].items() if k not in DATA_KEYS_NOT_IN_STORE}
    write_store(products, out, 6, "metis", halo=1, seed=0, data_config=data_cfg, progress=False)
    res = _train([f"data.root={root}", f"data.partitions={out}", "train.epochs=1", "model.name=revgnn",
                  "model.num_layers=2", "model.hidden_channels=8", "memory.compression=layers", "train.grad_accum=2"],
                 tmp_path / "rev")
    assert np.isfinite(_rows(tmp_path / "rev")[0]["loss"]) and res["epochs"] == 1
    res = _train([f"data.root={root}", f"data.partitions={out}", "train.epochs=1", "model.name=deq-gnn",
                  "model.hidden_channels=8", "model.max_iter=5"], tmp_path / "deq", drop=("model.num_layers",))
    assert np.isfinite(_rows(tmp_path / "deq")[0]["loss"]) and res["epochs"] == 1


# ----------------------------------------------------------------------------------- 2 processes
def test_two_processes_from_the_store_equal_one_with_grad_accum(store, root, tmp_path):
    from graphscale.train.distributed import torchrun_command
    ref = _train([f"data.root={root}", f"data.partitions={store}", "train.grad_accum=2", "train.epochs=2"],
                 tmp_path / "one")
    out = str(tmp_path / "two")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = torchrun_command(2, ["-m", "graphscale"], ["train", *TINY, f"data.root={root}", f"data.partitions={store}",
                                                     "train.epochs=2", "--out", out], monitor_interval=0.1)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "this process holds parts 0, 2, 4" in proc.stderr  # rank 0's parts: p mod 2 == 0
    assert _worst(_model(tmp_path / "one"), _model(out)) <= 1e-5
    assert [r["loss"] for r in _rows(out)] == pytest.approx([r["loss"] for r in _rows(tmp_path / "one")], rel=1e-5)
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["distributed"]["world_size"] == 2
    assert res["best_valid"] == pytest.approx(ref["best_valid"], abs=1e-9)  # per-part predictions gathered by id


# ----------------------------------------------------------------------------------- bad input
def test_interrupted_write_leaves_no_store(products, tmp_path, monkeypatch):
    from graphscale.sampling import store_writer
    calls = {"n": 0}
    real = store_writer._save

    def failing(folder, rel, array, files):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(folder, rel, array, files)

    monkeypatch.setattr(store_writer, "_save", failing)
    with pytest.raises(KeyboardInterrupt):
        write_store(products, str(tmp_path / "s"), 4, "contiguous", progress=False)
    assert os.listdir(tmp_path) == [], "neither the store nor its temporary folder is left"


def test_bad_partition_options(products, tmp_path):
    out = str(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"--parts 0: expected a number of parts >= 1"):
        write_store(products, out, 0, progress=False)
    with pytest.raises(ConfigError, match=r"--parts 601 is larger than the number of nodes \(600\)"):
        write_store(products, out, 601, progress=False)
    with pytest.raises(ConfigError, match=r"--method 'metiss' is not a partitioner \(did you mean 'metis'\?\)"):
        write_store(products, out, 2, method="metiss", progress=False)
    with pytest.raises(ConfigError, match=r"--halo 2: expected 0"):
        write_store(products, out, 2, halo=2, progress=False)
    write_store(products, out, 2, "contiguous", progress=False)
    with pytest.raises(ConfigError, match=r"exists and is not empty; pass --overwrite"):
        write_store(products, out, 3, "contiguous", progress=False)
    write_store(products, out, 3, "contiguous", overwrite=True, progress=False)
    assert read_meta(out)["num_parts"] == 3 and sorted(os.listdir(tmp_path)) == ["s"]


@pytest.fixture
def copy_store(store, tmp_path):
    import shutil
    out = str(tmp_path / "copy")
    shutil.copytree(store, out)
    return out


def _edit_meta(path, **changes):
    meta = json.load(open(os.path.join(path, META)))
    meta.update(changes)
    json.dump(meta, open(os.path.join(path, META), "w"))


def test_damaged_stores_are_named(copy_store, tmp_path):
    s = copy_store
    meta = read_meta(s)
    x0 = os.path.join(s, part_file(0, "x"))
    # a flipped byte (same size): only the checksum sees it
    raw = bytearray(open(x0, "rb").read())
    raw[-1] ^= 0xFF
    open(x0, "wb").write(bytes(raw))
    verify_files(s, meta, files_of(meta, [0]), checksum=False)
    with pytest.raises(StoreError, match=r"part-00000/x.npy: sha256 differs"):
        verify_files(s, meta, files_of(meta, [0]), checksum=True)
    # truncated
    open(x0, "wb").write(bytes(raw[:-7]))
    with pytest.raises(StoreError, match=r"part-00000/x.npy has \d+ bytes, expected \d+ \(truncated\)"):
        verify_files(s, meta, files_of(meta, [0]), checksum=False)
    # missing
    os.remove(os.path.join(s, part_file(1, "col")))
    with pytest.raises(StoreError, match=r"part-00001/col.npy is missing"):
        RankParts(s, meta, [1], checksum=False)
    # only the opened parts are checked: parts 2..5 are intact
    RankParts(s, meta, [2, 3], checksum=True)
    _edit_meta(s, version=99)
    with pytest.raises(StoreError, match=r"format version 99, but this graphscale reads version 1"):
        read_meta(s)
    _edit_meta(s, version=1, format="dgl")
    with pytest.raises(StoreError, match=r"format 'dgl'"):
        read_meta(s)
    _edit_meta(s, format="graphscale-partitioned-store", fingerprint="0" * 64)
    with pytest.raises(StoreError, match=r"fingerprint does not match"):
        read_meta(s)
    os.remove(os.path.join(s, META))
    with pytest.raises(StoreError, match=r"meta.json does not exist"):
        read_meta(s)
    with pytest.raises(StoreError, match=r"does not exist; expected the folder written by"):
        read_meta(str(tmp_path / "nowhere"))


def test_store_config_errors(store, root, tmp_path):
    from graphscale.train.api import check
    from graphscale.train.config import load_config

    def cfg(*extra):
        return load_config(None, [*TINY, f"data.root={root}", f"data.partitions={store}", *extra])

    check(cfg())  # the store's own config is fine
    with pytest.raises(StoreError, match=r"data.num_nodes=700 .* but the store .* was written from data.num_nodes=600"):
        check(cfg("data.num_nodes=700"))
    with pytest.raises(StoreError, match=r"sampler.num_parts=5 .* but the store .* has num_parts=6"):
        check(cfg("sampler.num_parts=5"))
    with pytest.raises(ConfigError, match=r"sampler.name=full .* needs the whole graph .* data.partitions="):
        check(cfg("sampler.name=full"))
    with pytest.raises(ConfigError, match=r"sampler.name=neighbor .* needs the whole graph"):
        check(cfg("sampler.name=neighbor"))
    with pytest.raises(ConfigError, match=r"sampler.eval_name=full .* needs the whole graph.* sampler.eval_name=parts"):
        check(cfg("sampler.eval_name=full"))
    with pytest.raises(ConfigError, match=r"sampler.imbalance=0.1 is set .* fixed when it was written \(with "
                                          r"imbalance=0.03\)"):
        check(cfg("sampler.imbalance=0.1"))
    check(cfg("sampler.imbalance=0.03", "sampler.vertex_weight=none"))  # what the store was written with
    with pytest.raises(ConfigError, match=r"sampler.cache_dir='x' is set"):
        check(cfg("sampler.cache_dir=x"))
    with pytest.raises(ConfigError, match=r"sampler.eval_name=parts .* data.partitions is not set"):
        check(load_config(None, ["sampler.eval_name=parts"]))
    with pytest.raises(ConfigError, match=r"data.store_verify is set .* does not use it"):
        check(load_config(None, ["data.store_verify=size"]))


def test_more_processes_than_parts_is_an_error():
    assert owned_parts(6, 1, 4) == [1, 5]
    with pytest.raises(StoreError, match=r"7 processes but the store has only 6 part\(s\)"):
        owned_parts(6, 0, 7)


def test_groups_beyond_parts_and_large_q_are_errors(store):
    rp = RankParts(store, read_meta(store), [0, 1, 2, 3, 4, 5], checksum=False)
    with pytest.raises(ConfigError, match=r"1 process\(es\) x train.grad_accum=7 = 7 groups of parts, but the "
                                          r"store has only 6"):
        StoreClusterSampler(rp, grad_accum=7)
    with pytest.raises(ConfigError, match=r"clusters_per_batch=4: expected an integer in \[1, 3\]"):
        StoreClusterSampler(rp, clusters_per_batch=4, grad_accum=2)


def test_errors_are_graphscale_errors():
    assert issubclass(StoreError, GraphscaleError)
