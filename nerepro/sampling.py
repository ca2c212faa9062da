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
            g.set_state(s)
