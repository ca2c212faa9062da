"""The readings the paper leaves open: what "the training loss" is and how B and B' are sampled."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TIMES, synthetic_data, train_killed_at
from nerepro import RunConfig, build_model, train
from nerepro.errors import ConfigError
from nerepro.sampling import IndependentSampler, make_sampler

CPU = torch.device("cpu")


def frozen_run(stop_loss, alpha, steps=12):
    """A run whose weights cannot move (SGD, lr 1e-30), so every step's losses are those of the initial model."""
    data = synthetic_data(n_train=100)
    cfg = RunConfig(network="F1", alpha=alpha, batch_size=20, optimizer="sgd", lr=1e-30, max_steps=steps,
                    check_every=4, stop_loss=stop_loss, sampling="epoch", device="cpu")
    return cfg, data, train(cfg, data=data)


@pytest.mark.parametrize("stop_loss,alpha", [("epoch_mean", 1.0), ("epoch_mean", 2.0), ("ne_epoch_mean", 2.0)])
def test_epoch_mean_readings_equal_an_independent_computation(stop_loss, alpha):
    cfg, data, record = frozen_run(stop_loss, alpha)
    model = build_model("F1", seed=0)
    sampler = make_sampler("epoch", 100, 20, CPU, 0, second=alpha != 1)
    per_step = []
    with torch.no_grad():
        for step in range(12):
            idx = sampler.draw(step)
            losses = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx], reduction="none")
            l_b, l_b2 = losses[:20].mean(), losses[20:].mean() if alpha != 1 else losses[:20].mean()
            per_step.append((alpha * l_b + (1 - alpha) * l_b2 if stop_loss == "ne_epoch_mean" else l_b).item())
    epoch = math.ceil(100 / 20)  # steps per epoch of the B stream
    for step, value in zip(record["curve"]["step"], record["curve"]["train_loss"]):
        window = per_step[max(0, step - epoch):step]
        assert value == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert record["stop_loss"] == stop_loss and record["sampling"] == "epoch"
    full = F.cross_entropy(model.eval()(data.x_train), data.y_train).item()
    assert record["train_loss_full"] == pytest.approx(full, rel=1e-5)  # Eq. (1) beside the reading
    assert record["train_loss"] == record["curve"]["train_loss"][-1]  # train_loss: the reading, as documented


@pytest.mark.parametrize("sampling,second", [("epoch", True), ("epoch", False), ("paired", True)])
def test_epoch_and_paired_visit_every_sample_once_per_epoch(sampling, second):
    n, b = 60, 7  # 7 does not divide 60: batches run across epoch boundaries
    sampler = make_sampler(sampling, n, b, CPU, seed=3, second=second)
    streams = {}
    for step in range(40):
        idx = sampler.draw(step)
        if sampling == "paired":
            streams.setdefault("pair", []).extend(idx.tolist())  # B then B': halves of one 2B chunk
        else:
            for k, part in enumerate(idx.split(b)):
                streams.setdefault(k, []).extend(part.tolist())
    assert len(streams) == (1 if sampling == "paired" else 1 + second)
    for visits in streams.values():
        for start in range(0, len(visits) - n + 1, n):
            assert sorted(visits[start:start + n]) == list(range(n))  # each epoch: a permutation


def test_independent_draws_without_replacement_within_a_minibatch():
    sampler = IndependentSampler(50, 40, CPU, seed=0, second=True)
    for step in range(20):
        idx = sampler.draw(step)
        assert len(set(idx[:40].tolist())) == 40 and len(set(idx[40:].tolist())) == 40
        assert set(idx[:40].tolist()) != set(idx[40:].tolist())  # B and B' drawn independently


