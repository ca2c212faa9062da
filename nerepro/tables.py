"""Tables 1-3 of the paper rebuilt from result files, each beside the paper's numbers.

Table 2: for each network and alpha, B_opt = the B (of the paper's grid) with the highest mean test
accuracy, ties to the smaller B. Table 3: "without NE" = the best B at alpha = 1; "with NE" = the best
alpha > 1 at B = 5000. Differences from the paper are in units of the paper's std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .paper import TABLE_1, table_2 as paper_table_2, table_3 as paper_table_3
from .report import Results, best_batch_size, grid_batch_sizes, large_batch_size, summarize
from .results import DEFAULT_VARIANT

STOP_COLUMNS = ["stop_ratio_median", "stop_ratio_max", "n_stop_above", "n_stop_ratio"]
TABLE_2_COLUMNS = ["network", "alpha", "b_opt", "test_acc_mean", "test_acc_std", "convergence_steps_mean",
                   "convergence_steps_std", "n", "n_runs", "n_not_converged", "n_diverged", "n_error",
                   "samples_processed_mean", "samples_processed_std", "wall_s_mean", *STOP_COLUMNS]
TABLE_3_COLUMNS = ["network", "setting", "batch_size", "alpha", "test_acc_mean", "test_acc_std", "n", "n_runs",
                   "convergence_steps_mean", "samples_processed_mean", "wall_s_mean", "paper_batch_size", "paper_alpha",
                   "paper_test_acc_mean", "paper_test_acc_std", "test_acc_diff_in_paper_std", *STOP_COLUMNS]
PAPER_2 = ["paper_b_opt", "paper_test_acc_mean", "paper_test_acc_std", "paper_convergence_steps_mean",
           "paper_convergence_steps_std", "test_acc_diff_in_paper_std", "convergence_steps_diff_in_paper_std"]


def _diff(ours, paper_mean, paper_std):
    """(ours - paper) / paper's std; NaN where either is missing."""
    try:
        return (float(ours) - float(paper_mean)) / float(paper_std)
    except (TypeError, ValueError, ZeroDivisionError):
        return np.nan


def table_1(results: Results) -> pd.DataFrame:
    """Table 1: network, dataset, L*, L** as run, beside the paper's."""
    rows = []
    for network in sorted(results.runs["network"].unique()):
        runs = results.runs[results.runs["network"] == network]
        paper = TABLE_1.get(network, {})
        pairs = runs[["l_star", "l_star_star"]].dropna() if {"l_star", "l_star_star"} <= set(runs) else runs[[]]
        ours = sorted(set(map(tuple, pairs.to_numpy().tolist())))
        rows.append({"network": network, "network_type": paper.get("network_type"),
                     "dataset": runs["dataset"].dropna().iloc[0] if runs["dataset"].notna().any() else None,
                     "l_star": "; ".join(f"{a:g}" for a, _ in ours) or None,
                     "l_star_star": "; ".join(f"{b:g}" for _, b in ours) or None,
                     "paper_dataset": paper.get("dataset"), "paper_l_star": paper.get("l_star"),
                     "paper_l_star_star": paper.get("l_star_star"), "runs": len(runs)})
    return pd.DataFrame(rows)


def table_2(results: Results, variant: str) -> pd.DataFrame:
    """Table 2: test accuracy and convergence time at B_opt for each network and alpha."""
    stats = summarize(results.runs[results.runs["variant"] == variant])
    paper = {(r["network"], float(r["alpha"])): r for r in paper_table_2()}
    rows = []
    for (network, alpha), group in stats.groupby(["network", "alpha"]):
        best = best_batch_size(group[group["batch_size"].isin(grid_batch_sizes(list(group["batch_size"])))])
        if best is None:
            continue
        row = {c: best[c] for c in TABLE_2_COLUMNS if c in best}
        row.update(network=network, alpha=alpha, b_opt=int(best["batch_size"]))
        p = paper.get((network, float(alpha)))
        if p:
            row.update(paper_b_opt=int(p["b_opt"]), paper_test_acc_mean=float(p["test_acc_mean"]),
                       paper_test_acc_std=float(p["test_acc_std"]),
                       paper_convergence_steps_mean=float(p["convergence_steps_mean"]),
                       paper_convergence_steps_std=float(p["convergence_steps_std"]))
            row["test_acc_diff_in_paper_std"] = _diff(row["test_acc_mean"], p["test_acc_mean"], p["test_acc_std"])
            row["convergence_steps_diff_in_paper_std"] = _diff(row["convergence_steps_mean"],
                                                               p["convergence_steps_mean"], p["convergence_steps_std"])
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_2_COLUMNS + PAPER_2)


