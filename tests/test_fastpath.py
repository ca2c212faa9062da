"""The fast path computes what the plain path computes (CPU here; `pytest -m gpu` on a CUDA machine)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_data
from nerepro import RunConfig, build_model, train
from nerepro.bench import bench, training_flops_per_sample
from nerepro.gradient import ne_objective
from nerepro.models import GhostBatchNorm

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cfg(**kw):
    base = dict(network="F1", alpha=1.5, batch_size=50, check_every=10, max_steps=30, device="cpu")
    return RunConfig(**{**base, **kw})


def test_flop_counts_match_the_architecture():
    f1 = 784 * 500 + 6 * 500 * 500 + 500 * 10
    assert training_flops_per_sample("F1") == 6 * f1
    c1 = 9 * (32 * 32 * (3 * 64 + 2 * 64 * 64) + 16 * 16 * (64 * 128 + 2 * 128 * 128)
              + 8 * 8 * (128 * 256 + 2 * 256 * 256)) + 4096 * 10
    assert training_flops_per_sample("C1") == 6 * c1 and 1.5e9 < 6 * c1 < 1.7e9
    assert 1.8e9 < training_flops_per_sample("C2") < 2.1e9


def test_bf16_keeps_logits_and_loss_in_fp32_and_tracks_fp32():
    model = build_model("F1", seed=0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        objective, _, _ = ne_objective(model, x, y, 32, 1.5)
    assert logits.dtype == torch.float32 and objective.dtype == torch.float32
    exact = ne_objective(model, x, y, 32, 1.5)[0]
    assert objective.item() == pytest.approx(exact.item(), rel=2e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_run_is_recorded_and_has_its_own_id():
    data = synthetic_data()
    r = train(cfg(precision="bf16"), data=data)
    assert r["precision"] == "bf16" and r["config"]["precision"] == "bf16"
    assert r["run_id"] != cfg().run_id and r["curve"]["minibatch_loss"][0] > 0


def test_channels_last_ghost_batch_norm_is_the_same_computation():
    gbn = GhostBatchNorm(6, ghost_size=5)
    x = torch.randn(10, 6, 4, 4)
    out_last = gbn(x.contiguous(memory_format=torch.channels_last))
    out = GhostBatchNorm(6, ghost_size=5)(x)
    torch.testing.assert_close(out_last, out)
    model = build_model("C1", seed=0, ghost_batch_size=5).double()  # float64: the same math, to rounding
    fast = build_model("C1", seed=0, ghost_batch_size=5).double().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(10, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (10,), generator=g)
    for m, inp in ((model, xs), (fast, xs.contiguous(memory_format=torch.channels_last))):
        m.zero_grad()
        F.cross_entropy(m(inp), ys).backward()
    for p, q in zip(model.parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_fused_adam_is_the_same_update_as_foreach():
    torch.manual_seed(0)
    params = [torch.randn(50, 20), torch.randn(20)]
    runs = []
    for kind in ({"foreach": True}, {"fused": True}):
        ps = [p.clone().requires_grad_() for p in params]
        opt = torch.optim.Adam(ps, lr=1e-3, eps=1e-7, **kind)
        for step in range(5):
            for p in ps:
                p.grad = torch.full_like(p, 0.1 * (step + 1)) * p.detach().sign()
            opt.step()
        runs.append(ps)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compiled_training_matches_eager():
    data = synthetic_data()
    eager = train(cfg(compile="off"), data=data)
    compiled = train(cfg(compile="default"), data=data)
    assert compiled["provenance"]["compile"] == "default"
    for a, b in zip(eager["curve"]["minibatch_loss"], compiled["curve"]["minibatch_loss"]):
        assert a == pytest.approx(b, rel=1e-3)


def test_bench_reports_what_it_promises():
    result = bench("F1", batch_size=100, alpha=1.5, steps=6, device="cpu", check_every=3, warmup=2)
    assert result["steps"] == 6 and result["steps_per_s"] > 0
    assert result["samples_per_s"] == pytest.approx(result["steps_per_s"] * 200)
    assert result["achieved_tflops"] == pytest.approx(result["samples_per_s"] * 11.38e6 / 1e12, rel=1e-3)
    assert 0 < result["fraction_of_peak"] < 2 and 0 <= result["check_share"] < 1
    assert result["peak_memory_gib"] > 0 and result["device_type"] == "cpu"


# ---- CUDA: the fast path (TF32 convolutions, channels_last, cuDNN autotuning, fused Adam, torch.compile)
# against the plain path on the CPU, and the bf16 option.

@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("network,batch", [("F1", 100), ("C1", 100)])
def test_cuda_fast_path_matches_the_cpu_plain_path(network, batch):
    data = synthetic_data(n_train=400, n_test=100, shape=(1, 28, 28) if network == "F1" else (3, 32, 32))
    plain = train(cfg(network=network, batch_size=batch, compile="off"), data=data)
    fast = train(cfg(network=network, batch_size=batch, device="cuda"), data=data)
    assert fast["provenance"]["device_type"] == "cuda" and fast["provenance"]["compile"] == "default"
    for a, b in zip(plain["curve"]["minibatch_loss"], fast["curve"]["minibatch_loss"]):
        assert a == pytest.approx(b, rel=2e-2)  # TF32 convolutions and another summation order


@pytest.mark.gpu
@cuda
def test_cuda_bf16_run_and_bench():
    data = synthetic_data(n_train=400, n_test=100, shape=(3, 32, 32))
    r = train(cfg(network="C1", batch_size=100, precision="bf16", device="cuda"), data=data)
    assert r["status"] in ("converged", "not_converged") and r["precision"] == "bf16"
    result = bench("C1", batch_size=200, alpha=1.5, steps=10, device="cuda", precision="bf16", warmup=5)
    assert result["peak_kind"] == "bf16" and 0 < result["fraction_of_peak"] < 1.2
