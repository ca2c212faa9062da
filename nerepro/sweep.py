"""Sweeps: map `train` over a grid, skip what is recorded, survive kills, record failures as data."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from . import data as datasets
from .checkpoint import checkpoint_step
from .config import RunConfig
from .cost import Throughput, estimated_device_bytes, estimated_pack_bytes, estimated_samples, observed_in
from .errors import ConfigError, ResultsError
from .faults import (CUDA_EXIT, CUDA_RETRIES, BrokenContext, cuda_failures, log_events, log_size,
                     sticky_cuda_error)
from .record import provenance, read_record
from .results import ResultsDir
from .pack import pack_key, packable
from .train import OutOfTime, resolve_device, train_pack

Event = Callable[[str, dict], None]  # ("start" | "check" | "done" | "note", payload) for progress displays
MEMORY_USABLE = 0.95  # share of a GPU's memory the runs on it may be estimated to take together


class DataCache:
    """Each dataset read once per process and kept on its device for every run that needs it."""

    def __init__(self, data_dir: str | None = None):
        self.data_dir, self.loaded = data_dir, {}

    def get(self, cfg: RunConfig, device: torch.device) -> datasets.Data:
        key = (datasets.NETWORK_DATASET[cfg.network], str(device))
        if key not in self.loaded:
            if device.type == "cuda":  # one dataset per GPU at a time: the memory estimates count one
                self.loaded = {k: v for k, v in self.loaded.items() if k[1] != key[1]}
            self.loaded[key] = datasets.load(key[0], self.data_dir, device)
        return self.loaded[key]


def error_record(cfg: RunConfig, exc: BaseException, device: str = "cpu") -> dict:
    """A run that raised: recorded as `error` with its message, retried by the next sweep."""
    try:
        where = torch.device(device)
        where = where if where.type == "cpu" or torch.cuda.is_available() else torch.device("cpu")
    except RuntimeError:
        where = torch.device("cpu")
    return {
        "run_id": cfg.run_id, "network": cfg.network, "alpha": float(cfg.alpha), "batch_size": cfg.batch_size,
        "seed": cfg.seed, "subset": cfg.subset, "status": "error", "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
        "config": cfg.record_config(), "provenance": _provenance(where),
    }


def _provenance(device: torch.device) -> dict:
    try:
        return provenance(device)
    except RuntimeError:  # a broken CUDA context may refuse even a device query
        return {**provenance(torch.device("cpu")), "device": str(device), "device_type": device.type}


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes (None on the CPU)."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def check_fits(cfg: RunConfig, total: int | None) -> None:
    """Refuse, before training, a run whose estimated memory (cost.py) exceeds the device's."""
    if total is None:
        return
    need = estimated_device_bytes(cfg)
    if need > MEMORY_USABLE * total:
        raise ConfigError(f"{cfg.run_id} needs about {need / 2 ** 30:.1f} GiB of GPU memory and the GPU has "
                          f"{total / 2 ** 30:.1f} GiB: use --precision bf16, a smaller B or a larger GPU")


class MemoryGate:
    """Runs that share one GPU (several workers per device) each start once the memory the runs already on
    the GPU are estimated to need leaves room for its own estimate (cost.py)."""

    def __init__(self, ctx):
        self.cond = ctx.Condition()
        self.free = ctx.Value("q", -1, lock=False)  # MiB not promised to a run; -1 until a worker reads the GPU

    @contextlib.contextmanager
    def hold(self, need: int, total: int, deadline: float | None = None):
        """Hold `need` MiB of a GPU of `total` MiB while the block runs; yields False if the deadline came first."""
        need = min(need, total)  # a run check_fits accepted always fits an idle GPU
        with self.cond:
            if self.free.value < 0:
                self.free.value = total
            admitted = self.cond.wait_for(lambda: self.free.value >= need,
                                          timeout=None if deadline is None else max(0.0, deadline - time.time()))
            if admitted:
                self.free.value -= need
        try:
            yield admitted
        finally:
            if admitted:
                with self.cond:
                    self.free.value += need
                    self.cond.notify_all()


