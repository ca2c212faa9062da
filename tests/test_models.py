"""The networks of Sec. 3: shapes, parameter counts, ghost batch norm, initialisation."""

import math

import pytest
import torch
import torch.nn as nn

from nerepro import build_model
from nerepro.models import GhostBatchNorm


def conv(c_in, c_out):
    return 9 * c_in * c_out  # 3x3 kernel, no bias (batch norm follows)


def bn(c):
    return 2 * c  # gamma and beta


def dense(n_in, n_out):
    return n_in * n_out + n_out


F1_PARAMS = dense(784, 500) + 6 * dense(500, 500) + dense(500, 10)
C1_STACKS = [(3, 64), (3, 128), (3, 256)]
C2_STACKS = C1_STACKS + [(2, 512)]


def conv_stack_params(stacks):
    total, c_in = 0, 3
    for n, c in stacks:
        for _ in range(n):
            total += conv(c_in, c) + bn(c)
            c_in = c
    return total


C1_PARAMS = conv_stack_params(C1_STACKS) + dense(256 * 4 * 4, 10)
C2_PARAMS = conv_stack_params(C2_STACKS) + dense(512 * 2 * 2, 1024) + dense(1024, 100)


@pytest.mark.parametrize("name,expected,count", [
    ("F1", F1_PARAMS, 1_900_510), ("C1", C1_PARAMS, 1_962_314), ("C2", C2_PARAMS, 7_663_012)])
def test_parameter_counts(name, expected, count):
    assert expected == count  # the architecture arithmetic above, written out once
    assert sum(p.numel() for p in build_model(name).parameters()) == count


@pytest.mark.parametrize("name,shape,classes", [("F1", (1, 28, 28), 10), ("C1", (3, 32, 32), 10),
                                                ("C2", (3, 32, 32), 100)])
def test_output_shapes(name, shape, classes):
    model = build_model(name).eval()
    assert model(torch.rand(3, *shape)).shape == (3, classes)


def test_ghost_batch_norm_with_one_group_is_batch_norm():
    gbn = GhostBatchNorm(8, ghost_size=40, eps=1e-3, momentum=0.01)
    ref = nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        for m in (gbn, ref):
            m.weight.copy_(torch.linspace(0.5, 2, 8))
            m.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(40, 8, 5, 5) * 3 + 1
    for _ in range(3):
        torch.testing.assert_close(gbn(x), ref(x))
    torch.testing.assert_close(gbn.running_mean, ref.running_mean)
    torch.testing.assert_close(gbn.running_var, ref.running_var)
    gbn.eval(), ref.eval()
    torch.testing.assert_close(gbn(x[:7]), ref(x[:7]))


def test_ghost_batches_are_normalised_separately():
    gbn = GhostBatchNorm(4, ghost_size=10)
    x = torch.randn(30, 4, 3, 3) + torch.arange(30.0).view(30, 1, 1, 1)  # groups with different means
    out = gbn(x)
    for g in range(3):
        part = x[10 * g:10 * (g + 1)]
        mean = part.mean((0, 2, 3), keepdim=True)
        var = part.var((0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(out[10 * g:10 * (g + 1)], (part - mean) / torch.sqrt(var + 1e-3))
    with pytest.raises(ValueError, match="ghost batches of 10"):
        gbn(torch.randn(25, 4, 3, 3))


def test_glorot_uniform_weights_and_zero_biases():
    model = build_model("C2", seed=0)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            receptive = m.weight[0, 0].numel()
            fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
            bound = math.sqrt(6 / (fan_in + fan_out))
            w = m.weight.detach()
            assert w.abs().max() <= bound
            assert w.abs().max() > 0.95 * bound  # uniform over the whole interval
            assert abs(w.var().item() / (bound ** 2 / 3) - 1) < 0.1
            if m.bias is not None:
                assert not m.bias.any()


def test_seed_fixes_the_initialisation():
    a, b, c = build_model("F1", seed=3), build_model("F1", seed=3), build_model("F1", seed=4)
    wa, wb, wc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown network 'F3'"):
        build_model("F3")
