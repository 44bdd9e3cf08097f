"""Bad OGB raw files and stale caches: each a DataError naming the file (and line), before ogb runs."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys

import pytest

from graphscale.data import SyntheticSpec, load_dataset, write_synthetic
from graphscale.data.synthetic import meta_dict
from graphscale.errors import DataError

PROTEINS = SyntheticSpec(kind="proteins", num_nodes=300, avg_degree=6, num_communities=16, seed=1)
ARXIV = SyntheticSpec(kind="arxiv", num_nodes=300, avg_degree=6, num_communities=6, num_features=8,
                      num_classes=4, seed=1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {spec.kind: write_synthetic(spec, str(root)) for spec in (PROTEINS, ARXIV)}


@pytest.fixture
def sets(pristine, tmp_path):
    """Fresh writable copies of the two small sets: {kind: (root, folder)}."""
    out = {}
    for kind, src in pristine.items():
        dst = tmp_path / os.path.basename(src)
        shutil.copytree(src, dst)
        out[kind] = (str(tmp_path), str(dst))
    return out


def _lines(path):
    with gzip.open(path, "rb") as fh:
        return fh.read().split(b"\n")[:-1]


def _write(path, lines, newline=True):
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + (b"\n" if newline and lines else b""))


def _load(sets, kind):
    root, _ = sets[kind]
    spec = PROTEINS if kind == "proteins" else ARXIV
    return load_dataset(f"synthetic-{kind}", root, synthetic=spec)


def _edge_file(sets, kind="proteins"):
    return os.path.join(sets[kind][1], "raw", "edge.csv.gz")


def test_pristine_sets_load(sets):
    assert _load(sets, "proteins").num_nodes == 300
    assert _load(sets, "arxiv").x.shape == (300, 8)


def test_line_truncated_edge_file_is_refused(sets):
    path = _edge_file(sets)
    lines = _lines(path)
    _write(path, lines[:-25])
    with pytest.raises(DataError, match=rf"edge\.csv\.gz has {len(lines) - 25:,} rows but "
                                        rf"raw/num-edge-list\.csv\.gz says {len(lines):,} edges.*truncated"):
        _load(sets, "proteins")


def test_one_column_row_names_file_and_line(sets):
    path = _edge_file(sets)
    lines = _lines(path)
    lines[4] = lines[4].split(b",")[0]
    _write(path, lines)
    with pytest.raises(DataError, match=r"edge\.csv\.gz: line 5 is malformed \(1 value\(s\), expected 2\)"):
        _load(sets, "proteins")


@pytest.mark.parametrize("bad", [b"12,abc", b"1-2,3", b"1.5,3", b"4,,", b"nan,3"])
def test_non_numeric_value_names_file_and_line(sets, bad):
    path = _edge_file(sets)
    lines = _lines(path)
    lines[6] = bad
    _write(path, lines)
    with pytest.raises(DataError, match=r"edge\.csv\.gz: line 7 is malformed"):
        _load(sets, "proteins")


def test_non_numeric_feature_names_feature_file(sets):
    path = os.path.join(sets["arxiv"][1], "raw", "node-feat.csv.gz")
    lines = _lines(path)
    lines[9] = lines[9].replace(b",", b",x", 1)
    _write(path, lines)
    with pytest.raises(DataError, match=r"node-feat\.csv\.gz: line 10 is malformed .*not a number"):
        _load(sets, "arxiv")


def test_empty_edge_file(sets):
    _write(_edge_file(sets), [])
    with pytest.raises(DataError, match=r"edge\.csv\.gz: the file is empty"):
        _load(sets, "proteins")


def test_byte_truncated_gzip(sets):
    path = _edge_file(sets)
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"edge\.csv\.gz: not a complete gzip file"):
        _load(sets, "proteins")


def test_deleted_edge_file_is_refused_before_ogb(sets):
    os.remove(_edge_file(sets))
    with pytest.raises(DataError, match=r"missing in .*: raw/edge\.csv\.gz"):
        _load(sets, "proteins")
    assert not os.path.exists(os.path.join(sets["proteins"][1], "processed"))  # ogb never ran


def test_deleted_edge_file_after_cache_is_refused(sets):
    _load(sets, "proteins")  # builds processed/
    os.remove(_edge_file(sets))
    with pytest.raises(DataError, match=r"raw/edge\.csv\.gz"):  # not a download from an empty URL
        _load(sets, "proteins")


def test_truncated_node_features_blame_the_feature_file(sets):
    path = os.path.join(sets["arxiv"][1], "raw", "node-feat.csv.gz")
    _write(path, _lines(path)[:150])
    with pytest.raises(DataError, match=r"node-feat\.csv\.gz has 150 rows but raw/num-node-list\.csv\.gz says 300"):
        _load(sets, "arxiv")


def test_out_of_range_node_id_names_line(sets):
    path = _edge_file(sets)
    lines = _lines(path)
    lines[10] = b"3," + b"999"
    _write(path, lines)
    with pytest.raises(DataError, match=r"edge\.csv\.gz: line 11 holds node id 999, expected 0\.\.299"):
        _load(sets, "proteins")


def test_out_of_range_split_index_names_split_file(sets):
    path = os.path.join(sets["arxiv"][1], "split", "time", "valid.csv.gz")
    lines = _lines(path)
    lines[2] = b"300"
    _write(path, lines)
    with pytest.raises(DataError, match=r"split/time/valid\.csv\.gz: line 3 holds node id 300"):
        _load(sets, "arxiv")


def test_label_out_of_range_names_label_file(sets):
    path = os.path.join(sets["arxiv"][1], "raw", "node-label.csv.gz")
    lines = _lines(path)
    lines[20] = b"7"  # 4 classes
    _write(path, lines)
    with pytest.raises(DataError, match=r"node-label\.csv\.gz: line 21 holds label \[7\], expected values in 0\.\.3"):
        _load(sets, "arxiv")


def test_stale_cache_is_rebuilt_after_a_raw_change(sets, capsys):
    full = _load(sets, "proteins")
    path = _edge_file(sets)
    good = _lines(path)
    _write(path, good[:-10])  # a raw file broken after the cache was built: not hidden by the cache
    with pytest.raises(DataError, match="truncated"):
        _load(sets, "proteins")
    _write(path, good[:-10] + good[-10:])  # fixed: the cache is rebuilt, not reused
    capsys.readouterr()
    again = _load(sets, "proteins")
    assert "rebuilding ogb's cache" in capsys.readouterr().err
    assert again.num_edges == full.num_edges


def test_stale_cache_without_stamp_uses_mtimes(sets, capsys):
    _load(sets, "proteins")
    folder = sets["proteins"][1]
    os.remove(os.path.join(folder, "processed", "graphscale_raw_stamp.json"))  # a cache plain ogb built
    path = _edge_file(sets)
    lines = _lines(path)
    lines[0], lines[1] = lines[1], lines[0]
    _write(path, lines)
    later = os.stat(os.path.join(folder, "processed", "geometric_data_processed.pt")).st_mtime + 5
    os.utime(path, (later, later))
    capsys.readouterr()
    _load(sets, "proteins")
    assert "modified after it was built: raw/edge.csv.gz" in capsys.readouterr().err


def test_cache_that_disagrees_with_raw_counts_names_the_folder(sets, pristine, tmp_path):
    # A cache from another graph, its raw files older than the cache and no stamp: the counts show it.
    _load(sets, "proteins")
    folder = sets["proteins"][1]
    os.remove(os.path.join(folder, "processed", "graphscale_raw_stamp.json"))
    other = write_synthetic(SyntheticSpec(kind="proteins", num_nodes=300, avg_degree=4, num_communities=16, seed=1),
                            str(tmp_path / "other"))
    for f in ("edge.csv.gz", "edge-feat.csv.gz", "num-edge-list.csv.gz"):
        shutil.copy(os.path.join(other, "raw", f), os.path.join(folder, "raw", f))
        os.utime(os.path.join(folder, "raw", f), (1_000_000, 1_000_000))
    with pytest.raises(DataError, match=r"cache .*processed' holds .* edges but the raw files say .*delete"):
        _load(sets, "proteins")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "graphscale.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cli_bad_raw_file_is_one_line_error(sets):
    path = _edge_file(sets)
    lines = _lines(path)
    lines[2] = b"17"
    _write(path, lines)
    r = _cli("data", "info", sets["proteins"][1])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "edge.csv.gz: line 3 is malformed" in r.stderr


def test_unwritable_root_is_a_data_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    root = str(blocker / "data")  # a folder under a file: cannot be created, even by root
    with pytest.raises(DataError, match=rf"cannot write the synthetic data set under '{root}'"):
        write_synthetic(PROTEINS, root)
    r = _cli("data", "synth", "--num-nodes", "100", "--num-communities", "8", "--root", root, "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr and root in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_root_is_a_data_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(DataError, match="cannot write the synthetic data set under"):
            write_synthetic(PROTEINS, str(ro))
    finally:
        os.chmod(ro, 0o755)


def test_meta_layout_matches_ogb_for_real_sets():
    # The raw layout graphscale checks for the real sets is the one ogb's master.csv describes.
    from graphscale.data import raw_check
    from graphscale.data.ogb import _master_meta

    paths = {name: [f.path for f in raw_check.layout(_master_meta(name))]
             for name in ("ogbn-proteins", "ogbn-arxiv", "ogbn-products")}
    assert "raw/edge-feat.csv.gz" in paths["ogbn-proteins"] and "raw/node_species.csv.gz" in paths["ogbn-proteins"]
    assert "raw/node-feat.csv.gz" in paths["ogbn-arxiv"] and "split/time/test.csv.gz" in paths["ogbn-arxiv"]
    assert "split/sales_ranking/train.csv.gz" in paths["ogbn-products"]
    assert "raw/node-feat.csv.gz" not in paths["ogbn-proteins"]
    # and the synthetic sets declare the same layout as their real twins
    spec = SyntheticSpec(kind="products", like="ogbn-products", scale=0.001)
    synth = [f.path for f in raw_check.layout(meta_dict(spec, "x"))]
    assert synth == paths["ogbn-products"]


def test_real_ogb_name_and_layout_are_checked(tmp_path):
    # A small arxiv-like set in the folder of the real ogbn-arxiv: read through ogb's master.csv entry
    # (no meta_dict), as a downloaded ogbn-arxiv is; the same checks apply.
    spec = SyntheticSpec(kind="arxiv", like="ogbn-arxiv", scale=0.005)
    src = write_synthetic(spec, str(tmp_path / "gen"))
    root = tmp_path / "ogb"
    shutil.copytree(src, root / "ogbn_arxiv")
    d = load_dataset("ogbn-arxiv", str(root))
    assert d.num_nodes == round(169_343 * 0.005) and d.x.shape[1] == 128 and d.num_outputs == 40
    path = root / "ogbn_arxiv" / "raw" / "edge.csv.gz"
    lines = _lines(path)
    _write(path, lines[:-3])
    with pytest.raises(DataError, match=r"ogbn_arxiv/raw/edge\.csv\.gz has .* rows but raw/num-edge-list"):
        load_dataset("ogbn-arxiv", str(root))
    os.remove(path)
    with pytest.raises(DataError, match=r"missing .*raw/edge\.csv\.gz"):  # not a download
        load_dataset("ogbn-arxiv", str(root))