def run_pack(cfgs: list[RunConfig], results: ResultsDir, cache: DataCache, on_event: Event | None = None,
             checkpoint_every_s: float = 300.0, deadline: float | None = None, gate: MemoryGate | None = None,
             write: bool = True) -> list[dict]:
    """Train runs as one pack (a single run: a pack of one), each resuming its checkpoint if any, and return
    the records of those that ended; with `write`, each record is written the moment its run ends. An
    exception becomes an `error` record for every run it stopped, except in a pack: its unfinished runs
    then continue alone, each from its checkpoint (packs are the younger code path; a failure of theirs
    must not cost the runs). Runs paused at the deadline give no record (their checkpoints continue them).
    A CUDA error that breaks the process's context (sticky_cuda_error) raises BrokenContext instead: the
    runs it stopped are logged `cuda-error` and left to a fresh worker, except those it already stopped
    CUDA_RETRIES times, which get their `error` record."""
    ended: list[dict] = []
    alone: list[RunConfig] = []
    retry: list[str] | None = None  # set when a CUDA error broke this process's context

    def deliver(record: dict) -> None:
        if write:
            results.write(record)
        ended.append(record)

    try:
        device = resolve_device(cfgs[0].device)
        total = device_memory(device)
        for cfg in cfgs:
            check_fits(cfg, total)
        need = math.ceil(estimated_pack_bytes(cfgs) / 2 ** 20) if gate is not None else 0
    except Exception as e:  # noqa: BLE001 - any failure of a run is data; the sweep goes on
        for cfg in cfgs:
            deliver(error_record(cfg, e, cfg.device))
        return ended
    with gate.hold(need, int(MEMORY_USABLE * total / 2 ** 20), deadline) if gate is not None \
            else contextlib.nullcontext(True) as admitted:
        if not admitted:
            return ended
        try:
            progress = (lambda run_id, step, loss: on_event("check", {"run_id": run_id, "step": step, "loss": loss})) \
                if on_event else None
            train_pack(cfgs, data=cache.get(cfgs[0], device), progress=progress,
                       checkpoints=[results.checkpoint_path(c.run_id) for c in cfgs],
                       checkpoint_every_s=checkpoint_every_s, deadline=deadline, on_record=deliver)
        except OutOfTime as e:
            for run_id in e.run_ids:
                results.log(f"paused:{e.step}", run_id)
            if on_event:
                on_event("note", {"message": str(e)})
        except Exception as e:  # noqa: BLE001
            finished = {r["run_id"] for r in ended}
            rest = [cfg for cfg in cfgs if cfg.run_id not in finished]
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if sticky_cuda_error(e):  # nothing more can run in this process, alone or not
                retry = []
                for cfg in rest:
                    results.log(f"cuda-error:{type(e).__name__}", cfg.run_id)
                failing = cuda_failures(results)  # this failure included
                for cfg in rest:
                    if failing.get(cfg.run_id, 0) > CUDA_RETRIES:
                        deliver(error_record(cfg, e, cfg.device))
                    else:
                        retry.append(cfg.run_id)
                if on_event:
                    on_event("note", {"message": f"{reason}: this worker's CUDA context is broken and it exits; "
                                                 f"{len(retry)} runs retry in a fresh worker, "
                                                 f"{len(rest) - len(retry)} failed their retry (error records)"})
            elif len(cfgs) > 1:
                alone = rest if deadline is None else []  # under a deadline the sweep's Schedule decides (give_back)
                for cfg in rest:
                    results.log(f"pack-failed:{type(e).__name__}", cfg.run_id)
                if on_event:
                    then = "continue alone" if deadline is None else \
                        "go back to the sweep's queue, each to run alone if its time fits"
                    on_event("note", {"message": f"a pack of {len(cfgs)} failed ({reason}); its {len(rest)} "
                                                 f"unfinished runs {then} (--pack off avoids packs)"})
            else:
                for cfg in rest:
                    deliver(error_record(cfg, e, cfg.device))
        finally:  # the exception (and the runs' frames it holds) is gone here
            if device.type == "cuda" and retry is None:  # hand the runs' memory back before the gate counts it
                gc.collect()
                torch.cuda.empty_cache()
    if retry is not None:
        raise BrokenContext(ended, retry)
    for i, cfg in enumerate(alone):  # outside the pack's share of the gate: each holds its own
        try:
            ended += run_pack([cfg], results, cache, on_event, checkpoint_every_s, deadline, gate, write)
        except BrokenContext as e:
            raise BrokenContext(ended + e.records, e.retry + [c.run_id for c in alone[i + 1:]]) from None
    return ended


