"""What a run costs before it runs: steps, samples, seconds at a measured throughput, device memory.

The sweep orders runs by these estimates, `--dry-run` prints them, `--time-limit` starts only runs that fit
the time left, and GPU executors never put runs on one device whose memory together cannot fit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import RunConfig
from .paper import table_2

TRAIN_SIZE = {"F1": 60_000, "C1": 50_000, "C2": 50_000}  # training samples of each network's dataset
TEST_SIZE = {"F1": 10_000, "C1": 10_000, "C2": 10_000}
INPUT_SHAPE = {"F1": (1, 28, 28), "C1": (3, 32, 32), "C2": (3, 32, 32)}
DEVICE_OVERHEAD = 1.5 * 2 ** 30  # CUDA context, cuDNN/cuBLAS workspaces, allocator slack (bytes)
# A run is started under a time limit, and planned for a lease, at its expected time times a margin on its steps:
# the cost model's guess (estimated_steps) was 1.35-1.43x short for Table 2's NE row under the Keras reading
# (9,915 and 10,485 steps on the CPU against 7,335) and right for alpha = 1 at B = 900 (10,251-10,988 against
# 10,934); the steps of a row's finished runs scatter by about 10% between seeds (Table 2's std: 5-10%).
STEPS_MARGIN = 1.4
OBSERVED_MARGIN = 1.2
OBSERVED_MIN = 3  # runs of a row whose mean steps take OBSERVED_MARGIN (fewer: the first to finish, often the shortest)
MACHINE = "machine"  # Throughput.scale's key of the factor for kinds not timed on this machine themselves


def _reference_steps() -> dict[str, tuple[int, float]]:
    """Per network, (B_opt, convergence steps) at alpha = 1 from the paper's Table 2."""
    return {r["network"]: (int(r["b_opt"]), float(r["convergence_steps_mean"]))
            for r in table_2() if float(r["alpha"]) == 1.0}


def n_train(cfg: RunConfig) -> int:
    return cfg.subset or TRAIN_SIZE[cfg.network]


def estimated_steps(cfg: RunConfig, reference: dict | None = None) -> int:
    """A rough guess of a run's steps to L**: Table 2's alpha = 1 time scaled by sqrt(B_opt / B).

    The square-root rule matches Table 2's other rows within about 25%. A run on a subset is assumed to
    need as many epochs, i.e. proportionally fewer steps. Capped at max_steps. The guess orders runs
    (longest first) and sizes a sweep before it starts.
    """
    b_ref, steps_ref = (reference or _reference_steps())[cfg.network]
    steps = steps_ref * math.sqrt(b_ref / cfg.batch_size)
    if cfg.subset:
        steps *= min(1.0, cfg.subset / TRAIN_SIZE[cfg.network])
    return int(min(cfg.max_steps, max(steps, cfg.check_interval(n_train(cfg)))))


def estimated_samples(cfg: RunConfig, reference: dict | None = None) -> int:
    """Training samples a run is expected to read (each NE step reads 2B)."""
    return estimated_steps(cfg, reference) * cfg.samples_per_step(n_train(cfg))


