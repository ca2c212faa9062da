"""Figures 1-3 of the paper rebuilt from result files (and Fig. 3 against samples processed)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]


def write_figures(results: Results, out: Path) -> list[str]:
    """Write fig1, fig2, fig3 and fig3_samples as PNG and PDF; returns one line per figure written or skipped."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    variants = results.variants()
    makers = {"fig1": figure_1, "fig2": figure_2, "fig3": figure_3,
              "fig3_samples": lambda r, v: figure_3(r, v, "samples_processed")}
    for i, variant in enumerate(variants):
        suffix = "" if i == 0 else f"-{_slug(variant)}"
        for name, make in makers.items():
            fig = make(results, variant)
            if fig is None:
                lines.append(f"skipped {name}{suffix}: no converged runs of its networks ({variant})")
                continue
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{name}{suffix}.{ext}", dpi=150)
            lines.append(f"wrote {out / name}{suffix}.png and .pdf ({variant})")
    return lines
