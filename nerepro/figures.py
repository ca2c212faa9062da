"""Figures 1-3 of the paper rebuilt from result files (and Fig. 3 against samples processed), and each
reading's runs at the rows of Tables 2-3 against the paper's spread (the protocol study)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .protocol import WITHIN, protocol_runs
from .report import Results, large_batch_size, summarize

TIME_AXES = {"convergence_steps": "convergence time (steps)", "samples_processed": "samples processed to L**"}


def _batch_size_figure(stats: pd.DataFrame, networks: list[str], figure: str) -> Figure | None:
    """Test accuracy vs B (left) and convergence steps vs B (right), one line per alpha, error bars = std."""
    networks = [n for n in networks if (stats["network"] == n).any() and (stats[stats["network"] == n]["n"] > 0).any()]
    if not networks:
        return None
    fig = Figure(figsize=(10, 3.6 * len(networks)), layout="constrained")
    axes = fig.subplots(len(networks), 2, squeeze=False)
    for row, network in zip(axes, networks):
        data = stats[(stats["network"] == network) & (stats["n"] > 0)]
        for alpha, line in data.groupby("alpha"):
            line = line.sort_values("batch_size")
            label = f"α = {alpha:g}"
            row[0].errorbar(line["batch_size"], line["test_acc_mean"], yerr=line["test_acc_std"].fillna(0),
                            marker="o", ms=4, capsize=3, label=label)
            row[1].errorbar(line["batch_size"], line["convergence_steps_mean"],
                            yerr=line["convergence_steps_std"].fillna(0), marker="o", ms=4, capsize=3, label=label)
        for ax, ylabel in zip(row, ("test accuracy (%)", TIME_AXES["convergence_steps"])):
            ax.set_xscale("log")
            ax.set_xlabel("minibatch size B")
            ax.set_ylabel(ylabel)
            ax.set_title(network)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{figure}: {' and '.join(networks)}, B dependence for each α")
    return fig


def figure_1(results: Results, variant: str) -> Figure | None:
    """Fig. 1: C1, minibatch-size dependence of test accuracy and convergence time for each alpha."""
    stats = summarize(results.runs[results.runs["variant"] == variant])
    return _batch_size_figure(stats, ["C1"], "Fig. 1")


def figure_2(results: Results, variant: str) -> Figure | None:
    """Fig. 2: the same for F1 and C2."""
    stats = summarize(results.runs[results.runs["variant"] == variant])
    return _batch_size_figure(stats, ["F1", "C2"], "Fig. 2")


def figure_3(results: Results, variant: str, time_axis: str = "convergence_steps") -> Figure | None:
    """Fig. 3: test accuracy vs convergence time; circles: alpha = 1 over B; triangles: B = 5000 over alpha.

    With time_axis="samples_processed" the x axis counts samples read (each NE step reads 2B): the
    compute-fair view.
    """
    stats = summarize(results.runs[results.runs["variant"] == variant])
    stats = stats[stats["n"] > 0]
    networks = [n for n in ("F1", "C1", "C2") if (stats["network"] == n).any()]
    if not networks:
        return None
    fig = Figure(figsize=(max(6.5, 4.5 * len(networks)), 4.2), layout="constrained")
    axes = fig.subplots(1, len(networks), squeeze=False)[0]
    mean, std = f"{time_axis}_mean", f"{time_axis}_std"
    for ax, network in zip(axes, networks):
        data = stats[stats["network"] == network]
        circles = data[data["alpha"] == 1].sort_values("batch_size", ascending=False)
        large = large_batch_size(data)
        triangles = data[data["batch_size"] == large].sort_values("alpha") if large else data.iloc[:0]
        for points, marker, label, tag, offset in ((circles, "o", "α = 1, B varied", "B={:g}", (4, 4)),
                                                   (triangles, "^", f"B = {large}, α varied", "α={:g}", (4, -10))):
            if points.empty:
                continue
            ax.errorbar(points[mean], points["test_acc_mean"], xerr=points[std].fillna(0),
                        yerr=points["test_acc_std"].fillna(0), marker=marker, ms=6, capsize=2, label=label)
            for _, p in points.iterrows():
                ax.annotate(tag.format(p["batch_size" if tag[0] == "B" else "alpha"]), (p[mean], p["test_acc_mean"]), textcoords="offset points",
                            xytext=offset, fontsize=7)
        ax.set_xlabel(TIME_AXES[time_axis])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(network)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 3: reducing B at α = 1 vs raising α at large B"
                 + ("\n(x: samples processed, the compute-fair view)" if time_axis == "samples_processed" else ""))
    return fig


def figure_protocol(results: Results) -> Figure | None:
    """Each reading's convergence steps (left) and test accuracy (right) at each row of Tables 2-3 that has
    runs, against the paper's mean ± 2σ band (grey; WITHIN paper stds, protocol.py's criterion): every
    converged run a dot, the reading's mean ± std a diamond. Table 3 gives no steps: no band there. None
    when no run sits at a row of Tables 2-3."""
    runs = protocol_runs(results)
    if runs.empty:
        return None
    points = list(dict.fromkeys(zip(runs["network"], runs["alpha"], runs["batch_size"], runs["table"])))
    readings = [list(dict.fromkeys(runs.loc[(runs["network"] == n) & (runs["alpha"] == a) & (runs["batch_size"] == b),
                                            "reading"])) for n, a, b, _ in points]
    fig = Figure(figsize=(12, sum(0.45 * len(r) + 1.2 for r in readings) + 0.6), layout="constrained")
    axes = fig.subplots(len(points), 2, squeeze=False,
                        gridspec_kw={"height_ratios": [0.45 * len(r) + 1.2 for r in readings]})
    colors = {name: f"C{i % 10}" for i, name in enumerate(results.variants())}  # a reading keeps its colour
    jitter = np.random.default_rng(0)  # spreads a reading's dots vertically; fixed so that figures are stable
    for row, (network, alpha, b, table), names in zip(axes, points, readings):
        here = runs[(runs["network"] == network) & (runs["alpha"] == alpha) & (runs["batch_size"] == b)]
        for ax, metric, label in ((row[0], "convergence_steps", "convergence steps"),
                                  (row[1], "test_acc", "test accuracy (%)")):
            mean, std = here[f"paper_{metric}_mean"].iloc[0], here[f"paper_{metric}_std"].iloc[0]
            if pd.notna(mean):
                ax.axvspan(mean - WITHIN * std, mean + WITHIN * std, facecolor="0.88", edgecolor="0.6",
                           label=f"paper mean ± {WITHIN:g}σ")
                ax.axvline(mean, color="0.45", lw=1)
            else:
                ax.text(0.5, 0.98, f"{table} gives no {label}", transform=ax.transAxes, ha="center", va="top",
                        fontsize=8, color="0.4")
            for y, name in enumerate(names):
                values = here.loc[here["reading"] == name, metric].dropna()
                color = colors[name]
                ax.scatter(values, y + jitter.uniform(-0.15, 0.15, len(values)), s=14, alpha=0.6, color=color)
                if len(values):
                    ax.errorbar(values.mean(), y, xerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="D", ms=6,
                                capsize=3, color=color, markeredgecolor="black")
            ax.margins(x=0.08)  # the band's edges stay in view
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.set_yticks(range(len(names)))
            ax.set_xlabel(label)
            ax.grid(True, axis="x", alpha=0.3)
        counts = [f"{name} (n = {here.loc[here['reading'] == name, 'convergence_steps'].notna().sum()}/"
                  f"{(here['reading'] == name).sum()})" for name in names]
        row[0].set_yticklabels(counts, fontsize=8)
        row[1].set_yticklabels([])
        row[0].set_title(f"{network}, α = {alpha:g}, B = {b} ({table})", loc="left", fontsize=10)
    fig.suptitle("Each reading at the rows of Tables 2-3: every converged run (dots), mean ± std (diamonds)\n"
                 f"against the paper's mean ± {WITHIN:g}σ (grey band, line: its mean); n = converged/runs")
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]


FIGURES = {"fig1": (figure_1, "Fig. 1: C1, test accuracy and convergence steps against B for each α"),
           "fig2": (figure_2, "Fig. 2: F1 and C2, test accuracy and convergence steps against B for each α"),
           "fig3": (figure_3, "Fig. 3: test accuracy against convergence steps, smaller B at α = 1 (circles) vs "
                              "larger α at B = 5000 (triangles)"),
           "fig3_samples": (lambda r, v: figure_3(r, v, "samples_processed"),
                            "Fig. 3 against samples processed (each NE step reads 2B): the compute-fair view")}
PROTOCOL_FIGURE = "protocol"


def figure_stems(results: Results) -> list[tuple[str, str, str]]:
    """(file stem, FIGURES key, variant) of every figure write_figures makes, without the extension: the
    first variant's figures are fig1..., the others' carry the variant as a suffix (fig1-stop-loss-...). Only
    variants with runs at two batch sizes or more get figures: Figs. 1-3 are curves over B (a variant run at
    one point, as the readings study's, is in Tables 2-3 and the protocol figure)."""
    runs = results.runs
    curves = [v for v in results.variants() if runs.loc[runs["variant"] == v, "batch_size"].nunique() >= 2]
    return [(f"{name}{'' if i == 0 else '-' + _slug(variant)}", name, variant)
            for i, variant in enumerate(curves) for name in FIGURES]


def write_figures(results: Results, out: Path) -> list[str]:
    """Write fig1, fig2, fig3, fig3_samples (per variant) and protocol as PNG and PDF; returns one line per
    figure written or skipped."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    makers = [(stem, lambda n=name, v=variant: FIGURES[n][0](results, v), variant)
              for stem, name, variant in figure_stems(results)]
    makers.append((PROTOCOL_FIGURE, lambda: figure_protocol(results), "each reading at the rows of Tables 2-3"))
    for stem, make, variant in makers:
        fig = make()
        if fig is None:
            lines.append(f"skipped {stem}: " + ("no runs at a row of Tables 2-3" if stem == PROTOCOL_FIGURE else
                                                f"no converged runs of its networks ({variant})"))
            continue
        for ext, metadata in (("png", None), ("pdf", {"CreationDate": None})):  # no date: a rebuild is byte-equal
            fig.savefig(out / f"{stem}.{ext}", dpi=150, metadata=metadata)
        lines.append(f"wrote {out / stem}.png and .pdf ({variant})")
    return lines