def test_readings_enter_the_run_id_and_collapse_at_alpha_one():
    base = RunConfig("F1", 1.5, 2000)
    ids = {base.replace(stop_loss=s, sampling=m).run_id for s in ("full", "epoch_mean", "ne_epoch_mean")
           for m in ("independent", "epoch", "paired")}
    assert len(ids) == 9
    one = RunConfig("F1", 1.0, 900)
    assert one.replace(stop_loss="ne_epoch_mean").run_id == one.replace(stop_loss="epoch_mean").run_id
    assert one.replace(sampling="paired").run_id == one.replace(sampling="epoch").run_id
    with pytest.raises(ConfigError, match="unknown sampling"):
        RunConfig("F1", 1.5, 100, sampling="shuffled")


def test_epoch_sampled_run_resumes_to_the_same_record(tmp_path):
    data = synthetic_data(noise=1.0)
    cfg = RunConfig(network="F1", alpha=1.5, batch_size=30, check_every=10, max_steps=60, stop_loss="ne_epoch_mean",
                    sampling="paired", device="cpu")
    whole = train(cfg, data=data)

    train_killed_at(cfg, data, tmp_path / "c.pt", step=40)
    resumed = train(cfg, data=data, checkpoint=tmp_path / "c.pt", checkpoint_every_s=1e9)
    volatile = (*TIMES, "resumes")
    assert {k: v for k, v in resumed.items() if k not in volatile} == {k: v for k, v in whole.items()
                                                                       if k not in volatile}


def test_protocol_report_says_which_reading_matches(tmp_path):
    from nerepro.protocol import protocol_table, write_protocol
    from nerepro.report import load_results
    from records import record, write

    recs = []
    for s in range(4):  # the default reading: right accuracy, too few steps at alpha = 1.5
        recs.append(record("F1", 1.0, 900, s, 90.17 + 0.05 * s, 10934 + 100 * s))
        recs.append(record("F1", 1.5, 2000, s, 90.39, 11200 + 50 * s))
        recs.append(record("F1", 1.0, 900, s, 90.2, 10900 + 10 * s, stop_loss="epoch_mean"))
        recs.append(record("F1", 1.5, 2000, s, 90.35, 7900 + 10 * s, stop_loss="epoch_mean"))
        recs.append(record("F1", 3.0, 5000, s, 90.30 + 0.01 * s, 9000, stop_loss="epoch_mean"))
    results = load_results(write(tmp_path / "r", recs))
    table = protocol_table(results).set_index(["reading", "alpha"])
    default, epoch = table.loc["protocol=keras (default)"], table.loc["stop_loss=epoch_mean"]
    assert default.loc[1.0, "within_2_std"] and not default.loc[1.5, "within_2_std"]  # 11,275 vs 7,914 ± 528
    assert default.loc[1.5, "steps_diff_in_paper_std"] == pytest.approx((11275 - 7914) / 528)
    assert epoch["within_2_std"].all() and len(epoch) == 3  # Table 3's point is judged on accuracy only
    text = write_protocol(results, tmp_path / "out")
    assert "stop_loss=epoch_mean: within 2σ at 3 of 3 points" in text and "fewer than the paper's 10" in text


def test_alpha_one_runs_serve_the_readings_they_coincide_with(tmp_path):
    """At alpha = 1, ne_epoch_mean runs are epoch_mean runs and paired sampling is epoch sampling: a run of the
    default reading there is also the alpha = 1 row (Table 2's baseline) of the epoch_mean / epoch variants
    at alpha != 1, without training it twice, and of no variant that differs in anything else."""
    from nerepro.report import load_results
    from nerepro.results import DEFAULT_VARIANT
    from nerepro.tables import table_2
    from records import record, write

    recs = [record("F1", 1.0, 900, s, 90.0, 10000) for s in range(2)]  # the default reading at alpha = 1
    recs += [record("F1", 1.5, 2000, s, 90.3, 8000, stop_loss="epoch_mean", sampling="epoch") for s in range(2)]
    recs += [record("F1", 1.5, 2000, s, 90.3, 8000, stop_loss="full") for s in range(2)]
    results = load_results(write(tmp_path / "r", recs))
    assert recs[0]["config"]["stop_loss"] == "epoch_mean" and recs[0]["config"]["sampling"] == "epoch"
    variant = "stop_loss=epoch_mean, sampling=epoch"
    assert set(results.variants()) == {DEFAULT_VARIANT, variant, "stop_loss=full"}
    assert sorted(table_2(results, variant)["alpha"]) == [1.0, 1.5]
    assert sorted(table_2(results, "stop_loss=full")["alpha"]) == [1.5]  # L(w) at alpha = 1 is another run


