"""A CUDA error that breaks a worker's context (an illegal address, a device-side assert) ends that worker, not
the sweep: its runs are retried once in a fresh worker, then recorded as errors. Tested on the CPU with the
error injected where training starts; out of memory is an ordinary error."""

import json
import os
import runpy

import pytest
import torch

from conftest import assert_same_run
from nerepro import RunConfig, train
from nerepro import data as datasets
from nerepro import sweep
from nerepro.record import read_record
from nerepro.results import ResultsDir
from nerepro.sweep import BrokenContext, DataCache, run_local, run_pack, sticky_cuda_error

ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"

# Imported by every process of the sweep (a sitecustomize module, via PYTHONPATH, in the spawned workers):
# the runs named in the JSON file $NEREPRO_TEST_FAULTS (run id -> tries left to fail) raise a sticky CUDA
# error where their training starts, in whichever process trains them.
FAULT = f'''
import json
import os
from pathlib import Path

import nerepro.sweep as sweep

real = sweep.train_pack


def train_pack(cfgs, *args, **kwargs):
    path = Path(os.environ["NEREPRO_TEST_FAULTS"])
    left = json.loads(path.read_text())
    if any(left.get(c.run_id, 0) > 0 for c in cfgs):
        for c in cfgs:
            if c.run_id in left:
                left[c.run_id] = max(0, left[c.run_id] - 1)
        path.write_text(json.dumps(left))
        raise RuntimeError({ILLEGAL_ADDRESS!r})
    return real(cfgs, *args, **kwargs)


sweep.train_pack = train_pack
'''


def cfg(seed, **kw):
    return RunConfig(**{**dict(network="F1", alpha=1.5, batch_size=20, seed=seed, check_every=5, check_chunk=50,
                               max_steps=10, device="cpu", precision="fp64"), **kw})


def log_lines(results: ResultsDir) -> list[list[str]]:  # time host pid event run_id
    return [line.split() for line in results.log_path.read_text().splitlines()]


