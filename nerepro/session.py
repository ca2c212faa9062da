"""How a fixed lease's sweep uses its device: how many workers share it and how many runs train in one pack.

`scripts/gpu_session.sh` asks before its sweep, in one interpreter start:

    python -m nerepro.session plan configs/f1.toml --seeds 10 --network F1 --device cuda --seconds 250 --results R

and passes the answer to `nerepro sweep --workers-per-device K --max-pack P`. The decision (`plan_sweep`) reads
the cost model (`cost.estimated_steps`, `cost.flop_per_sample`) and what the last lease measured on
an H100 (`H100` below; results/performance.md, results/gpu/h100-2026-11-28/):

- A step takes max(host, device) time: the host launches the same kernels whatever B (F1: 2.9-4.5 ms a step),
  the device needs the step's FLOP at its sustained rate, or at least the time its small kernels occupy it.
- Workers time-share one GPU. A pack that needs more than half of the device's time alone (compute-bound: an
  F1 pack of 10 at B = 2000 with NE is 0.42 TFLOP a step, about 8.5 ms of arithmetic against 7.2 ms of
  launches) gains nothing from a second worker beside it, and with several of them every pack finishes late,
  none inside the lease. So the workers are floor(1 / share) of the most demanding pack: 1 as soon as one
  pack needs over half of the device, several for launch-bound ones (single runs, small B), never more than
  the packs nor where the last lease measured no further gain.
- The pack size is the one (of max_pack .. 1) with which the most of these runs finish within the time (ties:
  the earlier end, then the larger pack), simulated pack by pack in the sweep's order and by the sweep's own
  rule for starting a pack (`sweep.Schedule`: before any speed is known, while a quarter of the time is
  left; then only if `cost.Throughput`'s estimate fits), with steps STEPS_MARGIN times the cost model's.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import RunConfig
from .cost import Throughput, estimated_steps, flop_per_sample, n_train
from .sweep import form_packs, pause_margin, sweep_order

# Runs take up to this many times the cost model's steps: the NE row of Table 2 under the Keras reading took
# 10,485 steps on the CPU (seed 1) against the estimate 7,335 (1.43x); alpha = 1 at B = 900 took 10,251-10,988
# against 10,934.
STEPS_MARGIN = 1.4


@dataclass(frozen=True)
class DeviceModel:
    """What one device does with F1 steps, from measurements (units: seconds, TFLOP/s)."""
    name: str
    tflops: float      # sustained training TFLOP/s of a step whose arithmetic fills the device
    launch_s: float    # host time of one run's step (kernel launches, Python), whatever B
    busy_s: float      # device time of one run's launch-bound step (its small kernels); workers share it
    pack_ops: float    # a pack's step over one run's, in operations launched (scripts/count_ops.py)
    max_workers: int   # workers beyond this added no throughput
    start_s: float     # from the sweep's start (torch imported) to its first step: device context, data on it
    spawn_s: float     # more for several workers: each is a new interpreter that imports torch


# One H100 80GB of the 2026-11-28 lease (results/performance.md): fp32 matmul 51.6 TFLOP/s measured (F1's pack
# matmuls are as large; a pack step's rate is what the session's bench-f1-b2000-pack10 measures); an F1 step
# 2.9 ms (B = 100) to 4.5 ms (B = 5000, NE) whatever B (scripts/profile_step.py); 6 workers of NE B = 2000 runs
# saturated the GPU at about 480 steps/s together, 2.1 ms of it per run-step, and 8 workers added nothing; a
# pack of 10 launches 276 operations a step against 176 for one run; Python and torch started in about 10 s.
H100 = DeviceModel("H100 (measured 2026-11-28)", tflops=50.0, launch_s=4.5e-3, busy_s=2.1e-3, pack_ops=1.6,
                   max_workers=6, start_s=8.0, spawn_s=10.0)
# The 2-core AMD EPYC test machine (2026-11-27): F1 at B = 1000 with NE 0.107 TFLOP/s on 2 threads; F1 at
# B = 100, 21 ms a step of which 11 ms besides the arithmetic. The same cores launch and compute, so a run
# alone needs the whole device.
CPU = DeviceModel("2-core CPU (measured 2026-11-27)", tflops=0.1, launch_s=10e-3, busy_s=10e-3, pack_ops=1.6,
                  max_workers=1, start_s=5.0, spawn_s=8.0)


@dataclass(frozen=True)
class Plan:
    workers: int       # --workers-per-device
    max_pack: int      # --max-pack (1: no packs)
    reason: str        # one line for the session's summary
    expected: int = 0  # runs planned for that are expected to finish in the time
    runs: int = 0      # runs planned for


@dataclass
class Outcome:
    done: int = 0                                   # runs that finish inside the window
    end: float = 0.0                                # when the last of them finishes (s into the window)
    late: list = field(default_factory=list)        # packs started that would not finish (paused at the limit)
    not_started: list = field(default_factory=list)  # packs the sweep would not start


def step_time(unit: list[RunConfig], device: DeviceModel) -> tuple[float, float, float]:
    """(step, host, arithmetic) seconds of one step of runs trained together (one run: a pack of one)."""
    packed = device.pack_ops if len(unit) > 1 else 1.0
    flop = sum(c.samples_per_step(n_train(c)) * flop_per_sample(c.network) for c in unit)
    host, arithmetic = device.launch_s * packed, flop / (device.tflops * 1e12)
    return max(host, arithmetic, device.busy_s * packed), host, arithmetic


def device_share(unit: list[RunConfig], device: DeviceModel) -> float:
    """The share of the device's time a pack keeps busy when it runs alone."""
    step, _, arithmetic = step_time(unit, device)
    return max(arithmetic, device.busy_s * (device.pack_ops if len(unit) > 1 else 1.0)) / step


