"""The GPU lease session (nerepro/session.py, scripts/gpu_session.sh) rehearsed on the CPU so that it cannot rot
before the next lease: its data check, its gate (fail closed), the rows-first plan it gives the sweep
(nerepro/lease_plan.py) and the sweep's rule that no pack starts that would be paused."""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO, write_fashion_mnist
from nerepro.config import RunConfig
from nerepro.cost import STEPS_MARGIN, Throughput, estimated_steps
from nerepro.lease_plan import (CPU, H100, PESSIMISTIC_TFLOPS, ROWS, lease_order, plan_lease, planned_runs, row_of,
                                simulate, training_window)
from nerepro.plan import reading_name
from nerepro.results import ResultsDir
from nerepro.session import GATE_TESTS, Session, find_data, gate_decision, gate_seconds, main
from nerepro.sweep import Schedule, form_packs

SCRIPT = str(REPO / "scripts" / "gpu_session.sh")
LIMIT = 15 * 2 ** 20  # the most a handed-back file may have


def session(out, seconds, timeout, **env):
    run = subprocess.run([SCRIPT, str(out), str(seconds)], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": "", "PYTHON": sys.executable, **env})
    assert run.returncode == 0, run.stdout + run.stderr
    return (out / "summary.md").read_text()


def rows(summary):
    """The step column of the summary's table, in order."""
    return [line.split("|")[1].strip() for line in summary.splitlines()
            if line.startswith("| ") and "---" not in line][1:]  # the header's "step" apart


def test_gpu_session_rehearsal_on_the_cpu(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=6000)  # room for every B of configs/f1.toml
    out = tmp_path / "out"
    start = time.time()
    summary = session(out, 120, 150, DEVICE="cpu", SEEDS="1", NEREPRO_DATA=str(data),
                      CONFIG="configs/smoke.toml configs/f1.toml")  # smoke's runs are planned, f1's rows do not fit
    assert time.time() - start < 125
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert len(files) <= 8, files
    assert {"results.tar.gz", "summary.md", "logs.tar.gz", "env.txt", "bench.jsonl"} <= set(files), summary
    assert all(size <= LIMIT for size in files.values()), files
    lines = summary.splitlines()
    assert lines[0] == "# GPU session: nerepro" and lines[2].startswith("**Rows finished:**"), summary
    runs, _ = planned_runs([REPO / "configs" / "f1.toml"], 1, ["F1"], None)
    recorded = ResultsDir(REPO / "results" / "f1").done()  # the copy the session starts from
    for i, (label, *_) in enumerate(ROWS):  # seed 0 of each row: recorded there, or not fitted in 120 s
        ids = [c.run_id for c in runs if row_of(c) == i]
        done = sum(r in recorded for r in ids)
        assert f"{label} ({done} of 1" + (")" if done else ": the plan did not fit it") in summary, summary
    steps = rows(summary)
    assert steps[:4] == ["data", "results-from", "gate", "sweep"], steps  # the data first, the pack test before the sweep
    assert "| gate | not run: no CUDA device (rehearsal); packs off |" in summary
    assert "| sweep | exit 0; 2 runs planned, 1 worker, packs off |" in summary, summary
    assert "| bench-f1-b100-pack2 | exit 0 |" in summary, summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"logs/sweep.log", "logs/env.txt", "logs/summary.md"} <= set(tar.getnames())
        sweep_log = tar.extractfile("logs/sweep.log").read().decode()
    assert "2 runs to do" in sweep_log  # only the planned runs: smoke.toml's two; f1.toml's do not fit 120 s
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    committed = {p.name for p in (REPO / "results" / "f1" / "runs").glob("*.json")}
    assert {f"results/runs/{n}" for n in committed} <= set(names)  # results/f1 by default, handed back with the new
    assert not [n for n in names if "checkpoints" in n or "paused/" in n or ".locks" in n]
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [(b["network"], b["runs"]) for b in bench] == [("F1", 2)]


