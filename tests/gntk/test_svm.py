"""Kernel-SVM cross-validation."""
from __future__ import annotations

import numpy as np
import pytest

from graphscale.errors import DataError
from graphscale.gntk.svm import cross_validate, format_table


def test_separable_kernel_and_best_c_by_mean():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    f = np.stack([y, 1 - y], 1) + 0.05 * rng.random((40, 2))
    gram = f @ f.T + 0.01
    folds = [(np.setdiff1d(np.arange(40), te), te) for te in np.array_split(rng.permutation(40), 5)]
    res = cross_validate(gram, y, folds, c_grid=[1e-3, 1.0, 100.0])
    for name in ("raw", "normalized"):
        v = res["variants"][name]
        assert v["best_mean"] == max(v["mean"]) == 1.0
        assert len(v["best_fold_acc"]) == 5 and v["best_std"] == 0.0
    assert res["best"]["mean"] == 1.0
    assert "normalized" in format_table(res)


def test_label_noise_gives_chance_level():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    f = rng.random((60, 3))
    folds = [(np.setdiff1d(np.arange(60), te), te) for te in np.array_split(np.arange(60), 5)]
    res = cross_validate(f @ f.T, y, folds, c_grid=[1.0], variants=("raw",))
    assert res["best"]["mean"] < 0.8


def test_bad_folds():
    g = np.eye(4) + 1
    y = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="share graphs"):
        cross_validate(g, y, [(np.array([0, 1]), np.array([1, 2]))])
    with pytest.raises(DataError, match=r"in \[0, 3\]"):
        cross_validate(g, y, [(np.array([0, 1]), np.array([7]))])
    with pytest.raises(DataError, match="square"):
        cross_validate(np.ones((3, 4)), y, [(np.array([0]), np.array([1]))])


def test_empty_or_bad_c_grid_is_refused():
    from graphscale.errors import ConfigError
    from graphscale.gntk.svm import default_c_grid

    g = np.eye(4) + 1
    y = np.array([0, 1, 0, 1])
    folds = [(np.array([0, 1]), np.array([2, 3]))]
    for bad in ([], [0.0, 1.0], [-1.0]):
        with pytest.raises(ConfigError, match="C values"):
            cross_validate(g, y, folds, c_grid=bad)
    with pytest.raises(ConfigError, match="number of C values"):
        default_c_grid(0)
    assert default_c_grid(1).tolist() == [0.01]
