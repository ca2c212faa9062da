"""The claims of Sec. 3 tested on the results (README, 'Claims').

(a) NE improves test accuracy at B_opt (alpha > 1 against alpha = 1): one-sided Welch t-test.
(b) B_opt grows with alpha: Spearman's rho between alpha and B_opt, p from a bootstrap over seeds, over the
    alphas with converged runs at 2 or more B (elsewhere B_opt is the one B run, not a finding).
(c) Convergence time at B_opt falls with alpha: the same, in steps and in samples processed.
(d) B = 5000 with NE beats the best small-B run without NE: one-sided Welch t-test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from .report import Results, grid_batch_sizes, large_batch_size, summarize
from .tables import table_2, table_3

LEVEL = 0.05  # one-sided significance level of every verdict
BOOTSTRAP = 2000


@dataclass
class Claim:
    claim: str
    network: str
    compared: str
    n: str
    test: str
    statistic: float | None
    p_value: float | None
    verdict: str  # supported | not supported | not enough data


def _verdict(p: float | None, in_direction: bool) -> str:
    if p is None or np.isnan(p):
        return "not enough data"
    return "supported" if in_direction and p < LEVEL else "not supported"


def _values(runs: pd.DataFrame, alpha: float, batch_size: int, metric: str = "test_acc") -> np.ndarray:
    cell = runs[(runs["alpha"] == alpha) & (runs["batch_size"] == batch_size) & (runs["status"] == "converged")]
    return pd.to_numeric(cell[metric], errors="coerce").dropna().to_numpy(float)


def welch_greater(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """One-sided Welch t-test of mean(x) > mean(y): (t, p), or (None, None) where it has no answer: fewer
    than 2 values a side, or no spread on either side (t would be infinite or undefined, not evidence)."""
    if len(x) < 2 or len(y) < 2 or (np.std(x) == 0 and np.std(y) == 0):
        return None, None
    result = st.ttest_ind(x, y, equal_var=False, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def _rows_spearman(alphas: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Spearman's rho between `alphas` and each row of `values` (constant rows give 0)."""
    ranks = st.rankdata(values, axis=1)
    a = st.rankdata(alphas) - st.rankdata(alphas).mean()
    r = ranks - ranks.mean(axis=1, keepdims=True)
    denom = np.sqrt((r ** 2).sum(axis=1) * (a ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (r * a).sum(axis=1) / denom
    return np.nan_to_num(rho)


def bootstrap_trends(runs: pd.DataFrame, alphas: list[float], sizes: list[int], seed: int = 0,
                     resamples: int = BOOTSTRAP) -> dict[str, np.ndarray]:
    """Resample seeds within each (alpha, B) cell; per resample, B_opt for each alpha and the steps and
    samples at it. Returns arrays (resamples x alphas); a cell with one converged run stays at its value."""
    rng = np.random.default_rng(seed)
    acc, steps, samples = (np.full((resamples, len(alphas), len(sizes)), np.nan) for _ in range(3))
    for i, alpha in enumerate(alphas):
        for j, b in enumerate(sizes):
            cell = runs[(runs["alpha"] == alpha) & (runs["batch_size"] == b) & (runs["status"] == "converged")]
            if cell.empty:
                continue
            idx = rng.integers(0, len(cell), (resamples, len(cell)))
            for target, metric in ((acc, "test_acc"), (steps, "convergence_steps"), (samples, "samples_processed")):
                target[:, i, j] = cell[metric].to_numpy(float)[idx].mean(axis=1)
    best = np.nanargmax(np.where(np.isnan(acc), -np.inf, acc), axis=2)  # first max: ties to the smaller B
    pick = lambda a: np.take_along_axis(a, best[..., None], axis=2)[..., 0]  # noqa: E731
    return {"b_opt": np.asarray(sizes)[best], "convergence_steps": pick(steps), "samples_processed": pick(samples)}


def claims(results: Results, variant: str) -> list[Claim]:
    runs = results.runs[results.runs["variant"] == variant]
    t2, t3 = table_2(results, variant), table_3(results, variant)
    out: list[Claim] = []
    for network in sorted(runs["network"].unique()):
        net_runs = runs[runs["network"] == network]
        rows = t2[t2["network"] == network].sort_values("alpha")
        base = rows[rows["alpha"] == 1]
        # (a) accuracy at B_opt, each alpha > 1 against alpha = 1
        for _, r in rows[rows["alpha"] > 1].iterrows():
            if base.empty:
                out.append(Claim("a", network, f"alpha={r['alpha']:g} vs alpha=1", "–", "Welch t, one-sided",
                                 None, None, "not enough data"))
                continue
            b = base.iloc[0]
            x, y = _values(net_runs, r["alpha"], r["b_opt"]), _values(net_runs, 1.0, b["b_opt"])
            t, p = welch_greater(x, y)
            out.append(Claim("a", network, f"test acc {x.mean():.2f}% (alpha={r['alpha']:g}, B={r['b_opt']}) vs "
                             f"{y.mean():.2f}% (alpha=1, B={b['b_opt']})", f"{len(x)} vs {len(y)}",
                             "Welch t, one-sided", t, p, _verdict(p, t is not None and t > 0)))
        # (b), (c): trends of B_opt and of convergence time at B_opt over alpha
        alphas = list(rows["alpha"])
        sizes = grid_batch_sizes(sorted(net_runs["batch_size"].unique()))
        enough = len(alphas) >= 2 and rows["n"].min() >= 2  # at least 2 converged seeds at every B_opt
        boot = bootstrap_trends(net_runs, alphas, sizes) if enough else None
        n_text = f"{len(alphas)} alphas, {int(rows['n'].min()) if len(rows) else 0}+ seeds at B_opt"
        trends = [("b", "B_opt", "b_opt", list(rows["b_opt"]), +1),
                  ("c", "convergence steps at B_opt", "convergence_steps", list(rows["convergence_steps_mean"]), -1),
                  ("c", "samples processed at B_opt", "samples_processed", list(rows["samples_processed_mean"]), -1)]
        # (b) only over the alphas whose B_opt is a choice: converged runs at 2 or more B of the grid
        converged = net_runs[(net_runs["status"] == "converged") & net_runs["batch_size"].isin(sizes)]
        single = [a for a in alphas if converged.loc[converged["alpha"] == a, "batch_size"].nunique() < 2]
        for letter, what, key, observed, sign in trends:
            compared = ", ".join(f"alpha={a:g}: {v:.4g}" for a, v in zip(alphas, observed))
            keep = [i for i, a in enumerate(alphas) if letter != "b" or a not in single]
            if len(keep) < len(alphas):
                compared += (f" (one B only at {', '.join(f'alpha={a:g}' for a in single)}: left out"
                             f"{'' if len(keep) >= 2 else '; needs runs at 2 or more B for 2 or more alphas'})")
            if boot is None or len(keep) < 2:
                out.append(Claim(letter, network, f"{what}: {compared or 'no data'}", n_text,
                                 "Spearman rho, bootstrap over seeds", None, None, "not enough data"))
                continue
            over = np.asarray([alphas[i] for i in keep])
            n_over = n_text if len(keep) == len(alphas) else f"{len(keep)} of {n_text}"  # "2 of 3 alphas, ..."
            rho = float(_rows_spearman(over, np.asarray([[observed[i] for i in keep]], float))[0])
            boot_rho = _rows_spearman(over, boot[key][:, keep].astype(float))
            p = float(np.mean(sign * boot_rho <= 0))
            out.append(Claim(letter, network, f"{what}: {compared}", n_over,
                             f"Spearman rho, bootstrap over seeds ({BOOTSTRAP})", rho, p, _verdict(p, sign * rho > 0)))
        # (d) large B with NE against the best small B without NE
        pair = t3[t3["network"] == network].set_index("setting")
        if {"with NE", "without NE"} <= set(pair.index) and \
                pair.loc["with NE", "batch_size"] <= pair.loc["without NE", "batch_size"]:
            wo = pair.loc["without NE"]  # no NE runs above the small-batch optimum: (d) would repeat (a)
            out.append(Claim("d", network, f"needs alpha > 1 runs at a B above B={wo['batch_size']} (B_opt "
                             "without NE); the largest B with NE runs is not above it", "–", "Welch t, one-sided",
                             None, None, "not enough data"))
        elif {"with NE", "without NE"} <= set(pair.index):
            w, wo = pair.loc["with NE"], pair.loc["without NE"]
            x, y = _values(net_runs, w["alpha"], w["batch_size"]), _values(net_runs, 1.0, wo["batch_size"])
            t, p = welch_greater(x, y)
            cost = (f"; samples {w['samples_processed_mean']:.3g} vs {wo['samples_processed_mean']:.3g}, steps "
                    f"{w['convergence_steps_mean']:.0f} vs {wo['convergence_steps_mean']:.0f}")
            out.append(Claim("d", network, f"test acc {x.mean():.2f}% (B={w['batch_size']}, alpha={w['alpha']:g}) vs "
                             f"{y.mean():.2f}% (B={wo['batch_size']}, alpha=1){cost}", f"{len(x)} vs {len(y)}",
                             "Welch t, one-sided", t, p, _verdict(p, t is not None and t > 0)))
        else:
            large = large_batch_size(summarize(net_runs))
            out.append(Claim("d", network, f"needs alpha > 1 runs at B={large or 5000} and alpha = 1 runs", "–",
                             "Welch t, one-sided", None, None, "not enough data"))
    return out


CLAIM_TITLES = {
    "a": "(a) NE improves test accuracy at B_opt (alpha > 1 vs alpha = 1)",
    "b": "(b) B_opt grows with alpha",
    "c": "(c) Convergence time at B_opt falls with alpha (in steps, and in samples processed)",
    "d": "(d) Large-batch training with NE beats the best small-batch training without NE",
}


def _fmt(value, digits: str) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, digits)


def write_claims(results: Results, out: Path) -> str:
    """claims.md (and claims.csv) in `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's claims, tested on these results", "",
             f"Verdicts at one-sided level {LEVEL}: *supported* (the effect is there and significant), *not "
             "supported* (absent, reversed or not significant), *not enough data* (fewer than 2 converged seeds "
             "a side, or fewer than 2 alphas; (b) leaves out an alpha run at one B only, whose B_opt is that B). "
             "B_opt is chosen on the same runs it is tested on, which favours (a); p-values are not corrected for "
             "the number of claims. (a), (b) and (d) compare accuracies and do not depend on the time axis; (c) "
             "is judged in steps and in samples processed (each NE step reads 2B samples)."]
    if results.provenance():
        lines += ["", results.provenance()]
    frames = []
    for variant in results.variants():
        found = claims(results, variant)
        frames.append(pd.DataFrame([asdict(c) for c in found]).assign(variant=variant))
        lines += ["", f"## Runs: {variant}"]
        for letter, title in CLAIM_TITLES.items():
            lines += ["", f"### {title}", "", "| network | compared | n | test | statistic | p | verdict |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {c.network} | {c.compared} | {c.n} | {c.test} | {_fmt(c.statistic, '.3g')} | "
                      f"{_fmt(c.p_value, '.3g')} | **{c.verdict}** |" for c in found if c.claim == letter]
    if results.notes:
        lines += ["", "## Notes on the data", ""] + [f"- {note}" for note in results.notes]
    text = "\n".join(lines) + "\n"
    (out / "claims.md").write_text(text)
    pd.concat(frames, ignore_index=True).to_csv(out / "claims.csv", index=False)
    return text
