"""`nerepro passage`: when each reading of "the training loss" first falls below L*, on one traced trajectory.

A convergence time is close to the first passage of a noisy reading through L* (the halving; the run then
reaches L** soon after), so it depends on how much the reading fluctuates on its approach to L*. From a run
kept with --trace (every step's L_B and NE loss), this computes for every reading the step at which it would
first cross L* on that trajectory, and its spread on the plateau:

  step NE loss      the step's own alpha L_B + (1 - alpha) L_B' (--protocol step), read every step
  step L_B          the step's L_B alone, every step
  running NE mean   the mean of the epoch's NE losses so far (--protocol keras-running), every step
  epoch NE mean     the epoch's mean NE loss at its end (the default, Keras' reading)
  epoch L_B mean    the epoch's mean L_B at its end
  NE mean, w steps  the mean NE loss of the last w steps (w = 2..30), every step

Every reading shares the traced run's trajectory (same minibatches, same Adam) until a run that reads it
halves its rate. The traced run halved at step h (its rate halves from step h + 1 on), so its losses up to
step h + 1 (computed with the weights of step h) are every such run's: a first passage is exact while it
comes no later than h + 1; later ones are marked inexact. Exact means on this trajectory: a run of another
reading trained elsewhere (alone, in another pack, on another device) follows it only to fp32 rounding.
Readings with other draws or another Adam (e.g. --protocol eq1) need a traced run of their own. At alpha = 1
the NE loss is L_B, so the L_B readings are not repeated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .errors import ConfigError, ResultsError
from .headline import paper_row
from .results import load_records, variant_of
from .tables import markdown
from .trace import read_trace, trace_path

WINDOWS = tuple(range(2, 31))
SHOWN_WINDOWS = (2, 5, 10, 20, 30)  # in the page's table; passage.csv has every w
PASSAGE_FIGURE = "passage"
PLATEAU_STEPS = 1000  # the plateau: the last steps of the exact range, where every reading approaches L*


def readings(loss_b: np.ndarray, objective: np.ndarray, epoch: int, alpha: float) -> dict[str, tuple]:
    """Each reading as (steps it is read at, its values there, read every k steps); steps count from 1."""
    n = len(objective)
    steps = np.arange(1, n + 1)
    ends = steps[epoch - 1::epoch]
    block = (steps - 1) // epoch
    out = {"step NE loss": (steps, objective, 1)}
    if alpha != 1:
        out["step L_B"] = (steps, loss_b, 1)
    out["running NE mean"] = (steps, _running(objective, block), 1)
    out["epoch NE mean"] = (ends, objective[:len(ends) * epoch].reshape(-1, epoch).mean(1), epoch)
    if alpha != 1:
        out["epoch L_B mean"] = (ends, loss_b[:len(ends) * epoch].reshape(-1, epoch).mean(1), epoch)
    cumulative = np.concatenate([[0.0], np.cumsum(objective)])
    for w in WINDOWS:
        if n >= w:
            out[f"NE mean, {w} steps"] = (steps[w - 1:], (cumulative[w:] - cumulative[:-w]) / w, 1)
    return out


def _running(values: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The mean of each block's values up to each position (blocks: consecutive equal labels)."""
    cumulative = np.cumsum(values)
    starts = np.r_[0, np.flatnonzero(np.diff(block)) + 1]
    before = np.repeat(np.r_[0.0, cumulative[starts[1:] - 1]], np.diff(np.r_[starts, len(values)]))
    count = np.arange(len(values)) - np.repeat(starts, np.diff(np.r_[starts, len(values)])) + 1
    return (cumulative - before) / count


