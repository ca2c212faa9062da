"""Results read back for the report: one row per run, grouped into conditions, with statistics over seeds.

Statistics are over converged runs only (README, 'Report definitions'): mean, sample standard deviation
(ddof = 1) and n; runs that did not converge, diverged or raised are counted in their own columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ResultsError
from .results import DEFAULT_VARIANT, IDENTITY, load_records, records_frame, variant_aliases

PAPER_B_GRID = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 2000, 3000, 5000)
PAPER_SEEDS = 10
LARGE_B = 5000  # Table 3 / Fig. 3: "with NE" is large-batch training at B = 5000
METRICS = ("test_acc", "convergence_steps", "samples_processed", "wall_s")


@dataclass
class Results:
    """Every readable run of a results directory, and notes on what was skipped or is missing."""

    runs: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> str | None:
        """One line naming the code behind the runs where it is not a single clean commit: each commit with its
        number of runs, and how many of them ran uncommitted changes (provenance.git_dirty); None otherwise."""
        if "provenance_git_commit" not in self.runs:
            return None
        runs = self.runs.drop_duplicates("run_id")
        commits = runs["provenance_git_commit"].astype(object).fillna("unknown").astype(str).str[:7]
        dirty = runs.get("provenance_git_dirty", pd.Series(False, index=runs.index)).astype(str) == "True"
        if commits.nunique() == 1 and not dirty.any():
            return None
        def runs_of(n: int) -> str:
            return f"{n} run{'' if n == 1 else 's'}"

        if commits.nunique() == 1:
            return (f"Provenance: all {runs_of(len(runs))} come from commit {commits.iloc[0]}, "
                    f"{int(dirty.sum())} of them with uncommitted changes.")
        parts = [f"{c} ({runs_of(n)}" + (f", {int(dirty[commits == c].sum())} with uncommitted changes"
                                         if dirty[commits == c].any() else "") + ")"
                 for c, n in commits.value_counts().items()]
        return f"Provenance: the runs come from {commits.nunique()} commits: {', '.join(parts)}."

    def variants(self) -> list[str]:
        """Protocol variants present, the one with most runs first (DEFAULT_VARIANT = all defaults), ties
        with DEFAULT_VARIANT first, then by name."""
        counts = self.runs["variant"].value_counts()
        return sorted(counts.index, key=lambda v: (-counts[v], v != DEFAULT_VARIANT, v))


def load_results(root: Path | str) -> Results:
    """Records from DIR/runs/*.json, else DIR/runs.csv; ResultsError only if there is nothing at all."""
    root = Path(root)
    records, notes = load_records(root) if (root / "runs").is_dir() or list(root.glob("*.json")) else ([], [])
    if records:
        frame = records_frame(records)
    elif (root / "runs.csv").is_file():
        try:
            frame = pd.read_csv(root / "runs.csv")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ResultsError(f"{root / 'runs.csv'} cannot be read ({type(e).__name__}): rebuild it with "
                               "`nerepro collect`") from None
        if "variant" not in frame:
            frame["variant"] = "as collected"
    else:
        raise ResultsError(f"no records in {root / 'runs'} and no {root / 'runs.csv'}: run `nerepro sweep ... "
                           f"--results {root}` first")
    missing = [c for c in ("run_id", *IDENTITY, "status") if c not in frame]
    if missing:
        raise ResultsError(f"{root}: results lack the columns {', '.join(missing)}: rebuild runs.csv with "
                           "`nerepro collect`")
    if frame.empty:
        raise ResultsError(f"no usable records under {root}: every record was skipped ({len(notes)} notes)")
    for column in (*METRICS, "dataset"):
        if column not in frame:
            frame[column] = np.nan
    frame = variant_aliases(frame)
    return Results(frame, notes + coverage_notes(frame))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, network, alpha, B): counts by status and mean/std/n over converged runs; no wall
    time where those runs ran on more than one device; L(w) at the stop in units of L** (median, max and the
    number of converged runs whose L(w) was not below L**), where the records give it."""
    keys = ["variant", "network", "alpha", "batch_size"]
    rows = []
    for key, group in runs.groupby(keys, sort=True):
        ok = group[group["status"] == "converged"]
        row = dict(zip(keys, key))
        row.update(n_runs=len(group), n=len(ok), n_not_converged=int((group["status"] == "not_converged").sum()),
                   n_diverged=int((group["status"] == "diverged").sum()), n_error=int((group["status"] == "error").sum()))
        for metric in METRICS:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna()
            if metric == "wall_s" and len(devices(ok)) > 1:
                values = values.iloc[:0]  # seconds on different devices do not average (coverage_notes says where)
            row[f"{metric}_mean"] = values.mean() if len(values) else np.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row.update(stop_over_l_star_star(ok))
        rows.append(row)
    return pd.DataFrame(rows)


def stop_over_l_star_star(converged: pd.DataFrame) -> dict:
    """L(w) at the stopping step over L**, for converged runs: a reading other than L(w) (an epoch's mean NE
    loss, say) can meet L** while L(w) is far above it. L(w) is `train_loss_full`, or the reading itself
    (`train_loss`) where the run read L(w) (`stop_loss = full`, the default of records that do not name one)."""
    column = lambda name: pd.to_numeric(converged.get(name, pd.Series(np.nan, index=converged.index)),  # noqa: E731
                                        errors="coerce")
    reading = converged.get("stop_loss", pd.Series(None, index=converged.index, dtype=object))
    read_full = reading.isna() | (reading == "full")
    full = column("train_loss_full")
    loss = full.where(full.notna() | ~read_full, column("train_loss"))
    ratio = (loss / column("l_star_star")).dropna()  # no L** in the records: no ratio
    return {"stop_ratio_median": ratio.median() if len(ratio) else np.nan,
            "stop_ratio_max": ratio.max() if len(ratio) else np.nan,
            "n_stop_above": int((ratio >= 1).sum()), "n_stop_ratio": len(ratio)}


def devices(runs: pd.DataFrame) -> list[str]:
    """The devices the runs that give a wall time ran on (provenance.device; "unknown" where a record does not
    say), sorted: more than one, and their seconds do not average."""
    if "provenance_device" not in runs:
        return []
    timed = runs[pd.to_numeric(runs["wall_s"], errors="coerce").notna()]
    return sorted(timed["provenance_device"].astype(object).fillna("unknown").astype(str).unique())


def best_batch_size(stats: pd.DataFrame) -> pd.Series | None:
    """Table 2's B_opt among `stats` rows of one (variant, network, alpha): the highest mean test accuracy
    over converged runs, ties to the smaller B; None if no B has a converged run."""
    candidates = stats[stats["n"] > 0]
    if candidates.empty:
        return None
    best = candidates["test_acc_mean"].max()
    return candidates[candidates["test_acc_mean"] == best].sort_values("batch_size").iloc[0]


def grid_batch_sizes(present: list[int]) -> list[int]:
    """Table 2 chooses B_opt over the paper's B grid; extra B values (baselines) stay out of the choice.
    Results that hold none of the grid's values (a custom sweep) use all they hold."""
    on_grid = [b for b in present if b in PAPER_B_GRID]
    return sorted(on_grid or present)


def large_batch_size(stats: pd.DataFrame) -> int | None:
    """B = 5000 if runs with alpha > 1 exist there, else the largest B that has such runs (noted)."""
    ne = stats[(stats["alpha"] > 1) & (stats["n"] > 0)]
    if ne.empty:
        return None
    return LARGE_B if (ne["batch_size"] == LARGE_B).any() else int(ne["batch_size"].max())


def coverage_notes(runs: pd.DataFrame) -> list[str]:
    """Holes in each network's alpha x B rectangle, and conditions with fewer seeds than the paper's 10."""
    notes = []
    for (variant, network), group in runs.groupby(["variant", "network"]):
        where = f"{network} ({variant})"
        alphas, sizes = sorted(group["alpha"].unique()), sorted(group["batch_size"].unique())
        present = set(zip(group["alpha"], group["batch_size"]))
        holes = [f"alpha={a:g} B={b}" for a in alphas for b in sizes if (a, b) not in present]
        if holes:
            notes.append(f"{where}: no runs at {', '.join(holes)}")
        seeds = group.groupby(["alpha", "batch_size"])["seed"].nunique()
        few = seeds[seeds < PAPER_SEEDS]
        if len(few):
            notes.append(f"{where}: {len(few)} of {len(seeds)} conditions have fewer than {PAPER_SEEDS} seeds "
                         f"(min {few.min()})")
        converged = group[group["status"] == "converged"]
        mixed = [f"alpha={a:g} B={b} (runs on {' and '.join(devices(runs_ab))})"
                 for (a, b), runs_ab in converged.groupby(["alpha", "batch_size"]) if len(devices(runs_ab)) > 1]
        if mixed:
            notes.append(f"{where}: no mean wall time at {'; '.join(mixed)}: seconds on different devices are not "
                         "averaged")
        failed = group[group["status"] != "converged"]
        if len(failed):
            counts = failed["status"].value_counts().to_dict()
            notes.append(f"{where}: {len(failed)} runs did not converge "
                         f"({', '.join(f'{n} {s}' for s, n in counts.items())}); statistics use converged runs only")
    return notes