def test_the_summary_says_which_rows_finished_and_why_the_others_did_not(tmp_path):
    from nerepro.grid import load_plan
    from nerepro.lease_plan import Plan, RowOutcome
    from nerepro.session import Step, rows_lines

    config = tmp_path / "rows.toml"  # Table 2's and Table 3's F1 rows under the default reading, 2 seeds
    config.write_text("seeds = 2\n" + "".join(f'[[grid]]\nnetwork = "F1"\nalpha = {a}\nbatch_size = {b}\n'
                                              for a, b in ((1.0, 900), (1.5, 2000), (3.0, 5000))))
    args = argparse.Namespace(configs=[config], seeds=2)
    ids = {}
    for _, c in load_plan([config], 2):
        ids.setdefault(row_of(c), []).append(c.run_id)
    assert sorted(ids) == [0, 1, 2]
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    for run_id, status in ((ids[0][0], "converged"), (ids[0][1], "not_converged"), (ids[1][0], "converged")):
        (results / "runs" / f"{run_id}.json").write_text(json.dumps({"status": status}))
    labels = [label for label, *_ in ROWS]

    def lines(plan_done, ended, gate_off=False):
        plan = Plan(1, 1, "", rows=tuple(RowOutcome(labels[i], 2 - (i == 1), plan_done, None) for i in (1, 2)))
        return rows_lines(results, args, ROWS, plan, ended, gate_off)

    ok = Step("sweep", "exit 0", rc=0)
    assert lines(0, ok) == [f"**Rows finished:** {labels[0]} (2 of 2).",
                            f"**Not finished:** {labels[1]} (1 of 2: the plan did not fit it in the time); "
                            f"{labels[2]} (0 of 2: the plan did not fit it in the time)."]
    assert "(0 of 2: the plan did not fit it in the time without packs (the gate turned them off))" in \
        lines(0, ok, gate_off=True)[1]
    assert f"{labels[2]} (0 of 2: slower than planned (its runs were planned to finish))" in lines(2, ok)[1]
    assert f"{labels[2]} (0 of 2: the sweep time limit)" in lines(2, Step("sweep", "time limit", rc=124))[1]
    assert f"{labels[2]} (0 of 2: no sweep ran)" in lines(2, None)[1]
    (results / "runs" / f"{ids[1][1]}.json").write_text(json.dumps({"status": "error"}))
    assert f"{labels[1]} (1 of 2: 1 error records)" in lines(0, ok)[1]


def test_with_the_data_hidden_the_session_stops_at_once_and_says_how_to_fix_it(tmp_path):
    out = tmp_path / "out"
    start = time.time()
    summary = session(out, 120, 60, DEVICE="cpu", SEEDS="1", NEREPRO_DATA=str(tmp_path / "nowhere"))
    assert time.time() - start < 20
    first = summary.splitlines()[0]
    assert first.startswith("**Nothing ran: Fashion-MNIST is missing**") and f"NEREPRO_DATA={tmp_path / 'nowhere'}" \
        in first and "cp -r ../shared/data/FashionMNIST .data/" in first, first
    assert rows(summary) == ["data"]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.md"]  # no results, no error records


def test_the_data_is_found_where_the_lease_carries_it(tmp_path):
    checkout = tmp_path / "checkout"
    assert find_data({"NEREPRO_DATA": "/d"}, checkout)[0] == Path("/d")  # an explicit directory wins
    (checkout / ".data" / "FashionMNIST").mkdir(parents=True)
    assert find_data({}, checkout)[0] == checkout / ".data"


def test_a_second_session_into_the_same_results_skips_what_the_first_recorded(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=1000)
    config = tmp_path / "tiny.toml"  # two runs of a second or two
    config.write_text('seeds = 1\n[settings]\nsubset = 200\nmax_steps = 20\ncheck_every = 10\n'
                      '[[grid]]\nnetwork = "F1"\nalpha = [1.0, 2.0]\nbatch_size = 50\n')
    results = tmp_path / "results"
    env = dict(DEVICE="cpu", SEEDS="1", NEREPRO_DATA=str(data), CONFIG=str(config), STAGES="sweep",
               RESULTS=str(results), RESULTS_FROM="none")
    first = session(tmp_path / "out1", 100, 130, **env)
    assert "| sweep | exit 0; 2 runs planned" in first, first
    recorded = sorted(p.name for p in (results / "runs").glob("*.json"))
    assert len(recorded) == 2
    second = session(tmp_path / "out2", 60, 90, **env)
    assert "| sweep | skipped: every run is recorded |" in second, second
    assert sorted(p.name for p in (results / "runs").glob("*.json")) == recorded
    with tarfile.open(tmp_path / "out2" / "results.tar.gz") as tar:  # the records come back with the session
        assert {f"results/runs/{name}" for name in recorded} <= set(tar.getnames())


