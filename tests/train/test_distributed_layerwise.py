"""Layer-wise training (L-GCN / L2-GCN) under DDP: 2 gloo processes equal 1 process.

One ``torchrun`` launch with this file as the worker script (``python tests/train/test_distributed_layerwise.py
layerwise ...``) runs ``graphscale train`` (the CLI entry, inside the ranks) twice: L-GCN with dropout and a
global batch that does not split evenly (shares of 25/25 and a last batch of odd size), and L2-GCN with a
controller file. The same configs then run in this process (1 process) and the parameters must agree.

Rank 1 is given a stopping rule that disagrees with rank 0's (L-GCN: stop after every epoch; L2-GCN: never
stop): the run only completes, with rank 0's schedule, because the stop decision is rank 0's, broadcast.
The same launch also kills the L-GCN run at the start of layer 2 and resumes it on 2 processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
TIMEOUT = 180

BASE = ["train.mode=layerwise", "data.name=synthetic-arxiv", "data.num_nodes=400", "data.avg_degree=6",
        "data.num_communities=8", "data.num_features=16", "data.num_classes=4", "model.hidden_channels=8",
        "model.num_layers=2", "train.batch_size=51", "train.eval_every=2", "train.device=cpu",
        "train.dist_timeout=60", "log.progress=false"]
RUNS = {
    # dropout masks are drawn for the global batch, so they match the 1-process run too
    "lgcn": ["model.dropout=0.3", "train.layer_epochs=3", "train.storage=mmap"],
    "l2gcn": ["model.dropout=0.0", "train.layer_epochs=5", "train.controller=l2o", "train.l2o_min_epochs=2",
              "train.l2o_decision_step=2", "train.l2o_hidden=8"],
}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _args(name, root, out, ctrl):
    extra = [f"train.controller_path={ctrl}"] if name == "l2gcn" else []
    return BASE + RUNS[name] + extra + [f"data.root={root}", f"log.out={out}"]


def _controller(path):
    """A controller file that stops a layer at its first decision (P(stop) ~ 1): epoch 2 of 5."""
    from graphscale.train.l2gcn_controller import NUM_FEATURES, StopController, save_controller
    torch.manual_seed(0)
    ctrl = StopController(NUM_FEATURES, 8)
    torch.nn.init.constant_(ctrl.decoder.bias, 10.0)
    save_controller(ctrl, path)


def test_layerwise_two_processes_equal_one_process(tmp_path):
    from graphscale.train.config import load_config
    from graphscale.train.distributed import torchrun_command
    from graphscale.train.api import train
    root, ctrl = str(tmp_path / "data"), str(tmp_path / "ctrl.pt")
    _controller(ctrl)
    cmd = torchrun_command(2, [HERE], ["layerwise", root, str(tmp_path / "two"), ctrl], monitor_interval=0.1)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert proc.stdout.count("best valid") == len(RUNS) + 1, proc.stdout  # only rank 0 reports (+ the resumed run)
    print(f"2-process launch: {time.time() - t0:.1f} s")

    for name in RUNS:
        two, one = tmp_path / "two" / name, tmp_path / "one" / name
        ref = train(load_config(None, _args(name, root, str(one), ctrl)))
        res = json.load(open(two / "results.json"))
        assert res["distributed"]["world_size"] == 2 and res["distributed"]["backend"] == "gloo"
        assert res["layer_epochs_used"] == ref["layer_epochs_used"] == ([3, 3] if name == "lgcn" else [2, 2])
        # Replicas identical; the 2-process model equals the 1-process model to float rounding.
        r0, r1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: replicas diverged"
        a = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
        b = torch.load(two / "checkpoint.pt", weights_only=True)["model"]
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, f"{name}: max parameter difference {worst:.3g}"
        print(f"{name}: max |2-process - 1-process| parameter difference {worst:.3g}")
        # Epoch losses are reduced over ranks: the mean over the same training nodes.
        rows1 = [json.loads(r) for r in open(one / "log.jsonl")]
        rows2 = [json.loads(r) for r in open(two / "log.jsonl")]
        assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], rel=1e-5)
        assert res["best_valid"] == pytest.approx(ref["best_valid"], abs=1e-6)
        if name == "lgcn":
            assert os.listdir(two / "features") == []  # every rank removed its own mmap files

    # Killed after layer 1, resumed on 2 processes: the uninterrupted 2-process run, bit for bit.
    full, back = tmp_path / "two" / "lgcn", tmp_path / "two" / "lgcn-resumed"
    for f in ("checkpoint.pt", "best_model.pt"):
        a, b = (torch.load(d / f, weights_only=True) for d in (full, back))
        a, b = (x["model"] if "model" in x else x for x in (a, b))
        assert all(torch.equal(a[k], b[k]) for k in a), f
    assert open(full / "log.jsonl").read().count("\n") == 6
    assert [json.loads(r)["loss"] for r in open(full / "log.jsonl")] == \
        [json.loads(r)["loss"] for r in open(back / "log.jsonl")]


# --------------------------------------------------------------------------------- worker side
def _worker(argv: list[str]) -> int:
    mode, root, out, ctrl = argv
    if mode != "layerwise":
        raise SystemExit(f"unknown worker mode {mode!r}")
    import torch.distributed as dist

    from graphscale.cli import main
    from graphscale.train import l2gcn_controller, layerwise, layerwise_trainer
    dist.init_process_group("gloo")  # the trainer uses this group as it is
    rank = dist.get_rank()
    if rank == 1:  # a stopping rule that disagrees with rank 0's: it must not be consulted
        layerwise.FixedEpochs.observe = lambda self, epoch, loss: True
        l2gcn_controller.StopPolicy.observe = lambda self, epoch, loss: False
    real = layerwise_trainer.LayerwiseTrainer.run

    def run(self):
        results = real(self)
        torch.save(self.model.state_dict(), os.path.join(self.out, f"rank{rank}.pt"))
        return results

    layerwise_trainer.LayerwiseTrainer.run = run
    for name in RUNS:
        if main(["train", *_args(name, root, os.path.join(out, name), ctrl)]) != 0:
            return 1
    # L-GCN killed on every rank when layer 2 starts (after layer 1's checkpoint), then resumed.
    real_layer = layerwise_trainer.train_layer

    def killed(model, layer, *args, **kw):
        if layer == 1:
            dist.barrier()  # rank 0 has written layer 1's checkpoint (before this call) when rank 1 resumes
            raise KeyboardInterrupt("killed in layer 2")
        return real_layer(model, layer, *args, **kw)

    resumed = _args("lgcn", root, os.path.join(out, "lgcn-resumed"), ctrl)
    layerwise_trainer.train_layer = killed
    if main(["train", *resumed]) != 130:  # the CLI's exit status after a KeyboardInterrupt
        return 1
    layerwise_trainer.train_layer = real_layer
    if main(["train", *resumed, "--resume"]) != 0:
        return 1
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
