"""One training run to the paper's stopping rule: `train(cfg) -> record`."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import data as datasets
from . import fastpath
from .checkpoint import load_checkpoint, save_checkpoint
from .config import READING_NAMES, STEP_READINGS, RunConfig
from .errors import ConfigError
from .gradient import accumulate_full_gradient, ne_objective
from .models import build_model
from .pack import backward_pack, check_pack, pack_dataset_loss, pack_objective
from .record import finite_or_none, git_state, provenance, segment, segments_provenance
from .sampling import PackDraws, make_sampler
from .schedule import Action, EpochWindow, dataset_loss, evaluate, full_check_due, next_action
from .trace import StepTrace

Progress = Callable[[int, str], None]  # at every check: (step, loss_text(...)), e.g. "L(w)=..." or "NE epoch mean=..."
BeforeStep = Callable[[int, "RunState"], None]  # before each step: (steps taken, the run's state); bench's clock
CURVE = ("step", "train_loss", "exact", "minibatch_loss", "lr")  # README, 'The record'


class OutOfTime(Exception):
    """Runs paused at their deadline (a sweep's --time-limit), their states saved in their checkpoints."""

    def __init__(self, run_ids: list[str], step: int):
        names = run_ids[0] if len(run_ids) == 1 else f"{len(run_ids)} runs of a pack ({', '.join(run_ids)})"
        super().__init__(f"{names} paused at step {step} (time limit); the checkpoint continues it")
        self.run_ids, self.step = list(run_ids), step

    def __reduce__(self):  # picklable across processes
        return type(self), (self.run_ids, self.step)


@dataclass
class RunState:
    """Everything about a run in progress besides tensors; saved in checkpoints at check boundaries."""

    step: int = 0
    halved_at: int | None = None
    status: str = "not_converged"
    check_s: float = 0.0  # wall time spent in loss checks
    check_samples: int = 0  # samples forwarded by full-training-set checks (their cost)
    check_passes: int = 0  # full checks started; the budget counts them as whole passes (see _check_plan)
    wall_before: float = 0.0  # wall time of earlier segments of a resumed run
    resumes: int = 0
    window: dict | None = None  # the EpochWindow of the epoch_mean readings, at the checkpoint
    since_check: int = 0  # steps since the last check, and the sum of their minibatch losses (a checkpoint
    minibatch_sum: float = 0.0  # between checks, when a time limit pauses the run, continues them)
    curve: dict = field(default_factory=lambda: {k: [] for k in CURVE})
    trace: dict | None = None  # with --trace: every step's L_B and NE loss so far (trace.py)
    # Bookkeeping for the record, not the run's course: saved beside `state` in a checkpoint (BOOKKEEPING), so
    # that code from before these fields still resumes it, ignoring them
    cpu_before: float | None = 0.0  # the process's CPU time in earlier segments (all threads); None: unknown
    segments: list = field(default_factory=list)  # earlier segments' provenance (record.segment), oldest first


BOOKKEEPING = ("cpu_before", "segments")


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available: use --device cpu")
    return device


def make_optimizer(cfg: RunConfig, params, device: torch.device = torch.device("cpu")) -> torch.optim.Optimizer:
    """Adam with Keras' defaults (Sec. 3: 'the Adam optimizer with the default hyperparameters'), or SGD.
    Fused kernels on CUDA (one launch for all parameters), foreach on the CPU."""
    multi = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=cfg.adam_eps, **multi)
    return torch.optim.SGD(params, lr=cfg.learning_rate, **multi)


def keras_adam_eps(optimizer: torch.optim.Optimizer, eps: float, t: int) -> None:
    """Make PyTorch's Adam take Keras' step t. Keras adds eps to sqrt(v) and bias-corrects the rate:
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps); PyTorch adds it to sqrt(v_hat):
    w -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps'). The two are the same step when
    eps' = eps / sqrt(1 - b2^t), so each step sets that (README, protocol table: --protocol keras)."""
    for group in optimizer.param_groups:
        group["eps"] = eps / math.sqrt(1 - group["betas"][1] ** t)


