"""Packed training: several F1 runs computed together, their weights stacked layer by layer (README, 'Packs').

F1's steps are a few small matmuls, so one run leaves a GPU waiting on kernel launches and Python. A pack
of R runs of the same network, B and settings (differing in seed and alpha) does each step as R batched
matmuls (`torch.baddbmm` over the runs' stacked weights) on each run's own minibatch, and each loss check
as one pass over the training set for all the runs that need it. Each run keeps its own model, optimizer,
sampler, schedule and record (train.py); only the arithmetic is batched, so a run's record does not
depend on its pack beyond rounding.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig
from .fastpath import at_least_fp32
from .models import MLP
from .schedule import LossCheck


def packable(cfg: RunConfig) -> bool:
    """Runs that can share a pack: F1 (an MLP) with a minibatch reference (Eq. 6)."""
    return cfg.network == "F1" and cfg.effective_reference == "minibatch"


def pack_key(cfg: RunConfig) -> RunConfig:
    """Runs with equal keys can be trained as one pack: every setting the same but the seed and alpha (and
    alpha = 1 apart, whose steps read B samples, not 2B)."""
    return cfg.replace(seed=0, alpha=1.0 if cfg.alpha == 1 else 2.0)


def check_pack(cfgs: list[RunConfig]) -> None:
    if len(cfgs) > 1 and not (all(packable(c) for c in cfgs) and len({pack_key(c) for c in cfgs}) == 1):
        raise ValueError("a pack holds F1 runs that differ only in seed and alpha (alpha = 1 and alpha != 1 "
                         "apart): " + ", ".join(c.run_id for c in cfgs))


def _layers(model: MLP) -> list[nn.Linear]:
    return [m for m in model.hidden if isinstance(m, nn.Linear)] + [model.output]


def stacked_layers(models: list[MLP], leaves: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's weights (R, out, in) and biases (R, 1, out) of R MLPs, stacked. With `leaves` they are new
    leaf tensors: backward fills one gradient per layer for the whole pack, which `give_grads` hands to each
    model as views (autograd through the stack would copy every run's gradient out of it, per parameter)."""
    layers = [_layers(m) for m in models]
    stacks = []
    for depth in range(len(layers[0])):
        weight = torch.stack([ls[depth].weight for ls in layers])
        bias = torch.stack([ls[depth].bias for ls in layers]).unsqueeze(1)
        if leaves:
            weight, bias = weight.detach().requires_grad_(), bias.detach().requires_grad_()
        stacks.append((weight, bias))
    return stacks


def give_grads(models: list[MLP], stacks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """After backward through `stacked_layers(models, leaves=True)`: each parameter's .grad is its run's slice."""
    for depth, (weight, bias) in enumerate(stacks):
        for m, grad_w, grad_b in zip(models, weight.grad.unbind(0), bias.grad.squeeze(1).unbind(0)):
            layer = _layers(m)[depth]
            layer.weight.grad, layer.bias.grad = grad_w, grad_b


def pack_logits(stacks: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, shared: bool = False
                ) -> torch.Tensor:
    """Logits (R, n, classes) of R MLPs given as their `stacked_layers`: on their own inputs x (R, n, ...), or
    with `shared` on the same x (n, ...). Hidden layers follow the autocast dtype; the output layer runs in
    fp32 or wider (fp64 runs), as `fp32_output` does."""
    h = x.reshape(x.shape[0], -1) if shared else x.reshape(x.shape[0], x.shape[1], -1)
    for depth, (weight, bias) in enumerate(stacks):
        last = depth == len(stacks) - 1
        with torch.autocast(x.device.type, enabled=False) if last else contextlib.nullcontext():
            if last:
                h, weight, bias = at_least_fp32(h), at_least_fp32(weight), at_least_fp32(bias)
            if h.dim() == 2:  # a shared input: one matmul against every run's weights, bias in the same op
                runs, width = weight.shape[:2]
                h = F.linear(h, weight.flatten(0, 1), bias.flatten()).view(len(h), runs, width).transpose(0, 1)
            else:
                h = torch.baddbmm(bias, h, weight.transpose(1, 2))
        if not last:
            h = torch.relu(h)
    return h


def pack_objective(models: list[MLP], x: torch.Tensor, y: torch.Tensor, n_first: int, alphas: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Eq. (6) for each run of a pack: x (R, n, ...), y (R, n) hold each run's [B; B'] (B the first
    `n_first` samples); returns (objectives, L_B), each (R,), and the stacked weights they were computed with.
    The runs share no weights, so `backward_pack` gives each run alpha grad L_B + (1 - alpha) grad L_B'."""
    stacks = stacked_layers(models, leaves=True)
    logits = pack_logits(stacks, x)
    per_sample = F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), y.flatten(), reduction="none").view(y.shape)
    loss_b = per_sample[:, :n_first].mean(1)
    objective = loss_b if y.shape[1] == n_first else \
        alphas * loss_b + (1 - alphas) * per_sample[:, n_first:].mean(1)  # alpha = 1 reads B only
    return objective, loss_b, stacks


def backward_pack(models: list[MLP], objective: torch.Tensor, stacks) -> None:
    """Each run's gradient of its own objective into its model's parameters' .grad."""
    objective.sum().backward()
    give_grads(models, stacks)


@torch.inference_mode()
def pack_dataset_loss(models: list[MLP], x: torch.Tensor, y: torch.Tensor, chunk: int,
                      stop_at: list[float | None]) -> list[LossCheck]:
    """`schedule.dataset_loss` for several runs in one pass over (x, y): each chunk is forwarded once for all
    runs still undecided; a run with a `stop_at` leaves the pass as soon as its partial sum proves L >= stop_at
    (a lower bound, exact=False), exactly as it would alone."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        n, active = len(x), list(range(len(models)))
        totals = torch.zeros(len(models), dtype=torch.float64, device=x.device)
        found: dict[int, LossCheck] = {}
        stacks = stacked_layers(models)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            logits = pack_logits(stacks, x[start:end], shared=True)
            losses = F.cross_entropy(at_least_fp32(logits.flatten(0, 1)), y[start:end].repeat(len(active)),
                                     reduction="none").view(len(active), -1).sum(1).double()
            totals[active] += losses
            if end < n and any(stop_at[i] is not None for i in active):
                partial = (totals / n).tolist()
                for i in list(active):
                    if not math.isfinite(partial[i]):
                        found[i] = LossCheck(partial[i], True, end)
                    elif stop_at[i] is not None and partial[i] >= stop_at[i]:
                        found[i] = LossCheck(partial[i], False, end)
                    else:
                        continue
                    active.remove(i)
                if not active:
                    break
                if len(active) < len(stacks[0][0]):  # the runs decided leave the pass
                    stacks = stacked_layers([models[i] for i in active])
        final = (totals / n).tolist()
        return [found.get(i, LossCheck(final[i], True, n)) for i in range(len(models))]
    finally:
        for m, training in zip(models, was):
            m.train(training)
