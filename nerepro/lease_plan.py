"""What a GPU lease's sweep does with its time: which rows it finishes, with how many workers and what packs.

`python -m nerepro.session` (the lease session) asks before its sweep: `plan_lease` takes the rows' runs not yet
recorded (ROWS: Table 2's and Table 3's F1 rows under the default reading, then Table 2's rows under the Eq. (1)
reading), or the rest by the configs' priorities once the rows are done (or none of theirs fits the time), and passes the runs it expects to finish (in that order,
each with its pack's bound), the workers and the pack size to `nerepro sweep --runs FILE --workers-per-device K
--max-pack P`, with a --time-limit that ends when the last of them is planned to end.
The decision reads the cost model (`cost.estimated_steps`, `cost.flop_per_sample`), the steps of the rows'
finished runs in the results directory (`cost.observed_in`), and what the last lease
measured on an H100 (`H100` below; results/performance.md, results/gpu/h100-2026-11-28/):

- A step takes max(host, device) time: the host launches the same kernels whatever B (F1: 2.9-4.5 ms a step),
  the device needs the step's FLOP at its sustained rate, or at least the time its small kernels occupy it.
- Workers time-share one GPU. A pack that needs more than half of the device's time alone (compute-bound: an
  F1 pack of 10 at B = 2000 with NE is 0.42 TFLOP a step, about 8.5 ms of arithmetic against 7.2 ms of
  launches) gains nothing from a second worker beside it, and with several of them every pack finishes late,
  none inside the lease. So the workers are floor(1 / share) of the most demanding pack: 1 as soon as one
  pack needs over half of the device, several for launch-bound ones (single runs, small B), never more than
  the packs nor where the last lease measured no further gain.
- The pack size is the one (of max_pack .. 1) with which the most of the rows' runs finish within the time,
  row by row in their order (then the most runs, then the earlier end, then the larger pack), simulated pack
  by pack in the sweep's order, each taking its bound: its runs' most allowed steps (`cost.allowed_steps`: the
  row's finished runs' mean, or the cost model's, times a margin), and an Eq. (1) step its checks' passes.
  The sweep gets each pack's bound with its runs (`--runs`) and starts a pack only where it fits the time left
  (`sweep.Schedule`; once runs of its kind are measured, at their speed), so the plan's packs are the sweep's.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .config import RunConfig
from .cost import OBSERVED_MARGIN, OBSERVED_MIN, STEPS_MARGIN, allowed_steps, flop_per_sample, n_train
from .sweep import form_packs, pause_margin, sweep_order


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
    run_s: float       # each pack's own start and end: its model and optimizer built, its final evaluation


# One H100 80GB of the 2026-11-28 lease (results/performance.md): fp32 matmul 51.6 TFLOP/s measured for one large
# matmul; a pack's batched 500-wide layers are planned at 40 (never measured: PESSIMISTIC_TFLOPS says what finishes
# if they reach only 30; the session's bench-f1-b2000-pack10 measures it); an F1 step
# 2.9 ms (B = 100) to 4.5 ms (B = 5000, NE) whatever B (scripts/profile_step.py); 6 workers of NE B = 2000 runs
# saturated the GPU at about 480 steps/s together, 2.1 ms of it per run-step, and 8 workers added nothing; a
# pack of 10 launches 276 operations a step against 176 for one run; Python and torch started in about 10 s.
H100 = DeviceModel("H100 (measured 2026-11-28; packs planned at 40 TFLOP/s)", tflops=40.0, launch_s=4.5e-3,
                   busy_s=2.1e-3, pack_ops=1.6,
                   max_workers=6, start_s=8.0, spawn_s=10.0, run_s=2.0)
PESSIMISTIC_TFLOPS = 30.0
# The 2-core AMD EPYC test machine (2026-11-27): F1 at B = 1000 with NE 0.107 TFLOP/s on 2 threads; F1 at
# B = 100, 21 ms a step of which 11 ms besides the arithmetic. The same cores launch and compute, so a run
# alone needs the whole device.
CPU = DeviceModel("2-core CPU (measured 2026-11-27)", tflops=0.1, launch_s=10e-3, busy_s=10e-3, pack_ops=1.6,
                  max_workers=1, start_s=5.0, spawn_s=8.0, run_s=5.0)


# The rows a lease finishes first, in this order: (label, network, alpha, B, reading). The paper's F1 rows of
# Tables 2 and 3 under the default reading, then Table 2's under the Eq. (1) reading (the paper's definition of
# the training loss; no per-step reading came within 2σ of the paper's NE time: configs/README.md, 'Which reading
# goes to 10 seeds after the default').
ROWS = (
    ("Table 2: F1, alpha = 1 at B = 900, default reading", "F1", 1.0, 900, "keras"),
    ("Table 2: F1, alpha = 1.5 at B = 2000, default reading", "F1", 1.5, 2000, "keras"),
    ("Table 3: F1, alpha = 3 at B = 5000, default reading", "F1", 3.0, 5000, "keras"),
    ("Table 2: F1, alpha = 1 at B = 900, Eq. (1) reading", "F1", 1.0, 900, "eq1"),
    ("Table 2: F1, alpha = 1.5 at B = 2000, Eq. (1) reading", "F1", 1.5, 2000, "eq1"),
)


@lru_cache(maxsize=None)
def row_of(cfg: RunConfig) -> int | None:
    """The index in ROWS of the row a run belongs to, or None."""
    from .plan import reading_name

    for i, (_, network, alpha, batch_size, reading) in enumerate(ROWS):
        if (cfg.network, cfg.alpha, cfg.batch_size) == (network, alpha, batch_size) and reading_name(cfg) == reading:
            return i
    return None


def lease_order(runs: list[RunConfig], priority: dict | None = None) -> list[RunConfig]:
    """The order a lease's sweep takes its runs in: the rows' runs (ROWS order, seeds ascending), then the
    rest in the sweep's own order (the configs' priorities, the longest first)."""
    rows = sorted(((i, c) for c in runs if (i := row_of(c)) is not None), key=lambda x: (x[0], x[1].seed))
    in_rows = {c.run_id for _, c in rows}
    return [c for _, c in rows] + sweep_order([c for c in runs if c.run_id not in in_rows], priority or {})


@dataclass(frozen=True)
class RowOutcome:
    label: str
    todo: int            # runs of the row not yet recorded
    done: int            # of them, those the plan expects to finish
    end: float | None    # when the last of them finishes (s into the sweep's training window)


@dataclass(frozen=True)
class Plan:
    workers: int       # --workers-per-device
    max_pack: int      # --max-pack (1: no packs)
    reason: str        # one line for the session's summary
    expected: int = 0  # runs planned for that are expected to finish in the time
    runs: int = 0      # runs planned for
    rows: tuple = ()   # RowOutcome of each row of ROWS with runs to do
    seconds: float = 0.0   # the sweep's --time-limit: until the last run expected to finish has finished
    order: tuple = ()  # the runs in the order the sweep takes them (lease_order)
    finishing: frozenset = frozenset()  # the ids of those expected to finish
    bounds: dict = field(default_factory=dict)  # run id -> the seconds its pack may take (`sweep --runs`)


@dataclass
class Outcome:
    done: int = 0                                   # runs that finish inside the window
    end: float = 0.0                                # when the last of them finishes (s into the window)
    not_started: list = field(default_factory=list)  # packs the sweep would not start
    ends: dict = field(default_factory=dict)        # run_id -> when it finishes, for the runs that finish
    bounds: dict = field(default_factory=dict)      # run_id -> the seconds its pack is planned to take


def step_time(unit: list[RunConfig], device: DeviceModel) -> tuple[float, float, float]:
    """(step, host, arithmetic) seconds of one step of runs trained together (one run: a pack of one); a run that
    checks L(w) adds its checks' forward passes (a third of a training sample's FLOP each; the whole training set
    at every check, a bound: a check that can no longer pass stops early)."""
    packed = device.pack_ops if len(unit) > 1 else 1.0
    flop = sum((c.samples_per_step(n_train(c)) + checked_per_step(c) / 3) * flop_per_sample(c.network) for c in unit)
    host, arithmetic = device.launch_s * packed, flop / (device.tflops * 1e12)
    return max(host, arithmetic, device.busy_s * packed), host, arithmetic


def checked_per_step(cfg: RunConfig) -> float:
    """Samples a run's checks of L(w) forward per training step, at most (0 for the other readings)."""
    return n_train(cfg) / cfg.check_interval(n_train(cfg)) if cfg.effective_stop_loss == "full" else 0.0


