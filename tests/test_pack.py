"""Packed training: runs trained together give the records they give alone, up to rounding.

Whole runs are compared in float64 (precision "fp64"): packed and alone then agree to ~1e-10 over hundreds of
Adam steps and take every decision at the same step on any CPU, where fp32 runs drift apart by the BLAS
kernels' rounding (results/drift measures that drift; it is not tested). fp32 is compared over a few steps
only, against float64, with tolerances from fp32's rounding."""

import pytest
import torch

from conftest import EQ1, TIMES, assert_same_run, synthetic_data, train_killed_at
from nerepro import RunConfig, train
from nerepro.pack import check_pack, pack_dataset_loss, pack_logits, stacked_layers
from nerepro.models import build_model
from nerepro.schedule import dataset_loss
from nerepro.train import train_pack



def cfg(alpha, seed, **kw):
    base = dict(network="F1", alpha=alpha, batch_size=20, seed=seed, check_every=10, check_chunk=60,
                max_steps=600, device="cpu", precision="fp64", **EQ1)
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return synthetic_data(n_train=200)


def test_pack_logits_and_losses_are_each_models_own(data):
    models = [build_model("F1", seed=s) for s in range(3)]
    x = data.x_train[:50]
    shared = pack_logits(stacked_layers(models), x, shared=True)
    stacked = pack_logits(stacked_layers(models), x.unsqueeze(0).expand(3, *x.shape))
    for i, m in enumerate(models):
        torch.testing.assert_close(shared[i], m(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stacked[i], m(x), rtol=1e-5, atol=1e-5)
    checks = pack_dataset_loss(models, data.x_train, data.y_train, 60, [None, 0.0, 1e9])
    for m, check, stop in zip(models, checks, [None, 0.0, 1e9]):
        alone = dataset_loss(m, data.x_train, data.y_train, 60, stop)
        assert (check.exact, check.evaluated) == (alone.exact, alone.evaluated)
        assert check.value == pytest.approx(alone.value, rel=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_packed_activations_stay_in_the_autocast_dtype(data, shared):
    """Under bf16 autocast every hidden activation of a pack is bf16 (as in a run alone: F.linear then ReLU),
    the logits fp32; the shared input of a loss check included (its bias added inside the matmul)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ReluDtypes(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.relu, torch.ops.aten.relu_):
                self.seen.append(out.dtype)
            return out

    models = [build_model("F1", seed=s) for s in range(2)]
    x = data.x_train[:30] if shared else data.x_train[:30].unsqueeze(0).expand(2, 30, *data.x_train.shape[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16), ReluDtypes() as mode:
        logits = pack_logits(stacked_layers(models), x, shared=shared)
    assert mode.seen == [torch.bfloat16] * 7 and logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for i, m in enumerate(models):
            torch.testing.assert_close(logits[i], m(data.x_train[:30]).float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_run_gets_its_own_gradient_laid_out_as_its_parameters(data, dtype):
    """backward_pack hands each model a slice of the stacked gradient: its own gradient of its objective
    (computed alone in float64), with its parameter's strides (fused Adam on CUDA reads a gradient as laid
    out as its parameter). In float64 to 1e-10; in fp32 within fp32 rounding, layer by layer in norm
    (sums of 40 samples and 784 inputs: a few hundred eps; a wrong slice is off by O(1))."""
    from nerepro.gradient import ne_objective
    from nerepro.pack import backward_pack, pack_objective

    models = [build_model("F1", seed=s).to(dtype) for s in range(3)]
    x = data.x_train.to(dtype)
    alphas = torch.tensor([1.5, 2.0, 3.0], dtype=dtype)
    idx = torch.stack([torch.randperm(200, generator=torch.Generator().manual_seed(s))[:40] for s in range(3)])
    objective, _, stacks = pack_objective(models, x[idx], data.y_train[idx], 20, alphas)
    backward_pack(models, objective, stacks)
    rel = 1e-10 if dtype == torch.float64 else 1e3 * torch.finfo(torch.float32).eps
    for m, rows, alpha in zip(models, idx, alphas.tolist()):
        packed = [p.grad for p in m.parameters()]
        assert all(g.stride() == p.stride() and g.is_contiguous() and g.dtype == dtype
                   for g, p in zip(packed, m.parameters()))
        reference = build_model("F1", seed=0).double()
        reference.load_state_dict(m.state_dict())
        ne_objective(reference, x[rows].double(), data.y_train[rows], 20, alpha)[0].backward()
        for g, p in zip(packed, reference.parameters()):
            assert (g.double() - p.grad).norm() <= rel * p.grad.norm(), (dtype, p.shape)


def test_a_pack_of_seeds_and_alphas_trains_each_run_as_alone(data):
    """Runs of 70-110 steps packed and alone: the same run in float64. (In fp32 the batched matmuls round
    differently and Adam amplifies it, as another thread count does: results/drift measures how often a
    decision then moves.)"""
    runs = [cfg(1.5, 0), cfg(1.5, 1), cfg(2.0, 0)]
    packed = train_pack(runs, data=data)
    assert len({r["steps"] for r in packed}) == 3  # they stop at different steps, each at its own
    for run, record in zip(runs, packed):
        assert record["run_id"] == run.run_id and record["pack_size"] == 3
        assert_same_run(record, train(run, data=data))


def test_a_pack_at_alpha_one_with_epoch_readings(data):
    runs = [cfg(1.0, s, stop_loss="epoch_mean", sampling="epoch") for s in range(3)]
    for run, record in zip(runs, train_pack(runs, data=data)):
        alone = train(run, data=data)
        assert_same_run(record, alone)
        assert record["train_loss_full"] == pytest.approx(alone["train_loss_full"], rel=1e-8)


def test_a_diverging_run_leaves_the_pack_and_the_others_go_on(data):
    runs = [cfg(a, s, optimizer="sgd", lr=0.02, max_steps=100) for a, s in ((1.5, 0), (1e4, 1), (2.0, 0))]
    seen = []
    packed = train_pack(runs, data=data, on_record=lambda r: seen.append(r["run_id"]))
    assert packed[1]["status"] == "diverged" and packed[1]["steps"] < 100  # SGD at 1e4 x the gradient
    assert seen[0] == runs[1].run_id  # written as soon as it ended, before the others
    for i in (0, 2):
        assert packed[i]["status"] != "diverged"
        assert_same_run(packed[i], train(runs[i], data=data))


def test_a_pack_resumes_from_its_members_checkpoints(data, tmp_path):
    runs = [cfg(1.5, s, max_steps=90) for s in (0, 1)]
    paths = [tmp_path / f"{r.run_id}.pt" for r in runs]
    uninterrupted = train_pack(runs, data=data)

    class Killed(Exception):
        pass

    def crash(run_id, step, text):
        if step == 60:
            raise Killed

    with pytest.raises(Killed):
        train_pack(runs, data=data, checkpoints=paths, checkpoint_every_s=0, progress=crash)
    resumed = train_pack(runs, data=data, checkpoints=paths)
    for a, b in zip(uninterrupted, resumed):
        assert b["resumes"] == 1
        assert {k: v for k, v in a.items() if k not in (*TIMES, "resumes")} \
            == {k: v for k, v in b.items() if k not in (*TIMES, "resumes")}
        # each member's record names its two segments, the second from the checkpoint at the check before the crash
        assert [s["steps"] for s in b["provenance"]["segments"]] == [[0, 50], [50, b["steps"]]]
        assert sum(s["cpu_s"] for s in b["provenance"]["segments"]) == pytest.approx(b["cpu_s"])
    # a member's checkpoint is a single run's: it continues alone too
    train_killed_at(runs[0], data, tmp_path / "alone.pt", step=60)
    assert train(runs[0], data=data, checkpoint=tmp_path / "alone.pt")["resumes"] == 1


def test_runs_resumed_at_different_steps_each_continue_where_they_stopped(data, tmp_path):
    """Checkpoints at different steps: one pack per step reached, each run continuing exactly from its own."""
    runs = [cfg(1.5, 0, max_steps=90), cfg(2.0, 1, max_steps=90), cfg(1.5, 2, max_steps=90)]
    paths = [tmp_path / f"{r.run_id}.pt" for r in runs]
    for run, path, step in zip(runs, paths, (30, 60, 30)):
        train_killed_at(run, data, path, step=step)
    resumed = train_pack(runs, data=data, checkpoints=paths)
    assert [r["run_id"] for r in resumed] == [r.run_id for r in runs]
    assert [r["pack_size"] for r in resumed] == [2, 1, 2]
    ignore = (*TIMES, "resumes", "pack_size")
    alone = [train(run, data=data) for run in runs]
    assert all(r["resumes"] == 1 for r in resumed)
    # the run at step 60 continued alone: its record is the uninterrupted one
    assert {k: v for k, v in resumed[1].items() if k not in ignore} == \
        {k: v for k, v in alone[1].items() if k not in ignore}
    for i in (0, 2):  # continued as a pack of two: the same run, up to the pack's rounding
        assert_same_run(resumed[i], alone[i])


def test_only_runs_that_differ_in_seed_and_alpha_share_a_pack():
    check_pack([cfg(1.5, 0), cfg(3.0, 4)])
    for other in (cfg(1.0, 1), cfg(1.5, 1, batch_size=40), cfg(1.5, 1, network="C1", batch_size=100, check_chunk=100),
                  cfg(1.5, 1, stop_loss="epoch_mean"), cfg(1.5, 1, reference="full")):
        with pytest.raises(ValueError, match="a pack holds F1 runs"):
            check_pack([cfg(1.5, 0), other])


def test_a_sweep_forms_packs_by_priority_and_settings():
    from nerepro.sweep import form_packs

    f1 = [cfg(a, s) for a in (1.0, 1.5, 2.0) for s in range(3)]
    c1 = [cfg(1.5, s, network="C1", batch_size=100, check_chunk=100) for s in range(2)]
    priority = {c.run_id: (0 if c.seed == 0 else 1) for c in f1 + c1}
    ordered = sorted(f1 + c1, key=lambda c: priority[c.run_id])  # as the sweep orders them
    packs = form_packs(ordered, max_pack=4, priority=priority)
    assert [[(c.alpha, c.seed) for c in p] for p in packs if p[0].network == "F1"] == [
        [(1.0, 0)], [(1.5, 0), (2.0, 0)], [(1.0, 1), (1.0, 2)], [(1.5, 1), (1.5, 2), (2.0, 1), (2.0, 2)]]
    assert [len(p) for p in packs if p[0].network == "C1"] == [1, 1]  # CNNs train alone
    assert all(len(p) == 1 for p in form_packs(f1, max_pack=1))  # --pack off


def test_tf32_is_a_precision_of_its_own_and_only_it_turns_tf32_matmuls_on():
    from nerepro.fastpath import configure_backends

    assert cfg(1.5, 0, precision="tf32").run_id != cfg(1.5, 0).run_id
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    try:
        configure_backends(torch.device("cuda"), "tf32")  # flags only: no GPU needed to set them
        assert torch.backends.cuda.matmul.allow_tf32
        configure_backends(torch.device("cuda"), "fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32) = previous


def test_dry_run_prints_packs_and_wall_times(tmp_path):
    from typer.testing import CliRunner

    from conftest import REPO
    from nerepro.cli import app
    from nerepro.cost import estimated_flop
    from nerepro.grid import load_grid

    out = CliRunner().invoke(app, ["sweep", str(REPO / "configs" / "paper.toml"), "--network", "F1", "--results",
                                   str(tmp_path / "r"), "--dry-run", "--pack", "on", "--tflops", "fp32=40,tf32=250",
                                   "--device", "cpu"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "packs: on, up to 10 F1 runs" in lines[1]
    row = next(line for line in lines if line.startswith("F1 ")).split()
    assert row[1:4] == ["360", "0", "36"]  # to do, recorded, packs of up to 10
    flop = sum(estimated_flop(c) for c in load_grid([REPO / "configs" / "paper.toml"]) if c.network == "F1")
    assert float(row[6]) == pytest.approx(flop, rel=5e-3)
    value, unit = row[7:9]  # on one device at fp32 40 TFLOP/s (the runs' precision: tf32 applies to none)
    scale = {"s": 1, "min": 60, "h": 3600}[unit]
    assert float(value) * scale == pytest.approx(flop / 40e12, abs=0.5 * scale * (0.1 if "." in value else 1))
    assert row[9:11] == ["fp32=40", "keras"], row
    bad = CliRunner().invoke(app, ["sweep", str(REPO / "configs" / "paper.toml"), "--results", str(tmp_path / "r"),
                                   "--dry-run", "--tflops", "fast"])
    assert bad.exit_code == 2 and "--tflops takes name=TFLOP/s pairs" in bad.output


def test_bench_pack_times_both_ways(tmp_path, monkeypatch):
    """`nerepro bench --pack 3 --workers 2`: the pack against its named baseline (the runs one after another)
    and two worker processes, each way timed over its training loops only (model construction, made to take
    100 s on the clock, is not in them), its TFLOP/s the training FLOP of the samples processed over those
    seconds."""
    import importlib
    import json
    import time

    from typer.testing import CliRunner

    from nerepro.bench import pack_summary, training_flops_per_sample
    from nerepro.cli import app

    training = importlib.import_module("nerepro.train")  # the module (the package exports the function)
    build, built, clock, late = training.build_model, [], time.perf_counter, [0.0]

    def slow_build(*args, **kwargs):
        built.append(args)
        late[0] += 100.0  # a model construction takes 100 s, as far as any timer in this process can tell
        return build(*args, **kwargs)

    monkeypatch.setattr(training, "build_model", slow_build)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + late[0])
    out = CliRunner().invoke(app, [str(a) for a in ("bench", "--network", "F1", "--batch-size", 20, "--alpha", 1.5,
                                                    "--steps", 4, "--check-every", 2, "--warmup", 1, "--device", "cpu",
                                                    "--data-dir", tmp_path, "--pack", 3, "--workers", 2, "--json")])
    assert out.exit_code == 0, out.output
    r = json.loads(out.output)
    assert len(built) == 4 + 3 + 3  # warm-up, then each way (the workers build theirs in their own processes)
    assert r["single"]["seconds"] < 100 and r["pack"]["seconds"] < 100
    assert r["baseline"] == "3 runs one after another in one process" and r["data"] == "random"
    samples = 3 * 4 * 40  # 3 runs x 4 steps x 2B (alpha != 1)
    for way in (r["single"], r["pack"], r["workers"]):
        assert way["samples"] == samples
        assert way["tflops"] == pytest.approx(samples * training_flops_per_sample("F1") / way["seconds"] / 1e12)
        assert way["run_steps_per_s"] == pytest.approx(3 * 4 / way["seconds"])
    assert r["workers"]["workers"] == 2 and r["workers"]["threads"] >= 1
    assert r["speedup"] == pytest.approx(r["pack"]["run_steps_per_s"] / r["single"]["run_steps_per_s"])
    assert r["speedup_vs_workers"] == pytest.approx(r["pack"]["run_steps_per_s"] / r["workers"]["run_steps_per_s"])
    line = pack_summary(r)
    assert r["baseline"] in line and "2 worker processes" in line and f"{r['pack']['tflops']:.3g} TFLOP/s" in line
    bad = CliRunner().invoke(app, ["bench", "--workers", "2"])  # workers without a pack: one line, exit 2
    assert bad.exit_code == 2 and "--workers goes with --pack" in bad.output


@pytest.mark.parametrize("pack,size", [("auto", 1), ("on", 2), ("off", 1)])
def test_sweeps_pack_on_request_and_by_default_only_on_gpus(fake_fmnist_root, tmp_path, pack, size):
    """On a CPU a pack ran slower than its runs one after another (results/performance.md), so `auto` packs
    only where the runs go to GPUs."""
    from nerepro.sweep import run_sweep

    runs = [cfg(1.5, s, max_steps=20, check_chunk=50) for s in (0, 1)]
    records = run_sweep(runs, tmp_path / "r", pack=pack, device="cpu", workers_per_device=1,
                        data_dir=str(fake_fmnist_root))
    assert sorted(r["run_id"] for r in records) == sorted(c.run_id for c in runs)
    assert {r["pack_size"] for r in records} == {size}


def test_compare_runs_counts_moved_decisions_in_checks():
    """scripts/compare_runs.py, behind the README's drift figures: moves in whole checks, run ids matched."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def record(run_id, stop, halved, acc, status="converged"):
        return {"run_id": run_id, "check_every": 25, "convergence_steps": stop if status == "converged" else None,
                "steps": stop, "lr_halved_step": halved, "test_acc": acc}

    a = [record("x", 800, 700, 80.0), record("y", 400, None, 79.0), record("only-a", 100, 50, 70.0)]
    b = [record("y", 450, 375, 79.5), record("x", 1050, 725, 79.0, status="max_steps")]
    rows = {r["run_id"]: r for r in module.compare(a, b)}
    assert set(rows) == {"x", "y"}
    assert (rows["x"]["stop_moved"], rows["x"]["halving_moved"], rows["x"]["test_acc_diff"]) == (10, 1, -1.0)
    assert (rows["y"]["stop_moved"], rows["y"]["halving_moved"]) == (2, None)
    lines = module.summary(list(rows.values()))
    assert lines[1].startswith("stop moved in 2 of 2, by [2, 10] checks") and "+150 steps" in lines[1]
    assert lines[2].startswith("halving moved in 1 of 1")


def test_a_pack_records_that_it_ran_uncompiled(data):
    """Packs run eager (pack.py): a record must not claim the --compile it did not get."""
    records = train_pack([cfg(1.5, s, compile="default", max_steps=20) for s in (0, 1)], data=data)
    assert [r["provenance"]["compile"] for r in records] == ["off", "off"]


def test_a_failing_pack_lets_its_runs_continue_alone(data, tmp_path, monkeypatch):
    """A pack that raises mid-run (say, a GPU quirk of the batched path) costs no run: the unfinished ones
    continue alone from their checkpoints, in the same sweep, and the sweep log says so."""
    import importlib

    from nerepro.results import ResultsDir, read_record
    from nerepro.sweep import run_pack

    train_module = importlib.import_module("nerepro.train")  # the module, not the function nerepro exports

    real, calls = train_module.pack_objective, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise RuntimeError("batched matmul failed")
        return real(*args, **kwargs)

    class Cache:
        def get(self, cfg, device):
            return data

    monkeypatch.setattr(train_module, "pack_objective", flaky)
    runs = [cfg(1.5, s, max_steps=60) for s in (0, 1)]
    results = ResultsDir(tmp_path / "r")
    results.prepare()
    notes = []
    records = run_pack(runs, results, Cache(), on_event=lambda kind, info: notes.append((kind, info)),
                       checkpoint_every_s=0)
    assert sorted(r["run_id"] for r in records) == sorted(r.run_id for r in runs)
    for run in runs:
        record = read_record(results.runs / f"{run.run_id}.json")
        assert record["status"] != "error" and record["pack_size"] == 1 and record["resumes"] == 1
        assert_same_run(record, train(run, data=data))
    assert any(kind == "note" and "continue alone" in info["message"] for kind, info in notes)
    assert results.log_path.read_text().count("pack-failed:RuntimeError") == 2


def test_under_a_deadline_a_failed_packs_runs_go_back_to_the_schedule_alone(data, tmp_path, monkeypatch):
    """In a time-limited sweep a failed pack's runs do not restart alone whatever the time left: they go back
    to the sweep's queue, each alone, and start only if their bound fits (sweep.Schedule.give_back)."""
    import importlib
    import time

    from nerepro.cost import Throughput
    from nerepro.results import ResultsDir, read_record
    from nerepro.sweep import Schedule, run_local

    train_module = importlib.import_module("nerepro.train")
    real, calls = train_module.pack_objective, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise RuntimeError("batched matmul failed")
        return real(*args, **kwargs)

    class Cache:
        def __init__(self, *args):
            pass

        def get(self, cfg, device):
            return data

    monkeypatch.setattr(train_module, "pack_objective", flaky)
    monkeypatch.setattr("nerepro.sweep.DataCache", Cache)
    runs = [cfg(1.5, s, max_steps=60) for s in (0, 1)]
    results = ResultsDir(tmp_path / "r")
    results.prepare()
    notes = []
    deadline = time.time() + 600
    planned = {r.run_id: 60.0 for r in runs}  # each fits the time left
    records = run_local([runs], results, device="cpu", workers_per_device=1, checkpoint_every_s=0,
                        deadline=deadline, planned=planned, on_event=lambda kind, info: notes.append((kind, info)))
    assert sorted(r["run_id"] for r in records) == sorted(r.run_id for r in runs)
    for run in runs:
        record = read_record(results.runs / f"{run.run_id}.json")
        assert record["status"] != "error" and record["pack_size"] == 1 and record["resumes"] == 1
        assert_same_run(record, train(run, data=data))
    assert any(kind == "note" and "go back to the sweep's queue" in info["message"] for kind, info in notes)

    schedule = Schedule([runs], deadline, Throughput(), {r.run_id: 900.0 for r in runs})  # beyond the deadline
    schedule.queue.clear()
    schedule.give_back(runs, [])
    assert [u[0].run_id for u in schedule.queue] == [r.run_id for r in runs] and schedule.next() is None
    schedule.give_back(runs[:1], [])  # a run alone is never given back
    assert len(schedule.queue) == 2


def test_a_pack_dispatches_fewer_operations_per_run_step(data):
    """What a pack saves on a launch-bound GPU (README, 'Packs'), counted on the CPU by scripts/count_ops.py:
    the operations of a step, optimizer apart, must not grow with each run as they would one run at a time
    (per-run sampling or per-run gradient copies would)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("count_ops", REPO / "scripts" / "count_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    alone, _ = module.per_step("F1", 1, 1.5, 20, 3, data)
    packed, _ = module.per_step("F1", 4, 1.5, 20, 3, data)
    assert 0 < packed / 4 < alone / 2, (alone, packed)