@pytest.mark.parametrize("sampling,alpha,stop_loss", [
    ("independent", 2.0, "ne_epoch_mean"), ("epoch", 2.0, "epoch_mean"), ("paired", 2.0, "ne_epoch_mean"),
    ("paired", 1.0, "epoch_mean"), ("independent", 1.0, "full")])
def test_epoch_end_checks_read_exactly_that_epochs_steps(sampling, alpha, stop_loss):
    """--check-every epoch: a check every ceil(N/B) steps (ceil(N/2B) when B and B' are halves of one batch),
    and the epoch readings average exactly the steps of the epoch that just ended."""
    data = synthetic_data(n_train=100)
    cfg = RunConfig(network="F1", alpha=alpha, batch_size=15, optimizer="sgd", lr=1e-30, max_steps=24,
                    check_every="epoch", stop_loss=stop_loss, sampling=sampling, check_gate=0, device="cpu")
    record = train(cfg, data=data)
    epoch = math.ceil(100 / (30 if sampling == "paired" and alpha != 1 else 15))
    assert record["check_interval"] == epoch and record["check_every"] == "epoch"
    assert record["curve"]["step"] == [*range(epoch, 24, epoch), 24]  # and the last step, always
    model = build_model("F1", seed=0)
    sampler = make_sampler(cfg.effective_sampling, 100, 15, CPU, 0, second=alpha != 1)
    per_step = []
    with torch.no_grad():
        for step in range(24):
            idx = sampler.draw(step)
            losses = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx], reduction="none")
            l_b = losses[:15].mean()
            ne = alpha * l_b + (1 - alpha) * losses[15:].mean() if alpha != 1 else l_b
            per_step.append((ne if stop_loss == "ne_epoch_mean" else l_b).item())
    full = F.cross_entropy(model.eval()(data.x_train), data.y_train).item()
    for step, value in zip(record["curve"]["step"], record["curve"]["train_loss"]):
        if stop_loss == "full":
            assert value == pytest.approx(full, rel=1e-5)
        elif step % epoch == 0:
            assert value == pytest.approx(sum(per_step[step - epoch:step]) / epoch, rel=1e-5)


def test_keras_adam_is_keras_step_exactly():
    """Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), computed here by hand in float64, with
    gradients small enough that eps matters; PyTorch's default differs from it."""
    from nerepro.train import keras_adam_eps, make_optimizer

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, dtype=torch.float64, generator=g)
    grads = [torch.randn(50, dtype=torch.float64, generator=g) * 10 ** -k for k in (5, 6, 7, 8)]
    hand, m, v = w0.clone(), torch.zeros(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)
    for t, grad in enumerate(grads, 1):
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2
        hand = hand - 1e-3 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (v.sqrt() + 1e-7)
    ends = {}
    for update in ("keras", "pytorch"):
        w = w0.clone().requires_grad_()
        cfg = RunConfig("F1", 1.0, 100, adam_update=update)
        optimizer = make_optimizer(cfg, [w])
        for t, grad in enumerate(grads, 1):
            w.grad = grad.clone()
            if update == "keras":
                keras_adam_eps(optimizer, cfg.adam_eps, t)
            optimizer.step()
        ends[update] = w.detach()
    torch.testing.assert_close(ends["keras"], hand, rtol=1e-12, atol=1e-15)
    assert (ends["pytorch"] - hand).abs().max() > 1e-5  # the default is another update


