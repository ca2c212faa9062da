"""Tables, claims and figures from hand-written records with known answers; bad results directories."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nerepro.claims import claims, welch_greater
from nerepro.cli import app
from nerepro.figures import figure_1, figure_2, figure_3, write_figures
from nerepro.report import load_results
from nerepro.tables import table_1, table_2, table_3, write_tables
from records import record, write

runner = CliRunner()


@pytest.fixture
def known(tmp_path):
    """F1 records whose Table 2 and 3 rows are known by hand."""
    recs = [record("F1", 1, 100, 0, 90.0, 1000), record("F1", 1, 100, 1, 91.0, 1200),  # mean 90.5, ties B=200
            record("F1", 1, 100, 2, 99.0, 5000, status="not_converged"),  # excluded from statistics, counted
            record("F1", 1, 100, 3, None, 40, status="diverged"),
            record("F1", 1, 200, 0, 90.5, 800), record("F1", 1, 200, 1, 90.5, 900),
            record("F1", 1, 300, 0, 89.0, 700), record("F1", 1, 300, 1, 89.0, 600),
            record("F1", 1, 5000, 0, 88.0, 300), record("F1", 1, 5000, 1, 88.2, 310),
            record("F1", 1.5, 100, 0, 90.0, 1500), record("F1", 1.5, 100, 1, 90.2, 1500),
            record("F1", 1.5, 300, 0, 91.0, 900), record("F1", 1.5, 300, 1, 91.4, 1100),
            record("F1", 1.5, 4000, 0, 95.0, 900), record("F1", 1.5, 4000, 1, 95.0, 900),  # off the B grid
            record("F1", 2, 5000, 0, 90.6, 400), record("F1", 2, 5000, 1, 90.8, 420),
            record("F1", 3, 5000, 0, 90.9, 500), record("F1", 3, 5000, 1, 91.1, 520),
            record("F1", 4, 5000, 0, 90.0, 600), record("F1", 4, 5000, 1, 90.2, 640)]
    return load_results(write(tmp_path / "r", recs))


def test_table_2_known_answers(known):
    t2 = table_2(known, "protocol=keras (default)").set_index("alpha")
    a1 = t2.loc[1.0]
    assert a1["b_opt"] == 100  # 90.5 at B=100 and B=200: ties go to the smaller B
    assert a1["test_acc_mean"] == pytest.approx(90.5) and a1["test_acc_std"] == pytest.approx(np.sqrt(0.5))  # ddof 1
    assert (a1["n"], a1["n_runs"], a1["n_not_converged"], a1["n_diverged"]) == (2, 4, 1, 1)
    assert a1["convergence_steps_mean"] == 1100 and a1["samples_processed_mean"] == 1100 * 100
    assert a1["paper_b_opt"] == 900 and a1["paper_test_acc_mean"] == 90.17
    assert a1["test_acc_diff_in_paper_std"] == pytest.approx((90.5 - 90.17) / 0.14)
    a15 = t2.loc[1.5]
    assert a15["b_opt"] == 300  # B=4000 is better but not on the paper's grid
    assert a15["samples_processed_mean"] == 1000 * 2 * 300  # NE reads 2B per step
    assert t2.loc[2.0]["b_opt"] == 5000


def test_table_3_known_answers(known):
    t3 = table_3(known, "protocol=keras (default)").set_index("setting")
    assert t3.loc["without NE", "batch_size"] == 100 and t3.loc["without NE", "alpha"] == 1
    assert t3.loc["with NE", "batch_size"] == 5000 and t3.loc["with NE", "alpha"] == 3  # best alpha > 1
    assert t3.loc["with NE", "test_acc_mean"] == pytest.approx(91.0)
    assert t3.loc["with NE", "paper_alpha"] == 3 and t3.loc["with NE", "paper_test_acc_mean"] == 90.35


def test_table_1_and_written_formats(known, tmp_path):
    t1 = table_1(known)
    assert list(t1["network"]) == ["F1"] and t1.iloc[0]["l_star"] == "0.01" and t1.iloc[0]["paper_l_star_star"] == 0.001
    text = write_tables(known, tmp_path / "out")
    for name in ("table1", "table2", "table3"):
        for ext in ("md", "csv", "tex"):
            assert (tmp_path / "out" / f"{name}.{ext}").stat().st_size > 0
    assert "90.50 ± 0.71" in text and "90.17 ± 0.14" in text
    assert r"\toprule" in (tmp_path / "out" / "table2.tex").read_text()
    import pandas as pd

    csv = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert {"network", "alpha", "b_opt", "test_acc_mean", "test_acc_std", "convergence_steps_mean",
            "convergence_steps_std", "n", "paper_test_acc_mean"} <= set(csv.columns)


def synthetic_grid(tmp_path, effect=1.0, seeds=10, b_opt=(100, 500, 1000), steps=(3000, 2000, 1000),
                   sizes=(100, 500, 1000, 5000), noise=0.1):
    """F1 runs where alpha = 1, 1.5, 2 peak at the given B_opt with accuracy 90 + effect x index."""
    rng = np.random.default_rng(0)
    recs = []
    for k, alpha in enumerate((1.0, 1.5, 2.0)):
        for b in sizes:
            peak = 90 + effect * k if b == b_opt[k] else 89 - 0.001 * b
            for s in range(seeds):
                recs.append(record("F1", alpha, b, s, peak + noise * rng.standard_normal(),
                                   int(steps[k] * (1 if b == b_opt[k] else 1.5) + rng.integers(0, 50))))
    return load_results(write(tmp_path / f"grid-{effect}-{seeds}-{len(sizes)}-{noise}", recs))


def verdicts(found, letter):
    return [c.verdict for c in found if c.claim == letter]


def test_claims_with_a_real_effect(tmp_path):
    found = claims(synthetic_grid(tmp_path, effect=1.0), "protocol=keras (default)")
    assert verdicts(found, "a") == ["supported", "supported"]
    assert verdicts(found, "b") == ["supported"]
    assert verdicts(found, "c") == ["supported", "not supported"]  # steps fall; samples do not (B grows)
    b = next(c for c in found if c.claim == "b")
    assert b.statistic == pytest.approx(1.0) and b.p_value < 0.05


def test_claims_without_an_effect(tmp_path):
    found = claims(synthetic_grid(tmp_path, effect=0.0, b_opt=(500, 500, 500), steps=(2000, 2000, 2000)),
                   "protocol=keras (default)")
    assert verdicts(found, "a") == ["not supported", "not supported"]
    assert verdicts(found, "b") == ["not supported"]


def test_b_opt_trend_needs_a_choice_of_b_for_every_alpha(tmp_path):
    """As in results/f1: each alpha run at one B only (the paper's B_opt), so B_opt there is no finding."""
    recs = [record("F1", 1, 900, s, 90.0 + 0.1 * s, 10000 + 100 * s) for s in range(4)]
    recs += [record("F1", 1.5, 2000, s, 90.1 + 0.1 * s, 9000 + 100 * s) for s in range(4)]
    found = claims(load_results(write(tmp_path / "one", recs)), "protocol=keras (default)")
    b = next(c for c in found if c.claim == "b")
    assert b.verdict == "not enough data" and b.p_value is None and "one B only at alpha=1, alpha=1.5" in b.compared
    assert verdicts(found, "c")[0] == "supported"  # steps at the B run still fall with alpha
    recs += [record("F1", 1, 2000, s, 89.0, 8000) for s in range(4)]  # alpha = 1 now has a choice; 1.5 not
    b = next(c for c in claims(load_results(write(tmp_path / "two", recs)), "protocol=keras (default)")
             if c.claim == "b")
    assert b.verdict == "not enough data" and "one B only at alpha=1.5: left out" in b.compared
    recs += [record("F1", 2, b, s, acc + 0.1 * s, 9000) for b, acc in ((900, 89.0), (5000, 90.0)) for s in range(4)]
    b = next(c for c in claims(load_results(write(tmp_path / "three", recs)), "protocol=keras (default)")
             if c.claim == "b")  # alpha = 1 (B_opt 900) and 2 (5000) have a choice: the trend over those two
    assert b.verdict == "supported" and b.statistic == pytest.approx(1.0) and "alpha=1.5: left out)" in b.compared
    assert b.n.startswith("2 of 3 alphas")


def test_claims_with_too_few_seeds(tmp_path):
    found = claims(synthetic_grid(tmp_path, seeds=1), "protocol=keras (default)")
    assert set(c.verdict for c in found) == {"not enough data"}


def test_claim_d(known, tmp_path):
    d = next(c for c in claims(known, "protocol=keras (default)") if c.claim == "d")
    assert "B=5000, alpha=3" in d.compared and "B=100, alpha=1" in d.compared
    assert d.statistic > 0 and d.verdict == "not supported"  # 91.0 ± 0.14 vs 90.5 ± 0.71, n = 2: not significant
    found = claims(synthetic_grid(tmp_path, b_opt=(100, 500, 5000)), "protocol=keras (default)")
    assert verdicts(found, "d") == ["supported"]  # alpha = 2 at B = 5000 beats alpha = 1 at B = 100 by 2 points


def test_welch_matches_the_formula():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.0, 1.5])
    t, p = welch_greater(x, y)
    se = np.sqrt(x.var(ddof=1) / 4 + y.var(ddof=1) / 3)
    assert t == pytest.approx((x.mean() - y.mean()) / se)
    assert 0 < p < 0.5 and welch_greater(x[:1], y) == (None, None)
    assert welch_greater(np.full(3, 90.0), np.full(3, 89.0)) == (None, None)  # no spread: no test, not p = 0


