"""`nerepro protocol`: which reading of the paper's open choices reproduces its F1 numbers.

configs/protocol.toml runs the F1 rows of Table 2 (alpha = 1 at B = 900, alpha = 1.5 at B = 2000) and of
Table 3 (alpha = 3 at B = 5000) under every combination of --stop-loss and --sampling. A reading is
within the paper when |ours - paper| <= 2 x the paper's std, for test accuracy and convergence steps
(Table 3 gives no steps: accuracy only there). protocol_runs gives the runs behind it, at every row of
Tables 2-3 that has runs (C1's and C2's too), for the report's protocol figure (figures.figure_protocol).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import NETWORKS
from .paper import table_2, table_3
from .report import Results, summarize
from .tables import _num, _pm, markdown

POINTS = (("F1", 1.0, 900), ("F1", 1.5, 2000), ("F1", 3.0, 5000))
WITHIN = 2.0  # paper standard deviations


def paper_values() -> dict:
    """(network, alpha, B) -> paper's test accuracy (mean, std) and convergence steps (mean, std) or None."""
    values = {}
    for r in table_2():
        values[(r["network"], float(r["alpha"]), int(r["b_opt"]))] = (
            (float(r["test_acc_mean"]), float(r["test_acc_std"])),
            (float(r["convergence_steps_mean"]), float(r["convergence_steps_std"])))
    for r in table_3():
        key = (r["network"], float(r["alpha"]), int(r["batch_size"]))
        values.setdefault(key, ((float(r["test_acc_mean"]), float(r["test_acc_std"])), None))
    return values


def paper_rows() -> list[tuple[str, float, int, str]]:
    """Every row of Tables 2 and 3 as (network, alpha, B, table): F1's first (POINTS), then C1's and C2's;
    Table 3's "without NE" rows are Table 2's alpha = 1 rows and appear once, as Table 2's."""
    table_2_keys = {(r["network"], float(r["alpha"]), int(r["b_opt"])) for r in table_2()}
    return sorted(((*key, "Table 2" if key in table_2_keys else "Table 3") for key in paper_values()),
                  key=lambda r: (NETWORKS.index(r[0]), r[3], r[1]))


def protocol_runs(results: Results) -> pd.DataFrame:
    """One row per run at a row of Tables 2 and 3 (F1's POINTS, and C1/C2 rows where records exist): its
    reading (the variant, as in protocol_table), status, convergence steps and test accuracy, and the
    paper's mean and std there (steps NaN for Table 3, which gives none). Readings appear in
    results.variants() order, points in paper_rows() order."""
    paper = paper_values()
    order = {v: i for i, v in enumerate(results.variants())}
    frames = []
    for network, alpha, b, table in paper_rows():
        runs = results.runs[(results.runs["network"] == network) & (results.runs["alpha"] == alpha)
                            & (results.runs["batch_size"] == b)]
        if runs.empty:
            continue
        (acc_mean, acc_std), steps = paper[(network, alpha, b)]
        frames.append(pd.DataFrame({
            "reading": runs["variant"], "network": network, "alpha": alpha, "batch_size": b, "table": table,
            "seed": runs["seed"], "run_id": runs["run_id"], "status": runs["status"],
            "convergence_steps": pd.to_numeric(runs["convergence_steps"], errors="coerce").where(
                runs["status"] == "converged"),
            "test_acc": pd.to_numeric(runs["test_acc"], errors="coerce").where(runs["status"] == "converged"),
            "paper_convergence_steps_mean": steps[0] if steps else np.nan,
            "paper_convergence_steps_std": steps[1] if steps else np.nan,
            "paper_test_acc_mean": acc_mean, "paper_test_acc_std": acc_std}).assign(
            _order=runs["variant"].map(order)).sort_values(["_order", "seed"], kind="stable"))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).drop(columns="_order")


