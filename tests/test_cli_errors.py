"""Every bad input found by the hardening review (issue 18), through the real command line.

Each row runs ``python -m graphscale ...`` in a fresh process and asserts: a non-zero exit, no
``Traceback`` on stderr, and the bad value (or file) named in the message. Rows that need a file
prepare it in ``setup``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

TINY = ["data.name=synthetic-proteins", "data.num_nodes=300", "data.avg_degree=6", "data.num_communities=8",
        "model.hidden_channels=8", "model.num_layers=2", "sampler.num_parts=2", "train.epochs=1",
        "log.progress=false", "train.device=cpu"]


def _ckpt_folder(tmp, content: bytes | None = None, obj=None):
    out = tmp / "run"
    out.mkdir()
    if obj is not None:
        torch.save(obj, out / "checkpoint.pt")
    else:
        (out / "checkpoint.pt").write_bytes(content)
    return str(out)


def _yaml(tmp, text):
    p = tmp / "c.yaml"
    p.write_text(text)
    return str(p)


def _data_file(tmp, obj=None, **drop):
    """A small torch_geometric Data saved to a file (or ``obj`` instead); ``drop`` / change fields."""
    from torch_geometric.data import Data
    if obj is None:
        fields = dict(x=torch.randn(6, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]),
                      y=torch.tensor([0, 1, 0, 1, 0, 1]), split={"train": torch.tensor([0, 1]),
                                                                 "valid": torch.tensor([2, 3]), "test": torch.tensor([4, 5])})
        fields.update(drop)
        obj = Data(**{k: v for k, v in fields.items() if v is not None})
    path = tmp / "graph.pt"
    torch.save(obj, path)
    return f"data.path={path}"


USER = ["data.name=pyg", "model.hidden_channels=8", "sampler.name=full", "model.name=gcn", "train.epochs=1",
        "log.progress=false", "train.device=cpu"]


def _under_a_file(tmp):
    f = tmp / "a-file"
    f.write_text("x")
    return str(f / "out")


def _non_empty(tmp):
    d = tmp / "full"
    d.mkdir()
    (d / "something").write_text("x")
    return str(d)


def _old_store(tmp):
    d = tmp / "old-store"
    d.mkdir()
    (d / "meta.json").write_text('{"format": "graphscale-partitioned-store", "version": 99}')
    return str(d)


def _one_part_store(tmp):
    """A store's meta.json with one part (the process count is checked before any part is opened)."""
    import hashlib
    import json
    d = tmp / "one-part"
    d.mkdir()
    data = {"name": "synthetic-proteins", "num_nodes": 300, "avg_degree": 6, "num_communities": 8}
    meta = {"format": "graphscale-partitioned-store", "version": 1, "dataset": "synthetic-proteins",
            "data_config": data, "fingerprint": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "num_nodes": 300, "num_edges": 1800, "num_features": 8, "num_outputs": 112, "edge_dim": 8,
            "task": "multilabel", "metric": "rocauc", "evaluator": "ogbn-proteins", "method": "metis",
            "num_parts": 1, "seed": 0, "halo": 0, "parts": [{}], "files": {}, "split_sizes": {}}
    (d / "meta.json").write_text(json.dumps(meta))
    return str(d)


