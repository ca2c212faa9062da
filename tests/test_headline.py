"""F1's headline rows and the NE claim (headline.py): statistics against scipy, exact enumeration and a
coverage check."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from nerepro.headline import (difference_interval, headline, mean_interval, rank_test, ratio_interval,
                              readme_block, write_headline)
from nerepro.report import Results


def runs(steps_plain, steps_ne, acc_plain, acc_ne, variant="protocol=keras (default)") -> pd.DataFrame:
    rows = [{"variant": variant, "network": "F1", "alpha": 1.0, "batch_size": 900, "status": "converged",
             "convergence_steps": s, "test_acc": a} for s, a in zip(steps_plain, acc_plain)]
    rows += [{"variant": variant, "network": "F1", "alpha": 1.5, "batch_size": 2000, "status": "converged",
              "convergence_steps": s, "test_acc": a} for s, a in zip(steps_ne, acc_ne)]
    return pd.DataFrame(rows)


def test_intervals_match_scipy():
    x, y = np.array([9915.0, 10400, 9100, 9800]), np.array([10251.0, 10988, 11300])
    mean, std, low, high = mean_interval(x)
    assert (low, high) == pytest.approx(st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x)))
    assert std == pytest.approx(x.std(ddof=1))
    diff, low, high, p = difference_interval(x, y)
    welch = st.ttest_ind(x, y, equal_var=False)
    assert diff == pytest.approx(x.mean() - y.mean()) and p == pytest.approx(welch.pvalue)
    assert (low, high) == pytest.approx(tuple(welch.confidence_interval(0.95)))
    assert np.isnan(mean_interval(x[:1])[2]) and np.isnan(difference_interval(x[:1], y)[1])
    same = np.array([9915.0, 9915.0])  # runs that ended at the same epoch: no spread, no interval either way
    assert np.isnan(ratio_interval(same, y)[1]) and np.isnan(difference_interval(same, y)[1])


def test_the_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        x, y = rng.normal(7914, 528, 10), rng.normal(10934, 816, 10)
        _, low, high = ratio_interval(x, y)
        hits += low <= 7914 / 10934 <= high
    assert 0.93 <= hits / 2000 <= 0.97


def u_statistic(x, y) -> float:
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y)


def exact_rank_p(x, y) -> float:
    """Two-sided Mann-Whitney p by listing every split of the pooled runs into groups of len(x) and len(y)."""
    pooled, centre = np.concatenate([x, y]), len(x) * len(y) / 2
    splits = [u_statistic(pooled[list(i)], np.delete(pooled, list(i)))
              for i in itertools.combinations(range(len(pooled)), len(x))]
    return float(np.mean([abs(u - centre) >= abs(u_statistic(x, y) - centre) - 1e-9 for u in splits]))


def test_the_rank_test_is_exact_with_ties_and_approximate_past_a_million_splits():
    x, y = np.array([8400.0, 8850, 9500]), np.array([7900.0, 8150, 8250, 8600])
    assert rank_test(x, y) == pytest.approx(exact_rank_p(x, y)) == pytest.approx(4 / 35)  # U = 11 of 12
    x, y = np.array([9650.0, 9950, 8400, 9650, 10700, 9500]), np.array([8150.0, 8150, 8600, 8600, 9650, 7900, 9400])
    assert rank_test(x, y) == pytest.approx(exact_rank_p(x, y))  # ties (steps at the same check): still exact
    permutations = st.mannwhitneyu(x, y, method=st.PermutationMethod(n_resamples=np.inf))  # scipy's exact with ties
    assert rank_test(x, y) == pytest.approx(permutations.pvalue)
    x, y = np.array([9650.0, 9950, 20800, 8400, 9650, 10700, 9500, 9550, 8850, 9100, 9900, 10050, 9650]), \
        np.array([8150.0, 8150, 8600, 8600, 9650, 7900, 9400, 12050, 9850, 8250, 8600, 9100])  # C(25, 13) splits
    n, pooled = len(x) + len(y), np.concatenate([x, y])
    ties = np.unique(pooled, return_counts=True)[1]
    sigma = math.sqrt(len(x) * len(y) / 12 * ((n + 1) - (ties ** 3 - ties).sum() / (n * (n - 1))))
    z = (abs(u_statistic(x, y) - len(x) * len(y) / 2) - 0.5) / sigma
    assert rank_test(x, y) == pytest.approx(math.erfc(z / math.sqrt(2)))  # tie-corrected normal approximation
    for small in (False, True):  # one slower seed: Welch's p moves, the ranks' does not
        a, b = (x[:6], y[:7]) if small else (x, y)
        slower = a.copy()
        slower[a.argmax()] = 60000
        assert rank_test(slower, b) == rank_test(a, b)
        welch = st.ttest_ind(a, b, equal_var=False).pvalue
        assert st.ttest_ind(slower, b, equal_var=False).pvalue != pytest.approx(welch)
    assert math.isnan(rank_test(x[:1], y)) and math.isnan(rank_test(np.array([9915.0, 9915]), np.array([9915.0] * 3)))


def test_headline_rows_and_claim(tmp_path):
    frame = runs([10251, 10988], [9915], [90.33, 90.2], [90.34])
    rows, claim = headline(Results(frame))
    plain = rows[rows["alpha"] == 1].iloc[0]
    assert plain["n"] == 2 and plain["steps_mean"] == pytest.approx(10619.5)
    assert plain["steps_diff_in_paper_std"] == pytest.approx((10619.5 - 10934) / 816)
    c = claim.iloc[0]
    assert c["ratio"] == pytest.approx(9915 / 10619.5) and np.isnan(c["ratio_low"])  # n = 1 on one side
    assert c["paper_ratio"] == pytest.approx(7914 / 10934)
    text = write_headline(Results(frame), tmp_path)
    assert "no interval at n = 1 vs 2" in text and (tmp_path / "headline.csv").is_file()
    ne = np.array([7500.0, 8000, 8300, 7700, 7900])
    plain = np.array([10500.0, 11000, 11800, 10300, 10900])
    text = write_headline(Results(runs(plain, ne, [90.1, 90.2, 90.0, 90.15, 90.05], [90.4, 90.3, 90.5, 90.4, 90.35])), tmp_path)
    assert "the paper's ratio inside; NE converges sooner" in text
    assert write_headline(Results(runs([], [], [], [], variant="x")[:0].reindex(columns=frame.columns)), tmp_path) \
        is None and not (tmp_path / "headline.md").exists()


def test_the_headline_names_the_code_of_its_rows_runs_only(tmp_path):
    frame = runs([10251, 10988], [9915, 9285], [90.33, 90.2], [90.34, 90.0])
    other = frame.iloc[:2].assign(alpha=3.0, batch_size=5000)  # Table 3's row: not in the headline
    frame = pd.concat([frame, other], ignore_index=True)
    frame["run_id"] = [f"r{i}" for i in range(len(frame))]
    frame["provenance_git_dirty"] = False
    frame["provenance_git_commit"] = ["a" * 40] * 4 + ["b" * 40] * 2
    assert Results(frame).provenance().startswith("Provenance: the runs come from 2 commits")
    assert "Provenance" not in write_headline(Results(frame), tmp_path)  # its rows: one clean commit
    frame.loc[1, "provenance_git_commit"] = "c" * 40
    text = write_headline(Results(frame), tmp_path)
    assert "Provenance: the runs come from 2 commits: aaaaaaa (3 runs), ccccccc (1 run)." in text
    assert "bbbbbbb" not in text


def test_the_readme_claim_line_gives_the_ratio_welch_p_and_the_accuracy_difference():
    ne, plain = np.array([9915.0, 9285, 9885, 9480]), np.array([10251.0, 10787, 10586, 9514, 11189])
    acc_ne, acc_plain = np.array([90.34, 90.0, 90.39, 90.39]), np.array([90.33, 90.29, 90.06, 90.23, 90.38])
    block = readme_block(Results(runs(plain, ne, acc_plain, acc_ne)))
    line = next(x for x in block.splitlines() if x.startswith("- NE/plain"))
    welch = st.ttest_ind(ne, plain, equal_var=False)
    acc = st.ttest_ind(acc_ne, acc_plain, equal_var=False).confidence_interval(0.95)
    assert f"{ne.mean() / plain.mean():.2f} (95% CI " in line and f"Welch p = {welch.pvalue:.2g})" in line
    assert "at n = 4 vs 5" in line
    ranks = exact_rank_p(ne, plain)
    assert f"; medians {np.median(ne) / np.median(plain):.2f}, Mann-Whitney (ranks) p = {ranks:.2g}; the paper: 0.72" \
        in line
    signed = lambda v: f"{v:+.2f}".replace("-", "−")  # noqa: E731
    assert (f"NE − plain: {signed(acc_ne.mean() - acc_plain.mean())} pp (95% CI {signed(acc.low)} to "
            f"{signed(acc.high)}); the paper: +0.22." in line)
    eq1 = readme_block(Results(runs(plain, ne, acc_plain, acc_ne, variant="protocol=eq1")))
    assert "- NE/plain convergence steps, Eq. (1) reading: " in eq1  # the reading's name whole
    one = readme_block(Results(runs(plain, ne[:1], acc_plain, acc_ne[:1])))  # n = 1: no interval, no p, no Δacc
    assert "Welch" not in one and "Mann-Whitney" not in one and "NE − plain" not in one and "a hint only" in one
