"""Minibatches are a function of (seed, stream, step) alone: the same on every device, uniform, independent."""

import hashlib
import json
from itertools import combinations

import pytest
import torch

from conftest import REPO
from nerepro import RunConfig
from nerepro.config import PROTOCOLS
from nerepro.sampling import IndependentSampler, PackDraws, make_sampler

CPU = torch.device("cpu")
M32 = 2 ** 32 - 1


def reference_key(seed, stream, draw, i):
    """The documented rule in plain Python integers: per-draw keys k0, k1 from SHA-256 of "seed:stream:draw";
    x = i * (k1 mod 2^31 | 1) + k0 mod 2^32; two rounds of x ^= x >> s; x = x * m mod 2^32 with
    (s, m) = (16, 0x21F0AAAD), (15, 0x735A2D97); then x ^= x >> 15."""
    h = hashlib.sha256(f"{seed}:{stream}:{draw}".encode()).digest()
    k0, k1 = int.from_bytes(h[:4], "big"), int.from_bytes(h[4:8], "big")
    x = (i * ((k1 & 0x7FFFFFFF) | 1) + k0) & M32
    for s, m in ((16, 0x21F0AAAD), (15, 0x735A2D97)):
        x ^= x >> s
        x = (x * m) & M32
    return x ^ (x >> 15)


def reference_minibatch(seed, stream, step, n, b):
    return sorted(range(n), key=lambda i: reference_key(seed, stream, step, i))[:b]


def reference_epochs(seed, stream, n):
    """The concatenation of epoch permutations: each epoch the training set in increasing key order."""
    epoch = 0
    while True:
        yield from sorted(range(n), key=lambda i: reference_key(seed, stream, epoch, i))
        epoch += 1


@pytest.mark.parametrize("second", [False, True])
def test_independent_stream_equals_the_reference(second):
    n, b, seed = 1000, 37, 5
    sampler = IndependentSampler(n, b, CPU, seed, second=second)
    for step in (0, 1, 2, 999, 123_456):
        expected = reference_minibatch(seed, "B", step, n, b)
        if second:
            expected += reference_minibatch(seed, "B'", step, n, b)
        assert sampler.draw(step).tolist() == expected


@pytest.mark.parametrize("sampling,second", [("independent", False), ("independent", True), ("paired", True)])
def test_a_packs_draws_are_its_runs_own(sampling, second, monkeypatch):
    """A pack draws all its runs' minibatches together (one key tensor, one topk): each row must be exactly
    what the run's own sampler draws alone, at every step, across the blocks of pre-hashed keys."""
    monkeypatch.setattr(PackDraws, "BLOCK", 4)  # steps 0-9 cross two block boundaries
    n, b = 1000, 37
    samplers = [make_sampler(sampling, n, b, CPU, seed, second=second) for seed in (0, 3, 11)]
    draws = PackDraws(samplers)
    assert draws.together == (sampling == "independent")
    for step in (*range(10), 5, 123_456):  # and back, and far ahead (a resumed pack)
        rows = draws.draw(step)
        assert rows.shape == (3, b * (2 if second else 1))
        for row, sampler in zip(rows, samplers):
            assert row.tolist() == sampler.draw(step).tolist()


@pytest.mark.parametrize("sampling,second", [("epoch", True), ("paired", True), ("epoch", False)])
def test_epoch_streams_equal_the_reference(sampling, second):
    n, b, seed = 50, 7, 2  # 7 does not divide 50: chunks cross epoch boundaries
    sampler = make_sampler(sampling, n, b, CPU, seed, second=second)
    if sampling == "paired":
        streams = [reference_epochs(seed, "epoch:pair", n)]
        sizes = [2 * b]
    else:
        streams = [reference_epochs(seed, f"epoch:{s}", n) for s in (("B", "B'") if second else ("B",))]
        sizes = [b] * len(streams)
    for step in range(30):
        expected = [i for s, k in zip(streams, sizes) for i in [next(s) for _ in range(k)]]
        assert sampler.draw(step).tolist() == expected
    # a resumed sampler (a new object) continues at any step, e.g. one in the fifth epoch
    assert make_sampler(sampling, n, b, CPU, seed, second=second).draw(29).tolist() == expected