# (id, setup(tmp) -> argv after "graphscale", text that must appear in stderr)
CASES = [
    ("override-not-a-number", lambda t: ["train", *TINY, "train.lr=abc"], "'abc'"),
    ("override-named-as-source", lambda t: ["train", _yaml(t, "train:\n  lr: 0.1\n"), "train.lr=fast"],
     "command-line override 'train.lr=fast'"),
    ("yaml-line-named", lambda t: ["train", _yaml(t, "train:\n  epochs: 2\n  lr: fast\n")], "c.yaml:3"),
    ("empty-yaml", lambda t: ["train", _yaml(t, "")], "holds no settings"),
    ("misspelt-key", lambda t: ["train", *TINY, "model.num_layer=3"], "did you mean 'num_layers'"),
    ("unused-key", lambda t: ["train", *TINY, "model.name=deq-gnn"], "model.num_layers is set"),
    ("model-conv-unknown", lambda t: ["train", *TINY, "model.name=revgnn", "model.conv=dgl"], "'dgl'"),
    ("nproc-0", lambda t: ["train", *TINY, "--nproc", "0"], "--nproc 0"),
    ("nproc-negative", lambda t: ["train", *TINY, "--nproc", "-1"], "--nproc -1"),
    ("cuda-without-cuda", lambda t: ["train", *TINY, "train.device=cuda"], "train.device='cuda'"),
    # multi-node launch (--nnodes ...) and train.data_prep: checked before torchrun starts
    ("nnodes-0", lambda t: ["train", *TINY, "--nnodes", "0"], "--nnodes 0"),
    ("nnodes-without-endpoint", lambda t: ["train", *TINY, "--nnodes", "2", "--node-rank", "0"],
     "needs --rdzv-endpoint HOST:PORT"),
    ("rdzv-endpoint-without-port", lambda t: ["train", *TINY, "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint",
                                              "node0"], "--rdzv-endpoint 'node0'"),
    ("node-rank-out-of-range", lambda t: ["train", *TINY, "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint",
                                          "127.0.0.1:29500"], "--node-rank 2"),
    ("node-rank-without-nnodes", lambda t: ["train", *TINY, "--node-rank", "1"], "--node-rank given with --nnodes 1"),
    ("c10d-without-rdzv-id", lambda t: ["train", *TINY, "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                        "127.0.0.1:29500"], "needs --rdzv-id"),
    ("bad-data-prep", lambda t: ["train", *TINY, "train.data_prep=disk"], "'disk'"),
    ("resume-nothing", lambda t: ["train", *TINY, "--out", str(t / "none"), "--resume"], "no checkpoint"),
    ("resume-truncated", lambda t: ["train", *TINY, "--out", _ckpt_folder(t, b"PK\x03\x04" + b"\0" * 20), "--resume"],
     "checkpoint.pt is not a readable graphscale checkpoint"),
    ("resume-zero-bytes", lambda t: ["train", *TINY, "--out", _ckpt_folder(t, b""), "--resume"], "checkpoint.pt is empty"),
    ("resume-random", lambda t: ["train", *TINY, "--out", _ckpt_folder(t, os.urandom(999)), "--resume"],
     "checkpoint.pt is not a readable"),
    ("resume-empty-dict", lambda t: ["train", *TINY, "--out", _ckpt_folder(t, obj={}), "--resume"],
     "checkpoint.pt is not a graphscale checkpoint"),
    ("out-under-a-file", lambda t: ["train", *TINY, "--out", _under_a_file(t)], "cannot create the output folder"),
    ("data-root-under-a-file", lambda t: ["train", *TINY, f"data.root={_under_a_file(t)}", "--out", str(t / "o")],
     "cannot write the synthetic data set under"),
    ("synth-root-under-a-file", lambda t: ["data", "synth", "--root", _under_a_file(t)],
     "cannot write the synthetic data set under"),
    ("bad-like", lambda t: ["train", *TINY, "data.like=ogbn-papers100m"], "'ogbn-papers100m' is not one of"),
    # the user's own graph (docs/user-data.md): named file, field and value, before training
    ("pyg-no-file", lambda t: ["train", *USER, f"data.path={t / 'missing.pt'}"], "missing.pt': no such file"),
    ("pyg-not-a-data", lambda t: ["train", *USER, _data_file(t, obj={"x": torch.ones(2)})],
     "graph.pt' holds a dict (keys: x), not a torch_geometric.data.Data"),
    ("pyg-missing-y", lambda t: ["train", *USER, _data_file(t, y=None)], "the Data has no 'y'"),
    ("pyg-label-negative", lambda t: ["train", *USER, _data_file(t, y=torch.tensor([0, -3, 0, 1, 0, 1]))],
     "y is negative (-3) at node 1"),
    ("pyg-edge-out-of-range", lambda t: ["train", *USER, _data_file(t, edge_index=torch.tensor([[0, 1], [1, 6]]))],
     "edge_index holds node ids in [0, 6], expected [0, 5]"),
    ("pyg-without-path", lambda t: ["train", *USER], "data.name=pyg needs data.path=FILE"),
    ("path-with-cora", lambda t: ["train", *TINY, "data.path=x.pt"], "data.path is set"),
    ("class-not-importable", lambda t: ["train", *USER[1:], "data.name=no_such_module_gs:Graphs"],
     "cannot import module 'no_such_module_gs'"),
    # train.precision (docs/precision.md): a precision the device cannot run, or a mode that has none
    ("fp16-on-cpu", lambda t: ["train", *TINY, "train.precision=fp16"], "fp16 autocast needs CUDA"),
    ("precision-layerwise", lambda t: ["train", "train.mode=layerwise", "model.name=lgcn", "train.precision=bf16",
                                       "train.device=cpu"], "train.precision is set"),
    ("precision-unknown", lambda t: ["train", *TINY, "train.precision=fp8"], "'fp8' is not one of"),
    # graphscale bench memory-depth: bad depths are named before anything is measured or written
    ("bench-empty-depths", lambda t: ["bench", "memory-depth", "--depths", "", "--models", "reversible", "--out",
                                      str(t / "b")], "--depths ''"),
    ("bench-bad-depths", lambda t: ["bench", "memory-depth", "--quick", "--depths", "0,-1,abc", "--out", str(t / "b")],
     "'abc'"),
    # graphscale gntk: every option is checked before any data is read or written
    ("gntk-c-grid-0", lambda t: ["gntk", "--dataset", "MUTAG", "--data", str(t), "--cv", "--c-grid", "0"], "--c-grid"),
    ("gntk-cuda-without-cuda", lambda t: ["gntk", "--dataset", "MUTAG", "--data", str(t), "--device", "cuda"],
     "cuda"),
    ("gntk-out-under-a-file", lambda t: ["gntk", "--dataset", "MUTAG", "--data", str(t), "--out",
                                         _under_a_file(t) + ".npy"], "a-file"),
    ("gntk-layers-0", lambda t: ["gntk", "--dataset", "MUTAG", "--data", str(t), "--layers", "0"], "--layers"),
    # graphscale data partition / data.partitions (issue 19): options and stores checked before training
    ("partition-parts-0", lambda t: ["data", "partition", _yaml(t, "data:\n  name: cora\n"), "--parts", "0", "--out",
                                     str(t / "s")], "--parts 0"),
    ("partition-bad-method", lambda t: ["data", "partition", _yaml(t, "data:\n  name: cora\n"), "--parts", "2",
                                        "--method", "metiss", "--out", str(t / "s")], "'metiss'"),
    ("partition-halo-2", lambda t: ["data", "partition", _yaml(t, "data:\n  name: cora\n"), "--parts", "2", "--halo",
                                    "2", "--out", str(t / "s")], "--halo 2"),
    ("partition-out-not-empty", lambda t: ["data", "partition", _yaml(t, "data:\n  name: cora\n"), "--parts", "2",
                                           "--out", _non_empty(t)], "is not empty; pass --overwrite"),
    ("partition-parts-over-n", lambda t: ["data", "partition", _yaml(t, "data:\n  name: synthetic-proteins\n"),
                                          *TINY[:4], f"data.root={t}", "--parts", "100000", "--out", str(t / "s")],
     "larger than the number of nodes (300)"),
    ("store-missing", lambda t: ["train", *TINY, "sampler.name=cluster", f"data.partitions={t}/nowhere"],
     "nowhere' does not exist"),
    ("store-other-version", lambda t: ["train", *TINY, "sampler.name=cluster", f"data.partitions={_old_store(t)}"],
     "format version 99"),
    ("store-fewer-parts-than-processes", lambda t: ["train", *[o for o in TINY if "num_parts" not in o],
                                                    "sampler.name=cluster",
                                                    f"data.partitions={_one_part_store(t)}", "--nproc", "2"],
     "2 processes but the store has only 1 part(s)"),
    ("store-with-full-sampler", lambda t: ["train", *TINY, "sampler.name=full", f"data.partitions={t}"],
     "sampler.name=full"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message(case, tmp_path):
    name, setup, expected = case
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("CUDA is available here: the without-CUDA error cannot happen")
    argv = setup(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "graphscale", *argv], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(tmp_path))
    assert proc.returncode != 0, (name, proc.stdout[-1000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "weights_only=False" not in proc.stderr