def first_below(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    below = np.flatnonzero(values < threshold)
    return int(steps[below[0]]) if len(below) else None


def passages(record: dict, trace: dict) -> pd.DataFrame:
    """One row per reading: its first passage below L* on the traced trajectory, whether that is exact, and its
    mean and std on the plateau (the last PLATEAU_STEPS steps of the exact range: up to the traced run's
    halving step + 1, or to its end)."""
    config = record["config"]
    cfg = RunConfig(record["network"], float(record["alpha"]), int(record["batch_size"]),
                    **{k: config[k] for k in ("sampling", "check_every", "stop_loss", "adam_update") if k in config})
    l_star = float(config["l_star"])
    if int(trace["step"][0]) != 1:
        raise ResultsError(f"the trace of {record['run_id']} starts at step {int(trace['step'][0])}, not 1: "
                           "rerun it with --trace from the start")
    epoch = cfg.steps_per_epoch(int(record["n_train"]))
    series = readings(trace["loss_b"], trace["objective"], epoch, cfg.alpha)
    halved, end = record.get("lr_halved_step"), len(trace["objective"])
    exact_until = min(halved + 1, end) if halved is not None else end
    start = max(1, exact_until - PLATEAU_STEPS + 1)
    rows = []
    for name, (steps, values, every) in series.items():
        passage = first_below(steps, values, l_star)
        on = (steps >= start) & (steps <= exact_until)
        rows.append({
            "run_id": record["run_id"], "traced_reading": variant_of(record), "alpha": cfg.alpha,
            "batch_size": cfg.batch_size, "seed": record["seed"], "reading": name, "read_every": every,
            "window": int(name.split(", ")[1].split()[0]) if name.startswith("NE mean, ") else None,
            "first_below_l_star": passage, "exact": passage is not None and passage <= exact_until,
            "plateau_start": start, "plateau_end": exact_until,
            "plateau_mean": float(values[on].mean()) if on.any() else math.nan,
            "plateau_std": float(values[on].std(ddof=1)) if on.sum() > 1 else math.nan,
            "traced_halved": halved, "traced_converged": record.get("convergence_steps"), "l_star": l_star,
            "stop_loss": cfg.stop_loss, "trace_steps": end})
    return pd.DataFrame(rows)


def traced_runs(results: Path | str) -> list[tuple[dict, dict]]:
    """(record, trace) of every finished F1 run under DIR/runs with a readable trace of at least a step beside
    its record; unreadable traces are left out."""
    folder = Path(results) / "runs" if (Path(results) / "runs").is_dir() else Path(results)
    records, _ = load_records(results)
    found = []
    for record in records:
        path = trace_path(folder / f"{record['run_id']}.json")
        if record.get("status") in ("converged", "not_converged") and path.is_file():
            try:
                trace = read_trace(path)
            except ResultsError:
                continue
            if len(trace["objective"]):
                found.append((record, trace))
    return found


def passage_table(results: Path | str) -> pd.DataFrame:
    frames = []
    for record, trace in traced_runs(results):
        try:
            frames.append(passages(record, trace))
        except (ResultsError, ConfigError, KeyError, ValueError):  # a record this analysis cannot read
            continue
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paper_steps(alpha: float, batch_size: int) -> tuple[float, float] | None:
    """Table 2's convergence steps (mean, std) at an F1 row, or None where Table 2 has no such row."""
    try:
        return paper_row(alpha, batch_size)["steps"]
    except KeyError:
        return None


def write_passage(results: Path | str, out: Path) -> str | None:
    """passage.csv, passage.md and the readings figure (passage.png/pdf) into `out`; None without traced runs."""
    table = passage_table(results)
    if table.empty:
        for name in ("passage.md", "passage.csv", f"{PASSAGE_FIGURE}.png", f"{PASSAGE_FIGURE}.pdf"):
            (out / name).unlink(missing_ok=True)  # none stale beside the new report
        return None
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "passage.csv", index=False)
    lines = ["# When each reading first falls below L*, on traced trajectories", "",
             "Every reading of a traced run's trajectory (its per-step L_B and NE losses): the step at which it "
             "first falls below L* (where a run reading it halves its rate; it then reaches L** soon after), and its "
             f"mean ± std on the plateau (the {PLATEAU_STEPS:,} steps up to the traced run's halving step + 1, at its "
             "values there). A passage is exact up to the traced run's halving step + 1, the last step whose loss "
             "the halved rate has not touched (`*`: later, so only indicative). "
             "`nerepro passage` computes it; every window w = 2..30 is in passage.csv.", ""]
    head = ["reading", "read every", "first < L*", "plateau mean ± std"]
    for run_id, group in table.groupby("run_id", sort=False):
        first = group.iloc[0]
        paper = paper_steps(first["alpha"], int(first["batch_size"]))
        gap = (first["traced_converged"] - first["traced_halved"]) if pd.notna(first["traced_halved"]) and \
            pd.notna(first["traced_converged"]) else None
        lines += [f"## {run_id}: alpha = {first['alpha']:g}, B = {int(first['batch_size'])}, seed {first['seed']}, "
                  f"traced under {first['traced_reading']}", "",
                  _traced_line(first["traced_halved"], first["traced_converged"], gap)
                  + (f"; the paper's Table 2: {paper[0]:,.0f} ± {paper[1]:,.0f} steps." if paper else "."), ""]
        shown = group[group["window"].isna() | group["window"].isin(SHOWN_WINDOWS)]
        own = own_reading(first["stop_loss"], first["alpha"])
        rows = [[r["reading"] + (" (this run's reading)" if r["reading"] == own else ""),
                 f"{int(r['read_every'])} step" + ("s" if r["read_every"] > 1 else ""),
                 _passage(r, len_trace=int(r["trace_steps"])),
                 f"{r['plateau_mean']:.4f} ± {r['plateau_std']:.4f}" if pd.notna(r["plateau_std"]) else "n/a"]
                for _, r in shown.iterrows()]
        lines += [markdown(head, rows), ""]
        if paper and gap is not None:
            need = group[(group["window"].notna()) & group["exact"]].copy()
            need["implied"] = need["first_below_l_star"] + gap
            inside = need[(need["implied"] - paper[0]).abs() <= 2 * paper[1]]
            lines += ["Windows whose first passage plus this run's halving-to-L** gap lies within the paper's mean ± "
                      "2σ: " + (", ".join(f"w = {int(w)}" for w in inside["window"]) if len(inside) else "none")
                      + " (one trajectory: a hint, not a finding).", ""]
    text = "\n".join(lines)
    (out / "passage.md").write_text(text)
    figure = figure_passage(table, results)
    if figure is not None:
        for ext, metadata in (("png", None), ("pdf", {"CreationDate": None})):  # no date: a rebuild is byte-equal
            figure.savefig(out / f"{PASSAGE_FIGURE}.{ext}", dpi=150, metadata=metadata)
        import matplotlib.pyplot as plt

        plt.close(figure)
    return text


