"""Checks of OGB raw node-property files before ``ogb`` parses them, and of ogb's ``processed/`` cache.

``ogb`` 1.3.6 reads ``raw/*.csv.gz`` with pandas and trusts them: a line-truncated ``edge.csv.gz``
gives a smaller graph without a word, a one-column row becomes node id -2^63, a missing file sends
it downloading from the set's URL, and its ``processed/`` cache is reused after the raw files change.
:func:`check_raw` streams every raw file once (gzip chunks of ``CHUNK`` bytes, never the whole file in
memory) and checks, with byte-level scans that cost a fraction of pandas' parse:

* every file the set needs is there (``edge``, ``node-feat`` / ``edge-feat`` as the metadata says,
  ``node-label``, the additional node files, ``num-node-list``, ``num-edge-list``, the three split files);
* each file is a complete gzip stream, not empty, holds only numbers (digits, sign, ``.``/``e`` for
  float files), the same number of values on every line, no empty line or empty value; the first bad
  line is named with its number and text;
* row counts agree with ``num-node-list`` (node files) and ``num-edge-list`` (edge files).

Value ranges (node ids, split ids, labels) are checked on the loaded tensors by
:mod:`graphscale.data.ogb`, which names the file and row too.

The cache: :func:`raw_stamp` records each raw file's size and modification time; the stamp is saved
in ``processed/`` when the cache is built and compared on load (:func:`cache_is_stale`).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass

from graphscale.errors import DataError

CHUNK = 16 << 20  # decompressed bytes per scan step
STAMP = "graphscale_raw_stamp.json"
_INT_BYTES = b"0123456789-,\r\n"
_FLOAT_BYTES = _INT_BYTES + b".eE+"
_INT_RE = re.compile(rb"-?[0-9]+")
_FLOAT_RE = re.compile(rb"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# Byte classes for the structure checks: separators (',', newline) -> 1, signs -> 2, the rest -> 0.
# Three 2-byte searches in the class string find an empty value (',,', ',\n', '\n,', '\n\n'), a sign
# without digits ('-,', '--'); in integer files a sign after a digit ('1-2') too. Measured here on a
# 190 MB float file: 9 searches in the raw bytes cost 2x its decompression, these ~0.5x.
_CLASS = bytes(1 if c in b",\n" else 2 if c in b"-+" else 0 for c in range(256))
_BAD_CLASS_PAIRS = (b"\x01\x01", b"\x02\x01", b"\x02\x02")


@dataclass(frozen=True)
class RawFile:
    """One file of a raw layout: path relative to the data set folder, number kind, expected shape.

    ``rows`` is ``'nodes'``, ``'edges'``, or ``None`` (any); ``columns`` ``None`` means: whatever the
    first line has, on every line.
    """

    path: str
    floats: bool
    rows: str | None
    columns: int | None


def layout(meta: dict) -> list:
    """The raw files an ogb node-property ``meta_dict`` / master.csv column asks for."""
    files = [RawFile("raw/edge.csv.gz", False, "edges", 2)]
    if meta["has_node_attr"] == "True":
        files.append(RawFile("raw/node-feat.csv.gz", True, "nodes", None))
    if meta["has_edge_attr"] == "True":
        files.append(RawFile("raw/edge-feat.csv.gz", True, "edges", None))
    files.append(RawFile("raw/node-label.csv.gz", False, "nodes", int(meta["num tasks"])))
    extra = meta["additional node files"]
    for name in ([] if extra == "None" else extra.split(",")):
        files.append(RawFile(f"raw/{name}.csv.gz", False, "nodes", None))
    extra = meta["additional edge files"]
    for name in ([] if extra == "None" else extra.split(",")):
        files.append(RawFile(f"raw/{name}.csv.gz", False, "edges", None))
    files += [RawFile("raw/num-node-list.csv.gz", False, None, 1), RawFile("raw/num-edge-list.csv.gz", False, None, 1)]
    for part in ("train", "valid", "test"):
        files.append(RawFile(f"split/{meta['split']}/{part}.csv.gz", False, None, 1))
    return files


def _resolve(folder: str, f: RawFile) -> str:
    path = os.path.join(folder, f.path)
    # ogb renames ogbn-proteins' species.csv.gz to node_species.csv.gz on first use
    if f.path == "raw/node_species.csv.gz" and not os.path.exists(path):
        alt = os.path.join(folder, "raw", "species.csv.gz")
        if os.path.exists(alt):
            return alt
    return path


def check_present(folder: str, files: list, what: str) -> None:
    """Raise :class:`DataError` listing every missing file (before ogb would try to download them)."""
    missing = [f.path for f in files if not os.path.isfile(_resolve(folder, f))]
    if missing:
        raise DataError(f"{what}: {len(missing)} raw file(s) missing in {folder!r}: {', '.join(missing)}. "
                        f"The data set is incomplete: write it again (graphscale data synth ... --overwrite) "
                        f"or delete the folder and download it again")


def _locate(block: bytes, first_line: int, columns: int | None, floats: bool) -> tuple:
    """(line number, message) of the first malformed line of ``block`` (slow path, errors only)."""
    num = _FLOAT_RE if floats else _INT_RE
    for i, line in enumerate(block.split(b"\n")[:-1]):
        line = line.rstrip(b"\r")
        no = first_line + i + 1
        if not line:
            return no, "an empty line"
        fields = line.split(b",")
        if columns is not None and len(fields) != columns:
            return no, f"{len(fields)} value(s), expected {columns}"
        for field in fields:
            if not num.fullmatch(field):
                return no, f"{field.decode(errors='replace')!r} is not {'a number' if floats else 'an integer'}"
    return None, None


def _scan(path: str, label: str, floats: bool, columns: int | None) -> tuple:
    """Stream one ``.csv.gz``; return ``(rows, columns)`` or raise :class:`DataError` naming the line."""
    allowed = _FLOAT_BYTES if floats else _INT_BYTES
    rows, carry = 0, b""

    def fail(block: bytes, first: int, cols) -> None:
        no, why = _locate(block, first, cols, floats)
        if no is None:  # the fast check and the slow one disagree: report the block
            no, why = first + 1, "malformed values near this line"
        line = block.split(b"\n")[no - first - 1][:80].decode(errors="replace")
        raise DataError(f"{label}: line {no} is malformed ({why}): {line!r}")

    def check(block: bytes) -> int:
        nonlocal columns
        if columns is None:
            columns = block[:block.index(b"\n")].count(b",") + 1
        lines = block.count(b"\n")
        bad = block.translate(None, allowed)
        if bad or block.count(b",") != lines * (columns - 1) or block[:1] in (b",", b"\n", b"\r"):
            fail(block, rows, columns)
        cls = block.translate(_CLASS)
        if any(p in cls for p in _BAD_CLASS_PAIRS) or (not floats and b"\x00\x02" in cls):
            fail(block, rows, columns)
        return lines

    try:
        with gzip.open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                buf = carry + chunk
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                carry = buf[cut + 1:]
                rows += check(buf[:cut + 1])
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{label}: not a complete gzip file ({exc}); the file is truncated or corrupt: "
                        f"write or download it again") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    if carry:  # last line without its newline
        rows += check(carry + b"\n")
    if rows == 0:
        if f"{os.sep}split{os.sep}" in label:
            raise DataError(f"{label}: the file is empty: this split holds no node (every split needs one; a "
                            f"synthetic set needs more communities than species / years)")
        raise DataError(f"{label}: the file is empty (no rows)")
    return rows, columns


def _read_counts(path: str, label: str) -> int:
    with gzip.open(path, "rb") as fh:
        text = fh.read()
    return sum(int(v) for v in text.split())


def check_splits(folder: str, meta: dict) -> None:
    """Scan the three split files (ogb reads them on every load, the cache does not hold them)."""
    files = [f for f in layout(meta) if f.path.startswith("split/")]
    check_present(folder, files, os.path.basename(folder))
    for f in files:
        _scan(_resolve(folder, f), os.path.join(folder, f.path), f.floats, f.columns)


def read_count(folder: str, which: str) -> int:
    """The sum of ``raw/num-node-list.csv.gz`` (``which='node'``) or ``num-edge-list`` (``'edge'``)."""
    path = os.path.join(folder, "raw", f"num-{which}-list.csv.gz")
    _scan(path, path, False, 1)
    return _read_counts(path, path)


def check_raw(folder: str, meta: dict, what: str) -> dict:
    """Validate the raw files of the node-property set in ``folder`` (see the module docstring).

    Args:
        folder: the data set folder (holding ``raw/`` and ``split/``).
        meta: ogb ``meta_dict`` (or the set's master.csv column as a dict).
        what: the data set's name, for messages.

    Returns:
        ``{'nodes': N, 'edges': E, 'columns': {path: width}}`` from the raw files.
    """
    files = layout(meta)
    check_present(folder, files, what)
    widths = {}
    for f in files:
        widths[f.path] = _scan(_resolve(folder, f), os.path.join(folder, f.path), f.floats, f.columns)
    nodes = _read_counts(os.path.join(folder, "raw/num-node-list.csv.gz"), "num-node-list")
    edges = _read_counts(os.path.join(folder, "raw/num-edge-list.csv.gz"), "num-edge-list")
    for f in files:
        rows = widths[f.path][0]
        want = {"nodes": nodes, "edges": edges}.get(f.rows)
        if want is not None and rows != want:
            src = "raw/num-node-list.csv.gz" if f.rows == "nodes" else "raw/num-edge-list.csv.gz"
            hint = "incomplete (truncated?)" if rows < want else "longer than its count"
            raise DataError(f"{what}: {os.path.join(folder, f.path)} has {rows:,} rows but {src} says "
                            f"{want:,} {f.rows}: the file is {hint}; write or download it again")
    return {"nodes": nodes, "edges": edges, "columns": {p: w[1] for p, w in widths.items()}}


def raw_stamp(folder: str, meta: dict) -> dict:
    """``{path: [size, mtime_ns]}`` of the raw files ogb's ``processed/`` cache is built from."""
    out = {}
    for f in layout(meta):
        if f.path.startswith("raw/"):
            st = os.stat(_resolve(folder, f))
            out[f.path] = [st.st_size, st.st_mtime_ns]
    return out


def cache_is_stale(folder: str, meta: dict, processed_file: str) -> str | None:
    """Why ``processed_file`` no longer matches the raw files (``None`` when it does).

    With a saved stamp: any size or mtime change. Without one (a cache built by plain ogb or an
    older graphscale): any raw file modified after the cache was written.
    """
    stamp_path = os.path.join(os.path.dirname(processed_file), STAMP)
    now = raw_stamp(folder, meta)
    try:
        with open(stamp_path) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        saved = None
    if saved is not None:
        changed = sorted(p for p in set(now) | set(saved) if now.get(p) != saved.get(p))
        return f"changed since it was built: {', '.join(changed)}" if changed else None
    built = os.stat(processed_file).st_mtime_ns
    newer = sorted(p for p, (_, mtime) in now.items() if mtime > built)
    return f"modified after it was built: {', '.join(newer)}" if newer else None


def save_stamp(folder: str, meta: dict, processed_file: str) -> None:
    path = os.path.join(os.path.dirname(processed_file), STAMP)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(raw_stamp(folder, meta), fh)
    os.replace(tmp, path)
