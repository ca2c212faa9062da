"""`nerepro bench`: how fast a run's training loop is, against what the device can do."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import resource
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import data as datasets
from .config import RunConfig, with_protocol
from .errors import ConfigError
from .fastpath import compile_mode
from .models import build_model
from .record import device_name
from .train import resolve_device, train, train_pack

SHAPES = {"F1": ((1, 28, 28), 60_000, 10, 10_000), "C1": ((3, 32, 32), 50_000, 10, 10_000),
          "C2": ((3, 32, 32), 50_000, 100, 10_000)}  # input shape, train size, classes, test size


def training_flops_per_sample(network: str) -> float:
    """FLOPs of one training sample in the conv and linear layers (batch norm, ReLU and pooling are a
    rounding error): 2 per multiply-add forward, the same for the weight gradients, and the same for the
    input gradients of every layer but the first (the input needs none). F1 ~10.6 M, C1 ~1.6 G, C2 ~1.9 G."""
    model = build_model(network).eval()
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs.append(output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])
        elif isinstance(module, nn.Linear):
            macs.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *SHAPES[network][0]))
    for h in hooks:
        h.remove()
    return 2 * float(3 * sum(macs) - macs[0])


def matmul_peak(device: torch.device, dtype: torch.dtype, tf32: bool = False, seconds: float = 1.0) -> float:
    """TFLOP/s of a large square matmul in `dtype` on `device`, measured now (the roof a run is held to)."""
    n = 8192 if device.type == "cuda" else 1536
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        _sync(device)
        batch = 10 if device.type == "cuda" else 1  # queue several launches between syncs
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(batch):
                a @ b
            reps += batch
            _sync(device)
        return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def timed_precision(precision: str) -> None:
    """fp64 is the reference precision of the tests, not a training speed: its FLOP rate has no peak here."""
    if precision == "fp64":
        raise ConfigError("bench times the training precisions: use --precision fp32, tf32 or bf16 (fp64 is "
                          "a float64 reference for checks)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_data(network: str, device: torch.device, data_dir: str | None) -> tuple[datasets.Data, bool]:
    """The network's real dataset when present, else random data of its shape; (data, is_real)."""
    name = datasets.NETWORK_DATASET[network]
    if datasets.is_available(name, data_dir):
        return datasets.load(name, data_dir, device), True
    shape, n_train, classes, n_test = SHAPES[network]
    g = torch.Generator().manual_seed(0)
    fake = datasets.Data(f"random {name}-shaped", torch.rand((n_train, *shape), generator=g),
                         torch.randint(0, classes, (n_train,), generator=g), torch.rand((n_test, *shape), generator=g),
                         torch.randint(0, classes, (n_test,), generator=g), classes)
    return fake.to(device), False


def readings(protocol: str | None, check_every: int) -> dict:
    """The reading a benchmark trains under: a named protocol's settings, else checks every `check_every` steps."""
    return with_protocol(protocol, {}) if protocol else {"check_every": check_every}


def warmup_run(cfg: RunConfig, steps: int) -> RunConfig:
    """A short run of `cfg` that ends in a loss check (a per-step reading checks at every step anyway)."""
    return cfg.replace(max_steps=steps, **({} if cfg.check_every == 1 else {"check_every": steps}))


