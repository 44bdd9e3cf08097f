"""The run lifecycle (graphscale.train.run): resume rules, unreadable checkpoints, files, stopping."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from graphscale.cli import main
from graphscale.errors import ConfigError
from graphscale.train.api import train
from graphscale.train.config import load_config
from graphscale.train.run import CheckpointError, RunFileError, load_checkpoint

TINY = ["data.name=synthetic-proteins", "data.num_nodes=400", "data.avg_degree=6", "data.num_communities=8",
        "model.hidden_channels=8", "model.num_layers=2", "sampler.num_parts=2", "train.epochs=2",
        "log.progress=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "done")
    train(_cfg(data_root, out))
    return out


def _cfg(data_root, out, *extra):
    return load_config(None, TINY + [f"data.root={data_root}", f"log.out={out}", *extra])


def _copy(src, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def test_resume_of_a_finished_run_rewrites_nothing(finished, data_root, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
    res = train(_cfg(data_root, out), resume=True)
    assert "already finished" in capsys.readouterr().err
    assert res == json.load(open(os.path.join(out, "results.json")))
    after = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
    assert after == before  # results.json (with its peak memory), config.yaml, log.jsonl untouched


def test_resume_extends_but_never_shrinks_a_run(finished, data_root, tmp_path):
    out = _copy(finished, tmp_path)
    with pytest.raises(ConfigError, match=r"train.epochs=1, but the checkpoint has already trained 2 epochs"):
        train(_cfg(data_root, out, "train.epochs=1"), resume=True)
    res = train(_cfg(data_root, out, "train.epochs=3"), resume=True)
    assert res["epochs"] == 3 and res["config"]["train"]["epochs"] == 3
    assert [json.loads(r)["epoch"] for r in open(os.path.join(out, "log.jsonl"))] == [1, 2, 3]


def test_peak_memory_is_the_largest_of_every_process(finished, data_root, tmp_path):
    out = _copy(finished, tmp_path)
    path = os.path.join(out, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    state["peak_memory_bytes"] = 10**13  # as if the first process had peaked at 10 TB
    torch.save(state, path)
    res = train(_cfg(data_root, out, "train.epochs=3"), resume=True)
    assert res["peak_memory_bytes"] == 10**13


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "empty-dict", "foreign-class"])
def test_unreadable_checkpoint_is_one_clear_line(finished, data_root, tmp_path, damage):
    out = _copy(finished, tmp_path)
    path = os.path.join(out, "checkpoint.pt")
    good = open(path, "rb").read()
    if damage == "truncated":
        open(path, "wb").write(good[: len(good) // 2])
    elif damage == "empty":
        open(path, "wb").close()
    elif damage == "random":
        open(path, "wb").write(os.urandom(4096))
    elif damage == "empty-dict":
        torch.save({}, path)
    else:  # a pickled object of a class weights_only loading refuses
        torch.save({"config": {}, "x": ValueError("not a tensor")}, path)
    with pytest.raises(CheckpointError) as info:
        train(_cfg(data_root, out, "train.epochs=3"), resume=True)
    msg = str(info.value)
    assert path in msg and "--resume from an earlier good checkpoint" in msg and "\n" not in msg
    assert "weights_only=False" not in msg  # never advise unsafe loading of a file from anywhere


def test_load_checkpoint_reads_a_good_one(finished):
    state = load_checkpoint(os.path.join(finished, "checkpoint.pt"))
    assert state["epoch"] == 2 and state["finished"] is True and state["config"]["train"]["epochs"] == 2


def test_stale_temp_files_are_removed_on_resume(finished, data_root, tmp_path):
    out = _copy(finished, tmp_path)
    stale = os.path.join(out, ".checkpoint.pt.k1ll3d")
    open(stale, "wb").write(b"half a checkpoint")
    train(_cfg(data_root, out, "train.epochs=3"), resume=True)
    assert not os.path.exists(stale)


def test_disk_full_is_a_clear_error_and_keeps_the_checkpoint(finished, data_root, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path)
    good = open(os.path.join(out, "checkpoint.pt"), "rb").read()

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunFileError, match=r"cannot write .*: No space left on device \(the previous checkpoint is "
                                           r"intact"):
        train(_cfg(data_root, out, "train.epochs=3"), resume=True)
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == good
    assert not [f for f in os.listdir(out) if f.startswith(".")]


def test_files_get_the_usual_mode(finished):
    mask = os.umask(0)
    os.umask(mask)
    for f in ("results.json", "checkpoint.pt", "config.yaml", "best_model.pt"):
        assert stat.S_IMODE(os.stat(os.path.join(finished, f)).st_mode) == 0o666 & ~mask, f


def test_epoch_lines_when_progress_bars_are_off(data_root, tmp_path, capsys):
    assert main(["train", *TINY, f"data.root={data_root}", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2  loss " in out and "epoch 2/2  loss " in out and "valid rocauc" in out


def _workers_of(out: str) -> list[int]:
    """pids of live processes whose command line names ``out`` (the launcher's workers)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if out in cmd and state != "Z" and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_launcher_stops_every_worker(data_root, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "graphscale", "train", *TINY, "train.epochs=200", f"data.root={data_root}",
           "train.dist_timeout=60", "--out", out, "--nproc", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = os.path.join(out, "log.jsonl")
        for _ in range(3000):  # wait (at most ~5 min on a loaded machine) until a checkpointed epoch exists
            if os.path.exists(log) and os.path.getsize(log) > 0 and os.path.exists(os.path.join(out, "checkpoint.pt")):
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        assert len(_workers_of(out)) >= 2  # torchrun and its two workers name the folder
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)  # the bound: every worker gone within 10 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped (SIGTERM); all 2 workers ended" in err and "--resume" in err
    assert "failing rank's message" not in err
    assert _workers_of(out) == []
    state = load_checkpoint(os.path.join(out, "checkpoint.pt"))  # the last checkpoint is whole
    assert state["epoch"] >= 1 and not os.path.exists(os.path.join(out, "results.json"))


def test_distributed_flag_runs_one_process_under_ddp(data_root, tmp_path):
    import torch.distributed as dist

    before = dict(os.environ)
    res = train(_cfg(data_root, str(tmp_path / "d"), "train.distributed=true", "train.epochs=1"))
    assert res["distributed"]["world_size"] == 1 and res["distributed"]["backend"] == "gloo"
    assert not dist.is_initialized()  # the group it made is gone again
    assert dict(os.environ) == before  # the rendezvous did not leak torchrun variables into this process
