"""A CPU sweep's plan for the machine it runs on: the records' speed, scaled by a few seconds of training here.

A CPU sweep plans each run at its row's fastest recorded speed (plan.planning_throughput). Machines that call
themselves the same CPU ("AMD EPYC") differ by a third between sessions (results/performance.md), so a plan
from the fastest record alone is a plan for the fastest machine. `calibrate` trains each kind of run to do,
(network, B, NE or not), for a few seconds here, the sweep's workers side by side at its threads each as the
sweep will run them, and sets `Throughput.scale` to this machine's training step time over the records' (loss
checks left out of both; the records' check time is scaled with their steps); a kind without records is planned
at its step time here (`Throughput.here`).
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

from .bench import bench_data, side_by_side
from .config import RunConfig
from .cost import MACHINE, Throughput
from .errors import ConfigError
from .train import train

SECONDS = 10.0  # of training timed of each kind by default (a sweep under --time-limit on the CPU)
WARMUP = 2  # steps before the timed ones (the first allocates the model's buffers)
MAX_STEPS = 1000  # the most steps timed of a kind, however fast its records
MAX_KINDS = 4  # kinds timed at most (the first in the sweep's order); the others take the median factor


def kinds(runs: list[RunConfig], throughput: Throughput) -> list[RunConfig]:
    """The first run of each (network, B, NE) among `runs` whose recorded step time is known (the ones a factor
    can be measured for), in the runs' order, at most MAX_KINDS."""
    chosen = {}
    for cfg in runs:
        if throughput.step_s(cfg) is not None and len(chosen) < MAX_KINDS:
            chosen.setdefault(Throughput.kind(cfg)[:3], cfg)
    return list(chosen.values())


def stand_ins(runs: list[RunConfig], throughput: Throughput) -> list[RunConfig]:
    """Where no run to do is of a kind with a recorded step time (a new row: Table 3's F1 row before its first
    record), a recorded kind of each of their networks to time instead, for the machine's factor (MACHINE: the
    check time of a new kind's reading, and the plan of the new kinds not timed): the one whose samples a step
    are nearest the network's first run's (on a log scale), at most MAX_KINDS."""
    chosen = {}
    for cfg in runs:
        if cfg.network in chosen or len(chosen) >= MAX_KINDS:
            continue
        recorded = [k for k, (steps, s) in throughput.training.items() if k[0] == cfg.network and steps and s > 0]
        want = cfg.batch_size * (1 if cfg.alpha == 1 else 2)  # B, or B and B'
        if recorded:
            network, batch_size, ne = min(recorded, key=lambda k: (abs(math.log(k[1] * (2 if k[2] else 1) / want)), k))
            chosen[cfg.network] = RunConfig(network, 1.5 if ne else 1.0, batch_size)
    return list(chosen.values())


def new_kinds(runs: list[RunConfig], throughput: Throughput) -> list[RunConfig]:
    """The first run of each (network, B, NE) among `runs` without records of its kind but with a plan from the
    network's other records (a new row: Table 3's F1 row before its first record), in the runs' order, where a
    step time timed here would plan it (Throughput.could_time_here): its runs are planned at that step time
    (Throughput.here), not at a guess from other kinds' samples a second (which assumes a sample costs as much at
    every B, on the machine of the fastest record)."""
    chosen = {}
    for cfg in runs:
        if throughput.could_time_here(cfg) and throughput.seconds(cfg) is not None:
            chosen.setdefault(Throughput.kind(cfg)[:3], cfg)
    return list(chosen.values())


