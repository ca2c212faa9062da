"""The noise-enhanced gradient, Eq. (6): follow alpha * grad L_B + (1 - alpha) * grad L_B'."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fastpath import at_least_fp32
from .models import ghost_batch_sizes

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> per-sample losses


def per_sample_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(at_least_fp32(logits), targets, reduction="none")


def ne_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_first: int, alpha: float,
                 loss_fn: LossFn = per_sample_cross_entropy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward over the concatenation x = [B; B'] (B = the first `n_first` rows).

    Returns (objective, L_B, L_B'): objective = alpha * L_B + (1 - alpha) * L_B', i.e. per-sample weights
    alpha/|B| on B and (1 - alpha)/|B'| on B', so its gradient is exactly Eq. (6). Ghost batches never mix
    B and B' because |B| is a multiple of the ghost-batch size. At alpha = 1 only B is evaluated.
    """
    if alpha == 1:
        loss_b = loss_fn(model(x[:n_first]), y[:n_first]).mean()
        return loss_b, loss_b, None
    if model.training:
        for g in ghost_batch_sizes(model):
            if n_first % g or (len(x) - n_first) % g:
                raise ValueError(f"|B|={n_first} and |B'|={len(x) - n_first} must be multiples of the "
                                 f"ghost-batch size {g}, or ghost batches would mix B and B'")
    per_sample = loss_fn(model(x), y)
    loss_b, loss_b_prime = per_sample[:n_first].mean(), per_sample[n_first:].mean()
    return alpha * loss_b + (1 - alpha) * loss_b_prime, loss_b, loss_b_prime


def accumulate_full_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0,
                             chunk: int = 10_000) -> None:
    """Add scale * grad L(w) of Eq. (1) over all of (x, y) to the parameters' .grad, chunk by chunk, in
    training mode (for C1/C2 each chunk's ghost batches are consecutive samples); batch-norm running
    statistics are left as they were."""
    buffers = [b.clone() for b in model.buffers()]
    n = len(x)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        (ne_objective(model, x[start:end], y[start:end], end - start, 1.0)[0] * (scale * (end - start) / n)).backward()
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)


def noise_enhanced_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                        batch_prime: tuple[torch.Tensor, torch.Tensor] | None, alpha: float,
                        loss_fn: LossFn = per_sample_cross_entropy) -> torch.Tensor:
    """A scalar whose gradient is alpha * grad L_B + (1 - alpha) * grad L_B' (Eq. 6), in one forward/backward.

    `batch` and `batch_prime` are (inputs, targets) of two independent minibatches; `loss_fn` maps
    (logits, targets) to per-sample losses. At alpha = 1 `batch_prime` is not used (it may be None).
    """
    x, y = batch
    if alpha == 1:
        return ne_objective(model, x, y, len(x), 1.0, loss_fn)[0]
    if batch_prime is None:
        raise ValueError("alpha != 1 needs a second minibatch batch_prime")
    x2, y2 = batch_prime
    return ne_objective(model, torch.cat([x, x2]), torch.cat([y, y2]), len(x), alpha, loss_fn)[0]
