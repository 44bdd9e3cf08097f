import pytest

from graphscale.data import load_dataset
from graphscale.errors import DataError


@pytest.mark.parametrize("name,nodes,classes,train", [("cora", 2708, 7, 140), ("citeseer", 3327, 6, 120)])
def test_planetoid_public_split_offline(shared_data, tmp_path, monkeypatch, name, nodes, classes, train):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path))  # shared data is read-only: copied here
    d = load_dataset(name, str(shared_data / "planetoid"))
    assert d.num_nodes == nodes and d.num_outputs == classes
    assert [d.split[k].numel() for k in ("train", "valid", "test")] == [train, 500, 1000]


def test_missing_raw_folder(tmp_path):
    with pytest.raises(DataError, match="no raw folder"):
        load_dataset("cora", str(tmp_path))
