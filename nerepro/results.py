"""A results directory: records, checkpoints, locks and the sweep log, and `collect` into runs.csv.

Layout (README, 'Results directory'):
  DIR/runs/<run_id>.json         one record per run, written atomically
  DIR/runs/<run_id>.trace.csv.gz with --trace: every step's L_B and NE loss, written before the record
  DIR/checkpoints/<run_id>.pt    state of a run in progress; removed once its record is written
  DIR/paused/<run_id>.pt         a kept copy of a paused run's checkpoint (`nerepro keep-paused`), to commit or
                                 move with the records; a sweep continues the run from it where the checkpoint
                                 is missing, unusable or behind it
  DIR/corrupt/                   unreadable records moved aside (their runs are redone)
  DIR/sweep.log                  one line per event: time, host, pid, event, run id
  DIR/.locks/<run_id>.lock       held (flock) by the process running that run
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

import pandas as pd

from .config import DEFAULT_PROTOCOL, LATER_FIELDS, PROTOCOLS, RunConfig
from .errors import ResultsError
from .record import read_record, remove_stale_temp_files, write_json_atomic
from .trace import write_record_trace

# runs.csv: every scalar field of a record, plus these settings and provenance fields (README, 'runs.csv')
CONFIG_COLUMNS = ("max_steps", "l_star", "l_star_star")
PROVENANCE_COLUMNS = ("device", "cpu_capability", "cpu_id", "threads", "git_commit", "git_dirty", "torch", "nerepro")
IDENTITY = ("network", "alpha", "batch_size", "seed")
# variant parts that an alpha = 1 run without them also stands for: its ne_epoch_mean is epoch_mean and its
# paired sampling epoch sampling (the defaults' values at alpha = 1)
ALPHA_ONE_ALIASES = {"stop_loss=epoch_mean", "sampling=epoch"}
DEFAULT_VARIANT = "protocol=keras (default)"  # the variant of runs at nerepro's defaults: the Keras reading


class ResultsDir:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.checkpoints = self.root / "checkpoints"
        self.kept = self.root / "paused"
        self.corrupt = self.root / "corrupt"
        self.locks = self.root / ".locks"
        self.log_path = self.root / "sweep.log"

    def record_path(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def checkpoint_path(self, run_id: str) -> Path:
        return self.checkpoints / f"{run_id}.pt"

    def kept_path(self, run_id: str) -> Path:
        return self.kept / f"{run_id}.pt"

    def paused(self, run_id: str) -> bool:
        """Whether the run has a checkpoint to continue from, here or as a kept copy (restored by prepare)."""
        return self.checkpoint_path(run_id).exists() or self.kept_path(run_id).exists()

    def prepare(self) -> list[str]:
        """Create the layout, clean up after killed writers, move corrupt records aside, continue paused runs
        from their kept copies; returns notes."""
        for d in (self.runs, self.checkpoints, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.runs, self.checkpoints, self.kept):
            if d.is_dir():
                remove_stale_temp_files(d)
        notes = [f"moved corrupt record aside: {note}" for note in self.move_corrupt_aside()]
        return notes + self.restore_kept()

    def keep_paused(self) -> list[str]:
        """Copy each paused run's checkpoint to DIR/paused/ where the kept copy is missing, unusable or at an
        earlier step, and drop the kept copies of runs recorded since, so that the results directory's records and
        kept copies, copied or committed elsewhere, continue every paused run there; returns a note per change."""
        from .checkpoint import checkpoint_step, copy_atomic

        done, notes = self.done(), []
        for path in sorted(self.checkpoints.glob("*.pt")):  # none where the folder is missing
            run_id = path.stem
            if run_id in done or (here := checkpoint_step(path, run_id)) is None:
                continue
            kept = checkpoint_step(self.kept_path(run_id), run_id)
            if kept is None or kept[0] < here[0]:
                try:
                    copy_atomic(path, self.kept_path(run_id))
                except FileNotFoundError:  # recorded meanwhile by a sweep still running here: nothing to keep
                    continue
                notes.append(f"kept {run_id} at step {here[0]:,}" + (f" (was {kept[0]:,})" if kept else ""))
        for path in sorted(self.kept.glob("*.pt")):
            if path.stem in done:
                path.unlink(missing_ok=True)
                notes.append(f"dropped the kept copy of {path.stem}: recorded")
        return notes

    def restore_kept(self) -> list[str]:
        """Continue paused runs from their kept copies: a usable kept copy replaces a checkpoint of a run not yet
        recorded where that is missing or unusable, or at an earlier step on the same device type (a checkpoint
        of another device type is left alone: the device that runs it decides), under the run's lock (a run
        another process trains is never touched); returns a note per run restored or kept copy ignored."""
        from .checkpoint import checkpoint_step, copy_atomic

        if not self.kept.is_dir():
            return []
        done, notes = self.done(), []
        for path in sorted(self.kept.glob("*.pt")):
            run_id = path.stem
            if run_id in done:
                continue
            if (kept := checkpoint_step(path, run_id)) is None:
                notes.append(f"ignoring the kept copy {path}: unreadable, or of another run or version")
                continue
            with self.claim(run_id) as mine:
                if not mine:
                    continue
                here = checkpoint_step(self.checkpoint_path(run_id), run_id)
                if here is None or (here[1] == kept[1] and here[0] < kept[0]):
                    copy_atomic(path, self.checkpoint_path(run_id))
                    notes.append(f"continuing {run_id} from its kept copy (step {kept[0]:,})")
        return notes

    def move_corrupt_aside(self) -> list[str]:
        notes = []
        for path in sorted(self.runs.glob("*.json")):
            try:
                read_record(path)
            except ResultsError as e:
                self.corrupt.mkdir(parents=True, exist_ok=True)
                target = self.corrupt / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(path, target)
                notes.append(f"{path.name} -> {target} ({e})")
        return notes

    def done(self) -> set[str]:
        """Run ids with a finished record (errors are retried, so they do not count)."""
        done = set()
        for path in self.runs.glob("*.json"):
            try:
                if read_record(path)["status"] != "error":
                    done.add(path.stem)
            except ResultsError:
                pass
        return done

    def write(self, record: dict) -> Path:
        """Write a record atomically, then drop the run's checkpoint and its kept copy (never the other way round;
        an error record too: its run is retried from the start)."""
        path = self.record_path(record["run_id"])
        path = write_json_atomic(path, write_record_trace(record, path))
        self.checkpoint_path(record["run_id"]).unlink(missing_ok=True)
        self.kept_path(record["run_id"]).unlink(missing_ok=True)
        self.log(f"recorded:{record['status']}", record["run_id"])
        return path

    def log(self, event: str, run_id: str = "-", note: str = "") -> None:
        """Append `time host pid event run_id [note]` to DIR/sweep.log (note: more fields, `key:value` each,
        separated by single spaces)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} {os.getpid()} {event} {run_id}" \
               + (f" {note}" if note else "") + "\n"
        with open(self.log_path, "a") as f:  # one short write in append mode: lines never interleave
            f.write(line)

    @contextlib.contextmanager
    def claim(self, run_id: str):
        """Yield True while this process holds the run's lock, False if another process holds it.

        The lock dies with its process (even on SIGKILL), so a killed sweep never blocks a restart.
        """
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{run_id}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def load_records(root: Path | str) -> tuple[list[dict], list[str]]:
    """Every readable record under DIR/runs (or DIR itself); unreadable ones become notes, never a crash."""
    root = Path(root)
    folder = root / "runs" if (root / "runs").is_dir() else root
    records, notes = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(read_record(path))
        except ResultsError as e:
            notes.append(f"skipped {e}")
    return records, notes