def prepare_data(cfg: RunConfig, data: datasets.Data | None, device: torch.device,
                 data_dir: str | None = None) -> datasets.Data:
    """The run's dataset on its device, cut to --subset; checks that B fits the training set."""
    if data is None:
        data = datasets.load(datasets.NETWORK_DATASET[cfg.network], data_dir, device)
    data = data.subset(cfg.subset).to(device)
    if fastpath.dtype(cfg.precision) != data.x_train.dtype:  # fp64 runs read float64 inputs
        data = data.map_inputs(lambda x: x.to(fastpath.dtype(cfg.precision)))
    if fastpath.channels_last(cfg.network, device):
        data = data.map_inputs(lambda x: fastpath.inputs(x, cfg.network, device))
    if cfg.batch_size > data.n_train:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the {data.n_train} training samples: lower it")
    return data


def train(cfg: RunConfig, data: datasets.Data | None = None, data_dir: str | None = None,
          progress: Progress | None = None, checkpoint: Path | None = None,
          checkpoint_every_s: float = 300.0, final_evaluation: bool = True,
          save_weights: Path | None = None, deadline: float | None = None,
          before_step: BeforeStep | None = None) -> dict:
    """Train one network with noise enhancement (Eq. 6) until L < L** (Sec. 3) and return its record.

    With `checkpoint`, the run's full state is saved there atomically at a check at most every
    `checkpoint_every_s` seconds, and a run that finds a checkpoint of itself continues from it.
    `final_evaluation=False` (benchmarks only) skips the exact check at max_steps and the test set.
    `save_weights` receives the final model's state dict (for `nerepro noise --weights`).
    At `deadline` (a `time.time()` value) the run saves its checkpoint at the step it reached and raises
    OutOfTime; the next call with the same checkpoint continues it to the record an uninterrupted run gives.
    `before_step` (benchmarks: `nerepro bench` times the steps after its warm-up) is called before each step.
    One run is a pack of one: `train_pack` is the loop.
    """
    report = (lambda run_id, step, text: progress(step, text)) if progress else None
    hook = (lambda step, states: before_step(step, states[0])) if before_step else None
    return train_pack([cfg], data, data_dir, report, [checkpoint], checkpoint_every_s, final_evaluation,
                      deadline, save_weights=save_weights, before_step=hook)[0]


@dataclass
class Member:
    """One run of a pack: its own model, optimizer, sampler, schedule state and checkpoint."""

    cfg: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: object
    state: RunState
    checkpoint: Path | None


def train_pack(cfgs: list[RunConfig], data: datasets.Data | None = None, data_dir: str | None = None,
               progress: Callable[[str, int, str], None] | None = None, checkpoints: list[Path | None] | None = None,
               checkpoint_every_s: float = 300.0, final_evaluation: bool = True, deadline: float | None = None,
               on_record: Callable[[dict], None] | None = None, save_weights: Path | None = None,
               before_step: Callable[[int, list[RunState]], None] | None = None) -> list[dict]:
    """Train runs that differ only in seed and alpha together (pack.py), each to its own stopping point, and
    return their records in the order given (`on_record` receives each as soon as its run ends; a run that
    ends leaves the pack). A single run is a pack of one and trains exactly as it always has. Runs resumed
    from checkpoints at different steps are trained as one pack per step, one after another."""
    check_pack(cfgs)
    checkpoints = list(checkpoints or [None] * len(cfgs))
    t_start, c_start = time.perf_counter(), time.process_time()
    git_state()  # read once per process, when its code was loaded, not when a long run ends
    cfg = cfgs[0]  # what the runs of a pack share (check_pack)
    device = resolve_device(cfg.device)
    fastpath.configure_backends(device, cfg.precision)
    data = prepare_data(cfg, data, device, data_dir)
    members = []
    for c, path in zip(cfgs, checkpoints):
        model = build_model(c.network, seed=c.seed, ghost_batch_size=c.ghost_batch_size, bn_eps=c.bn_eps,
                            bn_momentum=c.bn_momentum)
        model = fastpath.place(model, c.network, device, c.precision).train()
        optimizer = make_optimizer(c, model.parameters(), device)
        window = _window(c, data, device)
        saved = load_checkpoint(path, c.run_id, device) if path else None
        state = restore(saved, model, optimizer, window) if saved else RunState()
        sampler = make_sampler(c.effective_sampling, data.n_train, c.batch_size, device, c.seed,
                               second=c.alpha != 1 and c.effective_reference != "full")
        members.append(Member(c, model, optimizer, sampler, state, path))
    steps = sorted({m.state.step for m in members})
    if len(steps) > 1:  # lockstep only: one pack per step reached
        groups = [[i for i, m in enumerate(members) if m.state.step == step] for step in steps]
        members.clear()  # each pack below builds its own
        records = {}
        for group in groups:
            for r in train_pack([cfgs[i] for i in group], data, None, progress, [checkpoints[i] for i in group],
                                checkpoint_every_s, final_evaluation, deadline, on_record, before_step=before_step):
                records[r["run_id"]] = r
        return [records[c.run_id] for c in cfgs]
    return _loop(members, data, device, progress, checkpoint_every_s, final_evaluation, deadline, on_record,
                 save_weights, t_start, c_start, before_step)


