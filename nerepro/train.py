"""One training run to the paper's stopping rule: `train(cfg) -> record`."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from . import data as datasets
from .config import RunConfig
from .errors import ConfigError
from .gradient import ne_objective
from .models import build_model
from .record import finite_or_none, provenance
from .sampling import IndependentSampler
from .schedule import Action, dataset_loss, evaluate, full_check_due, next_action

Progress = Callable[[int, float], None]  # called at every check with (step, checked training loss)


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


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """Adam with Keras' defaults (Sec. 3: 'the Adam optimizer with the default hyperparameters'), or SGD."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=cfg.adam_eps, foreach=True)
    return torch.optim.SGD(params, lr=cfg.learning_rate, foreach=True)


def prepare_data(cfg: RunConfig, data: datasets.Data | None, device: torch.device,
                 data_dir: str | None = None) -> datasets.Data:
    """The run's dataset on its device, cut to --subset; checks that B fits the training set."""
    if data is None:
        data = datasets.load(datasets.NETWORK_DATASET[cfg.network], data_dir, device)
    data = data.subset(cfg.subset).to(device)
    if cfg.batch_size > data.n_train:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the {data.n_train} training samples: lower it")
    return data


def train(cfg: RunConfig, data: datasets.Data | None = None, data_dir: str | None = None,
          progress: Progress | None = None) -> dict:
    """Train one network with noise enhancement (Eq. 6) until L < L** (Sec. 3) and return its record."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = prepare_data(cfg, data, device, data_dir)
    model = build_model(cfg.network, seed=cfg.seed, ghost_batch_size=cfg.ghost_batch_size, bn_eps=cfg.bn_eps,
                        bn_momentum=cfg.bn_momentum).to(device).train()
    optimizer = make_optimizer(cfg, model.parameters())
    sampler = IndependentSampler(data.n_train, cfg.batch_size, device, cfg.seed, second=cfg.alpha != 1)
    l_star, l_star_star = cfg.target_losses

    step, halved_at, status, check_s, check_samples = 0, None, "not_converged", 0.0, 0
    curve = {"step": [], "train_loss": [], "exact": [], "minibatch_loss": [], "lr": []}
    minibatch_sum, since_check = torch.zeros((), device=device), 0
    while step < cfg.max_steps:
        idx = sampler.draw()
        objective, loss_b, _ = ne_objective(model, data.x_train[idx], data.y_train[idx], cfg.batch_size, cfg.alpha)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        minibatch_sum += loss_b.detach()  # stays on the device: no host sync inside the step
        step, since_check = step + 1, since_check + 1
        if step % cfg.check_every and step < cfg.max_steps:
            continue

        t_check = time.perf_counter()
        minibatch_loss = minibatch_sum.item() / since_check  # the one host sync per check_every steps
        minibatch_sum.zero_()
        since_check = 0
        target = l_star_star if halved_at is not None else l_star
        final = step == cfg.max_steps
        allowance = cfg.check_budget * 3 * step * cfg.samples_per_step  # a backward costs ~2 forwards
        loss, exact = None, False  # a gated check: the running estimate says L is far above the target
        if not math.isfinite(minibatch_loss):  # the weights are gone
            loss, exact = float("nan"), True
        elif final or full_check_due(minibatch_loss, target, cfg.check_gate, check_samples, allowance):
            stop_at = target if cfg.check_early_exit and not final else None
            loss, exact, evaluated = dataset_loss(model, data.x_train, data.y_train, cfg.check_chunk, stop_at)
            check_samples += evaluated
        action = Action.CONTINUE if loss is None else next_action(loss, halved_at is not None, l_star, l_star_star)
        if action is Action.HALVE:
            halved_at = step
            for group in optimizer.param_groups:
                group["lr"] = cfg.learning_rate / 2
        lr_now = optimizer.param_groups[0]["lr"]
        for key, value in zip(curve, (step, finite_or_none(loss), exact, finite_or_none(minibatch_loss), lr_now)):
            curve[key].append(value)
        check_s += time.perf_counter() - t_check
        if progress:
            progress(step, minibatch_loss if loss is None else loss)
        if action is Action.STOP:
            status = "converged"
            break
        if action is Action.DIVERGE:
            status = "diverged"
            break

    test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg.check_chunk)
    last_exact = [l for l, e in zip(curve["train_loss"], curve["exact"]) if e]
    return {
        "run_id": cfg.run_id,
        "network": cfg.network,
        "dataset": data.name,
        "alpha": float(cfg.alpha),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "lr": cfg.learning_rate,
        "check_every": cfg.check_every,
        "subset": cfg.subset,
        "n_train": data.n_train,
        "status": status,
        "convergence_steps": step if status == "converged" else None,
        "steps": step,
        "samples_processed": step * cfg.samples_per_step,
        "lr_halved_step": halved_at,
        "train_loss": last_exact[-1] if last_exact else None,
        "test_acc": finite_or_none(test_acc) if status != "diverged" else None,
        "test_loss": finite_or_none(test_loss),
        "wall_s": time.perf_counter() - t_start,
        "check_s": check_s,
        "check_samples": check_samples,
        "config": {**cfg.to_dict(), **cfg.result_fields()},
        "provenance": provenance(device),
        "curve": curve,
    }
