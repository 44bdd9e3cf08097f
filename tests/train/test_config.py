import os

import pytest

from graphscale.errors import ConfigError
from graphscale.train.config import Config, describe, load_config, to_dict


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_and_yaml_and_overrides(tmp_path):
    assert load_config() == Config()
    path = _write(tmp_path, "model:\n  num_layers: 28\ntrain:\n  lr: 1\n")
    cfg = load_config(path, ["model.hidden_channels=16", "train.device=cpu", "train.lr=0.5"])
    assert cfg.model.num_layers == 28 and cfg.model.hidden_channels == 16
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)  # int -> float allowed
    assert to_dict(cfg)["model"]["num_layers"] == 28


@pytest.mark.parametrize("text,overrides,message", [
    ("model:\n  num_layer: 3\n", [], r"unknown key 'model.num_layer'.*did you mean 'num_layers'"),
    ("modle:\n  num_layers: 3\n", [], r"unknown key 'modle'.*did you mean 'model'"),
    ("log:\n  progress: true\n", ["model.num_layers=three"], r"model.num_layers: expected an integer, got 'three'"),
    ("log:\n  progress: true\n", ["model.num_layers=2.5"], r"expected an integer, got 2.5"),
    ("log:\n  progress: true\n", ["train.lr=fast"], r"train.lr: expected a number"),
    ("log:\n  progress: true\n", ["model.learn_t=maybe"], r"model.learn_t: expected true or false"),
    ("log:\n  progress: true\n", ["model.name=deepergnc"], r"'deepergnc' is not one of .*did you mean 'deepergcn'"),
    ("log:\n  progress: true\n", ["model.num_layers"], r"must look like section.key=value"),
    ("model: 3\n", [], r"model: expected a mapping"),
])
def test_config_errors_name_the_value(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text), overrides)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))


def test_describe_lists_every_section():
    text = describe()
    for section in ("data:", "sampler:", "model:", "memory:", "train:", "log:"):
        assert section in text


@pytest.mark.parametrize("spelling,value", [("1e-3", 1e-3), ("5E-4", 5e-4), (".5", 0.5), ("1_000", 1000.0),
                                            ("-2.5e+2", -250.0), ("3", 3.0)])
def test_numbers_in_any_spelling(tmp_path, spelling, value):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; both the file and the command line must read a number
    assert load_config(overrides=[f"train.lr={spelling}"]).train.lr == value
    cfg = load_config(_write(tmp_path, f"train:\n  lr: {spelling}\n  weight_decay: {spelling}\n"))
    assert cfg.train.lr == value and cfg.train.weight_decay == value
    assert isinstance(cfg.train.lr, float)


def test_integral_float_for_an_integer_key():
    assert load_config(overrides=["data.num_nodes=1e4"]).data.num_nodes == 10_000
    assert load_config(overrides=["data.num_nodes=1_000"]).data.num_nodes == 1_000


def test_error_says_where_the_value_came_from(tmp_path):
    path = _write(tmp_path, "model:\n  num_layers: 3\ntrain:\n  epochs: 2\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: train\.lr: expected a number"):
        load_config(path)
    # the file is fine, the override is not: the message names the override, not the file
    good = _write(tmp_path, "train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"^command-line override 'train.lr=fast': train.lr"):
        load_config(good, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"^command-line override 'modle.x=1': unknown key 'modle'"):
        load_config(good, ["modle.x=1"])


def test_empty_yaml_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no settings"):
        load_config(_write(tmp_path, "# nothing here\n"))


def test_every_shipped_config_passes_every_check():
    # a shipped config that sets a key its model / sampler / mode does not read would fail for users
    import glob

    from graphscale.train.api import check
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    files = sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))
    assert len(files) >= 10
    for f in files:
        cfg = load_config(f, ["train.device=cpu"])
        if cfg.data.partitions:  # its store is written first (graphscale data partition): check the rest alone
            cfg = load_config(f, ["train.device=cpu", "data.partitions=null"])
        check(cfg)
