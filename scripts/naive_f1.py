"""The naive noise-enhanced F1 loop that `nerepro bench` is compared against (README, 'Performance').

What a first implementation of Eq. (6) typically looks like: a torchvision DataLoader per minibatch
stream (per-sample PIL -> tensor conversion), two forward/backward passes per step, a host sync every
step (`.item()`), and a full DataLoader pass over the training set at every check. Not for real runs.

    .venv/bin/python scripts/naive_f1.py --batch-size 1000 --alpha 1.5 --steps 100 --data-dir DIR [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from nerepro import build_model
from nerepro.data import resolve_data_dir


def fashion_mnist(data_dir: Path, tmp: Path) -> torchvision.datasets.FashionMNIST:
    """torchvision's dataset; mirrors that keep only the .gz files are extracted to `tmp` first."""
    raw = data_dir / "FashionMNIST" / "raw"
    if not all((raw / f[:-3]).exists() for f, _ in torchvision.datasets.FashionMNIST.resources):
        target = tmp / "FashionMNIST" / "raw"
        target.mkdir(parents=True)
        for name, _ in torchvision.datasets.FashionMNIST.resources:
            with gzip.open(raw / name) as src, open(target / name[:-3], "wb") as dst:
                shutil.copyfileobj(src, dst)
        data_dir = tmp
    return torchvision.datasets.FashionMNIST(str(data_dir), train=True, download=False,
                                             transform=torchvision.transforms.ToTensor())


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dataset = fashion_mnist(resolve_data_dir(args.data_dir), Path(tmp))
        torch.manual_seed(0)
        model = build_model("F1", seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        stream_b = forever(DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True))
        stream_b2 = forever(DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True))
        check_s, start = 0.0, time.perf_counter()
        for step in range(1, args.steps + 1):
            (x, y), (x2, y2) = next(stream_b), next(stream_b2)
            optimizer.zero_grad()
            loss_b = F.cross_entropy(model(x), y)
            (args.alpha * loss_b).backward()
            loss_b2 = F.cross_entropy(model(x2), y2)
            ((1 - args.alpha) * loss_b2).backward()
            optimizer.step()
            last_loss = loss_b.item()  # a host sync every step
            if step % args.check_every == 0:
                t = time.perf_counter()
                total, n = 0.0, 0
                with torch.no_grad():
                    for xc, yc in DataLoader(dataset, batch_size=1000):
                        total += F.cross_entropy(model(xc), yc, reduction="sum").item()
                        n += len(yc)
                last_loss = total / n
                check_s += time.perf_counter() - t
        elapsed = time.perf_counter() - start
    result = {"loop": "naive", "network": "F1", "batch_size": args.batch_size, "alpha": args.alpha,
              "steps": args.steps, "check_every": args.check_every, "steps_per_s": args.steps / elapsed,
              "check_share": check_s / elapsed, "threads": torch.get_num_threads(), "last_loss": last_loss}
    print(json.dumps(result) if args.json else
          f"naive F1 loop: {result['steps_per_s']:.3f} steps/s, checks {100 * result['check_share']:.0f}% of "
          f"the time (B={args.batch_size}, alpha={args.alpha}, {args.steps} steps, {result['threads']} threads)")


if __name__ == "__main__":
    main()
