"""Keys set explicitly but not read by the chosen model, sampler, mode or data set are errors."""
from __future__ import annotations

import pytest

from graphscale.errors import ConfigError
from graphscale.train.config import Config, load_config
from graphscale.train.schema import check_used_keys, usage_table, used_keys


@pytest.mark.parametrize("overrides,message", [
    (["model.name=deq-gnn", "model.num_layers=5"], r"model.num_layers is set .* but model.name=deq-gnn does not use it"),
    (["model.name=revgnn", "model.norm=batch"], r"model.norm .* model.name=revgnn does not use it"),
    (["model.name=revgnn", "model.block=res"], r"model.block"),
    (["model.name=gcn", "model.aggr=max"], r"model.aggr .* model.name=gcn"),
    (["model.name=gcn", "model.conv=graphscale"], r"model.conv"),
    (["model.aggr=max", "model.t=0.5"], r"model.t is set .* model.name=deepergcn does not use it"),
    (["sampler.name=full", "sampler.num_parts=4"], r"sampler.num_parts .* sampler.name=full"),
    (["sampler.name=cluster", "sampler.partitioner=random", "sampler.imbalance=0.1"], r"sampler.imbalance"),
    (["sampler.eval_parts=3"], r"sampler.eval_parts .* sampler.name=random does not use it"),
    (["memory.bits=4"], r"memory.bits .* memory.compression=none does not use it"),
    (["memory.compression=hooks", "memory.compression_strict=true"], r"memory.compression_strict"),
    (["train.mode=layerwise", "sampler.num_parts=4"], r"train.mode=layerwise uses no sampler"),
    (["train.mode=layerwise", "memory.compression=layers"], r"train.mode=layerwise uses no memory"),
    (["train.mode=layerwise", "model.name=gcn"], r"train.mode=layerwise trains model.name=lgcn"),
    (["train.mode=layerwise", "train.epochs=3"], r"train.epochs .* train.mode=layerwise does not use it"),
    (["train.layer_epochs=3"], r"train.layer_epochs .* train.mode=standard does not use it"),
    (["train.powersgd_rank=2"], r"train.powersgd_rank"),
    (["data.name=cora", "data.num_nodes=100"], r"data.num_nodes .* data.name=cora does not use it"),
    (["data.name=synthetic-proteins", "data.num_features=3"], r"data.num_features"),
])
def test_unused_explicit_key_is_an_error(overrides, message):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        check_used_keys(cfg)


@pytest.mark.parametrize("overrides", [
    ["model.name=deq-gnn", "model.max_iter=5", "model.aggr=max"],
    ["model.name=revgnn", "model.num_groups=4", "model.aggr=softmax", "model.t=0.5"],
    ["sampler.name=cluster", "sampler.imbalance=0.1", "sampler.eval_name=metis", "sampler.eval_parts=3"],
    ["train.mode=layerwise", "model.name=lgcn", "model.num_layers=3", "train.controller=l2o", "train.l2o_rounds=2"],
    ["memory.compression=layers", "memory.bits=4", "memory.projection=0.5"],
    ["data.name=synthetic-arxiv", "data.num_features=16", "data.feature_noise=1.0"],
    ["train.comm_hook=powersgd", "train.powersgd_rank=2"],
])
def test_used_keys_pass(overrides):
    check_used_keys(load_config(None, overrides))


def test_defaults_of_unused_keys_stay_silent():
    # every key is at its default: deepergcn's norm etc. are read; revgnn's are not, but nobody set them
    check_used_keys(load_config(None, ["model.name=revgnn"]))
    check_used_keys(Config())  # a config built in code has no explicit keys


def test_message_names_the_source_and_the_used_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: gcn\n  norm: batch\n")
    with pytest.raises(ConfigError, match=r"model.norm is set \(.*c.yaml:3\) but model.name=gcn does not use it; "
                                          r"the model keys it uses: dropout, hidden_channels, name, num_layers"):
        check_used_keys(load_config(str(p)))


def test_layerwise_reads_its_own_model():
    used = used_keys(load_config(None, ["train.mode=layerwise"]))
    assert set(used["model"]) == {"name", "hidden_channels", "num_layers", "dropout"}
    assert used["sampler"] == {} and used["memory"] == {}
    assert "lgcn" in usage_table() and "deq-gnn" in usage_table()
