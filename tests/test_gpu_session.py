"""scripts/gpu_session.sh rehearsed on the CPU so that it cannot rot before the next GPU lease, its pack gate
(fail closed), and the sweep plan it asks nerepro.session for."""

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REPO, write_fashion_mnist
from nerepro.config import RunConfig
from nerepro.session import CPU, H100, main, plan_sweep, simulate, training_window
from nerepro.sweep import form_packs

SCRIPT = str(REPO / "scripts" / "gpu_session.sh")
LIMIT = 15 * 2 ** 20  # the most a handed-back file may have


def session(out, seconds, timeout, **env):
    run = subprocess.run([SCRIPT, str(out), str(seconds)], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": "", "PYTHON": sys.executable, **env})
    assert run.returncode == 0, run.stdout + run.stderr
    return (out / "summary.md").read_text()


def rows(summary):
    """The step column of the summary's table, in order."""
    return [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "---" not in line]


def test_gpu_session_rehearsal_on_the_cpu(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=6000)  # room for every B of configs/f1.toml
    out = tmp_path / "out"
    start = time.time()
    summary = session(out, 120, 150, DEVICE="cpu", SEEDS="1", NEREPRO_DATA=str(data),
                      CONFIG="configs/smoke.toml configs/f1.toml")  # smoke's runs finish, f1's do not fit
    assert time.time() - start < 125
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert len(files) <= 8, files
    assert {"results.tar.gz", "summary.md", "logs.tar.gz", "env.txt", "bench.jsonl"} <= set(files), summary
    assert all(size <= LIMIT for size in files.values()), files
    steps = rows(summary)
    assert steps[steps.index("gate") + 1] == "sweep", steps  # the pack test is the step before the sweep
    assert "| gate | skipped: no CUDA device (rehearsal); packs off | |" in summary
    assert "| sweep | exit 0; 1 worker, packs off |" in summary, summary
    for name in ("bench-f1-b100-pack2", "smoke", "report"):
        assert f"| {name} | exit 0 |" in summary, (name, summary)
    plan = summary.split("## Sweep plan")[1]
    assert "Workers 1, packs of up to 1 (packs off):" in plan and "One worker" in plan
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"logs/sweep.log", "logs/plan.md", "logs/env.txt"} <= set(tar.getnames())
        sweep_log = tar.extractfile("logs/sweep.log").read().decode()
    assert "time limit" in sweep_log and "rerun the same command to continue" in sweep_log
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    records = [n for n in names if n.startswith("results/runs/") and n.endswith(".json")]
    assert 1 <= len(records) <= 2  # smoke.toml at one seed (how many fit the time depends on the machine's load)
    assert not [n for n in names if "checkpoints" in n or ".locks" in n]
    for name in ("table2.md", "claims.md", "protocol.md"):
        assert f"results/report/{name}" in names
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [(b["network"], b["runs"]) for b in bench] == [("F1", 2)]
    smoke = [json.loads(line) for line in (out / "smoke.jsonl").read_text().splitlines()]
    assert [(s["network"], s["precision"], s["ok"]) for s in smoke] == [("F1", "fp32", True), ("F1", "bf16", True)]


def test_a_second_session_into_the_same_results_skips_what_the_first_recorded(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=1000)
    config = tmp_path / "tiny.toml"  # two runs of a second or two
    config.write_text('seeds = 1\n[settings]\nsubset = 200\nmax_steps = 20\ncheck_every = 10\n'
                      '[[grid]]\nnetwork = "F1"\nalpha = [1.0, 2.0]\nbatch_size = 50\n')
    results = tmp_path / "results"
    env = dict(DEVICE="cpu", SEEDS="1", NEREPRO_DATA=str(data), CONFIG=str(config), STAGES="sweep",
               RESULTS=str(results))
    first = session(tmp_path / "out1", 60, 90, **env)
    assert "| sweep | exit 0;" in first, first
    recorded = sorted(p.name for p in (results / "runs").glob("*.json"))
    assert recorded
    second = session(tmp_path / "out2", 60, 90, **env)
    assert "| sweep | exit 0;" in second, second
    with tarfile.open(tmp_path / "out2" / "logs.tar.gz") as tar:
        log = tar.extractfile("logs/sweep.log").read().decode()
    assert f"({len(recorded)} of 2 already recorded)" in log, log
    assert sorted(p.name for p in (results / "runs").glob("*.json"))[:len(recorded)] == recorded
    with tarfile.open(tmp_path / "out2" / "results.tar.gz") as tar:  # the records come back with the session
        assert {f"results/runs/{name}" for name in recorded} <= set(tar.getnames())


def test_a_session_started_from_a_results_directory_hands_its_records_back(tmp_path, fake_python):
    source = tmp_path / "f1"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1.5-b2000-s1-x.json").write_text("{}")
    summary = session(tmp_path / "out", 30, 30, PYTHON=fake_python, STAGES="", RESULTS_FROM=str(source))
    assert "| results-from | exit 0; records: 1 |" in summary
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        assert "results/runs/F1-a1.5-b2000-s1-x.json" in tar.getnames()
    assert (source / "runs" / "F1-a1.5-b2000-s1-x.json").read_text() == "{}"  # the source is only read


