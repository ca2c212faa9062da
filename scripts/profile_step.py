"""Where one training step's time goes: the sampler, forward + backward, the optimizer, and the whole step.

    PYTHONPATH=. python3 scripts/profile_step.py --device cuda [--network F1] [--steps 200]

Each part is repeated --steps times between two device synchronisations (wall time / steps); prints one
line per (B, alpha) of the list below. Random inputs of the network's shape (timing does not depend on data).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro import RunConfig, build_model  # noqa: E402
from nerepro import fastpath  # noqa: E402
from nerepro.bench import SHAPES  # noqa: E402
from nerepro.gradient import ne_objective  # noqa: E402
from nerepro.sampling import make_sampler  # noqa: E402
from nerepro.train import make_optimizer  # noqa: E402


def timed(device: torch.device, steps: int, fn) -> float:
    fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--network", default="F1")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--points", default="100:1,900:1,2000:1.5,5000:3")
    args = parser.parse_args()
    device = torch.device(args.device)
    fastpath.configure_backends(device)
    shape, n, classes, _ = SHAPES[args.network]
    x = torch.rand((n, *shape), device=device)
    y = torch.randint(0, classes, (n,), device=device)
    for point in args.points.split(","):
        b, alpha = int(point.split(":")[0]), float(point.split(":")[1])
        cfg = RunConfig(network=args.network, alpha=alpha, batch_size=b, device=str(device))
        model = fastpath.place(build_model(args.network, seed=0), args.network, device).train()
        optimizer = make_optimizer(cfg, model.parameters(), device)
        sampler = make_sampler("independent", n, b, device, 0, second=alpha != 1)
        idx = sampler.draw(0)

        def forward_backward(i):
            model.zero_grad(set_to_none=True)
            ne_objective(model, x[idx], y[idx], b, alpha)[0].backward()

        def step(i):
            j = sampler.draw(i)
            optimizer.zero_grad(set_to_none=True)
            ne_objective(model, x[j], y[j], b, alpha)[0].backward()
            optimizer.step()

        parts = {"sampler": timed(device, args.steps, sampler.draw),
                 "forward+backward": timed(device, args.steps, forward_backward),
                 "optimizer": timed(device, args.steps, lambda i: optimizer.step()),
                 "step": timed(device, args.steps, step)}
        print(f"{args.network} B={b} alpha={alpha:g} on {device}: " +
              ", ".join(f"{k} {v:.3f} ms" for k, v in parts.items()), flush=True)


if __name__ == "__main__":
    main()