def test_a_session_started_from_a_results_directory_hands_its_records_back(tmp_path, fake_python):
    source = tmp_path / "f1"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1.5-b2000-s1-x.json").write_text("{}")
    (source / "checkpoints").mkdir()
    (source / "checkpoints" / "F1-a1-b900-s2-x.pt").write_text("a CPU run's")  # not carried to another machine
    summary = session(tmp_path / "out", 30, 30, PYTHON=fake_python, STAGES="", RESULTS_FROM=str(source),
                      NEREPRO_DATA=str(write_fashion_mnist(tmp_path / "data")))
    assert "| results-from | 1 records of" in summary, summary
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        assert "results/runs/F1-a1.5-b2000-s1-x.json" in tar.getnames()
        assert not [n for n in tar.getnames() if "checkpoints" in n]
    assert (source / "runs" / "F1-a1.5-b2000-s1-x.json").read_text() == "{}"  # the source is only read


def test_no_handed_back_file_is_over_15_mib(tmp_path, fake_python):
    source = tmp_path / "big"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1-b900-s0-x.json").write_bytes(os.urandom(LIMIT + 2 ** 20))  # gzip cannot shrink it
    summary = session(tmp_path / "out", 30, 60, PYTHON=fake_python, STAGES="", RESULTS_FROM=str(source),
                      NEREPRO_DATA=str(write_fashion_mnist(tmp_path / "data")))
    files = {p.name: p.stat().st_size for p in (tmp_path / "out").iterdir()}
    assert all(size <= LIMIT for size in files.values()) and "logs.tar.gz" in files, files
    assert "- results.tar.gz would have been 16 MiB, over the 15 MiB a file may have" in summary
    assert "results.tar.gz holds only this session's records" in summary
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        assert not [n for n in tar.getnames() if n.endswith(".json")]  # the big one was not this session's


def test_a_session_killed_by_sigterm_stops_its_steps_and_hands_back(tmp_path, fake_python):
    source = tmp_path / "f1"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1-b900-s0-x.json").write_text("{}")
    args, out = tmp_path / "args", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": "", "PYTHON": fake_python, "DEVICE": "cuda", "STAGES": "gate", "GATE_S": "60",
           "FAKE_PYTEST": "4 passed in 60.00s", "FAKE_RC": "0", "FAKE_SLEEP": "60", "FAKE_ARGS": str(args),
           "RESULTS_FROM": str(source), "NEREPRO_DATA": str(write_fashion_mnist(tmp_path / "data"))}
    proc = subprocess.Popen([SCRIPT, str(out), "120"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while not args.exists() and time.time() < deadline:  # the gate (a scripted pytest sleeping 60 s) has started
        time.sleep(0.2)
    proc.terminate()
    start = time.time()
    assert proc.wait(timeout=20) == 0, proc.stdout.read()
    assert time.time() - start < 8  # the gate stopped, not waited for
    summary = (out / "summary.md").read_text()
    assert summary.startswith("**The session stopped early: Terminated: SIGTERM after "), summary
    assert "## Hand-back" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "results/runs/F1-a1-b900-s0-x.json" in tar.getnames()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]


def test_resume_may_name_the_archives_of_an_earlier_session_in_the_same_outdir(tmp_path, fake_python):
    source = tmp_path / "f1"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1.5-b2000-s3-x.json").write_text("{}")
    out, data = tmp_path / "out", str(write_fashion_mnist(tmp_path / "data"))
    session(out, 30, 30, PYTHON=fake_python, STAGES="", RESULTS_FROM=str(source), NEREPRO_DATA=data)
    summary = session(out, 30, 30, PYTHON=fake_python, STAGES="", RESULTS_FROM="none", NEREPRO_DATA=data,
                      RESUME=str(out / "results.tar.gz"))  # the file the second session replaces
    assert "| resume-results.tar.gz | unpacked |" in summary, summary
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "results/runs/F1-a1.5-b2000-s3-x.json" in tar.getnames()
    missing = subprocess.run([SCRIPT, str(tmp_path / "out2"), "30"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": "", "PYTHON": sys.executable,
                                  "RESUME": str(tmp_path / "nowhere.tar.gz")})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nowhere.tar.gz is not a file" in \
        missing.stderr, missing.stderr


def test_a_step_that_cannot_finish_in_the_time_left_is_skipped_for_the_next(tmp_path):
    (tmp_path / "logs").mkdir()
    s = Session(tmp_path, 40.0, time.time(), "cpu", tmp_path, dict(os.environ))  # 30 s before the hand-back
    assert s.run("compiled", [sys.executable, "-c", "pass"], 120, needs=60).status.startswith("skipped: ")
    assert "it needs 60 s" in s.steps[-1].status
    assert s.run("eager", [sys.executable, "-c", "pass"], 60, needs=10).status == "exit 0"


def test_a_step_running_when_the_session_stops_is_stopped_with_it(tmp_path):
    (tmp_path / "logs").mkdir()
    s = Session(tmp_path, 100.0, time.time(), "cpu", tmp_path, dict(os.environ))
    pidfile = tmp_path / "pid"

    def alarm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            s.run("sweep", ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], 80)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(int(pidfile.read_text()), 0)
    assert s.steps[-1].status == "stopped with the session"


