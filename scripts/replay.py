"""Does this machine compute what a record's machine computed? Replays the first steps of recorded runs here and
compares them with the records, step by step where a run was traced.

    python scripts/replay.py RESULTS RUN [RUN ...] [--steps N] [--data-dir DIR]

RUN is a run id or its start (F1-a1-b900-s4). Each run is trained again on the CPU, at the threads its record
names, from its record's settings for its first N steps (default 300; fewer where the run took fewer), with its
trace, and compared with the record: every step's L_B against its trace (`*.trace.csv.gz` beside it), else the
mean L_B at each of the record's checks. One line a run says whether all agree to the last bit, or the first
step where they part with both values, beside the CPU kernels and id of both machines where the record names
them. Exit status 1 where any run
parts. Runs of one seed on two machines whose arithmetic agrees follow one trajectory; where it differs they
part within a few hundred steps and then scatter as two seeds do (a run is chaotic in its last bits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerepro import RunConfig, train  # noqa: E402
from nerepro.errors import ResultsError  # noqa: E402
from nerepro.record import cpu_id, read_record  # noqa: E402
from nerepro.trace import read_trace, trace_path  # noqa: E402


def recorded_losses(record: dict, path: Path, steps: int) -> tuple[str, list[tuple[int, float]]]:
    """(what is compared, [(step, value)]) of the record's first `steps` steps: every step's L_B from its trace,
    else the mean L_B at each check."""
    if trace_path(path).is_file():
        trace = read_trace(trace_path(path))
        return "L_B at every step", [(int(s), float(v)) for s, v in zip(trace["step"], trace["loss_b"]) if s <= steps]
    curve = record.get("curve") or {}
    return "mean L_B at each check", [(s, v) for s, v in zip(curve.get("step", []), curve.get("minibatch_loss", []))
                                      if s <= steps and v is not None]


def replayed_losses(record: dict, kind: str, steps: int, data_dir: str | None) -> dict[int, float]:
    """step -> the same quantity, trained here for `steps` steps on the CPU at the record's threads (a sum over
    more threads adds in another order)."""
    cfg = RunConfig.from_record(record).replace(max_steps=steps, device="cpu", trace=True)
    previous = torch.get_num_threads()
    torch.set_num_threads((record.get("provenance") or {}).get("threads") or 1)
    try:
        replay = train(cfg, data_dir=data_dir, final_evaluation=False)
    finally:
        torch.set_num_threads(previous)
    if kind == "L_B at every step":
        first = replay["trace"].get("first_step", 1)
        return {first + i: float(v) for i, v in enumerate(replay["trace"]["loss_b"])}
    return {s: v for s, v in zip(replay["curve"]["step"], replay["curve"]["minibatch_loss"]) if v is not None}


def machine(prov: dict) -> str:
    return f"{prov.get('cpu_capability') or '?'}, {prov.get('cpu_id') or 'CPU id not recorded'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"replay: --steps must be 1 or more, got {args.steps}", file=sys.stderr)
        return 2
    folder = args.results / "runs"
    paths = []
    for run in args.runs:
        found = sorted(folder.glob(f"{run}*.json"))
        if len(found) != 1:
            print(f"replay: {run!r} names {len(found)} records in {folder}, not one: give more of its run id",
                  file=sys.stderr)
            return 2
        paths.append(found[0])
    here = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_id": cpu_id()}
    parted = False
    for path in paths:
        try:
            record = read_record(path)
        except ResultsError as e:
            print(f"replay: {e}", file=sys.stderr)
            return 2
        steps = min(args.steps, record["steps"])
        kind, recorded = recorded_losses(record, path, steps)
        replayed = replayed_losses(record, kind, steps, args.data_dir)
        pairs = [(s, v, replayed.get(s)) for s, v in recorded]
        differing = [(s, v, w) for s, v, w in pairs if w != v]
        prov = record.get("provenance") or {}
        head = (f"{record['run_id']} (recorded on {machine(prov)}; replayed on {machine(here)}): {steps} steps, "
                f"{len(pairs)} values of {kind}:")
        if not differing:
            print(f"{head} identical")
            continue
        parted = True
        s, v, w = differing[0]
        print(f"{head} {len(pairs) - len(differing)} identical, first differing at step {s} "
              f"({v!r} recorded, {w!r} here)")
    return 1 if parted else 0


if __name__ == "__main__":
    sys.exit(main())