def test_no_handed_back_file_is_over_15_mib(tmp_path, fake_python):
    source = tmp_path / "big"
    (source / "runs").mkdir(parents=True)
    (source / "runs" / "F1-a1-b900-s0-x.json").write_bytes(os.urandom(LIMIT + 2 ** 20))  # gzip cannot shrink it
    summary = session(tmp_path / "out", 30, 60, PYTHON=fake_python, STAGES="", RESULTS_FROM=str(source))
    files = {p.name: p.stat().st_size for p in (tmp_path / "out").iterdir()}
    assert all(size <= LIMIT for size in files.values()) and "logs.tar.gz" in files, files
    assert "- results.tar.gz would have been 16 MiB, over the 15 MiB a file may have" in summary
    assert "results.tar.gz holds only this session's records" in summary
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        assert not [n for n in tar.getnames() if n.endswith(".json")]  # the big one was not this session's


FAKE_PYTHON = """#!/bin/sh
# a python whose pytest is scripted by FAKE_PYTEST (its output) and FAKE_RC; the rest goes to the real one
if [ "$1" = -m ] && [ "$2" = pytest ]; then
  echo "$*" > "$FAKE_ARGS"
  [ -n "$FAKE_SLEEP" ] && sleep "$FAKE_SLEEP"
  printf '%s\\n' "$FAKE_PYTEST"
  exit "$FAKE_RC"
fi
[ "$1" = -c ] && { echo "python (fake)"; exit 0; }
exec {python} "$@"
"""


@pytest.fixture
def fake_python(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("output, rc, sleep, packs, status", [
    ("1 passed, 212 deselected in 4.42s", 0, "", "on", "exit 0"),
    ("2 skipped, 212 deselected in 4.42s", 0, "", "off", "exit 0"),  # no CUDA on the box: untested is off
    ("1 passed, 1 skipped, 212 deselected in 4.42s", 0, "", "off", "exit 0"),
    ("1 failed, 212 deselected in 4.42s", 1, "", "off", "exit 1"),
    ("214 deselected in 1.20s", 5, "", "off", "exit 5"),  # no test: the test was renamed or not collected
    ("ERROR tests/test_fastpath.py\n1 error in 2.00s", 2, "", "off", "exit 2"),  # collection error
    ("/usr/bin/python3: No module named pytest", 1, "", "off", "exit 1"),
    ("", 124, "", "off", "stopped at its 3 s limit"),  # what a timeout reports
    ("1 passed in 60.00s", 0, "30", "off", "stopped at its 3 s limit"),  # killed by its limit
])
def test_the_pack_gate_fails_closed(tmp_path, fake_python, output, rc, sleep, packs, status):
    args = tmp_path / "args"
    summary = session(tmp_path / "out", 30, 30, PYTHON=fake_python, DEVICE="cuda", STAGES="gate", GATE_S="3",
                      FAKE_PYTEST=output, FAKE_RC=str(rc), FAKE_SLEEP=sleep, FAKE_ARGS=str(args))
    assert f"| gate | {status}; packs {packs} |" in summary, summary
    assert args.read_text().split() == ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-k",
                                        "test_cuda_pack", "tests/test_fastpath.py"]


def headline(seeds=10, **settings):
    """Table 2's and Table 3's F1 rows (configs/f1.toml priorities 1-2)."""
    rows = [(1, 1.0, 900), (1, 1.5, 2000), (2, 3.0, 5000)]
    runs = [(p, RunConfig("F1", a, b, seed=s, **settings)) for p, a, b in rows for s in range(seeds)]
    return [c for _, c in runs], {c.run_id: p for p, c in runs}


def test_compute_bound_packs_get_the_gpu_to_themselves():
    runs, priority = headline()
    plan = plan_sweep(runs, 600, 10, priority, H100)
    assert (plan.workers, plan.max_pack) == (1, 10)  # B = 2000 and 5000 packs of 10 are compute-bound on an H100
    assert plan.expected == 30 and "compute-bound" in plan.reason and "One worker: a pack needs 100%" in plan.reason
    # side by side, the same packs would share the GPU and all finish late
    units = form_packs(runs, 10, priority)
    assert simulate(units, 1, 400, H100).done == 30


def test_a_pack_too_long_for_the_time_is_made_smaller_so_that_some_runs_finish():
    runs = [RunConfig("F1", 3.0, 5000, seed=s) for s in range(10)]
    window = training_window(120, 1, H100)
    assert simulate(form_packs(runs, 10), 1, window, H100).done == 0
    plan = plan_sweep(runs, 120, 10, None, H100)
    assert plan.workers == 1 and 1 < plan.max_pack < 10 and plan.expected == plan.max_pack


def test_launch_bound_runs_share_the_gpu():
    runs = [RunConfig("F1", 1.0, 100, seed=s) for s in range(10)]
    plan = plan_sweep(runs, 600, 1, None, H100)  # packs off (the gate failed): single runs, launch-bound
    assert plan.workers > 1 and plan.max_pack == 1 and "launch-bound" in plan.reason
    runs, priority = headline()
    assert plan_sweep(runs, 600, 1, priority, H100).workers > 1


def test_on_the_cpu_a_run_has_the_cores_to_itself():
    runs, priority = headline(seeds=2, subset=6000, max_steps=100)
    assert plan_sweep(runs, 60, 1, priority, CPU).workers == 1
    assert plan_sweep([], 60, 10, None, CPU).workers == 1


def test_the_plan_command_prints_both_plans(capsys):
    assert main(["plan", str(REPO / "configs" / "smoke.toml"), "--seconds", "60", "--device", "cpu"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(packs, int(w)) for packs, w, _, _ in lines] == [("on", 1), ("off", 1)] and lines[1][2] == "1"
    assert all(reason.endswith(".") for *_, reason in lines)