def device_share(unit: list[RunConfig], device: DeviceModel) -> float:
    """The share of the device's time a pack keeps busy when it runs alone."""
    step, _, arithmetic = step_time(unit, device)
    return max(arithmetic, device.busy_s * (device.pack_ops if len(unit) > 1 else 1.0)) / step


def training_window(seconds: float, workers: int, device: DeviceModel) -> float:
    """Seconds of a sweep's --time-limit its runs can train: less its start and the pause before the limit."""
    return seconds - pause_margin(seconds) - device.start_s - (device.spawn_s if workers > 1 else 0.0)


def limit_for(window: float, workers: int, device: DeviceModel) -> float:
    """The --time-limit whose training window is `window` (training_window's inverse)."""
    limit = window + device.start_s + (device.spawn_s if workers > 1 else 0.0)
    for _ in range(20):  # the pause is 5% of the limit, between 3 and 30 s: a fixed point in a few rounds
        limit = window + device.start_s + (device.spawn_s if workers > 1 else 0.0) + pause_margin(limit)
    return limit


def simulate(units: list[list[RunConfig]], workers: int, window: float, device: DeviceModel,
             margin: float = STEPS_MARGIN, observed: dict | None = None) -> Outcome:
    """Packs taken in order by the first free of `workers` workers that do not slow each other (the plan keeps
    their shares within the device), each taking its bound (`cost.allowed_steps` of its runs) and started only where
    the sweep would start it: where that bound, which the session gives the sweep (`--runs`), fits the time
    left."""
    free, out = [0.0] * workers, Outcome()
    for unit in units:
        start = min(free)
        steps = [allowed_steps(c, observed, margin) for c in unit]
        seconds = device.run_s + max(steps) * step_time(unit, device)[0]
        out.bounds.update((c.run_id, seconds) for c in unit)
        if start + seconds > window:
            out.not_started.append(unit)
            continue
        free[free.index(start)] = start + seconds
        out.done, out.end = out.done + len(unit), max(out.end, start + seconds)
        out.ends.update((c.run_id, start + seconds) for c in unit)
    return out