def _window(cfg: RunConfig, data: datasets.Data, device: torch.device, runs: int = 1) -> EpochWindow | None:
    if cfg.effective_stop_loss == "full":
        return None
    return EpochWindow(cfg.steps_per_epoch(data.n_train), device, runs, fastpath.dtype(cfg.precision))


def _loop(members: list[Member], data: datasets.Data, device: torch.device, progress, checkpoint_every_s: float,
          final_evaluation: bool, deadline: float | None, on_record, save_weights: Path | None,
          t_start: float, c_start: float, before_step=None) -> list[dict]:
    cfg, order = members[0].cfg, [m.cfg.run_id for m in members]
    size = len(members)
    single = size == 1
    forward = fastpath.compiled(members[0].model, fastpath.compile_mode(cfg.compile, device, cfg.network)) \
        if single else None
    precision = fastpath.autocast(cfg.precision, device)
    full_reference = cfg.effective_reference == "full"
    check_every = cfg.check_interval(data.n_train)
    keras_adam = cfg.optimizer == "adam" and cfg.effective_adam_update == "keras"
    l_star, l_star_star = cfg.target_losses
    window = _window(cfg, data, device, runs=size)  # one window for the pack, its rows the members' saved windows
    per_step = cfg.effective_stop_loss in STEP_READINGS
    # a per-step reading is decided once the next step's gradient is queued, so that reading it on the host does
    # not leave the device idle; not where a forward changes the model (batch norm's running statistics)
    pipelined = per_step and not cfg.uses_ghost_batch_norm
    epoch = cfg.steps_per_epoch(data.n_train)
    pending = None  # per-step readings: (step, readings on the device) of the step taken but not yet decided
    tracer = StepTrace() if cfg.trace else None
    if window is not None:
        for i, m in enumerate(members):
            if m.state.window is not None:
                window.load_state_dict(m.state.window, run=i)
    alphas = torch.tensor([m.cfg.alpha for m in members], device=device, dtype=fastpath.dtype(cfg.precision))
    minibatch_sum = torch.tensor([m.state.minibatch_sum for m in members], device=device,
                                 dtype=fastpath.dtype(cfg.precision))  # the losses' dtype, as summed
    step, since_check = members[0].state.step, members[0].state.since_check
    draws = PackDraws([m.sampler for m in members])
    records: dict[str, dict] = {}
    if device.type == "cuda":  # the loop's clock starts on an idle device: set-up kernels are not its time
        torch.cuda.synchronize(device)
    last_save = t_loop = time.perf_counter()
    first_step = step  # this segment's start, and its runs' wall and CPU time before it
    before = {m.cfg.run_id: (m.state.wall_before, m.state.cpu_before) for m in members}

    def this_segment(m: Member, wall_s: float, cpu_s: float | None) -> dict:
        wall_0, cpu_0 = before[m.cfg.run_id]
        return segment(device, first_step, m.state.step, wall_s - wall_0, None if cpu_s is None else cpu_s - cpu_0)

    def save() -> None:
        nonlocal t_start, c_start, last_save
        if tracer is not None:
            tracer.flush([m.state for m in members])
        sums, now, cpu = minibatch_sum.tolist(), time.perf_counter(), time.process_time()
        for i, m in enumerate(members):
            m.state.wall_before += now - t_start  # every member was in the pack for the whole segment
            if m.state.cpu_before is not None:
                m.state.cpu_before += cpu - c_start
            m.state.window = window.state_dict(i) if window is not None else None
            m.state.since_check, m.state.minibatch_sum = since_check, sums[i]
            if m.checkpoint is not None:  # a run resumed from here has this segment, up to here, behind it
                state = asdict(m.state)
                kept = {k: state.pop(k) for k in BOOKKEEPING}
                kept["segments"] = [*kept["segments"], this_segment(m, m.state.wall_before, m.state.cpu_before)]
                save_checkpoint(m.checkpoint, m.cfg.run_id, m.model, m.optimizer, state, **kept)
        t_start, c_start, last_save = now, cpu, now

    def finish(m: Member) -> None:
        if device.type == "cuda":  # the loop's time is the device's work, not the host's enqueueing
            torch.cuda.synchronize(device)
        loop_s = time.perf_counter() - t_loop
        if tracer is not None:
            tracer.flush([m.state for m in members])
        if save_weights:
            torch.save(m.model.state_dict(), save_weights)
        test_loss = test_acc = train_loss_full = float("nan")
        if final_evaluation:
            with precision:
                test_loss, test_acc = evaluate(m.model, data.x_test, data.y_test, m.cfg.check_chunk)
                if window is not None and m.state.status != "diverged":  # L(w) of Eq. (1) beside the reading
                    train_loss_full = dataset_loss(m.model, data.x_train, data.y_train, m.cfg.check_chunk).value
        wall_s = m.state.wall_before + time.perf_counter() - t_start
        cpu_s = None if m.state.cpu_before is None else m.state.cpu_before + time.process_time() - c_start
        record = make_record(m.cfg, data, m.state, device, test_loss, test_acc, wall_s=wall_s, loop_s=loop_s,
                             cpu_s=cpu_s)
        if m.state.resumes:  # the code, machine and threads of each segment (none saved before they were kept)
            record["provenance"].update(segments_provenance([*m.state.segments, this_segment(m, wall_s, cpu_s)]))
        record["pack_size"] = size
        if not single:  # a pack's arithmetic is eager (pack.py), whatever --compile asked for
            record["provenance"]["compile"] = "off"
        if window is not None:
            record["train_loss_full"] = finite_or_none(train_loss_full)
        if m.cfg.trace:
            record["trace"] = m.state.trace or {"first_step": 1, "loss_b": [], "objective": []}
        records[m.cfg.run_id] = record
        if on_record:
            on_record(record)

    def decide(m: Member, at: int, loss: float | None, exact: bool, minibatch_loss: float, row: bool) -> bool:
        """One run's check at step `at` (Sec. 3's rule, `next_action`; None: no reading, go on): halve the rate
        from the next step on, or end the run; a curve row and a progress line where `row` or a decision asks
        for them. Returns whether the run ended."""
        state = m.state
        action = next_action(loss, state.halved_at is not None, l_star, l_star_star) if loss is not None \
            else Action.CONTINUE
        if action is Action.HALVE:
            state.halved_at = at
            for group in m.optimizer.param_groups:
                group["lr"] = m.cfg.learning_rate / 2
        if row or action is not Action.CONTINUE:
            values = (at, finite_or_none(loss), exact, finite_or_none(minibatch_loss), m.optimizer.param_groups[0]["lr"])
            for key, value in zip(CURVE, values):
                state.curve[key].append(value)
            if progress:
                progress(m.cfg.run_id, at, loss_text(loss, exact, minibatch_loss, m.cfg.effective_stop_loss))
        if action in (Action.STOP, Action.DIVERGE):
            state.status = "converged" if action is Action.STOP else "diverged"
        return action in (Action.STOP, Action.DIVERGE)

    def leave(ended: list[int]) -> list[int] | None:
        """Runs that ended leave the pack, the rest go on without their cost; returns the indices kept."""
        nonlocal draws, alphas, minibatch_sum
        if not ended:
            return None
        for i in ended:
            finish(members[i])
        keep = [i for i in range(len(members)) if i not in ended]
        if tracer is not None:  # its pending steps hold every run: to their lists before the pack shrinks
            tracer.flush([m.state for m in members])
        members[:] = [members[i] for i in keep]  # in place: the caller's list lets the ended runs go too
        draws = PackDraws([m.sampler for m in members]) if members else None
        alphas, minibatch_sum = alphas[keep], minibatch_sum[keep]
        if window is not None:
            window.keep(keep)
        return keep

    def settle() -> list[int] | None:
        """Decide the pending step of a per-step reading (halve, stop or go on) for every run; returns the
        indices of the runs kept where some ended."""
        nonlocal pending, since_check
        if pending is None:
            return None
        at, readings, ready = pending
        pending = None
        if ready is not None:  # CUDA: wait for the copy of step t's readings only, not for the queued step t + 1
            ready.synchronize()
        values, minibatch_means = readings.tolist()  # the one host read of a step
        t_check = time.perf_counter()
        minibatch_sum.zero_()
        since_check = 0
        ended = [i for i, m in enumerate(members)  # curve rows at each epoch's end, the last step and decisions
                 if decide(m, at, values[i], True, minibatch_means[i], row=at % epoch == 0 or at == cfg.max_steps)]
        check_s = time.perf_counter() - t_check
        for m in members:
            m.state.check_s += check_s
        keep = leave(ended)
        if members and checkpoint_every_s is not None and time.perf_counter() - last_save >= checkpoint_every_s \
                and at < cfg.max_steps:
            save()
        return keep

    while members and step < cfg.max_steps:
        if before_step is not None:
            before_step(step, [m.state for m in members])
        if deadline is not None and time.time() >= deadline:
            settle()
            if not members:
                break
            save()
            raise OutOfTime([m.cfg.run_id for m in members], step)
        idx = draws.draw(step)  # (runs, n): each run's [B; B'] from its own sampler
        for m in members:
            m.optimizer.zero_grad(set_to_none=True)
        with precision:
            if full_reference:  # Eq. (5): alpha grad L_B + (1 - alpha) grad L, the ideal NE (a pack of one)
                loss_b = objective = ne_objective(forward, data.x_train[idx[0]], data.y_train[idx[0]],
                                                  cfg.batch_size, 1.0)[0]
                (cfg.alpha * loss_b).backward()
                accumulate_full_gradient(forward, data.x_train, data.y_train, 1 - cfg.alpha, cfg.check_chunk)
            elif single:  # Eq. (6)
                objective, loss_b, _ = ne_objective(forward, data.x_train[idx[0]], data.y_train[idx[0]],
                                                    cfg.batch_size, cfg.alpha)
                objective.backward()
            else:  # Eq. (6) for every run of the pack
                models = [m.model for m in members]
                objective, loss_b, stacks = pack_objective(models, data.x_train[idx], data.y_train[idx],
                                                           cfg.batch_size, alphas)
                backward_pack(models, objective, stacks)
        if pending is not None:  # the previous step's reading, read while this step's gradient is computed
            keep = settle()
            if not members:
                break  # this step's gradient is dropped: every run has ended
            if keep is not None:
                objective, loss_b = objective[keep], loss_b[keep]
        for m in members:
            if keras_adam:
                keras_adam_eps(m.optimizer, m.cfg.adam_eps, step + 1)
            m.optimizer.step()
        minibatch_sum += loss_b.detach()  # stays on the device: no host sync inside the step
        if window is not None:
            window.add(loss_b.detach(), objective.detach())
        step, since_check = step + 1, since_check + 1
        for m in members:
            m.state.step = step
        if tracer is not None:
            tracer.add(loss_b, objective, [m.state for m in members])
        if per_step:  # read on the device now, decided at the next step's gradient (or here, unpipelined)
            pending = (step, *reading_copy(torch.stack([window.reading(cfg.effective_stop_loss),
                                                         window.running(ne=False)])))
            if not pipelined:
                settle()
            continue
        if step % check_every and not (final_evaluation and step == cfg.max_steps):
            continue

        minibatch_losses = [s / since_check for s in minibatch_sum.tolist()]  # the one host sync per check
        t_check = time.perf_counter()  # after the sync: the queued steps are not the check's cost
        minibatch_sum.zero_()
        since_check = 0
        with precision:
            found = check_losses(members, data, minibatch_losses, window, final_evaluation)
        check_s = time.perf_counter() - t_check
        ended = []
        for i, (m, (loss, exact), minibatch_loss) in enumerate(zip(members, found, minibatch_losses)):
            m.state.check_s += check_s
            if decide(m, step, loss, exact, minibatch_loss, row=True):
                ended.append(i)
        leave(ended)
        if members and checkpoint_every_s is not None and time.perf_counter() - last_save >= checkpoint_every_s \
                and step < cfg.max_steps:
            save()

    settle()  # the last step's reading
    for m in members:  # max_steps reached: not converged
        finish(m)
    return [records[run_id] for run_id in order]


