"""The paper's three networks (Sec. 3): F1 (MLP), C1 and C2 (VGG-like with ghost batch norm).

Readings of what the paper leaves open are rows of the README's protocol table: 'same' padding,
Conv -> ghost batch norm -> ReLU, Keras' batch-norm defaults, Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class GhostBatchNorm(nn.Module):
    """Batch norm whose training statistics come from groups of `ghost_size` consecutive samples.

    Each group is normalised with its own biased mean and variance (Hoffer et al., 2017). The moving
    averages used at inference are updated once per forward with the mean over groups of the group means
    and of the unbiased group variances (with one group this is exactly `nn.BatchNorm2d`).
    """

    def __init__(self, channels: int, ghost_size: int = 100, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__()
        self.ghost_size, self.eps, self.momentum = ghost_size, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        n, c = x.shape[:2]
        if n % self.ghost_size:
            raise ValueError(f"batch of {n} cannot be split into ghost batches of {self.ghost_size}")
        groups = x.view(n // self.ghost_size, self.ghost_size, *x.shape[1:])
        # statistics and normalisation in fp32 (under bf16 autocast too: a bf16 sum over 100 x H x W values
        # loses digits, and the running statistics stay fp32); the output keeps the input's dtype, so bf16
        # activations stay bf16 between the convolutions (torch.compile fuses the casts away)
        exact = groups.to(torch.promote_types(groups.dtype, torch.float32))
        dims = (1, *range(3, groups.ndim))
        var, mean = torch.var_mean(exact, dim=dims, correction=0, keepdim=True)
        shape = (1, 1, c) + (1,) * (x.ndim - 2)
        scale = self.weight.view(shape) * torch.rsqrt(var + self.eps)
        out = ((exact - mean) * scale + self.bias.view(shape)).to(x.dtype)
        with torch.no_grad():
            count = groups[0].numel() // c
            self.running_mean.lerp_(mean.mean(0).flatten(), self.momentum)
            self.running_var.lerp_(var.mean(0).flatten() * (count / max(count - 1, 1)), self.momentum)
        return out.reshape(x.shape)


def fp32_output(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """The output layer in fp32 even under bf16 autocast, so logits and loss keep full precision."""
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.to(layer.weight.dtype))


def conv_block(c_in: int, c_out: int, norm: Callable[[int], nn.Module]) -> list[nn.Module]:
    """3x3 convolution, stride 1, 'same' padding -> ghost batch norm -> ReLU.

    No convolution bias: batch norm subtracts each group's mean, so its gradient is exactly zero.
    """
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True)]


class VGGLike(nn.Module):
    """Stacks of n x [a, 3, 3, 1] convolutions, each stack followed by MaxPool(2) (Sec. 3, after Keskar et al.)."""

    def __init__(self, stacks: list[tuple[int, int]], hidden: int | None, num_classes: int,
                 ghost_batch_size: int = 100, bn_eps: float = 1e-3, bn_momentum: float = 0.01, image_size: int = 32):
        super().__init__()
        norm = lambda c: GhostBatchNorm(c, ghost_batch_size, bn_eps, bn_momentum)  # noqa: E731
        layers, c_in = [], 3
        for n, c_out in stacks:
            for _ in range(n):
                layers += conv_block(c_in, c_out, norm)
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = c_in * (image_size // 2 ** len(stacks)) ** 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
            flat = hidden
        self.classifier = nn.Sequential(*head)
        self.output = nn.Linear(flat, num_classes)  # softmax lives in the cross-entropy loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_output(self.output, self.classifier(self.features(x)))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images."""

    def __init__(self, n_in: int, hidden: list[int], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU(inplace=True)]
            n_in = width
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(n_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_output(self.output, self.hidden(x))


def f1(**_) -> nn.Module:
    """F1: 784-500x7-10, ReLU, no normalisation (Fashion-MNIST)."""
    return MLP(28 * 28, [500] * 7, 10)


def c1(**bn) -> nn.Module:
    """C1: 3x[64,3,3,1], 3x[128,3,3,1], 3x[256,3,3,1], MaxPool(2) after each stack, 10 outputs (CIFAR-10)."""
    return VGGLike([(3, 64), (3, 128), (3, 256)], None, 10, **bn)


def c2(**bn) -> nn.Module:
    """C2: C1's stacks plus 2x[512,3,3,1], a 1024-unit ReLU dense layer, 100 outputs (CIFAR-100).

    The paper prints 10 output neurons; CIFAR-100 has 100 classes, the only reading that can train.
    """
    return VGGLike([(3, 64), (3, 128), (3, 256), (2, 512)], 1024, 100, **bn)


MODELS: dict[str, Callable[..., nn.Module]] = {"F1": f1, "C1": c1, "C2": c2}


def glorot_init_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Glorot-uniform weights and zero biases for every linear and convolutional layer (Sec. 3)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_model(name: str, seed: int | None = None, ghost_batch_size: int = 100, bn_eps: float = 1e-3,
                bn_momentum: float = 0.01) -> nn.Module:
    """A freshly initialised F1, C1 or C2 on the CPU; `seed` makes the initialisation reproducible."""
    if name not in MODELS:
        raise ValueError(f"unknown network {name!r}: choose one of {', '.join(MODELS)}")
    model = MODELS[name](ghost_batch_size=ghost_batch_size, bn_eps=bn_eps, bn_momentum=bn_momentum)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return glorot_init_(model, generator)


def ghost_batch_sizes(model: nn.Module) -> set[int]:
    """The ghost-batch sizes a model's batch norms split their input into (empty for F1)."""
    return {m.ghost_size for m in model.modules() if isinstance(m, GhostBatchNorm)}
