"""`nerepro noise` (Eqs. 9-11 measured) and the ideal NE of Eq. (5)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import synthetic_data
from nerepro import RunConfig, build_model, train
from nerepro.cli import app
from nerepro.noise import draw_noise, effective_batch_size, excess_kurtosis, hill_tail_index, summarize_noise
from nerepro.sampling import IndependentSampler

N, B = 2000, 100


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5))
    x, y = torch.randn(N, 20), torch.randint(0, 5, (N,))
    alphas = [1.0, 1.5, 2.0, 3.0]
    drawn = draw_noise(model, x, y, B, alphas, draws=1500, seed=0, sketch_dim=64)
    return summarize_noise(drawn, B, alphas).set_index(["kind", "alpha"])


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_trace_ratio_is_eq10(measured, alpha):
    row = measured.loc[("NE", alpha)]
    assert row["theory_ratio"] == alpha ** 2 + (1 - alpha) ** 2
    assert abs(row["ratio_to_alpha_1"] / row["theory_ratio"] - 1) < 0.03  # measured: within 1%
    assert row["ratio_low"] <= row["theory_ratio"] <= row["ratio_high"]


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_trace_ratio_through_the_training_path(measured, alpha):
    """The noise of the gradient a training step follows (the run's sampler, ne_objective) on the same draws:
    the same ratio as Eq. (9)'s assembly up to rounding, and Eq. (10) inside its interval."""
    row = measured.loc[("NE", alpha)]
    assert row["ratio_training_path"] == pytest.approx(row["ratio_to_alpha_1"], rel=1e-5)
    assert row["ratio_training_low"] <= row["theory_ratio"] <= row["ratio_training_high"]


def test_kurtosis_standard_error_counts_shared_draws():
    """Directions measured on the same draws are not independent estimates: identical directions carry one
    draw's worth of information, which the spread over directions (zero here) would hide."""
    from nerepro.noise import mean_kurtosis_se

    rng = np.random.default_rng(0)
    one = rng.standard_t(5, (400, 1))
    shared = np.repeat(one, 64, axis=1)  # 64 identical directions
    assert np.std(excess_kurtosis(shared)) == 0
    se_shared, se_one = mean_kurtosis_se(shared, rng), mean_kurtosis_se(one, rng)
    assert se_shared > 0.1 and se_shared == pytest.approx(se_one, rel=0.25)
    independent = rng.standard_normal((400, 64))  # independent directions: close to spread / sqrt(directions)
    spread = np.std(excess_kurtosis(independent)) / 8
    assert 0.6 < mean_kurtosis_se(independent, rng) / spread < 1.6


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_ne_matches_plain_sgd_at_b_eff(measured, alpha):
    """Eq. (11): the same trace as plain SGD at B_eff, up to Eq. (4)'s finite-N factor and rounding."""
    row = measured.loc[("plain", alpha)]
    assert row["batch_size"] == effective_batch_size(B, alpha)
    assert abs(row["ratio_to_ne"] / row["ratio_to_ne_theory"] - 1) < 0.04  # measured: within 1%


def test_effective_batch_size():
    assert effective_batch_size(500, 1.5) == 200 and effective_batch_size(500, 3) == 38
    assert effective_batch_size(500, 3, multiple=100) == 100 and effective_batch_size(5000, 2.5, 100) == 600


def test_kurtosis_and_tail_index_estimators():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((4000, 50))
    assert abs(excess_kurtosis(gauss).mean()) < 0.05
    assert excess_kurtosis(rng.standard_t(5, (4000, 50))).mean() > 3  # Student t, 5 dof: 6
    assert excess_kurtosis(rng.laplace(size=(4000, 50))).mean() > 2  # Laplace: 3
    pareto = rng.pareto(2.0, 200_000) + 1
    assert 1.8 < hill_tail_index(pareto) < 2.2
    assert hill_tail_index(gauss) > 3.5


def test_full_reference_is_eq5():
    """One SGD step with --reference full moves w by -lr (alpha grad L_B + (1 - alpha) grad L) (Eq. 5)."""
    data = synthetic_data(n_train=120)
    cfg = RunConfig(network="F1", alpha=2.0, batch_size=30, optimizer="sgd", lr=0.1, max_steps=1, check_every=10,
                    reference="full", check_chunk=50, device="cpu", stop_loss="full", sampling="independent")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        record = train(cfg, data=data, save_weights=Path(tmp) / "w.pt")
        weights = torch.load(Path(tmp) / "w.pt")
    assert record["reference"] == "full" and record["samples_processed"] == 30 + 120
    model = build_model("F1", seed=0)
    idx = IndependentSampler(120, 30, torch.device("cpu"), 0, second=False).draw(0)
    grads = []
    for x, y in ((data.x_train[idx], data.y_train[idx]), (data.x_train, data.y_train)):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for (name, p), g_b, g_full in zip(model.named_parameters(), *grads):
        expected = p.detach() - 0.1 * (2.0 * g_b + (1 - 2.0) * g_full)
        torch.testing.assert_close(weights[name], expected, rtol=1e-5, atol=1e-6)
    assert cfg.run_id != cfg.replace(reference="minibatch").run_id


def test_noise_command(fake_fmnist_root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "noise"
    result = runner.invoke(app, ["noise", "--network", "F1", "--batch-size", "20", "--alphas", "1.5,2", "--draws", "20",
                                 "--out", str(out), "--data-dir", str(fake_fmnist_root), "--device", "cpu",
                                 "--sketch-dim", "32"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out / "noise.csv")
    assert set(zip(table["kind"], table["alpha"])) == {("NE", 1.0), ("NE", 1.5), ("NE", 2.0), ("plain", 1.5),
                                                        ("plain", 2.0)}
    assert (out / "noise.png").exists() and "hypothesis" in (out / "noise.md").read_text()
    bad = runner.invoke(app, ["noise", "--network", "F1", "--batch-size", "20", "--alphas", "x", "--data-dir",
                              str(fake_fmnist_root)])
    assert bad.exit_code == 2 and "--alphas" in bad.stderr


def test_kurtosis_sum_rule_on_a_heavy_tailed_problem():
    """NE's excess kurtosis falls with alpha as (a^4 + (1 - a)^4) / (a^2 + (1 - a)^2)^2 times alpha = 1's,
    while plain SGD's at B_eff grows: the measured values follow those rules on a heavy-tailed problem."""
    torch.manual_seed(1)
    model = nn.Linear(10, 3)
    x = torch.randn(N, 10) * torch.distributions.StudentT(3.0).sample((N, 1)).abs()  # heavy-tailed inputs
    y = torch.randint(0, 3, (N,))
    drawn = draw_noise(model, x, y, 20, [1.0, 3.0], draws=3000, seed=0, sketch_dim=16)
    table = summarize_noise(drawn, 20, [1.0, 3.0]).set_index(["kind", "alpha"])
    ne, plain = table.loc[("NE", 3.0)], table.loc[("plain", 3.0)]
    assert table.loc[("NE", 1.0), "kurtosis_random"] > 1  # the problem is heavy-tailed
    assert ne["kurtosis_random"] < table.loc[("NE", 1.0), "kurtosis_random"] < plain["kurtosis_random"]
    assert ne["kurtosis_random"] == pytest.approx(ne["kurtosis_random_theory"], rel=0.3)
