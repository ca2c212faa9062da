"""Sweeps survive kills, record failures as data, and agree across executors."""

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from conftest import REPO, TIMES, synthetic_data, train_killed_at
from nerepro import RunConfig, train
from nerepro.record import read_record
from nerepro.results import ResultsDir
from nerepro.sweep import run_local

VOLATILE = (*TIMES, "resumes")


def strip(record):
    return {k: v for k, v in record.items() if k not in VOLATILE}


def write_config(path, text):
    path.write_text(text)
    return path


GRID = """seeds = 2
[settings]
max_steps = 60
check_every = 10
check_chunk = 50
[[grid]]
network = "F1"
alpha = [1.0, 2.0]
batch_size = [20, 40]
"""


def sweep_cmd(config, results, data_root, *extra):
    return [sys.executable, "-m", "nerepro", "sweep", str(config), "--results", str(results),
            "--data-dir", str(data_root), "--checkpoint-every", "1", "--device", "cpu", *extra]


def test_checkpointed_run_resumes_to_the_same_record(tmp_path):
    data = synthetic_data(noise=1.0)
    cfg = RunConfig(network="F1", alpha=1.5, batch_size=50, check_every=10, check_chunk=40, max_steps=90,
                    device="cpu")
    uninterrupted = train(cfg, data=data)
    ckpt = tmp_path / "run.pt"

    train_killed_at(cfg, data, ckpt, step=60)
    assert torch.load(ckpt, weights_only=False)["state"]["step"] == 50  # saved at the check before the crash
    resumed = train(cfg, data=data, checkpoint=ckpt, checkpoint_every_s=1e9)
    assert resumed["resumes"] == 1 and uninterrupted["resumes"] == 0
    assert strip(resumed) == strip(uninterrupted)


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    data = synthetic_data()
    a = RunConfig(network="F1", alpha=1.0, batch_size=50, check_every=10, max_steps=20, device="cpu")
    ckpt = tmp_path / "x.pt"
    train(a, data=data, checkpoint=ckpt, checkpoint_every_s=0)
    b = a.replace(seed=1)
    with pytest.warns(UserWarning, match="another run"):
        record = train(b, data=data, checkpoint=ckpt, checkpoint_every_s=0)
    assert record["resumes"] == 0