def test_inclusion_is_uniform_and_without_replacement():
    n, b, draws = 60, 12, 6000
    sampler = IndependentSampler(n, b, CPU, seed=0, second=False)
    counts = torch.zeros(n)
    for step in range(draws):
        idx = sampler.draw(step)
        assert len(set(idx.tolist())) == b
        counts[idx] += 1
    expected = draws * b / n
    chi2 = ((counts - expected) ** 2 / (expected * (1 - b / n))).sum().item()
    assert chi2 < 100, chi2  # 59 degrees of freedom: p(chi2 > 100) < 0.001


def test_pairs_are_uniform_and_b_prime_is_independent_of_b():
    n, b, draws = 16, 4, 12000
    sampler = IndependentSampler(n, b, CPU, seed=1, second=True)
    pairs = torch.zeros(n, n)
    overlap, consecutive, previous = [], [], None
    for step in range(draws):
        idx = sampler.draw(step)
        first, second = set(idx[:b].tolist()), set(idx[b:].tolist())
        for i, j in combinations(sorted(first), 2):
            pairs[i, j] += 1
        overlap.append(len(first & second))
        if previous is not None:
            consecutive.append(len(first & previous))
        previous = first
    # every pair of samples is in B together equally often: b(b-1) / (n(n-1)) of the draws
    cells = pairs[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)]
    expected = draws * b * (b - 1) / (n * (n - 1))
    chi2 = ((cells - expected) ** 2 / expected).sum().item()
    assert chi2 < 170, chi2  # 119 degrees of freedom: p(chi2 > 170) < 0.002
    # |B n B'| and |B_t n B_t+1| follow the hypergeometric law of independent draws: mean b^2/n
    var = b * (b / n) * (1 - b / n) * (n - b) / (n - 1)
    for values in (overlap, consecutive):
        mean = sum(values) / len(values)
        assert abs(mean - b * b / n) < 4 * (var / len(values)) ** 0.5, mean
        sample_var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        assert abs(sample_var / var - 1) < 0.06, sample_var


def test_b_stream_is_shared_across_alphas_and_seeds_differ():
    n, b = 500, 20
    alone = IndependentSampler(n, b, CPU, seed=3, second=False)
    paired = IndependentSampler(n, b, CPU, seed=3, second=True)
    other = IndependentSampler(n, b, CPU, seed=4, second=False)
    for step in range(5):
        assert torch.equal(alone.draw(step), paired.draw(step)[:b])  # common random numbers over alpha
        assert not torch.equal(alone.draw(step), other.draw(step))


def test_sampler_version_is_in_the_run_id_and_old_ids_are_kept():
    cfg = RunConfig("F1", 1.0, 900, seed=0, sampler_version=2, **PROTOCOLS["eq1"])  # the reading it ran
    assert cfg.result_fields()["sampler_version"] == 2
    # a record written by the device-dependent sampler (version 1, before the field existed) keeps its id:
    # the id of its settings without the field; the same settings now get another id
    old = json.loads((REPO / "results/f1/runs/F1-a1-b900-s0-88ba00f00b.json").read_text())
    fields = {k: v for k, v in cfg.result_fields().items() if k != "sampler_version"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert old["run_id"].endswith(hashlib.sha256(canonical.encode()).hexdigest()[:10])
    assert cfg.run_id != old["run_id"]
    with pytest.raises(ValueError, match="sampler version 1 no longer runs"):
        RunConfig("F1", 1.0, 900, sampler_version=1)


def test_old_records_form_their_own_variant():
    from nerepro.results import variant_of

    old = json.loads((REPO / "results/f1/runs/F1-a1-b900-s0-88ba00f00b.json").read_text())
    assert variant_of(old) == "protocol=eq1, sampler_version=1"  # it ran the Eq. (1) reading, then the default
    assert variant_of({**old, "config": {**old["config"], "sampler_version": 2}}) == "protocol=eq1"
