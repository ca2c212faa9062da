"""Compare the records of the same run ids in two results directories: how often, and by how many loss
checks, the stopping and halving decisions moved, and how far the test accuracy moved.

Used for the drift of packed against single runs and of one thread count against another (README, "Packs";
results/performance.md):

    .venv/bin/python scripts/compare_runs.py results/quick /tmp/quick-packed
"""

import statistics
import sys
from pathlib import Path

from nerepro.results import load_records


def stop_step(record: dict) -> int:
    return record["convergence_steps"] if record.get("convergence_steps") is not None else record["steps"]


def compare(a: list[dict], b: list[dict]) -> list[dict]:
    """One row per run id present in both: steps and halving steps on each side, moves in checks, test
    accuracy difference in points."""
    other = {r["run_id"]: r for r in b}
    rows = []
    for ra in a:
        rb = other.get(ra["run_id"])
        if rb is None:
            continue
        check = ra["check_every"]
        halved = (ra.get("lr_halved_step"), rb.get("lr_halved_step"))
        rows.append({"run_id": ra["run_id"], "stop_a": stop_step(ra), "stop_b": stop_step(rb),
                     "stop_moved": abs(stop_step(ra) - stop_step(rb)) // check,
                     "halved_a": halved[0], "halved_b": halved[1],
                     "halving_moved": None if None in halved else abs(halved[0] - halved[1]) // check,
                     "test_acc_diff": rb["test_acc"] - ra["test_acc"]})
    return rows


def summary(rows: list[dict]) -> list[str]:
    stops = sorted(r["stop_moved"] for r in rows)
    halvings = sorted(r["halving_moved"] for r in rows if r["halving_moved"] is not None)
    signed = [r["stop_b"] - r["stop_a"] for r in rows]
    return [f"{len(rows)} runs in both",
            f"stop moved in {sum(m > 0 for m in stops)} of {len(stops)}, by {[m for m in stops if m]} checks "
            f"(median {statistics.median(stops):g}); mean signed change {statistics.mean(signed):+.0f} steps",
            f"halving moved in {sum(m > 0 for m in halvings)} of {len(halvings)}, by {[m for m in halvings if m]} checks",
            f"|test accuracy change|: mean {statistics.mean(abs(r['test_acc_diff']) for r in rows):.2f}, "
            f"max {max(abs(r['test_acc_diff']) for r in rows):.2f} points"]


def main(a: str, b: str) -> None:
    rows = compare(load_records(Path(a))[0], load_records(Path(b))[0])
    if not rows:
        print(f"no run id is recorded in both {a} and {b}: compare two results directories of the same grid",
              file=sys.stderr)
        sys.exit(2)
    print("| run | stop A | stop B | checks moved | halved A | halved B | checks moved | test acc B − A |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run_id']} | {r['stop_a']} | {r['stop_b']} | {r['stop_moved']} | {r['halved_a']} | "
              f"{r['halved_b']} | {r['halving_moved']} | {r['test_acc_diff']:+.2f} |")
    print()
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: compare_runs.py RESULTS_A RESULTS_B", file=sys.stderr)
        sys.exit(2)
    main(*sys.argv[1:])
