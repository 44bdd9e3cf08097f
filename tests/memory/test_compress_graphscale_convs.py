"""compress_model on models of graphscale's fused convs (graphscale.nn.GCNConv / SAGEConv / GENConv).

They are PyG MessagePassing subclasses whose fused propagation runs through graphscale.ops, so what
they save depends on the path that runs: they are judged by the first training forward (the Recorder)
rather than listed by class. Bytes are checked against formulas from the storage format (float32:
4 bytes a value; 2-bit per-row codes: ceil(F / 4) bytes + float16 min and step = 4 bytes a row; a
1-bit mask: ceil(numel / 8) bytes; GCN's normalised edge weights: 4 bytes an edge, kept on ctx as
graph structure)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from graphscale.memory import compress_model, count_saved_bytes, find_uncompressed
from graphscale.memory.compress import UncompressedLayersError
from graphscale.nn import GCNConv, GENConv, SAGEConv

N, E, F_IN, HID, OUT = 60, 600, 16, 32, 4


class Net(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.c1, self.c2 = conv(F_IN, HID), conv(HID, OUT)

    def forward(self, x, edge_index):
        return self.c2(F.relu(self.c1(x, edge_index)), edge_index)


def _graph(num_edges=E, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, N, (num_edges,), generator=g)
    dst = (src + torch.randint(1, N, (num_edges,), generator=g)) % N  # no self-loops: GCN adds exactly N
    return torch.randn(N, F_IN, generator=g), torch.stack([src, dst])


def _saved(model, x, ei):
    with count_saved_bytes(exclude=[*model.parameters(), x]) as c:
        model(x, ei).sum().backward()
    return c.total


def _q2(rows, cols):  # 2-bit per-row codes + float16 min and step per row
    return rows * (math.ceil(cols * 2 / 8) + 4)


def _mask(numel):
    return math.ceil(numel / 8)


def test_sage_mean_saves_no_aggregation_activation_and_is_not_listed():
    torch.manual_seed(0)
    x, ei = _graph()
    model = Net(SAGEConv).train()
    # float32: lin_l reads the aggregated [N, 16] and [N, 32]; the ReLU output [N, 32] is read by relu's
    # backward and c2.lin_r (one storage); the fused mean spmm saves nothing; x is the step input.
    assert _saved(model, x, ei) == 4 * N * (F_IN + HID + HID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "left uncompressed" warning, neither now nor at the forward
        compress_model(model, bits=2, group_size=None, example_inputs=(x, ei))
        assert find_uncompressed(model) == []
        # 2-bit: the two aggregated inputs and the ReLU output (c2.lin_r) quantized, ReLU a 1-bit mask
        assert _saved(model, x, ei) == _q2(N, F_IN) + _q2(N, HID) + _q2(N, HID) + _mask(N * HID)
    compress_model(model, bits=2, strict=True)  # strict passes: nothing listed


def test_gcn_saves_only_edge_weights_and_is_not_listed():
    torch.manual_seed(0)
    x, ei = _graph()
    model = Net(GCNConv).train()
    weights = 4 * (E + N)  # gcn_norm's per-edge weights (self-loops added), one fresh tensor per layer
    # float32: lin reads x (step input) and the ReLU output [N, 32]; each spmm keeps its edge weights
    assert _saved(model, x, ei) == 4 * N * HID + 2 * weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress_model(model, bits=2, group_size=None, strict=True, example_inputs=(x, ei))
        assert find_uncompressed(model) == []
        assert _saved(model, x, ei) == _q2(N, HID) + _mask(N * HID) + 2 * weights


def test_gcn_edge_weights_stay_exact_under_hooks_fallback():
    # The weights are graph structure (kept on ctx): a hooked conv quantizes nothing of its own. The
    # gradient of c1's weight then equals the float run's: it reads only exact things (c2's weight, the
    # ReLU mask, both layers' edge weights, the step input x); only c2's weight gradient reads a
    # quantized tensor (the ReLU output).
    torch.manual_seed(0)
    x, ei = _graph(num_edges=1200)  # E + N = 1260 weights: above the hooks' min_numel (1024)
    ref, model = Net(GCNConv), Net(GCNConv)
    model.load_state_dict(ref.state_dict())
    ref(x, ei).square().sum().backward()
    compress_model(model, bits=2, hooks_fallback=True)
    model(x, ei).square().sum().backward()
    torch.testing.assert_close(model.c1.lin.weight.grad, ref.c1.lin.weight.grad)
    assert not torch.allclose(model.c2.lin.weight.grad, ref.c2.lin.weight.grad)  # the compression is on


def test_activation_saving_aggregations_are_listed_with_their_op():
    torch.manual_seed(0)
    x, ei = _graph(num_edges=30 * N)  # in-degree 30 >= GENConv.fuse_min_degree: the fused path runs
    sage_max = compress_model(Net(lambda i, o: SAGEConv(i, o, aggr="max")), bits=2, example_inputs=(x, ei))
    # c1 aggregates the step input (kept by reference); c2 keeps the ReLU output for its max backward
    assert find_uncompressed(sage_max) == [("c2", "graphscale.ops.reference.SpMMMaxMin in forward")]
    gen = compress_model(Net(GENConv), bits=2, example_inputs=(x, ei))
    assert find_uncompressed(gen) == [("c1", "graphscale.ops.reference.SoftmaxAggr in forward"),
                                      ("c2", "graphscale.ops.reference.SoftmaxAggr in forward")]
    with pytest.raises(UncompressedLayersError, match="SoftmaxAggr"):
        compress_model(Net(GENConv), bits=2, strict=True, example_inputs=(x, ei))
    # covered by the hooks fallback: nothing left, gradients finite
    for conv in (GENConv, lambda i, o: SAGEConv(i, o, aggr="max")):
        m = compress_model(Net(conv), bits=2, hooks_fallback=True, example_inputs=(x, ei))
        assert find_uncompressed(m) == []
        m(x, ei).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_gen_softmax_on_pygs_path_lists_the_aggregation_module():
    # in-degree 10 < fuse_min_degree: PyG's message + SoftmaxAggregation path, which saves [E, F] tensors
    x, ei = _graph()
    gen = compress_model(Net(GENConv), bits=2, example_inputs=(x, ei))
    assert {n for n, _ in find_uncompressed(gen)} == {"c1.aggr_module", "c2.aggr_module"}


def test_gen_mean_without_edge_features_is_fully_compressed():
    # relu(x) + eps then a fused mean: the functional rule stores relu's 1-bit mask, nothing else remains
    x, ei = _graph(num_edges=30 * N)
    gen = compress_model(Net(lambda i, o: GENConv(i, o, aggr="mean")), bits=2, example_inputs=(x, ei))
    assert find_uncompressed(gen) == []
    # PyG's path (in-degree 10): relu's mask again; the mean divides by the per-node edge count expanded
    # over the features, a broadcast view of a tensor without history (structure, not listed)
    x, ei = _graph()
    gen = compress_model(Net(lambda i, o: GENConv(i, o, aggr="mean")), bits=2, example_inputs=(x, ei))
    assert not gen.c1._fusable(ei, {"x": x})
    assert find_uncompressed(gen) == []


def test_pyg_sage_still_becomes_qsageconv():
    from torch_geometric.nn import SAGEConv as PyGSAGEConv

    from graphscale.memory.compressed_layers import QSAGEConv
    model = compress_model(Net(PyGSAGEConv), bits=2)
    assert type(model.c1) is QSAGEConv and type(model.c2) is QSAGEConv
    assert find_uncompressed(model) == []
    # graphscale's subclass is not matched by exact type: it keeps its own (fused) forward
    assert type(compress_model(Net(SAGEConv), bits=2).c1) is SAGEConv
