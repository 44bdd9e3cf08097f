import gzip
import hashlib
import os

import pytest
import torch

from graphscale.data import SyntheticSpec, load_dataset, write_synthetic
from graphscale.data.datasets import NodeDataset
from graphscale.errors import DataError

RAW_FILES = ["edge.csv.gz", "edge-feat.csv.gz", "node-label.csv.gz", "num-node-list.csv.gz",
             "num-edge-list.csv.gz", "node_species.csv.gz"]


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith(".csv.gz"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    h.update(f.encode() + fh.read())
    return h.hexdigest()


def test_proteins_layout_and_roundtrip_through_ogb(tmp_path):
    spec = SyntheticSpec(kind="proteins", num_nodes=400, avg_degree=8, num_communities=16, seed=3)
    path = write_synthetic(spec, str(tmp_path))
    for f in RAW_FILES:
        assert os.path.isfile(os.path.join(path, "raw", f)), f
    for f in ("train", "valid", "test"):
        assert os.path.isfile(os.path.join(path, "split", "species", f + ".csv.gz"))
    assert os.path.isfile(os.path.join(path, "RELEASE_v1.txt"))
    with gzip.open(os.path.join(path, "raw", "num-edge-list.csv.gz"), "rt") as fh:
        written_edges = int(fh.read().strip())

    d = load_dataset("synthetic-proteins", str(tmp_path), synthetic=spec)
    assert d.x.shape == (400, 8) and d.y.shape == (400, 112)
    # ogb adds the inverse of every written (undirected) edge, as for the real ogbn-proteins
    assert d.edge_index.shape == (2, 2 * written_edges)
    assert d.edge_attr.shape == (2 * written_edges, 8)
    assert set(d.y.unique().tolist()) <= {0.0, 1.0}
    assert d.task == "multilabel" and d.metric == "rocauc" and d.evaluator == "ogbn-proteins"
    split = torch.cat([d.split[k] for k in ("train", "valid", "test")])
    assert torch.equal(split.sort().values, torch.arange(400))
    # node features are the summed features of the incoming edges
    x = torch.zeros(400, 8).index_add_(0, d.edge_index[1], d.edge_attr)
    assert torch.allclose(d.x, x)


def test_arxiv_variant_roundtrip(tmp_path):
    spec = SyntheticSpec(kind="arxiv", num_nodes=300, avg_degree=6, num_communities=12, num_features=16,
                         num_classes=5, seed=1)
    d = load_dataset("synthetic-arxiv", str(tmp_path), synthetic=spec)
    assert d.x.shape == (300, 16) and d.y.shape == (300,) and d.y.dtype == torch.long
    assert d.num_outputs == 5 and d.metric == "acc"
    # symmetrised like the reference recipes do for ogbn-arxiv
    fwd = set(map(tuple, d.edge_index.t().tolist()))
    assert all((b, a) in fwd for a, b in fwd)
    assert os.path.isfile(os.path.join(tmp_path, spec.dir_name, "split", "time", "valid.csv.gz"))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_synthetic(SyntheticSpec(num_nodes=200, num_communities=8, seed=5), str(tmp_path / "a"))
    b = write_synthetic(SyntheticSpec(num_nodes=200, num_communities=8, seed=5), str(tmp_path / "b"))
    c = write_synthetic(SyntheticSpec(num_nodes=200, num_communities=8, seed=6), str(tmp_path / "c"))
    assert _digest(a) == _digest(b) != _digest(c)


def test_arxiv_difficulty_knobs_change_data_and_folder(tmp_path):
    base = dict(kind="arxiv", num_nodes=2000, avg_degree=8, num_communities=10, num_features=16, num_classes=5)
    easy = SyntheticSpec(**base)
    hard = SyntheticSpec(**base, feature_noise=6.0, p_intra=0.3)
    assert easy.dir_name.endswith("_k5")  # the defaults keep earlier folder names
    assert hard.dir_name == easy.dir_name + "_x6_p0.3"  # and other shapes never share a folder
    de = load_dataset("synthetic-arxiv", str(tmp_path), synthetic=easy)
    dh = load_dataset("synthetic-arxiv", str(tmp_path), synthetic=hard)

    def spread(d):  # within-class std of the features around their class means
        mu = torch.zeros(5, 16).index_add_(0, d.y, d.x) / torch.bincount(d.y, minlength=5)[:, None]
        return float((d.x - mu[d.y]).std())

    assert spread(dh) > 2.0 * spread(de)  # noise 6 vs 2 (label noise and centroids add to both)

    def same_class_edges(d):
        return float((d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean())

    assert same_class_edges(dh) < same_class_edges(de) - 0.3  # 30 % vs 80 % inside a community
    for bad in (dict(feature_noise=-1.0), dict(feature_noise=float("nan")), dict(p_intra=1.5)):
        with pytest.raises(DataError, match=next(iter(bad))):
            write_synthetic(SyntheticSpec(**{**base, **bad}), str(tmp_path))


def test_bad_specs_and_names(tmp_path):
    with pytest.raises(DataError, match="num_nodes"):
        write_synthetic(SyntheticSpec(num_nodes=3), str(tmp_path))
    with pytest.raises(DataError, match="num_communities"):
        write_synthetic(SyntheticSpec(num_nodes=100, num_communities=500), str(tmp_path))
    with pytest.raises(DataError, match="num_communities >= 8"):  # else the valid / test species are empty
        write_synthetic(SyntheticSpec(num_nodes=300, num_communities=6), str(tmp_path))
    with pytest.raises(DataError, match="did you mean 'ogbn-proteins'"):
        load_dataset("ogbn-protein", str(tmp_path))


def test_incomplete_folder_is_refused_before_ogb_prompts(tmp_path):
    os.makedirs(tmp_path / "ogbn_proteins" / "raw")
    with pytest.raises(DataError, match="incomplete"):
        load_dataset("ogbn-proteins", str(tmp_path))


def _tiny(**kw):
    base = dict(name="t", x=torch.zeros(4, 2), edge_index=torch.tensor([[0, 1], [1, 2]]), edge_attr=None,
                y=torch.zeros(4, dtype=torch.long), split={"train": torch.tensor([0]), "valid": torch.tensor([1]),
                                                          "test": torch.tensor([2])},
                task="multiclass", num_outputs=2, metric="acc")
    base.update(kw)
    return NodeDataset(**base)


def test_validate_rejects_bad_graphs():
    _tiny().validate()
    with pytest.raises(DataError, match=r"node ids in \[0, 7\], expected \[0, 3\]"):
        _tiny(edge_index=torch.tensor([[0, 7], [1, 2]])).validate()
    with pytest.raises(DataError, match=r"\[-1, 2\]"):
        _tiny(edge_index=torch.tensor([[0, -1], [1, 2]])).validate()
    x = torch.zeros(4, 2)
    x[2, 1] = float("nan")
    with pytest.raises(DataError, match="NaN/inf in 1 rows"):
        _tiny(x=x).validate()
    with pytest.raises(DataError, match="training split is empty"):
        _tiny(split={"train": torch.tensor([], dtype=torch.long), "valid": torch.tensor([1]),
                     "test": torch.tensor([2])}).validate()
