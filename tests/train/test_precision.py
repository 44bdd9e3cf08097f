"""``train.precision`` (graphscale.train.precision): bf16 autocast on CPU through the models, the ops,
the quantizers and the trainer; the device checks.

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2% per value). Over a model's
forward and backward the flattened parameter gradient of a bf16-autocast step differs from the fp32
step (same weights, same dropout draw) by, measured here, 1.3-5.7% (3-layer DeeperGCN) and 1.8-6.0%
(4- and 16-layer RevGNN) of its norm (docs/precision.md); the tests allow 10% and 15%. A wrong dtype path (a recompute in fp32,
a cast lost) fails with an error or differs by O(1).
"""
from __future__ import annotations

import pytest
import torch

from graphscale.errors import ConfigError
from graphscale.train.build import DatasetInfo, build_model
from graphscale.train.config import ModelConfig, load_config
from graphscale.train.precision import Precision, check_precision


def _graph(n=300, e=2400, f=8, tasks=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    ei = torch.randint(0, n, (2, e), generator=g)
    ea = torch.rand(e, f, generator=g)
    y = (torch.rand(n, tasks, generator=g) > 0.5).float()
    return x, ei, ea, y


def _step_grads(model, x, ei, ea, y, dtype):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout draw in both precisions
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x, ei, ea)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out, loss, grad


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("conv", ["pyg", "graphscale"])
def test_deepergcn_bf16_step_close_to_fp32(conv):
    x, ei, ea, y = _graph()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="deepergcn", hidden_channels=16, num_layers=3, dropout=0.1, conv=conv),
                        DatasetInfo(8, 5, 8))
    _, loss32, g32 = _step_grads(model, x, ei, ea, y, None)
    out16, loss16, g16 = _step_grads(model, x, ei, ea, y, torch.bfloat16)
    assert out16.dtype == torch.bfloat16  # autocast really ran the forward in bf16
    assert torch.isfinite(loss16)
    assert abs(float(loss16) - float(loss32)) < 0.02
    assert _rel(g16, g32) < 0.10


def _revgnn(compression):
    from graphscale.train.build import apply_memory
    from graphscale.train.config import MemoryConfig
    torch.manual_seed(0)
    return apply_memory(build_model(ModelConfig(name="revgnn", hidden_channels=16, num_layers=4, num_groups=2,
                                                dropout=0.1, aggr="max"), DatasetInfo(8, 5, 8)),
                        MemoryConfig(compression=compression))