def training_window(seconds: float, workers: int, device: DeviceModel) -> float:
    """Seconds of a sweep's --time-limit its runs can train: less its start and the pause before the limit."""
    return seconds - pause_margin(seconds) - device.start_s - (device.spawn_s if workers > 1 else 0.0)


def simulate(units: list[list[RunConfig]], workers: int, window: float, device: DeviceModel,
             margin: float = STEPS_MARGIN) -> Outcome:
    """Packs taken in order by the first free of `workers` workers that do not slow each other (the plan keeps
    their shares within the device), each started only where the sweep would start it (`sweep.Schedule`)."""
    free, finished, out = [0.0] * workers, [], Outcome()
    for unit in units:
        start = min(free)
        throughput = Throughput()
        for end, records in finished:
            if end <= start:
                for r in records:
                    throughput.add(r)
        guesses = [throughput.seconds(c) for c in unit]
        fits = start <= 0.75 * window if None in guesses else start + max(guesses) <= window
        if not fits:
            out.not_started.append(unit)
            continue
        steps = [math.ceil(estimated_steps(c) * margin) for c in unit]
        seconds = max(steps) * step_time(unit, device)[0]
        free[free.index(start)] = min(start + seconds, window)
        if start + seconds > window:
            out.late.append(unit)
            continue
        out.done, out.end = out.done + len(unit), max(out.end, start + seconds)
        finished.append((start + seconds, [
            {"status": "converged", "wall_s": seconds, "network": c.network, "batch_size": c.batch_size,
             "alpha": c.alpha, "steps": s, "samples_processed": s * c.samples_per_step(n_train(c))}
            for c, s in zip(unit, steps)]))
    return out


def plan_sweep(runs: list[RunConfig], seconds: float, max_pack: int = 10, priority: dict | None = None,
               device: DeviceModel = H100, margin: float = STEPS_MARGIN) -> Plan:
    """Workers and pack size for a sweep of `runs` under `--time-limit seconds` on one device (module doc)."""
    if not runs:
        return Plan(1, max_pack, "nothing to plan for: every run is recorded")
    priority = priority or {}
    order = sweep_order(runs, priority)
    best = None
    for size in range(max_pack, 0, -1):
        units = form_packs(order, size, priority)
        share = max(device_share(u, device) for u in units)
        workers = max(1, min(device.max_workers, len(units), math.floor(1 / share + 1e-9)))
        window = training_window(seconds, workers, device)
        outcome = simulate(units, workers, window, device, margin)
        key = (outcome.done, -outcome.end, size)
        if best is None or key > best[0]:
            best = (key, size, workers, share, units, outcome)
    _, size, workers, share, units, outcome = best
    return Plan(workers, size, _reason(runs, seconds, workers, size, share, units, outcome, device, margin),
                outcome.done, len(runs))


def _describe(units: list[list[RunConfig]]) -> str:
    kinds = Counter((u[0].network, u[0].batch_size, tuple(sorted({c.alpha for c in u})), len(u)) for u in units)
    return ", ".join(f"{net} B={b} alpha={'/'.join(f'{a:g}' for a in alphas)} x{n}" + (f" ({k} packs)" if k > 1 else "")
                     for (net, b, alphas, n), k in kinds.items())


