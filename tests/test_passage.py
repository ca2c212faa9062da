"""`nerepro passage`: each reading's first passage below L* on traced trajectories."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
from conftest import synthetic_data

from nerepro.config import PROTOCOLS, RunConfig
from nerepro.passage import own_reading, passage_table, passages, readings, write_passage
from nerepro.results import ResultsDir
from nerepro.trace import read_trace, trace_path
from nerepro.train import train

DATA = synthetic_data(n_train=400, n_test=100)


def traced(protocol: str, alpha: float = 1.5, **kw) -> dict:
    """A traced run on the synthetic data (computed once per setting in this module; callers do not modify it)."""
    return _traced(protocol, alpha, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _traced(protocol: str, alpha: float, kw: tuple) -> dict:
    base = dict(network="F1", alpha=alpha, batch_size=40, device="cpu", precision="fp64", l_star=0.5,
                l_star_star=0.005, max_steps=400, trace=True, seed=1)
    cfg = RunConfig(**{**base, **PROTOCOLS[protocol], **dict(kw)})
    return train(cfg, data=DATA)


def as_arrays(record: dict) -> dict:
    trace = record["trace"]
    return {"step": np.arange(1, len(trace["objective"]) + 1), "loss_b": np.array(trace["loss_b"]),
            "objective": np.array(trace["objective"])}


def test_readings_against_a_hand_computation():
    loss_b = np.array([4.0, 2.0, 6.0, 1.0, 3.0, 5.0, 2.0])
    objective = loss_b * 2
    series = readings(loss_b, objective, epoch=3, alpha=1.5)
    assert series["step NE loss"][1].tolist() == objective.tolist()
    assert series["running NE mean"][1].tolist() == pytest.approx([8, 6, 8, 2, 4, 6, 4])
    steps, values, every = series["epoch NE mean"]
    assert steps.tolist() == [3, 6] and values.tolist() == pytest.approx([8, 6]) and every == 3
    assert series["epoch L_B mean"][1].tolist() == pytest.approx([4, 3])
    steps, values, _ = series["NE mean, 3 steps"]
    assert steps.tolist() == [3, 4, 5, 6, 7] and values.tolist() == pytest.approx([8, 6, 20 / 3, 6, 20 / 3])
    assert "step L_B" not in readings(loss_b, loss_b, epoch=3, alpha=1.0)  # at alpha = 1 the NE loss is L_B


@pytest.mark.parametrize("protocol", ["keras", "step", "keras-running"])
def test_a_runs_own_reading_first_passes_where_it_halved(protocol):
    record = traced(protocol)
    table = passages(record, as_arrays(record))
    own = table[table["reading"] == own_reading(record["config"]["stop_loss"], 1.5)].iloc[0]
    assert own["first_below_l_star"] == record["lr_halved_step"] and own["exact"]


def test_a_passage_on_another_readings_trajectory_is_that_readings_halving():
    """The Keras run's trace predicts where the step and running readings halve, exactly, when they do so before
    the Keras run halves: the readings share its trajectory until then."""
    keras = traced("keras")
    table = passages(keras, as_arrays(keras)).set_index("reading")
    for protocol, reading in (("step", "step NE loss"), ("keras-running", "running NE mean")):
        assert table.loc[reading, "exact"]
        assert traced(protocol)["lr_halved_step"] == table.loc[reading, "first_below_l_star"]
    step_run = traced("step")  # and the other way round: the Keras reading crosses after the step run halved
    row = passages(step_run, as_arrays(step_run)).set_index("reading").loc["epoch NE mean"]
    assert row["first_below_l_star"] > step_run["lr_halved_step"] + 1 and not row["exact"]


def test_passage_command_writes_its_page_and_the_report_links_it(tmp_path):
    results = ResultsDir(tmp_path / "res")
    results.prepare()
    for protocol in ("keras", "step"):
        record = traced(protocol)
        results.write(record)
        assert trace_path(results.record_path(record["run_id"])).is_file()
        assert '"objective"' not in results.record_path(record["run_id"]).read_text()  # the trace is beside it
    assert len(passage_table(results.root)["run_id"].unique()) == 2
    out = subprocess.run([sys.executable, "-m", "nerepro", "passage", "--results", str(results.root)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = results.root / "report"
    assert {"passage.md", "passage.csv", "passage.png", "passage.pdf"} <= {p.name for p in report.iterdir()}
    assert "step NE loss (this run's reading)" in (report / "passage.md").read_text()
    out = subprocess.run([sys.executable, "-m", "nerepro", "report", "--results", str(results.root)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = (report / "README.md").read_text()
    assert "first falls below L*" in page and "(passage.png)" in page


def test_passage_without_traces_is_one_line_and_exit_2(tmp_path):
    results = ResultsDir(tmp_path / "res")
    results.prepare()
    record = traced("keras", trace=False)
    results.write(record)
    out = subprocess.run([sys.executable, "-m", "nerepro", "passage", "--results", str(results.root)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--trace" in out.stderr
    assert write_passage(results.root, tmp_path / "out") is None


def test_a_trace_read_back_gives_the_same_passages(tmp_path):
    results = ResultsDir(tmp_path / "res")
    results.prepare()
    record = traced("step", precision="fp32")
    results.write(dict(record))
    from_file = passages(record, read_trace(trace_path(results.record_path(record["run_id"]))))
    in_memory = passages(record, as_arrays(record))
    assert from_file["first_below_l_star"].fillna(-1).tolist() == in_memory["first_below_l_star"].fillna(-1).tolist()


def test_the_page_says_when_a_traced_run_stopped_without_halving(tmp_path):
    """A run whose first check below L* is below L** too stops unhalved (schedule.next_action): the page says so."""
    results = ResultsDir(tmp_path / "res")
    results.prepare()
    halved = {**traced("keras"), "batch_size": 2000}  # at Table 2's NE row, so the page sets the paper beside it
    assert halved["lr_halved_step"] is not None and halved["status"] == "converged"
    results.write(halved)
    unhalved = {**halved, "run_id": halved["run_id"] + "x", "lr_halved_step": None}
    results.write(unhalved)
    unfinished = {**halved, "run_id": halved["run_id"] + "y", "status": "not_converged", "convergence_steps": None}
    results.write(unfinished)
    text = write_passage(results.root, results.root / "report")
    gap = halved["convergence_steps"] - halved["lr_halved_step"]
    assert (f"halved at step {halved['lr_halved_step']:,} and converged at {halved['convergence_steps']:,} "
            f"({gap} steps after halving)") in text
    assert f"converged at {halved['convergence_steps']:,} without halving" in text
    assert f"did not converge (it halved at step {halved['lr_halved_step']:,})" in text
    assert "never" not in text
    assert text.count("the paper's Table 2: 7,914 ± 528 steps.") == 3
    assert text.count("Windows whose first passage plus this run's halving-to-L** gap") == 1  # the halved run's
