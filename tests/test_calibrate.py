"""A CPU sweep's plan scaled to the machine it runs on (calibrate.py): a few seconds of each kind of run to do,
timed here against the records' step time."""

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from nerepro import RunConfig
from nerepro import calibrate as cal
from nerepro.cli import app
from nerepro.cost import MACHINE, Throughput, one_machine
from nerepro.plan import planning_throughput
from nerepro.results import load_records


def record(cfg, steps, wall_s, check_s, threads=1):
    return {"run_id": cfg.run_id, "network": "F1", "alpha": cfg.alpha, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "status": "converged", "steps": steps, "stop_loss": cfg.effective_stop_loss, "check_every": cfg.check_every,
            "samples_processed": steps * cfg.samples_per_step(60_000), "wall_s": wall_s, "check_s": check_s,
            "config": cfg.record_config(), "provenance": {"device_type": "cpu", "threads": threads}}


def sweep_args(tmp_path, data_root, grid: str) -> tuple:
    """(config, results, the sweep's arguments) of a CPU sweep of `grid` on one thread a worker."""
    config, results = tmp_path / "grid.toml", tmp_path / "r"
    config.write_text(grid)
    return config, results, ["sweep", str(config), "--results", str(results), "--data-dir", str(data_root), "--device",
                             "cpu", "--threads", "1"]


