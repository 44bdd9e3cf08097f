"""Neighbour sampling (graphscale.sampling.neighbor), the SAGE model and layer-wise inference."""
from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch
from scipy.stats import chi2

from graphscale.errors import ConfigError, DataError
from graphscale.nn.models import SAGE, GCN
from graphscale.ops import CSR
from graphscale.sampling.neighbor import NeighborSampler, sample_neighbors, sample_neighbors_loop
from graphscale.sampling.propagation import model_inference

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")

P_MIN = 1e-3  # chi-square tests reject uniformity below this p-value (fixed seeds: deterministic)


def random_graph(n: int, e: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([ei, ei[:, :20]], 1)  # a few duplicated edges (multi-edges) and self-loops


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_batch(batch, ei: torch.Tensor, n: int, seeds: torch.Tensor, fanouts, weight=None):
    """Every structural promise of a sampled batch, checked against the true graph."""
    nid, sub, eid = batch.node_ids, batch.edge_index, batch.edge_ids
    assert batch.batch_size == seeds.numel() and torch.equal(nid[:seeds.numel()], seeds)
    assert torch.unique(nid).numel() == nid.numel()  # every node once
    assert sum(batch.num_sampled_nodes) == nid.numel() and len(batch.num_sampled_nodes) == len(fanouts) + 1
    assert sum(batch.num_sampled_edges) == sub.size(1) == eid.numel()
    # each sampled edge is the true edge e_id, relabelled: a subset of the true neighbourhood
    assert torch.equal(nid[sub[0]], ei[0, eid]) and torch.equal(nid[sub[1]], ei[1, eid])
    assert torch.unique(eid).numel() == eid.numel()  # without replacement
    in_deg = torch.bincount(ei[1], minlength=n)
    pos_deg = None if weight is None else torch.bincount(ei[1], weights=(weight > 0).double(), minlength=n).long()
    node_end = torch.tensor(batch.num_sampled_nodes).cumsum(0).tolist()
    e0 = 0
    for h, k in enumerate(fanouts):
        lo, hi = (0 if h == 0 else node_end[h - 1]), node_end[h]
        e1 = e0 + batch.num_sampled_edges[h]
        dst = sub[1, e0:e1]
        assert bool(((dst >= lo) & (dst < hi)).all())  # hop h's edges end at nodes first reached at hop h-1
        got = torch.bincount(dst - lo, minlength=hi - lo)
        avail = (in_deg if pos_deg is None else pos_deg)[nid[lo:hi]]
        want = avail if k == -1 else torch.clamp(avail, max=k)
        assert torch.equal(got, want), f"hop {h + 1}: wrong number of sampled neighbours"
        e0 = e1


@pytest.mark.parametrize("fanouts", [[4, 3], [1, 5, 2], [-1, 2], [30]])
def test_sampled_neighbourhoods_are_true_subsets_of_the_right_size(fanouts):
    n = 97
    ei = random_graph(n, 700)
    seeds = torch.tensor([3, 90, 41, 0, 7, 55, 12])
    batch = sample_neighbors(ei, seeds, fanouts, gen(1), num_nodes=n)
    check_batch(batch, ei, n, seeds, fanouts)


def test_weighted_sampling_skips_zero_weights_and_keeps_sizes():
    n = 60
    ei = random_graph(n, 600, seed=3)
    w = torch.rand(ei.size(1), generator=gen(4))
    w[::3] = 0.0
    seeds = torch.arange(0, 60, 4)
    batch = sample_neighbors(ei, seeds, [3, 2], gen(5), edge_weight=w, num_nodes=n)
    check_batch(batch, ei, n, seeds, [3, 2], weight=w)
    assert bool((w[batch.edge_ids] > 0).all())


def test_all_neighbours_equal_the_python_loop_sampler():
    n = 80
    ei = random_graph(n, 500, seed=2)
    csr = CSR.from_edge_index(ei, n)
    seeds = torch.tensor([5, 1, 70, 33])
    a = sample_neighbors(csr, seeds, [-1, -1, -1])
    b = sample_neighbors_loop(csr, seeds.tolist(), [-1, -1, -1], random.Random(0))
    for f in ("node_ids", "edge_index", "edge_ids"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.num_sampled_nodes == b.num_sampled_nodes and a.num_sampled_edges == b.num_sampled_edges


@pytest.mark.parametrize("norm,residual", [("none", False), ("batch", True), ("layer", False)])
def test_fanout_all_equals_full_graph_for_the_seeds(norm, residual):
    torch.manual_seed(0)
    n = 150
    ei, x = random_graph(n, 900, seed=7), torch.randn(n, 12)
    model = SAGE(12, 16, 5, num_layers=3, dropout=0.5, norm=norm, residual=residual).eval()
    with torch.no_grad():
        model.norms[0].weight.uniform_(0.5, 1.5) if norm != "none" else None
        full = model(x, ei)
        seeds = torch.tensor([9, 140, 2, 77, 31])
        batch = sample_neighbors(ei, seeds, [-1, -1, -1], gen(0), num_nodes=n)
        out = model(x[batch.node_ids], batch.edge_index)[:5]
        trimmed = model(x[batch.node_ids], batch.edge_index, num_sampled_nodes=batch.num_sampled_nodes,
                        num_sampled_edges=batch.num_sampled_edges)[:5]
    torch.testing.assert_close(out, full[seeds], rtol=1e-5, atol=1e-5)  # float32 sums in another order
    torch.testing.assert_close(trimmed, full[seeds], rtol=1e-5, atol=1e-5)


def test_sampled_fanout_differs_from_full_graph():
    """The equality above is not vacuous: with a small fanout the seed outputs change."""
    torch.manual_seed(0)
    n = 150
    ei, x = random_graph(n, 900, seed=7), torch.randn(n, 12)
    model = SAGE(12, 16, 5, num_layers=2).eval()
    seeds = torch.tensor([9, 140, 2, 77, 31])
    batch = sample_neighbors(ei, seeds, [2, 2], gen(0), num_nodes=n)
    with torch.no_grad():
        diff = (model(x[batch.node_ids], batch.edge_index)[:5] - model(x, ei)[seeds]).abs().max()
    assert diff > 1e-3


def test_trimmed_forward_equals_untrimmed_on_seeds_with_gradients():
    torch.manual_seed(1)
    n = 120
    ei, x = random_graph(n, 800, seed=9), torch.randn(n, 8)
    model = SAGE(8, 16, 3, num_layers=3, dropout=0.0, residual=True)
    batch = sample_neighbors(ei, torch.tensor([4, 8, 15, 16, 23, 42]), [3, 2, 2], gen(2), num_nodes=n)
    xs = x[batch.node_ids]
    a = model(xs, batch.edge_index)[:6]
    ga = torch.autograd.grad(a.square().sum(), list(model.parameters()))
    b = model(xs, batch.edge_index, num_sampled_nodes=batch.num_sampled_nodes,
              num_sampled_edges=batch.num_sampled_edges)[:6]
    gb = torch.autograd.grad(b.square().sum(), list(model.parameters()))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


def _stars(num_stars: int, leaves: int):
    """``num_stars`` disjoint stars: centre ``i`` receives an edge from each of its ``leaves`` leaves."""
    centres = torch.arange(num_stars).repeat_interleave(leaves)
    leaf_ids = num_stars + torch.arange(num_stars * leaves)
    return torch.stack([leaf_ids, centres]), num_stars * (leaves + 1)


def test_uniform_sampling_chi_square_over_subsets():
    """Every 3-subset of a centre's 10 in-neighbours is equally likely (120 cells, 60 draws each)."""
    stars, d, k = 7200, 10, 3
    ei, n = _stars(stars, d)
    batch = sample_neighbors(ei, torch.arange(stars), [k], gen(12345), num_nodes=n)
    leaf = batch.node_ids[batch.edge_index[0]] - stars
    which = (leaf % d).view(stars, k).sort(1).values  # per centre: the chosen leaf offsets (edges grouped by centre)
    assert torch.equal(batch.edge_index[1].view(stars, k), torch.arange(stars).unsqueeze(1).expand(stars, k))
    cells = {c: i for i, c in enumerate(itertools.combinations(range(d), k))}
    counts = torch.bincount(torch.tensor([cells[tuple(r)] for r in which.tolist()]), minlength=len(cells)).double()
    expected = stars / len(cells)
    stat = float(((counts - expected) ** 2 / expected).sum())
    p = chi2.sf(stat, len(cells) - 1)
    assert p > P_MIN, f"chi-square {stat:.1f} on {len(cells) - 1} dof, p = {p:.2e}"


def test_chi_square_rejects_a_biased_sampler():
    """The statistic of the test above has power: the first k neighbours every time is rejected."""
    stars, d, k = 7200, 10, 3
    counts = torch.zeros(120, dtype=torch.float64)
    counts[0] = stars  # always subset (0, 1, 2)
    expected = stars / 120
    assert chi2.sf(float(((counts - expected) ** 2 / expected).sum()), 119) < P_MIN


def test_weighted_first_draw_is_proportional_to_weight():
    stars, d = 5000, 5
    ei, n = _stars(stars, d)
    w = torch.arange(1, d + 1, dtype=torch.float32).repeat(stars)  # leaf j has weight j + 1
    batch = sample_neighbors(ei, torch.arange(stars), [1], gen(7), edge_weight=w, num_nodes=n)
    leaf = (batch.node_ids[batch.edge_index[0]] - stars) % d
    counts = torch.bincount(leaf, minlength=d).double()
    expected = stars * torch.arange(1, d + 1, dtype=torch.float64) / (d * (d + 1) / 2)
    p = chi2.sf(float(((counts - expected) ** 2 / expected).sum()), d - 1)
    assert p > P_MIN, f"weighted sampling: p = {p:.2e}, counts {counts.tolist()}"


def _batches(sampler: NeighborSampler, epoch: int):
    return [(b.node_ids, b.edge_index, b.edge_ids) for b in sampler.epoch(epoch)]


def test_determinism_per_seed_and_epoch():
    n = 300
    ei = random_graph(n, 2000, seed=5)
    mk = lambda seed, **kw: NeighborSampler(ei, [5, 3], 64, num_nodes=n, seed=seed, **kw)
    a, b = _batches(mk(3), 1), _batches(mk(3), 1)
    assert len(a) == len(b) == 5
    for u, v in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(u, v))
    c = _batches(mk(4), 1)
    assert not torch.equal(a[0][0], c[0][0])
    d = _batches(mk(3), 2)
    assert not torch.equal(a[0][0], d[0][0])
    # the same batches with a prefetch thread and with worker processes
    for kw in ({"prefetch": 2}, {"num_workers": 2, "prefetch": 1}):
        e = _batches(mk(3, **kw), 1)
        assert len(e) == len(a)
        for u, v in zip(a, e):
            assert all(torch.equal(s, t) for s, t in zip(u, v)), kw


def test_epoch_covers_input_nodes_once_and_ranks_split_them():
    n = 250
    ei = random_graph(n, 1500, seed=6)
    train = torch.zeros(n, dtype=torch.bool)
    train[torch.randperm(n, generator=gen(0))[:101]] = True
    one = NeighborSampler(ei, [2], 16, input_nodes=train, num_nodes=n, seed=1)
    seeds = torch.cat([b.seed_ids for b in one.epoch(0)])
    assert len(one) == 7 and torch.equal(seeds.sort().values, train.nonzero().view(-1))
    ranks = [NeighborSampler(ei, [2], 16, input_nodes=train, num_nodes=n, seed=1, rank=r, world_size=3)
             for r in range(3)]
    assert [len(s) for s in ranks] == [3, 2, 2]
    per_rank = [torch.cat([b.seed_ids for b in s.epoch(0)]) for s in ranks]
    assert torch.equal(torch.cat(per_rank).sort().values, seeds.sort().values)


def test_layerwise_inference_equals_full_forward():
    torch.manual_seed(3)
    n = 211
    ei, x = random_graph(n, 1300, seed=8), torch.randn(n, 9)
    model = SAGE(9, 16, 4, num_layers=3, norm="batch", residual=True)
    model.eval()
    with torch.no_grad():
        full = model(x, ei)
    model.train()
    out = model_inference(model, x, CSR.from_edge_index(ei, n), batch_size=50)  # 211 = 4 * 50 + 11
    assert model.training  # restored
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.eval().inference(x, ei, batch_size=64), full, rtol=1e-5, atol=1e-5)


