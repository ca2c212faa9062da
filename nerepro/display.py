"""Progress of a sweep: a tqdm bar on an interactive terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from .config import READING_NAMES


def summary_line(record: dict, path=None) -> str:
    """One line per finished run: id, status, step, the reading the run stopped on (named) with L(w) of
    Eq. (1) beside it where that reading is another, accuracy, wall time."""
    if record["status"] == "error":
        return f"{record['run_id']}: error: {record.get('error', '?')}"
    loss, acc = record.get("train_loss"), record.get("test_acc")
    reading = READING_NAMES.get(record.get("stop_loss", "full"), "train loss")
    parts = [f"{record['run_id']}: {record['status']} at step {record['steps']}",
             f"{reading} {loss:.4g}" if loss is not None else f"{reading} n/a"]
    if reading != READING_NAMES["full"] and record.get("train_loss_full") is not None:
        parts[-1] += f" (L(w) {record['train_loss_full']:.4g})"
    parts += [f"test acc {acc:.2f}%" if acc is not None else "test acc n/a", f"{record.get('wall_s', 0):.1f} s"]
    return ", ".join(parts) + (f" -> {path}" if path else "")


class RunProgress:
    """One run: a tqdm bar (step, last checked loss) on a terminal, else a log line at most once a minute."""

    def __init__(self, total: int, label: str, interactive: bool | None = None, every_s: float = 60.0):
        self.total, self.label, self.every_s, self.last = total, label, every_s, time.time()
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = None

    def __enter__(self):
        if self.interactive:
            self.bar = tqdm(total=self.total, desc=self.label, unit="step", dynamic_ncols=True, leave=False)
        return self

    def __call__(self, step: int, loss: str) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(loss)
        elif time.time() - self.last >= self.every_s:
            self.last = time.time()
            print(f"{self.label}: step {step}, {loss}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


class SweepDisplay:
    """Runs done / total with an ETA from the runs finished so far, and the latest run's step and loss."""

    def __init__(self, total: int, interactive: bool | None = None, every_s: float = 300.0):
        self.total, self.done, self.start = total, 0, time.time()
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar = tqdm(total=total, unit="run", dynamic_ncols=True) if self.interactive else None
        self.every_s, self.last = every_s, time.time()

    def __call__(self, kind: str, payload: dict) -> None:
        if kind == "check":
            status = f"{payload['run_id']} step {payload['step']} {payload['loss']}"
            if self.bar is not None:
                self.bar.set_postfix_str(status)
            elif time.time() - self.last >= self.every_s:  # a sign of life in logs, every few minutes
                self.last = time.time()
                self._write(f"[{self.done}/{self.total}] running: {status}")
        elif kind == "note":
            self._write(payload["message"])
        elif kind == "done":
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.write(summary_line(payload))
            else:
                self._write(f"[{self.done}/{self.total}] {summary_line(payload)} (eta {self.eta()})")

    def eta(self) -> str:
        if not self.done:
            return "?"
        left = (time.time() - self.start) / self.done * (self.total - self.done)
        return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} d"

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