@pytest.mark.parametrize("device, pack, stages, kept", [
    ("cuda", "auto", ["gate", "sweep"], 60.0),
    ("cuda", "on", ["gate", "sweep"], 0.0),   # no gate runs: its time goes to the sweep
    ("cuda", "off", ["gate", "sweep"], 0.0),
    ("cuda", "auto", ["sweep", "bench"], 0.0),
    ("cpu", "auto", ["gate", "sweep"], 0.0),
])
def test_the_plan_keeps_time_for_the_gate_only_where_one_runs(device, pack, stages, kept):
    assert gate_seconds(argparse.Namespace(device=device, pack=pack, stages=stages, gate_s=60.0)) == kept


FAKE_PYTHON = """#!/bin/sh
# a python whose pytest is scripted by FAKE_PYTEST (its output) and FAKE_RC; the rest goes to the real one
if [ "$1" = -m ] && [ "$2" = pytest ]; then
  printf '%s\\n' "$@" > "$FAKE_ARGS"
  [ -n "$FAKE_SLEEP" ] && sleep "$FAKE_SLEEP"
  printf '%s\\n' "$FAKE_PYTEST"
  exit "$FAKE_RC"
fi
exec {python} "$@"
"""


@pytest.fixture
def fake_python(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("output, rc, packs", [
    ("4 passed, 212 deselected in 4.42s", 0, True),
    ("4 skipped, 212 deselected in 4.42s", 0, False),  # no CUDA on the box: untested is off
    ("3 passed, 1 skipped, 212 deselected in 4.42s", 0, False),
    ("1 failed, 3 passed, 212 deselected in 4.42s", 1, False),
    ("214 deselected in 1.20s", 5, False),  # no test: renamed or not collected
    ("ERROR tests/test_fastpath.py\n1 error in 2.00s", 2, False),  # collection error
    ("/usr/bin/python3: No module named pytest", 1, False),
    ("", None, False),  # stopped at its limit
])
def test_the_gate_decides_packs_and_fails_closed(output, rc, packs):
    decided, why = gate_decision(rc, output)
    assert decided is packs and why


def test_the_gate_runs_only_the_pack_tests_under_a_limit_from_its_start(tmp_path, fake_python):
    args = tmp_path / "args"
    start = time.time()
    summary = session(tmp_path / "out", 40, 40, PYTHON=fake_python, DEVICE="cuda", STAGES="gate", GATE_S="3",
                      FAKE_PYTEST="4 passed in 60.00s", FAKE_RC="0", FAKE_SLEEP="30", FAKE_ARGS=str(args),
                      RESULTS_FROM="none", NEREPRO_DATA=str(write_fashion_mnist(tmp_path / "data")))
    assert time.time() - start < 25  # the fake gate sleeps 30 s: stopped at its limit (slack for loaded cores)
    assert "| gate | the gate did not finish in its limit in 3 s with its interpreter's start; packs off |" in summary, \
        summary
    assert args.read_text().split("\n")[:8] == ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-k"]
    assert args.read_text().split("\n")[8:10] == [GATE_TESTS, "tests/test_fastpath.py"]


# ---- the plan -------------------------------------------------------------------------------------------

def f1_rows(seeds=10):
    """Every run of configs/f1.toml at `seeds` seeds, and their priorities (lease_plan.planned_runs)."""
    return planned_runs([REPO / "configs" / "f1.toml"], seeds, ["F1"], None)


def test_the_lease_takes_the_rows_first_whatever_the_configs_priorities():
    runs, priority = f1_rows(seeds=2)
    order = lease_order(runs, priority)
    rows = [row_of(c) for c in order[:2 * len(ROWS)]]
    assert rows == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # Table 3's default row (priority 3) before the Eq. (1) rows (2)
    assert all(row_of(c) is None for c in order[2 * len(ROWS):])
    assert [c.seed for c in order[:2]] == [0, 1]
    assert ROWS[2][0].startswith("Table 3") and "default" in ROWS[2][0] and "Eq. (1)" in ROWS[3][0]
    assert [(reading_name(c), c.alpha, c.batch_size) for c in order[6:10:2]] == [("eq1", 1.0, 900), ("eq1", 1.5, 2000)]


def test_a_leases_bounds_take_a_rows_finished_steps_and_a_step_its_checks_of_l_w(tmp_path):
    """A pack's bound: the mean steps of its row's finished runs (any device) times OBSERVED_MARGIN from
    OBSERVED_MIN of them, times STEPS_MARGIN before (the first to finish are the shortest), the cost model's
    without any; and an Eq. (1) step forwards the training set every 50 steps besides its 2B samples."""
    from records import record, write

    from nerepro.config import PROTOCOLS
    from nerepro.cost import OBSERVED_MARGIN, OBSERVED_MIN
    from nerepro.cost import allowed_steps, observed_in
    from nerepro.lease_plan import step_time

    eq1 = PROTOCOLS["eq1"]
    cfg = RunConfig("F1", 1.5, 2000, seed=9, **eq1)
    assert allowed_steps(cfg) == math.ceil(estimated_steps(cfg) * STEPS_MARGIN)
    few = write(tmp_path / "few", [record("F1", 1.5, 2000, s, steps=9_000 + 100 * s, **eq1) for s in range(2)])
    assert allowed_steps(cfg, observed_in(few)) == math.ceil(9_050 * STEPS_MARGIN)
    many = write(tmp_path / "many", [record("F1", 1.5, 2000, s, steps=9_000 + 100 * s, **eq1)
                                     for s in range(OBSERVED_MIN)] + [record("F1", 1.5, 2000, 5, steps=1)])
    mean = 9_000 + 100 * (OBSERVED_MIN - 1) / 2  # the default reading's record is another row
    assert allowed_steps(cfg, observed_in(many)) == math.ceil(mean * OBSERVED_MARGIN)
    assert observed_in(tmp_path / "none") == {}
    plain = RunConfig("F1", 1.5, 2000, seed=9)  # the default reading: no checks of L(w)
    assert step_time([cfg], H100)[2] == pytest.approx(step_time([plain], H100)[2] * (4_000 + 60_000 / 50 / 3) / 4_000)
    units = [[RunConfig("F1", 1.5, 2000, seed=s, **eq1)] for s in range(2)]
    outcome = simulate(units, 1, 1e6, H100, observed=observed_in(many))
    assert outcome.bounds[units[0][0].run_id] == pytest.approx(
        H100.run_s + math.ceil(mean * OBSERVED_MARGIN) * step_time(units[0], H100)[0])


def test_a_540_s_lease_finishes_table_2_and_3_at_the_planned_rate():
    runs, priority = f1_rows()
    plan = plan_lease(runs, 438, 10, priority, H100)  # what `session plan --seconds 540` gives the sweep
    assert [(r.label[:7], r.done == r.todo) for r in plan.rows[:3]] == [("Table 2", True)] * 2 + [("Table 3", True)]
    assert plan.workers == 1 and plan.max_pack > 1
    slow = plan_lease(runs, 438, 10, priority, replace(H100, tflops=PESSIMISTIC_TFLOPS))
    assert [r.done == r.todo for r in slow.rows[:2]] == [True, True]
    # only the planned runs go to the sweep, each with its pack's bound
    assert plan.finishing <= {c.run_id for c in plan.order} and set(plan.bounds) >= plan.finishing


def test_the_sweep_gets_only_the_time_the_rows_need():
    runs, priority = f1_rows(seeds=2)
    rows_only = [c for c in runs if row_of(c) is not None and row_of(c) < 2]  # Table 2's default rows
    plan = plan_lease(rows_only, 900, 10, priority, H100)
    assert all(r.done == r.todo for r in plan.rows)
    last = max(r.end for r in plan.rows)
    assert last < plan.seconds < last + 60  # the rows' end, the sweep's start and pause: the rest to benchmarks


def test_a_pack_that_does_not_fit_is_not_started_and_rows_are_not_overtaken():
    runs = [RunConfig("F1", 3.0, 5000, seed=s) for s in range(10)]
    window = training_window(120, 1, H100)
    outcome = simulate(form_packs(runs, 10), 1, window, H100)
    assert outcome.done == 0 and len(outcome.not_started) == 1  # not started, so never paused
    plan = plan_lease(runs, 120, 10, None, H100)
    assert plan.workers == 1 and 1 < plan.max_pack < 10 and plan.expected == plan.max_pack


def test_the_sweep_starts_no_pack_of_unknown_time_after_one_did_not_fit():
    cfg = RunConfig("F1", 1.0, 900, subset=1800)
    big, unknown, small = [cfg.replace(batch_size=600)], [RunConfig("C1", 1.0, 100)], [cfg.replace(seed=2)]
    throughput = Throughput()
    throughput.add({"status": "converged", "wall_s": 100.0, "network": "F1", "batch_size": 900, "alpha": 1.0,
                    "stop_loss": cfg.effective_stop_loss, "steps": 100, "samples_processed": 90000})
    seconds = throughput.seconds(cfg)
    now = time.time()
    planned = {big[0].run_id: 1000.0}  # the plan's bound for `big`: over the time left
    schedule = Schedule([big, unknown, small], now + 1.2 * STEPS_MARGIN * seconds, throughput, planned)
    schedule.unknown_until = now + 1e6  # a pack of unknown time would be started, were it not after a refusal
    assert schedule.next() == small  # `big` refused by its planned bound; `unknown` might be paused: skipped
    assert schedule.next() is None and schedule.queue == [big, unknown]
    fresh = Schedule([unknown, small], now + 1e6, Throughput())
    assert fresh.next() == unknown  # before any refusal, as before: started while a quarter of the time is left


def test_the_planned_bound_holds_until_runs_of_its_kind_are_measured():
    cfg = RunConfig("F1", 1.0, 900, subset=1800)
    throughput = Throughput()
    schedule = Schedule([[cfg]], time.time() + 100, throughput, {cfg.run_id: 500.0})
    assert schedule.bound(cfg) == 500.0 and not schedule.fits([cfg])
    throughput.add({"status": "converged", "wall_s": 1.0, "network": "F1", "batch_size": 900, "alpha": 1.0,
                    "stop_loss": cfg.effective_stop_loss, "steps": 100, "samples_processed": 90000})
    # the margin on the steps, rounded up to a whole step
    assert schedule.bound(cfg) == pytest.approx(throughput.seconds(cfg) * STEPS_MARGIN, rel=1e-2)
    assert schedule.fits([cfg])


def test_compute_bound_packs_get_the_gpu_to_themselves():
    runs, priority = f1_rows()
    plan = plan_lease(runs, 600, 10, priority, H100)
    assert plan.workers == 1 and "compute-bound" in plan.reason and "One worker: a pack needs" in plan.reason


def test_launch_bound_runs_share_the_gpu():
    runs = [RunConfig("F1", 1.0, 100, seed=s) for s in range(10)]
    plan = plan_lease(runs, 600, 1, None, H100)  # packs off (the gate failed): single runs, launch-bound
    assert plan.workers > 1 and plan.max_pack == 1 and "launch-bound" in plan.reason


def test_packs_slower_than_planned_stretch_the_plan_of_the_kinds_not_yet_measured():
    first, second = RunConfig("F1", 1.0, 900, subset=4000), RunConfig("F1", 1.5, 2000, subset=4000)
    planned = {first.run_id: 100.0, second.run_id: 100.0}
    schedule = Schedule([[first], [second]], time.time() + 1000, Throughput(), planned)
    assert schedule.bound(second) == 100.0
    per_step = 100.0 / (estimated_steps(first) * STEPS_MARGIN)  # what the plan gave `first`'s steps
    schedule.throughput.add({"status": "converged", "wall_s": 2 * per_step * 50, "network": "F1", "batch_size": 900,
                             "alpha": 1.0, "stop_loss": first.effective_stop_loss, "steps": 50,
                             "samples_processed": 50 * 900})
    assert schedule.slowdown() == pytest.approx(2.0, rel=1e-2)  # its steps took twice the plan's (rounded up)
    assert schedule.bound(second) == pytest.approx(100.0 * schedule.slowdown())


def test_the_slowdown_reads_a_plan_made_from_a_rows_finished_steps_on_the_same_steps(tmp_path, monkeypatch):
    """A lease plan's bounds (`simulate`: a pack allowed its longest row's finished steps times the margin) read
    by a sweep that knows those runs (run_sweep gives its Throughput the results' steps): a pack at the plan's
    own speed is no slowdown, one at twice its time per step about 2, whichever run of the pack stands for its
    kind; the kinds not yet measured are stretched by it."""
    from records import record, write

    from nerepro.cost import OBSERVED_MARGIN
    from nerepro.cost import observed_in
    from nerepro.lease_plan import simulate, step_time

    records = [record("F1", a, 5000, s, steps=steps) for a, steps in ((2.0, 4_000), (3.0, 8_000)) for s in range(3)]
    observed = observed_in(write(tmp_path / "r", records))
    short, long, later = (RunConfig("F1", 2.0, 5000, seed=7), RunConfig("F1", 3.0, 5000, seed=7),
                          RunConfig("F1", 1.0, 900, seed=7))
    allowed = math.ceil(8_000 * OBSERVED_MARGIN)  # the pack's longest row's
    for pack in ([short, long], [long, short]):
        planned = simulate([pack, [later]], 1, 1e6, H100, observed=observed).bounds
        step = step_time(pack, H100)[0]
        assert planned[short.run_id] == planned[long.run_id] == pytest.approx(H100.run_s + allowed * step)
        for factor in (1.0, 2.0):
            schedule = Schedule([pack, [later]], time.time() + 1e6, Throughput(observed=observed), planned)
            schedule.throughput.add({"status": "converged", "wall_s": factor * step * 8_000, "network": "F1",
                                     "batch_size": 5000, "alpha": 3.0, "stop_loss": long.effective_stop_loss,
                                     "steps": 8_000, "samples_processed": 8_000 * 10_000})
            slowdown = max(1.0, factor * step * allowed / planned[long.run_id])  # the plan's start-up aside
            assert slowdown == pytest.approx(factor, rel=0.05)
            assert schedule.slowdown() == pytest.approx(slowdown)
            assert schedule.bound(later) == pytest.approx(slowdown * planned[later.run_id])
    # the sweep's executors get the steps of the results directory's records, as the plan did
    import nerepro.sweep as sweep_module

    seen = {}
    monkeypatch.setattr(sweep_module, "run_local", lambda units, results, **options: seen.update(options) or [])
    sweep_module.run_sweep([long], tmp_path / "r", device="cpu", deadline=time.time() + 60)
    assert seen["observed"] == observed
    seen.clear()
    sweep_module.run_sweep([long], tmp_path / "r", device="cpu")  # no deadline: no bounds, nothing read
    assert "observed" not in seen


def test_on_the_cpu_a_run_has_the_cores_to_itself():
    runs = [RunConfig("F1", a, b, seed=s, subset=6000, max_steps=100) for a, b in ((1.0, 900), (1.5, 2000))
            for s in range(2)]
    assert plan_lease(runs, 60, 1, None, CPU).workers == 1
    assert plan_lease([], 60, 10, None, CPU).workers == 1


def test_the_plan_command_says_which_rows_finish_and_skips_results_f1_by_default(capsys):
    assert main(["plan", str(REPO / "configs" / "f1.toml"), "--seconds", "540", "--device", "cuda"]) == 0
    text = capsys.readouterr().out
    runs, _ = planned_runs([REPO / "configs" / "f1.toml"], 10, ["F1"], None)
    recorded = ResultsDir(REPO / "results" / "f1").done()
    todo = sum(c.run_id not in recorded for c in runs)
    assert f"{todo} runs not recorded in {REPO / 'results' / 'f1'}" in text, text
    blocks = text.split("\nAt ")
    assert len(blocks) == 3 and blocks[1].startswith("40 TFLOP/s") and blocks[2].startswith("30 TFLOP/s")
    left = [label for i, (label, *_) in enumerate(ROWS)  # the rows with runs not yet recorded, and only those
            if any(row_of(c) == i and c.run_id not in recorded for c in runs)]
    for block in blocks[1:]:
        lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
        assert len(lines) == len(left) and all(line.startswith(f"{label}: ") for line, label in zip(lines, left)), block
    table_3 = sum(row_of(c) == 2 and c.run_id not in recorded for c in runs)
    if table_3:
        assert f"{ROWS[2][0]}: {table_3} runs, finishes" in blocks[1], blocks[1]


def test_sweep_runs_file_gives_the_order_and_refuses_unknown_ids(tmp_path, fake_fmnist_root):
    from typer.testing import CliRunner

    from nerepro.cli import app

    config = tmp_path / "tiny.toml"
    config.write_text('seeds = 1\n[settings]\nsubset = 200\nmax_steps = 4\ncheck_every = 2\n'
                      '[[grid]]\nnetwork = "F1"\nalpha = [1.0, 2.0]\nbatch_size = [50, 100]\n')
    runner = CliRunner()
    listed = runner.invoke(app, ["sweep", str(config), "--results", str(tmp_path / "r"), "--dry-run", "--list"])
    ids = [line for line in listed.output.splitlines() if line.startswith("F1-")]
    assert len(ids) == 4
    runs = tmp_path / "runs.txt"
    runs.write_text(f"{ids[3]} 30\n{ids[0]}\n")
    done = runner.invoke(app, ["sweep", str(config), "--results", str(tmp_path / "r"), "--device", "cpu",
                               "--data-dir", str(fake_fmnist_root), "--runs", str(runs), "--time-limit", "600"])
    assert done.exit_code == 0, done.output
    log = (tmp_path / "r" / "sweep.log").read_text()
    assert [line.split()[-1] for line in log.splitlines() if " start " in line] == [ids[3], ids[0]]
    runs.write_text("F1-nothing-s0\n")
    bad = runner.invoke(app, ["sweep", str(config), "--results", str(tmp_path / "r"), "--runs", str(runs)])
    assert bad.exit_code == 2 and "not runs of the configs (first: F1-nothing-s0)" in bad.output


def test_a_sweep_without_its_data_stops_before_it_records_anything(tmp_path):
    from typer.testing import CliRunner

    from nerepro.cli import app

    result = CliRunner().invoke(app, ["sweep", str(REPO / "configs" / "smoke.toml"), "--results", str(tmp_path / "r"),
                                      "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "Fashion-MNIST not found" in result.output and "nothing was trained" in result.output
    assert not list((tmp_path / "r").rglob("*.json"))
