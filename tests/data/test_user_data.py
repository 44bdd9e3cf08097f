"""graphscale.data.user_data: a user's Data from a file, a dataset class or Python, and its checks."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch_geometric.data import Data, HeteroData

from graphscale.data.user_data import (check_user_source, load_dataset_class, load_pyg_file, load_user_dataset,
                                       node_dataset_from_data)
from graphscale.errors import ConfigError, DataError

N = 10


def _data(**over) -> Data:
    g = torch.Generator().manual_seed(0)
    fields = dict(x=torch.randn(N, 4, generator=g), edge_index=torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]),
                  y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]),
                  train_mask=torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool),
                  val_mask=torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool),
                  test_mask=torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool))
    fields.update(over)
    return Data(**{k: v for k, v in fields.items() if v is not None})


def test_single_label_masks():
    ds = node_dataset_from_data(_data(), name="mine")
    assert ds.task == "multiclass" and ds.metric == "acc" and ds.num_outputs == 3 and ds.evaluator is None
    assert ds.y.dtype == torch.long and ds.y.shape == (N,)
    assert ds.split["train"].tolist() == [0, 1, 2, 3] and ds.split["valid"].tolist() == [4, 5, 6]
    assert ds.split["test"].tolist() == [7, 8, 9]
    assert ds.edge_attr is None and ds.x.dtype == torch.float32


def test_y_column_and_whole_floats_are_class_ids():
    ds = node_dataset_from_data(_data(y=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0.0]).view(-1, 1)))
    assert ds.task == "multiclass" and ds.y.dtype == torch.long and ds.y.shape == (N,) and ds.num_outputs == 3


def test_multilabel_is_rocauc_and_split_dict():
    y = torch.tensor([[0, 1, 1]] * 5 + [[1, 0, 0]] * 5)
    split = {"train": torch.arange(0, 4), "valid": torch.arange(4, 7), "test": torch.arange(7, 10)}
    ds = node_dataset_from_data(_data(y=y, train_mask=None, val_mask=None, test_mask=None, split=split,
                                      edge_attr=torch.rand(6, 2, dtype=torch.float64)))
    assert ds.task == "multilabel" and ds.metric == "rocauc" and ds.num_outputs == 3
    assert ds.y.dtype == torch.float32 and torch.equal(ds.y, y.float())
    assert ds.edge_attr.dtype == torch.float32 and ds.edge_attr.shape == (6, 2)
    assert torch.equal(ds.split["valid"], split["valid"])


def test_negative_labels_outside_the_splits_are_unlabelled():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, -1])
    ds = node_dataset_from_data(_data(y=y, test_mask=torch.tensor([0] * 7 + [1, 1, 0], dtype=torch.bool)))
    assert ds.num_outputs == 3


@pytest.mark.parametrize("over,match", [
    (dict(x=None), "has no 'x'"),
    (dict(edge_index=None), "has no 'edge_index'"),
    (dict(y=None), "has no 'y'"),
    (dict(x=torch.ones(N, 4, dtype=torch.long)), "x has shape \\[10, 4\\] and dtype torch.int64"),
    (dict(x=torch.ones(N)), "x has shape \\[10\\]"),
    (dict(edge_index=torch.tensor([[0, 1, 2]])), "edge_index has shape \\[1, 3\\]"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)), "edge_index has dtype torch.int32"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 10]])), "edge_index holds node ids in \\[0, 10\\], expected \\[0, 9\\]"),
    (dict(edge_index=torch.tensor([[0, -1], [1, 2]])), "edge_index holds node ids in \\[-1, 2\\]"),
    (dict(x=torch.tensor([[float("nan")] * 4] + [[0.0] * 4] * (N - 1))), "x holds NaN/inf in 1 row\\(s\\) \\(first: node 0\\)"),
    (dict(y=torch.zeros(N - 1, dtype=torch.long)), "y has 9 rows for 10 nodes"),
    (dict(y=torch.tensor([0, 1, 2, 0, -1, 2, 0, 1, 2, 0])), "y is negative \\(-1\\) at node 4"),
    (dict(y=torch.tensor([0, 1, 2, 0, 1.5, 2, 0, 1, 2, 0])), "y holds non-integer values \\(node 4: 1.5\\)"),
    (dict(y=torch.tensor([[0, 2]] * N)), "multi-label y must be 0/1"),
    (dict(y=torch.zeros(N, 2, 2)), "y has shape \\[10, 2, 2\\]"),
    (dict(y=torch.zeros(N, dtype=torch.long)), "a single class"),
    (dict(edge_attr=torch.rand(5, 2)), "edge_attr has 5 rows for 6 edges"),
    (dict(edge_attr=torch.ones(6, 2, dtype=torch.long)), "edge_attr \\(shape \\[6, 2\\], dtype torch.int64\\)"),
    (dict(edge_attr=torch.full((6, 2), float("inf"))), "edge_attr holds NaN/inf"),
    (dict(train_mask=None, val_mask=None, test_mask=None), "the Data has no split"),
    (dict(test_mask=None), "no test_mask"),
    (dict(train_mask=torch.zeros(N, dtype=torch.bool)), "the train split is empty"),
    (dict(val_mask=torch.zeros(N, dtype=torch.bool)), "the valid split is empty"),
    (dict(train_mask=torch.ones(N - 1, dtype=torch.bool)), "train_mask is a bool mask of shape \\[9\\], expected \\[10\\]"),
    (dict(train_mask=torch.ones(N, 3, dtype=torch.bool)), "several splits in columns"),
    (dict(train_mask=torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])), "train_mask is of dtype torch.int64; expected a bool"),
    (dict(val_mask=torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)),
     "1 node\\(s\\) are in both the train and the valid split \\(first: node 3\\)"),
    (dict(split={"train": torch.arange(4)}), "both a 'split' and train_mask"),
    (dict(train_mask=None, val_mask=None, test_mask=None, split={"train": torch.arange(4), "val": torch.arange(4, 7)}),
     "'split' has no 'valid', 'test'"),
    (dict(train_mask=None, val_mask=None, test_mask=None,
          split={"train": torch.arange(4), "valid": torch.tensor([4, 11]), "test": torch.arange(7, 10)}),
     "split\\['valid'\\] holds node ids in \\[4, 11\\]"),
    (dict(train_mask=None, val_mask=None, test_mask=None,
          split={"train": torch.arange(4.0), "valid": torch.arange(4, 7), "test": torch.arange(7, 10)}),
     "split\\['train'\\] has dtype torch.float32"),
])
def test_bad_data_names_the_field(over, match):
    with pytest.raises(DataError, match=match):
        node_dataset_from_data(_data(**over), name="mine")


def test_not_a_data():
    with pytest.raises(DataError, match="expected a torch_geometric.data.Data, got a dict"):
        node_dataset_from_data({"x": torch.ones(2, 2)})


# ---------------------------------------------------------------------------------------- files
def test_file_round_trip(tmp_path):
    path = tmp_path / "g.pt"
    torch.save(_data(edge_attr=torch.rand(6)), path)
    assert isinstance(load_pyg_file(str(path)), Data)
    ds = load_user_dataset("pyg", str(tmp_path), str(path))
    assert ds.name == "pyg:g.pt" and ds.edge_attr.shape == (6, 1) and ds.num_outputs == 3


@pytest.mark.parametrize("obj,match", [
    ({"x": torch.ones(2)}, "holds a dict \\(keys: x\\), not a torch_geometric.data.Data"),
    (torch.ones(3, 2), "holds a tensor of shape \\[3, 2\\]"),
    ([1, 2], "holds a list of 2 item"),
])
def test_file_that_is_not_a_data(tmp_path, obj, match):
    path = tmp_path / "g.pt"
    torch.save(obj, path)
    with pytest.raises(DataError, match=match) as err:
        load_pyg_file(str(path))
    assert str(path) in str(err.value)


class NotSafe:  # a class a weights-only load must refuse (and say so, without advising to lift the guard)
    def __init__(self):
        self.x = 1


def test_file_with_an_arbitrary_class_is_refused(tmp_path):
    path = tmp_path / "g.pt"
    torch.save(NotSafe(), path)
    with pytest.raises(DataError, match="holds an object of class .*NotSafe; graphscale reads only tensors") as err:
        load_pyg_file(str(path))
    assert "weights_only=False" not in str(err.value)


def test_hetero_and_unreadable_and_missing_files(tmp_path):
    h = HeteroData()
    h["paper"].x = torch.ones(3, 2)
    torch.save(h, tmp_path / "h.pt")
    with pytest.raises(DataError, match="holds a HeteroData \\(node types: paper\\).*to_homogeneous"):
        load_pyg_file(str(tmp_path / "h.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match="junk.pt' is not a readable torch.save file"):
        load_pyg_file(str(tmp_path / "junk.pt"))
    with pytest.raises(DataError, match="no such file"):
        load_user_dataset("pyg", str(tmp_path), str(tmp_path / "missing.pt"))


def test_source_checks():
    with pytest.raises(ConfigError, match="data.name=pyg needs data.path=FILE"):
        check_user_source("pyg", "")
    with pytest.raises(ConfigError, match="expected MODULE:CLASS"):
        check_user_source("my module:Cls", "")
    check_user_source("pkg.mod:Cls", "")
    check_user_source("cora", "")


# ---------------------------------------------------------------------------------------- classes
MODULE = '''
import os
import torch
from torch_geometric.data import Data, InMemoryDataset


class OneGraph(InMemoryDataset):
    """Reads raw/graph.txt offline (one line: the number of nodes); refuses to download."""

    def __init__(self, root, transform=None):
        super().__init__(root, transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self):
        return ["graph.txt"]

    @property
    def processed_file_names(self):
        return ["data.pt"]

    def download(self):
        raise RuntimeError("no internet here")

    def process(self):
        n = int(open(os.path.join(self.raw_dir, "graph.txt")).read())
        src = torch.arange(n - 1)
        data = Data(x=torch.eye(n), edge_index=torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])]),
                    y=torch.arange(n) % 2)
        self.save([data], self.processed_paths[0])

    def get_idx_split(self):
        return {"train": torch.arange(0, 4), "valid": torch.arange(4, 6), "test": torch.arange(6, 9)}


class TwoGraphs(OneGraph):
    def process(self):
        d = Data(x=torch.eye(3), edge_index=torch.tensor([[0], [1]]), y=torch.tensor([0, 1, 0]))
        self.save([d, d], self.processed_paths[0])

    @property
    def processed_file_names(self):
        return ["two.pt"]


NOT_A_CLASS = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"gs_user_graphs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "graph.txt").write_text("9")
    yield name, str(root)
    sys.modules.pop(name, None)


def test_dataset_class_offline_with_idx_split(user_module):
    name, root = user_module
    data, split = load_dataset_class(f"{name}:OneGraph", root)
    assert data.num_nodes == 9 and split["valid"].tolist() == [4, 5]
    ds = load_user_dataset(f"{name}:OneGraph", root)
    assert ds.name == f"{name}:OneGraph" and ds.split["test"].tolist() == [6, 7, 8] and ds.num_outputs == 2


def test_dataset_class_errors(user_module, tmp_path):
    name, root = user_module
    with pytest.raises(DataError, match="cannot import module 'no_such_module_gs'.*ModuleNotFoundError"):
        load_dataset_class("no_such_module_gs:X", root)
    with pytest.raises(DataError, match=f"module '{name}' has no 'Missing'"):
        load_dataset_class(f"{name}:Missing", root)
    with pytest.raises(DataError, match="NOT_A_CLASS is a builtins.int, not a torch_geometric Dataset"):
        load_dataset_class(f"{name}:NOT_A_CLASS", root)
    with pytest.raises(DataError, match="the class Data, not a torch_geometric Dataset"):
        load_dataset_class(f"{name}:Data", root)
    with pytest.raises(DataError, match="holds 2 graphs"):
        load_dataset_class(f"{name}:TwoGraphs", root)
    with pytest.raises(DataError, match="OneGraph\\(root=.*\\) failed \\(RuntimeError: no internet here\\)"):
        load_dataset_class(f"{name}:OneGraph", str(tmp_path / "empty-root"))


def test_loading_leaves_the_process_allow_list_as_it_was(tmp_path):
    """PyG allow-lists Data process-wide at import and ogb's loader relies on it; torch's safe_globals
    removes its list on exit, so reading a user file must not take Data off the list."""
    before = set(torch.serialization.get_safe_globals())  # torch keeps a set: the order is not part of it
    assert Data in before
    torch.save(_data(), tmp_path / "g.pt")
    load_pyg_file(str(tmp_path / "g.pt"))
    assert set(torch.serialization.get_safe_globals()) == before