class Throughput:
    """Seconds a run should take at the speed measured on the runs finished so far in this sweep: from the
    steps per second of runs at the same (network, B, alpha != 1, and whether L(w) is checked: full passes
    cost steps) where one finished; else, where runs of the same (network, B, alpha != 1) finished under
    another reading, their steps' time without their loss checks plus, for a run that checks L(w), the
    checks' time per step, pooled over the converged runs of the network that checked L(w) of as many
    samples as often (a check that can no longer pass stops early, so its time per step depends on the
    trajectory more than on B; none measured: the guess below); a calibrated plan (`scale`) takes that split
    first, whose training step is the one the factor was measured against, and its own runs only where the
    checks' time is unknown; else the larger of
    two guesses from the network's other runs, at their steps per second (right where steps cost the same
    whatever B, as on a GPU that launch overhead bounds) and at their samples per second (right where
    cost grows with B, as on a CPU); else unknown (None).

    `fastest`: each key's speed is its fastest run's, not the pooled one (a plan for a machine whose earlier
    runs shared it with other work: the fastest ran closest to alone). `observed`: (mean convergence steps, n) of
    finished runs of the same row and reading (`row_key`), used for a run's steps in place of the estimate."""

    def __init__(self, fastest: bool = False, observed: dict | None = None):
        self.fastest, self.observed = fastest, observed or {}
        self.steps, self.samples = defaultdict(lambda: [0, 0.0]), defaultdict(lambda: [0, 0, 0.0])
        # (network, B, NE) -> [steps, seconds without loss checks]; (network, n_train, steps between checks) ->
        # [steps, seconds of L(w) checks], pooled
        self.training, self.checks = defaultdict(lambda: [0, 0.0]), defaultdict(lambda: [0, 0.0])
        # (network, B, NE) -> this machine's step time over the records' (calibrate.py); MACHINE: the kinds' median
        self.scale: dict = {}
        # (network, B, NE) without records -> its training step's seconds timed on this machine (calibrate.py)
        self.here: dict = {}

    def add(self, record: dict) -> None:
        seconds = record.get("wall_s")
        if record.get("status") in (None, "error") or not seconds or not one_machine(record):
            return  # a resumed run's wall time may cover segments on other machines
        key = (record["network"], record["batch_size"], record["alpha"] != 1, record.get("stop_loss", "full") == "full")
        network = self.samples[record["network"]]
        check_s = record.get("check_s")
        if check_s is not None and check_s < seconds:  # (without check_s the split is unknown)
            self._keep(self.training[key[:3]], record["steps"], seconds - check_s)
            interval = record.get("check_interval", record.get("check_every"))
            if key[3] and check_s and record["status"] == "converged" and isinstance(interval, int):
                size = record.get("n_train") or record.get("subset") or TRAIN_SIZE[record["network"]]
                self._keep(self.checks[record["network"], size, interval], record["steps"], check_s, pooled=True)
        if self.fastest:  # keep the fastest run of each key (steps / seconds largest)
            self._keep(self.steps[key], record["steps"], seconds)
            if not network[0] or record["samples_processed"] / seconds > network[1] / network[2]:
                network[:] = [record["steps"], record["samples_processed"], seconds]
            return
        self.steps[key][0] += record["steps"]
        self.steps[key][1] += seconds
        network[0] += record["steps"]
        network[1] += record["samples_processed"]
        network[2] += seconds

    def run_steps(self, cfg: RunConfig) -> float:
        """The run's expected steps: the mean of its row's finished runs under its reading, else the estimate."""
        return self.observed.get(row_key(cfg), (estimated_steps(cfg), 0))[0]

    def bound_steps(self, cfg: RunConfig) -> int:
        """The steps a run is allowed (`allowed_steps` with this throughput's finished runs)."""
        return allowed_steps(cfg, self.observed)

    def _keep(self, entry: list, steps: int, seconds: float, pooled: bool = False) -> None:
        """Add a run's steps and seconds to a [steps, seconds] entry: pooled (always with `pooled`), or with
        `fastest` the run with the most steps a second."""
        if pooled or not self.fastest:
            entry[0] += steps
            entry[1] += seconds
        elif seconds > 0 and (not entry[0] or steps * entry[1] > entry[0] * seconds):
            entry[:] = [steps, seconds]

    def seconds(self, cfg: RunConfig) -> float | None:
        """Seconds the run should take at the records' speed, times this machine's step time over theirs (`scale`,
        set by calibrate.py: its (network, B, NE), else the median of the kinds timed, else 1). A kind without
        records timed on this machine (`here`, calibrate.py): its steps at that step time, plus for a reading that
        checks L(w) the network's pooled check time per step (times the machine's factor), where it is known."""
        if self.timed_here(cfg):
            kind = self.kind(cfg)
            checked, check_s = self._pooled_checks(cfg)
            check = check_s / checked * self.scale.get(MACHINE, 1.0) if kind[3] else 0.0
            return self.run_steps(cfg) * (self.here[kind[:3]] + check)
        seconds = self._recorded_seconds(cfg)
        return None if seconds is None else seconds * (self.factor(cfg) or 1.0)

    def timed_here(self, cfg: RunConfig) -> bool:
        """Whether cfg's plan takes the step time timed here for a kind without records (`here`)."""
        return self.kind(cfg)[:3] in self.here and self.could_time_here(cfg)

    def could_time_here(self, cfg: RunConfig) -> bool:
        """Whether a step time timed here would plan cfg: no record of its (network, B, NE) says its training
        step, none of its own kind finished, and for a reading that checks L(w) the network's checks of as many
        samples as often are known (else the guess stands, checks and all)."""
        return self.step_s(cfg) is None and not self.measured(cfg) and (
            not self.kind(cfg)[3] or bool(self._pooled_checks(cfg)[0]))

    def _pooled_checks(self, cfg: RunConfig) -> tuple[int, float]:
        """(steps, seconds of L(w) checks) pooled over the network's runs that checked as many samples as often."""
        return tuple(self.checks.get((cfg.network, n_train(cfg), cfg.check_interval(n_train(cfg))), (0, 0.0)))

    def factor(self, cfg: RunConfig) -> float | None:
        """The calibration factor `seconds` applies to cfg (`scale`), None where nothing was calibrated."""
        return self.scale.get(self.kind(cfg)[:3], self.scale.get(MACHINE)) if self.scale else None

    def step_s(self, cfg: RunConfig) -> float | None:
        """Seconds a training step of cfg's (network, B, NE) took in the records, loss checks excluded (the
        fastest run's with `fastest`); None where none says its check time."""
        steps, s = self.training.get(self.kind(cfg)[:3], (0, 0.0))
        return s / steps if steps and s > 0 else None

    def _recorded_seconds(self, cfg: RunConfig) -> float | None:
        kind = self.kind(cfg)
        own_steps, own_s = self.steps.get(kind, (0, 0.0))
        steps, s = self.training.get(kind[:3], (0, 0.0))
        checked, check_s = self._pooled_checks(cfg)
        split = steps and s > 0 and (checked or not kind[3])  # training steps (any reading) and the checks' time
        # A calibrated plan takes the split: its factor is this machine's step over `step_s`, the training step
        # of the split, not over the step of the kind's own runs, which may have run at another speed
        if own_steps and not (split and self.factor(cfg)):
            return self.run_steps(cfg) * own_s / own_steps
        if split:
            return self.run_steps(cfg) * (s / steps + (check_s / checked if kind[3] else 0.0))
        steps, samples, s = self.samples.get(cfg.network, (0, 0, 0.0))
        run_samples = self.run_steps(cfg) * cfg.samples_per_step(n_train(cfg))
        return max(self.run_steps(cfg) / steps, run_samples / samples) * s if steps else None

    @staticmethod
    def kind(cfg: RunConfig) -> tuple:
        """Runs of one kind run at one speed: network, B, NE or not, reading L(w) or not."""
        return cfg.network, cfg.batch_size, cfg.alpha != 1, cfg.effective_stop_loss == "full"

    def measured(self, cfg: RunConfig) -> bool:
        """Whether runs of cfg's own kind have finished."""
        return bool(self.steps.get(self.kind(cfg), (0,))[0])

    def bound(self, cfg: RunConfig) -> float | None:
        """`seconds` for the steps a run is allowed (`bound_steps`): what it may take before it is started under a
        time limit."""
        seconds = self.seconds(cfg)
        if seconds is None:
            return None
        return seconds * self.bound_steps(cfg) / self.run_steps(cfg)


