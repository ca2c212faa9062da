"""CUDA errors that break a worker's context: which ones, and how many fresh workers a run gets after one.

After an illegal address, a device-side assert or a failed kernel, every CUDA call of the process fails. A
sweep's worker that hits one exits (sweep.run_local replaces it), and the runs it had retry once in a fresh
worker before they are recorded as errors; the count lives in the sweep log, which outlives the workers.
"""

from __future__ import annotations

import torch

from .results import ResultsDir

CUDA_RETRIES = 1  # fresh workers a run gets after a CUDA error broke its worker's context, before it is an `error`
CUDA_EXIT = 70  # exit status of a worker whose CUDA context broke: the pool breaks and run_local starts fresh ones
# messages of CUDA errors after which every CUDA call of the process fails (CUDA's "sticky" errors)
STICKY_CUDA = ("CUDA error", "illegal memory access", "device-side assert", "unspecified launch failure",
               "misaligned address", "illegal instruction", "uncorrectable ECC error",
               "CUBLAS_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_INTERNAL_ERROR", "CUDNN_STATUS_EXECUTION_FAILED",
               "CUDNN_STATUS_INTERNAL_ERROR")


def sticky_cuda_error(exc: BaseException) -> bool:
    """Whether `exc` is a CUDA error after which every CUDA call of this process fails (an illegal address, a
    device-side assert, a failed kernel): its process must exit, since nothing it runs next can succeed. Out of
    memory never is: the context survives it, and the run's error record says what to change. A false alarm
    costs one worker restart and one retry; a missed one, every run the worker takes next."""
    text = str(exc).lower()
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text:
        return False
    cuda = isinstance(exc, (torch.AcceleratorError, torch.cuda.CudaError)) or \
        any(s.lower() in text for s in STICKY_CUDA)  # a failed CUDA call, or one wrapped by torch.compile, cuDNN
    return cuda and context_broken()


def context_broken() -> bool:
    """Whether this process's CUDA context fails a trivial round trip (after a CUDA error: a deterministic
    one, such as a missing kernel image, leaves it working; an illegal address does not). Without CUDA the
    error could not have come from a working context."""
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() != 2.0
    except Exception:  # noqa: BLE001 - any failure of the round trip is the answer
        return True


class BrokenContext(Exception):
    """A CUDA error broke this process's context (sticky_cuda_error): the worker must exit, so that a fresh
    one retries the runs in `retry`. `records`: those of the runs that ended before (written, if the sweep
    writes) and of the runs that failed their last try."""

    def __init__(self, records: list[dict], retry: list[str]):
        super().__init__(f"CUDA context broken; {len(retry)} runs to retry in a fresh worker")
        self.records, self.retry = records, retry


def cuda_failures(results: ResultsDir) -> dict[str, int]:
    """Per run id, the workers the run broke with a CUDA error since its last record or pause: `cuda-error`
    lines in the sweep log, which outlives the workers (a record, even an `error`, or a pause at a time limit
    starts the count again, so a later sweep, or lease, retries afresh). Runs without one are absent."""
    counts: dict[str, int] = {}
    for event, run_id in log_events(results):
        if event.startswith("cuda-error"):
            counts[run_id] = counts.get(run_id, 0) + 1
        elif event.startswith(("recorded:", "paused:")):
            counts.pop(run_id, None)
    return counts


def log_events(results: ResultsDir, offset: int = 0) -> list[tuple[str, str]]:
    """(event, run id) of each sweep log line after byte `offset`."""
    try:
        with open(results.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [(parts[3], parts[4]) for line in text.splitlines() if len(parts := line.split()) >= 5]


def log_size(results: ResultsDir) -> int:
    try:
        return results.log_path.stat().st_size
    except FileNotFoundError:
        return 0
