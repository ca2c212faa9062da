"""The report page (README.md of the report directory) and the protocol figure, on hand-written records."""

import re
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection
from typer.testing import CliRunner

from nerepro.cli import app
from nerepro.figures import figure_protocol, write_figures
from nerepro.page import MARKER
from nerepro.protocol import protocol_runs
from nerepro.report import load_results
from records import record, write

runner = CliRunner()
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def protocol_records():
    """Two readings at F1's Table 2 rows, one of them at Table 3's too, C1's alpha = 1 row, a non-converged run,
    an F1 grid off the paper's rows and a plain run at 2B (a baseline)."""
    recs = []
    for s in range(3):
        recs += [record("F1", 1.0, 900, s, 90.1 + 0.05 * s, 10500 + 300 * s),
                 record("F1", 1.5, 2000, s, 90.3, 9000 + 500 * s),
                 record("F1", 3.0, 5000, s, 90.3, 9000 + 100 * s),
                 record("F1", 1.0, 900, s, 90.2, 10900 + 10 * s, stop_loss="full"),
                 record("F1", 1.5, 2000, s, 90.35, 7900 + 10 * s, stop_loss="full"),
                 record("C1", 1.0, 100, s, 88.0, 24000 + 100 * s),
                 record("F1", 1.0, 4000, s, 89.5, 5000),  # plain SGD at 2B of alpha = 1.5, B = 2000
                 record("F1", 1.0, 100, s, 89.0, 30000)]
    recs.append(record("F1", 1.5, 2000, 3, 90.0, 100000, status="not_converged"))
    return recs


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def links(page: Path) -> list[tuple[bool, str]]:
    """(is an image, target) of every Markdown link and image on the page."""
    return [(bang == "!", target) for bang, _, target in LINK.findall(page.read_text())]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = write(tmp_path_factory.mktemp("page") / "r", protocol_records())
    result = invoke("report", "--results", root)
    assert result.exit_code == 0, result.output
    return root, root / "report"


def test_every_image_and_file_link_on_the_page_exists(reported):
    root, out = reported
    page = out / "README.md"
    assert page.read_text().startswith(MARKER)
    found = links(page)
    images = [target for image, target in found if image]
    assert {"fig2.png", "fig3.png", "fig3_samples.png", "fig2-stop-loss-full.png", "protocol.png"} <= set(images)
    assert "fig1.png" in images  # C1's alpha = 1 row gives Fig. 1
    for image, target in found:
        assert not re.match(r"[a-z]+:", target) and not target.startswith("/"), target  # relative links only
        assert (out / target).exists(), target
        if image:
            assert target.endswith(".png")
    targets = {t for _, t in found}
    assert {"table1.csv", "table2.tex", "table3.csv", "baselines.csv", "claims.csv", "protocol.csv", "protocol.pdf",
            "../runs.csv", "../runs"} <= targets


def test_page_holds_each_table_the_claims_and_the_protocol_comparison(reported):
    root, out = reported
    text = (out / "README.md").read_text()
    for name in ("table1", "table2", "table3", "baselines", "protocol"):
        rows = [line for line in (out / f"{name}.md").read_text().splitlines() if line.startswith("|")]
        assert rows and all(row in text for row in rows), name  # each beside the paper's numbers, as in its file
    claims = (out / "claims.md").read_text().splitlines()
    verdicts = [line for line in claims if line.endswith("** |")]
    assert verdicts and all(line in text for line in verdicts)
    assert "## The paper's claims, tested on these results" in text and "### Runs: stop_loss=full" in text
    assert "## Which reading reproduces the paper's F1 numbers" in text and "stop_loss=full: within 2σ" in text
    assert "90.17 ± 0.14" in text and "10934 ± 816" in text  # the paper's numbers
    notes = load_results(root).notes
    assert notes and text.count("## Notes on the data") == 1 and all(text.count(f"- {n}\n") == 1 for n in notes)
    assert "1 not converged" in text.split("\n## ")[0]  # the summary at the top counts the runs by status


def test_page_names_the_code_once(tmp_path):
    recs = [record("F1", 1.0, 900, s) for s in range(2)]
    for r, dirty in zip(recs, (False, True)):
        r["provenance"] = {"git_commit": "a" * 40, "git_dirty": dirty}
    root = write(tmp_path / "r", recs)
    assert invoke("report", "--results", root).exit_code == 0
    note = "Provenance: all 2 runs come from commit aaaaaaa, 1 of them with uncommitted changes."
    assert (root / "report" / "README.md").read_text().count(note) == 1  # not repeated by each table and claims


