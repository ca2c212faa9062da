"""One run, one record: a JSON file written atomically, carrying its provenance."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from . import __version__
from .errors import ConfigError, ResultsError

STATUSES = ("converged", "not_converged", "diverged", "error")
REQUIRED = ("run_id", "network", "alpha", "batch_size", "seed", "status")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a non-finite number is recorded as null."""
    return value if value is not None and math.isfinite(value) else None


def temp_path(path: Path) -> Path:
    """A temporary sibling of `path` named after its writer (host, pid), so stale ones can be cleaned."""
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")


def replace_atomically(path: Path, write) -> Path:
    """`write(tmp)` a temporary sibling of `path`, fsync it, then rename it to `path`: readers never see half a
    file, and a failed write leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj: dict) -> Path:
    """Write `obj` as JSON atomically (replace_atomically)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")

    return replace_atomically(path, write)


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temporary files left by writers on this host that no longer run (a killed sweep)."""
    removed = []
    host = _host()
    for tmp in Path(directory).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # .<name>.<host>.<pid>.tmp
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        if not _pid_alive(int(parts[2])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_record(path: Path) -> dict:
    """A record, or ResultsError naming the file if it is not a complete record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path} is not a valid record ({type(e).__name__}): delete it or move it aside") from None
    missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
    if missing:
        raise ResultsError(f"{path} lacks {', '.join(missing)}: delete it or move it aside")
    if record["status"] not in STATUSES:
        raise ResultsError(f"{path} has unknown status {record['status']!r}: delete it or move it aside")
    return record


def check_writable(directory: Path) -> Path:
    """Fail before training, not after, if records cannot be written to `directory`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {directory} ({e.strerror or e}): "
                          "choose another with --out") from None
    return directory


@lru_cache(maxsize=None)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout; $NEREPRO_GIT_COMMIT, where set, names the commit of a copied checkout
    whose .git is missing or stale (a GPU box, a cluster), its dirty flag then unknown."""
    if os.environ.get("NEREPRO_GIT_COMMIT"):
        return os.environ["NEREPRO_GIT_COMMIT"], None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        # results are data, not code: a sweep writing its log into a committed results directory is not a change
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@lru_cache(maxsize=None)
def cpu_id(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's family, model and stepping, e.g. "family 25, model 17, stepping 1": they tell apart machines that
    call themselves the same ("AMD EPYC" of two generations); None where unknown."""
    try:
        first = Path(cpuinfo).read_text().split("\n\n")[0]  # the first processor's block
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    parts = [f"{name} {fields[key]}" for name, key in (("family", "cpu family"), ("model", "model"),
                                                        ("stepping", "stepping")) if fields.get(key)]
    return ", ".join(parts) or None


def provenance(device: torch.device) -> dict:
    """Where and with what a record was made: code version, libraries, device."""
    import torchvision

    commit, dirty = git_state()
    return {
        "nerepro": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the CPU kernels torch runs: AVX512, AVX2, ...
        "cpu_id": cpu_id(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


SEGMENT_FIELDS = ("git_commit", "git_dirty", "device", "threads", "cpu_capability", "cpu_id", "host")


def segment(device: torch.device, first_step: int, last_step: int, wall_s: float, cpu_s: float | None) -> dict:
    """One segment of a run (from its start or a checkpoint to a pause or its end): its steps, wall and CPU time,
    and the code, machine and threads that ran it (SEGMENT_FIELDS of its provenance)."""
    made = provenance(device)
    return {"steps": [first_step, last_step], "wall_s": wall_s, "cpu_s": cpu_s, **{k: made[k] for k in SEGMENT_FIELDS}}


def segments_provenance(segments: list[dict]) -> dict:
    """The provenance fields of a resumed run: its segments, oldest first, and a dirty flag for the whole run
    (true where any segment ran uncommitted changes; else null where any segment's is unknown; else false).
    The record's other fields (git_commit among them) stay those of its last segment."""
    flags = [s.get("git_dirty") for s in segments]
    return {"segments": segments, "git_dirty": True if True in flags else None if None in flags else False}
