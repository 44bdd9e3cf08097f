"""Cluster-GCN batches built from hand-made assignments (no METIS needed), normalisation by hand,
the trainer-facing builder, and the GCN model's edge_weight path."""
from __future__ import annotations

import pytest
import torch

from graphscale.errors import ConfigError, DataError
from graphscale.sampling.cluster import (ClusterGCNSampler, build_cluster_sampler, diag_normalize)
from graphscale.sampling.subgraph import Subgraph, full_graph


def undirected(pairs):
    ei = torch.tensor(pairs).T
    return torch.cat([ei, ei.flip(0)], dim=1)


# 8 nodes, clusters {0,1,2} {3,4} {5,6,7}; a self-loop on 6.
EDGES = [(0, 1), (1, 2), (0, 2), (3, 4), (5, 6), (6, 7), (2, 3), (4, 5), (0, 7)]
EI = torch.cat([undirected(EDGES), torch.tensor([[6], [6]])], dim=1)
PART = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])


def global_edges(sub: Subgraph) -> set:
    g = sub.node_ids[sub.edge_index]
    return set(zip(g[0].tolist(), g[1].tolist()))


def test_batch_keeps_edges_between_chosen_clusters_only():
    s = ClusterGCNSampler(EI, 8, PART, 3, clusters_per_batch=2)
    sub = s.batch(torch.tensor([0, 2]))
    assert sorted(sub.node_ids.tolist()) == [0, 1, 2, 5, 6, 7]
    want = {(a, b) for a, b in zip(EI[0].tolist(), EI[1].tolist()) if PART[a] in (0, 2) and PART[b] in (0, 2)}
    assert global_edges(sub) == want  # 0-7 (between clusters 0 and 2) kept, 2-3 and 4-5 dropped
    assert (0, 7) in want and (7, 0) in want
    # edge_ids point at the same columns of the global edge_index
    assert torch.equal(sub.node_ids[sub.edge_index], EI[:, sub.edge_ids])
    assert sub.edge_weight is None


def test_single_cluster_batches_hold_within_cluster_edges():
    s = ClusterGCNSampler(EI, 8, PART, 3, clusters_per_batch=1)
    assert s.edge_perm.numel() == 2 * 6 + 1  # only within-cluster edges are stored
    subs = list(s.epoch(0))
    assert len(subs) == 3 and len(s) == 3
    assert sorted(torch.cat([b.node_ids for b in subs]).tolist()) == list(range(8))
    for sub in subs:
        c = int(PART[sub.node_ids[0]])
        assert bool((PART[sub.node_ids] == c).all())
        want = {(a, b) for a, b in zip(EI[0].tolist(), EI[1].tolist()) if PART[a] == c and PART[b] == c}
        assert global_edges(sub) == want


def test_epoch_is_a_pure_function_of_seed_and_epoch():
    s = ClusterGCNSampler(EI, 8, PART, 3, clusters_per_batch=2, seed=5)
    a = [b.node_ids.tolist() for b in s.epoch(3)]
    b = [b.node_ids.tolist() for b in ClusterGCNSampler(EI, 8, PART, 3, 2, seed=5).epoch(3)]
    assert a == b and len(a) == 2  # ceil(3 / 2)
    orders = {tuple(tuple(x) for x in (b.node_ids.tolist() for b in s.epoch(e))) for e in range(10)}
    assert len(orders) > 1  # cluster order changes across epochs
    covered = sorted(sum((x.node_ids.tolist() for x in s.epoch(7)), []))
    assert covered == list(range(8))  # every node once per epoch


def test_diag_enhancement_by_hand():
    # path 0-1-2 plus a self-loop on 1, one cluster: A' degrees (in): d0=1, d1=2, d2=1
    ei = torch.cat([undirected([(0, 1), (1, 2)]), torch.tensor([[1], [1]])], dim=1)
    lam = 0.5
    s = ClusterGCNSampler(ei, 3, torch.zeros(3, dtype=torch.long), 1, 1, diag_lambda=lam)
    (sub,) = list(s.epoch(0))
    assert sub.edge_index.size(1) == 4  # the graph's own self-loop is dropped (A + I adds one)
    assert sub.edge_weight.numel() == 4 + 3
    w = {(int(j), int(i)): float(x) for (j, i), x in zip(sub.edge_index.T, sub.edge_weight[:4])}
    # row-normalised (A + I): edge j -> i weighs 1 / (d_i + 1)
    assert w == pytest.approx({(0, 1): 1 / 3, (1, 0): 1 / 2, (1, 2): 1 / 2, (2, 1): 1 / 3})
    assert sub.edge_weight[4:].tolist() == pytest.approx([1.5 / 2, 1.5 / 3, 1.5 / 2])
    # dense check: rows of (D + I)^-1 (A + I) sum to 1; diag enhancement adds lam * diag
    ei2, w2 = sub.propagation()
    dense = torch.zeros(3, 3).index_put_((ei2[1], ei2[0]), w2, accumulate=True)
    a = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float) + torch.eye(3)
    a_tilde = a / a.sum(1, keepdim=True)
    assert torch.allclose(dense, a_tilde + lam * torch.diag(torch.diag(a_tilde)))


def test_normalisation_uses_batch_degrees():
    s = ClusterGCNSampler(EI, 8, PART, 3, clusters_per_batch=2, diag_lambda=0.0)
    sub = s.batch(torch.tensor([0, 2]))
    ei, w = sub.propagation()
    row_sum = torch.zeros(sub.num_nodes).index_add_(0, ei[1], w)
    assert torch.allclose(row_sum, torch.ones(sub.num_nodes))  # lambda=0: rows of (D'+I)^-1(A'+I)