def _reason(runs, seconds, workers, size, share, units, outcome, device, margin) -> str:
    """One line for the session's summary: the packs' step times, the rule that set the workers, the outcome."""
    window, pause = training_window(seconds, workers, device), pause_margin(seconds)
    kinds = {}
    for u in units:
        step, host, arithmetic = step_time(u, device)
        bound = "compute-bound" if arithmetic >= host else "launch-bound"
        kinds.setdefault((u[0].network, u[0].batch_size, u[0].alpha != 1, len(u)), (
            f"{_describe([u])}: {1e3 * step:.1f} ms a step ({1e3 * arithmetic:.1f} ms of arithmetic, {1e3 * host:.1f} "
            f"ms of launches: {bound}, {100 * device_share(u, device):.0f}% of the device), "
            f"{math.ceil(estimated_steps(u[0]) * margin) * step:.0f} s alone"))
    if device.max_workers == 1:
        rule = "One worker: on this device a run needs all of it"
    elif share > 0.5:
        rule = (f"One worker: a pack needs {100 * share:.0f}% of the device, and such packs never share it "
                "(time-sharing adds no arithmetic and makes every pack finish late)")
    elif workers == len(units) and workers < math.floor(1 / share + 1e-9):
        rule = f"{workers} worker{'s' if workers > 1 else ''}: one per pack"
    else:
        rule = (f"{workers} workers: the most demanding pack keeps the device busy {100 * share:.0f}% of a step, so "
                f"{workers} run side by side without slowing each other")
    sizes = f"packs of up to {size}" if size > 1 else "runs alone"
    text = (f"{len(runs)} runs planned for on {device.name}: {window:.0f} s to train of the sweep's {seconds:.0f} s "
            f"(start {seconds - pause - window:.0f} s, pause {pause:.0f} s), steps {margin:g}x the cost model's; "
            f"{sizes}: {'; '.join(kinds.values())}. {rule}. {sizes[0].upper()}{sizes[1:]} finish the most of them: "
            f"{outcome.done} of {len(runs)}" + (f", the last at {outcome.end:.0f} s" if outcome.done else ""))
    if outcome.late:
        text += f"; started but not finishing: {_describe(outcome.late)}"
    if outcome.not_started:
        text += f"; not started (the sweep's estimate does not fit the time left): {_describe(outcome.not_started)}"
    return text + "."


def planned_runs(configs: list[Path], seeds: int | None, networks: list[str] | None, results: Path | None,
                 max_priority: int) -> tuple[list[RunConfig], dict]:
    """The runs not yet recorded in `results` of priority <= max_priority (none left: those of the lowest priority
    still to do), and every run's priority."""
    from .grid import load_plan
    from .results import ResultsDir

    plan = load_plan(configs, seeds)
    priority = {c.run_id: p for p, c in plan}
    store = ResultsDir(results) if results else None
    done = store.done() if store and store.runs.is_dir() else set()
    pending = [(p, c) for p, c in plan if c.run_id not in done and (not networks or c.network in networks)]
    if not pending:
        return [], priority
    cut = max_priority if any(p <= max_priority for p, _ in pending) else min(p for p, _ in pending)
    return [c for p, c in pending if p <= cut], priority


def main(argv: list[str] | None = None) -> int:
    from .errors import ConfigError

    parser = argparse.ArgumentParser(prog="python -m nerepro.session", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="Print, tab-separated, 'on|off WORKERS MAX_PACK REASON': the plan with packs "
                                    "and without (max pack 1).")
    p.add_argument("configs", nargs="+", type=Path, help="Config files of the sweep.")
    p.add_argument("--seconds", type=float, required=True, help="The sweep's --time-limit in seconds.")
    p.add_argument("--seeds", type=int, default=None, help="The sweep's --seeds.")
    p.add_argument("--network", action="append", default=None, help="The sweep's --network (repeatable).")
    p.add_argument("--results", type=Path, default=None, help="Results directory: recorded runs are not planned.")
    p.add_argument("--device", default="cuda", help="cuda (the H100 model) or cpu.")
    p.add_argument("--max-priority", type=int, default=2, help="Plan for the runs of priority <= this (headline).")
    p.add_argument("--max-pack", type=int, default=10, help="The largest pack.")
    p.add_argument("--tflops", type=float, default=None, help="Override the device's sustained TFLOP/s.")
    p.add_argument("--launch-ms", type=float, default=None, help="Override the host time of one run's step (ms).")
    args = parser.parse_args(argv)
    device = CPU if args.device == "cpu" else H100
    if args.tflops:
        device = replace(device, tflops=args.tflops)
    if args.launch_ms:
        device = replace(device, launch_s=args.launch_ms / 1e3)
    try:
        runs, priority = planned_runs(args.configs, args.seeds, args.network, args.results, args.max_priority)
        for packs, max_pack in (("on", args.max_pack), ("off", 1)):
            plan = plan_sweep(runs, args.seconds, max_pack, priority, device)
            print(f"{packs}\t{plan.workers}\t{plan.max_pack}\t{plan.reason}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