def test_claim_d_needs_ne_runs_above_the_small_batch_optimum(tmp_path):
    """As in the quick grid: the largest B with NE is B_opt without NE, so (d) would only repeat (a)."""
    found = claims(synthetic_grid(tmp_path, b_opt=(1000, 1000, 1000), sizes=(100, 500, 1000)), "protocol=keras (default)")
    d = next(c for c in found if c.claim == "d")
    assert d.verdict == "not enough data" and "above B=1000" in d.compared and d.p_value is None


def test_identical_runs_are_not_evidence(tmp_path):
    found = claims(synthetic_grid(tmp_path, noise=0.0), "protocol=keras (default)")
    assert all(c.p_value != 0 for c in found if c.claim in "ad")
    assert verdicts(found, "a") == ["not enough data", "not enough data"]


def test_figure_2_axes_series_and_labels(tmp_path):
    results = synthetic_grid(tmp_path)
    fig = figure_2(results, "protocol=keras (default)")
    acc_ax, steps_ax = fig.axes[:2]  # F1 only: one row
    assert len(fig.axes) == 2 and acc_ax.get_title() == "F1"
    for ax, ylabel in ((acc_ax, "test accuracy (%)"), (steps_ax, "convergence time (steps)")):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "minibatch size B" and ax.get_ylabel() == ylabel
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["α = 1", "α = 1.5", "α = 2"]
        assert len(ax.containers) == 3  # one errorbar series per alpha
    x, y = acc_ax.lines[0].get_data()
    assert list(x) == [100, 500, 1000, 5000]
    stats = results.runs[(results.runs["alpha"] == 1) & (results.runs["batch_size"] == 100)]["test_acc"]
    assert y[0] == pytest.approx(stats.mean())
    assert figure_1(results, "protocol=keras (default)") is None  # no C1 runs


