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
    ("", ["model.num_layers=three"], r"model.num_layers: expected an integer, got 'three'"),
    ("", ["model.num_layers=2.5"], r"expected an integer, got 2.5"),
    ("", ["train.lr=fast"], r"train.lr: expected a number"),
    ("", ["model.learn_t=maybe"], r"model.learn_t: expected true or false"),
    ("", ["model.name=deepergnc"], r"'deepergnc' is not one of .*did you mean 'deepergcn'"),
    ("", ["model.num_layers"], r"must look like section.key=value"),
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
