"""The per-step readings (--stop-loss step / running, --protocol step / keras-running): decisions against a
hand-written loop, packs and resumed runs against runs alone, traces, and the refused per-step L(w)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_run, synthetic_data, train_killed_at

from nerepro.config import PROTOCOLS, RunConfig
from nerepro.errors import ConfigError
from nerepro.models import build_model
from nerepro.sampling import make_sampler
from nerepro.trace import read_trace, trace_path, write_trace
from nerepro.train import keras_adam_eps, train, train_pack

DATA = synthetic_data(n_train=400, n_test=100)


def run(protocol="step", **kw) -> RunConfig:
    base = dict(network="F1", alpha=1.5, batch_size=40, device="cpu", precision="fp64", l_star=0.5, l_star_star=0.005,
                max_steps=400, trace=True)
    return RunConfig(**{**base, **PROTOCOLS[protocol], **kw})


def hand_loop(cfg: RunConfig, data=DATA) -> dict:
    """The plainest NE loop, written out here: draw [B; B'], loss = alpha L_B + (1 - alpha) L_B', step with
    Keras' Adam, then read `loss` (step) or the mean of the epoch's losses so far (running) against L* and L**:
    halve the rate from the next step on at the first reading below L*, stop at the first below L**."""
    torch.manual_seed(0)
    model = build_model("F1", seed=cfg.seed).to(torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=cfg.adam_eps)
    sampler = make_sampler(cfg.effective_sampling, data.n_train, cfg.batch_size, torch.device("cpu"), cfg.seed,
                           second=cfg.alpha != 1)
    x, y = data.x_train.to(torch.float64), data.y_train
    epoch = math.ceil(data.n_train / (2 * cfg.batch_size if cfg.alpha != 1 else cfg.batch_size))
    l_star, l_star_star = cfg.target_losses
    losses, halved, readings = [], None, []
    for step in range(1, cfg.max_steps + 1):
        idx = sampler.draw(step - 1)
        per_sample = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
        loss_b = per_sample[:cfg.batch_size].mean()
        loss = loss_b if cfg.alpha == 1 else cfg.alpha * loss_b + (1 - cfg.alpha) * per_sample[cfg.batch_size:].mean()
        optimizer.zero_grad()
        loss.backward()
        keras_adam_eps(optimizer, cfg.adam_eps, step)
        optimizer.step()
        losses.append(loss.item())
        since = losses[(step - 1) // epoch * epoch:]
        reading = losses[-1] if cfg.stop_loss == "step" else sum(since) / len(since)
        readings.append(reading)
        if reading < l_star_star:
            return {"converged": step, "halved": halved, "losses": losses, "readings": readings}
        if halved is None and reading < l_star:
            halved = step
            for group in optimizer.param_groups:
                group["lr"] = 5e-4
    return {"converged": None, "halved": halved, "losses": losses, "readings": readings}


@pytest.mark.parametrize("protocol", ["step", "keras-running"])
@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_decisions_match_a_hand_written_loop(protocol, alpha):
    cfg = run(protocol, alpha=alpha, seed=1)
    record, hand = train(cfg, data=DATA), hand_loop(cfg)
    assert hand["halved"] is not None and hand["converged"] is not None and hand["converged"] > hand["halved"] + 1
    assert (record["lr_halved_step"], record["convergence_steps"]) == (hand["halved"], hand["converged"])
    assert record["trace"]["objective"] == pytest.approx(hand["losses"], rel=1e-9)
    # the record's rows: every epoch's end and each decision, the reading as the hand loop read it
    for step, value, lr in zip(record["curve"]["step"], record["curve"]["train_loss"], record["curve"]["lr"]):
        assert value == pytest.approx(hand["readings"][step - 1], rel=1e-9)
        assert lr == (5e-4 if step >= hand["halved"] else 1e-3)
    assert hand["halved"] in record["curve"]["step"] and record["curve"]["step"][-1] == hand["converged"]
    assert record["train_loss"] == pytest.approx(hand["readings"][-1], rel=1e-9)


def test_the_step_and_keras_readings_share_a_trajectory_until_the_first_halving():
    """The step reading is the Keras reading's draws and Adam, read at every step: the same losses until it
    halves, then not (the halving takes effect from the next step)."""
    step_run = train(run("step"), data=DATA)
    halved = step_run["lr_halved_step"]
    keras = train(run("keras", max_steps=halved + 5, l_star=1e-6, l_star_star=1e-7), data=DATA)
    assert step_run["trace"]["objective"][:halved + 1] == keras["trace"]["objective"][:halved + 1]
    assert step_run["trace"]["objective"][halved + 1] != keras["trace"]["objective"][halved + 1]


@pytest.mark.parametrize("protocol", ["step", "keras-running"])
def test_a_pack_decides_each_run_as_alone(protocol):
    """Runs that halve and stop at different steps in a pack: each one's record as alone (float64)."""
    runs = [run(protocol, alpha=a, seed=s) for a, s in ((1.5, 0), (2.0, 1), (1.5, 2))]
    packed = train_pack(runs, data=DATA)
    alone = [train(r, data=DATA) for r in runs]
    assert len({r["convergence_steps"] for r in alone}) > 1, "the runs should leave the pack at different steps"
    for p, a in zip(packed, alone):
        assert p["pack_size"] == 3
        assert_same_run(p, a)
        assert p["trace"]["objective"] == pytest.approx(a["trace"]["objective"], rel=1e-8)


@pytest.mark.parametrize("protocol", ["step", "keras-running"])
def test_a_killed_run_continues_to_the_same_record(protocol, tmp_path):
    cfg = run(protocol)
    whole = train(cfg, data=DATA)
    at = whole["curve"]["step"][1]  # a row after the first checkpoint
    checkpoint = tmp_path / "run.pt"
    train_killed_at(cfg, DATA, checkpoint, at)
    resumed = train(cfg, data=DATA, checkpoint=checkpoint)
    assert resumed["resumes"] == 1
    assert_same_run(resumed, whole, rel=0)
    assert resumed["trace"] == whole["trace"]


def test_a_pack_resumed_at_different_steps_decides_as_alone(tmp_path):
    runs = [run("step", alpha=a, seed=s) for a, s in ((1.5, 0), (2.0, 1))]
    alone = [train(r, data=DATA) for r in runs]
    checkpoints = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for cfg, record, path in zip(runs, alone, checkpoints):
        train_killed_at(cfg, DATA, path, record["curve"]["step"][0 if path.stem == "a" else 1])
    for p, a in zip(train_pack(runs, data=DATA, checkpoints=checkpoints), alone):
        assert_same_run(p, a)


def test_ghost_batch_norm_networks_decide_without_pipelining():
    """C1 reads its step loss unpipelined (a forward changes batch norm's running statistics): the rule holds on
    its trace."""
    data = synthetic_data(n_train=200, n_test=100, shape=(3, 32, 32))
    cfg = RunConfig(network="C1", alpha=1.5, batch_size=50, ghost_batch_size=50, check_chunk=100, device="cpu",
                    l_star=1.5, l_star_star=0.3, max_steps=60, trace=True, **PROTOCOLS["step"])
    record = train(cfg, data=data)
    losses = record["trace"]["objective"]
    halved = next((i + 1 for i, v in enumerate(losses) if v < 1.5), None)
    assert halved is not None and record["lr_halved_step"] == halved
    stop = next((i + 1 for i, v in enumerate(losses) if v < 0.3), None)
    assert record["convergence_steps"] == stop and len(losses) == record["steps"]


def test_trace_files_round_trip(tmp_path):
    trace = {"loss_b": [0.5, 0.25, 1e-9], "objective": [0.75, float(torch.tensor(0.1, dtype=torch.float32)), 2.0]}
    path = write_trace(trace_path(tmp_path / "F1-x.json"), trace)
    assert path.name == "F1-x.trace.csv.gz"
    back = read_trace(path)
    assert back["step"].tolist() == [1, 2, 3]
    assert back["loss_b"].tolist() == trace["loss_b"] and back["objective"].tolist() == trace["objective"]


def test_a_fp32_trace_is_the_step_losses_the_run_decided_on(tmp_path):
    """Written and read back, an fp32 run's trace is the losses it decided on, exactly."""
    cfg = run("step", precision="fp32")
    record = train(cfg, data=DATA)
    path = write_trace(trace_path(tmp_path / f"{cfg.run_id}.json"), record["trace"])
    losses = read_trace(path)["objective"].tolist()
    assert losses == record["trace"]["objective"]
    assert record["lr_halved_step"] == next(i + 1 for i, v in enumerate(losses) if v < 0.5)


def test_per_step_full_loss_is_refused_with_the_cheaper_choices():
    with pytest.raises(ConfigError, match="every step.*--protocol step.*--protocol keras-running.*eq1"):
        RunConfig(network="F1", alpha=1.5, batch_size=100, stop_loss="full", check_every=1)
    with pytest.raises(ConfigError, match="--check-every 1"):
        RunConfig(network="F1", alpha=1.5, batch_size=100, stop_loss="step")
    out = subprocess.run([sys.executable, "-m", "nerepro", "train", "--network", "F1", "--alpha", "1.5",
                          "--batch-size", "100", "--stop-loss", "full", "--check-every", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "--protocol step" in out.stderr


def test_named_readings_are_variants_of_their_own():
    from nerepro.results import variant_of

    for protocol in ("step", "keras-running"):
        cfg = RunConfig(network="F1", alpha=1.5, batch_size=2000, **PROTOCOLS[protocol])
        record = {"network": "F1", "alpha": 1.5, "batch_size": 2000, "config": cfg.record_config()}
        assert variant_of(record) == f"protocol={protocol}"
    assert RunConfig(network="F1", alpha=1.5, batch_size=2000, trace=True).run_id == \
        RunConfig(network="F1", alpha=1.5, batch_size=2000).run_id


def test_bench_times_a_per_step_reading(monkeypatch):
    """`nerepro bench --protocol step` trains under that reading: a check at every step, their host time timed."""
    from nerepro import bench as benchmod

    monkeypatch.setattr(benchmod, "bench_data", lambda network, device, data_dir: (DATA, False))
    monkeypatch.setattr(benchmod, "matmul_peak", lambda *a, **k: 1.0)
    result = benchmod.bench("F1", batch_size=40, alpha=1.5, steps=8, device="cpu", warmup=2, protocol="step")
    assert (result["protocol"], result["check_every"], result["stop_loss"], result["steps"]) == ("step", 1, "step", 8)
    assert 0 < result["check_share"] < 1
    pack = benchmod.bench_pack("F1", batch_size=40, alpha=1.5, steps=8, runs=2, device="cpu", warmup=2,
                               protocol="keras-running")
    assert pack["check_every"] == 1 and pack["pack"]["run_steps_per_s"] > 0


def test_a_trace_begun_on_resumption_says_where_it_starts(tmp_path):
    """A run resumed with --trace from a checkpoint written without it traces from the step it resumed at."""
    cfg = run("keras")
    checkpoint = tmp_path / "run.pt"
    whole = train(cfg, data=DATA)
    at = whole["curve"]["step"][1]
    train_killed_at(cfg.replace(trace=False), DATA, checkpoint, at)
    resumed = train(cfg, data=DATA, checkpoint=checkpoint)
    start = resumed["trace"]["first_step"]
    assert 1 < start <= at + 1 and resumed["trace"]["objective"] == whole["trace"]["objective"][start - 1:]
    path = write_trace(trace_path(tmp_path / "r.json"), resumed["trace"])
    assert read_trace(path)["step"][0] == start


def test_a_long_trace_is_whole_across_its_flushes(monkeypatch):
    """Traces reach the host every FLUSH steps: a run over several flushes keeps every step once, in order."""
    from nerepro import trace as tracemod

    monkeypatch.setattr(tracemod, "FLUSH", 7)
    cfg = run("keras", max_steps=30, l_star=1e-6, l_star_star=1e-7)
    record = train(cfg, data=DATA)
    assert len(record["trace"]["objective"]) == 30 and record["trace"].get("first_step", 1) == 1
    monkeypatch.setattr(tracemod, "FLUSH", 1000)
    assert train(cfg, data=DATA)["trace"] == record["trace"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("protocol", ["step", "keras-running"])
def test_cuda_per_step_decisions_match_the_cpu(protocol):
    """On CUDA the readings reach the host by an asynchronous copy and an event (train.reading_copy): a pack
    there decides every run at the CPU's steps, alone, in float64."""
    runs = [run(protocol, alpha=a, seed=s) for a, s in ((1.5, 0), (2.0, 1), (1.5, 2))]
    packed = train_pack([r.replace(device="cuda") for r in runs], data=DATA)
    for p, r in zip(packed, runs):
        alone = train(r, data=DATA)
        assert p["provenance"]["device_type"] == "cuda"
        assert_same_run(p, alone, rel=1e-8)
