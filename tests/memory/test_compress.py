"""Compressed layers, compress_model and the saved-tensor hooks: exact byte savings, gradients, API."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from graphscale.errors import ConfigError
from graphscale.memory import (CompressionConfig, UncompressedLayersError, compress_model, compressed_activations,
                               count_saved_bytes, find_uncompressed, hook_compression)
from graphscale.memory.compressed_layers import (QBatchNorm1d, QDropout, QLayerNorm, QLinear, QReLU, qbatch_norm, qdropout,
                                      qlayer_norm, qlinear, qrelu)
from graphscale.memory.random_streams import set_seed

F64 = torch.float64


def _block(d: int, p: float = 0.5) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Dropout(p), nn.Linear(d, d))


def _qbytes(numel: int, bits: int = 2, group: int = 256) -> int:
    groups = math.ceil(numel / group)  # the tail group is zero-padded to a whole group
    return groups * group * bits // 8 + groups * 4  # codes + float16 (min, scale) per group


def _grads(model, x, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)
    set_seed(seed)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------------------------
# Custom autograd Functions: gradcheck (float64) with exact storage, and 8-bit exactness on a grid.
def test_gradcheck_functions_exact_storage():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=F64, requires_grad=True)
    w = torch.randn(3, 5, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    lw = torch.randn(5, dtype=F64, requires_grad=True)
    lb = torch.randn(5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: qlinear(x, w, b, None), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: qlinear(x, w, None, None), (x.view(7, 1, 5), w))
    assert torch.autograd.gradcheck(qrelu, (x,))
    assert torch.autograd.gradcheck(lambda x: (torch.manual_seed(1), qdropout(x, 0.3))[1], (x,))
    assert torch.autograd.gradcheck(lambda x, w, b: qlayer_norm(x, (5,), w, b, 1e-5, None), (x, lw, lb))
    assert torch.autograd.gradcheck(lambda x: qlayer_norm(x, (5,), None, None, 1e-5, None), (x,))
    assert torch.autograd.gradcheck(
        lambda x, w, b: qbatch_norm(x, None, None, w, b, True, 0.1, 1e-5, None, None), (x, lw, lb))
    rm, rv = torch.zeros(5, dtype=F64), torch.ones(5, dtype=F64) * 2
    assert torch.autograd.gradcheck(
        lambda x, w, b: qbatch_norm(x, rm, rv, w, b, False, 0.1, 1e-5, None, None), (x, lw, lb))


def test_gradcheck_linear_8bit_exact_on_grid():
    # Values on an 8-bit grid (row min 0, step 1/16, row max 255/16) are stored exactly by the
    # stochastic quantizer, so the compressed weight gradient is the exact one.
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (6, 9), generator=g)
    codes[:, 0], codes[:, 1] = 0, 255
    x = (codes.to(F64) / 16).requires_grad_()
    w = torch.randn(4, 9, dtype=F64, generator=g, requires_grad=True)
    cfg = CompressionConfig(8, None)
    assert torch.autograd.gradcheck(lambda x, w: qlinear(x, w, None, cfg), (x, w))


# --------------------------------------------------------------------------------------------
def test_layers_match_torch_forward_and_masks():
    torch.manual_seed(0)
    x = torch.randn(11, 6, dtype=F64, requires_grad=True)
    cfg = CompressionConfig(2)
    ln = nn.LayerNorm(6).double()
    assert torch.allclose(QLayerNorm.convert(ln, cfg)(x), ln(x), atol=1e-12)
    bn, bn2 = nn.BatchNorm1d(6).double(), nn.BatchNorm1d(6).double()
    qbn = QBatchNorm1d.convert(bn2, cfg)
    assert torch.allclose(qbn(x), bn(x), atol=1e-12)
    assert torch.allclose(bn.running_var, bn2.running_var) and int(bn2.num_batches_tracked) == 1
    x3 = torch.randn(4, 6, 5, dtype=F64)
    assert torch.allclose(qbn(x3), bn(x3), atol=1e-12)
    bn.eval(), qbn.eval()
    assert torch.allclose(qbn(x), bn(x), atol=1e-12)
    with pytest.raises(ValueError, match="expects a"):
        qbatch_norm(torch.randn(2, 3, 4, 5), None, None, None, None, True, 0.1, 1e-5, None, cfg)
    # ReLU / dropout masks are exact: gradient = mask (* 1/(1-p)).
    y = qrelu(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (x > 0).to(F64))
    x.grad = None
    d = qdropout(x, 0.25)
    d.backward(torch.ones_like(d))
    keep = d != 0
    assert torch.allclose(d[keep], x[keep] / 0.75) and torch.allclose(x.grad, keep.to(F64) / 0.75)
    assert 0.5 < float(keep.double().mean()) < 0.95


def test_mask_pack_round_trip():
    from graphscale.memory.compressed_layers import pack_mask, unpack_mask
    for shape in [(1,), (7,), (3, 5), (13, 37)]:
        m = torch.rand(shape) > 0.5
        p = pack_mask(m)
        assert p.dtype == torch.uint8 and p.numel() == math.ceil(m.numel() / 8)
        assert torch.equal(unpack_mask(p, m.shape), m)


def test_saved_bytes_drop_by_exact_amount():
    torch.manual_seed(0)
    n, d = 1000, 64
    model = _block(d)
    x = torch.randn(n, d)
    with count_saved_bytes(exclude=model) as full:
        model(x)
    # fp32: LayerNorm input + mean + rstd, ReLU output, dropout mask (float32 on CPU: torch's CPU
    # dropout multiplies by a float noise tensor; CUDA's fused kernel keeps a bool mask), Linear input.
    assert full.total == 4 * n * d + 8 * n + 4 * n * d + 4 * n * d + 4 * n * d
    compress_model(model, bits=2, group_size=256)
    with count_saved_bytes(exclude=model) as comp:
        model(x)
    q2 = _qbytes(n * d)
    expected = (q2 + 4 * n) + n * d // 8 + n * d // 8 + q2  # LN x_hat + rstd, ReLU bit, dropout bit, Linear
    assert comp.total == expected
    assert full.total / comp.total > 15.0
    # EXACT's random projection keeps 1/8 of the Linear input's features before quantizing.
    compress_model(model, bits=2, group_size=256, kept_frac=0.125)
    with count_saved_bytes(exclude=model) as proj:
        model(x)
    qp = _qbytes(n * 8)
    assert proj.total == expected - q2 + qp
    # A leaf input (the step's features) is kept by reference unless compress_inputs=True.
    lin = compress_model(nn.Linear(d, d), bits=2)
    with count_saved_bytes(exclude=lin) as ref:
        lin(x)
    assert ref.total == 4 * n * d
    compress_model(lin, bits=2, compress_inputs=True)
    with count_saved_bytes(exclude=lin) as cin:
        lin(x)
    assert cin.total == q2


def test_step_inputs_kept_and_grad_free_intermediates_compressed():
    class Agg(nn.Module):  # SAGE-like first layer: features aggregated from the raw (grad-free) input
        def __init__(self):
            super().__init__()
            self.lin_l, self.lin_r = nn.Linear(16, 8), nn.Linear(16, 8)

        def forward(self, x, adj):
            return self.lin_l(adj @ x) + self.lin_r(x)

    model = compress_model(Agg(), bits=2)
    x, adj = torch.randn(300, 16), torch.rand(300, 300)
    with count_saved_bytes(exclude=model) as c:
        model(x, adj)
    # x is the step input (kept by reference, 4 bytes/value); adj @ x has no history but is an
    # activation: quantized.
    assert c.total == 300 * 16 * 4 + _qbytes(300 * 16)


def test_shared_input_quantized_once():
    lin1, lin2 = QLinear.convert(nn.Linear(32, 8), CompressionConfig()), QLinear.convert(nn.Linear(32, 8),
                                                                                         CompressionConfig())
    h = torch.randn(100, 32, requires_grad=True).relu()  # an activation (has history), used twice
    with count_saved_bytes(exclude=[lin1.weight, lin2.weight, lin1.bias, lin2.bias]) as c:
        (lin1(h) + lin2(h)).sum()
    assert c.total == _qbytes(100 * 32)


def test_gradients_close_to_fp32_and_disable_matches():
    torch.manual_seed(0)
    d = 48
    base = nn.Sequential(_block(d, 0.0), _block(d, 0.0), nn.Linear(d, 5)).double()
    x = torch.randn(300, d, dtype=F64)
    ref = _grads(base, x)
    model = compress_model(base, disable=True)
    assert isinstance(model[0][3], QLinear) and model[0][3].compression is None
    assert torch.allclose(_grads(model, x), ref, rtol=1e-10, atol=1e-12)
    errs = {}
    for bits in (8, 4, 2):
        compress_model(model, bits=bits)
        g = _grads(model, x)
        errs[bits] = float((g - ref).norm() / ref.norm())
    assert errs[8] < 0.02 and errs[4] < 0.2 and errs[2] < 0.6, errs
    assert errs[8] < errs[4] < errs[2]
    # Averaged over seeds the 2-bit weight gradient of a Linear converges to the exact one (unbiased):
    # 32 draws shrink the error ~5.7x (asserted: > 3x).
    # (LayerNorm first: the Linear input is then an activation; the x_hat-linear LN gradients stay unbiased)
    lin = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 5)).double()
    exact = _grads(lin, x)
    compress_model(lin, bits=2)
    avg = sum(_grads(lin, x, seed=s) for s in range(32)) / 32
    one = _grads(lin, x, seed=0)
    assert float((avg - exact).norm()) < float((one - exact).norm()) / 3


# --------------------------------------------------------------------------------------------
def test_compress_model_in_place_idempotent_presets():
    torch.manual_seed(0)
    model = nn.Sequential(_block(16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    out = compress_model(model, bits=2)
    assert out is model and [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    types = [type(m) for m in model.modules()]
    assert QLinear in types and QReLU in types and QDropout in types and QLayerNorm in types
    assert QBatchNorm1d in types
    compress_model(model, bits=2)
    assert [type(m) for m in model.modules()] == types  # idempotent
    compress_model(model, preset="L1")  # 4-bit, norms exact
    assert model[2].compression.bits == 4 and model[1].compression is None and model[0][0].compression is None
    compress_model(model, preset="exact-rp")
    assert model[2].compression.kept_frac == 0.125 and model[2].compression.group_size is None
    compress_model(model, preset="L0")
    assert all(getattr(m, "compression", None) is None for m in model.modules())
    lin = compress_model(nn.Linear(4, 4))  # a supported root is converted and returned
    assert isinstance(lin, QLinear)
    with pytest.raises(ConfigError, match="unknown compression preset 'L9'"):
        compress_model(model, preset="L9")
    with pytest.raises(ConfigError, match="bits must be one of"):
        compress_model(model, bits=3)
    with pytest.raises(ConfigError, match="group_size must be a positive int"):
        compress_model(model, group_size=0)
    with pytest.raises(TypeError, match="expects an nn.Module"):
        compress_model("model")


def test_uncompressed_layers_listed_warned_or_raised():
    # nn.GELU / nn.Tanh are covered by the functional rule (their forward is one covered call);
    # Softmax and PReLU have no compressed form.
    model = nn.Sequential(nn.Linear(8, 8), nn.Softmax(-1), nn.Sequential(nn.PReLU(), nn.GELU(), nn.Tanh(), nn.Identity()))
    assert find_uncompressed(model) == [("1", "Softmax"), ("2.0", "PReLU")]
    with pytest.warns(UserWarning, match=r"left 2 module\(s\) uncompressed.*1 \(Softmax\), 2.0 \(PReLU\)"):
        compress_model(model)
    with pytest.raises(UncompressedLayersError, match="Softmax"):
        compress_model(model, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), strict=True)  # fully supported: silent


def test_pyg_conv_linear_compressed():
    from torch_geometric.nn import GCNConv
    conv = GCNConv(8, 8)
    with pytest.warns(UserWarning, match="GCNConv"):
        compress_model(conv)
    assert type(conv.lin).__name__ == "QPyGLinear"
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    out = conv(torch.randn(4, 8), ei)
    out.sum().backward()
    assert conv.lin.weight.grad is not None and out.shape == (4, 8)


def test_hooks_fallback_covers_message_passing():
    from torch_geometric.nn import GENConv
    torch.manual_seed(0)
    conv = GENConv(16, 16, aggr="softmax", learn_t=True)
    x = torch.randn(200, 16, requires_grad=True)
    ei = torch.randint(0, 200, (2, 1500))
    conv(x, ei)  # warm-up (the first call saves a few extra small tensors)
    with count_saved_bytes(exclude=[*conv.parameters(), x, ei]) as full:
        conv(x, ei)
    torch.manual_seed(1)
    ref = torch.autograd.grad(conv(x, ei).pow(2).sum(), [x, *conv.parameters()])
    conv = compress_model(conv, bits=8, hooks_fallback=True, strict=True)  # a root is returned converted
    assert type(conv).__name__ == "HookedGENConv" and find_uncompressed(conv) == []
    with count_saved_bytes(exclude=[*conv.parameters(), x, ei]) as comp:
        conv(x, ei)
    assert full.total / comp.total > 3.0  # 8 bits: < 1/4 of the float32 bytes (+ statistics, indices)
    got = torch.autograd.grad(conv(x, ei).pow(2).sum(), [x, *conv.parameters()])
    for a, b in zip(got, ref):
        assert float((a - b).norm() / b.norm()) < 0.05
    compress_model(conv, disable=True)
    with count_saved_bytes(exclude=[*conv.parameters(), x, ei]) as off:
        conv(x, ei)
    # Off = exact storage; the swapped BatchNorm keeps only rstd (torch's also keeps mean and invstd).
    assert 0 <= full.total - off.total <= 3 * 32 * 4


# --------------------------------------------------------------------------------------------
def test_hooks_context_bytes_and_kept_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    x = torch.randn(500, 64)
    with count_saved_bytes(exclude=model) as full:
        model(x)
    with count_saved_bytes(exclude=model) as comp:
        with compressed_activations(bits=2) as cfg:
            out = model(x)
    assert cfg.bits == 2
    out.sum().backward()  # backward outside the block dequantizes
    # Saved: the input (a leaf: kept by reference) and two ReLU outputs, each shared with the next
    # Linear and quantized once: 2 bits + 4 bytes per 256 values = 1/15.06 of float32.
    x_bytes = 500 * 64 * 4
    assert comp.total == x_bytes + 2 * _qbytes(500 * 128)
    assert (full.total - x_bytes) / (comp.total - x_bytes) > 15.0
    with count_saved_bytes(exclude=model) as comp_in:
        with compressed_activations(bits=2, compress_inputs=True):
            model(x)
    assert comp_in.total == _qbytes(500 * 64) + 2 * _qbytes(500 * 128)
    with count_saved_bytes(exclude=model) as off:
        with compressed_activations(bits=2, enabled=False):
            model(x)
    assert off.total == full.total
    # Integer tensors (indices) and small tensors are kept exactly: the gradient of sum((2 w[idx])^2)
    # is the analytic 8 w[i] summed over the positions where idx == i (every product is by a power of 2,
    # exact; only the sum over repeated indices may round, hence rtol).
    idx = torch.randint(0, 500, (300,))
    w = torch.randn(500, 64, requires_grad=True)
    with compressed_activations(bits=2, min_numel=10**9):
        y = (w[idx] * 2).pow(2).sum()
    y.backward()
    expected = torch.zeros(500, 64).index_add_(0, idx, 8 * w.detach()[idx])
    assert torch.allclose(w.grad, expected, rtol=1e-6, atol=0)
    # With every float tensor compressed, the saved index still routes the gradient to exactly the rows
    # idx names (a corrupted index would move it), while the values are now 2-bit estimates.
    w.grad = None
    with compressed_activations(bits=2, min_numel=0):
        y = (w[idx] * 2).pow(2).sum()
    y.backward()
    rows = torch.zeros(500, dtype=torch.bool).index_fill_(0, idx, True)
    assert torch.equal(w.grad.ne(0).any(1), rows)
    assert not torch.allclose(w.grad, expected, rtol=1e-6, atol=0)
    with pytest.raises(ConfigError, match="does not apply random projection"):
        with compressed_activations(kept_frac=0.5):
            pass
    with pytest.raises(ConfigError, match="min_numel must be"):
        with compressed_activations(min_numel=-1):
            pass


def test_hook_compression_model_wrapper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4)).double()
    x = torch.randn(200, 32, dtype=F64)
    ref = _grads(model, x)
    hook_compression(model, bits=8)
    with count_saved_bytes(exclude=model) as c:
        model(x)
    assert c.ctx > 0 and c.saved == 0  # everything went through the compressing hooks
    g8 = _grads(model, x)
    assert float((g8 - ref).norm() / ref.norm()) < 0.02
    model.eval()
    with count_saved_bytes(exclude=model) as c_eval:
        model(x)
    assert c_eval.ctx == 0 and c_eval.saved > 0  # eval forward: hooks not entered
    model.train()
    hook_compression(model, disable=True)
    assert torch.allclose(_grads(model, x), ref)
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_apply_memory_config():
    from graphscale.train.build import apply_memory
    from graphscale.train.config import MemoryConfig
    m = apply_memory(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), MemoryConfig(compression="layers", bits=4,
                                                                           group_size=0, projection=0.5))
    assert isinstance(m[0], QLinear) and m[0].compression == CompressionConfig(4, None, 0.5)
    m = apply_memory(nn.Sequential(nn.Linear(4, 4)), MemoryConfig(compression="hooks"))
    assert m._graphscale_hook_compression is not None
    assert apply_memory(nn.Linear(4, 4), MemoryConfig()).__class__ is nn.Linear
    with pytest.raises(ConfigError, match="needs memory.compression=layers"):
        apply_memory(nn.Linear(4, 4), MemoryConfig(compression="hooks", projection=0.5))
    with pytest.raises(ConfigError, match="bits must be one of"):
        apply_memory(nn.Linear(4, 4), MemoryConfig(compression="layers", bits=3))


def test_composes_with_reversible_stack():
    from graphscale.nn import GroupRevBlock, RevStack

    class F(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.seq = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d))

        def forward(self, x, edge_index):
            return self.seq(x)

    torch.manual_seed(0)
    stack = RevStack([GroupRevBlock(F(8), num_groups=2) for _ in range(3)]).double()
    x = torch.randn(50, 16, dtype=F64)

    def grads(model):
        model.zero_grad()
        torch.manual_seed(3)
        xx = x.clone().requires_grad_()
        model(xx, None).pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()] + [xx.grad.reshape(-1)])

    ref = grads(stack)
    compress_model(stack, bits=8, strict=True)
    assert any(isinstance(m, QLinear) for m in stack.modules())
    g = grads(stack)
    assert float((g - ref).norm() / ref.norm()) < 0.02


def test_composes_with_deq_and_registered_revgnn():
    from graphscale.nn import DEQBlock
    from graphscale.train.build import DatasetInfo, build_model
    from graphscale.train.config import ModelConfig

    class F(nn.Module):  # contractive: small weights, LayerNorm of z + x injection
        def __init__(self, d):
            super().__init__()
            self.lin, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
            with torch.no_grad():
                self.lin.weight.mul_(0.3)

        def forward(self, z, x, edge_index):
            return self.norm(torch.tanh(self.lin(z)) + x)

    torch.manual_seed(0)
    deq = DEQBlock(F(12), solver="fixed-point", max_iter=60, tol=1e-6, warn=False).double()
    x = torch.randn(40, 12, dtype=F64)

    def grads(model, *args):
        model.zero_grad()
        torch.manual_seed(0)
        model(*args).pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])

    ref = grads(deq, x, None)
    compress_model(deq, bits=8, strict=True)  # Linear + LayerNorm inside f: everything covered
    assert isinstance(deq.f.lin, QLinear) and isinstance(deq.f.norm, QLayerNorm)
    g = grads(deq, x, None)
    assert float((g - ref).norm() / ref.norm()) < 0.05
    # The RevGNN recipe from the model registry: converts and trains.
    cfg = ModelConfig(name="revgnn", hidden_channels=16, num_layers=2)
    model = build_model(cfg, DatasetInfo(num_features=8, num_outputs=3, edge_dim=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compress_model(model, bits=2, hooks_fallback=True)
    ei = torch.randint(0, 30, (2, 120))
    out = model(torch.randn(30, 8), ei)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("how", ["fallback", "hooks"])
def test_max_aggregation_keeps_saved_tensors_exact_under_hooks(how):
    # scatter amax's backward routes the gradient to the inputs equal to the saved output: quantized
    # copies of both made it 0 / 0 (NaN below every max-aggregation GENConv before the fix).
    from torch_geometric.nn import GENConv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GENConv(8, 8, aggr="max", num_layers=2, norm="layer")

        def forward(self, x, ei):
            return self.conv(x, ei)

    torch.manual_seed(0)
    model = Net()
    x, ei = torch.randn(40, 8), torch.randint(0, 40, (2, 200))
    ref = torch.autograd.grad(model(x, ei).square().sum(), list(model.parameters()))
    if how == "fallback":
        with pytest.warns(UserWarning, match=r"conv\.aggr_module \(MaxAggregation\)"):
            compress_model(model, bits=8, hooks_fallback=True)  # listed: it stays full precision
    else:
        hook_compression(model, bits=8)
    set_seed(0)
    got = torch.autograd.grad(model(x, ei).square().sum(), list(model.parameters()))
    for r, g in zip(ref, got):
        assert torch.isfinite(g).all()
        assert float((g - r).norm() / r.norm()) < 0.05  # 8 bits elsewhere: close to the exact gradient


# --------------------------------------------------------------------------------------------
# Dropout masks regenerated from a seed (dropout_mask="seed"): 0 bytes, the same mask in backward.
def test_seed_dropout_regenerates_forward_mask_and_gradient():
    from graphscale.memory.random_streams import hash_mask
    torch.manual_seed(0)
    x = torch.randn(37, 29, dtype=F64, requires_grad=True)
    g = torch.randn(37, 29, dtype=F64)
    p = 0.3
    torch.manual_seed(5)
    y = qdropout(x, p, mask="seed")
    keep = y != 0  # x has no zeros: the forward mask
    y.backward(g)
    # Uncompressed dropout with the same mask: identical output and gradient.
    x2 = x.detach().clone().requires_grad_()
    y2 = x2 * keep * (1.0 / (1.0 - p))
    y2.backward(g)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
    # The mask is a function of the seed drawn from torch's RNG: same torch seed, same mask; another
    # seed, another mask; its keep rate is 1 - p.
    torch.manual_seed(5)
    assert torch.equal(qdropout(x.detach(), p, mask="seed") != 0, keep)
    torch.manual_seed(6)
    assert not torch.equal(qdropout(x.detach(), p, mask="seed") != 0, keep)
    m = hash_mask((400, 250), 0.7, seed=3)
    assert torch.equal(m, hash_mask((400, 250), 0.7, seed=3)) and abs(float(m.double().mean()) - 0.7) < 0.005
    assert torch.autograd.gradcheck(lambda x: (torch.manual_seed(1), qdropout(x, 0.3, mask="seed"))[1], (x,))
    with pytest.raises(ConfigError, match="dropout_mask"):
        CompressionConfig(dropout_mask="bits")


def test_seed_dropout_stores_no_mask_bytes():
    torch.manual_seed(0)
    n, d = 1000, 64
    x = torch.randn(n, d, requires_grad=True)
    for mode, expected in (("packed", n * d // 8), ("seed", 0)):
        drop = compress_model(nn.Dropout(0.5), bits=2, dropout_mask=mode)
        assert drop.compression.dropout_mask == mode
        with count_saved_bytes() as c:
            y = drop(x * 1.0)
        assert c.total == expected, (mode, c.total)
        y.sum().backward()
    # In a block: exactly the dropout mask's bytes disappear; gradients match the packed-mask run
    # given the same mask (p = 0 blocks are identical; here the masks differ, so compare to the
    # uncompressed run with the seed mode's own mask).
    model = _block(d)
    compress_model(model, bits=2, dropout_mask="packed")
    with count_saved_bytes(exclude=model) as packed:
        model(x)
    compress_model(model, bits=2, dropout_mask="seed")
    with count_saved_bytes(exclude=model) as seeded:
        model(x)
    assert packed.total - seeded.total == n * d // 8


@pytest.mark.parametrize("aggr", ["mean", "sum"])
def test_sage_conv_linear_before_aggregation(aggr):
    # QSAGEConv computes agg(x W^T) + b instead of agg(x) W^T + b: the same function and gradients
    # (float64, edge_index and sparse adjacency), with nothing stored for the neighbour Linear in the
    # first layer (its input is the step input, kept by reference) and one shared copy after.
    from torch_geometric.nn import SAGEConv
    from graphscale.memory.compressed_layers import QSAGEConv
    torch.manual_seed(0)
    n, d_in, d_out = 211, 97, 13
    ei = torch.randint(0, n, (2, 1500))
    ei = ei[:, ei[1] != 5]  # node 5 has no in-neighbours: its aggregate is 0 in both orders
    adj = torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), torch.ones(ei.size(1), dtype=F64),
                                  (n, n)).coalesce().to_sparse_csr()
    ref = SAGEConv(d_in, d_out, aggr=aggr).double()
    conv = compress_model(SAGEConv(d_in, d_out, aggr=aggr).double(), disable=True, strict=True)
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv, QSAGEConv)
    x = torch.randn(n, d_in, dtype=F64)
    w = torch.randn(n, d_out, dtype=F64)
    for graph in (ei, adj):
        for m in (ref, conv):
            m.zero_grad()
            (m(x, graph) * w).sum().backward()
        assert torch.allclose(conv(x, graph), ref(x, graph), atol=1e-12)
        for a, b in zip(conv.parameters(), ref.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-10)
    # Bytes: PyG's SAGEConv keeps the [n, d_in] aggregate for lin_l; QSAGEConv keeps nothing of d_in
    # width beyond the input itself.
    params = [*ref.parameters(), *conv.parameters(), x, ei, adj.crow_indices(), adj.col_indices(), adj.values()]
    with count_saved_bytes(exclude=params) as full:
        ref(x, ei)
    compress_model(conv, bits=2)
    with count_saved_bytes(exclude=params) as comp:
        conv(x, ei)
    assert full.total >= n * d_in * 4 and comp.total < n * d_out * 4, (full.total, comp.total)
    # Hidden layer: the input (an activation) is quantized once for lin_l and lin_r.
    h = torch.randn(n, d_in, dtype=F64, requires_grad=True).relu()
    for graph in (ei, adj):
        with count_saved_bytes(exclude=params) as hid:
            conv(h, graph)
        assert _qbytes(n * d_in) <= hid.total < _qbytes(n * d_in) + n * d_out * 4, hid.total
