"""Multi-process training on CPU: 2 gloo processes on 127.0.0.1 (free ports), tiny synthetic graph.

The multi-process runs are real ``torchrun`` launches: through ``graphscale train --nproc 2``, or with
this file as the worker script (``python tests/train/test_distributed.py MODE ...``, see ``_worker``)
where a test needs to reach inside the ranks (a rank that dies, ranks given different configs,
models checked rank by rank).

Equivalence checked here: a 2-process run (``grad_accum=1``) equals a 1-process run with
``grad_accum=2`` over the same epochs: both average the gradients of the same consecutive pairs of
steps of each epoch (3 parts padded to 4), so the parameters agree to float rounding.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

TINY = ["data.name=synthetic-proteins", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
        "model.hidden_channels=8", "model.num_layers=2", "model.dropout=0.0", "sampler.num_parts=3",
        "sampler.eval_name=random", "sampler.eval_parts=3", "train.epochs=4", "log.progress=false",
        "train.device=cpu", "train.dist_timeout=60"]
# Each model family (and the Cluster-GCN sampler) under DDP: name -> extra overrides. Dropout 0 so
# runs are comparable.
def _base(name: str) -> list[str]:
    """TINY without the keys model ``name`` does not read (DEQ-GNN has no layer count)."""
    return [o for o in TINY if not (name == "deq-gnn" and o.startswith("model.num_layers="))]


MODEL_CASES = {
    "deepergcn": [],
    "revgnn": ["model.name=revgnn", "model.num_groups=2", "model.num_layers=3"],
    "wt-revgnn": ["model.name=wt-revgnn", "model.num_groups=2", "model.num_layers=3"],
    "deq-gnn": ["model.name=deq-gnn", "model.max_iter=15"],
    "compressed": ["memory.compression=layers", "memory.bits=2"],
    # Cluster-GCN batches: METIS computed and cached by rank 0 first, read by rank 1.
    "cluster": ["sampler.name=cluster", "sampler.partitioner=metis", "sampler.num_parts=5"],
}
TIMEOUT = 300  # seconds for any one launch (about 40 s on a quiet 2-core machine); a hang fails the test


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd, env=None, timeout=TIMEOUT):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=REPO)


def _worker_cmd(mode, *args, nproc=2):
    from graphscale.train.distributed import torchrun_command
    return torchrun_command(nproc, [HERE], [mode, *args], monitor_interval=0.1)


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def _model(out):
    """The final parameters of a run (the model in its last checkpoint)."""
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


def _close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= atol, f"max parameter difference {worst:.3g} > {atol}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def two_proc_run(data_root, tmp_path_factory):
    """``graphscale train --nproc 2`` on the tiny graph (the reference of several tests)."""
    out = str(tmp_path_factory.mktemp("two") / "run")
    proc = _run([sys.executable, "-m", "graphscale", "train", *TINY, f"data.root={data_root}", "--out", out,
                    "--nproc", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


# --------------------------------------------------------------------------------- pure logic, in-process
def test_deal_round_robin_pads_by_repeating():
    from graphscale.train.distributed import deal, local_steps
    # 5 steps, 2 ranks: padded to 6 by repeating step 0; every rank takes 3.
    assert list(deal(range(5), 5, 0, 2)) == [0, 2, 4]
    assert list(deal(range(5), 5, 1, 2)) == [1, 3, 0]
    # grad_accum 2 on 2 ranks: groups of 4 -> 8 steps (0..4, then 0, 1, 2 again).
    assert list(deal(range(5), 5, 0, 2, 2)) == [0, 2, 4, 1] and list(deal(range(5), 5, 1, 2, 2)) == [1, 3, 0, 2]
    # fewer steps than ranks: cyclic repetition.
    assert list(deal(range(1), 1, 2, 3)) == [0] and local_steps(1, 3) == 1
    # one process, one group: the epoch unchanged; the union over ranks covers every step.
    assert list(deal(range(4), 4, 0, 1)) == [0, 1, 2, 3]
    assert sorted(x for r in range(3) for x in deal(range(7), 7, r, 3)) == sorted(list(range(7)) + [0, 1])
    with pytest.raises(Exception, match="yielded 2 steps but announced 3"):
        list(deal(range(2), 3, 0, 2))


def test_sign_packing_roundtrip_and_bytes():
    from graphscale.train.comm_hooks import compress_sign, pack_signs, unpack_signs
    x = torch.randn(1001)
    packed = pack_signs(x)
    assert packed.dtype == torch.uint8 and packed.numel() == 126  # ceil(1001 / 8)
    assert torch.equal(unpack_signs(packed, 1001), torch.where(x >= 0, 1.0, -1.0))
    _, scale, decoded = compress_sign(x)
    assert torch.allclose(scale, x.abs().mean()) and torch.equal(decoded.abs().unique(), scale)


def test_env_and_bad_input_messages():
    from graphscale.errors import ConfigError
    from graphscale.train.distributed import DistEnv, check_nproc
    assert not DistEnv.from_env({}).distributed and not DistEnv.from_env({"WORLD_SIZE": "1"}).distributed
    env = DistEnv.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.master_port) == (1, 2, 1, 29500)
    with pytest.raises(ConfigError, match="RANK=2 WORLD_SIZE=2"):
        DistEnv.from_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        DistEnv.from_env({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"})
    with pytest.raises(ConfigError, match=r"--nproc 100000 on CPU but this machine has \d+ CPU core"):
        check_nproc(100_000, "cpu")
    with pytest.raises(ConfigError, match=r"--nproc 2 but only 0 CUDA device"):
        check_nproc(2, "cuda")


def test_cli_rejects_bad_nproc_before_launching(capsys, tmp_path):
    from graphscale.cli import main
    assert main(["train", *TINY, f"data.root={tmp_path}/never", "--nproc", "100000"]) == 2
    assert "--nproc 100000 on CPU" in capsys.readouterr().err
    # layer-wise training is distributed too (tests/train/test_distributed_layerwise.py); its checks run first
    lw = [o for o in TINY if not o.startswith(("sampler.", "train.epochs"))]  # keys the layer-wise mode does not read
    assert main(["train", *lw, "train.mode=layerwise", "train.layer_epochs=0", "--nproc", "2"]) == 2
    assert "train.layer_epochs must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", *lw, "train.mode=layerwise", "--nproc", "100000"]) == 2
    assert "--nproc 100000 on CPU" in capsys.readouterr().err
    assert not os.path.exists(f"{tmp_path}/never")


def _gloo_threads() -> int:
    return sum(open(f"/proc/self/task/{t}/comm").read().strip() == "pt_gloo_runloop"
               for t in os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_destroy_ends_the_group_while_a_ddp_wrapper_is_still_referenced(tmp_path):
    """The end of a run destroys the group there and then, not when the last DDP wrapper happens to be
    freed: a reducer that holds the last reference destroys the group with the GIL held and can hang
    the process at exit (DistContext.release_models). Measured by gloo's worker threads."""
    import torch._dynamo  # noqa: F401  imported after a group exists, it keeps references to that group
    import torch.distributed as dist

    from graphscale.train.distributed import DistContext, DistEnv, wrap_model
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ctx = DistContext(DistEnv(), torch.device("cpu"), "gloo", owns_group=True)
        ddp, _ = wrap_model(torch.nn.Linear(3, 2), ctx)
        ddp(torch.randn(4, 3)).sum().backward()
        assert _gloo_threads() > 0
        ctx.destroy()
        assert not dist.is_initialized() and _gloo_threads() == 0
        assert isinstance(ddp.module, torch.nn.Linear)  # the module inside is untouched
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------- 2-process launches
def test_two_processes_equal_one_process_with_grad_accum(two_proc_run, data_root, tmp_path):
    from graphscale.train.config import load_config
    from graphscale.train.api import train
    out2, proc = two_proc_run
    out1 = str(tmp_path / "one")
    ref = train(load_config(None, TINY + [f"data.root={data_root}", f"log.out={out1}", "train.grad_accum=2"]))
    res = json.load(open(os.path.join(out2, "results.json")))
    assert res["distributed"]["world_size"] == 2 and res["distributed"]["backend"] == "gloo"
    assert proc.stdout.count("best valid") == 1  # only the main rank reports
    # Same optimiser steps: parameters and the per-epoch loss agree to float rounding.
    _close(_model(out1), _model(out2), atol=1e-5)
    l1, l2 = [r["loss"] for r in _rows(out1)], [r["loss"] for r in _rows(out2)]
    assert l1 == pytest.approx(l2, rel=1e-5) and len(l2) == 4
    # Split evaluation (parts dealt over ranks, logits summed) scores like the 1-process evaluation.
    assert res["best_valid"] == pytest.approx(ref["best_valid"], abs=1e-4)