def table_3(results: Results, variant: str) -> pd.DataFrame:
    """Table 3: best test accuracy without NE (best B at alpha = 1) and with NE (best alpha > 1 at B = 5000)."""
    stats = summarize(results.runs[results.runs["variant"] == variant])
    paper = {(r["network"], r["setting"]): r for r in paper_table_3()}
    rows = []
    for network, group in stats.groupby("network"):
        plain = group[group["alpha"] == 1]
        without = best_batch_size(plain[plain["batch_size"].isin(grid_batch_sizes(list(plain["batch_size"])))])
        large = large_batch_size(group)
        at_large = group[(group["batch_size"] == large) & (group["alpha"] > 1) & (group["n"] > 0)]
        with_ne = None
        if not at_large.empty:
            best = at_large["test_acc_mean"].max()
            with_ne = at_large[at_large["test_acc_mean"] == best].sort_values("alpha").iloc[0]
        for setting, best in (("without NE", without), ("with NE", with_ne)):
            if best is None:
                continue
            row = {"network": network, "setting": setting, "batch_size": int(best["batch_size"]),
                   "alpha": best["alpha"], "test_acc_mean": best["test_acc_mean"], "test_acc_std": best["test_acc_std"],
                   "n": best["n"], "n_runs": best["n_runs"], "convergence_steps_mean": best["convergence_steps_mean"],
                   "samples_processed_mean": best["samples_processed_mean"], "wall_s_mean": best["wall_s_mean"],
                   **{c: best[c] for c in STOP_COLUMNS}}
            p = paper.get((network, setting))
            if p:
                row.update(paper_batch_size=int(p["batch_size"]), paper_alpha=float(p["alpha"]),
                           paper_test_acc_mean=float(p["test_acc_mean"]), paper_test_acc_std=float(p["test_acc_std"]),
                           test_acc_diff_in_paper_std=_diff(best["test_acc_mean"], p["test_acc_mean"],
                                                            p["test_acc_std"]))
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_3_COLUMNS)


def table_baselines(results: Results, variant: str) -> pd.DataFrame:
    """Each NE row of Tables 2 and 3 beside plain SGD (alpha = 1) at 2B (the same samples per step) and at
    B_eff (the same noise covariance, Eq. 11), where those runs exist (configs/baselines.toml)."""
    from .noise import effective_batch_size

    stats = summarize(results.runs[results.runs["variant"] == variant]).set_index(["network", "alpha", "batch_size"])
    points = [(r["network"], r["alpha"], r["b_opt"], "Table 2") for _, r in table_2(results, variant).iterrows()
              if r["alpha"] > 1]
    points += [(r["network"], r["alpha"], r["batch_size"], "Table 3") for _, r in table_3(results, variant).iterrows()
               if r["setting"] == "with NE"]
    rows = []
    for network, alpha, b, source in points:
        multiple = RunConfig(network, alpha, int(b)).batch_multiple  # the default ghost-batch size, as baselines.toml
        row = {"source": source, "network": network, "alpha": alpha, "batch_size": int(b)}
        for tag, size in (("ne", int(b)), ("plain_2b", 2 * int(b)),
                          ("plain_beff", effective_batch_size(int(b), alpha, multiple))):
            key = (network, alpha if tag == "ne" else 1.0, size)
            row[f"{tag}_batch_size"] = size
            found = stats.loc[key] if key in stats.index else None
            for metric in ("test_acc_mean", "test_acc_std", "convergence_steps_mean", "samples_processed_mean", "n"):
                row[f"{tag}_{metric}"] = found[metric] if found is not None else np.nan
        if pd.notna(row["plain_2b_n"]) or pd.notna(row["plain_beff_n"]):
            rows.append(row)
    return pd.DataFrame(rows)


