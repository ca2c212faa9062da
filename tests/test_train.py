"""The L*/L** schedule (Sec. 3), the record of one run, and its reproducibility."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import EQ1, TIMES, synthetic_data
from nerepro import RunConfig, train
from nerepro.schedule import Action, dataset_loss, full_check_due, next_action

VOLATILE = TIMES


def cfg(**kw):
    base = dict(network="F1", alpha=1.5, batch_size=50, check_every=10, check_chunk=40, max_steps=2000,
                device="cpu", **EQ1)  # the loss checks of Eq. (1): full passes, gate, early exit
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return synthetic_data(noise=1.0)


@pytest.fixture(scope="module")
def converged(data):
    return train(cfg(), data=data)


def test_next_action():
    assert next_action(0.5, False, 0.01, 0.001) is Action.CONTINUE
    assert next_action(0.005, False, 0.01, 0.001) is Action.HALVE
    assert next_action(0.005, True, 0.01, 0.001) is Action.CONTINUE  # halve once only
    assert next_action(0.0009, False, 0.01, 0.001) is Action.STOP
    assert next_action(0.0009, True, 0.01, 0.001) is Action.STOP
    assert next_action(0.01, False, 0.01, 0.001) is Action.CONTINUE  # "below", strictly
    assert next_action(float("nan"), True, 0.01, 0.001) is Action.DIVERGE
    assert next_action(float("inf"), False, 0.01, 0.001) is Action.DIVERGE


def test_dataset_loss_is_eq1_and_early_exit_is_a_lower_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).train()
    x, y = torch.randn(103, 5), torch.randint(0, 3, (103,))
    exact = F.cross_entropy(model(x), y).item()
    check = dataset_loss(model, x, y, chunk=10)
    assert check.exact and check.evaluated == 103 and check.value == pytest.approx(exact, rel=1e-6)
    check = dataset_loss(model, x, y, chunk=10, stop_at=exact / 4)
    assert not check.exact and exact / 4 <= check.value <= exact and check.evaluated < 103
    assert check.evaluated % 10 == 0
    check = dataset_loss(model, x, y, chunk=10, stop_at=exact * 2)  # never provable early: full pass
    assert check.exact and check.value == pytest.approx(exact, rel=1e-6)
    assert model.training  # the check restores training mode


def test_full_check_gate_and_budget():
    assert full_check_due(0.01, 0.01, gate=4, spent=10**9, allowance=0)  # within the gate: dense
    assert not full_check_due(0.05, 0.01, gate=4, spent=100, allowance=50)  # far above, budget spent
    assert full_check_due(0.05, 0.01, gate=4, spent=10, allowance=50)  # far above, budget left
    assert full_check_due(0.05, 0.01, gate=0, spent=100, allowance=50)  # gate 0: every check is full
    assert full_check_due(float("nan"), 0.01, gate=4, spent=100, allowance=50)


def checked(curve):
    """(step, loss, exact, lr) of the checks that evaluated the training set."""
    return [(s, v, e, lr) for s, v, e, lr in zip(curve["step"], curve["train_loss"], curve["exact"], curve["lr"])
            if v is not None]


def test_converged_run_follows_the_schedule(converged):
    r, c = converged, converged["curve"]
    assert r["status"] == "converged"
    assert r["convergence_steps"] == r["steps"] == c["step"][-1]
    assert c["exact"][-1] and r["train_loss"] == c["train_loss"][-1] < 0.001
    full = checked(c)
    assert all(loss >= 0.001 for _, loss, _, _ in full[:-1])  # stopped at the first check below L**
    first_below = next(s for s, loss, _, _ in full if loss < 0.01)
    assert r["lr_halved_step"] == first_below
    halved = c["step"].index(first_below)
    assert c["lr"] == [1e-3] * halved + [5e-4] * (len(c["lr"]) - halved)  # halved exactly once
    assert r["samples_processed"] == r["steps"] * 2 * 50
    assert 0 <= r["test_acc"] <= 100 and r["test_loss"] >= 0


def test_early_exit_changes_no_decision(data):
    """Early exit proves L >= target from a partial sum, so it decides exactly as full passes do."""
    dense = train(cfg(check_early_exit=False, check_gate=0), data=data)
    early = train(cfg(check_gate=0), data=data)
    assert all(dense["curve"]["exact"]) and not all(early["curve"]["exact"])
    for key in ("status", "convergence_steps", "lr_halved_step", "train_loss", "test_acc", "run_id"):
        assert dense[key] == early[key]
    assert dense["check_samples"] > early["check_samples"]
    for bound, exact, value in zip(early["curve"]["train_loss"], early["curve"]["exact"],
                                   dense["curve"]["train_loss"]):
        assert bound == pytest.approx(value) if exact else bound <= value + 1e-9


def test_gated_checks_skip_only_far_from_the_target(converged):
    c = converged["curve"]
    gated = [i for i, v in enumerate(c["train_loss"]) if v is None]
    assert gated  # this run exercises the gate
    for i in gated:
        target = 0.01 if c["lr"][i] == 1e-3 else 0.001
        assert c["minibatch_loss"][i] >= 4.0 * target and not c["exact"][i]


def test_same_seed_same_record(data, converged):
    again = train(cfg(), data=data)
    strip = lambda r: {k: v for k, v in r.items() if k not in VOLATILE}  # noqa: E731
    assert strip(again) == strip(converged)
    other = train(cfg(seed=1, max_steps=30), data=data)
    assert other["run_id"] != converged["run_id"]


def test_not_converged_at_max_steps(data):
    r = train(cfg(max_steps=25), data=data)
    assert r["status"] == "not_converged" and r["convergence_steps"] is None
    assert r["steps"] == 25 and r["curve"]["step"] == [10, 20, 25]  # a final, full check at max steps
    assert r["curve"]["exact"][-1] and r["train_loss"] == r["curve"]["train_loss"][-1]


def test_diverged_on_nan(data):
    r = train(cfg(optimizer="sgd", lr=1e4, alpha=1.0), data=data)
    assert r["status"] == "diverged" and r["steps"] == 10
    assert r["convergence_steps"] is None and r["test_acc"] is None and r["train_loss"] is None


def test_alpha_one_reads_b_samples_per_step(data):
    r = train(cfg(alpha=1.0, max_steps=20), data=data)
    assert r["samples_processed"] == 20 * 50


def test_run_id_depends_on_results_not_on_device_or_check_mechanics():
    base = cfg()
    assert base.run_id == cfg(device="cuda").run_id == cfg(check_chunk=7, check_early_exit=False).run_id
    for change in (dict(check_gate=0.0), dict(check_budget=0.1), dict(alpha=2.0), dict(batch_size=60), dict(seed=2), dict(lr=1e-4), dict(check_every=20),
                   dict(subset=100), dict(max_steps=10), dict(l_star=0.02), dict(optimizer="sgd")):
        assert cfg(**change).run_id != base.run_id, change
    assert base.run_id.startswith("F1-a1.5-b50-s0-")


def test_adam_uses_keras_defaults():
    from nerepro.train import make_optimizer

    opt = make_optimizer(cfg(), [nn.Parameter(torch.zeros(1))])
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-7)
    assert math.isclose(cfg(optimizer="sgd").learning_rate, 1e-2)
