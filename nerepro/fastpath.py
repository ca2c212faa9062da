"""How a run uses its device: backend flags, memory format, compilation and precision (README, 'Performance').

None of these changes what a step computes, only how: the tests compare each against the plain path.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "tf32", "bf16", "fp64")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def configure_backends(device: torch.device, precision: str = "fp32") -> None:
    """cuDNN autotuning, and TF32 for convolutions; matmuls (F1 and the dense layers) stay fp32 unless the
    run's precision is tf32 (a speed option, in the run id: about 10 bits of mantissa in the products)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def channels_last(network: str, device: torch.device) -> bool:
    """The CNNs run in NHWC on CUDA, where cuDNN's fastest convolution kernels want it."""
    return device.type == "cuda" and network in ("C1", "C2")


def place(model: nn.Module, network: str, device: torch.device, precision: str = "fp32") -> nn.Module:
    model = model.to(device, dtype(precision))
    return model.to(memory_format=torch.channels_last) if channels_last(network, device) else model


def inputs(x: torch.Tensor, network: str, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last(network, device) else x


COMPILED_SHAPES = 64  # compiled graphs kept per process: every (network, batch shape) of a sweep worker


def compile_mode(requested: str, device: torch.device, network: str) -> str:
    """'auto': torch.compile for the CNNs on CUDA (their runs take minutes to hours, so compiling once per
    shape pays); F1 stays eager (its steps are a few small matmuls and its runs seconds on a GPU); the CPU
    stays eager."""
    if requested == "auto":
        return "default" if device.type == "cuda" and network in ("C1", "C2") else "off"
    return requested


def compiled(model: nn.Module, mode: str, backend: str | Callable = "inductor"):
    """The model's training forward, compiled unless mode is 'off', with static shapes: each batch shape
    (B, or 2B with NE) gets its own graph, compiled once per process and reused by later runs of the same
    network and shape. Without `dynamic=False` a second B in one process would trigger a dynamic-shape
    recompilation through the ghost-batch view, which takes minutes for C1/C2."""
    if mode == "off":
        return model
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, COMPILED_SHAPES)
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = max(config.recompile_limit, COMPILED_SHAPES)
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False, backend=backend)


def dtype(precision: str) -> torch.dtype:
    """The dtype of a run's weights, inputs and optimizer state: float64 for "fp64" (a numerical reference,
    with which two computations of one run agree to float64 rounding over a whole run), else float32."""
    return torch.float64 if precision == "fp64" else torch.float32


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Logits and losses are computed in fp32 or wider: bf16 goes up to fp32, fp64 stays fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def autocast(precision: str, device: torch.device):
    """bf16 autocast for the network body; weights, optimizer state, logits and loss stay fp32 (fp64: no
    autocast, everything float64)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
