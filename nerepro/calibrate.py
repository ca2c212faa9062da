"""A CPU sweep's plan for the machine it runs on: the records' speed, scaled by a few seconds of training here.

A CPU sweep plans each run at its row's fastest recorded speed (plan.planning_throughput). Machines that call
themselves the same CPU ("AMD EPYC") differ by a third between sessions (results/performance.md), so a plan
from the fastest record alone is a plan for the fastest machine. `calibrate` trains each kind of run to do,
(network, B, NE or not), for a few seconds here, the sweep's workers side by side at its threads each as the
sweep will run them, and sets `Throughput.scale` to this machine's training step time over the records' (loss
checks left out of both; the records' check time is scaled with their steps).
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
    record), a recorded kind of each of their networks to time instead, for the machine's factor (MACHINE): the
    one whose samples a step are nearest the network's first run's (on a log scale), at most MAX_KINDS."""
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


def calibrate(throughput: Throughput, runs: list[RunConfig], workers: int, threads: int, seconds: float,
              data_dir: str | None = None) -> list[str]:
    """Time about `seconds` of training steps of each kind of `runs` (`kinds`) in `workers` processes side by side,
    set throughput.scale to each kind's step time here over its records' (MACHINE: their median, for the kinds
    not timed; where no kind to do has records, `stand_ins` are timed for MACHINE alone) and return a line per
    kind saying so (none where no kind has a recorded step time). A step's time here is the median of each worker's steps (a burst of other work on the machine moves it little), averaged
    over the workers. The loss checks of the runs' readings stay in (at the start of a run they are gated or
    cheap: configs/README.md) and are left out of the time."""
    if not 0 < seconds < math.inf:
        raise ConfigError(f"--calibrate takes the seconds to time each kind of run, more than 0, got {seconds:g}")
    chosen, standing = kinds(runs, throughput), False
    if not chosen:  # no kind to do has a record: time recorded kinds for the machine's factor alone
        chosen, standing = stand_ins(runs, throughput), True
    if not chosen:
        return []
    work = [(cfg.replace(device="cpu", trace=False, max_steps=WARMUP + timed_steps(seconds, throughput.step_s(cfg))))
            for cfg in chosen]
    measured = side_by_side(_time_steps, [(work, os.getpid())] * workers, threads, data_dir)
    lines = []
    for i, cfg in enumerate(chosen):
        here, recorded = statistics.mean(m[i] for m in measured), throughput.step_s(cfg)
        throughput.scale[Throughput.kind(cfg)[:3]] = here / recorded
        lines.append(f"calibration: {cfg.network} B={cfg.batch_size} alpha={cfg.alpha:g}: {here:.3g} s a training "
                     f"step here ({workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}, "
                     f"{work[i].max_steps - WARMUP} steps) against {recorded:.3g} s in the records: plan x"
                     f"{here / recorded:.2f}" + (" for the runs to do, whose kinds have no records" if standing else ""))
    throughput.scale[MACHINE] = statistics.median(throughput.scale[Throughput.kind(c)[:3]] for c in chosen)
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
