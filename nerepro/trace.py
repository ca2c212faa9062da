"""Per-step traces of a run: every step's L_B and NE loss, kept with --trace (results/README.md, 'Traces').

A run's losses are kept on its device and copied to the host every FLUSH steps (and at a checkpoint, when a
run leaves its pack, and at the run's end), so tracing adds no synchronisation to a step. The trace of a finished run is written beside
its record, as DIR/runs/<run_id>.trace.csv.gz (before the record: a record with trace=true has its trace): columns step, loss_b, objective (alpha L_B + (1 - alpha) L_B', L_B at
alpha = 1), each value exactly as the run computed it (the shortest decimal that reads back to it).
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import torch

from .errors import ResultsError

FLUSH = 256  # steps between copies of a trace to the host
COLUMNS = ("step", "loss_b", "objective")


class StepTrace:
    """The L_B and NE losses of each run of a pack, step by step: on the device until flushed into each run's
    lists (`RunState.trace`)."""

    def __init__(self):
        self.pending: list[torch.Tensor] = []  # per step: (runs, 2) on the device

    def add(self, loss_b: torch.Tensor, objective: torch.Tensor, states: list) -> None:
        self.pending.append(torch.stack([loss_b.detach(), objective.detach()], -1).view(-1, 2))
        if len(self.pending) >= FLUSH:
            self.flush(states)

    def flush(self, states: list) -> None:
        """Append the pending steps to each run's trace (states: the runs' RunStates, in pack order)."""
        if not self.pending:
            return
        values = torch.stack(self.pending).double().cpu().numpy()  # (steps, runs, 2)
        self.pending.clear()
        for i, state in enumerate(states):
            if state.trace is None:  # from the step its first pending value was taken at (a run resumed from a
                # checkpoint written without --trace has no earlier steps)
                state.trace = {"first_step": state.step - len(values) + 1, "loss_b": [], "objective": []}
            state.trace["loss_b"] += values[:, i, 0].tolist()
            state.trace["objective"] += values[:, i, 1].tolist()


def trace_path(record_path: Path | str) -> Path:
    """Where the trace of the record at `record_path` (<run_id>.json) lies: beside it."""
    record_path = Path(record_path)
    return record_path.with_name(f"{record_path.stem}.trace.csv.gz")


def write_record_trace(record: dict, record_path: Path) -> dict:
    """Write a record's trace beside where the record goes; returns the record without it."""
    if "trace" not in record:
        return record
    record = dict(record)
    write_trace(trace_path(record_path), record.pop("trace"))
    return record


def write_trace(path: Path, trace: dict) -> Path:
    """Write a trace ({"loss_b": [...], "objective": [...]}, from step "first_step", 1 by default) atomically as
    CSV, gzip'd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    text.write(",".join(COLUMNS) + "\n")
    for step, (lb, ne) in enumerate(zip(trace["loss_b"], trace["objective"]), start=trace.get("first_step", 1)):
        text.write(f"{step},{float(lb)!r},{float(ne)!r}\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        f.write(text.getvalue())
    os.replace(tmp, path)
    return path


def read_trace(path: Path | str) -> dict[str, np.ndarray]:
    """A trace file as arrays: step (1, 2, ...), loss_b, objective."""
    try:
        with gzip.open(path, "rt") as f:
            header = f.readline().strip().split(",")
            values = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise ResultsError(f"cannot read trace {path} ({e}): rerun the run with --trace") from None
    if tuple(header) != COLUMNS or values.shape[1] != len(COLUMNS):
        raise ResultsError(f"{path} is not a trace (columns {header}): rerun the run with --trace")
    return {name: values[:, i] if name != "step" else values[:, i].astype(int) for i, name in enumerate(COLUMNS)}
