"""Datasets as whole tensors on the training device (Sec. 3: no augmentation; inputs scaled to [0, 1]).

Files follow torchvision's layout under the data directory, so `torchvision.datasets` downloads them
(with md5 checks) and anything torchvision already fetched is reused.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torchvision.datasets.utils import check_integrity

from .errors import DataError

DEFAULT_DATA_DIR = Path("~/.cache/nerepro/data").expanduser()

# CLI name -> (display name, torchvision class, folder under the data directory)
DATASETS = {
    "fashion-mnist": ("Fashion-MNIST", tvd.FashionMNIST, "FashionMNIST"),
    "cifar10": ("CIFAR-10", tvd.CIFAR10, "cifar-10-batches-py"),
    "cifar100": ("CIFAR-100", tvd.CIFAR100, "cifar-100-python"),
}
NETWORK_DATASET = {"F1": "fashion-mnist", "C1": "cifar10", "C2": "cifar100"}


@dataclass(frozen=True)
class Data:
    """Train and test splits as float32 images in [0, 1], (N, C, H, W), and int64 labels, on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def subset(self, n: int | None) -> "Data":
        """The first n training samples (views, no copy); the test split is kept whole."""
        if n is None or n == self.n_train:
            return self
        if n > self.n_train:
            raise DataError(f"--subset {n} exceeds the {self.n_train} training samples of {self.name}")
        return Data(self.name, self.x_train[:n], self.y_train[:n], self.x_test, self.y_test, self.num_classes)

    def map_inputs(self, fn) -> "Data":
        """The same data with `fn` applied to both splits' inputs (e.g. a memory-format change)."""
        return Data(self.name, fn(self.x_train), self.y_train, fn(self.x_test), self.y_test, self.num_classes)

    def to(self, device: torch.device | str) -> "Data":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Data(self.name, move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test),
                    self.num_classes)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $NEREPRO_DATA, else ~/.cache/nerepro/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("NEREPRO_DATA")
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def load(name: str, data_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Data:
    """Read a dataset from disk once and place it whole on `device`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    root = resolve_data_dir(data_dir)
    display, _, folder = DATASETS[name]
    if problem := missing(name, root):
        raise DataError(problem)
    if name == "fashion-mnist":
        splits = [_read_fashion_mnist(root, train) for train in (True, False)]
        num_classes = 10
    else:
        splits = [_read_cifar(name, root, train) for train in (True, False)]
        num_classes = 10 if name == "cifar10" else 100
    (xtr, ytr), (xte, yte) = splits
    return Data(display, xtr, ytr, xte, yte, num_classes).to(device)


def download(names: list[str], data_dir: str | os.PathLike | None = None) -> Path:
    """Fetch datasets with torchvision (md5-checked) into the data directory."""
    root = resolve_data_dir(data_dir)
    for name in names:
        if name not in DATASETS:
            raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
        display, cls, _ = DATASETS[name]
        if is_available(name, root):
            continue
        try:
            root.mkdir(parents=True, exist_ok=True)
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except (OSError, RuntimeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"could not download {display} into {root}: {reason}; "
                            "copy the files there in torchvision's layout instead") from None
    return root


FILES = {"fashion-mnist": [f"raw/{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")],
         "cifar10": ["batches.meta", "data_batch_1", "test_batch"], "cifar100": ["meta", "train", "test"]}


def missing(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """Why `load` would fail for want of files (a quick look, no reading: a dataset whose files are all there
    may still be corrupt, which `load` says), with the command that fixes it; None if every file is there."""
    root = resolve_data_dir(data_dir)
    display, _, folder = DATASETS[name]
    absent = [f for f in FILES[name] if not ((root / folder / f).exists() or (root / folder / f"{f}.gz").exists())]
    if not absent:
        return None
    return (f"{display} not found in {root / folder} ({absent[0]} is missing): run `nerepro data download {name} "
            f"--data-dir {root}` or point --data-dir / NEREPRO_DATA at a copy")


def is_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether `load` would succeed (files present and intact), without keeping the tensors."""
    try:
        load(name, data_dir)
    except DataError:
        return False
    return True


def _images(array: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W) in [0, 1]."""
    t = torch.from_numpy(np.array(array))  # a writable copy
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float().div_(255).contiguous()


def _read_idx(path: Path, md5: str) -> np.ndarray:
    """An IDX file, read from its extracted copy or straight from the .gz (the only form some mirrors keep)."""
    plain = path.with_suffix("")
    if plain.exists():
        raw = plain.read_bytes()
    elif path.exists():
        if not check_integrity(str(path), md5):
            raise DataError(f"{path} is corrupt (md5 mismatch): delete it and run `nerepro data download`")
        raw = gzip.decompress(path.read_bytes())
    else:
        raise DataError(f"{plain} is missing: run `nerepro data download fashion-mnist --data-dir "
                        f"{path.parents[2]}`")
    if len(raw) < 8 or raw[2] != 0x08:
        raise DataError(f"{plain.name} is not an IDX file of bytes: delete it and run `nerepro data download`")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{plain.name} is truncated: delete it and run `nerepro data download`")
    return body.reshape(shape)


def _read_fashion_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / "FashionMNIST" / "raw"
    md5 = dict(tvd.FashionMNIST.resources)
    prefix = "train" if train else "t10k"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte.gz", md5[f"{prefix}-images-idx3-ubyte.gz"])
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", md5[f"{prefix}-labels-idx1-ubyte.gz"])
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST in {raw} has {len(images)} images but {len(labels)} labels: download again")
    return _images(images), torch.from_numpy(labels.astype(np.int64))


def _read_cifar(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    display, cls, folder = DATASETS[name]
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:
        raise DataError(f"{display} in {root / folder} is incomplete or corrupt (md5 check failed): delete it "
                        f"and run `nerepro data download {name} --data-dir {root}`") from None
    return _images(ds.data), torch.tensor(ds.targets, dtype=torch.int64)
