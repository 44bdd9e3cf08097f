"""What does a shipped config reach, in how long and in how much memory?

Runs ``graphscale train CONFIG [key=value ...]`` for each recipe, each in a fresh process into a
temporary output folder, and records per run: the metric and its value (best validation score and
test score at the best validation epoch, from the run's ``results.json``), the epochs, the training
seconds the trainer reports, the wall seconds of the whole command (data loading or writing
included), the CPU seconds and peak RSS of the process (``os.wait4``'s rusage) and the peak memory
the trainer itself reports.

    python benchmarks/bench_recipes.py                                  # quickstart + Cora GCN
    python benchmarks/bench_recipes.py --recipes "configs/cora/gcn.yaml train.seed=1"

Each recipe is one string: the config path (relative to the repository) then its overrides. The
quickstart writes its synthetic data set into a fresh temporary folder (``data.root`` is set to it),
so its wall time includes writing the data set, as a user's first run does.

Writes ``recipes.{csv,json}`` through graphscale.bench.output (a fresh runs/bench/recipes-<timestamp>/
unless --out is given).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "recipes"
DEFAULT_RECIPES = ["configs/quickstart.yaml", "configs/cora/gcn.yaml"]


def parse_recipe(text: str) -> tuple[str, list[str]]:
    parts = shlex.split(text)
    if not parts:
        raise ConfigError("--recipes: an empty recipe; expected 'CONFIG.yaml [key=value ...]'")
    config, overrides = parts[0], parts[1:]
    if not os.path.isfile(os.path.join(REPO, config)):
        raise ConfigError(f"--recipes {text!r}: no config file {config!r} in {REPO}")
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ConfigError(f"--recipes {text!r}: {', '.join(bad)} is not a key=value override")
    return config, overrides


def run_recipe(config: str, overrides: list[str], work: str, timeout: float) -> dict:
    out = tempfile.mkdtemp(prefix="run-", dir=work)
    extra = list(overrides)
    if not any(o.startswith("data.root=") for o in overrides) and "quickstart" in os.path.basename(config):
        extra.append(f"data.root={os.path.join(work, 'data')}")  # a fresh data set, as in a fresh clone
    cmd = [sys.executable, "-m", "graphscale", "train", config, *extra, "--out", out]
    log_path = os.path.join(work, "stdout.log")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:  # os.wait4 gives this child's own rusage (peak RSS), unlike RUSAGE_CHILDREN
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise GraphscaleError(f"{' '.join(cmd)}: still running after {timeout:.0f} s (--timeout)")
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        with open(log_path) as fh:
            raise GraphscaleError(f"{' '.join(cmd)} failed (exit {code}):\n{fh.read()[-3000:]}")
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    return {"config": config, "overrides": " ".join(overrides), "dataset": res.get("dataset"),
            "metric": res.get("metric"), "best_valid": res.get("best_valid"),
            "test_at_best_valid": res.get("test_at_best_valid"), "best_epoch": res.get("best_epoch"),
            "epochs": res.get("epochs"), "train_seconds": res.get("seconds"), "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,  # less sensitive to other jobs than wall time
            "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
            "trainer_peak_memory_bytes": res.get("peak_memory_bytes"), "device": res.get("device"),
            "num_parameters": res.get("num_parameters"), "command": "graphscale train " + " ".join(
                [config, *overrides]), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, metavar="RECIPE",
                   help="recipes to run, each 'CONFIG.yaml [key=value ...]' in one quoted string "
                        f"(default: {' '.join(DEFAULT_RECIPES)})")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
    p.add_argument("--tag", default=NAME, help=f"file name stem of the results: TAG.csv and TAG.json (default {NAME})")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        recipes = [parse_recipe(r) for r in args.recipes]
        if not args.timeout > 0:
            raise ConfigError(f"--timeout {args.timeout}: expected seconds > 0")
        writer = ResultWriter.from_args(args, NAME)
        if not args.tag or any(c in args.tag for c in "/\\") or args.tag.startswith("."):
            raise ConfigError(f"--tag {args.tag!r}: expected a file name stem without folders, like recipes")
        writer.check(args.tag)
        work = tempfile.mkdtemp(prefix="bench-recipes-")
        rows = []
        try:
            for config, overrides in recipes:
                rows.append(run_recipe(config, overrides, work, args.timeout))
                r = rows[-1]
                print(f"{r['command']}: {r['metric']} valid {r['best_valid']:.4f} test {r['test_at_best_valid']:.4f}, "
                      f"train {r['train_seconds']:.1f} s, wall {r['wall_seconds']:.1f} s, peak RSS "
                      f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("wrote " + ", ".join(writer.write_table(args.tag, rows, {"note": args.note})))
    except GraphscaleError as exc:
        print(f"bench_recipes: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
