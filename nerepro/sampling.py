"""Minibatch sampling on the training device, from seeded generators (README, protocol table)."""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of a run, so streams never share a generator."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "big") >> 1


class IndependentSampler:
    """Each step draws B and B' independently, each a uniform B-subset of the training set (no replacement).

    B and B' come from separate generators, so the B stream of a seed is the same for every alpha
    (common random numbers across the alpha grid). At alpha = 1 B' is never drawn.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int, second: bool):
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        streams = ("B", "B'") if second else ("B",)
        self.generators = [torch.Generator(device=self.device).manual_seed(stream_seed(seed, s)) for s in streams]

    def draw(self) -> torch.Tensor:
        """Indices of [B; B'] (or of B alone), concatenated, on the device; no host synchronisation."""
        parts = [torch.randperm(self.n, generator=g, device=self.device)[: self.batch_size] for g in self.generators]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s.cpu())


class EpochStream:
    """Consecutive indices of a concatenation of shuffled epochs: every sample exactly once per epoch; a batch
    that reaches an epoch's end continues into the next epoch, so batches are always full."""

    def __init__(self, n: int, device: torch.device, seed: int):
        self.n, self.device = n, torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.perm, self.pos = None, n

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator, device=self.device), 0
            t = min(k, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + t])
            self.pos, k = self.pos + t, k - t
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": None if self.perm is None else self.perm.cpu(),
                "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.pos = state["pos"]


class EpochSampler:
    """`epoch`: B and B' each walk their own shuffled epochs. `paired`: B and B' are the two halves of one 2B
    chunk of a single shuffled epoch, as a Keras `fit` over batches of 2B would give (README, protocol)."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int, second: bool, paired: bool):
        self.batch_size, self.second, self.paired = batch_size, second, paired
        names = ("pair",) if paired else (("B", "B'") if second else ("B",))
        self.streams = [EpochStream(n, device, stream_seed(seed, f"epoch:{name}")) for name in names]

    def draw(self) -> torch.Tensor:
        if self.paired:
            return self.streams[0].take(self.batch_size * (2 if self.second else 1))
        parts = [s.take(self.batch_size) for s in self.streams]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)


def make_sampler(sampling: str, n: int, batch_size: int, device: torch.device, seed: int, second: bool):
    """The sampler of a run's `sampling` setting: independent (default), epoch or paired."""
    if sampling == "independent":
        return IndependentSampler(n, batch_size, device, seed, second)
    return EpochSampler(n, batch_size, device, seed, second, paired=sampling == "paired")