def test_revgnn_bf16_step_recomputes_in_bf16():
    """The reversible stack recomputes its blocks in backward: it must do so under the forward's
    autocast (a fp32 recompute of a bf16 forward fails on mixed dtypes or reconstructs wrong inputs)."""
    x, ei, ea, y = _graph()
    model = _revgnn("none")
    _, _, g32 = _step_grads(model, x, ei, ea, y, None)
    out16, loss16, g16 = _step_grads(model, x, ei, ea, y, torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    assert torch.isfinite(loss16)
    assert _rel(g16, g32) < 0.15


def test_revgnn_bf16_with_2bit_compression():
    """bf16 on top of 2-bit activation compression: the quantizers take bf16 activations, and bf16
    adds little to the compression's own gradient noise (measured: 0.195 vs 0.199 of the fp32
    uncompressed gradient's norm for bf16 + 2-bit vs fp32 + 2-bit)."""
    x, ei, ea, y = _graph()
    _, _, g32 = _step_grads(_revgnn("none"), x, ei, ea, y, None)
    model = _revgnn("layers")
    _, _, g32c = _step_grads(model, x, ei, ea, y, None)
    out16, loss16, g16c = _step_grads(model, x, ei, ea, y, torch.bfloat16)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(loss16)
    assert _rel(g16c, g32) < 1.25 * _rel(g32c, g32) + 0.05


def test_deq_bf16_backward_under_the_forwards_autocast():
    """The DEQ block's implicit backward re-evaluates f: it must do so under the forward's autocast, so
    every evaluation of f (solver iterations and the backward's) runs its matrix products in bf16.
    A bf16 solve stops near bf16's resolution (residual ~6e-3 > tol 1e-3 here, DEQConvergenceWarning),
    so the gradient is further from fp32's than in the explicit models: measured 15.6% of its norm."""
    import warnings

    from graphscale.nn.deq import DEQBlock
    x, ei, ea, y = _graph()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="deq-gnn", hidden_channels=16, dropout=0.1, aggr="softmax", max_iter=15,
                                    tol=1e-3), DatasetInfo(8, 5, 8))
    block = next(m for m in model.modules() if isinstance(m, DEQBlock))
    linear = next(m for m in block.f.modules() if type(m).__name__ == "Linear")  # torch or PyG Linear
    seen = []
    linear.register_forward_hook(lambda mod, inp, out: seen.append((torch.is_grad_enabled(), out.dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, g32 = _step_grads(model, x, ei, ea, y, None)
        seen.clear()
        out16, loss16, g16 = _step_grads(model, x, ei, ea, y, torch.bfloat16)
    assert torch.isfinite(loss16)
    assert any(grad for grad, _ in seen)  # f was re-evaluated with grad (the backward)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    assert _rel(g16, g32) < 0.25


def test_ops_take_bf16_and_mixed_edge_dtypes_under_autocast():
    from graphscale.ops import CSR, softmax_aggr, spmm
    x, ei, ea, _ = _graph(n=37, e=211, f=13)
    adj = CSR.from_edge_index(ei, (37, 37))
    for reduce in ("sum", "mean", "max"):
        xb = x.to(torch.bfloat16).requires_grad_()
        out = spmm(adj, xb, reduce)
        out.float().sum().backward()
        assert out.dtype == xb.grad.dtype == torch.bfloat16
        ref = spmm(adj, xb.detach().float(), reduce)  # the same (rounded) inputs in fp32
        assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max() + 1e-3
    ea = adj.edge_order(ea[:, :13])
    with pytest.raises(TypeError, match="edge_attr has dtype torch.bfloat16"):  # outside autocast: an error
        softmax_aggr(adj, x, 1.0, ea.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inside, mixed dtypes are autocast's normal case
        out = softmax_aggr(adj, x, 1.0, ea.to(torch.bfloat16))
    ref = softmax_aggr(adj, x, 1.0, ea.to(torch.bfloat16).float())
    assert out.dtype == torch.float32 and torch.allclose(out, ref)


def test_quantizer_round_trips_bf16():
    from graphscale.memory.quantize import dequantize, quantize
    x = torch.randn(64, 40)
    q16 = dequantize(quantize(x.to(torch.bfloat16), bits=2, group_size=None, seed=3))
    q32 = dequantize(quantize(x.to(torch.bfloat16).float(), bits=2, group_size=None, seed=3))
    assert q16.dtype == torch.bfloat16 and q16.shape == x.shape
    # same codes as for the fp32 copy of the same values, up to bf16 rounding of the result
    assert torch.allclose(q16.float(), q32, rtol=1e-2, atol=1e-2)


def test_device_checks():
    check_precision("fp32", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA; use train.precision=bf16 on CPU"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="'fp8' is not one of"):
        check_precision("fp8", torch.device("cpu"))


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ConfigError, match="'Tesla V100'.*does not support bf16"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("fp16", torch.device("cuda"))  # what it suggests instead is allowed


def test_precision_object_fp32_is_plain_and_bf16_has_no_scaler():
    p32, p16 = Precision("fp32", torch.device("cpu")), Precision("bf16", torch.device("cpu"))
    assert p32.scaler is None and p16.scaler is None and p16.dtype == torch.bfloat16
    with p16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with p32.autocast():
        assert not torch.is_autocast_enabled("cpu")


TINY = ["data.name=synthetic-proteins", "data.num_nodes=300", "data.avg_degree=6", "data.num_communities=8",
        "model.hidden_channels=8", "model.num_layers=2", "sampler.num_parts=2", "train.epochs=2",
        "log.progress=false", "train.device=cpu"]


def test_trainer_bf16_run(tmp_path):
    from graphscale.train import api
    runs = {}
    for prec in ("fp32", "bf16"):
        cfg = load_config(None, [*TINY, f"data.root={tmp_path / 'data'}", f"log.out={tmp_path / prec}",
                                 f"train.precision={prec}"])
        api.check(cfg)
        runs[prec] = api.train(cfg)
    assert runs["bf16"]["config"]["train"]["precision"] == "bf16"
    assert 0.0 <= runs["bf16"]["best_valid"] <= 1.0
    # a different arithmetic, not the same run twice (the bf16 run's loss history differs from fp32's)
    import json
    losses = {p: [json.loads(l)["loss"] for l in open(tmp_path / p / "log.jsonl")] for p in runs}
    assert losses["fp32"] != losses["bf16"]
    assert all(abs(a - b) < 0.05 for a, b in zip(losses["fp32"], losses["bf16"]))


def test_fp16_on_cpu_and_layerwise_precision_fail_before_training(tmp_path):
    from graphscale.train import api
    cfg = load_config(None, [*TINY, "train.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        api.check(cfg)
    cfg = load_config(None, ["train.mode=layerwise", "model.name=lgcn", "train.precision=bf16", "train.device=cpu"])
    with pytest.raises(ConfigError, match="train.precision is set .*train.mode=layerwise"):
        api.check(cfg)