def bench(network: str, batch_size: int, alpha: float, steps: int, device: str = "auto", precision: str = "fp32",
          check_every: int = 50, compile: str = "auto", warmup: int = 20, data_dir: str | None = None,
          protocol: str | None = None) -> dict:
    """Train one run of `warmup` + `steps` steps from seed 0 and measure the `steps` after the warm-up: one model,
    optimizer and compiled module, so that compilation, autotuning and CUDA-graph recording fall in the warm-up.
    A run that stops (L < L**, divergence) in the timed steps is timed to there; one that stops in the warm-up is
    an error."""
    timed_precision(precision)
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps takes the steps to time, at least 1, and --warmup at least 0, got {steps} and "
                          f"{warmup}")
    dev = resolve_device(device)
    mode = compile_mode(compile, dev, network)
    cfg = RunConfig(network=network, alpha=alpha, batch_size=batch_size, seed=0, max_steps=warmup + steps,
                    precision=precision, compile=compile, device=str(dev), **readings(protocol, check_every))
    data, real = bench_data(network, dev, data_dir)
    graphs_wanted = mode == "reduce-overhead" and dev.type == "cuda"
    marks = {}

    def clock(step: int, state) -> None:
        """Before each step: the loop's start (its clock starts there too, train._loop) and the warm-up's end."""
        if step == 0:
            marks["loop"] = time.perf_counter()
        if step == warmup:
            _sync(dev)  # the warm-up's queued work is the warm-up's
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            marks["check_s"], marks["recorded"] = state.check_s, graphs.recorded
            marks["timed"] = time.perf_counter()

    t_warmup = time.perf_counter()
    with watch_graphs() if graphs_wanted else contextlib.nullcontext(GraphLog()) as graphs:
        record = train(cfg, data=data, final_evaluation=False, before_step=clock)
    timed = record["steps"] - warmup
    if "timed" not in marks or timed <= 0:
        raise ConfigError(f"the run ended ({record['status']}) at step {record['steps']}, within the {warmup} "
                          f"warm-up steps: nothing to time; lower --warmup")
    loop_s = record["loop_s"] - (marks["timed"] - marks["loop"])  # the loop less its warm-up; both end synchronised
    memory = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"  # the run's, before the matmul probe
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    tf32 = dev.type == "cuda" and (precision == "tf32" or (network != "F1" and precision == "fp32"))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(dev, dtype, tf32=tf32)
    flops = training_flops_per_sample(network)
    samples_per_s = (record["samples_processed"] - warmup * cfg.samples_per_step(record["n_train"])) / loop_s
    achieved = samples_per_s * flops / 1e12
    return {
        "network": network, "batch_size": batch_size, "alpha": alpha, "precision": precision,
        "compile": mode, "steps": timed, "check_every": cfg.check_every,
        "protocol": protocol, "stop_loss": cfg.effective_stop_loss,
        "data": "real" if real else "random", "device": device_name(dev), "device_type": dev.type,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "steps_per_s": timed / loop_s, "samples_per_s": samples_per_s,
        "gflop_per_sample": flops / 1e9, "achieved_tflops": achieved,
        "peak_tflops": peak, "peak_kind": "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32"),
        "fraction_of_peak": achieved / peak, "check_share": (record["check_s"] - marks["check_s"]) / loop_s,
        "peak_memory_gib": memory / 2 ** 30, "memory_kind": "device" if dev.type == "cuda" else "process RSS",
        "warmup_steps": warmup, "warmup_s": marks["timed"] - t_warmup,
        "cuda_graphs": cuda_graph_status(mode, dev.type, graphs, late=graphs.recorded - marks["recorded"]),
        "date": time.strftime("%Y-%m-%d"),
    }


@dataclass
class GraphLog:
    """What inductor did about CUDA graphs (`--compile reduce-overhead`) while `watch_graphs` watched."""

    recorded: int = 0  # graphs captured: recordings of inductor's CUDA graph trees
    skips: int = 0  # graphs run without CUDA graphs: inductor's counters["inductor"]["cudagraph_skips"]
    reasons: list[str] = field(default_factory=list)  # its "skipping cudagraphs due to ..." warnings
    unknown: str = ""  # why nothing could be watched