def one_machine(record: dict) -> bool:
    """Whether a record's wall time was all spent on one kind of machine: a run never resumed, or one whose
    segments (provenance.segments, one a call) all ran on the same device and CPU at the same threads. A resumed
    run whose segments were not all kept (before they were) is not known to have."""
    if not record.get("resumes"):
        return True
    parts = (record.get("provenance") or {}).get("segments") or []
    return len(parts) == record["resumes"] + 1 and len({(p.get("device"), p.get("cpu_id"), p.get("threads"))
                                                        for p in parts}) == 1


def allowed_steps(cfg: RunConfig, observed: dict | None = None, margin: float = STEPS_MARGIN) -> int:
    """The steps a run is allowed under a time limit (the sweep's bounds, a lease's plan): `margin` times the
    cost model's; where its row has finished runs under its reading (`observed_steps`, on any device), their
    mean times OBSERVED_MARGIN from OBSERVED_MIN of them, or times `margin` while they are fewer (the first to
    finish in a time-limited sweep are the shortest); never more than the run's max_steps."""
    mean, n = (observed or {}).get(row_key(cfg), (estimated_steps(cfg), 0))
    return min(cfg.max_steps, math.ceil(mean * (OBSERVED_MARGIN if n >= OBSERVED_MIN else margin)))


def observed_in(results: Path | str | None) -> dict:
    """observed_steps of the records in a results directory (none, or no runs there: {})."""
    from .results import load_records

    return observed_steps(load_records(results)[0]) if results and Path(results, "runs").is_dir() else {}


def row_key(cfg: RunConfig) -> tuple:
    """A run's row and reading without its seed: runs with the same key are seeds of one condition."""
    return cfg.replace(seed=0, device="auto", trace=False, compile="auto").run_id


def observed_steps(records: list[dict]) -> dict:
    """row_key -> (mean steps, n) of the finished runs of that row and reading (from the records' configs; a run
    that did not converge counts its steps, which is what it cost)."""
    found = defaultdict(list)
    for record in records:
        if record.get("status") not in ("converged", "not_converged") or not record.get("config"):
            continue
        try:
            cfg = RunConfig.from_record(record)
        except Exception:  # noqa: BLE001 - a record of an older layout: its steps are not used
            continue
        found[row_key(cfg)].append(record["steps"])
    return {key: (sum(v) / len(v), len(v)) for key, v in found.items()}