def test_figure_3_circles_and_triangles(tmp_path):
    results = synthetic_grid(tmp_path)
    fig = figure_3(results, "protocol=keras (default)")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "convergence time (steps)" and ax.get_ylabel() == "test accuracy (%)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["α = 1, B varied", "B = 5000, α varied"]
    circles, triangles = ax.lines[0], ax.lines[1 + 4]  # each errorbar adds its data line first
    assert circles.get_marker() == "o" and triangles.get_marker() == "^"
    assert len(circles.get_xdata()) == 4 and len(triangles.get_xdata()) == 3
    samples = figure_3(results, "protocol=keras (default)", "samples_processed").axes[0]
    assert samples.get_xlabel() == "samples processed to L**"
    assert max(samples.lines[0].get_xdata()) > max(circles.get_xdata())  # x axis in samples, not steps


def test_write_figures_skips_missing_networks(tmp_path):
    lines = write_figures(synthetic_grid(tmp_path), tmp_path / "figs")
    assert any(line.startswith("skipped fig1") for line in lines)
    for name in ("fig2", "fig3", "fig3_samples"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 0 and (tmp_path / "figs" / f"{name}.pdf").exists()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["tables", "plots", "claims"])
def test_empty_results_directory_is_exit_2(tmp_path, command):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    result = invoke(command, "--results", tmp_path / "empty")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no records" in result.stderr


