"""Where benchmark results go, and what every result file records (benchmarks/README.md's rule).

Every benchmark, whether behind ``graphscale bench NAME`` or a script in ``benchmarks/``, writes
through :class:`ResultWriter`:

* by default into a **fresh** folder ``runs/bench/<name>-<UTC timestamp>/``: a run never touches
  committed results. ``--out benchmarks/results`` writes there, and only then.
* each table as ``<stem>.csv`` plus ``<stem>.json`` (the rows again, with the environment: versions,
  device, git commit, CPU count, the load average measured at the start of the run, the command
  line). Files are written atomically.
* never an empty table (:class:`EmptyResultError`), never appending, and never over an existing
  file unless ``--overwrite`` was given (:class:`ResultExistsError` names the file).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Iterable

from graphscale.atomic import atomic_write
from graphscale.errors import GraphscaleError

DEFAULT_ROOT = os.path.join("runs", "bench")


class EmptyResultError(GraphscaleError):
    """A benchmark produced no rows: nothing is written."""


class ResultExistsError(GraphscaleError):
    """The result file exists and ``overwrite`` was not asked for."""


def add_output_args(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` (default: a fresh ``runs/bench/<name>-<timestamp>``) and ``--overwrite``."""
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"folder for the result files (default: a new folder runs/bench/{name}-<timestamp>; "
                             f"pass --out benchmarks/results to update the committed results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace result files that already exist in --out (default: refuse)")


def default_out(name: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return os.path.join(DEFAULT_ROOT, f"{name}-{stamp}")


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: str | None = None) -> dict[str, Any]:
    """What a reader needs to judge a number: versions, device, commit, machine load at the start."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import torch_geometric
        env["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        pass
    if device is not None:
        env["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


class ResultWriter:
    """Writes the tables of one benchmark run into one folder.

    Args:
        name: the benchmark's name (the default folder is ``runs/bench/<name>-<timestamp>``).
        out: the folder; ``None`` = the fresh default.
        overwrite: replace existing files (otherwise an existing file is an error, before anything
            is measured when :meth:`check` is called first).
        device: recorded in the environment.

    The environment (with the load average) is taken when the writer is made: make it before the
    measurements start.
    """

    def __init__(self, name: str, out: str | None = None, overwrite: bool = False, device: str | None = None):
        self.name = name
        if not out:
            # a fresh folder: two runs started in the same second get -2, -3, ... rather than sharing one
            out = base = default_out(name)
            k = 1
            while os.path.exists(out):
                k += 1
                out = f"{base}-{k}"
        self.out = out
        self.overwrite = overwrite
        self.env = environment(device)
        self.written: list[str] = []

    @classmethod
    def from_args(cls, args: argparse.Namespace, name: str, device: str | None = None) -> "ResultWriter":
        return cls(name, getattr(args, "out", None), bool(getattr(args, "overwrite", False)), device)

    def path(self, filename: str) -> str:
        return os.path.join(self.out, filename)

    def check(self, *stems: str, suffixes: Iterable[str] = (".csv", ".json")) -> None:
        """Fail now (before measuring) if a file this run will write exists and overwrite is off;
        also fail if ``out`` cannot be created or written."""
        try:
            os.makedirs(self.out, exist_ok=True)
        except OSError as exc:
            raise GraphscaleError(f"cannot create the output folder {self.out!r}: {exc.strerror}") from None
        if not os.access(self.out, os.W_OK):
            raise GraphscaleError(f"the output folder {self.out!r} is not writable")
        if self.overwrite:
            return
        for stem in stems:
            for suffix in suffixes:
                p = self.path(stem + suffix)
                if os.path.exists(p):
                    raise ResultExistsError(f"{p} exists: pass --overwrite to replace it, or --out a new folder")

    def _target(self, filename: str) -> str:
        p = self.path(filename)
        if os.path.exists(p) and not self.overwrite and p not in self.written:
            raise ResultExistsError(f"{p} exists: pass --overwrite to replace it, or --out a new folder")
        os.makedirs(self.out, exist_ok=True)
        return p

    def write_table(self, stem: str, rows: list[dict], extra: dict | None = None,
                    csv_exclude: Iterable[str] = ()) -> tuple[str, str]:
        """``<stem>.csv`` and ``<stem>.json`` (rows + environment + ``extra``); returns both paths.

        ``csv_exclude``: columns kept in the JSON rows only (long lists such as training curves)."""
        if not rows:
            raise EmptyResultError(f"{self.name}: no result rows to write for {stem!r} (nothing was measured)")
        skip = set(csv_exclude)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys and k not in skip]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items() if k not in skip})
        csv_path, json_path = self._target(stem + ".csv"), self._target(stem + ".json")
        atomic_write(csv_path, lambda fh: fh.write(buf.getvalue().encode()))
        doc = {"benchmark": self.name, "environment": self.env, **(extra or {}), "rows": rows}
        atomic_write(json_path, lambda fh: fh.write((json.dumps(doc, indent=1, default=str) + "\n").encode()))
        self.written += [csv_path, json_path]
        return csv_path, json_path

    def write_file(self, filename: str, write) -> str:
        """Any other artefact (a PNG: ``write(binary_file)``), atomically, same overwrite rule."""
        p = self._target(filename)
        atomic_write(p, write)
        self.written.append(p)
        return p