def test_keras_protocol_is_a_shorthand_for_its_settings(tmp_path):
    from typer.testing import CliRunner

    from nerepro.cli import app
    from nerepro.config import PROTOCOLS

    keras = RunConfig("F1", 1.5, 2000, **PROTOCOLS["keras"])
    assert (keras.check_every, keras.stop_loss, keras.sampling, keras.adam_update) == \
        ("epoch", "ne_epoch_mean", "paired", "keras")
    data = tmp_path / "none"
    out = CliRunner().invoke(app, ["train", "--network", "F1", "--alpha", "1.5", "--batch-size", "2000",
                                   "--protocol", "keras", "--data-dir", str(data), "--out", str(tmp_path)])
    assert out.exit_code == 2 and "Fashion-MNIST not found" in out.output  # got as far as the data
    bad = CliRunner().invoke(app, ["train", "--network", "F1", "--alpha", "1.5", "--batch-size", "2000",
                                   "--protocol", "tensorflow", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown protocol 'tensorflow': choose one of keras" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    grid = tmp_path / "g.toml"
    grid.write_text('[[grid]]\nprotocol = "keras"\nnetwork = "F1"\nalpha = 1.5\nbatch_size = 2000\n'
                    '[[grid]]\nprotocol = "keras"\nsampling = "independent"\nnetwork = "F1"\nalpha = 1.5\n'
                    'batch_size = 2000\n')
    from nerepro.grid import load_plan

    runs = [c for _, c in load_plan([grid])]
    assert keras.run_id in {c.run_id for c in runs}  # the preset's run id is that of its settings
    assert {c.sampling for c in runs} == {"paired", "independent"}  # a setting beside the preset wins


def test_the_keras_reading_is_the_default_and_eq1_one_option_away(fake_fmnist_root, tmp_path):
    """`nerepro train` without reading options runs the Keras reading; --protocol eq1 the Eq. (1) reading, under
    another run id; the end line names the reading it stopped on and gives L(w) beside it (an NE reading can
    be negative)."""
    from typer.testing import CliRunner

    from nerepro.cli import app
    from nerepro.config import PROTOCOLS
    from nerepro.display import summary_line

    assert RunConfig("F1", 1.0, 900) == RunConfig("F1", 1.0, 900, **PROTOCOLS["keras"])
    eq1 = RunConfig("F1", 1.0, 900, **PROTOCOLS["eq1"])
    assert (eq1.check_every, eq1.stop_loss, eq1.sampling, eq1.adam_update) == (50, "full", "independent", "pytorch")
    assert eq1.run_id != RunConfig("F1", 1.0, 900).run_id
    args = ["train", "--network", "F1", "--alpha", "1.5", "--batch-size", "20", "--subset", "100", "--max-steps",
            "20", "--device", "cpu", "--data-dir", str(fake_fmnist_root)]
    records = {}
    for name, extra in (("default", []), ("eq1", ["--protocol", "eq1"])):
        out = CliRunner().invoke(app, args + extra + ["--out", str(tmp_path / name)])
        assert out.exit_code == 0, out.output
        records[name] = json.loads(next((tmp_path / name).glob("*.json")).read_text())
        records[name]["line"] = out.output.strip().splitlines()[-1]
    default, plain = records["default"], records["eq1"]
    assert (default["check_every"], default["stop_loss"], default["sampling"], default["adam_update"]) == \
        ("epoch", "ne_epoch_mean", "paired", "keras")
    assert (plain["check_every"], plain["stop_loss"], plain["sampling"], plain["adam_update"]) == \
        (50, "full", "independent", "pytorch")
    assert default["check_interval"] == 3 and plain["check_interval"] == 50  # ceil(100 / 40) steps per epoch
    assert f"epoch mean NE loss {default['train_loss']:.4g} (L(w) {default['train_loss_full']:.4g})" in default["line"]
    assert f"L(w) {plain['train_loss']:.4g}," in plain["line"] and "epoch mean" not in plain["line"]
    negative = {**default, "train_loss": -0.0002301, "train_loss_full": 0.00146}
    assert "epoch mean NE loss -0.0002301 (L(w) 0.00146)" in summary_line(negative)