def test_model_inference_needs_layerwise_model():
    n = 20
    ei, x = random_graph(n, 60), torch.randn(n, 4)
    with pytest.raises(ConfigError, match="inference_layers"):
        model_inference(GCN(4, 8, 2), x, ei)


@pytest.mark.parametrize("kwargs,match", [
    ({"fanouts": []}, "fanouts is empty"),
    ({"fanouts": [5, 0]}, "got 0"),
    ({"fanouts": [-2]}, "got -2"),
    ({"fanouts": [2.5]}, "got 2.5"),
    ({"fanouts": "15,10"}, "'15,10'"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1.*got 0"),
    ({"input_nodes": torch.tensor([1, 40])}, "node id 40.*\\[0, 40\\)"),
    ({"input_nodes": torch.tensor([-1, 3])}, "node id -1"),
    ({"input_nodes": torch.tensor([1, 1])}, "repeated"),
    ({"prefetch": -1}, "prefetch"),
])
def test_bad_input_is_a_config_error_naming_the_value(kwargs, match):
    n = 40
    ei = random_graph(n, 100)
    args = {"fanouts": [3, 2], "batch_size": 8, **kwargs}
    with pytest.raises(ConfigError, match=match):
        NeighborSampler(ei, num_nodes=n, **args)


def test_bad_seeds_in_a_direct_call():
    n = 40
    ei = random_graph(n, 100)
    with pytest.raises(ConfigError, match="node id 99"):
        sample_neighbors(ei, torch.tensor([0, 99]), [2], num_nodes=n)
    with pytest.raises(ConfigError, match="distinct"):
        sample_neighbors(ei, torch.tensor([3, 3]), [2], num_nodes=n)
    with pytest.raises(DataError, match=">= 0"):
        sample_neighbors(ei, torch.tensor([3]), [2], num_nodes=n, edge_weight=-torch.ones(ei.size(1)))
    # the relabelling buffer is clean after a failed call: the next batch is still right
    s = NeighborSampler(ei, [2], 4, num_nodes=n)
    with pytest.raises(ConfigError):
        s.sample(torch.tensor([5, 5]))
    check_batch(s.sample(torch.tensor([5, 6]), gen(0)), ei, n, torch.tensor([5, 6]), [2])
