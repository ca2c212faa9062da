"""Operations dispatched per training step of F1, alone and in packs: a device-independent measure of what a
launch-bound GPU pays for (each operation is a kernel launch, or at least a trip through PyTorch's dispatcher).

It trains packs of R runs (R = 1 is a single run) on the CPU and counts every ATen operation of steps S + 1
to 2S (no loss check among them), the optimizer's apart: on the CPU Adam runs `foreach` with a host read of
each step counter, on CUDA one fused kernel per run, so the optimizer's count here says nothing of a GPU.
It also prints the training FLOP per operation, the work a GPU gets per launch.

    PYTHONPATH=. .venv/bin/python scripts/count_ops.py [--alpha 1.5] [--batch-size 100] [--packs 1,2,5,10]
    PYTHONPATH=. .venv/bin/python scripts/count_ops.py --network C1 --alpha 1 --packs 1 --steps 2
"""

import argparse

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from nerepro import RunConfig
from nerepro.bench import bench_data, training_flops_per_sample
from nerepro.train import train_pack


class Count(TorchDispatchMode):
    """ATen operations dispatched, those inside an optimizer step apart."""

    def __init__(self):
        super().__init__()
        self.model = self.optimizer = 0
        self.in_optimizer = False
        self.hooks = [register_optimizer_step_pre_hook(lambda *_: setattr(self, "in_optimizer", True)),
                      register_optimizer_step_post_hook(lambda *_: setattr(self, "in_optimizer", False))]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.in_optimizer:
            self.optimizer += 1
        else:
            self.model += 1
        return func(*args, **(kwargs or {}))

    def close(self):
        for hook in self.hooks:
            hook.remove()


def per_step(network: str, runs: int, alpha: float, batch_size: int, steps: int, data) -> tuple[float, float]:
    """(model, sampling and bookkeeping ops; optimizer ops) per step of a pack of `runs`."""
    counts = []
    for until in (steps, 2 * steps):
        cfgs = [RunConfig(network=network, alpha=alpha, batch_size=batch_size, seed=s, max_steps=until,
                          check_every=10 * steps, compile="off", device="cpu") for s in range(runs)]
        mode = Count()
        try:
            with mode:
                train_pack(cfgs, data=data, final_evaluation=False)
        finally:
            mode.close()
        counts.append((mode.model, mode.optimizer))
    return (counts[1][0] - counts[0][0]) / steps, (counts[1][1] - counts[0][1]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="F1", help="F1, C1 or C2 (only F1 packs)")
    parser.add_argument("--alpha", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--packs", default="1,2,5,10", help="pack sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=100, help="count steps S + 1 to 2S")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, real = bench_data(args.network, torch.device("cpu"), args.data_dir)
    samples = args.batch_size * (1 if args.alpha == 1 else 2)
    flop = samples * training_flops_per_sample(args.network)  # one run's step
    print(f"{args.network}, alpha = {args.alpha:g}, B = {args.batch_size}, {'real' if real else 'random'} data, "
          f"torch {torch.__version__}: ATen operations per step")
    print("| runs in the pack | per step, without the optimizer | per run-step | training FLOP per operation "
          "| the optimizer (CPU foreach) |")
    print("|---|---|---|---|---|")
    for runs in (int(r) for r in args.packs.split(",")):
        model, optimizer = per_step(args.network, runs, args.alpha, args.batch_size, args.steps, data)
        print(f"| {runs} | {model:g} | {model / runs:.1f} | {flop * runs / model:.3g} | {optimizer:g} |")


if __name__ == "__main__":
    main()