def test_sweep_survives_repeated_sigkill(tmp_path, fake_fmnist_root):
    """The runs train in packs of two (--pack on: seeds together), with checkpoints every second."""
    config = write_config(tmp_path / "grid.toml", GRID)
    results = tmp_path / "results"
    rng = random.Random(0)
    worker_pids = set()
    for _ in range(4):  # two worker processes: the driver and its pool are killed at random moments
        proc = subprocess.Popen(sweep_cmd(config, results, fake_fmnist_root, "--workers-per-device", "2", "--pack",
                                          "on"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3, 8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log = results / "sweep.log"
        if log.exists():
            worker_pids |= {int(line.split()[2]) for line in log.read_text().splitlines()}
    time.sleep(1)
    for pid in worker_pids:  # workers die with their sweep (PR_SET_PDEATHSIG)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    final = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, "--pack", "on"), capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    records = [read_record(p) for p in sorted((results / "runs").glob("*.json"))]
    assert len(records) == 8 and all(r["status"] != "error" for r in records)
    assert not list(results.rglob("*.tmp")) and not list((results / "checkpoints").iterdir())
    recorded = Counter(line.split()[4] for line in (results / "sweep.log").read_text().splitlines()
                       if line.split()[3].startswith("recorded:"))
    assert max(recorded.values()) == 1  # nothing finished was redone
    again = subprocess.run(sweep_cmd(config, results, fake_fmnist_root), capture_output=True, text=True)
    assert again.returncode == 0 and "0 runs to do (8 of 8 already recorded)" in again.stdout


def test_failing_run_is_recorded_as_error_and_retried(tmp_path, fake_fmnist_root):
    config = write_config(tmp_path / "grid.toml", GRID.replace("[20, 40]", "[20, 500]").replace("seeds = 2",
                                                                                               "seeds = 1"))
    results = tmp_path / "results"
    out = subprocess.run(sweep_cmd(config, results, fake_fmnist_root), capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 error" in out.stdout and "2 not converged" in out.stdout or "converged" in out.stdout
    statuses = Counter(read_record(p)["status"] for p in (results / "runs").glob("*.json"))
    assert statuses["error"] == 2 and sum(statuses.values()) == 4  # B = 500 > 200 samples; the others ran
    errors = [read_record(p) for p in (results / "runs").glob("*.json") if read_record(p)["status"] == "error"]
    assert all("exceeds the 200 training samples" in r["error"] for r in errors)
    rerun = subprocess.run(sweep_cmd(config, results, fake_fmnist_root), capture_output=True, text=True)
    assert rerun.returncode == 1 and "2 runs to do" in rerun.stdout  # errors are retried, finished runs not


def test_corrupt_record_is_moved_aside_and_redone(tmp_path, fake_fmnist_root):
    config = write_config(tmp_path / "grid.toml", GRID.replace("seeds = 2", "seeds = 1").replace("[20, 40]", "20"))
    results = tmp_path / "results"
    assert subprocess.run(sweep_cmd(config, results, fake_fmnist_root), capture_output=True).returncode == 0
    victim = sorted((results / "runs").glob("*.json"))[0]
    good = json.loads(victim.read_text())
    victim.write_text('{"run_id": "half-writ')
    out = subprocess.run(sweep_cmd(config, results, fake_fmnist_root), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"moved corrupt record aside: {victim.name}" in out.stderr
    assert len(list((results / "corrupt").iterdir())) == 1
    assert strip(read_record(victim)) == strip(good)  # redone, same result


def test_dry_run_lists_runs_and_cost(tmp_path, fake_fmnist_root):
    config = write_config(tmp_path / "grid.toml", GRID)
    out = subprocess.run(sweep_cmd(config, tmp_path / "r", fake_fmnist_root, "--dry-run"), capture_output=True,
                         text=True)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[0].startswith("8 runs to do, 0 of 8 already recorded")
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    # on the CPU --pack auto does not pack (README, 'Packs'); --pack on packs runs differing in seed and alpha,
    # alpha = 1 apart: one pack per (B, alpha = 1 or not)
    assert lines[1].startswith("packs: off") and lines[3].split()[:5] == ["F1", "8", "0", "8", "480"]
    listed = subprocess.run(sweep_cmd(config, tmp_path / "r", fake_fmnist_root, "--dry-run", "--pack", "on",
                                      "--list"), capture_output=True, text=True)
    lines = listed.stdout.strip().splitlines()
    assert listed.returncode == 0 and len({line for line in lines[:8] if line.startswith("F1-a")}) == 8
    assert lines[8].startswith("8 runs to do") and lines[9].startswith("packs: on")
    assert lines[11].split()[:5] == ["F1", "8", "0", "4", "480"]


def test_ray_executor_matches_local(tmp_path, monkeypatch):
    """configs/smoke.toml on a local in-process Ray cluster (on generated Fashion-MNIST-format files, with 600
    training samples for smoke's subset of 500; shortened to 40 steps) gives the local executor's records."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a user's setting, which Ray's workers inherit: a task takes one
    from conftest import write_fashion_mnist
    from nerepro.grid import load_grid
    from nerepro.sweep import run_ray

    data_root = write_fashion_mnist(tmp_path / "data", n_train=600)
    runs = load_grid([REPO / "configs" / "smoke.toml"], overrides={"max_steps": 40})
    assert len(runs) == 4 and all(c.subset == 500 for c in runs)
    local, remote = ResultsDir(tmp_path / "local"), ResultsDir(tmp_path / "ray")
    for store in (local, remote):
        store.prepare()
    # one thread per run in both executors: CPU float results depend on the thread count
    run_local(runs, local, device="cpu", workers_per_device=os.cpu_count(), data_dir=str(data_root))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_ray(runs, remote, data_dir=str(data_root))
    finally:
        ray.shutdown()
    for cfg in runs:
        a, b = read_record(local.record_path(cfg.run_id)), read_record(remote.record_path(cfg.run_id))
        assert strip(a) == strip(b)
        assert a["status"] != "error"


def test_checkpoint_from_another_device_is_ignored(tmp_path):
    data = synthetic_data()
    cfg = RunConfig(network="F1", alpha=1.0, batch_size=50, check_every=10, max_steps=20, device="cpu")
    ckpt = tmp_path / "x.pt"
    with pytest.raises(ZeroDivisionError):
        train(cfg, data=data, checkpoint=ckpt, checkpoint_every_s=0, progress=lambda step, loss: step // (20 - step))
    saved = torch.load(ckpt, weights_only=False)
    saved["device_type"] = "cuda"  # as if the sweep had run on a GPU before
    torch.save(saved, ckpt)
    with pytest.warns(UserWarning, match="written on cuda"):
        record = train(cfg, data=data, checkpoint=ckpt, checkpoint_every_s=1e9)
    assert record["resumes"] == 0 and strip(record) == strip(train(cfg, data=data))


# ---- the GPU logic of the executors, without a GPU ----------------------------------------------------

def fake_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_slots_name_every_gpu_with_its_index(monkeypatch):
    from nerepro.sweep import slots

    fake_gpus(monkeypatch, 2)
    assert slots("auto") == ["cuda:0", "cuda:1"]
    assert slots("cuda", 2) == ["cuda:0", "cuda:0"]
    assert slots("cuda:1", 3) == ["cuda:1"] * 3
    assert slots("cpu", 2) == ["cpu", "cpu"]
    fake_gpus(monkeypatch, 0)
    assert slots("auto", 1) == ["cpu"]


def test_worker_setup_selects_the_gpu_by_index_and_splits_the_cores(monkeypatch):
    from nerepro.sweep import setup_worker

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.append(index))
    previous = torch.get_num_threads()
    try:
        for name in ("cuda:0", "cuda:1"):
            setup_worker(name, threads=1)
        assert chosen == [0, 1] and all(isinstance(i, int) for i in chosen)
        assert torch.get_num_threads() == 1
        setup_worker("cpu", threads=2)
        assert chosen == [0, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_error_record_names_the_device_it_ran_on(monkeypatch):
    from nerepro.sweep import error_record

    cfg = RunConfig(network="F1", alpha=1.0, batch_size=50)
    fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90000)
    record = error_record(cfg, RuntimeError("boom"), "cuda:0")
    assert record["provenance"]["device_type"] == "cuda" and record["provenance"]["device"] == "Fake GPU"
    assert error_record(cfg, RuntimeError("boom"), "cpu")["provenance"]["device_type"] == "cpu"


def test_the_cpu_is_named_by_family_model_and_stepping(tmp_path):
    """Two machines that both call themselves "AMD EPYC" differ in what a record says of their CPU."""
    from nerepro.record import cpu_id

    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n" \
            "stepping\t: 1\nflags\t\t: fpu avx2\n"
    (tmp_path / "zen3").write_text(block.format(0, 1) + "\n" + block.format(1, 1))
    (tmp_path / "zen4").write_text(block.format(0, 17) + "\n" + block.format(1, 17))
    (tmp_path / "bare").write_text("processor\t: 0\nmodel name\t: cpu\n")
    assert cpu_id(str(tmp_path / "zen3")) == "family 25, model 1, stepping 1"
    assert cpu_id(str(tmp_path / "zen4")) == "family 25, model 17, stepping 1"
    assert cpu_id(str(tmp_path / "bare")) is None and cpu_id(str(tmp_path / "missing")) is None


def test_memory_estimates_and_refusal():
    from nerepro.cost import estimated_device_bytes
    from nerepro.errors import ConfigError
    from nerepro.sweep import check_fits

    gib = 2 ** 30
    c1 = RunConfig(network="C1", alpha=1.5, batch_size=5000)
    assert 40 * gib < estimated_device_bytes(c1) < 50 * gib  # activations of 2 x 5000 samples dominate
    assert estimated_device_bytes(c1.replace(precision="bf16")) < estimated_device_bytes(c1)
    assert estimated_device_bytes(c1.replace(alpha=1.0)) < 0.6 * estimated_device_bytes(c1)  # B alone
    assert estimated_device_bytes(RunConfig(network="F1", alpha=1.5, batch_size=2000)) < 2.5 * gib
    check_fits(c1, 80 * gib)
    with pytest.raises(ConfigError, match=r"needs about 4\d\.\d GiB of GPU memory and the GPU has 40\.0 GiB"):
        check_fits(c1, 40 * gib)


def test_ray_gpu_tasks_get_a_fresh_process_and_the_memory_they_need():
    from nerepro.sweep import ray_gpu_share, ray_remote_options

    assert ray_remote_options(0.25) == {"max_calls": 1} and ray_remote_options(0) == {"max_calls": 0}
    gib = 2 ** 30
    big, small = RunConfig(network="C1", alpha=1.5, batch_size=5000), RunConfig(network="F1", alpha=1.0, batch_size=100)
    assert 0.5 < ray_gpu_share([big], 0.25, 80 * gib) <= 1.0  # about 45 of the GPU's 76 usable GiB
    assert ray_gpu_share([small], 0.25, 80 * gib) == 0.25
    assert ray_gpu_share([small], 2.0, 80 * gib) == 2.0  # more than one GPU per run stays as asked


def test_memory_gate_admits_runs_while_their_memory_fits():
    import multiprocessing as mp
    import threading

    from nerepro.sweep import MemoryGate

    gate, events, lock = MemoryGate(mp.get_context("spawn")), [], threading.Lock()

    def run(name, need, hold_s, start_s):
        time.sleep(start_s)
        with gate.hold(need, total=100) as admitted:
            with lock:
                events.append((name, "in", admitted))
            time.sleep(hold_s)
        with lock:
            events.append((name, "out", admitted))

    threads = [threading.Thread(target=run, args=a) for a in
               (("big1", 60, 0.6, 0.0), ("big2", 60, 0.1, 0.1), ("small", 10, 0.1, 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = [(n, e) for n, e, _ in events]
    assert order.index(("big2", "in")) > order.index(("big1", "out"))  # cannot fit beside big1
    assert order.index(("small", "in")) < order.index(("big1", "out"))  # fits beside it
    assert all(admitted for *_, admitted in events)
    with gate.hold(90, total=100):  # a waiter past its deadline gives up
        with gate.hold(20, total=100, deadline=time.time() + 0.2) as admitted:
            assert not admitted
    with gate.hold(150, total=100) as admitted:  # more than the GPU: the estimate is capped, the run goes alone
        assert admitted


# ---- time limits -------------------------------------------------------------------------------------

def test_run_paused_between_checks_resumes_to_the_same_record(tmp_path, monkeypatch):
    """A deadline pauses a run at any step, not only at a check; the checkpoint continues it exactly."""
    training = importlib.import_module("nerepro.train")  # the module (the package exports the function)

    data = synthetic_data(noise=1.0)
    cfg = RunConfig(network="F1", alpha=1.5, batch_size=50, check_every=10, check_chunk=40, max_steps=90,
                    stop_loss="epoch_mean", sampling="paired", device="cpu")
    uninterrupted = train(cfg, data=data)
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(training.time, "time", lambda: float(next(ticks)))  # one tick per step
    ckpt = tmp_path / "run.pt"
    with pytest.raises(training.OutOfTime) as paused:
        train(cfg, data=data, checkpoint=ckpt, deadline=37.0)
    assert paused.value.step == 37
    saved = torch.load(ckpt, weights_only=False)["state"]
    assert saved["step"] == 37 and saved["since_check"] == 7 and saved["minibatch_sum"] > 0
    monkeypatch.undo()
    resumed = train(cfg, data=data, checkpoint=ckpt)
    assert resumed["resumes"] == 1 and strip(resumed) == strip(uninterrupted)


def test_a_resumed_runs_record_names_the_code_and_machine_of_each_segment(tmp_path, monkeypatch):
    """A run paused under one commit and finished under another says so: each segment's steps, wall and CPU time,
    commit, dirty flag, device and threads, and a dirty flag for the whole run that any dirty segment makes true
    (else unknown where any segment's is)."""
    training = importlib.import_module("nerepro.train")
    record_module = importlib.import_module("nerepro.record")

    data = synthetic_data(noise=1.0)
    cfg = RunConfig(network="F1", alpha=1.5, batch_size=50, check_every=10, check_chunk=40, max_steps=90,
                    device="cpu")
    whole = train(cfg, data=data)
    assert "segments" not in whole["provenance"]  # a run in one go: its provenance as before
    # a process that has half a core: its CPU time runs at half the wall clock's rate
    monkeypatch.setattr(training.time, "process_time", lambda: time.perf_counter() / 2)

    def paused_then_finished(ckpt, first_dirty, last_dirty):
        monkeypatch.setattr(record_module, "git_state", lambda: ("a" * 40, first_dirty))
        ticks = iter(range(10 ** 6))
        with monkeypatch.context() as clock:
            clock.setattr(training.time, "time", lambda: float(next(ticks)))  # one tick per step
            with pytest.raises(training.OutOfTime):  # checkpoints at every check, then the pause at step 37
                train(cfg, data=data, checkpoint=ckpt, deadline=37.0, checkpoint_every_s=0)
        monkeypatch.setattr(record_module, "git_state", lambda: ("b" * 40, last_dirty))
        return train(cfg, data=data, checkpoint=ckpt, checkpoint_every_s=0)  # saves at checks, then finishes

    for first_dirty, last_dirty, run_dirty in ((False, False, False), (True, False, True), (False, True, True),
                                               (None, False, None)):
        record = paused_then_finished(tmp_path / f"run-{first_dirty}-{last_dirty}.pt", first_dirty, last_dirty)
        first, last = record["provenance"]["segments"]
        assert [first["steps"], last["steps"]] == [[0, 37], [37, whole["steps"]]] and record["steps"] == whole["steps"]
        assert (first["git_commit"], first["git_dirty"]) == ("a" * 40, first_dirty)
        assert (last["git_commit"], last["git_dirty"]) == ("b" * 40, last_dirty)
        assert record["provenance"]["git_commit"] == "b" * 40  # the last segment's, as a run in one go
        assert record["provenance"]["git_dirty"] is run_dirty
        assert first["threads"] == last["threads"] == torch.get_num_threads() and first["device"] == last["device"]
        kernels = torch.backends.cpu.get_cpu_capability()  # AVX512, AVX2, ...: the CPU kernels the run took
        assert first["cpu_capability"] == record["provenance"]["cpu_capability"] == kernels
        assert first["wall_s"] > 0 and last["wall_s"] > 0
        assert first["wall_s"] + last["wall_s"] == pytest.approx(record["wall_s"])
        assert first["cpu_s"] + last["cpu_s"] == pytest.approx(record["cpu_s"])
        assert record["cpu_s"] == pytest.approx(record["wall_s"] / 2, rel=1e-2)
        assert first["cpu_s"] == pytest.approx(first["wall_s"] / 2, rel=1e-2)

    # a checkpoint from before CPU time and segments were kept (`state` alone): the run resumes; its CPU time is
    # unknown, its segments start at the checkpoint
    ckpt = tmp_path / "old.pt"
    monkeypatch.setattr(record_module, "git_state", lambda: ("a" * 40, False))
    ticks = iter(range(10 ** 6))
    with monkeypatch.context() as clock:
        clock.setattr(training.time, "time", lambda: float(next(ticks)))
        with pytest.raises(training.OutOfTime):
            train(cfg, data=data, checkpoint=ckpt, deadline=37.0)
    saved = torch.load(ckpt, weights_only=False)
    assert {"cpu_before", "segments"} <= set(saved) and not {"cpu_before", "segments"} & set(saved["state"])
    torch.save({k: v for k, v in saved.items() if k not in ("cpu_before", "segments")}, ckpt)
    record = train(cfg, data=data, checkpoint=ckpt)
    assert record["resumes"] == 1 and record["steps"] == whole["steps"] and record["cpu_s"] is None
    assert [s["steps"] for s in record["provenance"]["segments"]] == [[37, whole["steps"]]]


LONG_GRID = """seeds = 2
[settings]
max_steps = 300
l_star_star = 1e-9
check_chunk = 100
[[grid]]
network = "F1"
alpha = [1.0, 2.0]
batch_size = [10, 20]
"""


def test_sweep_time_limit_exits_cleanly_and_a_rerun_continues(tmp_path, fake_fmnist_root):
    config = write_config(tmp_path / "grid.toml", LONG_GRID)
    results = tmp_path / "results"
    start = time.time()
    out = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, "--time-limit", "8s", "--pack", "off"),
                         capture_output=True, text=True)
    elapsed = time.time() - start
    assert out.returncode == 0, out.stdout + out.stderr
    t0 = time.time()  # the sweep's clock starts after Python has imported torch and nerepro: 3-6 s here
    subprocess.run([sys.executable, "-c", "import nerepro.cli"], check=True)
    startup = time.time() - t0
    assert elapsed < 8 + startup + 4, (elapsed, startup)  # the limit, the start-up, and 4 s to spare
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith("time limit 8 s reached") and "rerun the same command to continue" in summary
    recorded = {p.stem for p in (results / "runs").glob("*.json")}
    paused = {p.stem for p in (results / "checkpoints").glob("*.pt")}
    assert len(recorded) < 8 and paused and not recorded & paused
    assert f"({len(paused)} paused in checkpoints" in summary
    assert all(read_record(results / "runs" / f"{r}.json")["status"] == "not_converged" for r in recorded)
    again = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, "--pack", "off"), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    records = {p.stem: read_record(p) for p in (results / "runs").glob("*.json")}
    assert len(records) == 8 and not list((results / "checkpoints").glob("*.pt"))
    from nerepro import data as datasets
    from nerepro.grid import load_grid

    data = datasets.load("fashion-mnist", fake_fmnist_root)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the sweep's two workers on this machine's cores
    try:
        for cfg in load_grid([config]):
            if cfg.run_id in paused:
                assert records[cfg.run_id]["resumes"] == 1
                assert strip(records[cfg.run_id]) == strip(train(cfg.replace(device="cpu"), data=data))
    finally:
        torch.set_num_threads(previous)


def test_fill_starts_runs_that_cannot_finish_until_its_window_closes_and_then_those_that_fit():
    """--fill: a pack whose bound passes the deadline is started anyway (the deadline pauses it) while a quarter
    of the sweep's time limit, at most FILL_MIN_S, is left; after that, as without it, only packs that fit."""
    from nerepro.cost import Throughput
    from nerepro.sweep import FILL_MIN_S, Schedule, fill_until

    long, short = (RunConfig(network="F1", alpha=1.5, batch_size=20, max_steps=300, seed=s) for s in (0, 1))
    planned = {long.run_id: 1e6, short.run_id: 1.0}  # seconds: one never fits, the other always
    for limit, window in ((3600, FILL_MIN_S), (100, 25)):
        deadline = time.time() + limit
        assert fill_until(deadline, limit) == pytest.approx(deadline - window)
        assert Schedule([[long]], deadline, Throughput(), planned).next() is None  # without --fill: never
        schedule = Schedule([[long], [short]], deadline, Throughput(), planned, fill_until(deadline, limit))
        assert schedule.next() == [long] and schedule.next() == [short]
        closed = Schedule([[long], [short]], deadline, Throughput(), planned, time.time() - 1)  # window passed
        assert closed.next() == [short] and closed.next() is None


def test_a_filled_sweep_starts_what_a_plain_one_refuses_and_the_next_call_takes_paused_runs_first(
        tmp_path, fake_fmnist_root):
    from nerepro.grid import load_grid
    from nerepro.sweep import paused_first, sweep_order

    config = write_config(tmp_path / "grid.toml", LONG_GRID)
    runs = [c for c in load_grid([config]) if c.alpha == 2.0]
    plan = tmp_path / "runs.txt"
    plan.write_text("".join(f"{c.run_id} 100000\n" for c in runs))  # a plan far beyond the limit
    results = tmp_path / "results"
    one = ("--runs", str(plan), "--time-limit", "12s", "--workers-per-device", "1", "--pack", "off")
    plain = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, *one), capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    summary = plain.stdout.strip().splitlines()[-1]  # nothing fits: it stops at once and says why
    assert summary.startswith("sweep ended after") and "s of its 12 s limit: " in summary
    assert f"(0 paused in checkpoints, {len(runs)} not started)" in summary and not list(results.glob("runs/*.json"))
    filled = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, *one, "--fill"), capture_output=True,
                            text=True)
    assert filled.returncode == 0, filled.stdout + filled.stderr
    started = {p.stem for p in results.glob("runs/*.json")} | {p.stem for p in results.glob("checkpoints/*.pt")}
    assert runs[0].run_id in started  # the first run of the file: recorded, or paused at the limit
    store = ResultsDir(tmp_path / "fresh")  # a results directory where the last run of the order is paused
    order = sweep_order(load_grid([config]), {})
    later = order[-1]
    store.checkpoints.mkdir(parents=True)
    store.checkpoint_path(later.run_id).touch()
    assert paused_first(order, store, {}) == [later, *order[:-1]]
    first = order[0]  # a higher priority still comes first
    assert paused_first(order, store, {first.run_id: 0} | {c.run_id: 1 for c in order[1:]})[:2] == [first, later]
    listing = subprocess.run(sweep_cmd(config, store.root, fake_fmnist_root, "--dry-run", "--list"),
                             capture_output=True, text=True)  # the order the next call takes: the paused run first
    listed = [line for line in listing.stdout.splitlines() if line.startswith("F1-")]
    assert listed == [c.run_id for c in (later, *order[:-1])], listing.stdout
    assert listing.stdout.strip().splitlines()[-1] == (  # and the dry run says so, at the step sweep.log gives
        f"1 paused in checkpoints, continued first (steps of their last pause): {later.run_id} (its step in its "
        "checkpoint)")
    store.log_path.write_text(f"2026-12-07T09:21:00 vm 7 paused:1907 {later.run_id}\n")
    again = subprocess.run(sweep_cmd(config, store.root, fake_fmnist_root, "--dry-run"), capture_output=True, text=True)
    assert f"1 paused in checkpoints, continued first (steps of their last pause): {later.run_id} (step 1,907)" \
        in again.stdout, again.stdout
    bad = subprocess.run(sweep_cmd(config, results, fake_fmnist_root, "--fill"), capture_output=True, text=True)
    assert bad.returncode == 2 and "--fill goes with --time-limit" in bad.stderr