def _passage(row, len_trace: int) -> str:
    """A first passage as shown: the step, * where inexact, '> N' where the trace of N steps never crossed."""
    value = row["first_below_l_star"]
    if value is None or pd.isna(value):
        return f"> {len_trace:,}" + ("*" if pd.notna(row["traced_halved"]) else "")
    return f"{int(value):,}" + ("" if row["exact"] else "*")


def _traced_line(halved, converged, gap) -> str:
    """What the traced run did: where it halved and converged (`gap` steps apart), or that it stopped without
    halving (its first check below L* was below L** too, the schedule's rule), or that it did not converge."""
    if pd.isna(converged):
        return "The traced run did not converge" + ("" if pd.isna(halved) else f" (it halved at step {int(halved):,})")
    if pd.isna(halved):
        return (f"The traced run converged at {int(converged):,} without halving (its first check below L* was "
                "below L** too)")
    return (f"The traced run halved at step {int(halved):,} and converged at {int(converged):,} "
            f"({int(gap)} steps after halving)")


styles_order = ("step NE loss", "running NE mean", "NE mean, 10 steps", "epoch NE mean")  # drawn, in this order


def figure_passage(table: pd.DataFrame, results: Path | str):
    """Per traced trajectory (one panel each, the longest-exact run of each alpha, B): the step NE loss, its
    running epoch mean, the mean over 10 steps and the epoch NE mean over the steps around L*, with L* and L**
    drawn and each reading's first passage marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.empty:
        return None
    by_run = {r["run_id"]: (r, t) for r, t in traced_runs(results)}
    chosen = []
    for _, group in table.groupby(["alpha", "batch_size"], sort=True):
        ranked = group.drop_duplicates("run_id").assign(
            reach=lambda g: g["plateau_end"].fillna(0)).sort_values("reach", ascending=False)
        chosen.append(ranked.iloc[0]["run_id"])
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 3.2 * len(chosen)), squeeze=False)
    for ax, run_id in zip(axes[:, 0], chosen):
        record, trace = by_run[run_id]
        rows = table[table["run_id"] == run_id]
        config = record["config"]
        cfg = RunConfig(record["network"], float(record["alpha"]), int(record["batch_size"]),
                        sampling=config.get("sampling", "paired"))
        series = readings(trace["loss_b"], trace["objective"], cfg.steps_per_epoch(int(record["n_train"])), cfg.alpha)
        l_star, l_star_star = float(config["l_star"]), float(config["l_star_star"])
        shown = rows.loc[rows["reading"].isin(list(styles_order)), "first_below_l_star"].dropna()
        lo = int(max(1, min([rows["plateau_start"].iloc[0], *shown]) - 300))  # from the first passage drawn
        hi = int(len(trace["objective"]))
        styles = {"step NE loss": dict(color="0.75", lw=0.5), "running NE mean": dict(color="tab:blue", lw=0.8),
                  "NE mean, 10 steps": dict(color="tab:green", lw=0.8),
                  "epoch NE mean": dict(color="tab:red", lw=1.4, marker=".", ms=3)}
        for name, style in styles.items():
            if name not in series:  # a trace shorter than the window
                continue
            steps, values, _ = series[name]
            keep = (steps >= lo) & (steps <= hi)
            ax.plot(steps[keep], values[keep], label=name, **style)
            passage = rows.loc[rows["reading"] == name, "first_below_l_star"].iloc[0]
            if pd.notna(passage) and lo <= passage <= hi:
                ax.axvline(passage, color=style["color"], ls=":", lw=1)
        ax.axhline(l_star, color="k", lw=0.8, ls="--", label="L*")
        ax.axhline(l_star_star, color="k", lw=0.8, ls="-.", label="L**")
        paper = paper_steps(cfg.alpha, cfg.batch_size)
        if paper:
            ax.axvspan(paper[0] - paper[1], paper[0] + paper[1], color="tab:orange", alpha=0.15,
                       label="paper: convergence ± σ")
        if record.get("lr_halved_step"):
            ax.axvline(record["lr_halved_step"], color="k", lw=1.2, label="traced run halves")
        ax.set_yscale("symlog", linthresh=l_star_star)  # NE losses can be negative
        ax.set_ylim(-2 * l_star, 20 * l_star)
        ax.set_xlim(lo, hi)
        ax.set_title(f"F1, alpha = {cfg.alpha:g}, B = {cfg.batch_size}: {run_id} ({variant_of(record)})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("reading")
        ax.legend(fontsize=7, ncol=4, loc="lower left")
    fig.tight_layout()
    return fig


def own_reading(stop_loss: str, alpha: float) -> str | None:
    """The reading (a key of `readings`) a run with this stop_loss decided on; None for L(w) (not in a trace)."""
    if stop_loss == "epoch_mean":
        return "epoch NE mean" if alpha == 1 else "epoch L_B mean"
    return {"step": "step NE loss", "running": "running NE mean", "ne_epoch_mean": "epoch NE mean"}.get(stop_loss)
