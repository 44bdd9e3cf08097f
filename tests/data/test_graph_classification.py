"""Graph-classification readers: GIN text format, TU format through PyG, folds, clear errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from graphscale.data.graph_classification import (Graph, load_graph_dataset, read_folds, write_gin_txt)
from graphscale.errors import DataError


def _toy(root, name="TOY", folds=True):
    graphs = [Graph(3, np.array([[0, 1], [1, 2]]), np.array([5, 7, 5])),
              Graph(1, np.zeros((2, 0), np.int64), np.array([9])),
              Graph(4, np.array([[0, 0, 0], [1, 2, 3]]), np.array([7, 7, 7, 7])),
              Graph(2, np.array([[0], [1]]), np.array([5, 9]))]
    labels = [1, -1, 1, -1]
    # 10 folds (the GIN layout): fold k tests graphs {k % 4, (k + 1) % 4}
    fl = [(np.setdiff1d(np.arange(4), [k % 4, (k + 1) % 4]), np.array(sorted({k % 4, (k + 1) % 4})))
          for k in range(10)] if folds else None
    path = os.path.join(root, name, f"{name}.txt")
    write_gin_txt(path, graphs, labels, fl)
    return path


def test_gin_roundtrip_maps_labels_and_tags(tmp_path):
    _toy(tmp_path)
    ds = load_graph_dataset("toy", str(tmp_path))             # case-insensitive
    assert ds.name == "TOY" and ds.fmt == "gin" and len(ds) == 4
    assert ds.labels.tolist() == [0, 1, 0, 1]                  # first-appearance order of 1, -1
    assert ds.num_tags == 3 and ds.graphs[0].tags.tolist() == [0, 1, 0]
    assert ds.graphs[2].edges.tolist() == [[0, 0, 0], [1, 2, 3]]
    assert ds.graphs[1].edges.shape == (2, 0)
    np.testing.assert_array_equal(ds.features(0), [[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    os.remove(tmp_path / "TOY" / "10fold_idx" / "train_idx-3.txt")
    with pytest.raises(DataError, match="fold file .*train_idx-3.txt.* is missing"):
        read_folds(str(tmp_path / "TOY"), 4)
    assert len(ds.folds) == 10 and ds.folds[1][1].tolist() == [1, 2] and ds.folds[1][0].tolist() == [0, 3]


def test_degree_as_tag(tmp_path):
    _toy(tmp_path)
    ds = load_graph_dataset("TOY", str(tmp_path), degree_as_tag=True)
    # degrees 1,2,1 | 0 | 3,1,1,1 | 1,1 -> first appearance 1, 2, 0, 3
    assert [g.tags.tolist() for g in ds.graphs] == [[0, 1, 0], [2], [3, 0, 0, 0], [0, 0]]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("4\n", "5\n", 1), "file ends early"),
    (lambda t: t.replace("1 -1\n9 0", "0 -1\n"), "graph 1 is empty"),
    (lambda t: t.replace("3 1\n5 1 1", "3 1\n5 1 8"), r"neighbour ids \[8\] outside \[0, 2\]"),
    (lambda t: t.replace("3 1\n5 1 1", "3 1\n5 3 1"), "declares degree 3 but lists 1"),
    (lambda t: t.replace("3 1\n", "3 x\n", 1), "expected integers"),
])
def test_malformed_gin_files(tmp_path, edit, message):
    path = _toy(tmp_path, folds=False)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))
    with pytest.raises(DataError, match=message):
        load_graph_dataset("TOY", str(tmp_path))


@pytest.mark.parametrize("train, test, message", [
    ("0 1 2", "3 9", r"indices \[9\] outside \[0, 3\]"),
    ("0 1 2", "2 3", "train and test share 1 graphs"),
    ("0 1", "3", "cover 3 of 4 graphs; missing e.g. \\[2\\]"),
])
def test_inconsistent_fold_files(tmp_path, train, test, message):
    _toy(tmp_path)
    fdir = tmp_path / "TOY" / "10fold_idx"
    for k in range(1, 11):
        (fdir / f"train_idx-{k}.txt").write_text("0 1\n" if k > 1 else train.replace(" ", "\n"))
        (fdir / f"test_idx-{k}.txt").write_text("2\n3\n" if k > 1 else test.replace(" ", "\n"))
    with pytest.raises(DataError, match=message):
        load_graph_dataset("TOY", str(tmp_path))


def test_unknown_name_lists_available(tmp_path):
    _toy(tmp_path)
    (tmp_path / "ONLYFOLDS" / "10fold_idx").mkdir(parents=True)
    with pytest.raises(DataError, match=r"unknown graph data set 'NOPE'.*available: TOY"):
        load_graph_dataset("NOPE", str(tmp_path))
    with pytest.raises(DataError, match="holds neither a GIN-format 'ONLYFOLDS.txt' nor a TU 'raw/'"):
        load_graph_dataset("ONLYFOLDS", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_graph_dataset("TOY", str(tmp_path / "missing"))


def test_tu_without_node_labels(tmp_path, monkeypatch):
    # A 2-graph TU set without node labels: refused unless the degree is the tag.
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path / "cache"))
    # 20 graphs: paths of 3 and 2 nodes alternately (TU ids are 1-based, edges listed both ways).
    raw = tmp_path / "tu" / "TINY" / "raw"
    raw.mkdir(parents=True)
    edges, ind, node = [], [], 1
    for gi in range(20):
        n = 3 if gi % 2 == 0 else 2
        for u in range(n - 1):
            edges += [f"{node + u}, {node + u + 1}", f"{node + u + 1}, {node + u}"]
        ind += [str(gi + 1)] * n
        node += n
    (raw / "TINY_A.txt").write_text("\n".join(edges) + "\n")
    (raw / "TINY_graph_indicator.txt").write_text("\n".join(ind) + "\n")
    (raw / "TINY_graph_labels.txt").write_text("\n".join(["1", "-1"] * 10) + "\n")
    os.chmod(tmp_path / "tu" / "TINY", 0o555)  # read-only like ../shared/data: read through the cache
    try:
        with pytest.raises(DataError, match="no node labels.*degree_as_tag=True"):
            load_graph_dataset("TINY", str(tmp_path / "tu"))
        ds = load_graph_dataset("TINY", str(tmp_path / "tu"), degree_as_tag=True)
    finally:
        os.chmod(tmp_path / "tu" / "TINY", 0o755)
    assert ds.fmt == "tu" and [g.num_nodes for g in ds.graphs] == [3, 2] * 10
    assert [g.tags.tolist() for g in ds.graphs[:2]] == [[0, 1, 0], [0, 0]]
    assert ds.labels.tolist() == [0, 1] * 10
    assert ds.meta["folds"].startswith("stratified") and len(ds.folds) == 10
    assert sorted(np.concatenate([te for _, te in ds.folds]).tolist()) == list(range(20))


def test_shared_mutag_gin_and_tu_agree(shared_data):
    gin = load_graph_dataset("MUTAG", str(shared_data / "GIN_format" / "dataset"))
    tu = load_graph_dataset("MUTAG", str(shared_data / "TU"))
    assert len(gin) == len(tu) == 188 and len(gin.folds) == 10
    key = lambda d: sorted((g.num_nodes, g.edges.shape[1]) for g in d.graphs)  # noqa: E731
    assert key(gin) == key(tu)
    imdb = load_graph_dataset("IMDB-B", str(shared_data / "GIN_format" / "dataset"))
    assert imdb.degree_as_tag and imdb.name == "IMDBBINARY" and len(imdb) == 1000