def protocol_table(results: Results) -> pd.DataFrame:
    stats = summarize(results.runs).set_index(["network", "alpha", "batch_size"])
    paper = paper_values()
    rows = []
    for variant in results.variants():
        for point in POINTS:
            group = stats[stats["variant"] == variant] if len(stats) else stats
            if point not in group.index:
                continue
            s = group.loc[point]
            acc, steps = paper[point]
            row = {"reading": variant, "network": point[0], "alpha": point[1], "batch_size": point[2],
                   "n": s["n"], "n_runs": s["n_runs"], "test_acc_mean": s["test_acc_mean"], "test_acc_std": s["test_acc_std"],
                   "convergence_steps_mean": s["convergence_steps_mean"],
                   "convergence_steps_std": s["convergence_steps_std"], "paper_test_acc_mean": acc[0],
                   "paper_test_acc_std": acc[1], "paper_convergence_steps_mean": steps[0] if steps else np.nan,
                   "paper_convergence_steps_std": steps[1] if steps else np.nan}
            row["test_acc_diff_in_paper_std"] = (row["test_acc_mean"] - acc[0]) / acc[1]
            row["steps_diff_in_paper_std"] = (row["convergence_steps_mean"] - steps[0]) / steps[1] if steps else np.nan
            diffs = [row["test_acc_diff_in_paper_std"]] + ([row["steps_diff_in_paper_std"]] if steps else [])
            row["within_2_std"] = bool(row["n"] > 0 and all(abs(d) <= WITHIN for d in diffs))
            rows.append(row)
    return pd.DataFrame(rows)


def write_protocol(results: Results, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = protocol_table(results)
    table.to_csv(out / "protocol.csv", index=False)
    head = ["reading", "α, B", "n conv/runs", "convergence steps", "paper", "Δ/σ", "test acc (%)", "paper", "Δ/σ",
            "within 2σ"]
    rows = [[r["reading"], f"{r['alpha']:g}, {r['batch_size']}", f"{int(r['n'])}/{int(r['n_runs'])}",
             _pm(r["convergence_steps_mean"], r["convergence_steps_std"], 0),
             _pm(r["paper_convergence_steps_mean"], r["paper_convergence_steps_std"], 0),
             _num(r["steps_diff_in_paper_std"], "+.1f"), _pm(r["test_acc_mean"], r["test_acc_std"], 2),
             _pm(r["paper_test_acc_mean"], r["paper_test_acc_std"], 2), _num(r["test_acc_diff_in_paper_std"], "+.1f"),
             "yes" if r["within_2_std"] else "no"] for _, r in table.iterrows()]
    lines = ["# Which reading reproduces the paper's F1 numbers", "",
             "F1 rows of Table 2 (alpha = 1, B = 900; alpha = 1.5, B = 2000) and Table 3 (alpha = 3, B = 5000) under "
             "each reading of 'the training loss' (`stop_loss`) and of the sampling of B and B' (`sampling`); "
             "'protocol=keras (default)' is nerepro's default reading (epoch-end mean NE loss, paired halves of a 2B "
             "batch, Keras' Adam); 'protocol=eq1' reads L(w) of Eq. (1) every 50 steps. Within 2σ: |ours − paper| ≤ 2 × the "
             "paper's std for convergence steps and test accuracy (Table 3 gives no steps).", "",
             markdown(head, rows) if rows else "_no runs at these points_", ""]
    if results.provenance():
        lines[1:1] = ["", results.provenance()]
    if len(table):
        lines.append("## Verdict per reading")
        lines.append("")
        for reading, group in table.groupby("reading", sort=False):
            inside = int(group["within_2_std"].sum())
            n_min = int(group["n"].min())
            lines.append(f"- {reading}: within 2σ at {inside} of {len(group)} points present "
                         f"(of {len(POINTS)}; n ≥ {n_min} converged seeds per point" +
                         (", fewer than the paper's 10" if n_min < 10 else "") + ").")
    if results.notes:
        lines += ["", "## Notes on the data", ""] + [f"- {n}" for n in results.notes]
    text = "\n".join(lines) + "\n"
    (out / "protocol.md").write_text(text)
    return text