def row_outcomes(order: list[RunConfig], outcome: Outcome) -> tuple[RowOutcome, ...]:
    rows = []
    for i, (label, *_) in enumerate(ROWS):
        ids = [c.run_id for c in order if row_of(c) == i]
        if ids:
            ends = [outcome.ends[r] for r in ids if r in outcome.ends]
            rows.append(RowOutcome(label, len(ids), len(ends), max(ends) if ends else None))
    return tuple(rows)


def plan_lease(runs: list[RunConfig], seconds: float, max_pack: int = 10, priority: dict | None = None,
               device: DeviceModel = H100, margin: float = STEPS_MARGIN, observed: dict | None = None) -> Plan:
    """Workers, pack size and time limit for a lease's sweep of `runs`, at most `seconds` (module doc): the rows
    first; the sweep's time is what they need, all of `seconds` if they need it."""
    if not runs:
        return Plan(1, max_pack, "nothing to plan for: every run is recorded")
    priority = priority or {}
    # the rows while any of their runs are to do and fit (what they leave goes to the benchmarks); else the rest
    order = lease_order(runs, priority)
    rows = [c for c in order if row_of(c) is not None]
    if rows and len(rows) < len(order):
        plan = plan_lease(rows, seconds, max_pack, priority, device, margin, observed)
        if plan.expected:
            return plan
        rest = plan_lease(order[len(rows):], seconds, max_pack, priority, device, margin, observed)
        return replace(rest, rows=plan.rows, order=tuple(order))
    in_rows = {c.run_id for c in order if row_of(c) is not None}
    best = None
    for size in range(max_pack, 0, -1):
        units = form_packs(order, size, priority)
        share = max(device_share(u, device) for u in units)
        workers = max(1, min(device.max_workers, len(units), math.floor(1 / share + 1e-9)))
        window = training_window(seconds, workers, device)
        outcome = simulate(units, workers, window, device, margin, observed)
        rows_done = sum(r in outcome.ends for r in in_rows)
        rows_end = max((outcome.ends[r] for r in in_rows if r in outcome.ends), default=0.0)
        # the rows in their order (the most of the first row's runs, then of the second's, ...), then all runs
        key = (tuple(r.done for r in row_outcomes(order, outcome)), outcome.done, -rows_end, size)
        if best is None or key > best[0]:
            best = (key, size, workers, share, units, outcome, rows_done, rows_end)
    _, size, workers, share, units, outcome, rows_done, rows_end = best
    rows = row_outcomes(order, outcome)
    # the sweep gets only the runs expected to finish: its limit is the last one's end (the rest to benchmarks)
    limit = min(seconds, limit_for(outcome.end, workers, device)) if outcome.done else 0.0
    return Plan(workers, size, _reason(runs, seconds, workers, size, share, units, outcome, device, margin, observed),
                outcome.done, len(runs), rows, limit, tuple(order), frozenset(outcome.ends),
                outcome.bounds)

