"""The fast path computes what the plain path computes (CPU here; `pytest -m gpu` on a CUDA machine)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_run, synthetic_data
from nerepro import RunConfig, build_model, train
from nerepro.bench import bench, training_flops_per_sample
from nerepro.gradient import ne_objective
from nerepro.models import GhostBatchNorm
from nerepro.sampling import make_sampler

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cfg(**kw):
    base = dict(network="F1", alpha=1.5, batch_size=50, check_every=10, max_steps=30, device="cpu")
    return RunConfig(**{**base, **kw})


def test_flop_counts_match_the_architecture():
    """Forward, weight gradients, and input gradients for every layer but the first (2 FLOPs per MAC each)."""
    f1 = 784 * 500 + 6 * 500 * 500 + 500 * 10
    assert training_flops_per_sample("F1") == 6 * f1 - 2 * 784 * 500
    first = 32 * 32 * 9 * 3 * 64
    c1 = 9 * (32 * 32 * (3 * 64 + 2 * 64 * 64) + 16 * 16 * (64 * 128 + 2 * 128 * 128)
              + 8 * 8 * (128 * 256 + 2 * 256 * 256)) + 4096 * 10
    assert training_flops_per_sample("C1") == 6 * c1 - 2 * first and 1.5e9 < 6 * c1 < 1.7e9
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


def test_ghost_batch_norm_under_bf16_autocast_keeps_bf16_activations_and_fp32_statistics():
    torch.manual_seed(0)
    # one layer: a bf16 input (a convolution's output under autocast) normalised as the fp32 layer would
    x = (torch.randn(40, 8, 6, 6) * 3 + 1).bfloat16()
    exact, fast = GhostBatchNorm(8, ghost_size=10), GhostBatchNorm(8, ghost_size=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.bfloat16 and fast.running_mean.dtype == fast.running_var.dtype == torch.float32
    torch.testing.assert_close(out.float(), exact(x.float()), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fast.running_mean, exact.running_mean)
    torch.testing.assert_close(fast.running_var, exact.running_var)
    # the whole C1: bf16 between the convolutions, fp32 logits and loss close to fp32 training's
    x, y = torch.rand(40, 3, 32, 32), torch.randint(0, 10, (40,))
    exact, fast = build_model("C1", seed=0, ghost_batch_size=20), build_model("C1", seed=0, ghost_batch_size=20)
    loss = F.cross_entropy(exact(x), y)
    loss.backward()
    dtypes = []
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
             for m in fast.features if isinstance(m, (GhostBatchNorm, torch.nn.ReLU, torch.nn.MaxPool2d))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fast(x)
        fast_loss = F.cross_entropy(logits, y)
        fast_loss.backward()
    for h in hooks:
        h.remove()
    assert logits.dtype == torch.float32 and set(dtypes) == {torch.bfloat16}
    assert fast_loss.item() == pytest.approx(loss.item(), rel=2e-2)
    grad, fast_grad = exact.output.weight.grad, fast.output.weight.grad  # deeper layers amplify bf16 rounding
    assert ((fast_grad - grad).norm() / grad.norm()).item() < 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inference uses the fp32 running statistics
        assert fast.eval()(x).dtype == torch.float32


def test_bench_c1_in_bf16_runs(tmp_path):
    result = bench("C1", batch_size=100, alpha=1.0, steps=1, device="cpu", precision="bf16", check_every=50,
                   warmup=0, data_dir=str(tmp_path))
    assert result["precision"] == "bf16" and result["data"] == "random" and result["steps_per_s"] > 0


def test_compiled_graphs_have_static_shapes_one_per_batch_size():
    """A second B in one process compiles a static graph of its own, never a dynamic-shape one."""
    from nerepro.fastpath import compiled

    graphs = []

    def recording(gm, example_inputs):
        graphs.append([i for i in example_inputs if not isinstance(i, torch.Tensor)])
        return gm.forward

    torch._dynamo.reset()
    forward = compiled(build_model("C1", seed=0, ghost_batch_size=10), "default", backend=recording)
    for b in (20, 40, 60, 40):
        forward(torch.rand(b, 3, 32, 32))
    torch._dynamo.reset()
    assert len(graphs) == 3 and graphs == [[], [], []]  # no symbolic sizes among the inputs


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
    """torch.compile's kernels against eager ones over a whole run, in float64: the same run to float64
    rounding (fused kernels sum in another order), every decision at the same step."""
    data = synthetic_data()
    eager = train(cfg(compile="off", precision="fp64"), data=data)
    compiled = train(cfg(compile="default", precision="fp64"), data=data)
    assert compiled["provenance"]["compile"] == "default"
    assert_same_run(compiled, eager, rel=1e-9)


def test_bench_reports_what_it_promises(monkeypatch):
    """The training loop alone is timed: a model construction that takes 100 s on the clock is not in it."""
    import importlib
    import time

    training = importlib.import_module("nerepro.train")  # the module (the package exports the function)
    build, clock, late = training.build_model, time.perf_counter, [0.0]

    def slow_build(*args, **kwargs):
        late[0] += 100.0  # as far as any timer in this process can tell
        return build(*args, **kwargs)

    monkeypatch.setattr(training, "build_model", slow_build)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + late[0])
    result = bench("F1", batch_size=100, alpha=1.5, steps=6, device="cpu", check_every=3, warmup=2)
    assert result["steps"] == 6 and 6 / 100 < result["steps_per_s"]
    assert result["samples_per_s"] == pytest.approx(result["steps_per_s"] * 200)
    assert result["achieved_tflops"] == pytest.approx(result["samples_per_s"] * training_flops_per_sample("F1") / 1e12, rel=1e-9)
    assert 0 < result["fraction_of_peak"] < 2 and 0 <= result["check_share"] < 1
    assert result["peak_memory_gib"] > 0 and result["device_type"] == "cpu"


# ---- CUDA: the fast path (TF32 convolutions, channels_last, cuDNN autotuning, fused Adam) against the plain
# path on the CPU, step by step on the same minibatches, and the bf16 option. Skipped without CUDA.

@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("sampling", ["independent", "epoch", "paired"])
def test_cuda_draws_the_cpu_minibatches(sampling):
    cpu = make_sampler(sampling, 60_000, 900, torch.device("cpu"), seed=3, second=True)
    gpu = make_sampler(sampling, 60_000, 900, torch.device("cuda"), seed=3, second=True)
    for step in (0, 1, 2, 66, 67, 10_000, 99_999):
        assert torch.equal(cpu.draw(step), gpu.draw(step).cpu())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("network,batch,rel", [("F1", 100, 3e-4), ("C1", 100, 2e-2)])
def test_cuda_fast_path_matches_the_cpu_plain_path_step_by_step(network, batch, rel):
    """The same minibatches on both devices: every step's minibatch loss within fp32 (F1: matmuls stay fp32)
    or TF32 (C1's convolutions) rounding of the CPU's. Adam's first steps amplify rounding (an update is
    about lr x the gradient's sign): on an H100 (2026-11-28) F1's losses agreed to 7 digits for 4 steps
    and to 9e-5 at step 6, so 6 steps are compared."""
    data = synthetic_data(n_train=400, n_test=100, shape=(1, 28, 28) if network == "F1" else (3, 32, 32))
    run = cfg(network=network, batch_size=batch, check_every=1, max_steps=6, compile="off")
    plain = train(run, data=data)
    fast = train(run.replace(device="cuda"), data=data)
    assert fast["provenance"]["device_type"] == "cuda" and fast["run_id"] == plain["run_id"]
    assert len(fast["curve"]["minibatch_loss"]) == 6
    pairs = list(zip(plain["curve"]["minibatch_loss"], fast["curve"]["minibatch_loss"]))
    assert all(b == pytest.approx(a, rel=rel) for a, b in pairs), [f"{a:.7g} {b:.7g}" for a, b in pairs]


@pytest.mark.gpu
@cuda
def test_cuda_bf16_run_and_bench_timing():
    data = synthetic_data(n_train=400, n_test=100, shape=(3, 32, 32))
    r = train(cfg(network="C1", batch_size=100, precision="bf16", device="cuda", compile="off"), data=data)
    assert r["status"] in ("converged", "not_converged") and r["precision"] == "bf16"
    # fewer steps than --check-every: without a synchronisation the clock would time only the enqueueing,
    # and the FLOP rate would exceed the device's
    result = bench("F1", batch_size=5000, alpha=1.5, steps=5, check_every=50, device="cuda", warmup=3)
    assert 0 < result["fraction_of_peak"] < 1


def crossing_targets(run: RunConfig, data) -> RunConfig:
    """`run` with L* and L** that it crosses mid-way (first halving, then stopping before its last check),
    read from two pilot runs: so that a pack of it and its neighbours has members that halve and leave at
    different steps. The pilots' checks are exact (no early exit: the same decisions, whole values), and an
    NE reading can go negative and stop a pilot early: the targets are chosen among positive readings."""
    def readings(pilot: RunConfig) -> list[float]:
        curve = train(pilot.replace(check_early_exit=False), data=data)["curve"]
        return [v for v, exact in zip(curve["train_loss"], curve["exact"]) if v is not None and exact]

    def new_lows(values, start, end):
        return [i for i in range(start, end) if 0 < values[i] < min(values[:i])]

    values = readings(run.replace(l_star=1e-12, l_star_star=1e-12))
    j = new_lows(values, 2, len(values) // 2)[0]
    halving = run.replace(l_star=(min(values[:j]) + values[j]) / 2, l_star_star=1e-12)
    values = readings(halving)
    lows = new_lows(values, j + 1, len(values) - 1)  # not the last check: the run must leave before max_steps
    k = next((i for i in lows if i >= len(values) // 2), lows[-1])
    return run.replace(l_star=halving.l_star, l_star_star=(min(values[:k]) + values[k]) / 2)


def assert_pack_is_runs_alone(runs: list[RunConfig], data, alone: tuple[int, ...] = (0, 1, -1)) -> list[dict]:
    """Train `runs` as one pack; the members `alone` (the pilot of crossing_targets, its neighbour of another
    alpha, the last) trained alone too must give the same records. (Three of ten keep this test, the gate of a
    GPU session's packs, within seconds.)"""
    from nerepro.train import train_pack

    packed = train_pack(runs, data=data)
    assert [r["run_id"] for r in packed] == [r.run_id for r in runs]
    assert all(r["pack_size"] == len(runs) for r in packed)
    for i in alone:
        assert_same_run(packed[i], train(runs[i], data=data), rel=1e-9)
    return packed


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("batch,alphas", [(2000, (1.5, 2.0, 3.0)), (100, (1.5, 3.0)), (100, (1.0,))])
def test_cuda_pack_is_its_runs_alone_in_float64(batch, alphas):
    """What a sweep's packs rely on, on CUDA in float64 (decisive: two computations of a run agree to ~1e-10
    and take every decision at the same step): R = 10 under the default reading (paired or, at alpha = 1,
    epoch draws; epoch-mean readings; Keras' Adam), members halving and leaving at their own steps."""
    data = synthetic_data(n_train=4 * batch, n_test=200)
    base = cfg(batch_size=batch, alpha=alphas[0], max_steps=40, device="cuda", precision="fp64",
               check_every="epoch", stop_loss="ne_epoch_mean", sampling="paired", adam_update="keras")
    base = crossing_targets(base, data)
    runs = [base.replace(seed=s, alpha=alphas[s % len(alphas)]) for s in range(10)]
    packed = assert_pack_is_runs_alone(runs, data)
    assert packed[0]["status"] == "converged" and packed[0]["lr_halved_step"] is not None
    assert len({r["steps"] for r in packed}) > 1  # members left at different steps


@pytest.mark.gpu
@cuda
def test_cuda_pack_checks_the_exact_training_loss_as_alone():
    """The Eq. (1) reading: every check a full pass over the training set (shared by the pack's runs), its
    L(w) equal to each run's own pass, early exits and all, in float64."""
    data = synthetic_data(n_train=2000, n_test=200)
    base = cfg(batch_size=100, max_steps=40, check_every=5, check_gate=0, check_chunk=300, device="cuda",
               precision="fp64", stop_loss="full", sampling="independent", adam_update="pytorch")
    base = crossing_targets(base, data)
    runs = [base.replace(seed=s, alpha=(1.5, 2.0)[s % 2]) for s in range(10)]
    packed = assert_pack_is_runs_alone(runs, data)
    assert packed[0]["status"] == "converged" and packed[0]["lr_halved_step"] is not None
    assert len({r["steps"] for r in packed}) > 1  # members left at different steps
    for r in packed:  # every check made a pass: exact values, and lower bounds where it exited early
        assert None not in r["curve"]["train_loss"]
    assert not all(all(r["curve"]["exact"]) for r in packed)  # early exits happened, packed as alone


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision,rel", [("fp32", 3e-4), ("tf32", 3e-2), ("bf16", 3e-2)])
def test_cuda_pack_first_steps_in_each_precision(precision, rel):
    """fp32, TF32 and bf16 packs against their runs alone on CUDA for 5 steps (Adam's first steps amplify
    rounding, so longer comparisons in these precisions measure drift, not correctness): every step's
    minibatch loss within the precision's rounding."""
    from nerepro.train import train_pack

    data = synthetic_data(n_train=400, n_test=100)
    runs = [cfg(batch_size=20, alpha=a, seed=s, check_every=1, max_steps=5, device="cuda", precision=precision)
            for a, s in ((1.5, 0), (2.0, 1), (1.5, 2))]
    for run, record in zip(runs, train_pack(runs, data=data)):
        alone = train(run, data=data)
        assert record["run_id"] == alone["run_id"] and record["pack_size"] == 3
        pairs = list(zip(alone["curve"]["minibatch_loss"], record["curve"]["minibatch_loss"]))
        assert len(pairs) == 5 and all(b == pytest.approx(a, rel=rel) for a, b in pairs), pairs


@pytest.mark.gpu
@cuda
def test_cuda_and_cpu_give_the_same_run_in_float64():
    """A whole run (halving, stopping) on the CPU and on CUDA from the same minibatches: in float64 the two
    agree to ~1e-10 and take every decision at the same step."""
    data = synthetic_data(n_train=400, n_test=100)
    run = crossing_targets(cfg(batch_size=50, check_every=2, max_steps=200, precision="fp64"), data)
    cpu, gpu = train(run, data=data), train(run.replace(device="cuda"), data=data)
    assert gpu["provenance"]["device_type"] == "cuda" and cpu["status"] == "converged"
    assert_same_run(gpu, cpu, rel=1e-9)
