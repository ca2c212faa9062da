"""How a run uses its device: backend flags, memory format, compilation and precision (README, 'Performance').

None of these changes what a step computes, only how: the tests compare each against the plain path.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning, and TF32 for convolutions (not for matmuls: F1 and the dense layers stay fp32)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False


def channels_last(network: str, device: torch.device) -> bool:
    """The CNNs run in NHWC on CUDA, where cuDNN's fastest convolution kernels want it."""
    return device.type == "cuda" and network in ("C1", "C2")


def place(model: nn.Module, network: str, device: torch.device) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last(network, device) else model


def inputs(x: torch.Tensor, network: str, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last(network, device) else x


def compile_mode(requested: str, device: torch.device) -> str:
    """'auto': torch.compile on CUDA (fused kernels, fewer launches), eager on the CPU."""
    if requested == "auto":
        return "default" if device.type == "cuda" else "off"
    return requested


def compiled(model: nn.Module, mode: str):
    """The model's training forward, compiled unless mode is 'off'. Dynamo caches by code, so later runs of
    the same network and shape in this process reuse the compiled graph."""
    if mode == "off":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def autocast(precision: str, device: torch.device):
    """bf16 autocast for the network body; weights, optimizer state, logits and loss stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