def test_a_step_is_timed_after_the_warm_up_without_its_checks_at_the_median(monkeypatch):
    """step_seconds: each step's time from step WARMUP on less the loss checks in it, the median of them (a fake
    loop of 1 s a step, 0.25 s of it checks, a slow first step and a burst of other work at one step)."""
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(cal, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def fake_train(cfg, data, final_evaluation, before_step):
        state, start = SimpleNamespace(check_s=0.0), clock.now
        for step in range(cfg.max_steps):
            before_step(step, state)
            clock.now += 5.0 if step == 0 else 30.0 if step == cal.WARMUP + 3 else 1.0
            state.check_s += 0.25
        return {"steps": cfg.max_steps, "loop_s": clock.now - start, "check_s": state.check_s, "status": "ok"}

    monkeypatch.setattr(cal, "train", fake_train)
    cfg = RunConfig("F1", 1.0, 900, max_steps=cal.WARMUP + 8)
    assert cal.step_seconds(cfg, data=None) == pytest.approx(0.75)
    with pytest.raises(RuntimeError, match="nothing to time"):
        cal.step_seconds(cfg.replace(max_steps=cal.WARMUP), data=None)


def test_each_kind_takes_its_step_time_here_over_the_records_averaged_over_the_workers(monkeypatch):
    """calibrate: a kind's factor is the workers' mean step time here over its records' (fastest) step time; the
    median factor (MACHINE) stands for the kinds not timed; a line per kind says so. Bad seconds: an error."""
    plain, ne = RunConfig("F1", 1.0, 900), RunConfig("F1", 1.5, 2000)
    throughput, _ = planning_throughput([record(plain, 1000, 110.0, 10.0), record(ne, 1000, 600.0, 50.0)], ["cpu"], 1)
    calls = []

    def fake_side_by_side(target, work, threads, data_dir):
        calls.append((work, threads))
        return [[0.2, 1.1], [0.4, 0.55]]  # two workers: plain, then NE

    monkeypatch.setattr(cal, "side_by_side", fake_side_by_side)
    lines = cal.calibrate(throughput, [ne.replace(seed=4), plain.replace(seed=2)][::-1], workers=2, threads=1,
                          seconds=10.0)
    (work, _), threads = calls[0][0][0], calls[0][1]
    assert len(calls[0][0]) == 2 and threads == 1  # each worker times every kind
    assert [c.max_steps - cal.WARMUP for c in work] == [100, 18]  # 10 s at 0.1 s and at 0.55 s a step
    assert throughput.scale[Throughput.kind(plain)[:3]] == pytest.approx(0.3 / 0.1)
    assert throughput.scale[Throughput.kind(ne)[:3]] == pytest.approx(0.825 / 0.55)
    assert throughput.scale[MACHINE] == pytest.approx((3.0 + 1.5) / 2)
    assert lines[0].startswith("calibration: F1 B=900 alpha=1: 0.3 s a training step here (2 workers x 1 thread, "
                               "100 steps) against 0.1 s in the records: plan x3.00")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(cal.ConfigError):
            cal.calibrate(throughput, [plain], 1, 1, bad)


def test_runs_of_kinds_without_records_are_planned_at_their_step_time_timed_here(monkeypatch):
    """A new row (Table 3's F1 row, alpha = 3 at B = 5000, no record of its kind) is timed here before the
    recorded kinds, for about `seconds` at the guess from the network's samples a second, and its runs are planned
    at its step time here times their steps (no factor: Throughput.here), its checks where it reads L(w) at the
    network's pooled check time a step times the machine's factor; where those checks are unknown, it is not
    timed and keeps the guess; a network without records is not timed."""
    plain, ne, new = RunConfig("F1", 1.0, 900), RunConfig("F1", 1.5, 2000), RunConfig("F1", 3.0, 5000)
    eq1 = new.replace(stop_loss="full", check_every=50, sampling="independent")  # reads L(w) every 50 steps
    records = [record(plain, 1000, 110.0, 10.0), record(ne, 1000, 600.0, 50.0)]
    throughput, _ = planning_throughput(records, ["cpu"], 1)
    guess = throughput.seconds(new) / throughput.run_steps(new)  # 10,000 samples a step at B = 900's a second
    assert guess == pytest.approx(10_000 / (900 * 1000 / 110.0))
    assert cal.kinds([new, ne], throughput) == [ne]
    assert cal.new_kinds([new, new.replace(seed=1), ne], throughput) == [new]
    assert cal.new_kinds([eq1], throughput) == []  # no checks of 10,000 samples every 50 steps pooled
    assert cal.new_kinds([RunConfig("C1", 1.0, 100)], throughput) == []  # no record of its network: no guess
    calls = []

    def fake_side_by_side(target, work, threads, data_dir):
        calls.append(work[0][0])
        return [[1.5, 0.66], [1.3, 0.66]]  # the new kind, then NE

    monkeypatch.setattr(cal, "side_by_side", fake_side_by_side)
    lines = cal.calibrate(throughput, [new, eq1, ne.replace(seed=5)], workers=2, threads=1, seconds=10.0)
    assert [(c.alpha, c.batch_size, c.seed) for c in calls[0]] == [(3.0, 5000, 0), (1.5, 2000, 5)]
    assert all(c.device == "cpu" for c in calls[0])
    assert [c.max_steps - cal.WARMUP for c in calls[0]] == [round(10.0 / guess), 18]
    assert throughput.scale == {Throughput.kind(ne)[:3]: pytest.approx(0.66 / 0.55), MACHINE: pytest.approx(1.2)}
    assert throughput.here == {Throughput.kind(new)[:3]: pytest.approx(1.4)}
    assert lines[0] == (f"calibration: F1 B=5000 alpha=3: 1.4 s a training step here (2 workers x 1 thread, "
                        f"{round(10.0 / guess)} steps); no record of its kind: its runs planned at it (a guess from "
                        f"the network's other records: {guess:.3g} s)")
    assert throughput.timed_here(new) and not throughput.timed_here(ne)
    assert throughput.seconds(new.replace(seed=7)) == pytest.approx(1.4 * throughput.run_steps(new))
    assert not throughput.timed_here(eq1)  # the guess at the machine's factor, checks and all
    assert throughput.seconds(eq1) == pytest.approx(1.2 * throughput._recorded_seconds(eq1))
    throughput.checks["F1", 60_000, 50] = [1000, 20.0]  # once the network's checks are known: 0.02 s a step
    assert throughput.timed_here(eq1)  # the kind's training step timed here, plus the checks at the factor
    assert throughput.seconds(eq1) == pytest.approx((1.4 + 1.2 * 0.02) * throughput.run_steps(eq1))
    throughput.training[Throughput.kind(new)[:3]] = [100, 150.0]  # a record of the kind: the records' plan again
    assert not throughput.timed_here(new) and not cal.new_kinds([new], throughput)


def test_a_sweep_of_new_kinds_alone_also_times_a_recorded_kind_for_the_machines_factor(monkeypatch):
    """Where no kind to do has records (a sweep of Table 3's F1 row alone), a recorded kind of the network nearest
    in samples a step (NE at B = 2000: 4,000 against 10,000; plain B = 900 for plain B = 1000) is timed too, for
    the machine's factor (MACHINE): the check time of a new kind that reads L(w), and the plan of a new kind not
    timed; MAX_KINDS - 1 new kinds at most leave it a place."""
    plain, ne, new = RunConfig("F1", 1.0, 900), RunConfig("F1", 1.5, 2000), RunConfig("F1", 3.0, 5000)
    throughput, _ = planning_throughput([record(plain, 1000, 110.0, 10.0), record(ne, 1000, 600.0, 50.0)], ["cpu"], 1)
    assert cal.stand_ins([new, new.replace(seed=1)], throughput) == [ne]
    assert cal.stand_ins([RunConfig("F1", 1.0, 1000)], throughput) == [plain]
    assert cal.stand_ins([RunConfig("C1", 1.0, 100)], throughput) == []  # no record of its network: nothing
    many = [RunConfig("F1", 3.0, b) for b in (5000, 4000, 3000, 2500)]  # four kinds: B, with NE
    timed = []

    def fake_side_by_side(target, work, threads, data_dir):
        timed.extend(work[0][0])
        return [[2.0] * len(work[0][0])]

    monkeypatch.setattr(cal, "side_by_side", fake_side_by_side)
    lines = cal.calibrate(throughput, many, workers=1, threads=1, seconds=10.0)
    assert [(c.alpha, c.batch_size) for c in timed] == [(3.0, 5000), (3.0, 4000), (3.0, 3000), (1.5, 2000)]
    assert throughput.scale[MACHINE] == pytest.approx(2.0 / 0.55)
    assert lines[-1].endswith("plan x3.64 for the machine (no kind to do has records)")
    assert throughput.timed_here(many[2]) and not throughput.timed_here(many[3])  # B = 2500: not timed
    assert throughput.seconds(many[3]) == pytest.approx(2.0 / 0.55 * throughput._recorded_seconds(many[3]))


def test_a_resumed_run_times_the_plan_where_all_its_segments_ran_on_one_kind_of_machine():
    """A run paused and continued (Table 3's F1 row across calls): its record counts for the plan's speed where
    its segments all ran on one device and CPU at one thread count; not where one ran elsewhere, nor where its
    segments were not all kept."""
    new = RunConfig("F1", 3.0, 5000)
    part = {"device": "AMD EPYC", "cpu_id": "family 25, model 17, stepping 1", "threads": 1}
    resumed = record(new, 4000, 6000.0, 0.0)
    resumed.update(resumes=1)
    resumed["provenance"]["segments"] = [part, part]
    assert one_machine(resumed) and one_machine(record(new, 4000, 6000.0, 0.0))
    throughput, timed = planning_throughput([resumed], ["cpu"], 1)
    assert timed == [resumed] and throughput.step_s(new) == pytest.approx(1.5)
    direct = Throughput(fastest=True)  # Throughput.add alike, without planning_throughput's choice of records
    direct.add(resumed)
    assert direct.step_s(new) == pytest.approx(1.5)
    for segments in ([part, {**part, "threads": 2}], [part, {**part, "cpu_id": "family 6, model 85"}], [part]):
        resumed["provenance"]["segments"] = segments
        assert not one_machine(resumed)
        throughput, timed = planning_throughput([resumed], ["cpu"], 1)
        assert timed == [] and throughput.step_s(new) is None
        direct = Throughput(fastest=True)
        direct.add(resumed)
        assert direct.step_s(new) is None and not direct.measured(new)


def test_a_kind_not_timed_here_takes_the_median_factor():
    """Throughput.scale: each (network, B, NE) at its own factor, the others at the median's (MACHINE), times the
    records' training step (`step_s`, what the factor was measured against) and steps, checks left out."""
    plain, ne = RunConfig("F1", 1.0, 900), RunConfig("F1", 1.5, 2000)
    throughput, _ = planning_throughput([record(plain, 1000, 110.0, 10.0), record(ne, 1000, 600.0, 50.0)], ["cpu"], 1)
    assert throughput.seconds(plain) == pytest.approx(110.0)  # uncalibrated: the kind's own run, checks and all
    throughput.scale = {Throughput.kind(plain)[:3]: 1.5, MACHINE: 1.2}
    assert throughput.seconds(plain) == pytest.approx(1.5 * 1000 * 0.1)
    assert throughput.seconds(ne) == pytest.approx(1.2 * 1000 * 0.55)
    assert throughput.step_s(plain) == pytest.approx(0.1) and throughput.step_s(ne) == pytest.approx(0.55)
    assert cal.kinds([plain, plain.replace(seed=3), RunConfig("F1", 1.5, 900), ne], throughput) == [plain, ne]


def test_a_calibrated_plan_times_the_step_the_factor_was_measured_against_plus_the_kinds_checks():
    """A kind whose own run ran slower than the fastest training step of its (network, B, NE) (Eq. (1) at
    alpha = 1 in another session: 0.2 s a step, 0.02 s of it full checks, against the default reading's 0.1 s):
    uncalibrated, the plan is its own run's speed; calibrated, the factor scales the step it was measured
    against (0.1 s) plus the checks' time per step (0.02 s), not the slower run's step."""
    keras = RunConfig("F1", 1.0, 900, seed=1)
    eq1 = RunConfig("F1", 1.0, 900, seed=2, stop_loss="full", check_every=50, sampling="independent")
    records = [record(keras, 1000, 100.0, 0.1), record(eq1, 1000, 200.0, 20.0)]
    throughput, _ = planning_throughput(records, ["cpu"], 1)
    assert throughput.seconds(eq1) == pytest.approx(200.0)
    throughput.scale = {Throughput.kind(eq1)[:3]: 1.2}
    assert throughput.step_s(eq1) == pytest.approx(0.0999)
    assert throughput.seconds(eq1) == pytest.approx(1.2 * 1000 * (0.0999 + 0.02))
    assert throughput.seconds(keras) == pytest.approx(1.2 * 1000 * 0.0999)


def test_a_time_limited_cpu_sweep_plans_at_the_records_speed_times_the_factor_it_measured(tmp_path, fake_fmnist_root,
                                                                                          monkeypatch):
    """With --time-limit on the CPU the sweep times each kind of run to do in its workers and logs the factor
    (`calibrated:`); each run's `planned:` seconds are the records' plan times its kind's factor. A calibration
    that fails leaves the plan at the records' speed and the sweep going. Bad input: one line, exit 2."""
    grid = "seeds = {}\n[settings]\nmax_steps = 40\ncheck_every = 10\n[[grid]]\nnetwork = \"F1\"\nalpha = [1.0, 1.5]\n" \
           "batch_size = [20]\n"
    config, results, base = sweep_args(tmp_path, fake_fmnist_root, grid.format(1))
    first = CliRunner().invoke(app, [*base, "--workers-per-device", "1"])
    assert first.exit_code == 0, first.output
    config.write_text(grid.format(3))
    records = load_records(results)[0]
    out = CliRunner().invoke(app, [*base, "--workers-per-device", "2", "--time-limit", "1s", "--calibrate", "0.2"])
    assert out.exit_code == 0, out.output
    assert sum(line.startswith("calibration: F1 B=20 ") for line in out.output.splitlines()) == 2, out.output
    log = [line.split() for line in (results / "sweep.log").read_text().splitlines()]
    factors = {p[4]: float(p[3].split(":")[1]) for p in log if p[3].startswith("calibrated:")}
    planned = {p[4]: float(p[3].split(":")[1]) for p in log if p[3].startswith("planned:")}
    named = {p[4]: float(p[5].split(":")[1]) for p in log if p[3].startswith("planned:")}  # the plan's own factor
    steps = {p[4]: p[6] for p in log if p[3].startswith("planned:")}  # and its steps (plan against actual's split)
    throughput, _ = planning_throughput(records, ["cpu", "cpu"], 1)
    todo = {c.run_id: c for c in [RunConfig("F1", a, 20, seed=s, max_steps=40, check_every=10) for a in (1.0, 1.5)
                                  for s in (1, 2)]}
    assert set(planned) == set(todo)
    kinds = {Throughput.kind(todo[run_id])[:3]: f for run_id, f in factors.items()}  # each logged beside a run timed
    assert len(kinds) == 2 and all(f > 0 for f in kinds.values())
    for cfg in todo.values():  # each at its kind's factor times the records' training step (all logged to 4 digits)
        assert not Throughput.kind(cfg)[3]  # the default reading checks no L(w): no check time in the plan
        assert planned[cfg.run_id] == pytest.approx(
            kinds[Throughput.kind(cfg)[:3]] * throughput.run_steps(cfg) * throughput.step_s(cfg), rel=2e-3)
        assert named[cfg.run_id] == kinds[Throughput.kind(cfg)[:3]]
        ran = [r["steps"] for r in records if r["alpha"] == cfg.alpha]  # the row's one finished seed
        assert len(ran) == 1 and steps[cfg.run_id] == f"steps:{ran[0]}"
    def broken(*args):
        raise RuntimeError("a benchmark worker process died")

    monkeypatch.setattr(cal, "side_by_side", broken)
    out = CliRunner().invoke(app, [*base, "--workers-per-device", "2", "--time-limit", "1s"])  # the default 10 s
    assert out.exit_code == 0 and "calibration failed (a benchmark worker process died)" in out.output, out.output
    log = (results / "sweep.log").read_text().splitlines()
    last = {line.split()[4]: (float(line.split()[3].split(":")[1]), line.split()[5]) for line in log
            if " planned:" in line}
    assert all(last[c.run_id][0] == pytest.approx(throughput.seconds(c), rel=1e-3) and last[c.run_id][1] == "factor:-"
               for c in todo.values())
    for value in ("-1", "nan"):
        bad = CliRunner().invoke(app, [*base, "--dry-run", "--calibrate", value])
        assert bad.exit_code == 2 and "--calibrate" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_a_time_limited_cpu_sweep_plans_a_kind_without_records_at_its_step_time_here(tmp_path, fake_fmnist_root):
    """A sweep whose runs to do are of a kind without records (NE at B = 20, after plain runs at B = 20) times
    that kind in its workers and plans each of its runs at the step time timed times its steps: the `planned:`
    line says `factor:here`; the dry run with --calibrate plans them alike and says so."""
    grid = "seeds = 2\n[settings]\nmax_steps = 40\ncheck_every = 10\n[[grid]]\nnetwork = \"F1\"\nalpha = {}\n" \
           "batch_size = 20\n"
    config, results, base = sweep_args(tmp_path, fake_fmnist_root, grid.format(1.0))
    base = [*base, "--workers-per-device", "1"]
    assert CliRunner().invoke(app, base).exit_code == 0
    config.write_text(grid.format(1.5))
    out = CliRunner().invoke(app, [*base, "--time-limit", "1s", "--calibrate", "0.2"])
    assert out.exit_code == 0, out.output
    timed = [line for line in out.output.splitlines() if line.startswith("calibration: F1 B=20 alpha=1.5: ")]
    assert len(timed) == 1 and "no record of its kind: its runs planned at it" in timed[0], out.output
    step = float(timed[0].split(": ")[2].split(" s a training step")[0])
    planned = [line.split()[3:] for line in (results / "sweep.log").read_text().splitlines() if " planned:" in line]
    assert len(planned) == 2 and all(p[2] == "factor:here" for p in planned)
    for p in planned:  # the step time here (printed to 3 digits) times the plan's steps (logged to 4)
        assert float(p[0].split(":")[1]) == pytest.approx(step * float(p[3].split(":")[1]), rel=6e-3)
    dry = CliRunner().invoke(app, [*base, "--dry-run", "--calibrate", "0.2"])
    assert dry.exit_code == 0 and "kinds without records at their step time timed here (above)" in dry.output, \
        dry.output
