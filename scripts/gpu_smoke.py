"""A short smoke test of the training path on one device: F1, C1 and C2 in fp32 and bf16, a few steps each.

    PYTHONPATH=. python3 scripts/gpu_smoke.py --device cuda [--data-dir DIR] [--steps 20] [--compile off]

F1 trains on the real Fashion-MNIST when the data directory holds it; C1 and C2 on random data of CIFAR's
shape (1,000 training samples) when CIFAR is absent. Prints one JSON line per run and exits 1 if any run
raised or produced a non-finite loss. scripts/gpu_session.sh runs it first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro import RunConfig, train  # noqa: E402
from nerepro import data as datasets  # noqa: E402
from nerepro.bench import SHAPES  # noqa: E402


def smoke_data(network: str, data_dir: str | None, device: torch.device) -> datasets.Data:
    name = datasets.NETWORK_DATASET[network]
    if datasets.is_available(name, data_dir):
        return datasets.load(name, data_dir, device)
    shape, _, classes, _ = SHAPES[network]
    g = torch.Generator().manual_seed(0)
    return datasets.Data(f"random {name}-shaped", torch.rand((1000, *shape), generator=g),
                         torch.randint(0, classes, (1000,), generator=g), torch.rand((500, *shape), generator=g),
                         torch.randint(0, classes, (500,), generator=g), classes).to(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", default="off", help="off keeps it short; auto compiles C1/C2 on CUDA")
    parser.add_argument("--networks", default="F1,C1,C2")
    args = parser.parse_args()
    device, failed = torch.device(args.device), 0
    for network in args.networks.split(","):
        data = smoke_data(network, args.data_dir, device)
        for precision in ("fp32", "bf16"):
            cfg = RunConfig(network=network, alpha=1.5, batch_size=100, max_steps=args.steps, check_every=10,
                            precision=precision, compile=args.compile, device=str(device))
            line = {"network": network, "precision": precision, "data": data.name, "device": str(device)}
            start = time.perf_counter()
            try:
                r = train(cfg, data=data)
                losses = r["curve"]["minibatch_loss"]
                ok = r["steps"] == args.steps and all(v is not None and math.isfinite(v) for v in losses)
                line.update(ok=ok, steps=r["steps"], minibatch_loss=losses, test_acc=r["test_acc"],
                            compile=r["provenance"]["compile"])
            except Exception as e:  # noqa: BLE001 - report every network, then fail
                ok = False
                line.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
            line["seconds"] = round(time.perf_counter() - start, 1)
            failed += not ok
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
