"""``--like ogbn-*``: the published shapes, checked against ogb's master.csv, and written at small scale."""
from __future__ import annotations

import gzip
import io
import os

import numpy as np
import pandas as pd
import pytest
import torch

from graphscale.data import SyntheticSpec, load_dataset, write_synthetic
from graphscale.data.csv_gz import format_rows
from graphscale.data.published import PUBLISHED
from graphscale.data.synthetic_stream import check_density
from graphscale.errors import DataError


def _master():
    import ogb.nodeproppred
    path = os.path.join(os.path.dirname(ogb.nodeproppred.__file__), "master.csv")
    return pd.read_csv(path, index_col=0, keep_default_na=False)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_table_agrees_with_ogb_master_csv(name):
    m, s = _master()[name], PUBLISHED[name]
    assert int(m["num tasks"]) == s.num_tasks
    assert int(m["num classes"]) == s.num_classes
    assert m["task type"] == s.task_type
    assert m["split"] == s.split
    assert (m["add_inverse_edge"] == "True") == s.add_inverse_edge
    assert (m["has_node_attr"] == "True") == (s.node_features > 0)
    assert (m["has_edge_attr"] == "True") == (s.edge_features > 0)
    assert sum(s.split_sizes) == s.num_nodes  # master.csv has no counts: the split covers every node


def test_directed_edge_counts():
    assert PUBLISHED["ogbn-proteins"].directed_edges == 79_122_504
    assert PUBLISHED["ogbn-products"].directed_edges == 123_718_280
    assert PUBLISHED["ogbn-arxiv"].directed_edges == 1_166_243


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_spec_resolves_to_published_counts(name):
    pub = PUBLISHED[name]
    shape = SyntheticSpec(kind=pub.kind, like=name).stream_shape()
    assert (shape.num_nodes, shape.num_edges) == (pub.num_nodes, pub.num_edges)
    assert shape.split_sizes == pub.split_sizes
    assert (shape.node_features, shape.edge_features, shape.num_tasks, shape.num_classes) == \
           (pub.node_features, pub.edge_features, pub.num_tasks, pub.num_classes)
    check_density(shape)  # the published size can be drawn


def _count_rows(path):
    with gzip.open(path, "rb") as fh:
        return fh.read().count(b"\n")


@pytest.mark.parametrize("name,scale", [("ogbn-proteins", 0.01), ("ogbn-arxiv", 0.01), ("ogbn-products", 0.001)])
def test_scaled_like_writes_published_shapes(tmp_path, name, scale):
    pub = PUBLISHED[name]
    spec = SyntheticSpec(kind=pub.kind, like=name, scale=scale)
    path = write_synthetic(spec, str(tmp_path))
    n, e = round(pub.num_nodes * scale), round(pub.num_edges * scale)
    assert _count_rows(os.path.join(path, "raw", "edge.csv.gz")) == e
    d = load_dataset(f"synthetic-{pub.kind}", str(tmp_path), synthetic=spec)
    assert d.num_nodes == n
    assert d.num_edges == e * (2 if pub.add_inverse_edge or pub.kind == "arxiv" else 1)  # arxiv is symmetrised
    if pub.kind == "proteins":
        assert d.edge_attr.shape == (2 * e, pub.edge_features) and d.y.shape == (n, pub.num_tasks)
    else:
        assert d.x.shape == (n, pub.node_features) and d.num_outputs == pub.num_classes
    sizes = [d.split[k].numel() for k in ("train", "valid", "test")]
    assert sizes[0] == round(n * pub.split_sizes[0] / pub.num_nodes)
    assert sizes[1] == round(n * pub.split_sizes[1] / pub.num_nodes)
    assert sum(sizes) == n
    # no duplicate undirected pair and no self-loop
    ei = d.edge_index
    assert bool((ei[0] != ei[1]).all())
    key = torch.minimum(ei[0], ei[1]) * n + torch.maximum(ei[0], ei[1])
    assert key.unique().numel() == e


def test_products_split_follows_degree(tmp_path):
    spec = SyntheticSpec(kind="products", like="ogbn-products", scale=0.001)
    d = load_dataset("synthetic-products", write_synthetic(spec, str(tmp_path)) and str(tmp_path), synthetic=spec)
    deg = torch.bincount(d.edge_index[0], minlength=d.num_nodes).float()
    assert deg[d.split["train"]].min() >= deg[d.split["test"]].max()  # "sales rank": best connected train