# ---- rendering -------------------------------------------------------------------------------------

def _pm(mean, std, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if std is None or pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(value, fmt: str = "g") -> str:
    return "–" if value is None or pd.isna(value) else format(value, fmt)


def _stop(r: pd.Series) -> str:
    """L(w) at the stop over L**: 'median, max (runs at or above L** / runs that give L(w))'."""
    n = r.get("n_stop_ratio")
    if n is None or pd.isna(n) or n == 0:
        return "–"
    ratio = lambda v: format(v, ".0f") if v >= 10 else format(v, ".3g")  # noqa: E731
    return f"{ratio(r['stop_ratio_median'])}, {ratio(r['stop_ratio_max'])} ({int(r['n_stop_above'])}/{int(r['n_stop_ratio'])})"


def _cells_2(r: pd.Series) -> list[str]:
    return [r["network"], _num(r["alpha"]), _num(r["b_opt"], "d"), _num(r.get("paper_b_opt"), ".0f"),
            _pm(r["test_acc_mean"], r["test_acc_std"], 2), _pm(r.get("paper_test_acc_mean"), r.get("paper_test_acc_std"), 2),
            _num(r.get("test_acc_diff_in_paper_std"), "+.1f"),
            _pm(r["convergence_steps_mean"], r["convergence_steps_std"], 0),
            _pm(r.get("paper_convergence_steps_mean"), r.get("paper_convergence_steps_std"), 0),
            _num(r.get("convergence_steps_diff_in_paper_std"), "+.1f"),
            _num(r["samples_processed_mean"], ".3g"), _num(r["wall_s_mean"], ".0f"), _stop(r),
            f"{int(r['n'])}/{int(r['n_runs'])}"]


STOP_HEAD = "L(w)/L** at the stop: median, max (runs ≥ 1 / runs)"
HEAD_2 = ["net", "α", "B_opt", "paper B_opt", "test acc (%)", "paper", "Δ/σ_paper", "convergence steps", "paper",
          "Δ/σ_paper", "samples", "wall (s)", STOP_HEAD, "n conv/runs"]
HEAD_3 = ["net", "setting", "B", "α", "paper B, α", "best test acc (%)", "paper", "Δ/σ_paper", "steps",
          "samples", STOP_HEAD, "n conv/runs"]
HEAD_B = ["from", "net", "NE: α, B", "test acc (%)", "steps", "samples", "plain 2B: B", "test acc (%)", "steps",
          "samples", "plain B_eff: B", "test acc (%)", "steps", "samples"]
HEAD_1 = ["net", "type", "dataset", "L*", "L**", "paper dataset", "paper L*", "paper L**", "runs"]


def _cells_3(r: pd.Series) -> list[str]:
    paper_setting = "–" if pd.isna(r.get("paper_batch_size", np.nan)) else \
        f"{int(r['paper_batch_size'])}, {r['paper_alpha']:g}"
    return [r["network"], r["setting"], _num(r["batch_size"], "d"), _num(r["alpha"]), paper_setting,
            _pm(r["test_acc_mean"], r["test_acc_std"], 2), _pm(r.get("paper_test_acc_mean"), r.get("paper_test_acc_std"), 2),
            _num(r.get("test_acc_diff_in_paper_std"), "+.1f"), _num(r["convergence_steps_mean"], ".0f"),
            _num(r["samples_processed_mean"], ".3g"), _stop(r), f"{int(r['n'])}/{int(r['n_runs'])}"]


def _cells_b(r: pd.Series) -> list[str]:
    cells = [r["source"], r["network"], f"{r['alpha']:g}, {r['batch_size']}"]
    for tag in ("ne", "plain_2b", "plain_beff"):
        if tag != "ne":
            cells.append(str(r[f"{tag}_batch_size"]))
        cells += [_pm(r[f"{tag}_test_acc_mean"], r[f"{tag}_test_acc_std"], 2), _num(r[f"{tag}_convergence_steps_mean"], ".0f"),
                  _num(r[f"{tag}_samples_processed_mean"], ".3g")]
    return cells


def _cells_1(r: pd.Series) -> list[str]:
    return [r["network"], str(r["network_type"] or "–"), str(r["dataset"] or "–"), str(r["l_star"] or "–"),
            str(r["l_star_star"] or "–"), str(r["paper_dataset"] or "–"), _num(r["paper_l_star"]),
            _num(r["paper_l_star_star"]), str(r["runs"])]


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latex(head: list[str], rows: list[list[str]], caption: str) -> str:
    esc = lambda s: (s.replace("±", r"$\pm$").replace("α", r"$\alpha$").replace("Δ/σ_paper", r"$\Delta/\sigma$")  # noqa
                     .replace("_", r"\_").replace("%", r"\%").replace("L**", r"$L^{**}$").replace("L*", r"$L^{*}$")
                     .replace("–", "--").replace("≥", r"$\geq$"))
    body = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}", r"\begin{tabular}{" + "l" * len(head) + "}",
            r"\toprule", " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    body += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(body)


