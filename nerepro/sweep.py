"""Sweeps: map `train` over a grid, skip what is recorded, survive kills, record failures as data."""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from . import data as datasets
from .config import RunConfig
from .errors import ConfigError
from .record import provenance
from .results import ResultsDir
from .train import resolve_device, train

Event = Callable[[str, dict], None]  # ("start" | "check" | "done", payload) for progress displays


class DataCache:
    """Each dataset read once per process and kept on its device for every run that needs it."""

    def __init__(self, data_dir: str | None = None):
        self.data_dir, self.loaded = data_dir, {}

    def get(self, cfg: RunConfig, device: torch.device) -> datasets.Data:
        key = (datasets.NETWORK_DATASET[cfg.network], str(device))
        if key not in self.loaded:
            self.loaded[key] = datasets.load(key[0], self.data_dir, device)
        return self.loaded[key]


def error_record(cfg: RunConfig, exc: BaseException) -> dict:
    """A run that raised: recorded as `error` with its message, retried by the next sweep."""
    return {
        "run_id": cfg.run_id, "network": cfg.network, "alpha": float(cfg.alpha), "batch_size": cfg.batch_size,
        "seed": cfg.seed, "subset": cfg.subset, "status": "error", "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
        "config": cfg.record_config(), "provenance": provenance(torch.device("cpu")),
    }


def run_one(cfg: RunConfig, results: ResultsDir, cache: DataCache, on_event: Event | None = None,
            checkpoint_every_s: float = 300.0) -> dict:
    """Train one run (resuming its checkpoint if any); an exception becomes an `error` record."""
    try:
        device = resolve_device(cfg.device)
        progress = (lambda step, loss: on_event("check", {"run_id": cfg.run_id, "step": step, "loss": loss})) \
            if on_event else None
        return train(cfg, data=cache.get(cfg, device), progress=progress,
                     checkpoint=results.checkpoint_path(cfg.run_id), checkpoint_every_s=checkpoint_every_s)
    except Exception as e:  # noqa: BLE001 - any failure of one run is data; the sweep goes on
        return error_record(cfg, e)


def claim_and_run(cfg: RunConfig, results: ResultsDir, cache: DataCache, on_event: Event | None = None,
                  checkpoint_every_s: float = 300.0, write: bool = True) -> dict | None:
    """Run `cfg` unless another process holds it or it got recorded meanwhile; write its record."""
    with results.claim(cfg.run_id) as mine:
        if not mine or cfg.run_id in results.done():
            return None
        results.log("start", cfg.run_id)
        if on_event:
            on_event("start", {"run_id": cfg.run_id})
        record = run_one(cfg, results, cache, on_event, checkpoint_every_s)
        if write:
            results.write(record)
        return record


def pending_runs(runs: list[RunConfig], results: ResultsDir) -> list[RunConfig]:
    done = results.done()
    return [c for c in runs if c.run_id not in done]


def slots(device: str, workers_per_device: int | None = None) -> list[str]:
    """Device of each worker: every visible GPU (or the one named) x workers_per_device, else the CPU.

    Default: one worker per GPU; on the CPU one single-threaded worker per core, which for F1 at B = 100
    runs 1.47x the runs per second of one worker using both cores (README, 'Performance').
    """
    names = ([f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]) if device == "auto" \
        else [str(resolve_device(device))]
    if workers_per_device is None:
        workers_per_device = (os.cpu_count() or 1) if names == ["cpu"] else 1
    return [n for n in names for _ in range(workers_per_device)]


def summarize(records: list[dict]) -> Counter:
    return Counter(r["status"] for r in records)


# ---- the local executor: one process per slot --------------------------------------------------------

_WORKER: dict = {}  # per worker process: its device, data cache and event queue (set by _init_worker)


def _init_worker(slot_queue, event_queue, threads: int, data_dir: str | None, checkpoint_every_s: float,
                 parent: int):
    _die_with_parent(parent)
    device = slot_queue.get()
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.set_num_threads(threads)
    _WORKER.update(device=device, cache=DataCache(data_dir), events=event_queue, checkpoint_every_s=checkpoint_every_s)


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


def _worker_run(cfg: RunConfig, root: str) -> dict | None:
    cfg = dataclasses.replace(cfg, device=_WORKER["device"])
    events = _WORKER["events"]
    on_event = lambda kind, payload: events.put((kind, payload))  # noqa: E731
    return claim_and_run(cfg, ResultsDir(root), _WORKER["cache"], on_event, _WORKER["checkpoint_every_s"])


