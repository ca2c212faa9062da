"""Eq. (10): noise enhancement scales the SGD-noise covariance by alpha^2 + (1 - alpha)^2."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nerepro import noise_enhanced_loss
from nerepro.sampling import IndependentSampler

N, B, DRAWS = 1000, 50, 3000
TOLERANCE = 0.02  # relative; measured deviations are 0.1-0.3% with these seeds


def flat_grad(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_covariance_trace_scales_as_eq10():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5))
    x = torch.randn(N, 20)
    y = torch.randint(0, 5, (N,))
    full = flat_grad(model, F.cross_entropy(model(x), y))  # grad L(w), Eq. (1), exactly
    sampler = IndependentSampler(N, B, torch.device("cpu"), seed=0, second=True)
    alphas = [1.0, 1.5, 2.0, 3.0]
    sq_norms = {a: [] for a in alphas}
    for step in range(DRAWS):
        idx = sampler.draw(step)
        batch, batch_prime = (x[idx[:B]], y[idx[:B]]), (x[idx[B:]], y[idx[B:]])
        for a in alphas:  # the same draws for every alpha (common random numbers)
            xi = flat_grad(model, noise_enhanced_loss(model, batch, batch_prime, a)) - full
            sq_norms[a].append(xi.square().sum())
    trace = {a: torch.stack(v).mean().item() for a, v in sq_norms.items()}
    for a in alphas[1:]:
        theory = a ** 2 + (1 - a) ** 2
        ratio = trace[a] / trace[1.0]
        assert abs(ratio / theory - 1) < TOLERANCE, (a, ratio, theory)


def test_plain_noise_matches_eq4_finite_population_formula():
    """The alpha = 1 trace itself agrees with Eq. (4): (N - B) / (B (N - 1)) times the per-sample trace."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(N, 10), torch.randint(0, 3, (N,))
    full = flat_grad(model, F.cross_entropy(model(x), y))
    per_sample = torch.stack([flat_grad(model, F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])) for i in range(N)])
    per_sample_trace = (per_sample - full).square().sum(1).mean().item()
    theory = (N - B) / (B * (N - 1)) * per_sample_trace
    sampler = IndependentSampler(N, B, torch.device("cpu"), seed=3, second=False)
    measured = torch.stack([
        (per_sample[sampler.draw(step)].mean(0) - full).square().sum() for step in range(20000)
    ]).mean().item()
    assert abs(measured / theory - 1) < 0.02, (measured, theory)  # with replacement would be off by 5%