TITLES = {
    "table1": "Table 1: network configurations (ours beside the paper's)",
    "table2": "Table 2: test accuracy and convergence time at B_opt for each alpha (mean ± std over converged seeds)",
    "table3": "Table 3: best test accuracy without NE (best B, alpha = 1) and with NE (B = 5000 or the largest B "
              "run, best alpha)",
    "baselines": "Compute-matched baselines: each NE row beside plain SGD at 2B (same samples per step) and at B_eff "
                 "(same noise covariance, Eq. 11)",
}


def write_tables(results: Results, out: Path) -> str:
    """Write table1/2/3 as .md, .csv and .tex into `out`; returns the Markdown (printed by the CLI)."""
    out.mkdir(parents=True, exist_ok=True)
    variants = results.variants()
    t1 = table_1(results)
    parts = {"table1": [(None, t1, HEAD_1, [_cells_1(r) for _, r in t1.iterrows()])]}
    parts["table2"], parts["table3"], parts["baselines"] = [], [], []
    for v in variants:
        t2, t3, tb = table_2(results, v), table_3(results, v), table_baselines(results, v)
        parts["table2"].append((v, t2, HEAD_2, [_cells_2(r) for _, r in t2.iterrows()]))
        parts["table3"].append((v, t3, HEAD_3, [_cells_3(r) for _, r in t3.iterrows()]))
        if len(tb):
            parts["baselines"].append((v, tb, HEAD_B, [_cells_b(r) for _, r in tb.iterrows()]))
    if not parts["baselines"]:
        del parts["baselines"]
    printed = [results.provenance()] if results.provenance() else []
    for name, sections in parts.items():
        md, tex, frames = [f"## {TITLES[name]}"] + ([results.provenance()] if results.provenance() else []), [], []
        for variant, frame, head, rows in sections:
            label = "" if variant is None or len(variants) == 1 else f" ({variant})"
            if variant is not None:
                md.append(f"Runs: {variant}." + (" The default reading." if variant == DEFAULT_VARIANT else
                          " These settings differ from nerepro's default reading: read the paper's numbers as a "
                          "reference."))
            md.append(markdown(head, rows) if rows else "_no data_")
            tex.append(latex(head, rows, TITLES[name] + label))
            frames.append(frame.assign(variant=variant) if variant is not None else frame)
        text = "\n\n".join(md) + "\n"
        (out / f"{name}.md").write_text(text)
        (out / f"{name}.tex").write_text("\n\n".join(tex) + "\n")
        pd.concat(frames, ignore_index=True).to_csv(out / f"{name}.csv", index=False)
        printed.append(text)
    return "\n".join(printed)
