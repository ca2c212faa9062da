"""Eq. (6): the gradient of noise_enhanced_loss against two independent passes."""

import pytest
import torch
import torch.nn.functional as F

from nerepro import build_model, noise_enhanced_loss


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def minibatch_grad(model, x, y):
    """grad L_B from its own forward/backward (the plain minibatch gradient of Eq. 2)."""
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return grads(model)


def ne_grad(model, batch, batch_prime, alpha):
    model.zero_grad()
    noise_enhanced_loss(model, batch, batch_prime, alpha).backward()
    return grads(model)


def batches(shape, n, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.rand((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g))  # noqa
    return make(), make()


def assert_float32_close(actual, expected):
    scale = expected.abs().max()
    torch.testing.assert_close(actual, expected, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("alpha", [1.5, 2.5, 11.0, 0.5])
def test_f1_gradient_is_eq6(alpha):
    model = build_model("F1", seed=0)
    (x, y), (x2, y2) = batches((1, 28, 28), 64)
    expected = alpha * minibatch_grad(model, x, y) + (1 - alpha) * minibatch_grad(model, x2, y2)
    assert_float32_close(ne_grad(model, (x, y), (x2, y2), alpha), expected)


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_c1_gradient_is_eq6_with_ghost_batch_norm(alpha):
    """In training mode each half is normalised by its own ghost batches, exactly as in a separate pass."""
    model = build_model("C1", seed=0, ghost_batch_size=10).train()
    (x, y), (x2, y2) = batches((3, 32, 32), 20)  # two ghost batches in B, two in B'
    expected = alpha * minibatch_grad(model, x, y) + (1 - alpha) * minibatch_grad(model, x2, y2)
    assert_float32_close(ne_grad(model, (x, y), (x2, y2), alpha), expected)


def test_alpha_one_is_the_plain_minibatch_gradient_and_ignores_b_prime():
    model = build_model("F1", seed=1)
    (x, y), (x2, y2) = batches((1, 28, 28), 32)
    poisoned = (torch.full_like(x2, float("nan")), y2)  # would turn everything NaN if it were used
    got = ne_grad(model, (x, y), poisoned, 1.0)
    torch.testing.assert_close(got, minibatch_grad(model, x, y))
    torch.testing.assert_close(ne_grad(model, (x, y), None, 1.0), got)


def test_ghost_batches_that_would_mix_b_and_b_prime_are_refused():
    model = build_model("C1", seed=0, ghost_batch_size=10).train()
    (x, y), (x2, y2) = batches((3, 32, 32), 15)
    with pytest.raises(ValueError, match="ghost-batch size 10"):
        noise_enhanced_loss(model, (x, y), (x2, y2), 1.5)


def test_alpha_other_than_one_needs_b_prime():
    model = build_model("F1", seed=0)
    (x, y), _ = batches((1, 28, 28), 8)
    with pytest.raises(ValueError, match="second minibatch"):
        noise_enhanced_loss(model, (x, y), None, 2.0)
