"""The L*/L** schedule of Sec. 3 and the loss checks that drive it."""

from __future__ import annotations

import math
from enum import Enum
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fastpath import at_least_fp32


class Action(str, Enum):
    CONTINUE = "continue"
    HALVE = "halve"  # first check with L < L*: halve the learning rate, once
    STOP = "stop"  # first check with L < L**: converged; convergence time = this step
    DIVERGE = "diverge"  # a non-finite loss


def next_action(loss: float, halved: bool, l_star: float, l_star_star: float) -> Action:
    """Sec. 3: 'we halve the learning rate when the training loss reaches L*. Training finishes when the
    training loss becomes smaller than L**' (Table 1 gives L*, L**)."""
    if not math.isfinite(loss):
        return Action.DIVERGE
    if loss < l_star_star:
        return Action.STOP
    if not halved and loss < l_star:
        return Action.HALVE
    return Action.CONTINUE


def full_check_due(minibatch_loss: float, target: float, gate: float, spent: int, allowance: float) -> bool:
    """Whether this check evaluates L(w) over the training set (README, 'Loss checks').

    Dense once the cheap running estimate (the mean minibatch loss since the last check) is within
    `gate` times the next target, or always with gate 0; before that, only while the samples forwarded
    by full checks stay within `allowance` (a fixed share of the training forward-equivalents).
    """
    if gate == 0 or not math.isfinite(minibatch_loss):
        return True
    return minibatch_loss < gate * target or spent < allowance


class EpochWindow:
    """The minibatch losses L_B and NE losses alpha L_B + (1 - alpha) L_B' of the last `size` steps (one
    epoch) of each of `runs` runs trained in step (a pack), kept on the device: the `epoch_mean` and
    `ne_epoch_mean` readings of "the training loss"."""

    def __init__(self, size: int, device: torch.device, runs: int = 1, dtype: torch.dtype = torch.float32):
        self.size, self.count = size, 0
        self.values = torch.zeros(runs, 2, size, device=device, dtype=dtype)

    def add(self, loss_b: torch.Tensor, loss_ne: torch.Tensor) -> None:
        """One step's losses: scalars for one run, (runs,) tensors for a pack."""
        self.values[:, :, self.count % self.size] = torch.stack([loss_b, loss_ne], -1).to(self.values.dtype).view(-1, 2)
        self.count += 1

    def means(self, ne: bool) -> list[float]:
        """Each run's mean over the last epoch (or over the steps so far, before the first epoch is complete)."""
        return self.values[:, int(ne), :min(self.count, self.size)].mean(1).tolist()

    def running(self, ne: bool) -> torch.Tensor:
        """Each run's mean since the current epoch began (the epoch's mean at its last step), on the device.
        Epochs begin every `size` steps from step 0: the window is kept from a run's first step."""
        return self.values[:, int(ne), :(self.count - 1) % self.size + 1].mean(1)

    def last(self, ne: bool) -> torch.Tensor:
        """Each run's value at the step just taken, on the device."""
        return self.values[:, int(ne), (self.count - 1) % self.size]

    def reading(self, stop_loss: str) -> torch.Tensor:
        """The per-step readings: "step" (the step's NE loss) or "running" (its epoch's running mean)."""
        return self.last(ne=True) if stop_loss == "step" else self.running(ne=True)

    def keep(self, runs: list[int]) -> None:
        """Only these runs from now on (the others left the pack)."""
        self.values = self.values[runs]

    def state_dict(self, run: int = 0) -> dict:
        return {"values": self.values[run].cpu(), "count": self.count}

    def load_state_dict(self, state: dict, run: int = 0) -> None:
        self.values[run].copy_(state["values"])
        self.count = state["count"]


class LossCheck(NamedTuple):
    value: float  # L(w), or a lower bound of it when not exact
    exact: bool
    evaluated: int  # samples forwarded (the check's cost)


@torch.inference_mode()
def dataset_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int,
                 stop_at: float | None = None) -> LossCheck:
    """L(w) of Eq. (1): mean cross-entropy over (x, y), model in inference mode, `chunk` samples a pass.

    With `stop_at`, the pass ends as soon as its partial sum alone proves L >= stop_at (per-sample losses
    are non-negative) and returns that lower bound with exact=False: next_action decides exactly as it
    would on the full value, at a fraction of the cost while the loss is far above the target.
    """
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        n = len(x)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            total += F.cross_entropy(at_least_fp32(model(x[start:end])), y[start:end], reduction="sum").double()
            if stop_at is not None and end < n:
                partial = total.item() / n
                if not math.isfinite(partial):
                    return LossCheck(partial, True, end)
                if partial >= stop_at:
                    return LossCheck(partial, False, end)
        return LossCheck(total.item() / n, True, n)
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) over (x, y) in inference mode."""
    was_training = model.training
    model.eval()
    try:
        loss = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        for start in range(0, len(x), chunk):
            logits = at_least_fp32(model(x[start:start + chunk]))
            target = y[start:start + chunk]
            loss += F.cross_entropy(logits, target, reduction="sum").double()
            correct += (logits.argmax(1) == target).sum()
        return loss.item() / len(x), 100.0 * correct.item() / len(x)
    finally:
        model.train(was_training)