def test_stream_same_seed_same_bytes(tmp_path):
    spec = SyntheticSpec(kind="proteins", like="ogbn-proteins", num_nodes=500, num_edges=6000)
    a = write_synthetic(spec, str(tmp_path / "a"))
    b = write_synthetic(spec, str(tmp_path / "b"))
    c = write_synthetic(SyntheticSpec(kind="proteins", like="ogbn-proteins", num_nodes=500, num_edges=6000, seed=1),
                        str(tmp_path / "c"))
    for f in ("edge.csv.gz", "edge-feat.csv.gz", "node-label.csv.gz"):
        with open(os.path.join(a, "raw", f), "rb") as x, open(os.path.join(b, "raw", f), "rb") as y:
            assert x.read() == y.read()
    with open(os.path.join(a, "raw", "edge.csv.gz"), "rb") as x, open(os.path.join(c, "raw", "edge.csv.gz"), "rb") as y:
        assert x.read() != y.read()


def test_bad_like_specs():
    with pytest.raises(DataError, match="needs kind='arxiv'"):
        SyntheticSpec(kind="proteins", like="ogbn-arxiv").validate()
    with pytest.raises(DataError, match="num_features=64 differs from the published 100 of ogbn-products"):
        SyntheticSpec(kind="products", like="ogbn-products", num_features=64).validate()
    with pytest.raises(DataError, match="scale must be in"):
        SyntheticSpec(kind="arxiv", like="ogbn-arxiv", scale=2.0).validate()
    with pytest.raises(DataError, match="do not fit"):
        check_density(SyntheticSpec(kind="proteins", like="ogbn-proteins", scale=0.001).stream_shape())


def test_format_rows_matches_savetxt():
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 10 ** 9, (500, 3))
    ints[0] = [0, 9, 10_000]
    buf = io.BytesIO()
    np.savetxt(buf, ints, fmt="%d", delimiter=",")
    assert format_rows(ints) == buf.getvalue()
    floats = rng.standard_normal((500, 4)) * 50
    text = format_rows(floats, 3).decode()
    back = np.loadtxt(io.StringIO(text), delimiter=",")
    np.testing.assert_allclose(back, floats, atol=5e-4 + 1e-12)
    assert all(len(v.split(".")[1]) == 3 for v in text.split()[0].split(","))


def _cli(capsys, *args):
    """Run the CLI in this process (its error path is the same ``main``: message, exit status 2)."""
    from graphscale.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_like_scaled_and_info_non_default_size(tmp_path, capsys):
    root = str(tmp_path)
    code, out, err = _cli(capsys, "data", "synth", "--like", "ogbn-arxiv", "--scale", "0.01", "--root", root,
                          "--no-progress")
    assert code == 0, err
    assert "1,693 nodes, 11,662 edges" in out
    code, out, err = _cli(capsys, "data", "info", "synthetic-arxiv", "--root", root, "--like", "ogbn-arxiv",
                          "--scale", "0.01")
    assert code == 0 and "1693 nodes, 23324 directed edges, x [1693, 128]" in out, err
    small = ("--num-nodes", "333", "--num-communities", "8", "--avg-degree", "4")
    code, out, err = _cli(capsys, "data", "synth", "--kind", "proteins", *small, "--root", root)
    assert code == 0, err
    code, out, err = _cli(capsys, "data", "info", "synthetic-proteins", "--root", root, *small)
    assert code == 0 and "333 nodes" in out, err
    folder = os.path.join(root, SyntheticSpec(num_nodes=333, num_communities=8, avg_degree=4).dir_name)
    code, out, err = _cli(capsys, "data", "info", folder)
    assert code == 0 and "333 nodes" in out, err
    code, out, err = _cli(capsys, "data", "info", "synthetic-proteins", "--root", root, "--num-nodes", "444")
    assert code == 2 and "no synthetic data set at" in err
    code, out, err = _cli(capsys, "data", "synth", "--like", "ogbn-arxiv", "--kind", "proteins", "--root", root)
    assert code == 2 and "--like ogbn-arxiv writes kind arxiv, but --kind is proteins" in err


def test_every_data_option_has_plain_help():
    import argparse

    from graphscale.cli import build_parser

    data = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["data"]
    sub = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("synth", "info"):
        p = sub.choices[cmd]
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"data {cmd} {action.option_strings or action.dest} has no help"
        text = p.format_help()
        assert "``" not in text and ":class:" not in text
    assert "132,534 nodes, 39,561,252 edges" in sub.choices["synth"].format_help().replace("\n", " ")
