"""What a GPU lease's session (nerepro/session.py) brings in and hands back: a results directory's records copied
in (not its checkpoints), an earlier session's archives unpacked, and OUTDIR filled at the end with at most 8
files, none over 15 MiB (16 MiB never come back), the logs first."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

LIMIT_BYTES = 15 * 2 ** 20  # the most a handed-back file may have


NOT_RESULTS = ("checkpoints", "paused", ".locks")  # a results directory's folders that hold no records


def copy_results(source: Path, results: Path, skip: tuple = NOT_RESULTS) -> int:
    """A results directory's files into `results`, but not its folders `skip` (by default its checkpoints and
    their kept copies, which belong to its own machine's runs, and its locks); files already there are kept. Returns the
    records copied."""
    n = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or rel.parts[0] in skip:
            continue
        target = results / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            n += rel.parts[0] == "runs" and path.suffix == ".json"
    return n


def unpack(archive: Path, results: Path, work: Path) -> None:
    """An earlier session's results.tar.gz or checkpoints.tar.gz into the results directory (files there kept;
    its checkpoints too: RESUME continues the runs they hold)."""
    into = work / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    if (into / "results").is_dir():
        copy_results(into / "results", results, skip=(".locks",))


# ---- the hand-back ----------------------------------------------------------------------------------------

def archive(out: Path, name: str, files: list[tuple[Path, str]], notes: list[str]) -> bool:
    """OUTDIR/NAME of (path, name in the archive), unless it would be over 15 MiB (then nothing, a note)."""
    path, part = out / name, out / f"{name}.part"  # written aside, then renamed: a kill mid-write leaves the last
    with tarfile.open(part, "w:gz") as tar:
        for source, arcname in files:
            tar.add(source, arcname=arcname, recursive=False)
    if part.stat().st_size > LIMIT_BYTES:
        notes.append(f"- {name} would have been {part.stat().st_size // 2 ** 20} MiB, over the 15 MiB a file may have")
        part.unlink()
        path.unlink(missing_ok=True)
        return False
    part.replace(path)
    return True


def hand_back(s: Session, args) -> None:
    """Into OUTDIR, the logs first: logs.tar.gz, results.tar.gz, checkpoints.tar.gz (only where it fits),
    env.txt, bench.jsonl, smoke.jsonl; summary.md last, with the hand-back's notes."""
    notes: list[str] = []
    s.write_summary()
    shutil.copy(s.out / "summary.md", s.logs / "summary.md")
    logs = [(p, f"logs/{p.name}") for p in sorted(s.logs.iterdir()) if p.is_file()]
    if not archive(s.out, "logs.tar.gz", logs, notes):
        for p, _ in logs:  # logs over 1 MiB cut to their last MiB
            if p.stat().st_size > 2 ** 20:
                p.write_bytes(p.read_bytes()[-2 ** 20:])
        if archive(s.out, "logs.tar.gz", logs, notes):
            notes.append("- logs.tar.gz: logs over 1 MiB cut to their last MiB")
    hand_back_results(s, args, notes)
    for name in ("env.txt",):
        if (s.logs / name).is_file():
            shutil.copy(s.logs / name, s.out / name)
    if (s.work / "bench.jsonl").is_file() and (s.work / "bench.jsonl").stat().st_size:
        shutil.copy(s.work / "bench.jsonl", s.out / "bench.jsonl")
    smoke = [line for line in (s.logs / "smoke.log").read_text(errors="replace").splitlines() if line.startswith("{")] \
        if (s.logs / "smoke.log").is_file() else []
    if smoke:
        (s.out / "smoke.jsonl").write_text("\n".join(smoke) + "\n")
    files = [f"- {p.name}: {p.stat().st_size} bytes" for p in sorted(s.out.iterdir()) if p.name != "summary.md"]
    tails = []
    for name in ("sweep.log", "gate.log", "pytest-gpu.log", "smoke.log"):
        if (s.logs / name).is_file() and (s.logs / name).stat().st_size:
            tail = "\n".join((s.logs / name).read_text(errors="replace").splitlines()[-15:])
            tails.append(f"### {name} (last lines)\n```\n{tail}\n```")
    s.sections.append(("Hand-back", "\n".join([f"Finished after {s.elapsed():.0f} s of a {s.budget:.0f} s budget.",
                                               "", *notes, *files, "", *tails])))
    s.write_summary()


def hand_back_results(s: Session, args, notes: list[str]) -> None:
    """results.tar.gz (all the results directory's records, else only this session's) and checkpoints.tar.gz
    (runs paused at the limit, where they fit) into OUTDIR; what did not fit is a note."""
    results = getattr(s, "results", None)
    if results is None or not results.is_dir():
        return
    everything = [(p, "results/" + str(p.relative_to(results))) for p in sorted(results.rglob("*"))
                  if p.is_file() and p.relative_to(results).parts[0] not in NOT_RESULTS]
    if not archive(s.out, "results.tar.gz", everything, notes):
        since = (s.work / "started").stat().st_mtime
        new = [(p, a) for p, a in everything if p.stat().st_mtime >= since or p.name == "sweep.log"]
        if archive(s.out, "results.tar.gz", new, notes):
            notes.append("- results.tar.gz holds only this session's records and the sweep log")
    paused = sorted((results / "checkpoints").glob("*.pt")) if (results / "checkpoints").is_dir() else []
    if paused and args.results:
        notes.append(f"- runs paused at the limit: {len(paused)}; their checkpoints stay in {results}/checkpoints")
    elif paused:
        size = sum(p.stat().st_size for p in paused)
        if size < LIMIT_BYTES and archive(s.out, "checkpoints.tar.gz",
                                              [(p, f"results/checkpoints/{p.name}") for p in paused], notes):
            notes.append(f"- runs paused at the limit: {len(paused)}, in checkpoints.tar.gz (RESUME continues them)")
        else:
            notes.append(f"- runs paused at the limit: {len(paused)}; their checkpoints ({size // 2 ** 20} MiB) "
                         "are not handed back, over the 15 MiB a file may have")
