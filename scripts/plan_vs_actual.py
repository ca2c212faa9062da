"""Plan against actual, per finished run: the seconds a time-limited sweep planned for each run when it
started (the `planned:<s>` lines of DIR/sweep.log) beside the run's recorded wall time.

    python scripts/plan_vs_actual.py [results/f1]

Prints a Markdown table (run, planned, actual, actual / planned, its two parts: the run's steps over the plan's
and its time a step over the plan's, the calibration factor in the plan, the run's CPU share, resumes, threads,
device) of every record with a plan, the plan taken from the last sweep start before the run's record; and the
share within 30%, in all, in time a step, and among the runs that had their cores. The CPU share of a run on the
CPU is its CPU time over its wall time times its threads (`cpu_s`, over its segments where it was resumed; "-" in
records before it and for GPU runs): about 1 where a single-threaded run had its core to itself, less where
other work shared it (several threads read below 1 even alone: parts of a step run on one). A single-threaded
run "had its core" at ALONE or more: a bound that other work on the core breaks, not a proof that none ran (a
VM's host, the core's sibling). The factor is the one the plan line names (`factor:<f>`, "-": the records' speed;
"here": a kind without records, planned at its step time timed here);
on lines without it (sweeps of commit b0ad000), the one the same sweep process logged (`calibrated:<factor>`)
for the run's (network, B, NE or not), else "-". The plan's steps are the line's `steps:<n>` (sweeps before
it: the parts are "-"). A packed run's actual time is its share of its pack's (its `wall_s` is the pack's), as
its plan is.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro.results import load_records  # noqa: E402

ALONE = 0.9  # CPU share at and above which a run had its cores to itself


def kind(run_id: str) -> tuple | None:
    """(network, B, NE or not) of a run id such as F1-a1.5-b2000-s7-bea5b5602d."""
    match = re.match(r"([A-Z]\d)-a([\d.]+)-b(\d+)-", run_id)
    return (match[1], int(match[3]), float(match[2]) != 1) if match else None


def plans(log: Path) -> dict[str, tuple[float, float | str | None, float | None]]:
    """run id -> (the last plan logged for it before its record, the calibration factor of that sweep for its
    kind, "here" or None, the plan's steps or None)."""
    planned, found, factors = {}, {}, {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        parts = line.split()
        if len(parts) < 5:
            continue
        pid, event, run_id = parts[2], parts[3], parts[4]
        if event.startswith("calibrated:"):
            factors[pid, kind(run_id)] = float(event.split(":", 1)[1])
        elif event.startswith("planned:"):
            notes = dict(part.split(":", 1) for part in parts[5:] if ":" in part)
            named = notes.get("factor")
            factor = factors.get((pid, kind(run_id))) if named is None else None if named == "-" else \
                named if named == "here" else float(named)
            steps = float(notes["steps"]) if notes.get("steps", "-") != "-" else None
            planned[run_id] = (float(event.split(":", 1)[1]), factor, steps)
        elif event.startswith("recorded:") and run_id in planned:
            found[run_id] = planned[run_id]
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/f1")
    planned = plans(root / "sweep.log")
    records = {r["run_id"]: r for r in load_records(root)[0]}
    rows = [(run_id, s, records[run_id]) for run_id, s in planned.items() if run_id in records]
    if not rows:
        print(f"no finished run of {root} has a plan (`planned:` lines come from sweeps with --time-limit)")
        return 0
    print("| run | planned (s) | actual (s) | actual / planned | steps / planned | time a step / planned | "
          "calibration | CPU share | resumes | threads | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    within, split, speed_within, alone, alone_within = 0, 0, 0, 0, 0
    for run_id, (s, factor, steps), r in sorted(rows):
        wall = r["wall_s"] / max(1, r.get("pack_size") or 1)
        ratio = wall / s
        within += abs(ratio - 1) <= 0.3
        parts = "- | -"
        if steps and r.get("steps"):  # ratio = (steps / planned steps) x (time a step / planned time a step)
            speed = ratio * steps / r["steps"]
            split, speed_within = split + 1, speed_within + (abs(speed - 1) <= 0.3)
            parts = f"{r['steps'] / steps:.2f} | {speed:.2f}"
        prov = r.get("provenance") or {}
        share = cpu_share(r)
        if had_its_core(r):
            alone, alone_within = alone + 1, alone_within + (abs(ratio - 1) <= 0.3)
        named = "-" if factor is None else factor if factor == "here" else f"x{factor:.2f}"
        print(f"| `{run_id}` | {s:,.0f} | {wall:,.0f} | {ratio:.2f} | {parts} | "
              f"{named} | {'-' if share is None else f'{share:.2f}'} | "
              f"{r.get('resumes', 0)} | {prov.get('threads', '?')} | {prov.get('device', '?')} |")
    print(f"\n{within} of {len(rows)} within 30% of the plan")
    if split:
        print(f"{speed_within} of the {split} whose plan names its steps within 30% of the plan's time a step")
    if alone:
        print(f"{alone_within} of the {alone} single-threaded runs that had their core (CPU share {ALONE:g} or more) "
              "within 30% of the plan")
    return 0


def cpu_share(record: dict) -> float | None:
    """A CPU run's CPU time over its wall time times its threads (both a pack's where it was packed; summed over
    its segments where it was resumed, each at its own threads); None where the record does not give its CPU
    time or ran on a GPU."""
    prov = record.get("provenance") or {}
    if prov.get("device_type") not in (None, "cpu"):
        return None
    parts = prov.get("segments") or [{**prov, **record}]
    if any(not p.get("cpu_s") or not p.get("wall_s") or not p.get("threads") for p in parts):
        return None
    return sum(p["cpu_s"] for p in parts) / sum(p["wall_s"] * p["threads"] for p in parts)


def had_its_core(record: dict) -> bool:
    """Whether a single-threaded CPU run had its core to itself (CPU share ALONE or more)."""
    share = cpu_share(record)
    return share is not None and share >= ALONE and (record.get("provenance") or {}).get("threads") == 1


if __name__ == "__main__":
    sys.exit(main())
