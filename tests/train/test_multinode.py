"""Multi-node launch (``graphscale train --nnodes K --node-rank R --rdzv-endpoint HOST:PORT``) and
``train.data_prep`` (who writes the data set first: each node's local rank 0, or rank 0 of the job).

Two "machines" are two torchrun agents on 127.0.0.1 (a static rendezvous on a free port), one process
each, started from two working folders: a relative ``data.root`` then names a different folder per
agent, as a local disk per machine would, while the config (and its hash, checked across ranks) stays
the same.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.name=synthetic-proteins", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
        "model.hidden_channels=8", "model.num_layers=2", "model.dropout=0.0", "sampler.num_parts=3",
        "sampler.eval_name=random", "sampler.eval_parts=3", "train.epochs=2", "log.progress=false",
        "train.device=cpu", "train.dist_timeout=60"]
TIMEOUT = 240  # seconds for one two-agent launch (about 20 s on a quiet 2-core machine); a hang fails the test


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _two_nodes(tmp_path, extra: list[str], base: list[str] = TINY) -> list[subprocess.CompletedProcess]:
    """Start node 0 and node 1 (one agent each, from ``tmp/node0`` and ``tmp/node1``); wait for both."""
    from graphscale.train.distributed import free_port
    port = free_port()
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "graphscale", "train", *base, "data.root=data", *extra, "--nproc", "1",
               "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}"]
        procs.append(subprocess.Popen(cmd, cwd=str(cwd), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _params_and_losses_agree(out1: str, out2: str, epochs: int) -> None:
    a = torch.load(os.path.join(out1, "checkpoint.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(out2, "checkpoint.pt"), weights_only=True)["model"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, f"max parameter difference {worst:.3g}"
    rows = [[json.loads(line)["loss"] for line in open(os.path.join(o, "log.jsonl"))] for o in (out1, out2)]
    assert rows[0] == pytest.approx(rows[1], rel=1e-5) and len(rows[1]) == epochs


# --------------------------------------------------------------------------------- pure logic, in-process
def test_nodes_checks_and_torchrun_arguments():
    from graphscale.errors import ConfigError
    from graphscale.train.distributed import Nodes, multinode_command
    ok = Nodes(2, 1, "127.0.0.1:29500")
    ok.check()
    cmd = multinode_command(4, ok, ["-m", "graphscale"], ["train", "c.yaml"], timeout_s=90)
    i = cmd.index("torch.distributed.run")
    assert cmd[i + 1:i + 11] == ["--nnodes", "2", "--rdzv-backend", "static", "--rdzv-endpoint", "127.0.0.1:29500",
                                 "--node-rank", "1", "--rdzv-conf", "timeout=90"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[-3:] == ["graphscale", "train", "c.yaml"]
    c10d = Nodes(3, None, "127.0.0.1:29500", "c10d", "job7")
    c10d.check()
    args = c10d.torchrun_args(30)
    assert "--node-rank" not in args and args[args.index("--rdzv-id") + 1] == "job7"
    one = multinode_command(2, Nodes(), ["x.py"], [])  # one node: the single-node launch on 127.0.0.1
    assert one[one.index("--nnodes") + 1] == "1" and one[one.index("--master-addr") + 1] == "127.0.0.1"
    bad = [(Nodes(0), "--nnodes 0"), (Nodes(2, 0), "needs --rdzv-endpoint"),
           (Nodes(2, 0, "nohost"), "expected HOST:PORT"), (Nodes(2, 0, "h:0"), "'h:0'"),
           (Nodes(2, 0, "127.0.0.1:70000"), "port in 1..65535"), (Nodes(2, None, "127.0.0.1:1"), "needs --node-rank"),
           (Nodes(2, 2, "127.0.0.1:1"), "--node-rank 2: expected 0 <= R < --nnodes 2"),
           (Nodes(1, 0), "--node-rank given with --nnodes 1"), (Nodes(1, None, "h:1"), "--rdzv-endpoint given"),
           (Nodes(2, 1, "127.0.0.1:1", "c10d", "j"), "c10d hands out node ranks"),
           (Nodes(2, None, "127.0.0.1:1", "c10d"), "needs --rdzv-id"),
           (Nodes(2, 0, "no-such-host.invalid:29500"), "does not resolve")]
    for nodes, msg in bad:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            nodes.check()


def test_prep_rank_per_node_or_per_job():
    from graphscale.errors import ConfigError
    from graphscale.train.distributed import DistEnv, is_prep_rank

    def env(rank, local):
        return DistEnv(rank, 4, local, "h", 1)
    # 2 nodes x 2 processes: ranks 0, 2 are local rank 0 of their nodes
    assert [is_prep_rank("node", env(r, r % 2)) for r in range(4)] == [True, False, True, False]
    assert is_prep_rank("job", env(0, 0)) and is_prep_rank("node", DistEnv())  # no process group: rank 0 alone
    with pytest.raises(ConfigError, match="train.data_prep='disk'"):
        is_prep_rank("disk")


def test_data_prep_is_a_declared_key():
    from graphscale.train.config import load_config
    from graphscale.train.schema import check_used_keys, usage_table
    check_used_keys(load_config(None, TINY + ["train.data_prep=job"]))  # set explicitly: read by every run
    assert "data_prep" in usage_table()


# --------------------------------------------------------------------------------- two agents on 127.0.0.1
def test_two_nodes_equal_one_process_with_grad_accum(tmp_path):
    """Node mode: each node's local rank 0 writes its own copy of the data set; the 2-node run takes
    the same optimiser steps as 1 process with grad_accum=2 (the single-node equivalence)."""
    from graphscale.train.api import train
    from graphscale.train.config import load_config
    out2 = str(tmp_path / "two-nodes")
    runs = _two_nodes(tmp_path, ["train.data_prep=node", f"log.out={out2}"])
    for node, r in enumerate(runs):
        assert r.returncode == 0, f"node {node}:\n" + r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 process(es)" in runs[0].stdout + runs[0].stderr and "best valid" in runs[0].stdout
    assert "best valid" not in runs[1].stdout  # node 1 holds no rank 0: it neither prints nor writes results
    for node in (0, 1):  # each "machine" prepared its own data set (local disks)
        assert glob.glob(str(tmp_path / f"node{node}" / "data" / "synthetic_proteins*" / "RELEASE_v1.txt")), node
    res = json.load(open(os.path.join(out2, "results.json")))
    assert res["distributed"]["world_size"] == 2
    out1 = str(tmp_path / "one")
    train(load_config(None, TINY + [f"data.root={tmp_path / 'node0' / 'data'}", f"log.out={out1}",
                                    "train.grad_accum=2"]))
    _params_and_losses_agree(out1, out2, 2)


@pytest.mark.slow
def test_job_mode_on_disks_that_are_not_shared_stops_every_rank(tmp_path):
    """Job mode: rank 0 alone writes; a node that does not see rank 0's files (here: another working
    folder, as another machine's local disk) stops the job with one message instead of racing to write."""
    runs = _two_nodes(tmp_path, ["train.data_prep=job", f"log.out={tmp_path / 'job'}"])
    assert all(r.returncode != 0 for r in runs)
    err = runs[0].stderr + runs[1].stderr
    assert "train.data_prep=job but" in err and "use train.data_prep=node" in err, err[-3000:]
    assert glob.glob(str(tmp_path / "node0" / "data" / "synthetic_proteins*"))
    assert not glob.glob(str(tmp_path / "node1" / "data" / "synthetic_proteins*"))  # node 1 wrote nothing