def test_transform_matches_training_normalisation():
    full_part = torch.zeros(8, dtype=torch.long)
    s = ClusterGCNSampler(EI, 8, full_part, 1, 1, diag_lambda=1.0)
    (batch,) = list(s.epoch(0))
    ev = s.transform(full_graph(EI, 8))
    # the same graph through both paths: same weighted adjacency
    def dense(sub):
        ei, w = sub.propagation()
        g = sub.node_ids[ei]
        return torch.zeros(8, 8).index_put_((g[1], g[0]), w, accumulate=True)
    assert torch.allclose(dense(batch), dense(ev))
    assert ClusterGCNSampler(EI, 8, PART, 3).transform(batch) is batch  # identity without lambda
    assert diag_normalize(full_graph(EI, 8), 0.0).edge_index.size(1) == EI.size(1) - 1


def test_memory_is_index_arrays_only():
    n, e = 1000, 8000
    ei = torch.randint(0, n, (2, e), generator=torch.Generator().manual_seed(0))
    part = torch.arange(n) % 10
    s = ClusterGCNSampler(ei, n, part, 10, clusters_per_batch=2)
    assert s.edge_index is ei  # referenced, not copied
    assert s.index_bytes() == 8 * (3 * n + e + 2 * 11)  # part, node_perm, rank, edge_perm, 2 ptrs (24N + 8E)
    assert s.index_bytes() < ei.numel() * ei.element_size()


@pytest.mark.parametrize("kwargs, err, match", [
    ({"part": torch.zeros(7, dtype=torch.long)}, DataError, r"shape \[8\]"),
    ({"part": torch.full((8,), 3)}, DataError, r"ids in \[0, 3\)"),
    ({"part": torch.zeros(8)}, DataError, "integer"),
    ({"clusters_per_batch": 0}, ConfigError, "clusters_per_batch"),
    ({"clusters_per_batch": 4}, ConfigError, "clusters_per_batch"),
    ({"diag_lambda": -1.0}, ConfigError, "diag_lambda"),
    ({"diag_lambda": float("nan")}, ConfigError, "diag_lambda"),
])
def test_bad_sampler_input(kwargs, err, match):
    args = {"part": PART, "num_parts": 3, "clusters_per_batch": 1}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ClusterGCNSampler(EI, 8, **args)


def test_builder_partitions_once_and_caches(tmp_path):
    pytest.importorskip("pymetis")
    s = build_cluster_sampler(EI, 8, num_parts=3, clusters_per_batch=2, partitioner="metis",
                              diag_lambda=1.0, seed=0, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1 and len(s) == 2
    assert bool((torch.bincount(s.part, minlength=3) > 0).all())
    with pytest.raises(ConfigError, match="needs partitioner='metis'"):
        build_cluster_sampler(EI, 8, 3, partitioner="random", vertex_weight="degree")
    with pytest.raises(ConfigError, match="num_parts"):
        build_cluster_sampler(EI, 8, 9)
    train = torch.zeros(8, dtype=torch.bool)
    train[:3] = True
    s = build_cluster_sampler(EI, 8, 2, vertex_weight="train", train_mask=train)
    assert s.num_parts == 2


def test_registry_builds_cluster_sampler_from_config(tmp_path):
    pytest.importorskip("pymetis")
    from graphscale.train.build import build_sampler
    from graphscale.train.config import load_config
    cfg = load_config(None, ["sampler.name=cluster", "sampler.num_parts=3", "sampler.clusters_per_batch=2",
                             "sampler.diag_lambda=1", f"sampler.cache_dir={tmp_path}", "sampler.eval_name=metis"])
    s = build_sampler(cfg.sampler, EI, 8, seed=0, cache_dir=None)
    assert isinstance(s, ClusterGCNSampler) and s.diag_lambda == 1.0 and len(s) == 2
    assert len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ConfigError, match="partitioner"):
        load_config(None, ["sampler.partitioner=mettis"])


def test_gcn_takes_edge_weight():
    from graphscale.nn.models import GCN
    torch.manual_seed(0)
    model = GCN(4, 8, 3, num_layers=2, dropout=0.0)
    x = torch.randn(8, 4)
    s = ClusterGCNSampler(EI, 8, torch.zeros(8, dtype=torch.long), 1, 1, diag_lambda=0.0)
    (sub,) = list(s.epoch(0))
    out = model(x[sub.node_ids], sub.edge_index, None, edge_weight=sub.edge_weight)
    # reference: dense propagation with the same weights
    ei, w = sub.propagation()
    prop = torch.zeros(8, 8).index_put_((ei[1], ei[0]), w, accumulate=True)
    h = x[sub.node_ids]
    for i, conv in enumerate(model.convs):
        h = prop @ conv.lin(h) + conv.bias
        h = h.relu() if i == 0 else h
    assert torch.allclose(out, h, atol=1e-5)
    out.sum().backward()  # gradients flow
    with pytest.raises(ValueError, match="edges \\+ nodes"):
        model(x, EI, None, edge_weight=torch.ones(EI.size(1)))
    # without weights: PyG GCNConv's own normalisation
    from torch_geometric.nn import GCNConv
    ref = x
    for i, conv in enumerate(model.convs):
        c = GCNConv(conv.in_channels, conv.out_channels)
        c.load_state_dict(conv.state_dict())
        ref = c(ref, EI)
        ref = ref.relu() if i == 0 else ref
    assert torch.allclose(model(x, EI), ref, atol=1e-5)
