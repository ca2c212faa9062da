"""Shared fixtures: the real Fashion-MNIST when present, synthetic data, generated CIFAR files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nerepro.data import Data

REPO = Path(__file__).resolve().parents[1]
DECISIONS = ("status", "steps", "convergence_steps", "lr_halved_step")
TIMES = ("wall_s", "cpu_s", "loop_s", "check_s", "provenance")  # record fields two runs of one config differ in
EQ1 = dict(stop_loss="full", sampling="independent", adam_update="pytorch")  # the Eq. (1) reading (but its cadence)


def assert_same_run(packed, alone, rel=1e-8):
    """Two float64 computations of one run: every decision at the same step, every loss to float64 rounding
    (grown by Adam over the run: ~1e-11 measured)."""
    assert {k: packed[k] for k in DECISIONS} == {k: alone[k] for k in DECISIONS}
    assert packed["curve"]["step"] == alone["curve"]["step"]
    assert packed["curve"]["exact"] == alone["curve"]["exact"]  # the same checks ran, gated and exact alike
    assert packed["curve"]["lr"] == alone["curve"]["lr"]
    for key in ("minibatch_loss", "train_loss"):  # None where a check was gated off, in both
        for p, a in zip(packed["curve"][key], alone["curve"][key]):
            assert (p is None and a is None) or p == pytest.approx(a, rel=rel, nan_ok=True), (key, p, a)
    assert packed["test_acc"] == alone["test_acc"]
    assert packed["test_loss"] == pytest.approx(alone["test_loss"], rel=rel)


def fashion_mnist_root() -> Path | None:
    """A data directory holding the real Fashion-MNIST ($NEREPRO_DATA, else ../shared/data), or None."""
    for candidate in (os.environ.get("NEREPRO_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "FashionMNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def fmnist_root() -> Path:
    root = fashion_mnist_root()
    if root is None:
        pytest.skip("real Fashion-MNIST not available (set NEREPRO_DATA)")
    return root


def synthetic_data(n_train: int = 200, n_test: int = 100, classes: int = 10, shape=(1, 28, 28), seed: int = 0,
                   noise: float = 0.3) -> Data:
    """Images in [0, 1] whose class sets a mean pattern: learnable to L** in a few hundred steps."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((classes, *shape), generator=g)

    def split(n):
        y = torch.arange(n) % classes
        x = (prototypes[y] + noise * torch.randn((n, *shape), generator=g)).clamp(0, 1)
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return Data("synthetic", xtr, ytr, xte, yte, classes)


def train_killed_at(cfg, data: Data, checkpoint: Path, step: int) -> None:
    """Train `cfg`, checkpointing at every check, until an exception at the check of `step` kills the run."""
    from nerepro import train

    class Killed(Exception):
        pass

    def crash(at, loss):
        if at == step:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, data=data, checkpoint=checkpoint, checkpoint_every_s=0, progress=crash)


def write_cifar(root: Path, name: str, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """Tiny CIFAR-10/100 files in torchvision's pickle layout (5 train batches + test batch + meta)."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"

    def dump(fname, n):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, classes, n))}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)

    if name == "cifar10":
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5)
        dump("test_batch", n_test)
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(classes)]})
    else:
        dump("train", n_train)
        dump("test", n_test)
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(classes)]})
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f)
    return root


def write_fashion_mnist(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Tiny learnable Fashion-MNIST-format IDX files (uncompressed, as torchvision leaves them after download)."""
    data = synthetic_data(n_train, n_test, seed=seed, noise=0.6)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    for prefix, x, y in (("train", data.x_train, data.y_train), ("t10k", data.x_test, data.y_test)):
        idx(raw / f"{prefix}-images-idx3-ubyte", (x[:, 0] * 255).round().numpy())
        idx(raw / f"{prefix}-labels-idx1-ubyte", y.numpy())
    return root


@pytest.fixture
def fake_fmnist_root(tmp_path) -> Path:
    return write_fashion_mnist(tmp_path / "data")


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A data directory with generated CIFAR-10 and CIFAR-100; torchvision's md5 checks patched (tests only)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    root = tmp_path / "data"
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100", n_train=200, n_test=50)
    return root