@pytest.mark.parametrize("exc,sticky", [
    (RuntimeError(ILLEGAL_ADDRESS), True),
    (RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"), True),
    (RuntimeError("CUDA error: unspecified launch failure"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, ...)`"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
    (torch.AcceleratorError("CUDA error: misaligned address"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), False),
    (torch.AcceleratorError("CUDA error: out of memory"), False),
    (RuntimeError("CUDA error: out of memory"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (20x784 and 10x10)"), False),
    (ValueError("batch size 500 exceeds the 200 training samples"), False),
])
def test_sticky_cuda_errors_are_told_from_out_of_memory_and_others(exc, sticky):
    assert sticky_cuda_error(exc) is sticky


def raising(exc, ended=()):
    """A train_pack whose runs in `ended` end (their records delivered) before it raises `exc`."""
    def train_pack(cfgs, data=None, *, on_record=None, **_):
        for c in cfgs:
            if c.run_id in ended:
                on_record({"run_id": c.run_id, "network": "F1", "alpha": c.alpha, "batch_size": c.batch_size,
                           "seed": c.seed, "status": "converged"})
        raise exc
    return train_pack


@pytest.fixture
def results(tmp_path):
    store = ResultsDir(tmp_path / "r")
    store.prepare()
    return store


def test_a_pack_that_breaks_its_context_is_retried_once_then_recorded_as_errors(results, fake_fmnist_root,
                                                                                monkeypatch):
    """No fallback to runs alone (they would fail too) and no error record on the first failure; the count of
    failures lives in the sweep log, so the process that meets the second failure records the errors."""
    cache, pack = DataCache(str(fake_fmnist_root)), [cfg(0), cfg(1), cfg(2)]
    ids = [c.run_id for c in pack]
    monkeypatch.setattr(sweep, "train_pack", raising(RuntimeError(ILLEGAL_ADDRESS), ended={ids[0]}))
    with pytest.raises(BrokenContext) as first:
        run_pack(pack, results, cache)
    assert first.value.retry == ids[1:] and [r["run_id"] for r in first.value.records] == ids[:1]
    assert results.done() == {ids[0]} and sorted(p.stem for p in results.runs.glob("*.json")) == ids[:1]
    events = [(p[3], p[4]) for p in log_lines(results)]
    assert events == [("recorded:converged", ids[0])] + [("cuda-error:RuntimeError", i) for i in ids[1:]]

    monkeypatch.setattr(sweep, "train_pack", raising(RuntimeError(ILLEGAL_ADDRESS)))
    with pytest.raises(BrokenContext) as second:  # the fresh worker's try
        run_pack(pack[1:], results, cache)
    assert second.value.retry == [] and [r["status"] for r in second.value.records] == ["error", "error"]
    for run_id in ids[1:]:
        record = read_record(results.record_path(run_id))
        assert record["status"] == "error" and "illegal memory access" in record["error"]
    assert not any(p[3].startswith("pack-failed") for p in log_lines(results))

    with pytest.raises(BrokenContext) as later:  # a later sweep retries errors: the count starts again
        run_pack(pack[1:], results, cache)
    assert later.value.retry == ids[1:]


def test_out_of_memory_is_an_ordinary_error_the_worker_survives(results, fake_fmnist_root, monkeypatch):
    """The pack's runs continue alone (and fail alone here), each recorded as an error at once."""
    monkeypatch.setattr(sweep, "train_pack", raising(torch.cuda.OutOfMemoryError("CUDA out of memory.")))
    records = run_pack([cfg(0), cfg(1)], results, DataCache(str(fake_fmnist_root)))
    assert [r["status"] for r in records] == ["error", "error"] and "OutOfMemoryError" in records[0]["error"]
    events = [p[3] for p in log_lines(results)]
    assert events.count("pack-failed:OutOfMemoryError") == 2 and not any(e.startswith("cuda-error") for e in events)


def test_a_sweep_replaces_the_broken_worker_and_retries_its_run_once(tmp_path, fake_fmnist_root, monkeypatch):
    """One slot: the sweep's own process trains until a CUDA error breaks it, then worker processes, one at a
    time, take the runs left. In order: c never fails, a fails once (then trains as if nothing had happened),
    b twice (error). Two workers are spawned: one retries a and breaks on b, one records b's error."""
    c, a, b = runs = [cfg(2), cfg(0), cfg(1)]
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({a.run_id: 1, b.run_id: 2}))
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "cuda_fault.py").write_text(FAULT)
    (inject / "sitecustomize.py").write_text("import os\nif os.environ.get('NEREPRO_TEST_FAULTS'):\n"
                                             "    import cuda_fault\n")
    monkeypatch.setenv("NEREPRO_TEST_FAULTS", str(faults))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(sweep, "train_pack", sweep.train_pack)  # restored after the test
    runpy.run_path(str(inject / "cuda_fault.py"))  # this process's fault

    results = ResultsDir(tmp_path / "r")
    results.prepare()
    returned = run_local(runs, results, device="cpu", workers_per_device=1, data_dir=str(fake_fmnist_root))

    assert json.loads(faults.read_text()) == {a.run_id: 0, b.run_id: 0}  # every injected failure happened
    assert sorted(r["run_id"] for r in returned) == sorted(x.run_id for x in runs)  # b's error included
    lines = log_lines(results)

    def pids(event, run):  # the process that wrote each such line
        return [pid for _, _, pid, e, run_id in lines if e.startswith(event) and run_id == run.run_id]

    me = str(os.getpid())
    assert pids("cuda-error", a) == [me]  # this process broke on a's first try, which left no record ...
    assert len(pids("recorded:", a)) == 1 and pids("recorded:", a) != [me] and not pids("recorded:error", a)
    assert len(set(pids("cuda-error", b))) == 2 and me not in pids("cuda-error", b)  # ... and each worker b broke
    assert pids("recorded:error", b) == pids("cuda-error", b)[1:]  # the second failure recorded the error
    assert not pids("cuda-error", c) and pids("recorded:", c) == [me]
    assert sum(e == "worker-exited:cuda-error" for _, _, _, e, _ in lines) == 2
    assert not any(e.startswith("worker-died") for _, _, _, e, _ in lines)  # not counted against max_restarts

    error = read_record(results.record_path(b.run_id))
    assert error["status"] == "error" and "illegal memory access" in error["error"]
    data = datasets.load(datasets.NETWORK_DATASET["F1"], str(fake_fmnist_root))
    assert_same_run(read_record(results.record_path(a.run_id)), train(a, data=data))  # as if nothing happened
