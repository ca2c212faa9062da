"""Minibatch sampling that draws the same indices on every device (README, protocol table, 'Sampling').

Every draw is a pure function of (seed, stream, step): each sample i of the training set gets a 32-bit key
from an integer hash of i and a per-draw key, computed with integer tensor ops whose results are identical
on the CPU and on CUDA, and

- `independent`: a minibatch is the B samples with the smallest keys (a uniform B-subset, no replacement
  within it), in increasing key order; every step and every stream draws afresh;
- `epoch` / `paired`: an epoch is the training set sorted by key (a uniform permutation per epoch), and the
  stream reads it in consecutive chunks across epoch boundaries.

The key of sample i is a bijection of i (an affine map mod 2^32 with the draw's odd multiplier and offset,
then two xorshift-multiply rounds), so keys never tie and the order needs no tie-breaking that could differ
between devices. Values are held in int64 and every product stays below 2^63: no overflow anywhere.
No generator state: a checkpoint needs only the step, and nothing is read back to the host.
"""

from __future__ import annotations

import hashlib

import torch

VERSION = 2  # enters the run id (config.py): version 1 drew with torch.randperm, which differs by device
MASK = 0xFFFFFFFF
ROUNDS = ((16, 0x21F0AAAD), (15, 0x735A2D97))  # (shift, odd multiplier < 2^31); final shift 15


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of a run, so streams never share randomness."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "big") >> 1


def draw_key(seed: int, stream: str, draw: int) -> tuple[int, int]:
    """Two 32-bit keys for draw number `draw` (a step, or an epoch) of a stream: host integers, no device work."""
    h = hashlib.sha256(f"{seed}:{stream}:{draw}".encode()).digest()
    return int.from_bytes(h[:4], "big"), int.from_bytes(h[4:8], "big")