def claim_and_run(cfgs: list[RunConfig], results: ResultsDir, cache: DataCache, on_event: Event | None = None,
                  checkpoint_every_s: float = 300.0, write: bool = True, deadline: float | None = None,
                  gate: MemoryGate | None = None) -> list[dict]:
    """Run the runs of a pack that no other process holds and that are not recorded meanwhile; returns the
    records written (with `write`) or to write."""
    with contextlib.ExitStack() as held:
        done = results.done()
        mine = [c for c in cfgs if held.enter_context(results.claim(c.run_id)) and c.run_id not in done]
        if not mine:
            return []
        for cfg in mine:
            results.log("start", cfg.run_id)
            if on_event:
                on_event("start", {"run_id": cfg.run_id})
        return run_pack(mine, results, cache, on_event, checkpoint_every_s, deadline, gate, write)


def form_packs(runs: list[RunConfig], max_pack: int = 1, priority: dict | None = None) -> list[list[RunConfig]]:
    """The units a sweep hands out, in the order of their first run: runs of the same priority that can share
    a pack (pack.py: F1, differing only in seed and alpha) in packs of at most `max_pack`; others alone."""
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in runs:
        key = (priority.get(cfg.run_id, 0) if priority else 0,
               pack_key(cfg) if max_pack > 1 and packable(cfg) else cfg.run_id)
        groups.setdefault(key, []).append(cfg)
    return [members[i:i + max_pack] for members in groups.values() for i in range(0, len(members), max_pack)]


def sweep_order(runs: list[RunConfig], priority: dict) -> list[RunConfig]:
    """The order a sweep takes its runs in: the configs' priorities, then the longest runs first (cost.py)."""
    return sorted(runs, key=lambda c: (priority.get(c.run_id, 0), -estimated_samples(c), c.run_id))


def paused_first(runs: list[RunConfig], results: ResultsDir, priority: dict) -> list[RunConfig]:
    """`runs` in their order, but within each priority the runs paused in their checkpoints first: a sweep
    finishes what an earlier one began before it begins more."""
    return sorted(runs, key=lambda c: (priority.get(c.run_id, 0), not results.paused(c.run_id)))


PAUSED_LEFT_MIN = 0.25  # the least of its bound a paused run is given: it may be past its row's steps already


def paused_steps(results: ResultsDir) -> dict[str, int]:
    """run id -> the step its last pause at a time limit logged, for runs whose checkpoint or kept copy is still there (a run
    killed without a pause, or resumed and killed since, may be further along: its checkpoint knows)."""
    steps = {}
    for event, run_id in log_events(results):
        if event.startswith("paused:") and event[7:].isdigit():
            steps[run_id] = int(event[7:])
    steps = {r: k for r, k in steps.items() if results.paused(r)}
    for run_id, k in steps.items():  # only a kept copy, which may be older than the last pause: the earlier step
        if not results.checkpoint_path(run_id).exists() and (kept := checkpoint_step(results.kept_path(run_id),
                                                                                      run_id)):
            steps[run_id] = min(k, kept[0])
    return steps


