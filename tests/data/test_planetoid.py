import os
import shutil

import pytest

from graphscale.data import load_dataset
from graphscale.errors import DataError


def _listing(folder):
    return sorted((d, tuple(sorted(f))) for d, _, f in os.walk(folder))


@pytest.mark.parametrize("name,nodes,classes,train", [("cora", 2708, 7, 140), ("citeseer", 3327, 6, 120)])
def test_planetoid_public_split_offline(shared_data, tmp_path, monkeypatch, name, nodes, classes, train):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path))
    before = _listing(shared_data / "planetoid")
    d = load_dataset(name, str(shared_data / "planetoid"))
    assert d.num_nodes == nodes and d.num_outputs == classes
    assert [d.split[k].numel() for k in ("train", "valid", "test")] == [train, 500, 1000]
    assert _listing(shared_data / "planetoid") == before  # the shared folder is never written


def _cora_copy(shared_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shared_data / "planetoid" / "Cora" / "raw", root / "Cora" / "raw")
    return root


def test_planetoid_cache_goes_to_graphscale_cache(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path / "cache"))
    root = _cora_copy(shared_data, tmp_path)
    os.chmod(root / "Cora", 0o555)  # read-only by intent; root could still write: the listing checks it
    try:
        before = _listing(root)
        load_dataset("cora", str(root))
        load_dataset("cora", str(root))
        assert _listing(root) == before
    finally:
        os.chmod(root / "Cora", 0o755)
    cached = [d for d, _, files in os.walk(tmp_path / "cache") if "data.pt" in files]
    assert len(cached) == 1 and cached[0].endswith("processed") and "planetoid" in cached[0]


def test_planetoid_cache_rebuilt_when_raw_changes(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path / "cache"))
    root = _cora_copy(shared_data, tmp_path)
    load_dataset("cora", str(root))
    (data_pt,) = [os.path.join(d, "data.pt") for d, _, f in os.walk(tmp_path / "cache") if "data.pt" in f]
    built = os.stat(data_pt).st_mtime_ns
    os.utime(root / "Cora" / "raw" / "ind.cora.graph", (1_000_000, 1_000_000))
    load_dataset("cora", str(root))
    assert os.stat(data_pt).st_mtime_ns != built  # PyG alone would reuse the old cache


def test_missing_raw_folder(tmp_path):
    with pytest.raises(DataError, match="no raw folder"):
        load_dataset("cora", str(tmp_path))


def test_missing_raw_file_is_named_not_downloaded(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path / "cache"))
    root = _cora_copy(shared_data, tmp_path)
    os.remove(root / "Cora" / "raw" / "ind.cora.tx")
    with pytest.raises(DataError, match=r"missing in .*: ind\.cora\.tx"):
        load_dataset("cora", str(root))
