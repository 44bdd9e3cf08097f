"""Where graphscale keeps PyG's ``processed/`` caches of local raw data (Planetoid, TU).

PyG writes ``processed/`` beside ``raw/``. The raw folders graphscale reads are often shared and
read-only by intent (``../shared/data``), and a root user can write there even when the folder is
read-only, so graphscale never lets PyG write beside them: the cache goes to

    ``$GRAPHSCALE_CACHE`` (default ``~/.cache/graphscale``) ``/<loader>/<Name>-<hash>/processed``

where ``<hash>`` is a digest of the raw folder's absolute path (two raw folders of the same name never
share a cache). A stamp of the raw files' sizes and modification times is saved with the cache and
compared on every load: a changed raw file rebuilds the cache (PyG itself would reuse it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from graphscale.errors import DataError

STAMP = "graphscale_raw_stamp.json"


def cache_root() -> str:
    return os.environ.get("GRAPHSCALE_CACHE", os.path.expanduser("~/.cache/graphscale"))


def processed_dir(loader: str, name: str, raw_dir: str) -> str:
    """The ``processed/`` folder for the raw folder ``raw_dir`` of data set ``name``."""
    digest = hashlib.sha1(os.path.abspath(raw_dir).encode()).hexdigest()[:10]
    return os.path.join(cache_root(), loader, f"{name}-{digest}", "processed")


def _stamp(raw_dir: str, files: list) -> dict:
    out = {}
    for f in files:
        st = os.stat(os.path.join(raw_dir, f))
        out[f] = [st.st_size, st.st_mtime_ns]
    return out


def prepare(raw_dir: str, files: list, processed: str, what: str) -> None:
    """Check the raw ``files`` exist; drop ``processed`` when its stamp does not match them; make it.

    Raises:
        DataError: a raw file is missing, or the cache folder cannot be written.
    """
    missing = [f for f in files if not os.path.isfile(os.path.join(raw_dir, f))]
    if missing:
        raise DataError(f"{what}: {len(missing)} raw file(s) missing in {raw_dir!r}: {', '.join(missing)}")
    stamp_path = os.path.join(processed, STAMP)
    now = _stamp(raw_dir, files)
    try:
        if os.path.isdir(processed):
            try:
                with open(stamp_path) as fh:
                    saved = json.load(fh)
            except (OSError, ValueError):
                saved = None
            if saved != now:
                shutil.rmtree(processed)
        os.makedirs(processed, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what}: cannot write the cache folder {processed!r} ({exc.strerror or exc}); set "
                        f"GRAPHSCALE_CACHE to a writable folder") from None


def save_stamp(raw_dir: str, files: list, processed: str) -> None:
    path = os.path.join(processed, STAMP)
    with open(path + ".tmp", "w") as fh:
        json.dump(_stamp(raw_dir, files), fh)
    os.replace(path + ".tmp", path)


def in_place(dataset_cls, raw_dir: str, processed: str):
    """A subclass of a PyG dataset class that reads its raw files where they are (``raw_dir``) and
    writes its ``processed/`` files into graphscale's cache (``processed``), never beside the raw files."""

    class _InPlace(dataset_cls):
        @property
        def raw_dir(self) -> str:
            return raw_dir

        @property
        def processed_dir(self) -> str:
            return processed

    _InPlace.__name__ = _InPlace.__qualname__ = dataset_cls.__name__  # PyG names its processed files by class
    return _InPlace