def resumed_bound(bound: float, allowed_steps: int, done: int) -> float:
    """A paused run's bound for what it has left: its bound (for `allowed_steps`) less the `done` steps' share,
    at least PAUSED_LEFT_MIN of it, so that a run paused near its end is continued under a short limit."""
    return bound * max(PAUSED_LEFT_MIN, 1 - done / allowed_steps)


FILL_MIN_S, FILL_LEFT = 600.0, 0.25  # --fill starts packs until this much of a sweep's time is left (the less)


def fill_until(deadline: float, limit: float) -> float:
    """Until when a --fill sweep with this deadline (its --time-limit less the pause margin) starts every pack:
    while FILL_LEFT of its time limit, at most FILL_MIN_S, is left before the deadline."""
    return deadline - min(FILL_MIN_S, FILL_LEFT * limit)


def pause_margin(limit: float) -> float:
    """How long before its --time-limit a sweep stops training: time to checkpoint, shut its workers down and
    summarise inside the limit."""
    return min(30.0, max(3.0, 0.05 * limit))


def pending_runs(runs: list[RunConfig], results: ResultsDir) -> list[RunConfig]:
    done = results.done()
    return [c for c in runs if c.run_id not in done]


def slots(device: str, workers_per_device: int | None = None) -> list[str]:
    """Device of each worker, always with its index (cuda:N): every visible GPU (or the one named) x
    workers_per_device, else the CPU.

    Default: one worker per GPU; on the CPU one single-threaded worker per core, which for F1 at B = 100
    runs 1.47x the runs per second of one worker using both cores (README, 'Performance').
    """
    if device == "auto":
        names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    else:
        d = resolve_device(device)
        names = [f"cuda:{d.index or 0}" if d.type == "cuda" else "cpu"]
    if workers_per_device is None:
        workers_per_device = (os.cpu_count() or 1) if names == ["cpu"] else 1
    return [n for n in names for _ in range(workers_per_device)]