def test_make_report_writes_the_page_into_the_results_directory_beside_a_hand_written_readme(tmp_path):
    root = write(tmp_path / "r", [record("F1", a, b, s, 80 + s, 300) for a in (1.0, 1.5) for b in (100, 300)
                                  for s in range(2)])
    assert invoke("report", "--results", root, "--out", root).exit_code == 0  # what `make report` runs
    page = root / "README.md"
    found = links(page)
    assert all((root / t).exists() for _, t in found) and ("runs.csv" in {t for _, t in found})
    text = page.read_text()
    assert "protocol.png" not in text and "Which reading" not in text  # no run at a row of Tables 2-3
    assert not (root / "protocol.png").exists() and "fig1.png" not in text  # no C1 runs: no Fig. 1
    assert "Compute-matched baselines" not in text
    page.write_text("# Notes written by hand\n")
    result = invoke("report", "--results", root, "--out", root)
    assert result.exit_code == 0 and page.read_text() == "# Notes written by hand\n"  # kept
    assert (root / "report.md").read_text().startswith(MARKER) and "report.md" in result.stdout


def test_protocol_figure_has_one_entry_per_reading_present(tmp_path):
    results = load_results(write(tmp_path / "r", protocol_records()))
    runs = protocol_runs(results)
    points = list(dict.fromkeys(zip(runs["network"], runs["alpha"], runs["batch_size"])))
    assert points == [("F1", 1.0, 900), ("F1", 1.5, 2000), ("F1", 3.0, 5000), ("C1", 1.0, 100)]  # F1 first
    readings = {p: list(dict.fromkeys(runs[(runs["network"] == p[0]) & (runs["alpha"] == p[1])
                                           & (runs["batch_size"] == p[2])]["reading"])) for p in points}
    assert readings[("F1", 1.0, 900)] == readings[("F1", 1.5, 2000)] == ["protocol=keras (default)", "stop_loss=full"]
    assert readings[("F1", 3.0, 5000)] == readings[("C1", 1.0, 100)] == ["protocol=keras (default)"]
    ne = runs[(runs["alpha"] == 1.5) & (runs["reading"] == "protocol=keras (default)")]
    assert len(ne) == 4 and ne["convergence_steps"].count() == 3  # the run that did not converge has no steps
    assert ne["paper_convergence_steps_mean"].iloc[0] == 7914 and ne["paper_convergence_steps_std"].iloc[0] == 528

    fig = figure_protocol(results)
    axes = fig.axes
    assert len(axes) == 2 * len(points)  # steps and test accuracy for each row of the tables
    for (steps, acc), point in zip(zip(axes[::2], axes[1::2]), points):
        names = readings[point]
        labels = [t.get_text() for t in steps.get_yticklabels()]
        assert [label.split(" (n = ")[0] for label in labels] == names  # one entry per reading present
        here = runs[(runs["network"] == point[0]) & (runs["alpha"] == point[1]) & (runs["batch_size"] == point[2])]
        for ax, metric in ((steps, "convergence_steps"), (acc, "test_acc")):
            dots = [c for c in ax.collections if isinstance(c, PathCollection)]  # one scatter per reading
            assert [len(c.get_offsets()) for c in dots] == [here[here["reading"] == n][metric].count() for n in names]
            for c, n in zip(dots, names):
                assert sorted(c.get_offsets()[:, 0]) == sorted(here[here["reading"] == n][metric].dropna())
        band = [p for p in steps.patches if p.get_label() == "paper mean ± 2σ"]
        if point == ("F1", 3.0, 5000):
            assert not band  # Table 3 gives no convergence steps
        else:
            paper = here["paper_convergence_steps_mean"].iloc[0], here["paper_convergence_steps_std"].iloc[0]
            span = band[0]  # a Rectangle (matplotlib >= 3.9) or a Polygon
            xs = [span.get_x(), span.get_x() + span.get_width()] if hasattr(span, "get_width") else span.get_xy()[:, 0]
            assert (min(xs), max(xs)) == pytest.approx((paper[0] - 2 * paper[1], paper[0] + 2 * paper[1]))
    ne_label = [t.get_text() for t in axes[2].get_yticklabels()][0]
    assert ne_label == "protocol=keras (default) (n = 3/4)"


def test_protocol_figure_only_where_runs_sit_at_a_row_of_the_tables(tmp_path):
    results = load_results(write(tmp_path / "r", [record("F1", 1.0, 100, s) for s in range(2)]))
    assert protocol_runs(results).empty and figure_protocol(results) is None
    lines = write_figures(results, tmp_path / "out")
    assert "skipped protocol: no runs at a row of Tables 2-3" in lines
    assert not (tmp_path / "out" / "protocol.png").exists()
