"""The paper's central F1 claim, judged on the records: NE at its B_opt against plain training at its B_opt.

Table 2's F1 rows are plain training (alpha = 1) at B = 900 and NE (alpha = 1.5) at B = 2000: 10,934 ± 816
against 7,914 ± 528 steps, so NE converges in 0.72 of plain training's steps, at 90.39 ± 0.17% against
90.17 ± 0.14% test accuracy (10 seeds each). For every reading with converged runs at both rows this
gives, per row, mean ± std, a 95% t interval of the mean and the difference from the paper's mean in the
paper's std, for steps and accuracy; and the claim as a test: the ratio of NE's mean steps to plain
training's with a 95% interval (delta method on the log ratio, Welch-Satterthwaite degrees of freedom), a
two-sided Welch test of the difference in mean steps, and NE's accuracy minus plain training's with its 95%
Welch interval. Beside them, for a heavy tail (a run that crosses L* late scatters far), the ratio of the
median steps and a two-sided Mann-Whitney U test of the steps (exact at these n), which one slow seed
cannot dominate. Intervals and tests need two converged runs a side with some spread; with fewer they are
left out. Only converged runs count: a reading whose runs fail to converge more often at one row would bias
the ratio, so the table gives n per row beside the runs' count in the report's other tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from .paper import table_2
from .report import Results
from .tables import markdown

PLAIN, NE = (1.0, 900), (1.5, 2000)  # Table 2's F1 rows: (alpha, B_opt)
LEVEL = 0.95
EXACT_SPLITS = 10 ** 6  # the rank test is exact up to this many splits of the pooled runs (10 vs 10: 184,756)


def paper_row(alpha: float, batch_size: int) -> dict:
    for r in table_2():
        if r["network"] == "F1" and float(r["alpha"]) == alpha and int(r["b_opt"]) == batch_size:
            return {"steps": (float(r["convergence_steps_mean"]), float(r["convergence_steps_std"])),
                    "test_acc": (float(r["test_acc_mean"]), float(r["test_acc_std"]))}
    raise KeyError((alpha, batch_size))


def _at(runs: pd.DataFrame, alpha: float, batch_size: int) -> pd.Series:
    """Which runs are F1's at (alpha, B)."""
    return (runs["network"] == "F1") & (runs["alpha"] == alpha) & (runs["batch_size"] == batch_size)


def _values(runs: pd.DataFrame, alpha: float, batch_size: int, metric: str) -> np.ndarray:
    cell = runs[_at(runs, alpha, batch_size) & (runs["status"] == "converged")]
    return pd.to_numeric(cell[metric], errors="coerce").dropna().to_numpy(float)