@lru_cache(maxsize=None)
def activation_bytes_per_sample(network: str, precision: str = "fp32") -> float:
    """Bytes autograd keeps per training sample between forward and backward (eager; a compiled model keeps
    at most this): measured once per process on the CPU from the tensors saved for backward of a one- and
    a two-sample batch (ghost batches of one sample: the same shapes), each storage counted once."""
    from .models import build_model

    def saved(n: int) -> int:
        model = build_model(network, ghost_batch_size=1).train()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x, y = torch.rand(n, *INPUT_SHAPE[network]), torch.zeros(n, dtype=torch.long)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            F.cross_entropy(model(x), y)
        return sum(storages.values())

    return float(saved(2) - saved(1))


def parameter_count(network: str) -> int:
    from .models import build_model

    return sum(p.numel() for p in build_model(network).parameters())


def estimated_pack_bytes(cfgs: list[RunConfig]) -> float:
    """Device memory of runs trained as one pack: the dataset and the overhead once, the rest per run."""
    shared = dataset_bytes(cfgs[0]) + DEVICE_OVERHEAD
    return shared + sum(estimated_device_bytes(c) - shared for c in cfgs)


def dataset_bytes(cfg: RunConfig) -> float:
    pixels = math.prod(INPUT_SHAPE[cfg.network])
    return (TRAIN_SIZE[cfg.network] + TEST_SIZE[cfg.network]) * (pixels * 4 + 8)


def estimated_device_bytes(cfg: RunConfig) -> float:
    """Device memory a run needs: the dataset held whole, weights with gradients and Adam's two moments, the
    activations of one step (B, or 2B with NE; a chunk of the full-gradient reference), and overhead."""
    data = dataset_bytes(cfg)
    weights = 4 * 4 * parameter_count(cfg.network)
    step_samples = cfg.batch_size * (1 if cfg.alpha == 1 else 2)
    if cfg.effective_reference == "full":
        step_samples = max(cfg.batch_size, min(cfg.check_chunk, n_train(cfg)))
    activations = step_samples * activation_bytes_per_sample(cfg.network, cfg.precision)
    if cfg.precision == "fp64":  # a float64 copy of the inputs beside the cached fp32 ones; 8-byte tensors
        data, weights, activations = 3 * data, 2 * weights, 2 * activations
    return data + weights + activations + DEVICE_OVERHEAD


@lru_cache(maxsize=None)
def flop_per_sample(network: str) -> float:
    """Training FLOP of one sample (bench.training_flops_per_sample: F1 ~10.6 M, C1 ~1.6 G, C2 ~1.9 G)."""
    from .bench import training_flops_per_sample

    return training_flops_per_sample(network)


def estimated_flop(cfg: RunConfig, reference: dict | None = None) -> float:
    """Training FLOP a run is expected to take in its conv and linear layers (loss checks not counted)."""
    return estimated_samples(cfg, reference) * flop_per_sample(cfg.network)


def measured_throughput(records: list[dict], fastest: bool = False,
                        steps_from: list[dict] | None = None) -> Throughput:
    """A Throughput from finished records, each run charged its share of its pack's wall time (a packed run's
    `wall_s` is the pack's), so that the seconds it gives add up to device time across runs; with `fastest`,
    each key at its fastest run's speed, and each run's steps from its row's finished runs (Throughput) among
    `steps_from` (default: `records`; a row takes its steps on any device, at its own speed on each)."""
    throughput = Throughput(fastest, observed_steps(records if steps_from is None else steps_from) if fastest else None)
    for record in records:
        share = 1 / max(1, record.get("pack_size") or 1)  # each member's wall_s and check_s are the pack's
        if record.get("wall_s"):
            record = {**record, "wall_s": record["wall_s"] * share}
        if record.get("check_s"):
            record = {**record, "check_s": record["check_s"] * share}
        throughput.add(record)
    return throughput


def estimated_seconds(cfg: RunConfig, throughput: Throughput | None = None,
                      rates: dict[str, float] | None = None) -> tuple[float | None, str | None]:
    """Seconds a run should take on one device, and the figure they come from: a training throughput given
    for its network or its precision (`rates`, TFLOP/s; the network's wins), turning its FLOP into time; else
    the speed measured on finished runs (`throughput`, "measured"); else (None, None), unknown."""
    rates = rates or {}
    name = cfg.network if cfg.network in rates else cfg.precision if cfg.precision in rates else None
    if name is not None:
        return estimated_flop(cfg) / (rates[name] * 1e12), f"{name}={rates[name]:g}"
    seconds = throughput.seconds(cfg) if throughput is not None else None
    return (seconds, "measured") if seconds is not None else (None, None)
