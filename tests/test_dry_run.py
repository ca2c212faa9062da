"""The dry run plans: a table per network and priority whose totals are the sums of the per-run estimates."""

import json

import pytest
from typer.testing import CliRunner

from conftest import REPO
from nerepro.bench import training_flops_per_sample
from nerepro.cli import app
from nerepro.cost import Throughput, estimated_flop, estimated_samples, estimated_seconds, estimated_steps
from nerepro.grid import load_grid, load_plan
from nerepro.plan import PlanRow, plan_rows, render_table

GRID = """seeds = 2
[settings]
max_steps = 60
check_every = 10
[[grid]]
network = "F1"
alpha = [1.0, 2.0]
batch_size = [20, 40]
"""


def dry_run(*args):
    out = CliRunner().invoke(app, ["sweep", *map(str, args), "--dry-run", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    return out.output.splitlines()


def table(lines):
    """The rendered table's rows (header excluded, total included), each split on whitespace."""
    start = next(i for i, line in enumerate(lines) if line.startswith("network "))
    end = next(i for i, line in enumerate(lines) if line.startswith("total "))
    return [line.split() for line in lines[start + 1:end + 1]]


def seconds_of(value, unit):
    """A rendered duration ('38 min', '5.2 h', '1,234 h') in seconds, and half its last digit's worth."""
    scale = {"s": 1, "min": 60, "h": 3600}[unit]
    return float(value.replace(",", "")) * scale, 0.5 * scale * (0.1 if "." in value else 1)


def test_paper_dry_run_fits_one_screen_and_its_totals_are_the_sums(tmp_path):
    config = REPO / "configs" / "paper.toml"
    lines = dry_run(config, "--results", tmp_path / "r")
    assert len(lines) < 40 and not any(line.startswith(("F1-a", "C1-a", "C2-a")) for line in lines)
    assert not (tmp_path / "r").exists()
    runs = load_grid([config])
    flop = {n: training_flops_per_sample(n) for n in ("F1", "C1", "C2")}  # builds a model: once per network
    rows = table(lines)
    assert [r[0] for r in rows] == ["F1", "C1", "C2", "total"]
    for row, network in zip(rows, ["F1", "C1", "C2", None]):
        mine = [c for c in runs if network in (None, c.network)]
        assert int(row[1].replace(",", "")) == len(mine) and row[2] == "0"  # to do, recorded
        assert int(row[3].replace(",", "")) == len(mine)  # packs: off on a CPU, one run each
        for value, expected in zip(row[4:7], (sum(estimated_steps(c) for c in mine),
                                              sum(estimated_samples(c) for c in mine),
                                              sum(estimated_samples(c) * flop[c.network] for c in mine))):
            assert float(value) == pytest.approx(expected, rel=5e-3)  # three digits
        assert row[7:9] == ["?", "-"]  # no records, no --tflops: the time is unknown, and the hint says why
        assert row[9] == "keras"  # paper.toml: the default reading throughout
    assert any("device time: unknown for 1,290 runs" in line for line in lines)
    assert any("--tflops fp32=T" in line for line in lines) and any("nerepro bench" in line for line in lines)


def test_plan_rows_add_up_and_render_as_printed(tmp_path):
    config = REPO / "configs" / "fig2.toml"
    plan = load_plan([config])
    runs, priority = [c for _, c in plan], {c.run_id: p for p, c in plan}
    rates = {"fp32": 40.0, "F1": 2.0}
    rows = plan_rows(runs, set(), priority, max_pack=10, rates=rates)
    total = rows[-1]
    assert [r.network for r in rows] == ["F1", "C2", "total"] and total.priority is None
    assert total.todo == len(runs) and total.flop == pytest.approx(sum(estimated_flop(c) for c in runs))
    assert total.steps == sum(estimated_steps(c) for c in runs)
    assert total.samples == sum(r.samples for r in rows[:-1]) == sum(estimated_samples(c) for c in runs)
    # F1 at its own rate (a network's rate wins over its precision's), C2 at fp32's
    expected = sum(estimated_flop(c) / (2e12 if c.network == "F1" else 40e12) for c in runs)
    assert total.time_s == pytest.approx(expected) and set(total.seconds) == {"F1=2", "fp32=40"}
    assert total.unknown == 0 and total.packs == sum(r.packs for r in rows[:-1]) < total.todo
    lines = dry_run(config, "--results", tmp_path / "r", "--pack", "on", "--tflops", "fp32=40,F1=2")
    header = next(i for i, line in enumerate(lines) if line.startswith("network "))
    assert lines[header:header + len(rows) + 1] == render_table(rows)
    rendered = table(lines)[-1]
    assert seconds_of(*rendered[7:9])[0] == pytest.approx(expected, abs=seconds_of(*rendered[7:9])[1])


def test_recorded_runs_count_as_recorded_and_time_their_speed(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(GRID)
    runs = load_grid([config])  # run ids from RunConfig, whatever its defaults
    results = tmp_path / "r"
    (results / "runs").mkdir(parents=True)
    recorded, failed = runs[:2], runs[2]

    def write(cfg, status, wall_s):
        record = {"run_id": cfg.run_id, "network": cfg.network, "alpha": cfg.alpha, "batch_size": cfg.batch_size,
                  "seed": cfg.seed, "status": status, "steps": 60, "samples_processed": 60 * cfg.batch_size,
                  "wall_s": wall_s, "provenance": {"device": "test-cpu"}}
        (results / "runs" / f"{cfg.run_id}.json").write_text(json.dumps(record))
        return record

    records = [write(cfg, "converged", 12.0) for cfg in recorded] + [write(failed, "error", 1.0)]
    lines = dry_run(config, "--results", results)
    todo = [c for c in runs if c not in recorded]  # the failed run is retried: still to do
    assert lines[0].startswith(f"{len(todo)} runs to do, 2 of {len(runs)} already recorded")
    row = table(lines)[0]
    assert row[:4] == ["F1", str(len(todo)), "2", str(len(todo))] and row[9] == "measured"
    throughput = Throughput()
    for r in records:
        throughput.add(r)
    expected = sum(throughput.seconds(c) for c in todo)
    value, tolerance = seconds_of(*row[7:9])
    assert value == pytest.approx(expected, abs=tolerance)
    assert any("the speed of the 2 runs recorded" in line and "test-cpu" in line for line in lines)
    listed = CliRunner().invoke(app, ["sweep", str(config), "--results", str(results), "--dry-run", "--list"])
    assert listed.exit_code == 0, listed.output
    ids = [line for line in listed.output.splitlines() if line.startswith("F1-a")]
    assert sorted(ids) == sorted(c.run_id for c in todo)


def test_f1_dry_run_has_a_row_per_priority(tmp_path):
    config = REPO / "configs" / "f1.toml"
    lines = dry_run(config, "--results", tmp_path / "r", "--tflops", "F1=2")
    assert len(lines) < 40
    plan = load_plan([config])
    rows = table(lines)
    priorities = sorted({p for p, _ in plan})
    assert len(priorities) > 1 and [int(r[1]) for r in rows[:-1]] == priorities
    for row, p in zip(rows, priorities):
        assert row[0] == "F1" and int(row[2]) == sum(1 for q, _ in plan if q == p)
    assert rows[-1][:2] == ["total", f"{len(plan):,}"]  # the total row leaves the priority blank
    total = sum(estimated_flop(c) for _, c in plan) / 2e12
    value, tolerance = seconds_of(*rows[-1][7:9])
    assert value == pytest.approx(total, abs=tolerance)


def test_measured_time_charges_a_packed_run_its_share():
    from nerepro import RunConfig
    from nerepro.cost import measured_throughput

    cfg = RunConfig("F1", 1.5, 100, seed=0)
    record = {"run_id": cfg.run_id, "network": "F1", "alpha": 1.5, "batch_size": 100, "seed": 0,
              "status": "converged", "steps": 500, "samples_processed": 100_000}
    alone = measured_throughput([{**record, "wall_s": 5.0}])
    packed = measured_throughput([{**record, "wall_s": 20.0, "pack_size": 4}])
    assert packed.seconds(cfg) == pytest.approx(alone.seconds(cfg)) == pytest.approx(5.0 * estimated_steps(cfg) / 500)
    # a packed run's checks of L(w) too: its check_s is the pack's
    checked = {**record, "stop_loss": "full", "check_every": 50, "check_interval": 50, "n_train": 60_000}
    alone = measured_throughput([{**checked, "wall_s": 5.0, "check_s": 1.0}])
    packed = measured_throughput([{**checked, "wall_s": 20.0, "check_s": 4.0, "pack_size": 4}])
    assert packed.seconds(cfg) == pytest.approx(alone.seconds(cfg)) == pytest.approx(4.0 * estimated_steps(cfg) / 500)
    # and an Eq. (1) run at another B, timed from that B's steps plus those checks, a pack's share of them
    other = {**record, "batch_size": 200, "samples_processed": 200_000, "wall_s": 6.0, "check_s": 0.0,
             "stop_loss": "ne_epoch_mean"}  # the default reading at B = 200
    eq1 = RunConfig("F1", 1.5, 200, seed=0, stop_loss="full", sampling="independent", check_every=50)
    for throughput in (measured_throughput([{**checked, "wall_s": 5.0, "check_s": 1.0}, other]),
                       measured_throughput([{**checked, "wall_s": 20.0, "check_s": 4.0, "pack_size": 4}, other])):
        assert throughput.seconds(eq1) == pytest.approx(estimated_steps(eq1) * (6.0 / 500 + 1.0 / 500))
    # a rate naming the run's network or precision wins over the measured speed; nothing known: unknown
    assert estimated_seconds(cfg, alone, {"tf32": 1.0}) == (pytest.approx(alone.seconds(cfg)), "measured")
    assert estimated_seconds(cfg, alone, {"fp32": 1.0})[1] == "fp32=1"
    assert estimated_seconds(cfg, None, {}) == (None, None)
    assert PlanRow("F1", None, seconds={"measured": 2.0, "fp32=1": 3.0}).time_s == 5.0


def test_dry_run_bad_options_are_one_line(tmp_path):
    config = REPO / "configs" / "smoke.toml"
    for extra, message in ((["--list"], "--list goes with --dry-run"),
                           (["--dry-run", "--tflops", "H100=900"], "--tflops takes names")):
        out = CliRunner().invoke(app, ["sweep", str(config), "--results", str(tmp_path / "r"), *extra])
        assert out.exit_code == 2 and message in out.output and len(out.output.strip().splitlines()) == 1


def test_dry_run_on_gpus_packs_and_shares_the_time_among_devices():
    from nerepro import RunConfig
    from nerepro.plan import dry_run_lines

    runs = [RunConfig("F1", alpha, 1000, seed=s) for alpha in (1.0, 1.5) for s in range(3)]
    slots = ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]  # two GPUs, two workers each
    lines = dry_run_lines(runs, set(), {}, [], {"fp32": 10.0}, "auto", "on", 10, slots, "R")
    assert lines[1] == "packs: on, up to 10 F1 runs differing in seed and alpha per program (--pack auto on a GPU)"
    assert table(lines)[-1][3] == "2"  # alpha = 1 and alpha = 1.5 pack apart
    device_s = sum(estimated_flop(c) for c in runs) / 10e12
    wall = next(line for line in lines if line.startswith("this machine (2 devices: cuda:0, cuda:1; 4 workers)"))
    value, tolerance = seconds_of(*wall.split("about ")[1].split()[:2])
    assert value == pytest.approx(device_s / 2, abs=tolerance)


def test_f1_dry_run_names_each_prioritys_readings(tmp_path):
    """configs/f1.toml: the default reading's Table 2 rows first, their Eq. (1) reading second (a lease runs it after
    Table 3's default row)."""
    lines = dry_run(REPO / "configs" / "f1.toml", "--results", tmp_path / "r", "--tflops", "F1=2")
    rows = table(lines)
    assert [(r[1], r[-1]) for r in rows[:3]] == [("1", "keras"), ("2", "eq1"), ("3", "keras")]
    plan = load_plan([REPO / "configs" / "f1.toml"])
    second = [c for p, c in plan if p == 2]
    assert {(c.alpha, c.batch_size) for c in second} == {(1.0, 900), (1.5, 2000)} and len(second) == 20
    assert all(c.stop_loss == "full" and c.check_every == 50 and c.trace for c in second)


def test_a_cpu_plan_takes_each_rows_fastest_run_at_the_sweeps_threads_and_its_observed_steps(tmp_path):
    """A CPU plan assumes a core per worker: the fastest record of a row at the planned thread count (records made
    beside other work are slower), and the steps the row's finished runs took (at any thread count) in place of
    the rough estimate."""
    from nerepro import RunConfig
    from nerepro.cost import measured_throughput
    from nerepro.plan import planning_throughput

    def record(seed, wall_s, threads, steps=1000):
        cfg = RunConfig("F1", 1.5, 2000, seed=seed)
        return {"run_id": cfg.run_id, "network": "F1", "alpha": 1.5, "batch_size": 2000, "seed": seed,
                "status": "converged", "steps": steps, "samples_processed": steps * 4000, "wall_s": wall_s,
                "stop_loss": cfg.effective_stop_loss, "check_every": cfg.check_every, "check_s": 0.0,
                "config": cfg.record_config(), "provenance": {"device_type": "cpu", "threads": threads}}

    records = [record(0, 3000.0, 1, steps=9000), record(1, 2000.0, 1, steps=11000), record(2, 500.0, 2, steps=7000)]
    throughput, timed = planning_throughput(records, ["cpu", "cpu"], threads=1)
    assert {r["seed"] for r in timed} == {0, 1}  # one thread a worker: the two-threaded record is left out
    fastest = 11000 / 2000.0  # steps/s of seed 1, the faster of the one-threaded records
    cfg = RunConfig("F1", 1.5, 2000, seed=5)
    assert throughput.seconds(cfg) == pytest.approx((9000 + 11000 + 7000) / 3 / fastest)  # every record's steps
    other = RunConfig("F1", 1.5, 2000, seed=5, stop_loss="step", check_every=1)  # another reading: the estimate
    assert throughput.seconds(other) == pytest.approx(estimated_steps(other) / fastest)
    total = plan_rows([cfg, other], set(), {}, throughput=throughput)[-1]  # its columns: the steps the time is for
    assert (total.steps, total.observed) == (9000 + estimated_steps(other), 1)
    assert total.samples == 9000 * 4000 + estimated_samples(other)
    assert total.flop == pytest.approx(estimated_flop(cfg) * 9000 / estimated_steps(cfg) + estimated_flop(other))
    assert plan_rows([cfg], set(), {}, rates={"fp32": 10.0})[-1].steps == estimated_steps(cfg)  # --tflops: the guess
    gpu = measured_throughput(records)  # a GPU plan's measured time is for the guess, and so are its columns
    assert (plan_rows([cfg], set(), {}, throughput=gpu)[-1].steps, gpu.seconds(cfg)) == \
        (estimated_steps(cfg), pytest.approx(estimated_steps(cfg) * (3000 + 2000 + 500) / 27000))
    gpu, timed = planning_throughput(records, ["cuda:0"])  # a GPU plan is not timed by CPU records
    assert timed == [] and gpu.seconds(cfg) is None
    for r in records:
        r["provenance"]["device_type"] = "cuda"
    pooled, _ = planning_throughput(records, ["cuda:0"])  # on a GPU: the pooled speed and the estimated steps
    assert pooled.seconds(cfg) == pytest.approx(estimated_steps(cfg) * (3000 + 2000 + 500) / 27000)


def test_a_cpu_plan_times_a_reading_not_run_on_a_row_from_the_rows_steps_and_the_networks_checks():
    """A reading no run of its row has used yet on this machine (the Eq. (1) reading at NE): the row's fastest
    steps under another reading, less their checks, plus the check time per step pooled over the network's
    converged runs that check L(w) as often; and its steps from the row's runs under that reading on any device
    (a GPU's too)."""
    from nerepro import RunConfig
    from nerepro.config import PROTOCOLS
    from nerepro.plan import planning_throughput

    def record(cfg, steps, wall_s, check_s, device_type="cpu", threads=1, status="converged"):
        return {"run_id": cfg.run_id, "network": "F1", "alpha": cfg.alpha, "batch_size": cfg.batch_size,
                "seed": cfg.seed, "status": status, "steps": steps, "stop_loss": cfg.effective_stop_loss,
                "check_every": cfg.check_every, "check_interval": cfg.check_interval(60_000), "n_train": 60_000,
                "samples_processed": steps * cfg.samples_per_step(60_000), "wall_s": wall_s, "check_s": check_s,
                "config": cfg.record_config(), "provenance": {"device_type": device_type, "threads": threads}}

    eq1 = PROTOCOLS["eq1"]
    ne = [RunConfig("F1", 1.5, 2000, seed=s) for s in range(2)]  # the default reading
    plain_eq1 = [RunConfig("F1", 1.0, 900, seed=s, **eq1) for s in range(3)]
    ne_eq1 = RunConfig("F1", 1.5, 2000, seed=0, **eq1)
    records = [record(ne[0], 10_000, 5_600.5, 0.5), record(ne[1], 9_000, 6_000.0, 0.5),  # 0.56 s a step at best
               record(plain_eq1[0], 8_000, 1_600.0, 200.0), record(plain_eq1[1], 9_000, 2_000.0, 300.0),
               record(plain_eq1[2], 20_000, 4_000.0, 50.0, status="not_converged"),  # its checks never count
               record(ne_eq1, 8_500, 150.0, 5.0, device_type="cuda", threads=2)]  # its steps only
    throughput, timed = planning_throughput(records, ["cpu", "cpu"], threads=1)
    assert ne_eq1.run_id not in {r["run_id"] for r in timed}
    cfg = RunConfig("F1", 1.5, 2000, seed=4, **eq1)
    assert throughput.run_steps(cfg) == 8_500
    assert throughput.seconds(cfg) == pytest.approx(8_500 * (5_600.0 / 10_000 + (200.0 + 300.0) / 17_000))
    assert not throughput.measured(cfg)  # the sweep's schedule still waits for a run of its own kind
    # the other way round: a reading without checks of L(w) takes the row's fastest steps less their checks
    keras_plain = RunConfig("F1", 1.0, 900, seed=3)
    assert throughput.seconds(keras_plain) == pytest.approx(estimated_steps(keras_plain) * 1_400.0 / 8_000)
    # a run that checks L(w) every epoch (30 steps here), which no run did: the network's guess at the fastest
    # samples per second (seed 0 of the default reading's NE row), not the checks of runs every 50 steps
    epoch_checks = RunConfig("F1", 1.5, 2000, seed=4, **{**eq1, "check_every": "epoch"})
    assert throughput.seconds(epoch_checks) == pytest.approx(estimated_steps(epoch_checks) * 5_600.5 / 10_000)


def test_plan_against_actual_pairs_each_record_with_its_last_plan(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "r"
    (root / "runs").mkdir(parents=True)
    a, b = "F1-a1.5-b2000-s7-aaaaaaaaaa", "F1-a1-b900-s1-bbbbbbbbbb"
    c, d, e = "F1-a1.5-b2000-s8-cccccccccc", "F1-a1.5-b2000-s9-dddddddddd", "F1-a1-b900-s2-eeeeeeeeee"
    f = "F1-a1-b900-s3-ffffffffff"  # one run of a pack of 4: its share of the pack's wall time
    g = "F1-a3-b5000-s0-gggggggggg"  # a kind without records, planned at its step time timed here
    # CPU time: a, e and f's pack had their core (share 0.98-0.99), b shared it (0.5), c and d do not say; d ran
    # 2 threads (its share would be 0.49), f on a GPU (none)
    cpu = {a: 118.0, b: 150.0, d: 59.0, e: 139.0, f: 356.0}
    threads, device = {d: 2}, {f: "cuda"}
    for run_id, wall, steps in ((a, 120.0, 80), (b, 300.0, 80), (c, 50.0, 125), (d, 60.0, 80), (e, 140.0, 1000),
                                (f, 360.0, 900), (g, 150.0, 100)):
        (root / "runs" / f"{run_id}.json").write_text(json.dumps(
            {"run_id": run_id, "network": "F1", "alpha": 1.0, "batch_size": 20, "seed": 0, "status": "converged",
             "wall_s": wall, "steps": steps,
             "provenance": {"threads": threads.get(run_id, 1), "device": "cpu",
                            "device_type": device.get(run_id, "cpu")},
             **({"cpu_s": cpu[run_id]} if run_id in cpu else {}), **({"pack_size": 4} if run_id == f else {})}))
    (root / "sweep.log").write_text(  # sweep 2 calibrated the NE kind (beside another seed), sweep 1 nothing
        f"t h 1 planned:90 {a}\nt h 2 calibrated:1.25 F1-a1.5-b2000-s3-cccccccccc\nt h 2 calibrated:2 F1-a2-b900-s0-d\n"
        f"t h 2 planned:100 {a}\nt h 1 planned:200 {b}\nt h 1 start {a}\nt h 1 recorded:converged {a}\n"
        f"t h 1 recorded:converged {b}\nt h 2 planned:999 {b}\n"
        f"t h 2 planned:50 {c} factor:0.8 steps:100\nt h 2 planned:60 {d} factor:-\nt h 2 recorded:converged {c}\n"
        f"t h 2 recorded:converged {d}\nt h 3 planned:100 {e} factor:1.1 steps:1000\nt h 3 recorded:converged {e}\n"
        f"t h 3 planned:100 {f} factor:- steps:1000\nt h 3 recorded:converged {f}\n"
        f"t h 4 planned:100 {g} factor:here steps:100\nt h 4 recorded:converged {g}\n")
    # the plan line's own factor wins over the process's; where it names its steps, the ratio splits into
    # steps (c: 125 of 100 planned) and time a step (c: 50 s / 125 against 50 s / 100, e: 0.14 s against 0.1 s)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "plan_vs_actual.py"), str(root)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"| `{a}` | 100 | 120 | 1.20 | - | - | x1.25 | 0.98 |" in out.stdout
    assert f"| `{b}` | 200 | 300 | 1.50 | - | - | - | 0.50 |" in out.stdout
    assert f"| `{c}` | 50 | 50 | 1.00 | 1.25 | 0.80 | x0.80 | - |" in out.stdout
    assert f"| `{d}` | 60 | 60 | 1.00 | - | - | - | 0.49 |" in out.stdout
    assert f"| `{e}` | 100 | 140 | 1.40 | 1.00 | 1.40 | x1.10 | 0.99 |" in out.stdout
    assert f"| `{f}` | 100 | 90 | 0.90 | 0.90 | 1.00 | - | - |" in out.stdout
    assert f"| `{g}` | 100 | 150 | 1.50 | 1.00 | 1.50 | here | - |" in out.stdout
    assert "4 of 7 within 30% of the plan" in out.stdout
    assert "2 of the 4 whose plan names its steps within 30% of the plan's time a step" in out.stdout
    assert "1 of the 2 single-threaded runs that had their core (CPU share 0.9 or more) within 30% of the plan" \
        in out.stdout


def test_a_time_limited_sweep_logs_each_runs_plan(tmp_path, fake_fmnist_root):
    """With --time-limit the sweep writes `planned:<seconds>` for each run to do into the sweep log (where the
    records give a speed), for plan against actual; runs that do not fit are not started."""
    config = tmp_path / "grid.toml"
    config.write_text(GRID.replace("seeds = 2", "seeds = 1"))
    results = tmp_path / "r"
    base = ["sweep", str(config), "--results", str(results), "--data-dir", str(fake_fmnist_root), "--device", "cpu",
            "--workers-per-device", "1"]
    first = CliRunner().invoke(app, [*base, "--priority", "0"])  # every run of GRID has priority 0
    assert first.exit_code == 0, first.output
    config.write_text(GRID)  # seed 1 added: four runs to do, timed by seed 0's records
    out = CliRunner().invoke(app, [*base, "--time-limit", "1s", "--calibrate", "0"])  # the records' speed
    assert out.exit_code == 0, out.output
    planned = [line.split() for line in (results / "sweep.log").read_text().splitlines() if " planned:" in line]
    recorded = {p.stem for p in (results / "runs").glob("*.json")}
    assert {p[4] for p in planned} == {c.run_id for c in load_grid([config])} - recorded and len(planned) == 4
    assert all(float(p[3].split(":")[1]) > 0 for p in planned)


def test_a_time_limited_sweep_logs_the_steps_and_seconds_of_each_plan(tmp_path, fake_fmnist_root):
    """Each `planned:` line names the plan's steps (the mean of the row's finished runs, not the estimate nor the
    steps a run is allowed) and its seconds at the fastest record's speed: plan_vs_actual.py splits on them."""
    from nerepro import RunConfig

    config = tmp_path / "grid.toml"
    config.write_text("seeds = 3\n[settings]\nmax_steps = 100\ncheck_every = 10\n[[grid]]\nnetwork = \"F1\"\n"
                      "alpha = 1.0\nbatch_size = 20\n")
    results = tmp_path / "r"
    (results / "runs").mkdir(parents=True)
    for seed, steps, wall in ((0, 30, 3.0), (1, 50, 10.0)):  # 10 and 5 steps a second
        cfg = RunConfig("F1", 1.0, 20, seed=seed, max_steps=100, check_every=10)
        (results / "runs" / f"{cfg.run_id}.json").write_text(json.dumps(
            {"run_id": cfg.run_id, "network": "F1", "alpha": 1.0, "batch_size": 20, "seed": seed,
             "status": "converged", "steps": steps, "samples_processed": steps * 20, "wall_s": wall,
             "stop_loss": cfg.effective_stop_loss, "check_every": 10, "check_s": 0.0,
             "config": cfg.record_config(), "provenance": {"device_type": "cpu", "threads": 1}}))
    todo = RunConfig("F1", 1.0, 20, seed=2, max_steps=100, check_every=10)
    out = CliRunner().invoke(app, ["sweep", str(config), "--results", str(results), "--data-dir",
                                   str(fake_fmnist_root), "--device", "cpu", "--workers-per-device", "1",
                                   "--threads", "1", "--time-limit", "1s", "--calibrate", "0"])
    assert out.exit_code == 0, out.output
    planned = [line.split()[3:] for line in (results / "sweep.log").read_text().splitlines() if " planned:" in line]
    assert planned == [["planned:4", todo.run_id, "factor:-", "steps:40"]]  # 40 steps at 10 a second
    assert not (results / "runs" / f"{todo.run_id}.json").exists()  # 4 s (and its margin) do not fit in 1 s