def run_local(runs: list[RunConfig], results: ResultsDir, device: str = "auto", workers_per_device: int | None = None,
              data_dir: str | None = None, checkpoint_every_s: float = 300.0, on_event: Event | None = None,
              max_restarts: int = 3) -> list[dict]:
    """Run `runs` (longest first, as given) in one worker process per slot, or in this process if there is
    one slot; each worker keeps its datasets on its device. A pool whose worker died is restarted."""
    import multiprocessing as mp
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    names = slots(device, workers_per_device)
    # CPU results depend on the thread count, so it follows the requested layout, not the runs left
    threads = max(1, (os.cpu_count() or 1) // len(names)) if names[0] == "cpu" else torch.get_num_threads()
    names = names[:max(1, len(runs))]
    if len(names) == 1:  # one worker: this process is it
        cache, finished, previous = DataCache(data_dir), [], torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for cfg in runs:
                record = claim_and_run(dataclasses.replace(cfg, device=names[0]), results, cache, on_event,
                                       checkpoint_every_s)
                if record is not None:
                    finished.append(record)
                    if on_event:
                        on_event("done", record)
        finally:
            torch.set_num_threads(previous)
        return finished
    ctx = mp.get_context("spawn")
    finished: list[dict] = []
    for attempt in range(max_restarts + 1):
        todo = [c for c in runs if c.run_id not in results.done()]
        if not todo:
            break
        slot_queue, event_queue = ctx.Queue(), ctx.Queue()
        for name in names:
            slot_queue.put(name)
        pool = ProcessPoolExecutor(len(names), mp_context=ctx, initializer=_init_worker,
                                   initargs=(slot_queue, event_queue, threads, data_dir, checkpoint_every_s,
                                             os.getpid()))
        try:
            futures = {pool.submit(_worker_run, cfg, str(results.root)) for cfg in todo}
            while futures:
                done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(event_queue, on_event, queue.Empty)
                for fut in done:
                    try:
                        record = fut.result()
                    except BrokenProcessPool:
                        raise
                    except Exception as e:  # noqa: BLE001 - e.g. a record that could not be written
                        results.log(f"failed:{type(e).__name__}")
                        if on_event:
                            on_event("note", {"message": f"a run failed outside training: {type(e).__name__}: {e}"})
                        continue
                    if record is not None:
                        finished.append(record)
                        if on_event:
                            on_event("done", record)
            _drain(event_queue, on_event, queue.Empty)
            break
        except BrokenProcessPool:
            results.log(f"worker-died:attempt-{attempt + 1}")
            if on_event:
                on_event("note", {"message": "a worker process died; restarting the pool for the remaining runs"})
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


# ---- the Ray executor: one task per run, the driver writes the records ------------------------------

def _ray_task(cfg: RunConfig, root: str, data_dir: str | None, checkpoint_every_s: float) -> dict | None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = _WORKER.setdefault("cache", DataCache(data_dir))  # a Ray worker process serves many tasks
    cfg = dataclasses.replace(cfg, device=device)
    return claim_and_run(cfg, ResultsDir(root), cache, None, checkpoint_every_s, write=False)


def run_ray(runs: list[RunConfig], results: ResultsDir, address: str | None = None, gpus_per_run: float = 1.0,
            data_dir: str | None = None, checkpoint_every_s: float = 300.0, on_event: Event | None = None,
            max_retries: int = 3) -> list[dict]:
    """Each run a Ray task (a GPU fraction each where the cluster has GPUs), retried when its worker is lost."""
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
    gpus = gpus_per_run if ray.cluster_resources().get("GPU", 0) > 0 else 0
    task = ray.remote(_ray_task).options(num_cpus=1, num_gpus=gpus, max_retries=max_retries)
    refs = {task.remote(cfg, str(results.root), data_dir, checkpoint_every_s): cfg for cfg in runs}
    finished = []
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            cfg = refs.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - lost beyond its retries, or failed outside train()
                record = error_record(cfg, e)
            if record is None:
                continue
            with results.claim(cfg.run_id) as mine:  # never over a record another sweep wrote meanwhile
                if not mine or (record["status"] == "error" and cfg.run_id in results.done()):
                    continue
                results.write(record)
            finished.append(record)
            if on_event:
                on_event("done", record)
    return finished


def run_sweep(runs: list[RunConfig], root: Path | str, executor: str = "local", **options) -> list[dict]:
    """Run every run of `runs` not yet recorded under `root`; returns the records written now."""
    results = ResultsDir(root)
    if executor == "ray":
        return run_ray(runs, results, **options)
    return run_local(runs, results, **options)