def _describe(units: list[list[RunConfig]]) -> str:
    kinds = Counter((u[0].network, u[0].batch_size, tuple(sorted({c.alpha for c in u})), len(u)) for u in units)
    return ", ".join(f"{net} B={b} alpha={'/'.join(f'{a:g}' for a in alphas)} x{n}" + (f" ({k} packs)" if k > 1 else "")
                     for (net, b, alphas, n), k in kinds.items())


def _reason(runs, seconds, workers, size, share, units, outcome, device, margin, observed) -> str:
    """One line for the session's summary: the packs' step times, the rule that set the workers, the outcome."""
    window, pause = training_window(seconds, workers, device), pause_margin(seconds)
    kinds, rows = {}, [u for u in units if row_of(u[0]) is not None]
    for u in rows or units[:3]:  # the rows' packs (the rest are planned the same way)
        step, host, arithmetic = step_time(u, device)
        bound = "compute-bound" if arithmetic >= host else "launch-bound"
        kinds.setdefault((u[0].network, u[0].batch_size, u[0].alpha != 1, len(u)), (
            f"{_describe([u])}: {1e3 * step:.1f} ms a step ({1e3 * arithmetic:.1f} ms of arithmetic, {1e3 * host:.1f} "
            f"ms of launches: {bound}, {100 * device_share(u, device):.0f}% of the device), "
            f"{max(allowed_steps(c, observed, margin) for c in u) * step:.0f} s alone"))
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
            f"(start {seconds - pause - window:.0f} s, pause {pause:.0f} s), steps {margin:g}x the cost model's, or "
            f"the mean of a row's finished runs times {OBSERVED_MARGIN:g} from {OBSERVED_MIN} of them, else "
            f"{margin:g}; "
            f"{sizes}: {'; '.join(kinds.values())}. {rule}. {sizes[0].upper()}{sizes[1:]} finish the most of them: "
            f"{outcome.done} of {len(runs)}" + (f", the last at {outcome.end:.0f} s" if outcome.done else ""))
    not_started = [u for u in outcome.not_started if row_of(u[0]) is not None]
    if not_started:
        text += f"; of the rows not started (their bound does not fit the time left): {_describe(not_started)}"
    if rest := len(runs) - sum(len(u) for u in rows):
        text += f"; after the rows, {rest} other runs by the configs' priorities, {outcome.done - sum(len(u) for u in rows if u[0].run_id in outcome.ends)} of them finishing"
    return text + "."


def planned_runs(configs: list[Path], seeds: int | None, networks: list[str] | None, results: Path | None,
                 max_priority: int | None = None) -> tuple[list[RunConfig], dict]:
    """The runs of the configs not yet recorded in `results` (of priority <= max_priority where given), and
    every run's priority."""
    from .grid import load_plan
    from .results import ResultsDir

    plan = load_plan(configs, seeds)
    priority = {c.run_id: p for p, c in plan}
    store = ResultsDir(results) if results else None
    done = store.done() if store and store.runs.is_dir() else set()
    return [c for p, c in plan if c.run_id not in done and (not networks or c.network in networks)
            and (max_priority is None or p <= max_priority)], priority