def worker_threads(workers: int) -> int:
    """Each worker's default share of the cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def summarize(records: list[dict]) -> Counter:
    return Counter(r["status"] for r in records)


class Schedule:
    """The packs (lists of runs; a single run is a pack of one) still to start, in the given order; with a
    deadline, only those that fit the time left at their bound (`cost.Throughput.bound`: the cost model's steps,
    or their row's, at the throughput measured so far in this sweep, times a margin on the steps; a pack's
    slowest run). A pack without a throughput figure yet is started while a quarter of the time is left (it
    may compile first; at the deadline it pauses in checkpoints), but never once a pack has not fitted: a pack
    that does not fit lets only later packs take its place that fit by their bound, none whose time is unknown
    and so might be paused at the deadline (an F1 checkpoint, 23 MB, may never come back from a lease).
    Until `fill_until` (--fill: a machine whose results directory stays, worked in stretches) every pack is
    started, fitting or not: the deadline pauses it in its checkpoints and the next sweep continues it, so the
    cores do not idle through the end of a stretch; after it, packs start only where they fit.
    `planned`: run id -> seconds its pack may take, from a plan (`nerepro sweep --runs`), the bound of a run
    until runs of its own kind have been measured in this sweep, times the slowdown the measured kinds showed
    against their plan (a plan's rate is a guess; the first packs tell): the plan is taken to allow its pack the
    most steps any of its runs is allowed (`Throughput.bound_steps`: from the rows' finished runs where the
    throughput has them: `cost.allowed_steps`, as the lease plan's and a CPU plan's bounds)."""

    def __init__(self, units: list[list[RunConfig]], deadline: float | None, throughput: Throughput,
                 planned: dict | None = None, fill_until: float | None = None):
        self.queue, self.deadline, self.throughput = list(units), deadline, throughput
        self.planned = planned or {}
        self.kinds = {Throughput.kind(c): (c, unit) for unit in units for c in unit if c.run_id in self.planned}
        self.unknown_until = None if deadline is None else deadline - 0.25 * max(0.0, deadline - time.time())
        self.fill_until = fill_until if deadline is not None else None
        self.refused = False  # a pack has not fitted: packs of unknown time are not started any more

    def fits(self, unit: list[RunConfig]) -> bool:
        if self.deadline is None:
            return True
        if self.fill_until is not None and time.time() <= self.fill_until:
            return True
        estimates, now = [self.bound(cfg) for cfg in unit], time.time()
        if any(seconds is None for seconds in estimates):
            return not self.refused and now <= self.unknown_until
        return now + max(estimates) <= self.deadline

    def bound(self, cfg: RunConfig) -> float | None:
        if cfg.run_id in self.planned and not self.throughput.measured(cfg):
            return self.planned[cfg.run_id] * self.slowdown()
        return self.throughput.bound(cfg)

    def slowdown(self) -> float:
        """How many times slower a step ran than planned, over the planned kinds measured so far (at least 1)."""
        ratios = [(self.throughput.seconds(c) / self.throughput.run_steps(c))
                  / (self.planned[c.run_id] / max(self.throughput.bound_steps(m) for m in unit))
                  for c, unit in self.kinds.values() if self.throughput.measured(c)]
        return max([1.0, *ratios])

    def give_back(self, unit: list[RunConfig], records: list[dict]) -> None:
        """The runs of a pack of several that did not end (the pack failed under the deadline; or they were paused
        at it, or another sweep held them) back at the front of the queue, each alone, for `fits` to decide:
        a failed pack's runs take no time they do not have. A run alone is never given back."""
        ended = {r["run_id"] for r in records}
        if len(unit) > 1:
            self.queue[0:0] = [[cfg] for cfg in unit if cfg.run_id not in ended]

    def next(self) -> list[RunConfig] | None:
        for i, unit in enumerate(self.queue):
            if self.fits(unit):
                return self.queue.pop(i)
            self.refused = True
        return None


def as_units(runs: list) -> list[list[RunConfig]]:
    """Runs or packs of runs, as packs."""
    return [u if isinstance(u, list) else [u] for u in runs]


# ---- the local executor: one process per slot --------------------------------------------------------

_WORKER: dict = {}  # per worker process: its device, data cache, event queue and memory gate


def _init_worker(slot_queue, event_queue, threads: int, data_dir: str | None, checkpoint_every_s: float,
                 parent: int, gates: dict):
    _die_with_parent(parent)
    device = slot_queue.get()
    setup_worker(device, threads)
    _WORKER.update(device=device, cache=DataCache(data_dir), events=event_queue, checkpoint_every_s=checkpoint_every_s,
                   gate=gates.get(device))


def setup_worker(device: str, threads: int) -> None:
    """A worker's device (cuda:N made current, so kernels and memory land there) and its share of the cores."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device).index or 0)
    torch.set_num_threads(threads)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the sweep's process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before the signal was armed
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _worker_run(unit: list[RunConfig], root: str, deadline: float | None) -> list[dict]:
    unit = [dataclasses.replace(cfg, device=_WORKER["device"]) for cfg in unit]
    events = _WORKER["events"]
    on_event = lambda kind, payload: events.put((kind, payload))  # noqa: E731
    try:
        return claim_and_run(unit, ResultsDir(root), _WORKER["cache"], on_event, _WORKER["checkpoint_every_s"],
                             deadline=deadline, gate=_WORKER["gate"])
    except BrokenContext:  # its records are written; every CUDA call here would fail from now on
        events.close()
        events.join_thread()  # the notes reach the sweep before the worker goes
        os._exit(CUDA_EXIT)  # the pool breaks; run_local starts fresh workers for the runs left


def run_local(runs: list, results: ResultsDir, device: str = "auto", workers_per_device: int | None = None,
              data_dir: str | None = None, checkpoint_every_s: float = 300.0, on_event: Event | None = None,
              max_restarts: int = 3, deadline: float | None = None, threads: int | None = None,
              planned: dict | None = None, observed: dict | None = None,
              fill_until: float | None = None) -> list[dict]:
    """Run `runs` (runs, or packs of runs: `form_packs`; in the order given) in one worker process per slot,
    or in this process if there is one slot; each worker keeps its datasets on its device. A pool whose
    worker died is restarted (at most `max_restarts` times, not counting workers that exit on a CUDA error
    that broke their context: each run causes at most CUDA_RETRIES + 1 of those). With one slot, a CUDA error
    that breaks this process's context hands the runs left to a worker process, one at a time, as with one
    slot of a pool: the failed runs are retried there, and no later run fails for an earlier one's error.
    With a `deadline`, packs that cannot finish by then are not started (all are until `fill_until`:
    Schedule) and running ones pause in their checkpoints. `threads`: each worker's threads (default: the
    cores shared out among the workers)."""
    import multiprocessing as mp
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    names = slots(device, workers_per_device)
    # results on the CPU depend on the thread count, so it follows the requested layout, not the runs left
    threads = threads or worker_threads(len(names))
    units = as_units(runs)
    names = names[:max(1, len(units))]
    throughput, finished = Throughput(observed=observed), []

    def done(records: list[dict]) -> None:
        for record in records:
            finished.append(record)
            throughput.add(record)
            if on_event:
                on_event("done", record)

    def note(message: str) -> None:
        if on_event:
            on_event("note", {"message": message})

    if len(names) == 1:  # one worker: this process is it, until a CUDA error breaks its context
        cache, previous = DataCache(data_dir), torch.get_num_threads()
        torch.set_num_threads(threads)
        schedule = Schedule(units, deadline, throughput, planned, fill_until)
        try:
            while (unit := schedule.next()) is not None:
                records = claim_and_run([dataclasses.replace(cfg, device=names[0]) for cfg in unit], results, cache,
                                        on_event, checkpoint_every_s, deadline=deadline)
                done(records)
                schedule.give_back(unit, records)
            return finished
        except BrokenContext as e:
            done(e.records)
            results.log("context-broken:fresh-worker")
            note("this process's CUDA context is broken: a worker process takes the runs left")
            del cache  # its memory cannot be handed back on a broken context; at least nothing holds it
            gc.collect()
        finally:
            torch.set_num_threads(previous)
    ctx = mp.get_context("spawn")
    shared = [n for n in set(names) if n.startswith("cuda") and names.count(n) > 1]
    restarts = 0
    while True:
        recorded = results.done() | {r["run_id"] for r in finished}
        left = [rest for unit in units if (rest := [c for c in unit if c.run_id not in recorded])]
        # a pack that broke a worker's CUDA context retries as runs alone: the batched path may be the fault
        failing = cuda_failures(results)
        left = [part for unit in left for part in (
            [[c] for c in unit] if len(unit) > 1 and any(c.run_id in failing for c in unit) else [unit])]
        schedule = Schedule(left, deadline, throughput, planned, fill_until)
        if not schedule.queue:
            break
        slot_queue, event_queue = ctx.Queue(), ctx.Queue()
        for name in names:
            slot_queue.put(name)
        gates = {n: MemoryGate(ctx) for n in shared}
        log_start = log_size(results)
        pool = ProcessPoolExecutor(len(names), mp_context=ctx, initializer=_init_worker,
                                   initargs=(slot_queue, event_queue, threads, data_dir, checkpoint_every_s,
                                             os.getpid(), gates))
        running: dict = {}  # future -> its pack, until its records are in
        try:
            while True:
                while len(running) < len(names) and (unit := schedule.next()) is not None:
                    running[pool.submit(_worker_run, unit, str(results.root), deadline)] = unit
                if not running:
                    break
                ready, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(event_queue, on_event, queue.Empty)
                for fut in ready:
                    try:
                        records = fut.result()
                        done(records)
                        schedule.give_back(running[fut], records)
                    except BrokenProcessPool:
                        raise
                    except Exception as e:  # noqa: BLE001 - e.g. a record that could not be written
                        results.log(f"failed:{type(e).__name__}")
                        note(f"a run failed outside training: {type(e).__name__}: {e}")
                    del running[fut]
            _drain(event_queue, on_event, queue.Empty)
            break
        except BrokenProcessPool:
            events = log_events(results, log_start)
            # the records the dead workers wrote (runs that ended in a pack before a CUDA error, runs that
            # failed their retry) are this sweep's: the latter must not be retried again in it
            lost = {c.run_id for unit in running.values() for c in unit} - {r["run_id"] for r in finished}
            for run_id in sorted({rid for event, rid in events if event.startswith("recorded:")} & lost):
                with contextlib.suppress(ResultsError):
                    done([read_record(results.record_path(run_id))])
            if any(event.startswith("cuda-error") and rid in lost for event, rid in events):
                _drain(event_queue, on_event, queue.Empty)  # the exiting worker's note (it flushed the queue)
                results.log("worker-exited:cuda-error")
                note("a worker exited on a CUDA error; fresh workers take the runs left")
            else:
                restarts += 1
                results.log(f"worker-died:attempt-{restarts}")
                note("a worker process died; restarting the pool for the remaining runs")
                if restarts > max_restarts:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return finished


def _drain(event_queue, on_event: Event | None, empty) -> None:
    while True:
        try:
            kind, payload = event_queue.get_nowait()
        except empty:
            return
        if on_event:
            on_event(kind, payload)


# ---- the Ray executor: one task per pack, the driver writes the records -----------------------------

def _ray_task(unit: list[RunConfig], root: str, data_dir: str | None, checkpoint_every_s: float,
              deadline: float | None) -> list[dict]:
    if deadline is not None and time.time() >= deadline:
        return []  # scheduled too late: leave it to the next sweep
    # the task's one CPU (run_ray asks num_cpus=1): Ray sets OMP_NUM_THREADS=1 only where the user has not set it,
    # and a CPU run's floats depend on its thread count
    torch.set_num_threads(1)
    unit = [dataclasses.replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu") for cfg in unit]
    cache = _WORKER.setdefault("cache", DataCache(data_dir))  # a CPU worker serves many tasks; a GPU one, one
    try:
        return claim_and_run(unit, ResultsDir(root), cache, None, checkpoint_every_s, write=False, deadline=deadline)
    except BrokenContext as e:
        if not e.retry:  # every run ended or failed its retry (a GPU task's worker exits after it anyway)
            return e.records
        os._exit(CUDA_EXIT)  # Ray retries the task in a fresh worker (max_retries); its ended runs are redone


def _gpu_memory() -> int:
    return torch.cuda.get_device_properties(0).total_memory


def ray_remote_options(gpus: float) -> dict:
    """Options of the Ray remote function: a GPU task's worker process exits after one task (a reused one
    would keep the previous run's CUDA context, data and allocator peak); `.options()` cannot set this."""
    return {"max_calls": 1 if gpus else 0}  # 0: no limit (Ray's default for CPU tasks)


