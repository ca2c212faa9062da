"""The report page: everything `nerepro report` wrote, on one Markdown page (README.md of its output directory).

The page composes the files the report has just written (table*.md, baselines.md, claims.md, protocol.md
and the figures) instead of rebuilding them: each section is one of those files with its headings moved
under the page's, and the provenance line and the notes on the data, which every file repeats, stand once
at the top. Links are relative to the page and only to files that exist, so that it renders in any Markdown
viewer, on GitHub and in a copy of the directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .figures import FIGURES, PROTOCOL_FIGURE, figure_stems
from .passage import PASSAGE_FIGURE
from .protocol import protocol_runs
from .report import Results
from .results import DEFAULT_VARIANT
from .tables import table_baselines

PAGE = "README.md"
OTHER_PAGE = "report.md"  # where the page goes when the directory already has a README.md written by hand
MARKER = "<!-- Written by `nerepro report` from the records; it rewrites this page on every run. -->"
NOTES = "Notes on the data"


def write_page(results: Results, results_dir: Path, out: Path) -> Path:
    """Write the page into `out` (README.md, or report.md beside a hand-written README.md); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / PAGE
    if path.is_file() and path.read_text().splitlines()[:1] != [MARKER]:
        path = out / OTHER_PAGE
    parts = [MARKER, f"# nerepro report: {results_dir}", _summary(results, results_dir, out), _provenance(results),
             f"## {NOTES}", "\n".join(f"- {n}" for n in results.notes) or
             "None: every condition of every grid has runs and the paper's 10 seeds, and every run converged."]
    for name in ("table1", "table2", "table3"):
        parts += [_section(out / f"{name}.md", results), _files(out, f"{name}.csv", f"{name}.tex")]
    if any(len(table_baselines(results, v)) for v in results.variants()):
        parts += [_section(out / "baselines.md", results), _files(out, "baselines.csv", "baselines.tex")]
    parts += _figures(results, out)
    parts += [_section(out / "claims.md", results), _files(out, "claims.csv")]
    parts += [_section(out / "headline.md", results), _files(out, "headline.csv", "headline_claim.csv")]
    if not protocol_runs(results).empty:
        parts += [_section(out / "protocol.md", results), _image(out, PROTOCOL_FIGURE, (
            "Each reading's convergence steps and test accuracy at the rows of Tables 2-3 that have runs, against "
            "the paper's mean ± 2σ")), _files(out, "protocol.csv")]
    if (out / "passage.md").is_file():
        parts += [_section(out / "passage.md", results), _image(out, PASSAGE_FIGURE, (
            "Readings of the training loss on traced trajectories near L*: the step's NE loss, its epoch's running "
            "mean, the mean over 10 steps and the epoch mean (Keras' reading), with each one's first passage below L* "
            "dotted, the traced run's halving solid and the paper's convergence steps ± σ shaded")),
            _files(out, "passage.csv")]
    sources = _sources(results_dir, out)
    parts += ["## Files", "\n".join(f"- {line}" for line in sources)] if sources else []
    text = "\n\n".join(p for p in parts if p) + "\n"
    path.write_text(text)
    return path


def _summary(results: Results, results_dir: Path, out: Path) -> str:
    runs = results.runs.drop_duplicates("run_id")  # alpha = 1 runs can stand for two readings (variant_aliases)
    status = runs["status"].value_counts()
    counts = ", ".join(f"{int(status.get(s, 0))} {s.replace('_', ' ')}" for s in
                       ("converged", "not_converged", "diverged", "error") if status.get(s, 0) or s == "converged")
    networks = ", ".join(f"{n} ({k})" for n, k in runs["network"].value_counts().sort_index().items())
    variants = results.variants()
    readings = (f"all under nerepro's default reading ({DEFAULT_VARIANT})" if variants == [DEFAULT_VARIANT] else
                "under these settings, reported apart: " + "; ".join(
                    f"{v} ({int((results.runs['variant'] == v).sum())})" for v in variants))
    command = f"nerepro report --results {results_dir}" + ("" if out == results_dir / "report" else f" --out {out}")
    return (f"{len(runs)} runs ({counts}) of {networks}, {readings}. Built by `{command}` from the records "
            "alone. Each table sets nerepro's numbers beside the paper's; Δ/σ_paper is the difference in units "
            "of the paper's standard deviation. Statistics are over converged runs only: mean ± sample std, "
            "with n converged of the runs made. L(w)/L** at the stop: where the loss of Eq. (1) stood against L** "
            "when a run's reading met L** (1 or more: the reading met L** before L(w) did).")


def _provenance(results: Results) -> str:
    """Results.provenance() where the code is mixed or uncommitted; otherwise the one clean commit, if known."""
    line = results.provenance()
    if line or "provenance_git_commit" not in results.runs:
        return line or "Provenance: the records name no git commit."
    commits = results.runs["provenance_git_commit"].dropna().astype(str).unique()
    if len(commits) != 1:
        return "Provenance: the records name no git commit."
    return (f"Provenance: all {results.runs['run_id'].nunique()} runs come from commit {commits[0][:7]}, "
            "without uncommitted changes.")


def _section(path: Path, results: Results) -> str:
    """A report file as a section of the page: its first heading at level 2 and the others below it, without
    the provenance line and the notes on the data (the page gives both once)."""
    if not path.is_file():
        return ""
    lines = path.read_text().splitlines()
    levels = [len(m.group(1)) for m in (re.match(r"(#+) ", line) for line in lines) if m]
    shift = 2 - min(levels, default=2)
    kept, skipping = [], False
    for line in lines:
        heading = re.match(r"(#+) (.*)", line)
        if heading:
            skipping = heading.group(2) == NOTES
            line = "#" * (len(heading.group(1)) + shift) + " " + heading.group(2)
        if not skipping and line != results.provenance():
            kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def _figures(results: Results, out: Path) -> list[str]:
    """Each figure write_figures makes whose PNG exists, each variant's under its own heading when there
    are several."""
    parts = ["## Figures"]
    several = len(results.variants()) > 1
    for variant in results.variants():
        images = [_image(out, stem, FIGURES[name][1]) for stem, name, v in figure_stems(results) if v == variant]
        images = [i for i in images if i]
        if images:
            parts += ([f"### Runs: {variant}"] if several else []) + images
    return parts if len(parts) > 1 else []


def _image(out: Path, stem: str, caption: str) -> str:
    """The PNG embedded, its caption and a link to the PDF; '' if the PNG does not exist."""
    if not (out / f"{stem}.png").is_file():
        return ""
    pdf = f" ([PDF]({stem}.pdf))" if (out / f"{stem}.pdf").is_file() else ""
    return f"![{caption}]({stem}.png)\n\n*{caption}.*{pdf}"


def _sources(results_dir: Path, out: Path) -> list[str]:
    """Links to what the report was built from, those that exist."""
    lines = []
    for name, what in (("runs.csv", "one row per run (`nerepro collect`)"),
                       ("runs", "the records, one JSON file per run"),
                       ("sweep.log", "the sweeps' log, one line per run started and recorded")):
        target = _relative(results_dir / name, out)
        if (out / target).exists():
            lines.append(f"[{target}]({target}): {what}")
    return lines


def _files(out: Path, *names: str) -> str:
    """'Files: ' and a link to each of `names` (relative to the page) that exists; '' if none does."""
    links = [f"[{n}]({n})" for n in names if (out / n).exists()]
    return "Files: " + ", ".join(links) + "." if links else ""


def _relative(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target, out)).as_posix()

