"""`nerepro bench` times the steps after the warm-up of one run, and says whether CUDA graphs were captured."""

import importlib
import logging
import time
from collections import Counter

import pytest
import torch

from conftest import synthetic_data
from nerepro import bench as benchmod
from nerepro.bench import GraphLog, cuda_graph_status, watch_graphs
from nerepro.errors import ConfigError
from nerepro.schedule import Action

training = importlib.import_module("nerepro.train")  # the module (the package exports the function)
DATA = synthetic_data(n_train=400, n_test=100)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def quick(monkeypatch):
    """bench on small synthetic data, without the one-second matmul probe."""
    monkeypatch.setattr(benchmod, "bench_data", lambda network, device, data_dir: (DATA, False))
    monkeypatch.setattr(benchmod, "matmul_peak", lambda *a, **k: 1.0)


def test_the_warm_up_and_the_timed_steps_are_one_run_timed_after_the_warm_up(monkeypatch, quick):
    """One model and one optimizer train warm-up and timed steps; on a clock on which a warm-up step takes
    100 s and a timed step 1 s, the rates are those of the timed steps alone."""
    build, make, clock, late = training.build_model, training.make_optimizer, time.perf_counter, [0.0]
    built, steps = [], [0]

    def counting_build(*args, **kwargs):
        built.append(args)
        return build(*args, **kwargs)

    def timed_optimizer(*args, **kwargs):
        optimizer = make(*args, **kwargs)
        step = optimizer.step

        def slow_step(*a, **k):
            steps[0] += 1
            late[0] += 100.0 if steps[0] <= 3 else 1.0  # the first 3 steps are the warm-up
            return step(*a, **k)

        optimizer.step = slow_step
        return optimizer

    monkeypatch.setattr(training, "build_model", counting_build)
    monkeypatch.setattr(training, "make_optimizer", timed_optimizer)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + late[0])
    result = benchmod.bench("F1", batch_size=40, alpha=1.5, steps=5, device="cpu", check_every=2, warmup=3)
    assert len(built) == 1 and steps[0] == 3 + 5
    assert result["steps"] == 5 and result["warmup_steps"] == 3 and result["warmup_s"] >= 300
    assert 0.8 < result["steps_per_s"] <= 1.0  # 5 steps in 5 s and the real time they took
    assert result["samples_per_s"] == pytest.approx(result["steps_per_s"] * 80)  # 2B per step: only the timed
    assert 0 < result["check_share"] < 1 and result["cuda_graphs"] == "not used"


def test_a_per_step_reading_is_timed_on_the_same_run(quick):
    result = benchmod.bench("F1", batch_size=40, alpha=1.5, steps=4, device="cpu", warmup=2, protocol="step")
    assert (result["steps"], result["check_every"]) == (4, 1) and 0 < result["check_share"] < 1


def test_a_run_that_stops_in_the_timed_steps_is_timed_to_there_and_one_that_stops_in_the_warm_up_is_an_error(
        monkeypatch, quick):
    monkeypatch.setattr(training, "next_action", lambda *a: Action.STOP)  # L < L** at the first check
    result = benchmod.bench("F1", batch_size=40, alpha=1.5, steps=10, device="cpu", check_every=4, warmup=2)
    assert result["steps"] == 2 and result["steps_per_s"] > 0  # stopped at step 4: steps 3 and 4 timed
    with pytest.raises(ConfigError, match="within the 5 warm-up steps"):
        benchmod.bench("F1", batch_size=40, alpha=1.5, steps=10, device="cpu", check_every=4, warmup=5)