def sample_keys(index: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """The keys of samples `index` (int64, < 2^32) for one draw: a bijection of i onto 32-bit values."""
    x = (index * ((key[1] & 0x7FFFFFFF) | 1) + key[0]) & MASK
    for shift, mult in ROUNDS:
        x = x ^ (x >> shift)
        x = (x * mult) & MASK
    return x ^ (x >> 15)


class _Keys:
    """Per-sample keys of a training set of n samples on one device (the index tensor made once)."""

    def __init__(self, n: int, device: torch.device, seed: int):
        if n >= 2 ** 32:
            raise ValueError(f"at most 2^32 - 1 samples, got {n}")
        self.n, self.seed = n, seed
        self.index = torch.arange(n, dtype=torch.int64, device=device)

    def smallest(self, stream: str, draw: int, k: int) -> torch.Tensor:
        """The k indices with the smallest keys, in increasing key order."""
        return torch.topk(sample_keys(self.index, draw_key(self.seed, stream, draw)), k, largest=False).indices

    def permutation(self, stream: str, epoch: int) -> torch.Tensor:
        return torch.argsort(sample_keys(self.index, draw_key(self.seed, stream, epoch)))


class IndependentSampler:
    """Each step draws B and B' independently, each a uniform B-subset of the training set (no replacement).

    B and B' are separate streams, so the B stream of a seed is the same for every alpha (common random
    numbers across the alpha grid). At alpha = 1 B' is never drawn.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int, second: bool):
        self.batch_size, self.keys = batch_size, _Keys(n, torch.device(device), seed)
        self.streams = ("B", "B'") if second else ("B",)

    def draw(self, step: int) -> torch.Tensor:
        """Indices of [B; B'] (or of B alone) at `step`, concatenated, on the device; no host synchronisation."""
        parts = [self.keys.smallest(s, step, self.batch_size) for s in self.streams]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class EpochStream:
    """Consecutive chunks of a concatenation of shuffled epochs: every sample exactly once per epoch; a chunk
    that reaches an epoch's end continues into the next epoch, so chunks are always full."""

    def __init__(self, keys: _Keys, name: str, chunk: int):
        self.keys, self.name, self.chunk = keys, name, chunk
        self.cached: dict[int, torch.Tensor] = {}  # the epochs the last chunk touched

    def epoch(self, e: int) -> torch.Tensor:
        if e not in self.cached:
            self.cached = {k: v for k, v in self.cached.items() if k >= e - 1}
            self.cached[e] = self.keys.permutation(self.name, e)
        return self.cached[e]

    def take(self, step: int) -> torch.Tensor:
        """Chunk number `step`: positions [step * chunk, (step + 1) * chunk) of the concatenated epochs."""
        n, start = self.keys.n, step * self.chunk
        parts, end = [], start + self.chunk
        while start < end:
            e, offset = divmod(start, n)
            t = min(end - start, n - offset)
            parts.append(self.epoch(e)[offset:offset + t])
            start += t
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class EpochSampler:
    """`epoch`: B and B' each walk their own shuffled epochs. `paired`: B and B' are the two halves of one 2B
    chunk of a single shuffled epoch, as a Keras `fit` over batches of 2B would give (README, protocol)."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int, second: bool, paired: bool):
        keys = _Keys(n, torch.device(device), seed)
        if paired:
            self.streams = [EpochStream(keys, "epoch:pair", batch_size * (2 if second else 1))]
        else:
            self.streams = [EpochStream(keys, f"epoch:{s}", batch_size) for s in (("B", "B'") if second else ("B",))]

    def draw(self, step: int) -> torch.Tensor:
        parts = [s.take(step) for s in self.streams]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class PackDraws:
    """The draws of a pack's samplers at one step, as rows (R, n) of `sampler.draw(step)`.

    Independent samplers draw together: the keys of every run and stream form one (rows, N) tensor and one
    `topk` per row picks each minibatch, the same indices as drawn alone (keys never tie), in a few kernels
    instead of a dozen per run and stream. The per-draw keys are hashed on the host a block of steps ahead
    and copied to the device in one (pinned, asynchronous) transfer per block: no host sync per step.
    """

    BLOCK = 256  # steps of per-draw keys hashed and copied at once

    def __init__(self, samplers: list):
        self.samplers = samplers
        first = samplers[0]
        self.together = all(isinstance(s, IndependentSampler) for s in samplers) and \
            len({(s.batch_size, s.streams, s.keys.n) for s in samplers}) == 1
        if self.together:
            self.index, self.batch_size, self.streams = first.keys.index, first.batch_size, first.streams
        self.start, self.table = None, None

    def _keys(self, step: int) -> torch.Tensor:
        if self.start is None or not self.start <= step < self.start + self.BLOCK:
            self.start = step
            rows = [[[*draw_key(s.keys.seed, stream, t)] for s in self.samplers for stream in self.streams]
                    for t in range(step, step + self.BLOCK)]
            table = torch.tensor(rows, dtype=torch.int64)  # (BLOCK, rows, 2)
            device = self.index.device
            if device.type == "cuda":
                table = table.pin_memory()
            self.table = table.to(device, non_blocking=True)
        return self.table[step - self.start]

    def draw(self, step: int) -> torch.Tensor:
        if not self.together:
            return torch.stack([s.draw(step) for s in self.samplers])
        key = self._keys(step)
        keys = sample_keys(self.index, (key[:, :1], key[:, 1:]))  # (rows, N)
        chosen = torch.topk(keys, self.batch_size, dim=1, largest=False).indices
        return chosen.reshape(len(self.samplers), -1)  # each run's streams in order: [B; B']


def make_sampler(sampling: str, n: int, batch_size: int, device: torch.device, seed: int, second: bool):
    """The sampler of a run's `sampling` setting: independent (default), epoch or paired."""
    if sampling == "independent":
        return IndependentSampler(n, batch_size, device, seed, second)
    return EpochSampler(n, batch_size, device, seed, second, paired=sampling == "paired")