# a tiny synthetic-products set in 4 METIS parts, Cluster-GCN from the store
STORE_TINY = ["data.name=synthetic-products", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
              "data.num_features=16", "data.num_classes=5", "sampler.name=cluster", "sampler.num_parts=4",
              "sampler.clusters_per_batch=1", "model.name=gcn", "model.hidden_channels=16", "model.num_layers=2",
              "model.dropout=0.0", "train.epochs=2", "train.device=cpu", "log.progress=false",
              "train.dist_timeout=60"]


def test_two_nodes_from_a_store_read_only_their_parts(tmp_path):
    """``data.partitions``: part p goes to rank p mod 2, so node 1 (rank 1) needs only meta.json and parts
    1 and 3. Its copy of the store holds nothing else (parts 0, 2 and the node->part book removed, as a
    machine that was sent only its share): the run would stop with 'part-00000/... is missing' if
    node 1 opened another part. The result equals 1 process with grad_accum=2 on the full store."""
    from graphscale.cli import main
    from graphscale.train.api import train
    from graphscale.train.config import load_config
    full = tmp_path / "node0" / "store"
    (tmp_path / "node0").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  root: {tmp_path / 'data'}\n")
    assert main(["data", "partition", str(cfg), *STORE_TINY, "--out", str(full), "--no-progress"]) == 0
    share = tmp_path / "node1" / "store"
    shutil.copytree(full, share)
    for gone in ("part-00000", "part-00002"):
        shutil.rmtree(share / gone)
    os.remove(share / "book.npy")
    assert sorted(os.listdir(share)) == ["meta.json", "part-00001", "part-00003"]
    out2 = str(tmp_path / "two-nodes")
    runs = _two_nodes(tmp_path, ["data.partitions=store", f"log.out={out2}"], base=STORE_TINY)
    for node, r in enumerate(runs):
        assert r.returncode == 0, f"node {node}:\n" + r.stdout[-2000:] + r.stderr[-3000:]
    assert "this process holds parts 0, 2" in runs[0].stdout + runs[0].stderr
    out1 = str(tmp_path / "one")
    train(load_config(None, STORE_TINY + [f"data.partitions={full}", f"log.out={out1}", "train.grad_accum=2"]))
    _params_and_losses_agree(out1, out2, 2)