def mean_interval(x: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, std, low, high): the 95% t interval of the mean; NaN where n < 2."""
    if len(x) == 0:
        return (math.nan,) * 4
    if len(x) < 2:
        return float(x.mean()), math.nan, math.nan, math.nan
    half = st.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.std(ddof=1)), float(x.mean() - half), float(x.mean() + half)


def welch_df(x: np.ndarray, y: np.ndarray) -> float:
    a, b = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    return (a + b) ** 2 / (a ** 2 / (len(x) - 1) + b ** 2 / (len(y) - 1))


def ratio_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """mean(x) / mean(y) with a 95% interval: delta method on log(mean x) - log(mean y), Welch df."""
    ratio = float(x.mean() / y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return ratio, math.nan, math.nan
    a, b = x.var(ddof=1) / (len(x) * x.mean() ** 2), y.var(ddof=1) / (len(y) * y.mean() ** 2)
    if a == 0 or b == 0:  # no spread on a side (e.g. a few runs at the same epoch end): no interval, as for Welch
        return ratio, math.nan, math.nan
    df = (a + b) ** 2 / (a ** 2 / (len(x) - 1) + b ** 2 / (len(y) - 1))
    half = st.t.ppf(0.5 + LEVEL / 2, df) * math.sqrt(a + b)
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


def difference_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """mean(x) - mean(y), its 95% Welch interval, and the two-sided Welch p-value (NaN where n < 2 a side)."""
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2 or x.std() == 0 or y.std() == 0:
        return diff, math.nan, math.nan, math.nan
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    half = st.t.ppf(0.5 + LEVEL / 2, welch_df(x, y)) * se
    p = float(st.ttest_ind(x, y, equal_var=False).pvalue)
    return diff, diff - half, diff + half, p


def rank_test(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value of x against y: whether one side's steps tend to be larger, by ranks.
    Exact, ties included, where the pooled runs split into at most EXACT_SPLITS ways (the null distribution of
    x's rank sum counted over all splits, tied runs at their mean rank); else scipy's normal approximation
    with tie and continuity corrections. NaN where n < 2 a side or all runs tie."""
    if len(x) < 2 or len(y) < 2 or np.unique(np.concatenate([x, y])).size < 2:
        return math.nan
    n, splits = len(x), math.comb(len(x) + len(y), len(x))
    if splits > EXACT_SPLITS:
        return float(st.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").pvalue)
    scores = np.rint(2 * st.rankdata(np.concatenate([x, y]))).astype(int)  # twice the mean ranks: integers
    ways = np.zeros((n + 1, scores.sum() + 1))  # ways[k, s]: subsets of k runs whose scores sum to s
    ways[0, 0] = 1
    for score in scores:  # each run in the subset or not (the right side is read before it is written)
        ways[1:, score:] = ways[1:, score:] + ways[:-1, :ways.shape[1] - score]
    centre = n * (len(scores) + 1)  # the scores' expected sum over x's n runs
    far = np.abs(np.arange(ways.shape[1]) - centre) >= abs(scores[:n].sum() - centre)
    return float(min(1.0, ways[n, far].sum() / splits))


def headline(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, claim): per reading with runs at a Table 2 F1 row, the row's statistics; per reading with
    converged runs at both rows, the claim's."""
    rows, claim = [], []
    for variant in results.variants():
        runs = results.runs[results.runs["variant"] == variant]
        found = {}
        for alpha, b in (PLAIN, NE):
            paper = paper_row(alpha, b)
            entry = {"reading": variant, "alpha": alpha, "batch_size": b}
            for metric, key in (("convergence_steps", "steps"), ("test_acc", "test_acc")):
                x = _values(runs, alpha, b, metric)
                found[(alpha, metric)] = x
                mean, std, low, high = mean_interval(x)
                entry.update({f"n_{key}": len(x), f"{key}_mean": mean, f"{key}_std": std, f"{key}_low": low,
                              f"{key}_high": high, f"paper_{key}_mean": paper[key][0], f"paper_{key}_std": paper[key][1],
                              f"{key}_diff_in_paper_std": (mean - paper[key][0]) / paper[key][1]})
            entry["n"] = entry["n_steps"]  # converged runs (each has its steps; accuracy too unless diverged late)
            if entry["n"]:
                rows.append(entry)
        steps_ne, steps_plain = found[(NE[0], "convergence_steps")], found[(PLAIN[0], "convergence_steps")]
        if len(steps_ne) and len(steps_plain):
            ratio, low, high = ratio_interval(steps_ne, steps_plain)
            diff, _, _, p = difference_interval(steps_ne, steps_plain)
            acc, acc_low, acc_high, acc_p = difference_interval(found[(NE[0], "test_acc")], found[(PLAIN[0], "test_acc")])
            paper_ne, paper_plain = paper_row(*NE), paper_row(*PLAIN)
            claim.append({"reading": variant, "n_ne": len(steps_ne), "n_plain": len(steps_plain),
                          "ratio": ratio, "ratio_low": low, "ratio_high": high,
                          "median_ratio": float(np.median(steps_ne) / np.median(steps_plain)),
                          "steps_rank_p": rank_test(steps_ne, steps_plain),
                          "paper_ratio": paper_ne["steps"][0] / paper_plain["steps"][0],
                          "steps_diff": diff, "steps_p": p, "acc_diff": acc, "acc_low": acc_low, "acc_high": acc_high,
                          "acc_p": acc_p, "paper_acc_diff": paper_ne["test_acc"][0] - paper_plain["test_acc"][0]})
    return pd.DataFrame(rows), pd.DataFrame(claim)


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _interval(low: float, high: float, fmt: str) -> str:
    return "–" if math.isnan(low) else f"[{low:{fmt}}, {high:{fmt}}]"


def verdict(c: pd.Series) -> str:
    """What the ratio's interval says of the paper's claim (NE at B_opt converges in 0.72 of the steps)."""
    if math.isnan(c["ratio_low"]):
        return f"no interval at n = {int(c['n_ne'])} vs {int(c['n_plain'])}: a hint only"
    paper = "the paper's ratio inside" if c["ratio_low"] <= c["paper_ratio"] <= c["ratio_high"] else \
        "the paper's ratio outside"
    if c["ratio_high"] < 1:
        return f"{paper}; NE converges sooner"
    if c["ratio_low"] > 1:
        return f"{paper}; NE converges later"
    return f"{paper}; no difference shown (1 inside)"


def write_headline(results: Results, out: Path) -> str | None:
    """headline.md and headline.csv (the rows) and headline_claim.csv into `out`; None without runs there."""
    rows, claim = headline(results)
    if rows.empty:
        for name in ("headline.md", "headline.csv", "headline_claim.csv"):  # none stale beside the new report
            (out / name).unlink(missing_ok=True)
        return None
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "headline.csv", index=False)
    claim.to_csv(out / "headline_claim.csv", index=False)
    head = ["reading", "α, B", "n", "steps: mean ± std", "95% CI", "paper", "Δ/σ", "test acc (%)", "95% CI", "paper",
            "Δ/σ"]
    table = [[r["reading"], f"{r['alpha']:g}, {r['batch_size']}", str(int(r["n"])),
              f"{r['steps_mean']:,.0f}" + (f" ± {r['steps_std']:,.0f}" if not math.isnan(r["steps_std"]) else ""),
              _interval(r["steps_low"], r["steps_high"], ",.0f"),
              f"{r['paper_steps_mean']:,.0f} ± {r['paper_steps_std']:,.0f}", _num(r["steps_diff_in_paper_std"], "+.1f"),
              f"{r['test_acc_mean']:.2f}" + (f" ± {r['test_acc_std']:.2f}" if not math.isnan(r["test_acc_std"]) else ""),
              _interval(r["test_acc_low"], r["test_acc_high"], ".2f"),
              f"{r['paper_test_acc_mean']:.2f} ± {r['paper_test_acc_std']:.2f}", _num(r["test_acc_diff_in_paper_std"], "+.1f")]
             for _, r in rows.iterrows()]
    lines = ["# F1's headline: NE at its B_opt against plain training at its B_opt (Table 2)", "",
             "Table 2's F1 rows per reading: converged runs, mean ± std, the 95% t interval of the mean, and the "
             "difference from the paper's mean in the paper's std (Δ/σ). The paper: 10 seeds a row.", "",
             markdown(head, table), ""]
    if len(claim):
        lines += ["## The claim: NE converges in 0.72 of plain training's steps at equal or better accuracy", "",
                  "Ratio of NE's mean convergence steps (alpha = 1.5, B = 2000) to plain training's (alpha = 1, "
                  "B = 900) with its 95% interval (delta method on the log ratio), a two-sided Welch test of the "
                  "difference in mean steps, the ratio of the median steps and a two-sided Mann-Whitney test (ranks: "
                  "one slow seed cannot dominate them), and NE's test accuracy minus plain training's with its 95% "
                  "Welch interval.", ""]
        table = [[c["reading"], f"{int(c['n_ne'])} vs {int(c['n_plain'])}", f"{c['ratio']:.3f}",
                  _interval(c["ratio_low"], c["ratio_high"], ".3f"), f"{c['paper_ratio']:.3f}",
                  _num(c["steps_p"], ".2g"), f"{c['median_ratio']:.3f}", _num(c["steps_rank_p"], ".2g"),
                  f"{c['acc_diff']:+.2f}", _interval(c["acc_low"], c["acc_high"], "+.2f"),
                  f"{c['paper_acc_diff']:+.2f}", verdict(c)] for _, c in claim.iterrows()]
        lines += [markdown(["reading", "n (NE vs plain)", "steps ratio", "95% CI", "paper", "Welch p (steps)",
                            "median ratio", "Mann-Whitney p", "Δ test acc (pp)", "95% CI", "paper",
                            "what the interval says"], table), ""]
    rows_runs = results.runs[_at(results.runs, *PLAIN) | _at(results.runs, *NE)]  # of every reading
    if provenance := Results(rows_runs).provenance():  # the code of these rows' runs only
        lines[1:1] = ["", provenance]
    text = "\n".join(lines)
    (out / "headline.md").write_text(text)
    return text