class _Warnings(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def watch_graphs():
    """Yields a GraphLog filled while the block runs: the recordings (the CUDA-graph trees' recording callback,
    torch._dynamo.callback_handler), the skips (inductor's counter) and their reasons (the warnings inductor
    logs with each skip, torch._inductor.cudagraph_utils). A graph that graph partitioning leaves uncaptured
    may be neither counted nor logged: no recording and no skip is reported as a skip (cuda_graph_status)."""
    log = GraphLog()
    try:
        import torch._dynamo
        import torch._inductor.cudagraph_utils as cudagraph_utils
        from torch._dynamo.callback import CallbackTrigger
        from torch._dynamo.utils import counters

        torch._dynamo.callback_handler.register_start_callback  # noqa: B018 - present in this torch?
    except (ImportError, AttributeError) as e:  # a torch without this bookkeeping: the bench runs, status unknown
        log.unknown = f"this torch does not say ({type(e).__name__}: {e})"
        yield log
        return

    def recording(args) -> None:
        if args.callback_trigger is CallbackTrigger.CUDAGRAPH_RECORDING:
            log.recorded += 1

    handler = _Warnings(log.reasons)
    loggers = {getattr(cudagraph_utils, name, None) for name in ("cudagraphs_log", "perf_hint_log")} - {None}
    # the logger of the skip warnings: perf_hints in older torch 2.x, cudagraphs in newer
    skips = counters["inductor"]["cudagraph_skips"]
    torch._dynamo.callback_handler.register_start_callback(recording)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield log
    finally:
        torch._dynamo.callback_handler.remove_start_callback(recording)
        for lg in loggers:
            lg.removeHandler(handler)
        log.skips = counters["inductor"]["cudagraph_skips"] - skips


def skip_reason(message: str) -> str:
    """A skip warning's reason, e.g. 'skipping cudagraphs due to mutated inputs (2 instances). Found from :
    <stack trace>' -> 'mutated inputs (2 instances)'."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    for prefix in ("skipping cudagraphs due to ", "skipping cudagraph due to "):
        first = first.removeprefix(prefix)
    return first.split(". Found from")[0].rstrip(" .:")


def cuda_graph_status(mode: str, device_type: str, log: GraphLog, late: int = 0) -> str:
    """Whether a run's compiled steps ran as CUDA graphs: "not used" (not reduce-overhead on CUDA), "captured",
    or "skipped: <reason>". `late`: graphs recorded in the timed steps (their recording is in the time)."""
    if mode != "reduce-overhead" or device_type != "cuda":
        return "not used"
    if log.unknown:
        return f"unknown: {log.unknown}"
    if log.skips:
        reasons = "; ".join(dict.fromkeys(skip_reason(m) for m in log.reasons)) or \
            f"{log.skips} graph(s), inductor logged no reason"
        return f"skipped: {reasons}" + (f" ({log.recorded} other graph(s) captured)" if log.recorded else "")
    if not log.recorded:
        return "skipped: no CUDA graph was recorded and inductor named no reason"
    return "captured" + (f" ({late} of {log.recorded} recorded in the timed steps)" if late else "")


def bench_pack(network: str, batch_size: int, alpha: float, steps: int, runs: int, device: str = "auto",
               precision: str = "fp32", check_every: int = 50, warmup: int = 5, data_dir: str | None = None,
               workers: int = 0, protocol: str | None = None) -> dict:
    """`runs` runs (seeds 0..runs-1) trained as one pack (README, 'Packs') against the baseline: the same runs
    one after another in this process; with `workers` K > 1, also the sweep's alternative, K worker processes
    on the device (`nerepro sweep --workers-per-device K`), each given every K-th run and the sweep's share of
    the cores. Each way is timed over its training loops only (a record's loop_s, steps and checks, ended by a
    device synchronisation: model construction and data loading are not timed) and reports run-steps/s and the
    TFLOP/s achieved (training FLOP per sample x samples processed / seconds). Peak memory: device memory of
    each way on CUDA; on the CPU the process's peak RSS after the single runs and after the pack (it only grows)."""
    timed_precision(precision)
    dev = resolve_device(device)
    cfgs = [RunConfig(network=network, alpha=alpha, batch_size=batch_size, seed=s, max_steps=steps,
                      precision=precision, device=str(dev), **readings(protocol, check_every)) for s in range(runs)]
    data, real = bench_data(network, dev, data_dir)
    flops = training_flops_per_sample(network)
    if warmup:  # ending in a loss check, so that neither way is timed loading the check's kernels
        warm = [warmup_run(c, warmup) for c in cfgs]
        train_pack(warm, data=data, final_evaluation=False)
        train(warm[0], data=data, final_evaluation=False)
    out = {}
    for way in ("single", "pack"):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if way == "single":  # one loop after another: their times add up
            records = [train(c, data=data, final_evaluation=False) for c in cfgs]
            seconds = sum(r["loop_s"] for r in records)
        else:  # one loop, until its last run leaves it
            records = train_pack(cfgs, data=data, final_evaluation=False)
            seconds = max(r["loop_s"] for r in records)
        memory = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        out[way] = {**timing(records, seconds, flops), "peak_memory_gib": memory / 2 ** 30}
    result = {"network": network, "batch_size": batch_size, "alpha": alpha, "precision": precision, "runs": runs,
              "steps": steps, "check_every": cfgs[0].check_every, "protocol": protocol,
              "data": "real" if real else "random",
              "device": device_name(dev), "device_type": dev.type, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "gflop_per_sample": flops / 1e9,
              "baseline": f"{runs} runs one after another in one process", "single": out["single"],
              "pack": out["pack"], "speedup": out["pack"]["run_steps_per_s"] / out["single"]["run_steps_per_s"],
              "memory_kind": "device" if dev.type == "cuda" else "process RSS", "date": time.strftime("%Y-%m-%d")}
    if workers > 1:
        result["workers"] = bench_workers(cfgs, workers, warmup, data_dir, flops)
        result["speedup_vs_workers"] = out["pack"]["run_steps_per_s"] / result["workers"]["run_steps_per_s"]
    return result


def timing(records: list[dict], seconds: float, flops_per_sample: float) -> dict:
    """A way of training the runs, from their records and the seconds its loops took."""
    samples = sum(r["samples_processed"] for r in records)
    return {"seconds": seconds, "run_steps_per_s": sum(r["steps"] for r in records) / seconds,
            "samples": samples, "tflops": samples * flops_per_sample / seconds / 1e12}


def bench_workers(cfgs: list[RunConfig], workers: int, warmup: int, data_dir: str | None, flops: float) -> dict:
    """The runs in `workers` spawned processes, as a sweep's workers: each loads the data, warms up, waits for
    the others, then trains every `workers`-th run. The time is the longest sum of a worker's loops (they run
    side by side from the barrier on): process starts, loading and model construction are not timed."""
    threads = max(1, (os.cpu_count() or 1) // workers)  # the sweep's split of the cores (sweep.run_local)
    done = side_by_side(_bench_worker, [(cfgs[k::workers], warmup) for k in range(workers)], threads, data_dir)
    records = [r for d in done for r in d]
    seconds = max(sum(r["loop_s"] for r in d) for d in done)
    return {"workers": workers, "threads": threads, **timing(records, seconds, flops)}


def side_by_side(target, work: list[tuple], threads: int, data_dir: str | None) -> list:
    """`target(*work[k], threads, data_dir, barrier, results)` in one spawned process per item of `work`, as a
    sweep's workers run side by side; each puts its result on `results` (a str: its error) and waits at the
    barrier (shared by all) before what it times. Returns the workers' results, in the order they finished."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(work), timeout=600), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, threads, data_dir, barrier, results)) for args in work]
    for proc in procs:
        proc.start()
    done = []
    try:
        while len(done) < len(procs):
            try:
                done.append(results.get(timeout=1.0))
            except queue.Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs):
                    raise RuntimeError("a benchmark worker process died") from None
    finally:
        for proc in procs:
            if proc.is_alive() and len(done) < len(procs):
                proc.terminate()
            proc.join()
    for error in (d for d in done if isinstance(d, str)):
        raise RuntimeError(f"a benchmark worker failed: {error}")
    return done


def _bench_worker(cfgs: list[RunConfig], warmup: int, threads: int, data_dir: str | None, barrier, results) -> None:
    try:
        torch.set_num_threads(threads)
        dev = resolve_device(cfgs[0].device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev.index or 0)
        data, _ = bench_data(cfgs[0].network, dev, data_dir)
        if warmup:
            train(warmup_run(cfgs[0], warmup), data=data, final_evaluation=False)
        barrier.wait()
        records = [train(c, data=data, final_evaluation=False) for c in cfgs]
        results.put([{k: r[k] for k in ("loop_s", "steps", "samples_processed")} for r in records])
    except Exception as e:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        results.put(f"{type(e).__name__}: {e}")


def pack_summary(r: dict) -> str:
    def way(w: dict) -> str:
        return f"{w['run_steps_per_s']:.1f} run-steps/s, {w['tflops']:.3g} TFLOP/s"

    workers = (f"; {r['workers']['workers']} worker processes ({r['workers']['threads']} threads each) "
               f"{way(r['workers'])}, the pack {r['speedup_vs_workers']:.2f}x that") if "workers" in r else ""
    return (f"{r['network']} B={r['batch_size']} alpha={r['alpha']:g} {r['precision']}, {r['runs']} runs of "
            f"{r['steps']} steps on {r['device']} ({r['device_type']}, {r['threads']} threads, {r['data']} data), "
            f"training loops only: baseline ({r['baseline']}) {way(r['single'])}; as one pack {way(r['pack'])}: "
            f"{r['speedup']:.2f}x the baseline{workers}; peak {r['memory_kind']} memory "
            f"{r['single']['peak_memory_gib']:.2f} GiB after the single runs, {r['pack']['peak_memory_gib']:.2f} GiB "
            f"after the pack")


def summary(result: dict) -> str:
    r = result
    return (f"{r['network']} B={r['batch_size']} alpha={r['alpha']:g} {r['precision']} on {r['device']} "
            f"({r['device_type']}, {r['threads']} threads, compile {r['compile']}, {r['data']} data): "
            + (f"protocol {r['protocol']}: " if r.get("protocol") else "") +
            f"{r['steps_per_s']:.2f} steps/s, {r['samples_per_s']:.0f} samples/s, "
            f"{r['achieved_tflops']:.3g} TFLOP/s = {100 * r['fraction_of_peak']:.0f}% of the measured "
            f"{r['peak_kind']} matmul peak {r['peak_tflops']:.3g} TFLOP/s; checks (per-step readings: their "
            f"decisions on the host) {100 * r['check_share']:.1f}% "
            f"of the loop; peak {r['memory_kind']} memory {r['peak_memory_gib']:.2f} GiB; warm-up "
            f"({r['warmup_steps']} steps, compilation included) {r['warmup_s']:.1f} s"
            + (f"; CUDA graphs {r['cuda_graphs']}" if r["compile"] == "reduce-overhead" else ""))
