"""The GPU verification of graphscale in one short run: ``benchmarks/device_check.sh OUTDIR [--dry-run]``.

Runs five steps in order, each as a child process with its own timeout, writes at most 8 files under
``OUTDIR`` and prints a summary table at the end. The first step that fails (a kernel error, a failed
test, a crashed or timed-out command, missing results) stops the run: exit status 1 and the step
named on stderr. A target that is not met (below) is reported in the table, not an error.

| step | what it runs (sizes on the GPU) | budget / timeout |
|---|---|---|
| a kernels | ``pytest tests/ops/triton_cases.py`` compiled for real on CUDA: every autotune config of the SpMM and softmax kernels pinned in turn on a skewed graph (row split on and off), float32 / float64, gradcheck, one autotuned launch; and ``tests/memory/test_quantize_triton.py -k 'not interpreted'`` (its CUDA test): the 2-bit pack / unpack kernels bit for bit against torch, every config | 140 s |
| b spmm | ``benchmarks/bench_spmm.py --quick --device cuda``: arxiv-sized (169k nodes, 2.3M edges, F=128) and products-sized (2.45M nodes, 123.7M edges, F=32) random graphs (uniform and power-law destinations); sum / mean / max / softmax forward + backward; graphscale's Triton kernels against ``torch.sparse.mm`` (cuSPARSE) and PyG's aggregation; GCN / GEN layers on arxiv | 90 s |
| c memory | ``graphscale bench memory-depth --device cuda --models reversible,deq,pyg-rev --depths 10,100,1000`` (5,000 nodes, 50,000 edges, 64 channels, one fresh process per configuration, ``torch.cuda.reset_peak_memory_stats()`` before each, ``max_memory_allocated`` after; one timed step, 40 s per configuration at most) | 120 s |
| d quickstart | ``graphscale train configs/quickstart.yaml train.device=cuda train.epochs=3``, then ``configs/quickstart-revgnn.yaml memory.compression=layers memory.bits=2 train.epochs=1`` (a 2-bit compressed RevGNN: seconds and peak CUDA bytes) | 80 s |
| e nccl | ``graphscale train configs/quickstart.yaml --nproc 1 --distributed train.device=cuda train.epochs=1``: one process in an nccl process group under DDP | 50 s |

Total 480 s (8 minutes) on one H100, plus start-up. Triton compiles each kernel variant once (the
disk cache makes a rerun faster).

Targets (read from the step's own result files): b: SpMM sum forward + backward of graphscale's
Triton kernels within 1.2x of ``torch.sparse.mm`` on both graphs; softmax aggregation faster than PyG's
``SoftmaxAggregation`` (the aggregation inside GENConv) where PyG's fits in memory; c: reversible
peak CUDA bytes minus parameters and gradients (2 x param_bytes) at the deepest depth within 1.25x
of the shallowest.

``--dry-run`` runs the same steps on CPU at tiny sizes (Triton under ``TRITON_INTERPRET=1`` on a
few of the test cases, gloo instead of nccl, peak RSS instead of CUDA bytes) so CI can test this
script; its numbers check the plumbing, not the targets. Files written under ``OUTDIR``:
``summary.json`` (every step's command, status, seconds, numbers, targets), ``log.txt`` (every
command's output), ``spmm.csv`` / ``spmm.json`` and ``memory_depth.csv`` / ``.json`` / ``.png``.
Training runs go to a temporary folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FILES = 8
TRAIN_DIST_FLAG = "--distributed"  # needed from graphscale train (see step e)


class StepFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ plan
def plan(dry: bool, tmp: pathlib.Path, out: pathlib.Path) -> list[dict]:
    """The five steps: name, what, timeout (s) and command(s)."""
    py = sys.executable
    dev = "cpu" if dry else "cuda"
    data = ["data.root=" + str(tmp / "data")]
    if dry:
        # (fewer than ~20 communities can leave the synthetic valid split empty)
        tiny = ["data.num_nodes=600", "data.avg_degree=4", "data.num_communities=20", "sampler.num_parts=2",
                "model.hidden_channels=8", "log.progress=false"]
        kernels = [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                   "tests/ops/triton_cases.py::test_every_config_spmm[1-24]"]
        spmm = [py, "benchmarks/bench_spmm.py", "--tiny", "--device", "cpu", "--threads", "1"]
        memory = ["--depths", "1,2", "--nodes", "200", "--edges", "1000", "--channels", "8", "--steps", "1",
                  "--no-profile", "--threads", "1"]
        quick_epochs, rev = ["train.epochs=1"], ["model.num_layers=2", "train.epochs=1", "sampler.eval_parts=2"]
    else:
        tiny = ["log.progress=false"]
        kernels = [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/ops/triton_cases.py",
                   "tests/memory/test_quantize_triton.py", "-k", "not interpreted"]
        spmm = [py, "benchmarks/bench_spmm.py", "--quick", "--device", "cuda"]
        memory = ["--depths", "10,100,1000", "--nodes", "5000", "--edges", "50000", "--channels", "64",
                  "--steps", "1", "--no-profile", "--timeout", "40"]
        quick_epochs, rev = ["train.epochs=3"], ["train.epochs=1"]
    gs = [py, "-m", "graphscale"]
    train = gs + ["train"]
    return [
        dict(name="a kernels", timeout=140 if not dry else 120, cmds=[kernels],
             env={"TRITON_INTERPRET": "1"} if dry else {}),
        dict(name="b spmm", timeout=90 if not dry else 100, cmds=[spmm + ["--out", str(out), "--tag", "spmm"]]),
        dict(name="c memory", timeout=120 if not dry else 150,
             cmds=[gs + ["bench", "memory-depth", "--device", dev, "--models", "reversible,deq,pyg-rev", *memory,
                         "--out", str(out), "--tag", "memory_depth"]]),
        dict(name="d quickstart", timeout=80 if not dry else 150,
             cmds=[train + ["configs/quickstart.yaml", f"train.device={dev}", *quick_epochs, *data, *tiny,
                            "--out", str(tmp / "quickstart")],
                   train + ["configs/quickstart-revgnn.yaml", f"train.device={dev}", "memory.compression=layers",
                            "memory.bits=2", *rev, *data, *tiny, "--out", str(tmp / "revgnn2bit")]]),
        dict(name="e nccl" if not dry else "e gloo", timeout=50 if not dry else 90,
             cmds=[train + ["configs/quickstart.yaml", "--nproc", "1", TRAIN_DIST_FLAG, f"train.device={dev}",
                            "train.epochs=1", *data, *tiny, "--out", str(tmp / "dist")]],
             needs_flag=TRAIN_DIST_FLAG),
    ]


# ------------------------------------------------------------------------------------------ running
def run_cmd(cmd: list[str], env_extra: dict, timeout: float, log) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # compiled Triton unless the step asks for the interpreter
    env.pop("GRAPHSCALE_TRITON_CONFIG", None)
    env.update(env_extra)
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        err = exc.stderr or ""
        text = (out.decode() if isinstance(out, bytes) else out) + (err.decode() if isinstance(err, bytes) else err)
        rc, text = 124, text + f"\n[device_check] timed out after {timeout:.0f} s\n"
    secs = time.perf_counter() - t0
    log.write(text)
    log.write(f"[device_check] exit {rc} after {secs:.1f} s\n")
    log.flush()
    return rc, text, secs


def flag_available(flag: str) -> bool:
    proc = subprocess.run([sys.executable, "-m", "graphscale", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return flag in proc.stdout


# ------------------------------------------------------------------------------------------ reading results
def _load(path: pathlib.Path) -> dict:
    if not path.exists():
        raise StepFailed(f"expected result file {path} is missing")
    with open(path) as fh:
        return json.load(fh)


def read_kernels(text: str) -> dict:
    last = [line for line in text.strip().splitlines() if " passed" in line or " failed" in line]
    summary = last[-1] if last else ""
    if " passed" not in summary or "failed" in summary or "error" in summary:
        raise StepFailed(f"kernel tests did not all pass: {summary or 'no pytest summary'}")
    return {"pytest": summary.strip("= ")}


def read_spmm(out: pathlib.Path, dry: bool) -> tuple[dict, list]:
    rows = _load(out / "spmm.json")["rows"]
    ours = "graphscale-triton" if any(r["impl"] == "graphscale-triton" for r in rows) else "graphscale"
    nums, targets = {}, []
    for graph in sorted({r["graph"] for r in rows}):
        def t(op, impl):
            hit = [r["min_ms"] for r in rows if r["graph"] == graph and r["op"] == op and r["impl"] == impl
                   and r["level"] == "op"]
            return hit[0] if hit else None
        g = graph
        sum_ours, sum_cusparse = t("sum", ours), t("sum", "torch.sparse.mm")
        if sum_ours is not None and sum_cusparse is not None:
            ratio = sum_ours / sum_cusparse
            nums[f"{g} sum {ours} / torch.sparse.mm"] = round(ratio, 3)
            targets.append((f"{g}: SpMM sum within 1.2x of torch.sparse.mm", ratio <= 1.2,
                            f"{sum_ours:.2f} ms vs {sum_cusparse:.2f} ms ({ratio:.2f}x)"))
        sm_ours, sm_pyg = t("softmax", ours), t("softmax", "pyg.SoftmaxAggregation")
        if sm_ours is not None and sm_pyg is not None:
            ratio = sm_ours / sm_pyg
            nums[f"{g} softmax {ours} / PyG"] = round(ratio, 3)
            targets.append((f"{g}: softmax aggregation faster than PyG's", ratio < 1.0,
                            f"{sm_ours:.2f} ms vs {sm_pyg:.2f} ms ({ratio:.2f}x)"))
        elif sm_ours is not None:
            nums[f"{g} softmax {ours} ms"] = sm_ours
    if not nums:
        raise StepFailed("spmm.json holds no comparable rows (sum vs torch.sparse.mm, softmax vs PyG)")
    return nums, targets


def read_memory(out: pathlib.Path) -> tuple[dict, list]:
    rows = _load(out / "memory_depth.json")["rows"]
    errs = [f"{r['model']}@{r['depth']}: {r['error']}" for r in rows if r.get("error")]
    if errs:
        raise StepFailed("memory-depth configurations failed: " + "; ".join(errs)[:500])
    nums, targets = {}, []
    kind = rows[0].get("peak_kind", "?") if rows else "?"
    for model in ("reversible", "deq", "pyg-rev"):
        mr = sorted((r for r in rows if r["model"] == model), key=lambda r: r["depth"])
        if len(mr) < 2:
            raise StepFailed(f"memory-depth has {len(mr)} rows for {model}; expected one per depth")
        act = [r["peak_bytes"] - 2 * r["param_bytes"] for r in mr]
        nums[f"{model} peak MiB by depth ({kind})"] = {r["depth"]: round(r["peak_bytes"] / 2**20, 1) for r in mr}
        nums[f"{model} s/step by depth"] = {r["depth"]: round(r["step_s"], 3) for r in mr}
        if model == "reversible":
            growth = act[-1] / max(act[0], 1)
            targets.append((f"reversible memory flat in depth ({kind} minus 2x params)", growth <= 1.25,
                            f"depth {mr[0]['depth']}: {act[0] / 2**20:.1f} MiB, depth {mr[-1]['depth']}: "
                            f"{act[-1] / 2**20:.1f} MiB ({growth:.2f}x)"))
    return nums, targets


def read_train(folder: pathlib.Path, want_backend: str | None = None) -> dict:
    res = _load(folder / "results.json")
    nums = {"seconds": round(res["seconds"], 2), "peak MiB": round(res["peak_memory_bytes"] / 2**20, 1),
            "device": res["device"], res.get("metric", "metric"): res.get("test_at_best_valid")}
    if want_backend is not None:
        backend = (res.get("distributed") or {}).get("backend")
        if backend != want_backend:
            raise StepFailed(f"{folder.name}: expected a {want_backend} process group, results.json says {backend}")
        nums["backend"] = backend
    return nums


# ------------------------------------------------------------------------------------------ main
def check_outdir(out: pathlib.Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"device_check: OUTDIR {out} exists and is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)


def preflight(dry: bool) -> None:
    import importlib.util
    if not dry:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("device_check: no CUDA device is visible (use --dry-run for the CPU rehearsal)")
    missing = [m for m in ("triton", "torch_geometric", "ogb", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"device_check: missing Python packages {missing}; on the lent GPU machine carry them as "
                         f"wheels (docs/ops.md, GPU verification)")


def table(results: list[dict]) -> str:
    lines = [f"{'step':14s} {'status':28s} {'seconds':>8s}  numbers / targets"]
    for r in results:
        lines.append(f"{r['step']:14s} {r['status']:28s} {r.get('seconds', 0):8.1f}  "
                     + "; ".join(f"{k}: {v}" for k, v in r.get("numbers", {}).items()))
        for what, met, detail in r.get("targets", []):
            lines.append(f"{'':14s} {'target ' + ('met' if met else 'NOT MET'):28s} {'':8s}  {what}: {detail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for the (at most 8) result files; must be new or empty")
    p.add_argument("--dry-run", action="store_true",
                   help="run the same steps on CPU at tiny sizes (Triton interpreter, gloo): tests this script")
    args = p.parse_args(argv)
    dry = args.dry_run
    out = pathlib.Path(args.outdir).resolve()
    check_outdir(out)
    preflight(dry)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="graphscale-device-check-"))
    results: list[dict] = []
    failed = None
    t_all = time.perf_counter()
    try:
        with open(out / "log.txt", "w") as log:
            for step in plan(dry, tmp, out):
                name = step["name"]
                res = {"step": name, "commands": [" ".join(c) for c in step["cmds"]], "timeout_s": step["timeout"]}
                results.append(res)
                if dry and step.get("needs_flag") and not flag_available(step["needs_flag"]):
                    res["status"] = f"skipped: needs flag {step['needs_flag']}"
                    msg = (f"[device_check] {name}: skipped: needs flag `graphscale train {step['needs_flag']}` "
                           f"(a 1-process job that still joins a process group; see docs/ops.md)")
                    print(msg, flush=True)
                    log.write(msg + "\n")
                    continue
                print(f"[device_check] {name} ...", flush=True)
                secs, text = 0.0, ""
                try:
                    left = step["timeout"]
                    for cmd in step["cmds"]:
                        rc, t, s = run_cmd(cmd, step.get("env", {}), max(left, 1), log)
                        secs += s
                        left -= s
                        text += t
                        if rc != 0:
                            tail = "\n".join(t.strip().splitlines()[-15:])
                            raise StepFailed(f"`{' '.join(cmd[:6])} ...` exited {rc}"
                                             f"{' (timeout)' if rc == 124 else ''}:\n{tail}")
                    res["seconds"] = round(secs, 1)
                    if name.startswith("a"):
                        res["numbers"] = read_kernels(text)
                    elif name.startswith("b"):
                        res["numbers"], res["targets"] = read_spmm(out, dry)
                    elif name.startswith("c"):
                        res["numbers"], res["targets"] = read_memory(out)
                    elif name.startswith("d"):
                        q, r = read_train(tmp / "quickstart"), read_train(tmp / "revgnn2bit")
                        res["numbers"] = {"quickstart": q, "revgnn 2-bit 1 epoch": r}
                    else:
                        res["numbers"] = read_train(tmp / "dist", "gloo" if dry else "nccl")
                    res["status"] = "ok"
                    if dry:  # numbers from CPU at tiny sizes say nothing about the GPU targets
                        res["targets"] = [(w, m, d + " [dry run: not the target]") for w, m, d in res.get("targets", [])]
                except StepFailed as exc:
                    res["status"] = "FAILED"
                    res["seconds"] = round(secs, 1)
                    res["error"] = str(exc)
                    failed = (name, str(exc))
                    break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"dry_run": dry, "wall_s": round(time.perf_counter() - t_all, 1), "steps": results,
           "failed_step": failed[0] if failed else None}
    try:
        import torch
        doc["device"] = torch.cuda.get_device_name(0) if (not dry and torch.cuda.is_available()) else "cpu"
        doc["versions"] = {"torch": torch.__version__, "python": sys.version.split()[0]}
        import triton
        doc["versions"]["triton"] = triton.__version__
    except Exception:  # reporting only
        pass
    for r in results:
        r["targets"] = [{"target": w, "met": m, "detail": d} for w, m, d in r.get("targets", [])]
    with open(out / "summary.json", "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
    for r in results:
        r["targets"] = [(t["target"], t["met"], t["detail"]) for t in r["targets"]]
    print("\n" + table(results))
    files = [f for f in out.rglob("*") if f.is_file()]
    print(f"\n{len(files)} files in {out} ({doc['wall_s']:.0f} s){' [dry run]' if dry else ''}")
    if len(files) > MAX_FILES:
        print(f"device_check: FAILED: {len(files)} files under {out}, more than {MAX_FILES}", file=sys.stderr)
        return 1
    if failed:
        print(f"\ndevice_check: FAILED at step '{failed[0]}': {failed[1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