_PINNED: dict = {}  # per device and shape: the pinned host buffer a step's readings are copied into


def reading_copy(readings: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A step's readings on their way to the host without a synchronisation: on CUDA an asynchronous copy into
    a pinned buffer and the event that marks it done (read it after `event.synchronize()`, which waits for this
    step's work only, not for what was queued after it); elsewhere the tensor itself. One buffer per shape
    suffices: each is read before the next step's readings are copied."""
    if readings.device.type != "cuda":
        return readings, None
    key = (readings.device, tuple(readings.shape), readings.dtype)
    if key not in _PINNED:
        _PINNED[key] = torch.empty(readings.shape, dtype=readings.dtype, pin_memory=True)
    host = _PINNED[key]
    host.copy_(readings, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def check_losses(members: list[Member], data: datasets.Data, minibatch_losses: list[float],
                 window: EpochWindow | None, exact_at_end: bool) -> list[tuple[float | None, bool]]:
    """Each run's check of "the training loss" (README, 'Loss checks'): (L, exact); with --stop-loss epoch_mean
    or ne_epoch_mean the mean over the last epoch; or (None, False) where the cheap running
    estimate gated the full pass off. A full pass stops early once its partial sum proves L is above the
    next target; the last step always gets an exact value. The passes of several runs share one pass over
    the training set (pack.py); a run that is the only one to need a pass makes it alone."""
    found, passes, targets = [], [], []
    readings = window.means(ne=members[0].cfg.effective_stop_loss == "ne_epoch_mean") if window is not None else None
    for i, (m, minibatch_loss) in enumerate(zip(members, minibatch_losses)):
        plan = _check_plan(m.cfg, m.state, data, minibatch_loss, window is not None, exact_at_end)
        if plan == "nan":  # the weights are gone
            found.append((float("nan"), True))
        elif plan == "window":
            found.append((readings[i], True))
        elif plan == "gated":
            found.append((None, False))
        else:
            found.append(None)
            passes.append(i)
            targets.append(plan)
    if len(passes) == 1:
        m = members[passes[0]]
        checks = [dataset_loss(m.model, data.x_train, data.y_train, m.cfg.check_chunk, targets[0])]
    else:
        checks = pack_dataset_loss([members[i].model for i in passes], data.x_train, data.y_train,
                                   members[0].cfg.check_chunk, targets) if passes else []
    for i, (loss, exact, evaluated) in zip(passes, checks):
        members[i].state.check_samples += evaluated
        found[i] = (loss, exact)
    return found


def _check_plan(cfg: RunConfig, state: RunState, data: datasets.Data, minibatch_loss: float, windowed: bool,
                exact_at_end: bool):
    """What one run's check needs (README, 'Loss checks'): "nan" (the weights are gone), "window" (an epoch
    reading), "gated" (no pass), or a full pass, returned as its early-exit target (None: no early exit)."""
    if not math.isfinite(minibatch_loss):
        return "nan"
    if windowed:
        return "window"
    l_star, l_star_star = cfg.target_losses
    target = l_star_star if state.halved_at is not None else l_star
    final = exact_at_end and state.step == cfg.max_steps
    allowance = cfg.check_budget * 3 * state.step * cfg.samples_per_step(data.n_train)  # backward ~ 2 forwards
    # the budget charges every check a whole pass, so early exit and chunking never change which checks run
    spent = state.check_passes * data.n_train
    if not (final or full_check_due(minibatch_loss, target, cfg.check_gate, spent, allowance)):
        return "gated"
    state.check_passes += 1
    return target if cfg.check_early_exit and not final else None


def restore(saved: dict, model, optimizer, window: EpochWindow | None) -> RunState:
    """A checkpoint's state loaded into the run's objects; one that does not fit starts the run over."""
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    try:  # the likeliest misfits first, before anything is changed
        state = RunState(**saved["state"], **{k: saved[k] for k in BOOKKEEPING if k in saved})
        if "cpu_before" not in saved and state.wall_before > 0:  # saved before CPU time was kept: unknown
            state.cpu_before = None
        if window is not None:
            window.load_state_dict(state.window)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        warnings.warn(f"ignoring a checkpoint that does not fit this run ({type(e).__name__}); starting over")
        model.load_state_dict(fresh)
        optimizer.state.clear()
        return RunState()
    state.resumes += 1
    return state


def loss_text(loss: float | None, exact: bool, minibatch_loss: float, reading: str = "full") -> str:
    """What a check found: the training loss, a lower bound of it (early exit), or only the minibatch mean."""
    if loss is None:
        return f"L_B~{minibatch_loss:.4g}"
    name = READING_NAMES[reading]
    return f"{name}={loss:.4g}" if exact else f"{name}>={loss:.4g}"


def make_record(cfg: RunConfig, data: datasets.Data, state: RunState, device: torch.device, test_loss: float,
                test_acc: float, wall_s: float, loop_s: float, cpu_s: float | None = None) -> dict:
    """The run's record (README, 'The record'): settings, outcome, costs, provenance and loss curve."""
    exact_losses = [v for v, e in zip(state.curve["train_loss"], state.curve["exact"]) if e]
    converged = state.status == "converged"
    return {
        "run_id": cfg.run_id,
        "network": cfg.network,
        "dataset": data.name,
        "alpha": float(cfg.alpha),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "lr": cfg.learning_rate,
        "precision": cfg.precision,
        **cfg.effective_readings(),
        "check_every": cfg.check_every,
        "check_interval": cfg.check_interval(data.n_train),
        "subset": cfg.subset,
        "n_train": data.n_train,
        "status": state.status,
        "convergence_steps": state.step if converged else None,
        "steps": state.step,
        "samples_processed": state.step * cfg.samples_per_step(data.n_train),
        "lr_halved_step": state.halved_at,
        "train_loss": exact_losses[-1] if exact_losses else None,
        "test_acc": finite_or_none(test_acc) if state.status != "diverged" else None,
        "test_loss": finite_or_none(test_loss) if state.status != "diverged" else None,
        "wall_s": wall_s,
        "cpu_s": cpu_s,  # the process's CPU time over wall_s, all threads: below wall_s x threads where it shared
        "loop_s": loop_s,  # this segment's training loop, steps and checks (what `nerepro bench` times)
        "check_s": state.check_s,
        "check_samples": state.check_samples,
        "resumes": state.resumes,
        "config": cfg.record_config(),
        "provenance": {**provenance(device), "compile": fastpath.compile_mode(cfg.compile, device, cfg.network)},
        "curve": state.curve,
    }