def variant_of(record: dict) -> str:
    """The settings of a record that differ from nerepro's defaults (the Keras reading), besides network,
    alpha, B and seed: the report never pools runs of different variants. Runs at the defaults are
    DEFAULT_VARIANT; a named reading's settings (config.PROTOCOLS, e.g. eq1) are named by it."""
    config = {**LATER_FIELDS, **(record.get("config") or {})}  # a record older than a field ran its legacy value
    try:
        default = RunConfig(record["network"], float(record["alpha"]), int(record["batch_size"])).result_fields()
    except Exception:  # noqa: BLE001 - an odd record still gets reported, as its own variant
        return "unknown settings"
    default = {**LATER_FIELDS, **default}  # fields added later are omitted from result_fields at their default
    diffs = {k: config[k] for k in default if k not in IDENTITY and k in config and config[k] != default[k]}
    labels = []
    for name, settings in PROTOCOLS.items():  # a named reading's settings, as they take effect, by its name
        if name == DEFAULT_PROTOCOL:
            continue  # its settings are the defaults
        preset = RunConfig(record["network"], float(record["alpha"]), int(record["batch_size"]), **settings)
        named = {k: v for k, v in {**LATER_FIELDS, **preset.result_fields()}.items() if k in settings}
        if all(diffs.get(k, default[k]) == v for k, v in named.items()) and any(k in diffs for k in named):
            labels.append(f"protocol={name}")
            diffs = {k: v for k, v in diffs.items() if k not in named}
    labels += [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in diffs.items()]
    return ", ".join(labels) or DEFAULT_VARIANT


def variant_aliases(frame: pd.DataFrame) -> pd.DataFrame:
    """Add a copy of each alpha = 1 run to every variant it also stands for, when runs with alpha != 1 of that
    variant exist, so those variants have their alpha = 1 rows: at alpha = 1 ne_epoch_mean is epoch_mean and
    paired sampling is epoch sampling, so a run there stands for both readings of each."""
    present = set(frame.loc[frame["alpha"] != 1, "variant"])
    copies = []
    for _, row in frame[frame["alpha"] == 1].iterrows():
        own = _parts(row["variant"])
        for label in present - {row["variant"]}:
            extra = _parts(label) - own
            if own <= _parts(label) and extra and extra <= ALPHA_ONE_ALIASES:
                copies.append(row.copy().to_dict() | {"variant": label})
    return pd.concat([frame, pd.DataFrame(copies)], ignore_index=True) if copies else frame


def _parts(variant: str) -> set[str]:
    return set() if variant == DEFAULT_VARIANT else set(variant.split(", "))


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record: its scalar fields, its variant and the provenance columns; no curve."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        row["variant"] = variant_of(r)
        config = r.get("config") or {}
        row.update({k: config.get(k) for k in CONFIG_COLUMNS})
        prov = r.get("provenance") or {}
        row.update({f"provenance_{k}": prov.get(k) for k in PROVENANCE_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def collect(root: Path | str) -> tuple[Path, int, list[str]]:
    """Write DIR/runs.csv from DIR/runs/*.json; returns (path, rows, notes)."""
    records, notes = load_records(root)
    if not records:
        raise ResultsError(f"no records in {Path(root) / 'runs'}: run `nerepro sweep ... --results {root}` first")
    frame = records_frame(records).sort_values(["network", "alpha", "batch_size", "seed", "run_id"])
    path = Path(root) / "runs.csv"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path, len(frame), notes