def test_a_paused_runs_bound_counts_the_steps_it_has_left(tmp_path):
    """A CPU sweep under --time-limit plans a paused run for what it has left (its pause's logged step), so that a
    run paused near its end is continued under a limit its whole bound would not fit."""
    from nerepro.sweep import PAUSED_LEFT_MIN, paused_steps, resumed_bound

    store = ResultsDir(tmp_path)
    store.checkpoints.mkdir(parents=True)
    store.log("paused:4000", "a")
    store.log("paused:9000", "a")  # paused again, further on: the last counts
    store.log("paused:5000", "b")  # its checkpoint is gone (recorded since): no longer paused
    store.log("recorded:converged", "c")
    store.checkpoint_path("a").touch()
    store.checkpoint_path("c").touch()  # a checkpoint without a pause (a killed run): its progress is unknown
    assert paused_steps(store) == {"a": 9000}
    assert resumed_bound(1200.0, 12000, 3000) == pytest.approx(900.0)  # three quarters of its steps left
    assert resumed_bound(1200.0, 12000, 11000) == resumed_bound(1200.0, 12000, 20000) == \
        pytest.approx(1200.0 * PAUSED_LEFT_MIN)  # near or past its allowed steps: never less than this


def test_kept_copies_continue_paused_runs_in_a_fresh_copy_of_the_results(tmp_path):
    """`nerepro keep-paused` copies paused runs' checkpoints into DIR/paused/ and drops those of runs recorded
    since; a copy of DIR without its checkpoints (a fresh checkout of committed results) continues the paused run
    from its kept copy to the record an uninterrupted run writes, and a kept copy never sets a run back."""
    import shutil

    from typer.testing import CliRunner

    from nerepro.cli import _paused_line, app
    from nerepro.sweep import paused_steps

    data = synthetic_data(noise=1.0)
    a = RunConfig(network="F1", alpha=1.5, batch_size=50, check_every=10, check_chunk=40, max_steps=90, device="cpu")
    b = a.replace(seed=1)
    whole = train(a, data=data)
    store = ResultsDir(tmp_path / "here")
    store.prepare()
    train_killed_at(a, data, store.checkpoint_path(a.run_id), step=60)  # paused at step 50
    train_killed_at(b, data, store.checkpoint_path(b.run_id), step=30)  # paused at step 20
    out = CliRunner().invoke(app, ["keep-paused", "--results", str(store.root)])
    assert out.exit_code == 0, out.output
    assert f"kept {a.run_id} at step 50" in out.output and f"kept {b.run_id} at step 20" in out.output
    assert "2 paused runs kept in" in out.output
    for cfg in (a, b):
        assert store.kept_path(cfg.run_id).read_bytes() == store.checkpoint_path(cfg.run_id).read_bytes()
    b_kept = store.kept_path(b.run_id).read_bytes()
    store.write(train(b, data=data, checkpoint=store.checkpoint_path(b.run_id)))  # b finishes: its copy goes
    assert not store.kept_path(b.run_id).exists() and store.kept_path(a.run_id).exists()
    store.kept_path(b.run_id).write_bytes(b_kept)  # a stale copy (e.g. from an older commit of the results)
    assert store.keep_paused() == [f"dropped the kept copy of {b.run_id}: recorded"]  # a's copy is current

    fresh = ResultsDir(tmp_path / "fresh")  # what a commit holds: records, kept copies, the log; no checkpoints
    shutil.copytree(store.root, fresh.root, ignore=shutil.ignore_patterns("checkpoints", ".locks"))
    fresh.log("paused:60", a.run_id)  # a later pause than the kept copy's: the copy's step is what is left
    assert paused_steps(fresh) == {a.run_id: 50}
    assert fresh.paused(a.run_id) and not fresh.checkpoint_path(a.run_id).exists()
    assert _paused_line([a], fresh).startswith("1 paused in checkpoints, continued first")
    c = a.replace(seed=2)
    fresh.kept_path(c.run_id).write_bytes(fresh.kept_path(a.run_id).read_bytes())  # another run's state
    with fresh.claim(a.run_id) as held:  # a run another process trains is never touched
        assert held and fresh.prepare() == [f"ignoring the kept copy {fresh.kept_path(c.run_id)}: unreadable, or "
                                            "of another run or version"]
    assert not fresh.checkpoint_path(a.run_id).exists() and not fresh.checkpoint_path(c.run_id).exists()
    fresh.kept_path(c.run_id).unlink()
    assert fresh.prepare() == [f"continuing {a.run_id} from its kept copy (step 50)"]
    saved_50 = fresh.checkpoint_path(a.run_id).read_bytes()
    train_killed_at(a, data, fresh.checkpoint_path(a.run_id), step=80)  # on from 50, paused again at 70
    assert fresh.prepare() == []  # the checkpoint is further along than the kept copy: it stays
    assert fresh.keep_paused() == [f"kept {a.run_id} at step 70 (was 50)"]
    fresh.checkpoint_path(a.run_id).write_bytes(saved_50)  # a checkpoint behind its kept copy
    kept_70 = fresh.kept_path(a.run_id).read_bytes()
    on_gpu = torch.load(fresh.kept_path(a.run_id), weights_only=False) | {"device_type": "cuda"}
    torch.save(on_gpu, fresh.kept_path(a.run_id))  # further along, but of another device type: left alone
    assert fresh.prepare() == [] and fresh.checkpoint_path(a.run_id).read_bytes() == saved_50
    fresh.kept_path(a.run_id).write_bytes(kept_70)
    assert fresh.prepare() == [f"continuing {a.run_id} from its kept copy (step 70)"]
    record = train(a, data=data, checkpoint=fresh.checkpoint_path(a.run_id))
    assert record["resumes"] == 2 and strip(record) == strip(whole)
    fresh.write(record)
    assert not fresh.kept_path(a.run_id).exists() and fresh.keep_paused() == []
    bad = CliRunner().invoke(app, ["keep-paused", "--results", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "is not a results directory" in bad.output


def test_replay_says_whether_this_machine_computes_what_a_record_did(tmp_path, fake_fmnist_root, capsys):
    """scripts/replay.py trains a recorded run's first steps again and compares them with the record: every step's
    L_B against a traced run's trace, the mean L_B at each check otherwise; a value changed in the last bits parts
    them at its step."""
    import importlib.util

    from nerepro.trace import read_trace, trace_path, write_trace

    spec = importlib.util.spec_from_file_location("replay", REPO / "scripts" / "replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    store = ResultsDir(tmp_path / "r")
    base = RunConfig(network="F1", alpha=1.5, batch_size=20, max_steps=40, check_every=10, check_chunk=100,
                     device="cpu", stop_loss="full", sampling="independent")
    traced, plain = base.replace(trace=True), base.replace(seed=1)
    threads = torch.get_num_threads()
    paths = {cfg.seed: store.write(train(cfg, data_dir=str(fake_fmnist_root))) for cfg in (traced, plain)}
    args = [str(store.root), traced.run_id, plain.run_id, "--steps", "25", "--data-dir", str(fake_fmnist_root)]
    assert replay.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("25 steps, 25 values of L_B at every step: identical")
    assert out[1].endswith("25 steps, 2 values of mean L_B at each check: identical")  # checks at 10 and 20
    assert torch.get_num_threads() == threads  # the replay trains at the record's threads, then gives them back

    trace = read_trace(trace_path(paths[0]))  # step 7's L_B one part in 10^7 off: they part there
    loss_b = trace["loss_b"].tolist()
    loss_b[6] *= 1 + 1e-7
    write_trace(trace_path(paths[0]), {"loss_b": loss_b, "objective": trace["objective"].tolist()})
    record = json.loads(paths[1].read_text())  # the check at step 20's mean L_B off
    record["curve"]["minibatch_loss"][1] *= 1 + 1e-7
    paths[1].write_text(json.dumps(record))
    assert replay.main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert "24 identical, first differing at step 7" in out[0] and "1 identical, first differing at step 20" in out[1]

    assert replay.main([str(store.root), "F1-a1.5-b20", "--data-dir", str(fake_fmnist_root)]) == 2  # two records
    assert "names 2 records" in capsys.readouterr().err
