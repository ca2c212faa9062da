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
from .config import RunConfig
from .errors import ConfigError
from .gradient import accumulate_full_gradient, ne_objective
from .models import build_model
from .record import finite_or_none, git_state, provenance
from .sampling import make_sampler
from .schedule import Action, EpochWindow, dataset_loss, evaluate, full_check_due, next_action

Progress = Callable[[int, str], None]  # called at every check with (step, "L=..." | "L>=..." | "L_B~...")
CURVE = ("step", "train_loss", "exact", "minibatch_loss", "lr")  # README, 'The record'


class OutOfTime(Exception):
    """A run paused at its deadline (a sweep's --time-limit), its state saved in its checkpoint."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"{run_id} paused at step {step} (time limit); its checkpoint continues it")
        self.run_id, self.step = run_id, step

    def __reduce__(self):  # picklable across processes
        return type(self), (self.run_id, self.step)


@dataclass
class RunState:
    """Everything about a run in progress besides tensors; saved in checkpoints at check boundaries."""

    step: int = 0
    halved_at: int | None = None
    status: str = "not_converged"
    check_s: float = 0.0  # wall time spent in loss checks
    check_samples: int = 0  # samples forwarded by full-training-set checks (their cost)
    check_passes: int = 0  # full checks started; the budget counts them as whole passes (see check_training_loss)
    wall_before: float = 0.0  # wall time of earlier segments of a resumed run
    resumes: int = 0
    window: dict | None = None  # the EpochWindow of the epoch_mean readings, at the checkpoint
    since_check: int = 0  # steps since the last check, and the sum of their minibatch losses (a checkpoint
    minibatch_sum: float = 0.0  # between checks, when a time limit pauses the run, continues them)
    curve: dict = field(default_factory=lambda: {k: [] for k in CURVE})


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
    if fastpath.channels_last(cfg.network, device):
        data = data.map_inputs(lambda x: fastpath.inputs(x, cfg.network, device))
    if cfg.batch_size > data.n_train:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the {data.n_train} training samples: lower it")
    return data


def train(cfg: RunConfig, data: datasets.Data | None = None, data_dir: str | None = None,
          progress: Progress | None = None, checkpoint: Path | None = None,
          checkpoint_every_s: float = 300.0, final_evaluation: bool = True,
          save_weights: Path | None = None, deadline: float | None = None) -> dict:
    """Train one network with noise enhancement (Eq. 6) until L < L** (Sec. 3) and return its record.

    With `checkpoint`, the run's full state is saved there atomically at a check at most every
    `checkpoint_every_s` seconds, and a run that finds a checkpoint of itself continues from it.
    `final_evaluation=False` (benchmarks only) skips the exact check at max_steps and the test set.
    `save_weights` receives the final model's state dict (for `nerepro noise --weights`).
    At `deadline` (a `time.time()` value) the run saves its checkpoint at the step it reached and raises
    OutOfTime; the next call with the same checkpoint continues it to the record an uninterrupted run gives.
    """
    t_start = time.perf_counter()
    git_state()  # read once per process, when its code was loaded, not when a long run ends
    device = resolve_device(cfg.device)
    fastpath.configure_backends(device)
    data = prepare_data(cfg, data, device, data_dir)
    model = build_model(cfg.network, seed=cfg.seed, ghost_batch_size=cfg.ghost_batch_size, bn_eps=cfg.bn_eps,
                        bn_momentum=cfg.bn_momentum)
    model = fastpath.place(model, cfg.network, device).train()
    forward = fastpath.compiled(model, fastpath.compile_mode(cfg.compile, device, cfg.network))
    precision = fastpath.autocast(cfg.precision, device)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    full_reference = cfg.effective_reference == "full"
    sampler = make_sampler(cfg.effective_sampling, data.n_train, cfg.batch_size, device, cfg.seed,
                           second=cfg.alpha != 1 and not full_reference)
    window = EpochWindow(cfg.steps_per_epoch(data.n_train), device) if cfg.effective_stop_loss != "full" else None
    check_every = cfg.check_interval(data.n_train)
    keras_adam = cfg.optimizer == "adam" and cfg.effective_adam_update == "keras"
    state = RunState()
    saved = load_checkpoint(checkpoint, cfg.run_id, device) if checkpoint else None
    if saved:
        state = restore(saved, model, optimizer, window)
    l_star, l_star_star = cfg.target_losses
    last_save = time.perf_counter()

    def save() -> None:
        nonlocal t_start, last_save
        state.wall_before += time.perf_counter() - t_start
        t_start = time.perf_counter()
        state.window = window.state_dict() if window is not None else None
        state.since_check, state.minibatch_sum = since_check, minibatch_sum.item()
        save_checkpoint(checkpoint, cfg.run_id, model, optimizer, asdict(state))
        last_save = time.perf_counter()

    minibatch_sum = torch.tensor(state.minibatch_sum, device=device)  # float32, as accumulated
    since_check = state.since_check
    t_loop = time.perf_counter()
    while state.step < cfg.max_steps:
        if deadline is not None and time.time() >= deadline:
            if checkpoint:
                save()
            raise OutOfTime(cfg.run_id, state.step)
        idx = sampler.draw(state.step)
        optimizer.zero_grad(set_to_none=True)
        with precision:
            if full_reference:  # Eq. (5): alpha grad L_B + (1 - alpha) grad L, the ideal NE
                loss_b = objective = ne_objective(forward, data.x_train[idx], data.y_train[idx], cfg.batch_size,
                                                  1.0)[0]
                (cfg.alpha * loss_b).backward()
                accumulate_full_gradient(forward, data.x_train, data.y_train, 1 - cfg.alpha, cfg.check_chunk)
            else:  # Eq. (6)
                objective, loss_b, _ = ne_objective(forward, data.x_train[idx], data.y_train[idx], cfg.batch_size,
                                                    cfg.alpha)
                objective.backward()
        if keras_adam:
            keras_adam_eps(optimizer, cfg.adam_eps, state.step + 1)
        optimizer.step()
        minibatch_sum += loss_b.detach()  # stays on the device: no host sync inside the step
        if window is not None:
            window.add(loss_b.detach(), objective.detach())
        state.step, since_check = state.step + 1, since_check + 1
        if state.step % check_every and not (final_evaluation and state.step == cfg.max_steps):
            continue

        minibatch_loss = minibatch_sum.item() / since_check  # the one host sync per check_every steps
        t_check = time.perf_counter()  # after the sync: the queued steps are not the check's cost
        minibatch_sum.zero_()
        since_check = 0
        with precision:
            loss, exact = check_training_loss(cfg, state, model, data, minibatch_loss, window, final_evaluation)
        action = next_action(loss, state.halved_at is not None, l_star, l_star_star) if loss is not None \
            else Action.CONTINUE
        if action is Action.HALVE:
            state.halved_at = state.step
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate / 2
        row = (state.step, finite_or_none(loss), exact, finite_or_none(minibatch_loss), optimizer.param_groups[0]["lr"])
        for key, value in zip(CURVE, row):
            state.curve[key].append(value)
        state.check_s += time.perf_counter() - t_check
        if progress:
            progress(state.step, loss_text(loss, exact, minibatch_loss))
        if action is Action.STOP:
            state.status = "converged"
            break
        if action is Action.DIVERGE:
            state.status = "diverged"
            break
        if checkpoint and time.perf_counter() - last_save >= checkpoint_every_s and state.step < cfg.max_steps:
            save()

    if device.type == "cuda":  # the loop's time is the device's work, not the host's enqueueing
        torch.cuda.synchronize(device)
    loop_s = time.perf_counter() - t_loop
    if save_weights:
        torch.save(model.state_dict(), save_weights)
    test_loss = test_acc = train_loss_full = float("nan")
    if final_evaluation:
        with precision:
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg.check_chunk)
            if window is not None and state.status != "diverged":  # L(w) of Eq. (1) beside the reading used
                train_loss_full = dataset_loss(model, data.x_train, data.y_train, cfg.check_chunk).value
    record = make_record(cfg, data, state, device, test_loss, test_acc,
                         wall_s=state.wall_before + time.perf_counter() - t_start, loop_s=loop_s)
    if window is not None:
        record["train_loss_full"] = finite_or_none(train_loss_full)
    return record


def restore(saved: dict, model, optimizer, window: EpochWindow | None) -> RunState:
    """A checkpoint's state loaded into the run's objects; one that does not fit starts the run over."""
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    try:  # the likeliest misfits first, before anything is changed
        state = RunState(**saved["state"])
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


def loss_text(loss: float | None, exact: bool, minibatch_loss: float) -> str:
    """What a check found: the training loss, a lower bound of it (early exit), or only the minibatch mean."""
    if loss is None:
        return f"L_B~{minibatch_loss:.4g}"
    return f"L={loss:.4g}" if exact else f"L>={loss:.4g}"


def check_training_loss(cfg: RunConfig, state: RunState, model: torch.nn.Module, data: datasets.Data,
                        minibatch_loss: float, window: EpochWindow | None = None,
                        exact_at_end: bool = True) -> tuple[float | None, bool]:
    """One check of "the training loss": by default L(w) over the training set, a lower bound of it (early
    exit) or None (gated); with --stop-loss epoch_mean / ne_epoch_mean, the mean over the last epoch.

    README, 'Loss checks': the cheap running estimate gates the full pass; the pass stops early once its
    partial sum proves L is above the next target; the last step always gets an exact value.
    """
    if not math.isfinite(minibatch_loss):  # the weights are gone
        return float("nan"), True
    if window is not None:
        return window.mean(ne=cfg.effective_stop_loss == "ne_epoch_mean"), True
    l_star, l_star_star = cfg.target_losses
    target = l_star_star if state.halved_at is not None else l_star
    final = exact_at_end and state.step == cfg.max_steps
    allowance = cfg.check_budget * 3 * state.step * cfg.samples_per_step(data.n_train)  # backward ~ 2 forwards
    # the budget charges every check a whole pass, so early exit and chunking never change which checks run
    spent = state.check_passes * data.n_train
    if not (final or full_check_due(minibatch_loss, target, cfg.check_gate, spent, allowance)):
        return None, False
    state.check_passes += 1
    stop_at = target if cfg.check_early_exit and not final else None
    loss, exact, evaluated = dataset_loss(model, data.x_train, data.y_train, cfg.check_chunk, stop_at)
    state.check_samples += evaluated
    return loss, exact


def make_record(cfg: RunConfig, data: datasets.Data, state: RunState, device: torch.device, test_loss: float,
                test_acc: float, wall_s: float, loop_s: float) -> dict:
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
        "loop_s": loop_s,  # this segment's training loop, steps and checks (what `nerepro bench` times)
        "check_s": state.check_s,
        "check_samples": state.check_samples,
        "resumes": state.resumes,
        "config": cfg.record_config(),
        "provenance": {**provenance(device), "compile": fastpath.compile_mode(cfg.compile, device, cfg.network)},
        "curve": state.curve,
    }