def test_dead_rank_stops_the_job_and_resume_continues_it(two_proc_run, data_root, tmp_path):
    ref, _ = two_proc_run
    out = str(tmp_path / "killed")
    env = dict(_env(), GS_TEST_CRASH_AT="5")  # rank 1 dies (os._exit) at its 5th training step = epoch 3
    # _run's timeout bounds the wait: a job that does not stop fails the test (no wall-clock assertion)
    proc = _run(_worker_cmd("train", *TINY, f"data.root={data_root}", "--out", out), env=env)
    assert proc.returncode != 0, proc.returncode
    err = proc.stderr
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", err) and re.search(r"exitcode\s*: 17", err), err[-3000:]
    # Rank 0 had finished epoch 2 (or, racing rank 1, was writing its files when stopped): nothing after it.
    assert [r["epoch"] for r in _rows(out)] in ([1], [1, 2]) and not os.path.exists(os.path.join(out, "results.json"))

    proc = _run([sys.executable, "-m", "graphscale", "train", *TINY, f"data.root={data_root}", "--out", out,
                 "--nproc", "2", "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Same world size, CPU: the resumed run is the uninterrupted one, bit for bit.
    assert [r["loss"] for r in _rows(ref)] == [r["loss"] for r in _rows(out)]
    a, b = _model(ref), _model(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_rendezvous_times_out_with_a_clear_message(tmp_path):
    from graphscale.train.distributed import free_port
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))  # rank 1 never starts
    proc = _run([sys.executable, "-m", "graphscale", "train", *TINY, "train.dist_timeout=3",
                 f"data.root={tmp_path}/d", "--out", str(tmp_path / "r")], env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rendezvous at 127.0.0.1" in proc.stderr and "did not complete within 3 s" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_deep_and_compressed_models_under_ddp(data_root, tmp_path):
    """Reversible (recomputation in backward), weight-tied, DEQ (implicit backward) and 2-bit compressed
    models train under DDP: ranks keep identical parameters, and (deterministic models) they equal the
    1-process run with grad_accum=2. Plus both communication hooks, with their bytes in results.json."""
    from graphscale.train.config import load_config
    from graphscale.train.api import train
    out = str(tmp_path / "models")
    proc = _run(_worker_cmd("models", data_root, out), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    for name, extra in MODEL_CASES.items():
        r0, r1 = (torch.load(os.path.join(out, f"{name}-rank{r}.pt"), weights_only=True) for r in (0, 1))
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: replicas diverged"
        if name == "compressed":  # stochastic rounding draws differ per rank: equal replicas is the claim
            continue
        one = str(tmp_path / f"one-{name}")
        train(load_config(None, _base(name) + extra + ["train.epochs=1", f"data.root={data_root}",
                                                       f"log.out={one}", "train.grad_accum=2"]))
        _close(_model(one), r0, atol=1e-4)

    # Communication hooks: bytes counted in the hook and reported by rank 0.
    sign = json.load(open(os.path.join(out, "signsgd", "results.json")))["distributed"]
    psgd = json.load(open(os.path.join(out, "powersgd", "results.json")))["distributed"]
    steps = sign["comm_steps"]
    assert steps == 4 * 2 and psgd["comm_steps"] == steps  # 4 epochs x 2 steps per rank
    assert sign["comm_uncompressed_bytes"] == steps * sign["allreduce_bytes_per_step"]
    # 1 bit per 32-bit value plus one float scale per parameter tensor (the tiny model is one bucket)
    sizes = json.load(open(os.path.join(out, "signsgd-tensors.json")))
    assert sum(sizes) * 4 == sign["allreduce_bytes_per_step"]
    assert sign["comm_bytes"] == steps * (-(-sum(sizes) // 8) + 4 * len(sizes))
    assert 1 < psgd["comm_compression"] < sign["comm_compression"]
    # Resume with a hook: its per-rank state comes back from the checkpoint, and the run is the
    # uninterrupted one (parameters and byte counts); without that state it is not.
    for hook in ("signsgd", "powersgd"):
        ref, back, cold = (_model(os.path.join(out, f"{hook}{s}")) for s in ("", "-resumed", "-stateless"))
        if hook == "signsgd":
            assert all(torch.equal(ref[k], back[k]) for k in ref), f"{hook}: resumed run differs"
        else:  # PowerSGD: bit-equal on the CI machine, 3e-8 apart on the 2026-12 dev machine (both commits)
            worst = max(float((ref[k] - back[k]).abs().max()) for k in ref if ref[k].is_floating_point())
            assert worst < 1e-6, f"{hook}: resumed run differs by {worst:.3g}"
        assert max(float((ref[k] - cold[k]).abs().max()) for k in ref if ref[k].is_floating_point()) > 1e-4, hook
        res = json.load(open(os.path.join(out, f"{hook}-resumed", "results.json")))["distributed"]
        want = json.load(open(os.path.join(out, hook, "results.json")))["distributed"]
        assert res == want, hook
    checks = json.load(open(os.path.join(out, "hook-checks.json")))
    assert checks["signsgd_step1_max_err"] < 1e-6 and checks["signsgd_step2_max_err"] < 1e-6

    # Ranks given different configs: every rank stops, the message names the rank and the key.
    for r in (0, 1):
        msg = open(os.path.join(out, f"mismatch-rank{r}.txt")).read()
        assert msg == "the ranks were given different configs: rank 1 (model.hidden_channels: 8 (rank 0) vs 16); " \
                      "every rank must get the same CONFIG and key=value overrides", msg
    assert not os.path.exists(os.path.join(out, "mismatch", "config.yaml"))  # nothing written


# --------------------------------------------------------------------------------- worker side
def _crash_after(steps: int):
    """Wrap the deepergcn builder so that rank 1 dies without cleanup at its ``steps``-th training step."""
    from graphscale.train import build
    original = build.MODELS["deepergcn"]

    def builder(cfg, info):
        model = original(cfg, info)
        count = [0]

        def pre_hook(module, args):
            if module.training:
                count[0] += 1
                if count[0] >= steps:
                    os._exit(17)
        model.register_forward_pre_hook(pre_hook)
        return model
    build.MODELS["deepergcn"] = builder


def _hook_checks(out: str) -> None:
    """signSGD hook on a Linear layer: the averaged gradient DDP receives equals mean_r scale_r * sign(g_r + e_r),
    with the error-feedback residual e carried to the next step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from graphscale.train.comm_hooks import SignState, compress_sign, signsgd_hook
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    lin = torch.nn.Linear(37, 3, bias=False)  # one parameter = one bucket, 111 values (not a multiple of 8)
    state = SignState()
    ddp = DDP(lin, bucket_cap_mb=1)
    ddp.register_comm_hook(state, signsgd_hook)
    residual, errs = None, []
    for step in range(2):
        x = torch.randn(5, 37, generator=torch.Generator().manual_seed(100 * step + rank))
        lin.zero_grad()
        ref = torch.nn.Linear(37, 3, bias=False)
        ref.load_state_dict(lin.state_dict())
        ref(x).pow(2).sum().backward()
        g = ref.weight.grad.reshape(-1)
        p = g if residual is None else g + residual
        _, _, decoded = compress_sign(p)
        residual = p - decoded
        gathered = [torch.empty_like(decoded) for _ in range(world)]
        dist.all_gather(gathered, decoded)
        expected = torch.stack(gathered).mean(0)
        ddp(x).pow(2).sum().backward()
        got = lin.weight.grad.reshape(-1)
        errs.append(float((got - expected).abs().max()))
    if rank == 0:
        with open(os.path.join(out, "hook-checks.json"), "w") as fh:
            json.dump({"signsgd_step1_max_err": errs[0], "signsgd_step2_max_err": errs[1],
                       "bytes": state.stats.bytes}, fh)


def _worker(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "train":  # graphscale train ARGS, with a crash injected on rank 1
        rank = int(os.environ["RANK"])
        if os.environ.get("GS_TEST_CRASH_AT") and rank == 1:
            _crash_after(int(os.environ["GS_TEST_CRASH_AT"]))
        from graphscale.cli import main
        return main(["train", *args])
    if mode == "models":
        import torch.distributed as dist

        from graphscale.errors import ConfigError
        from graphscale.train.config import load_config
        from graphscale.train.trainer import Trainer
        data_root, out = args
        dist.init_process_group("gloo")  # the trainer uses this group as it is
        rank = dist.get_rank()
        os.makedirs(out, exist_ok=True)
        _hook_checks(out)
        for name, extra in MODEL_CASES.items():
            cfg = load_config(None, _base(name) + extra + ["train.epochs=1", f"data.root={data_root}",
                                                    f"log.out={out}/{name}"])
            trainer = Trainer(cfg)
            trainer.run()
            torch.save(trainer.model.state_dict(), os.path.join(out, f"{name}-rank{rank}.pt"))
        mismatch = TINY + [f"data.root={data_root}", f"log.out={out}/mismatch"]
        try:
            Trainer(load_config(None, mismatch + ["model.hidden_channels=16"] * rank)).run()
        except ConfigError as exc:
            with open(os.path.join(out, f"mismatch-rank{rank}.txt"), "w") as fh:
                fh.write(str(exc))
        for hook in ("signsgd", "powersgd"):
            start = ["train.powersgd_start_iter=2"] if hook == "powersgd" else []  # a powersgd-only key
            hook_args = TINY + [f"train.comm_hook={hook}", *start, f"data.root={data_root}"]
            trainer = Trainer(load_config(None, hook_args + ["train.epochs=4", f"log.out={out}/{hook}"]))
            trainer.run()
            if rank == 0:
                with open(os.path.join(out, f"{hook}-tensors.json"), "w") as fh:
                    json.dump([p.numel() for p in trainer.model.parameters() if p.requires_grad], fh)
            # The same run stopped after epoch 2 and resumed, with the hook state from the checkpoint, and
            # (the contrast) resumed from a copy of that checkpoint without it. Epoch 2 is the first with
            # compressed steps (PowerSGD starts at step 3), so the checkpoint holds error feedback; DDP
            # rebuilds its buckets after its 2nd step (measured: the bucket's 22 tensors change order), so
            # the resumed run's epoch 3 uses the initial layout and epoch 4 the rebuilt one.
            part, stateless = f"{out}/{hook}-resumed", f"{out}/{hook}-stateless"
            Trainer(load_config(None, hook_args + ["train.epochs=2", f"log.out={part}"])).run()
            if rank == 0:
                import shutil
                shutil.copytree(part, stateless)
                ckpt = torch.load(os.path.join(stateless, "checkpoint.pt"), weights_only=True)
                assert len(ckpt.pop("comm_state")["ranks"]) == 2
                torch.save(ckpt, os.path.join(stateless, "checkpoint.pt"))
            dist.barrier()
            for folder in (part, stateless):
                Trainer(load_config(None, hook_args + ["train.epochs=4", f"log.out={folder}"]), resume=True).run()
        dist.destroy_process_group()
        return 0
    raise SystemExit(f"unknown worker mode {mode!r}")


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
