"""L2-GCN controller: median-stopping-time deployment, learned mean-P(stop) threshold, warm-up stops, and the direction of the
REINFORCE trade-off between final loss and epochs (graphscale.train.l2gcn_controller)."""
import math

import pytest
import torch

from graphscale.errors import ConfigError
from graphscale.train.l2gcn_controller import (NUM_FEATURES, VERSION, StopController, StopPolicy, load_controller,
                                  save_controller, train_controller)


def _constant_controller(p: float, hidden: int = 4) -> StopController:
    """A controller whose P(stop) is ``p`` whatever it reads (zero decoder weights)."""
    ctrl = StopController(NUM_FEATURES, hidden)
    torch.nn.init.zeros_(ctrl.decoder.weight)
    torch.nn.init.constant_(ctrl.decoder.bias, math.log(p / (1 - p)))
    return ctrl


def _run_layers(policy: StopPolicy, num_layers: int = 2, loss=lambda e: math.exp(-e / 10)) -> list[int]:
    used = []
    for layer in range(num_layers):
        policy.start_layer(layer)
        e = 1
        while not policy.observe(e, loss(e)):
            e += 1
        used.append(e)
    return used


def test_default_rule_stops_at_the_policys_median_stopping_time():
    # p = 0.2 per decision: survival 0.8^k first <= 0.5 at k = 4 -> decisions at 4, 7, 10, 13.
    assert _run_layers(StopPolicy(_constant_controller(0.2), 2, min_epochs=4, max_epochs=30, decision_step=3)) \
        == [13, 13]
    assert _run_layers(StopPolicy(_constant_controller(0.2), 2, 4, 30, 3, threshold=0)) == [13, 13]  # config 0
    assert _run_layers(StopPolicy(_constant_controller(0.6), 2, 4, 30, 3)) == [4, 4]
    assert _run_layers(StopPolicy(_constant_controller(0.05), 2, 4, 30, 3)) == [30, 30]  # 0.95^9 > 0.5
    # An explicit threshold is the paper's per-decision rule: p = 0.2 never reaches 0.5, reaches 0.1.
    assert _run_layers(StopPolicy(_constant_controller(0.2), 2, 4, 30, 3, threshold=0.5)) == [30, 30]
    assert _run_layers(StopPolicy(_constant_controller(0.2), 2, 4, 30, 3, threshold=0.1)) == [4, 4]


def test_train_controller_sets_threshold_to_mean_stop_probability():
    seen = []

    def episode(policy, round_):
        used = _run_layers(policy)
        seen.extend(row["p_stop"] for row in policy.trace)
        return math.exp(-sum(used) / 10), sum(used)

    ctrl = train_controller(episode, 2, rounds=5, hidden_size=4, min_epochs=2, max_epochs=12, decision_step=2)
    assert seen and float(ctrl.stop_threshold) == pytest.approx(sum(seen) / len(seen), rel=1e-5)
    assert float(ctrl.stop_threshold) != pytest.approx(0.5)


def test_warmup_rounds_impose_their_stops_and_keep_log_probs():
    ctrl = _constant_controller(0.999)  # would always stop at once if left alone
    pol = StopPolicy(ctrl, 2, min_epochs=2, max_epochs=20, decision_step=2, sample=True,
                     generator=torch.Generator().manual_seed(0), forced={0: 8, 1: 14})
    assert _run_layers(pol) == [8, 14]
    assert len(pol.log_probs) == 4 + 7  # decisions at 2,4,6,8 and 2,...,14
    assert all(torch.isfinite(lp) for lp in pol.log_probs)
    rows = []

    def episode(policy, round_):
        used = _run_layers(policy)
        return 1.0 / sum(used), sum(used)

    train_controller(episode, 2, rounds=6, hidden_size=4, min_epochs=2, max_epochs=20, decision_step=2,
                     warmup_rounds=3, log=rows.append)
    assert [r["warmup"] for r in rows] == [True] * 3 + [False] * 3


@pytest.mark.parametrize("seed", [0, 1])
def test_reward_trade_off_direction(seed):
    """A high price per epoch must teach the controller to stop earlier than a zero price does,
    with the deployed (thresholded) policy as well as the sampled one."""
    def episode(policy, round_):
        used = _run_layers(policy, loss=lambda e: 1.0 / e)  # loss keeps falling: only the price stops it
        return 1.0 / max(used), sum(used)

    deployed = {}
    for ratio in (0.0, 0.05):
        ctrl = train_controller(episode, 2, rounds=60, hidden_size=8, lr=0.05, time_ratio=ratio, min_epochs=2,
                                max_epochs=40, decision_step=2, seed=seed)
        deployed[ratio] = sum(_run_layers(StopPolicy(ctrl, 2, 2, 40, 2), loss=lambda e: 1.0 / e))
    assert deployed[0.05] < deployed[0.0]


def test_stop_threshold_round_trips_and_old_files_are_refused(tmp_path):
    ctrl = _constant_controller(0.3)
    ctrl.stop_threshold.fill_(0.123)
    path = str(tmp_path / "c.pt")
    save_controller(ctrl, path)
    assert float(load_controller(path).stop_threshold) == pytest.approx(0.123)
    blob = torch.load(path, weights_only=True)
    blob["header"]["version"] = VERSION - 1
    torch.save(blob, path)
    with pytest.raises(ConfigError, match=f"has version {VERSION - 1}, expected {VERSION}"):
        load_controller(path)
