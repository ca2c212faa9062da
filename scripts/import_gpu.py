"""Merge a GPU session's results archive into a committed results directory, then rebuild its report.

    make import-gpu ARCHIVE=OUT/results.tar.gz                     (into results/f1)
    .venv/bin/python scripts/import_gpu.py OUT/results.tar.gz [--into results/f1]

The archive is scripts/gpu_session.sh's results.tar.gz: `results/runs/*.json`, `results/sweep.log` and the
session's report (ignored here: the report is rebuilt from the merged records). Every record is validated
(`nerepro.record.read_record`) before anything is written; then each is merged under the run's lock:
new run ids are added, a record already present is kept, except an error record, which a finished one
replaces; an error record never replaces a finished one; a run id whose results differ between the
two is a conflict, reported, and the existing record stays. The session's sweep.log lines not yet in
DIR/sweep.log are appended. If anything changed, DIR/report is rebuilt as `nerepro report` builds it; the
Table 2/3 F1 rows before and after are printed. Bad input is one line on stderr and exit code 2, with
nothing written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro.errors import NereproError, ResultsError  # noqa: E402
from nerepro.record import read_record, remove_stale_temp_files, write_json_atomic  # noqa: E402
from nerepro.results import ResultsDir  # noqa: E402
from nerepro.trace import read_trace, trace_path  # noqa: E402

DEFAULT_INTO = "results/f1"
# the fields that say what a run gave; two records of one run id that differ here are a conflict
RESULT_FIELDS = ("status", "convergence_steps", "steps", "lr_halved_step", "train_loss", "test_acc", "test_loss")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a run id becomes a file name


def read_archive(path: Path, traces: dict | None = None) -> tuple[dict[str, dict], list[str], list[str], list[str]]:
    """(valid records by run id, the session's sweep.log lines, invalid members and why, other notes);
    ResultsError for an archive that is missing, not a tar, or holds no valid record. Readable per-step traces
    (runs/<run_id>.trace.csv.gz) go into `traces` by run id, as bytes."""
    if not path.is_file():
        raise ResultsError(f"no archive at {path}: pass a session's results.tar.gz (scripts/gpu_session.sh OUTDIR)")
    records, log_lines, invalid, notes = {}, [], [], []
    try:
        with tarfile.open(path) as tar, tempfile.TemporaryDirectory() as tmp:
            for member in tar.getmembers():
                parts = [p for p in PurePosixPath(member.name).parts if p not in (".", "")]
                if not member.isfile() or len(parts) > 3:
                    continue
                if parts[-1] == "sweep.log" and len(parts) <= 2:
                    log_lines += tar.extractfile(member).read().decode("utf-8", "replace").splitlines()
                elif len(parts) >= 2 and parts[-2] == "runs" and parts[-1].endswith(".trace.csv.gz"):
                    data = tar.extractfile(member).read()
                    file = Path(tmp) / "member.trace.csv.gz"
                    file.write_bytes(data)
                    try:
                        read_trace(file)
                    except ResultsError as e:
                        invalid.append(str(e).replace(str(file), member.name).split(": rerun")[0])
                        continue
                    if traces is not None:
                        traces[parts[-1].removesuffix(".trace.csv.gz")] = data
                elif len(parts) >= 2 and parts[-2] == "runs" and parts[-1].endswith(".json"):
                    record, why = _validate(tar.extractfile(member).read(), member.name, Path(tmp))
                    if record is None:
                        invalid.append(why)
                    elif record["run_id"] in records:  # a member appended twice: the same rule as the merge
                        action, _ = decide(records[record["run_id"]], record)
                        if action == "replaced":
                            records[record["run_id"]] = record
                        notes.append(f"{member.name}: run id {record['run_id']} twice in the archive, kept once")
                    else:
                        records[record["run_id"]] = record
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        first = str(e).splitlines()[0].rstrip(":") if str(e) else ""
        raise ResultsError(f"{path} is not a readable tar archive ({type(e).__name__}: {first})") from None
    if not records:
        detail = f"; {len(invalid)} invalid, e.g. {invalid[0]}" if invalid else ""
        raise ResultsError(f"{path} holds no valid records (results/runs/*.json){detail}")
    return records, log_lines, invalid, notes


def _validate(data: bytes, name: str, tmp: Path) -> tuple[dict | None, str]:
    """A member's record, through read_record (JSON, required fields, a known status), or None and why."""
    file = tmp / "member.json"
    file.write_bytes(data)
    try:
        record = read_record(file)
    except ResultsError as e:
        return None, str(e).replace(str(file), name).split(": delete it")[0]
    stem = PurePosixPath(name).stem
    if not isinstance(record["run_id"], str) or not SAFE_ID.match(record["run_id"]) or record["run_id"] != stem:
        return None, f"{name}: its run_id {record['run_id']!r} does not name the file"
    return record, ""


def decide(existing: dict | None, new: dict) -> tuple[str, str]:
    """(action, detail) for a record of the archive against the one recorded: added, replaced (an error
    record by a finished one), kept (already present), skipped (an error never replaces a finished run),
    conflict (the same run id with other results: the existing record stays)."""
    if existing is None:
        return "added", new["status"]
    old_error, new_error = existing["status"] == "error", new["status"] == "error"
    if old_error and not new_error:
        return "replaced", f"error -> {new['status']}"
    if new_error and not old_error:
        return "skipped", f"the archive's error record does not replace a {existing['status']} one"
    differ = [f"{k} {existing.get(k)!r} here, {new.get(k)!r} in the archive" for k in RESULT_FIELDS
              if not old_error and existing.get(k) != new.get(k)]
    if differ:
        return "conflict", "kept the existing record; " + "; ".join(differ)
    return "kept", "already recorded" if existing == new else "already recorded (same results; other fields differ)"


def merge(store: ResultsDir, records: dict[str, dict], traces: dict[str, bytes] | None = None
          ) -> list[tuple[str, str, str]]:
    """Write each record that `decide` admits, atomically, under the run's lock, its trace first where the
    archive has one (and a trace the archive has for a record kept here that lacks one); returns (action, run
    id, detail)."""
    traces = traces or {}
    store.runs.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(store.runs)
    changes = []
    for run_id in sorted(records):
        with store.claim(run_id) as mine:
            if not mine:
                changes.append(("skipped", run_id, "a sweep is running it now: import again when it is done"))
                continue
            path = store.record_path(run_id)
            existing = None
            if path.exists():
                try:
                    existing = read_record(path)
                except ResultsError as e:  # moved aside as a sweep would, never deleted
                    store.corrupt.mkdir(parents=True, exist_ok=True)
                    target = store.corrupt / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
                    path.replace(target)
                    changes.append(("moved", run_id, f"unreadable record moved to {target} ({e})"))
            action, detail = decide(existing, records[run_id])
            trace = trace_path(path)
            if run_id in traces and (action in ("added", "replaced") or (action == "kept" and not trace.exists())):
                tmp = trace.with_name(f".{trace.name}.{os.getpid()}.tmp")
                tmp.write_bytes(traces[run_id])
                os.replace(tmp, trace)
                detail += ", with its trace"
            if action in ("added", "replaced"):
                write_json_atomic(path, records[run_id])
            changes.append((action, run_id, detail))
    return changes


def append_log(store: ResultsDir, lines: list[str]) -> int:
    """Append the session's sweep.log lines not already in DIR/sweep.log (one write); returns how many."""
    present = set(store.log_path.read_text().splitlines()) if store.log_path.exists() else set()
    new = [line for line in lines if line.strip() and line not in present]
    if new:
        with open(store.log_path, "a") as f:
            f.write("\n".join(new) + "\n")
    return len(new)


def f1_rows(root: Path) -> dict[tuple[str, str, str], str]:
    """The F1 rows of Tables 2 and 3 per reading (variant): (variant, table, row) -> 'B, n, steps mean ± std'."""
    from nerepro.report import load_results, summarize
    from nerepro.tables import _pm, table_2, table_3

    try:
        results = load_results(root)
    except NereproError:
        return {}
    rows = {}
    for variant in results.variants():
        stats = summarize(results.runs[results.runs["variant"] == variant]).set_index(["network", "alpha", "batch_size"])
        t2, t3 = table_2(results, variant), table_3(results, variant)
        for table, frame, key, size in (("Table 2", t2, "alpha", "b_opt"), ("Table 3", t3, "setting", "batch_size")):
            for _, r in frame[frame["network"] == "F1"].iterrows():
                s = stats.loc[("F1", r["alpha"], r[size])]
                label = f"alpha = {r['alpha']:g}" if key == "alpha" else r["setting"]
                rows[(variant, table, label)] = (f"B = {int(r[size])}, alpha = {r['alpha']:g}: n = {int(s['n'])}/"
                                                 f"{int(s['n_runs'])}, steps {_pm(s['convergence_steps_mean'], s['convergence_steps_std'], 0)}")
    return rows


def rebuild_report(root: Path) -> None:
    """DIR/report as `nerepro report --results DIR --out DIR/report` builds it (the same command, in-process)."""
    from nerepro.cli import report

    report(results=root, out=root / "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", help="a GPU session's results.tar.gz")
    parser.add_argument("--into", default=DEFAULT_INTO, help=f"results directory to extend [default: {DEFAULT_INTO}]")
    args = parser.parse_args(argv)
    if not args.archive:
        print("import_gpu: error: no archive given: make import-gpu ARCHIVE=OUTDIR/results.tar.gz", file=sys.stderr)
        return 2
    root = Path(args.into)
    try:
        traces: dict[str, bytes] = {}
        records, log_lines, invalid, notes = read_archive(Path(args.archive), traces)
        before = f1_rows(root)
        store = ResultsDir(root)
        changes = merge(store, records, traces)
        logged = append_log(store, log_lines)
    except OSError as e:  # each record is written whole or not at all: a rerun completes the merge
        print(f"import_gpu: error: cannot write to {root} ({e.strerror or e}): fix it and import again",
              file=sys.stderr)
        return 2
    except NereproError as e:
        print(f"import_gpu: error: {e}", file=sys.stderr)
        return 2
    for why in invalid:
        print(f"invalid   {why}")
    for note in notes:
        print(f"note: {note}")
    for action, run_id, detail in changes:
        print(f"{action:9} {run_id}: {detail}")
    counts = {a: sum(1 for c in changes if c[0] == a) for a in ("added", "replaced", "kept", "conflict", "skipped")}
    print(f"{args.archive} -> {store.runs}: {counts['added']} added, {counts['replaced']} replaced an error record, "
          f"{counts['kept']} kept, {counts['conflict']} conflicts (existing kept), {counts['skipped']} skipped, "
          f"{len(invalid)} invalid; {logged} sweep.log lines appended")
    changed = counts["added"] + counts["replaced"] + logged > 0 or any(c[0] == "moved" or "with its trace" in c[2]
                                                                        for c in changes)
    if changed or not (root / "report" / "table2.md").exists():
        try:
            rebuild_report(root)
        except NereproError as e:
            print(f"import_gpu: error: the records are merged, but the report failed: {e}", file=sys.stderr)
            return 2
    else:
        print(f"nothing changed: {root / 'report'} left as it is")
    after = f1_rows(root)
    print("F1 rows of Tables 2 and 3 per reading (n converged/runs, convergence steps mean ± std), before -> after:")
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, "none"), after.get(key, "none")
        print(f"  [{key[0]}] {key[1]}, {key[2]}: " + (f"{new} (unchanged)" if old == new else f"{old} -> {new}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