def calibrate(throughput: Throughput, runs: list[RunConfig], workers: int, threads: int, seconds: float,
              data_dir: str | None = None) -> list[str]:
    """Time about `seconds` of training steps of each kind of `runs` in `workers` processes side by side, MAX_KINDS
    at most: the kinds without records (`new_kinds`, MAX_KINDS - 1 at most), then those with records (`kinds`;
    where none, `stand_ins`); set throughput.here to each new kind's step time here and throughput.scale to each
    recorded kind's step time here over its records' (MACHINE: their median, for the kinds not timed); return a
    line per kind saying so (none where no kind can be timed). A step's time here is the median of each worker's
    steps (a burst of other work on the machine moves it little), averaged over the workers. The loss checks of
    the runs' readings stay in (at the start of a run they are gated or cheap: configs/README.md) and are left out
    of the time."""
    if not 0 < seconds < math.inf:
        raise ConfigError(f"--calibrate takes the seconds to time each kind of run, more than 0, got {seconds:g}")
    new, recorded = new_kinds(runs, throughput)[:MAX_KINDS - 1], kinds(runs, throughput)
    standing = not recorded
    recorded = (stand_ins(runs, throughput) if standing else recorded)[:MAX_KINDS - len(new)]
    chosen = [*new, *recorded]
    if not chosen:
        return []
    guess = [throughput.step_s(c) or throughput.seconds(c) / throughput.run_steps(c) for c in chosen]
    work = [cfg.replace(device="cpu", trace=False, max_steps=WARMUP + timed_steps(seconds, step))
            for cfg, step in zip(chosen, guess)]
    measured = side_by_side(_time_steps, [(work, os.getpid())] * workers, threads, data_dir)
    lines, scale, here = [], {}, {}
    for i, cfg in enumerate(chosen):
        timed, kind = statistics.mean(m[i] for m in measured), Throughput.kind(cfg)[:3]
        line = (f"calibration: {cfg.network} B={cfg.batch_size} alpha={cfg.alpha:g}: {timed:.3g} s a training step "
                f"here ({workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}, "
                f"{work[i].max_steps - WARMUP} steps)")
        if i < len(new):
            here[kind] = timed
            lines.append(f"{line}; no record of its kind: its runs planned at it (a guess from the network's "
                         f"other records: {guess[i]:.3g} s)")
        else:
            scale[kind] = timed / guess[i]
            lines.append(f"{line} against {guess[i]:.3g} s in the records: plan x{timed / guess[i]:.2f}"
                         + (" for the machine (no kind to do has records)" if standing else ""))
    if scale:
        scale[MACHINE] = statistics.median(scale.values())
    throughput.scale.update(scale)
    throughput.here.update(here)
    return lines


def timed_steps(seconds: float, step_s: float) -> int:
    """Steps that take about `seconds` at the records' step time (3 to MAX_STEPS)."""
    return max(3, min(MAX_STEPS, round(seconds / step_s)))


def step_seconds(cfg: RunConfig, data) -> float:
    """Seconds a training step of `cfg` takes here, its loss checks left out: the median over its steps after
    WARMUP (cfg.max_steps in all)."""
    marks = []  # (time, check seconds so far) before each step from WARMUP on

    def clock(step: int, state) -> None:
        if step == 0:
            marks.append(time.perf_counter())  # the loop's start, as train's loop_s counts it
        if step >= WARMUP:
            marks.append((time.perf_counter(), state.check_s))

    record = train(cfg, data=data, final_evaluation=False, before_step=clock)
    if record["steps"] <= WARMUP:
        raise RuntimeError(f"{cfg.run_id} ended ({record['status']}) at step {record['steps']}: nothing to time")
    ticks = [*marks[1:], (marks[0] + record["loop_s"], record["check_s"])]  # the last step ends with the loop
    return statistics.median((t1 - t0) - (c1 - c0) for (t0, c0), (t1, c1) in zip(ticks, ticks[1:]))


def _time_steps(work: list[RunConfig], parent: int, threads: int, data_dir: str | None, barrier, results) -> None:
    """A worker of `calibrate`: each kind's step time, all workers starting each kind together."""
    from .sweep import _die_with_parent

    _die_with_parent(parent)  # a sweep killed while it calibrates leaves no worker training
    try:
        torch.set_num_threads(threads)
        data, times = {}, []
        for cfg in work:
            if cfg.network not in data:
                data[cfg.network] = bench_data(cfg.network, torch.device("cpu"), data_dir)[0]
            barrier.wait()
            times.append(step_seconds(cfg, data[cfg.network]))
        results.put(times)
    except Exception as e:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        results.put(f"{type(e).__name__}: {e}")