def test_only_corrupt_records_is_exit_2(tmp_path):
    runs = tmp_path / "bad" / "runs"
    runs.mkdir(parents=True)
    (runs / "x.json").write_text("{not json")
    result = invoke("tables", "--results", tmp_path / "bad")
    assert result.exit_code == 2 and "no records" in result.stderr


@pytest.mark.parametrize("command", ["tables", "plots", "claims"])
def test_partial_and_corrupt_results_are_noted_not_fatal(tmp_path, command):
    recs = [record("F1", a, b, s, 90 + s * 0.1, 1000) for a in (1.0, 1.5) for b in (100, 200) for s in range(3)
            if not (a == 1.5 and b == 200)]  # a hole
    root = write(tmp_path / "partial", recs)
    (root / "runs" / "broken.json").write_text('{"run_id": 1')
    result = invoke(command, "--results", root)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "broken.json" in result.stderr
    assert "no runs at alpha=1.5 B=200" in result.stderr and "fewer than 10 seeds" in result.stderr
    assert (root / "report").is_dir()


def test_tables_from_runs_csv(tmp_path, known):
    import shutil

    root = tmp_path / "r"
    assert invoke("collect", "--results", root).exit_code == 0
    shutil.rmtree(root / "runs")
    result = invoke("tables", "--results", root, "--out", tmp_path / "o")
    assert result.exit_code == 0 and "90.50 ± 0.71" in result.stdout


def test_baselines_table(tmp_path):
    from nerepro.tables import table_baselines

    recs = [record("F1", 1.5, 300, s, 91.0 + 0.1 * s, 900) for s in range(3)]
    recs += [record("F1", 1.0, 300, s, 90.0, 1000) for s in range(3)]
    recs += [record("F1", 1.0, 600, s, 89.0 + 0.1 * s, 500) for s in range(3)]  # 2B
    recs += [record("F1", 1.0, 120, s, 90.5, 2000) for s in range(2)]  # B_eff = 300 / 2.5
    results = load_results(write(tmp_path / "b", recs))
    tb = table_baselines(results, "protocol=keras (default)").set_index("source").loc["Table 2"]
    assert (tb["batch_size"], tb["plain_2b_batch_size"], tb["plain_beff_batch_size"]) == (300, 600, 120)
    assert tb["ne_test_acc_mean"] == pytest.approx(91.1) and tb["plain_2b_test_acc_mean"] == pytest.approx(89.1)
    assert tb["plain_beff_n"] == 2 and tb["ne_samples_processed_mean"] == 900 * 600
    assert "Compute-matched baselines" in write_tables(results, tmp_path / "out")


def test_runs_csv_has_every_record_field_and_the_committed_one_is_current(tmp_path):
    from conftest import REPO, synthetic_data
    from nerepro import RunConfig, train
    from nerepro.results import CONFIG_COLUMNS, PROVENANCE_COLUMNS, collect

    import pandas as pd

    records = [train(RunConfig("F1", alpha, 50, max_steps=20, check_every=10, device="cpu", stop_loss=stop),
                     data=synthetic_data()) for alpha, stop in ((1.0, "full"), (1.5, "ne_epoch_mean"))]
    path, rows, _ = collect(write(tmp_path / "r", records))
    columns = set(pd.read_csv(path).columns)
    scalars = {k for r in records for k, v in r.items() if not isinstance(v, (dict, list))}
    assert scalars | {"variant", *CONFIG_COLUMNS} | {f"provenance_{k}" for k in PROVENANCE_COLUMNS} == columns
    assert {"loop_s", "variant", "stop_loss", "sampling", "adam_update", "train_loss_full"} <= columns
    committed = REPO / "results" / "quick"  # `make report` rebuilds it: it must say what collect says now
    fresh, _, _ = collect(write(tmp_path / "quick", [json.loads(p.read_text())
                                                     for p in (committed / "runs").glob("*.json")]))
    assert list(pd.read_csv(committed / "runs.csv").columns) == list(pd.read_csv(fresh).columns)