def ray_gpu_share(unit: list[RunConfig], gpus: float, total: int) -> float:
    """The GPUs a pack's task asks for: `gpus` (--gpus-per-run), or the share of one GPU its estimated memory
    needs if that is more, so that Ray never puts runs on a GPU whose memory they cannot share."""
    need = math.ceil(100 * estimated_pack_bytes(unit) / (MEMORY_USABLE * total)) / 100
    return max(gpus, min(1.0, need))


def run_ray(runs: list, results: ResultsDir, address: str | None = None, gpus_per_run: float = 1.0,
            data_dir: str | None = None, checkpoint_every_s: float = 300.0, on_event: Event | None = None,
            max_retries: int = 3, deadline: float | None = None, planned: dict | None = None,
            observed: dict | None = None, fill_until: float | None = None) -> list[dict]:
    """Each pack (a single run: a pack of one) a Ray task, retried when its worker is lost, submitted in order
    as the cluster has room (so a deadline stops submission, as in the local executor). Where the cluster has
    GPUs a task takes `gpus_per_run` of one, or more where its estimated memory needs it (a run that fits no
    GPU is refused), and its worker process exits after it (a fresh CUDA context, data cache and allocator
    for every task); a task whose CUDA context broke exits at once and Ray retries it, up to CUDA_RETRIES
    times per run as in run_local. A task's records are written when it ends."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs Ray: pip install -e '.[ray]' (or use --executor local)") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot reach a Ray cluster at {address!r} ({str(e).splitlines()[0]}): start one "
                              "with `ray start --head` or drop --address for a local one") from None
    resources = ray.cluster_resources()
    gpus = gpus_per_run if resources.get("GPU", 0) > 0 else 0
    capacity = max(1, int(resources["GPU"] / gpus) if gpus else int(resources.get("CPU", 1)))
    task = ray.remote(**ray_remote_options(gpus))(_ray_task)
    total = ray.get(ray.remote(num_gpus=min(gpus, 1), max_calls=1)(_gpu_memory).remote()) if gpus else None
    throughput, finished, refs = Throughput(observed=observed), [], {}
    schedule = Schedule(as_units(runs), deadline, throughput, planned, fill_until)

    def write(cfg: RunConfig, record: dict | None) -> None:
        if record is None:
            return
        with results.claim(cfg.run_id) as mine:  # never over a record another sweep wrote meanwhile
            if not mine or (record["status"] == "error" and cfg.run_id in results.done()):
                return
            results.write(record)
        finished.append(record)
        throughput.add(record)
        if on_event:
            on_event("done", record)

    while True:
        while len(refs) < capacity and (unit := schedule.next()) is not None:
            share = gpus
            if gpus:
                try:
                    for cfg in unit:
                        check_fits(cfg, total)
                except ConfigError as e:
                    for cfg in unit:
                        write(cfg, error_record(cfg, e))
                    continue
                share = ray_gpu_share(unit, gpus, total)
            refs[task.options(num_cpus=1, num_gpus=share, max_retries=max_retries).remote(
                unit, str(results.root), data_dir, checkpoint_every_s, deadline)] = unit
        if not refs:
            return finished
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            unit = refs.pop(ref)
            try:
                records = {r["run_id"]: r for r in ray.get(ref)}
            except Exception as e:  # noqa: BLE001 - lost beyond its retries, or failed outside train()
                records = {cfg.run_id: error_record(cfg, e) for cfg in unit}
            for cfg in unit:
                write(cfg, records.get(cfg.run_id))
            schedule.give_back(unit, list(records.values()))


def run_sweep(runs: list[RunConfig], root: Path | str, executor: str = "local", pack: str = "off",
              max_pack: int = 10, priority: dict | None = None, **options) -> list[dict]:
    """Run every run of `runs` not yet recorded under `root`; returns the records written now. With `pack`
    "on", runs that can share a pack (form_packs) train in packs of up to `max_pack`; "auto" does so where
    the runs go to GPUs (on a CPU a pack ran slower than its runs one after another: README, 'Packs')."""
    results = ResultsDir(root)
    units = form_packs(runs, max_pack if resolve_pack(pack, executor, options) == "on" else 1, priority)
    if options.get("deadline") is not None:  # the bounds: each row's steps so far
        options.setdefault("observed", observed_in(results.root))
    if executor == "ray":
        return run_ray(units, results, **options)
    return run_local(units, results, **options)


def resolve_pack(pack: str, executor: str = "local", options: dict | None = None) -> str:
    """"auto" -> "on" where the runs go to GPUs (a Ray cluster with GPUs, or a local cuda device), else "off"."""
    if pack != "auto":
        return pack
    options = options or {}
    on_gpus = _ray_has_gpus(options.get("address")) if executor == "ray" else \
        slots(options.get("device", "auto"))[0].startswith("cuda")
    return "on" if on_gpus else "off"


def _ray_has_gpus(address: str | None) -> bool:
    try:
        import ray
    except ImportError:
        return False  # run_ray says how to install it
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError):
            return False  # run_ray says what went wrong
    return ray.cluster_resources().get("GPU", 0) > 0