README_READINGS = (("protocol=keras (default)", "default reading (`--protocol keras`)"),
                   ("protocol=step", "step reading (`--protocol step`)"),
                   ("protocol=keras-running", "running reading (`--protocol keras-running`)"),
                   ("protocol=eq1", "Eq. (1) reading (`--protocol eq1`)"))
BEGIN, END = "<!-- f1-numbers: begin (scripts/readme_numbers.py writes this block from results/f1) -->", \
    "<!-- f1-numbers: end -->"


def readme_block(results: Results) -> str:
    """The README's table of Table 2's F1 rows per reading and the NE claim's line, from the records."""
    rows, claim = headline(results)
    present = [(v, name) for v, name in README_READINGS if len(rows) and v in set(rows["reading"])]
    head = ["Table 2, F1", "paper", *(name for _, name in present)]
    table = []
    for (alpha, b), label in ((PLAIN, "alpha = 1, B = 900"), (NE, "alpha = 1.5, B = 2000 (NE)")):
        paper = paper_row(alpha, b)
        cells = [label, f"{paper['steps'][0]:,.0f} ± {paper['steps'][1]:,.0f} steps, "
                        f"{paper['test_acc'][0]:.2f} ± {paper['test_acc'][1]:.2f}%"]
        for variant, _ in present:
            r = rows[(rows["reading"] == variant) & (rows["alpha"] == alpha)]
            if r.empty:
                cells.append("–")
                continue
            r = r.iloc[0]
            spread = "" if math.isnan(r["steps_std"]) else f" ± {r['steps_std']:,.0f}"
            acc = "" if math.isnan(r["test_acc_std"]) else f" ± {r['test_acc_std']:.2f}"
            delta = f"{r['steps_diff_in_paper_std']:+.1f}".replace("-", "−")
            cells.append(f"{r['steps_mean']:,.0f}{spread} steps (n = {int(r['n'])}, {delta}σ), "
                         f"{r['test_acc_mean']:.2f}{acc}%")
        table.append(cells)
    lines = [BEGIN, markdown(head, table), ""]
    for variant, name in present:
        c = claim[claim["reading"] == variant] if len(claim) else claim
        if c.empty:
            continue
        c = c.iloc[0]
        interval = "" if math.isnan(c["ratio_low"]) else \
            f" (95% CI {c['ratio_low']:.2f}-{c['ratio_high']:.2f}, Welch p = {c['steps_p']:.2g})"
        ranks = "" if math.isnan(c["steps_rank_p"]) else \
            f"; medians {c['median_ratio']:.2f}, Mann-Whitney (ranks) p = {c['steps_rank_p']:.2g}"
        accuracy = "" if math.isnan(c["acc_low"]) else \
            (f" Test accuracy NE − plain: {c['acc_diff']:+.2f} pp (95% CI {c['acc_low']:+.2f} to "
             f"{c['acc_high']:+.2f}); the paper: {c['paper_acc_diff']:+.2f}.").replace("-", "−")
        lines.append(f"- NE/plain convergence steps, {name.rsplit(' (', 1)[0]}: {c['ratio']:.2f}{interval} at n = "
                     f"{int(c['n_ne'])} vs {int(c['n_plain'])}{ranks}; the paper: {c['paper_ratio']:.2f}; "
                     f"{verdict(c)}.{accuracy}")
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with its f1-numbers block replaced by `block`."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[end:]