def test_report_names_mixed_or_uncommitted_code_once_at_the_top(tmp_path):
    from nerepro.claims import write_claims
    from nerepro.tables import write_tables

    recs = [record("F1", 1.0, 100, s) for s in range(3)]
    for r, (commit, dirty) in zip(recs, (("a" * 40, False), ("a" * 40, True), ("b" * 40, False))):
        r["provenance"] = {"git_commit": commit, "git_dirty": dirty}
    results = load_results(write(tmp_path / "r", recs))
    note = "Provenance: the runs come from 2 commits: aaaaaaa (2 runs, 1 with uncommitted changes), bbbbbbb (1 run)."
    assert results.provenance() == note
    printed = write_tables(results, tmp_path / "out")
    assert printed.count(note) == 1 + 3 and printed.startswith(note)  # once on top, once atop each table file
    assert write_claims(results, tmp_path / "out").count(note) == 1
    for r in recs:
        r["provenance"] = {"git_commit": "a" * 40, "git_dirty": False}
    assert load_results(write(tmp_path / "clean", recs)).provenance() is None


def test_wall_time_is_averaged_on_one_device_only(tmp_path):
    recs = [record("F1", 1.5, 2000, s, wall_s=w) for s, w in enumerate((100.0, 300.0, 5000.0))]
    recs += [record("F1", 1.0, 900, s, wall_s=w) for s, w in enumerate((10.0, 30.0))]
    recs[2]["provenance"] = {"device": "NVIDIA H100"}  # alpha = 1.5 seed 2: another device
    results = load_results(write(tmp_path / "r", recs))
    t2 = table_2(results, "protocol=keras (default)").set_index("alpha")
    assert np.isnan(t2.loc[1.5, "wall_s_mean"]) and t2.loc[1.5, "n"] == 3  # the other columns keep all three
    assert t2.loc[1.0, "wall_s_mean"] == pytest.approx(20.0)
    assert "F1 (protocol=keras (default)): no mean wall time at alpha=1.5 B=2000 (runs on NVIDIA H100 and test)" \
        in results.notes[-1]
    recs[2]["wall_s"] = None  # the other device's run gives no time: the cell's timed runs share one device
    t2 = table_2(load_results(write(tmp_path / "untimed", recs)), "protocol=keras (default)").set_index("alpha")
    assert t2.loc[1.5, "wall_s_mean"] == pytest.approx(200.0)


def test_tables_give_l_w_at_the_stop_in_units_of_l_star_star(tmp_path):
    """A reading other than L(w) can meet L** far above it: Tables 2 and 3 give L(w)/L** at the stop (median,
    max, runs at or above L**) over converged runs, from `train_loss_full`, or from the reading where it is L(w)."""
    def stopped(rec, **losses):
        return {**rec, **losses}

    ne = [stopped(record("F1", 3, 5000, s), train_loss=-0.01, train_loss_full=full, stop_loss="ne_epoch_mean")
          for s, full in enumerate((0.002, 0.05, 0.02, 0.001))]  # the last exactly at L**: counted as at or above
    ne.append(stopped(record("F1", 3, 5000, 4, status="not_converged"), train_loss=0.5, train_loss_full=0.9))
    ne.append(stopped(record("F1", 3, 5000, 5), train_loss=0.0005, stop_loss="ne_epoch_mean"))  # no L(w): left out
    plain = [stopped(record("F1", 1, 900, s, stop_loss="full"), train_loss=loss, stop_loss="full")
             for s, loss in enumerate((0.0009, 0.0008))]
    plain.append(stopped(record("F1", 1, 900, 2, stop_loss="full"), train_loss=0.0005))  # no stop_loss: read as full
    results = load_results(write(tmp_path / "r", ne + plain))
    default = "protocol=keras (default)"
    t2 = table_2(results, default).set_index("alpha").loc[3.0]  # L** of F1 is 0.001 (Table 1)
    assert t2["stop_ratio_median"] == pytest.approx(11) and t2["stop_ratio_max"] == pytest.approx(50)
    assert (t2["n_stop_above"], t2["n_stop_ratio"]) == (4, 4)
    full_variant = [v for v in results.variants() if v != default][0]
    t3 = table_3(results, full_variant).set_index("setting").loc["without NE"]
    assert t3["stop_ratio_median"] == pytest.approx(0.8) and t3["stop_ratio_max"] == pytest.approx(0.9)
    assert (t3["n_stop_above"], t3["n_stop_ratio"]) == (0, 3)
    text = write_tables(results, tmp_path / "out")
    assert "| 11, 50 (4/4) |" in text and "| 0.8, 0.9 (0/3) |" in text
