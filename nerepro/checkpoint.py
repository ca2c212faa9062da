"""Checkpoints of a run in progress, written atomically, so a killed run continues where it was."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from .record import replace_atomically

FORMAT = 2  # 2: no sampler state (minibatches are a function of the step: sampling.py)


def save_checkpoint(path: Path, run_id: str, model, optimizer, state: dict, **beside) -> None:
    """Model, optimizer and run state, replaced atomically; `beside`: more entries of the saved dict, which code
    that does not know them ignores (train.BOOKKEEPING)."""
    device_type = next(model.parameters()).device.type
    saved = {"format": FORMAT, "run_id": run_id, "device_type": device_type, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "state": state, **beside}
    replace_atomically(path, lambda tmp: torch.save(saved, tmp))


def load_checkpoint(path: Path, run_id: str, device: torch.device) -> dict | None:
    """The checkpoint of `run_id` at `path`, or None if there is none or it cannot be used (then: start over)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # a truncated or foreign file: the run starts over rather than fails
        warnings.warn(f"ignoring unreadable checkpoint {path} ({type(e).__name__}); the run starts over")
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("run_id") != run_id:
        warnings.warn(f"ignoring checkpoint {path}: it belongs to another run or version")
        return None
    if saved.get("device_type", device.type) != device.type:  # kernels round differently: one run, one device type
        warnings.warn(f"ignoring checkpoint {path}: written on {saved.get('device_type')}, running on {device.type}")
        return None
    return saved


def checkpoint_step(path: Path, run_id: str) -> tuple[int, str] | None:
    """(step, device type) of a checkpoint of `run_id` that this version can continue from, or None where it is
    missing, unreadable, of another run or of another format. Read as weights only (tensors and plain data, no
    code): a kept copy that arrived from elsewhere is vetted by this before a sweep restores it."""
    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
        if saved.get("format") != FORMAT or saved.get("run_id") != run_id:
            return None
        return int(saved["state"]["step"]), str(saved.get("device_type", "cpu"))
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: nothing to continue from
        return None


def copy_atomic(source: Path, target: Path) -> None:
    """Copy `source` to `target` atomically (replace_atomically): never half a file."""
    replace_atomically(target, lambda tmp: shutil.copyfile(source, tmp))