def test_graph_status_says_captured_skipped_with_its_reason_or_not_used():
    assert cuda_graph_status("reduce-overhead", "cuda", GraphLog(recorded=2)) == "captured"
    assert cuda_graph_status("reduce-overhead", "cuda", GraphLog(recorded=2), late=1) == \
        "captured (1 of 2 recorded in the timed steps)"
    skipped = GraphLog(skips=1, reasons=["skipping cudagraphs due to mutated inputs (2 instances). Found from : "
                                         "\n  File models.py, line 40"])
    assert cuda_graph_status("reduce-overhead", "cuda", skipped) == "skipped: mutated inputs (2 instances)"
    assert cuda_graph_status("reduce-overhead", "cuda", GraphLog(skips=1)).startswith("skipped: 1 graph(s)")
    assert cuda_graph_status("reduce-overhead", "cuda", GraphLog()).startswith("skipped: no CUDA graph")
    for mode, device in (("default", "cuda"), ("off", "cuda"), ("reduce-overhead", "cpu")):
        assert cuda_graph_status(mode, device, GraphLog(recorded=2)) == "not used"


def test_the_watch_reads_torch_s_recordings_skip_counter_and_skip_warnings(monkeypatch):
    """Inductor's own bookkeeping, driven on the CPU: the CUDA-graph trees' recording callback, and its skip
    function (which logs the reason and bumps counters["inductor"]["cudagraph_skips"]), on stubbed counters."""
    import torch._dynamo
    from torch._dynamo.callback import CallbackArgs, CallbackTrigger
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    monkeypatch.setitem(counters, "inductor", Counter(cudagraph_skips=7))  # earlier compilations' skips
    monkeypatch.setattr(logging.getLogger("torch"), "propagate", False)  # keep the warning out of the output
    callbacks = list(torch._dynamo.callback_handler.start_callbacks)
    with watch_graphs() as graphs:
        for trigger in ("CUDAGRAPH_RECORDING", "DYNAMO", "CUDAGRAPH_RECORDING"):  # a compilation is no recording
            torch._dynamo.callback_handler.run_start_callbacks(CallbackArgs(CallbackTrigger[trigger], "0/0"))
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances). Found from :\n x")
    assert (graphs.recorded, graphs.skips) == (2, 1)
    assert cuda_graph_status("reduce-overhead", "cuda", graphs) == \
        "skipped: mutated inputs (2 instances) (2 other graph(s) captured)"
    torch._dynamo.callback_handler.run_start_callbacks(CallbackArgs(CallbackTrigger.CUDAGRAPH_RECORDING, "1/0"))
    assert graphs.recorded == 2 and torch._dynamo.callback_handler.start_callbacks == callbacks  # unregistered


def test_the_summary_names_the_graphs_only_when_they_were_asked_for(quick):
    result = benchmod.bench("F1", batch_size=40, alpha=1.0, steps=2, device="cpu", warmup=1)
    assert "CUDA graphs" not in benchmod.summary(result)
    assert "; CUDA graphs skipped: mutated inputs" in benchmod.summary(
        {**result, "compile": "reduce-overhead", "cuda_graphs": "skipped: mutated inputs"})


def test_cli_bench_json_is_one_line_with_the_graph_status(quick):
    import json

    from typer.testing import CliRunner

    from nerepro.cli import app

    out = CliRunner().invoke(app, ["bench", "--batch-size", "40", "--steps", "2", "--warmup", "1", "--device", "cpu",
                                   "--json"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["cuda_graphs"] == "not used"
    bad = CliRunner().invoke(app, ["bench", "--steps", "0", "--device", "cpu"])  # one line, exit 2
    assert bad.exit_code == 2 and "--steps takes the steps to time" in bad.output


@pytest.mark.gpu
@cuda
def test_cuda_reduce_overhead_bench_of_c1_reports_its_graphs():
    result = benchmod.bench("C1", batch_size=100, alpha=1.0, steps=3, device="cuda", compile="reduce-overhead",
                            warmup=3, check_every=50)
    assert result["cuda_graphs"] == "captured" or result["cuda_graphs"].startswith(("captured (", "skipped: "))
    assert result["steps"] == 3 and result["steps_per_s"] > 0 and result["warmup_s"] > 0


def test_a_torch_without_the_bookkeeping_leaves_the_status_unknown_not_a_crash(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "callback_handler", object())  # no register_start_callback
    with watch_graphs() as log:
        pass
    status = cuda_graph_status("reduce-overhead", "cuda", log)
    assert status.startswith("unknown: this torch does not say (AttributeError"), status
