"""`nerepro noise`: the SGD noise itself, at fixed weights (README, 'What the paper did not measure').

For minibatch gradients g at weights w, the noise is xi = g - grad L(w) (Eq. 3 without the learning rate).
Per draw, B and B' are sampled independently and their noises xi_B, xi_B' are computed once; NE's noise
for every alpha is alpha xi_B + (1 - alpha) xi_B' (Eq. 9), so all alphas share the same draws. Plain SGD
at the effective batch size B_eff = B / (alpha^2 + (1 - alpha)^2) (Eq. 11) gets its own draws.

Directions: the noise vectors are kept only through a CountSketch (each parameter hashed to one of m
buckets with a random sign), whose m rows are sparse random +-1 directions; the top principal directions
are the leading eigenvectors of the alpha = 1 noise covariance in that sketch space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from .gradient import accumulate_full_gradient, ne_objective
from .sampling import IndependentSampler, stream_seed


def effective_batch_size(batch_size: int, alpha: float, multiple: int = 1) -> int:
    """Eq. (11), rounded to the nearest multiple of `multiple` (the ghost-batch size of C1/C2), at least one."""
    b = batch_size / (alpha ** 2 + (1 - alpha) ** 2)
    return max(multiple, int(round(b / multiple)) * multiple)


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def minibatch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad L_B(w) of Eq. (2), the model in training mode (ghost batch norm as in training)."""
    model.zero_grad(set_to_none=False)
    ne_objective(model, x, y, len(x), 1.0)[0].backward()
    return flat_grad(model)


def full_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """grad L(w) of Eq. (1) over all of (x, y) (exact for F1; for C1/C2 in training mode, see
    `accumulate_full_gradient`)."""
    model.zero_grad(set_to_none=False)
    accumulate_full_gradient(model, x, y, 1.0, chunk)
    return flat_grad(model)


class CountSketch:
    """v -> S v with S an m x P matrix of one random +-1 per column: m sparse random directions."""

    def __init__(self, size: int, m: int, seed: int, device: torch.device):
        g = torch.Generator().manual_seed(stream_seed(seed, "sketch"))
        self.bucket = torch.randint(0, m, (size,), generator=g).to(device)
        self.sign = (torch.randint(0, 2, (size,), generator=g) * 2 - 1).float().to(device)
        self.m = m

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.m, device=v.device, dtype=v.dtype).index_add_(0, self.bucket, v * self.sign)


def excess_kurtosis(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sample excess kurtosis with the usual small-sample correction (Fisher's G2): 0 for a Gaussian."""
    x = np.asarray(x, dtype=float)
    n = x.shape[axis]
    d = x - x.mean(axis=axis, keepdims=True)
    m2, m4 = (d ** 2).mean(axis=axis), (d ** 4).mean(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant direction (empty sketch bucket): NaN
        g2 = m4 / m2 ** 2 - 3
    return ((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3))


def hill_tail_index(x: np.ndarray, fraction: float = 0.1) -> float:
    """Hill's estimator of the tail index of |x| from its largest `fraction` (smaller = heavier tails;
    a power law with index a has moments below a only)."""
    a = np.sort(np.abs(np.asarray(x, dtype=float).ravel()))[::-1]
    k = max(2, int(len(a) * fraction))
    return float(1.0 / np.mean(np.log(a[:k] / a[k])))


@dataclass
class NoiseDraws:
    """Per setting (name -> arrays over draws): squared norms of the noise and its sketch."""

    sq_norm: dict
    sketch: dict
    n_train: int
    params: int


def draw_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, alphas: list[float],
               draws: int, seed: int = 0, sketch_dim: int = 256, multiple: int = 1,
               chunk: int = 10_000) -> NoiseDraws:
    """Draw `draws` noise samples for NE at each alpha (shared draws) and for plain SGD at each B_eff."""
    device = x.device
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    g_full = full_gradient(model, x, y, chunk)
    sketch = CountSketch(g_full.numel(), sketch_dim, seed, device)
    sampler = IndependentSampler(len(x), batch_size, device, seed, second=True)
    beff = {a: effective_batch_size(batch_size, a, multiple) for a in alphas if a != 1}
    plain = {b: IndependentSampler(len(x), b, device, stream_seed(seed, f"plain{b}"), second=False)
             for b in set(beff.values())}
    sq = {f"ne:{a:g}": [] for a in alphas} | {f"ne_train:{a:g}": [] for a in alphas}
    sk = {f"ne:{a:g}": [] for a in alphas}
    for b in plain:
        sq[f"plain:{b}"], sk[f"plain:{b}"] = [], []
    for draw in range(draws):
        idx = sampler.draw(draw)
        xi_b = minibatch_gradient(model, x[idx[:batch_size]], y[idx[:batch_size]]) - g_full
        xi_b2 = minibatch_gradient(model, x[idx[batch_size:]], y[idx[batch_size:]]) - g_full
        s_b, s_b2 = sketch(xi_b), sketch(xi_b2)
        nb, nb2, cross = xi_b.square().sum().item(), xi_b2.square().sum().item(), (xi_b @ xi_b2).item()
        for a in alphas:  # Eq. (9): xi_NE = alpha xi_B + (1 - alpha) xi_B'
            sq[f"ne:{a:g}"].append(a * a * nb + (1 - a) ** 2 * nb2 + 2 * a * (1 - a) * cross)
            sk[f"ne:{a:g}"].append((a * s_b + (1 - a) * s_b2).cpu())
            # the same noise through the training path: the gradient of the objective a training step follows
            model.zero_grad(set_to_none=False)
            ne_objective(model, x[idx], y[idx], batch_size, a)[0].backward()
            sq[f"ne_train:{a:g}"].append((flat_grad(model) - g_full).square().sum().item())
        for b, smp in plain.items():
            j = smp.draw(draw)
            xi = minibatch_gradient(model, x[j], y[j]) - g_full
            sq[f"plain:{b}"].append(xi.square().sum().item())
            sk[f"plain:{b}"].append(sketch(xi).cpu())
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    model.zero_grad(set_to_none=True)
    return NoiseDraws({k: np.asarray(v) for k, v in sq.items()},
                      {k: torch.stack(v).double().numpy() for k, v in sk.items()}, len(x), g_full.numel())


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, rng, resamples: int = 2000) -> tuple[float, float]:
    """95% interval of mean(num) / mean(den) over paired resamples of the draws."""
    idx = rng.integers(0, len(num), (resamples, len(num)))
    ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def mean_kurtosis_se(values: np.ndarray, rng, resamples: int = 200) -> float:
    """Standard error of the mean excess kurtosis over directions (columns), from a bootstrap over the draws
    (rows). Every direction is measured on the same draws, so the spread over directions divided by
    sqrt(directions) would treat correlated estimates as independent and understate the error."""
    idx = rng.integers(0, len(values), (resamples, len(values)))
    return float(np.std([np.nanmean(excess_kurtosis(values[i])) for i in idx], ddof=1))


def summarize_noise(d: NoiseDraws, batch_size: int, alphas: list[float], multiple: int = 1, top: int = 5,
                    seed: int = 0) -> pd.DataFrame:
    """One row per setting: trace and its ratio to alpha = 1 (with 95% bootstrap intervals) against Eq. (10),
    plain SGD at B_eff against NE, and excess kurtosis and tail index along random and top directions."""
    rng = np.random.default_rng(seed)
    base = d.sq_norm["ne:1"] if "ne:1" in d.sq_norm else None
    ref = d.sketch["ne:1"] if "ne:1" in d.sketch else next(iter(d.sketch.values()))
    centred = ref - ref.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    pcs = vecs[:, ::-1][:, :top]  # top principal directions of the alpha = 1 noise, in sketch space
    n, rows = d.n_train, []
    k1 = {"random": float(np.nanmean(excess_kurtosis(d.sketch["ne:1"]))) if "ne:1" in d.sketch else np.nan,
          "top": float(np.nanmean(excess_kurtosis((ref - ref.mean(axis=0)) @ pcs)))}
    for a in alphas:
        c = a ** 2 + (1 - a) ** 2
        b_eff = effective_batch_size(batch_size, a, multiple) if a != 1 else batch_size
        for kind, key, b in (("NE", f"ne:{a:g}", batch_size), ("plain", f"plain:{b_eff}", b_eff)):
            if key not in d.sq_norm or (kind == "plain" and a == 1):
                continue
            sq, sk = d.sq_norm[key], d.sketch[key]
            row = {"kind": kind, "alpha": a, "batch_size": b, "draws": len(sq), "trace": sq.mean(),
                   "trace_se": sq.std(ddof=1) / math.sqrt(len(sq))}
            if base is not None:
                row["ratio_to_alpha_1"] = sq.mean() / base.mean()
                row["ratio_low"], row["ratio_high"] = _bootstrap_ratio(sq, base, rng)
            if kind == "NE" and f"ne_train:{a:g}" in d.sq_norm and "ne_train:1" in d.sq_norm:
                train_sq, train_base = d.sq_norm[f"ne_train:{a:g}"], d.sq_norm["ne_train:1"]
                row["ratio_training_path"] = train_sq.mean() / train_base.mean()
                row["ratio_training_low"], row["ratio_training_high"] = _bootstrap_ratio(train_sq, train_base, rng)
            # Eq. (10) for NE; Eq. (4)'s finite-N factor (N - b) / (b (N - 1)) relative to B for plain SGD
            row["theory_ratio"] = c if kind == "NE" else ((n - b) / b) / ((n - batch_size) / batch_size)
            row["theory_eq11"] = c  # what Eq. (11) promises (N >> B)
            if kind == "plain":
                ne = d.sq_norm[f"ne:{a:g}"]
                row["ratio_to_ne"] = sq.mean() / ne.mean()
                row["ratio_to_ne_theory"] = row["theory_ratio"] / c
            proj_top = (sk - sk.mean(axis=0)) @ pcs
            used = sk[:, sk.std(axis=0) > 0]  # sketch rows that received parameters
            standardized = (used - used.mean(axis=0)) / used.std(axis=0)
            row.update(kurtosis_random=float(np.mean(excess_kurtosis(used))),
                       kurtosis_random_se=mean_kurtosis_se(used, rng),
                       kurtosis_top=float(np.mean(excess_kurtosis(proj_top))),
                       kurtosis_top_se=mean_kurtosis_se(proj_top, rng),
                       kurtosis_top1=float(excess_kurtosis(proj_top[:, 0])),
                       tail_index_random=hill_tail_index(standardized),
                       tail_index_top=hill_tail_index(proj_top / proj_top.std(axis=0)))
            # a sum of independent noises: excess kurtosis k1 (alpha^4 + (1 - alpha)^4) / c^2 for NE; a mean of
            # b samples: about k1 B / b for plain SGD (N >> b)
            factor = (a ** 4 + (1 - a) ** 4) / c ** 2 if kind == "NE" else batch_size / b
            row["kurtosis_random_theory"], row["kurtosis_top_theory"] = k1["random"] * factor, k1["top"] * factor
            rows.append(row)
    return pd.DataFrame(rows)


def gaussianity_verdict(table: pd.DataFrame) -> list[str]:
    """The paper's hypothesis (Sec. 4): at equal covariance, NE's noise is closer to Gaussian than plain
    SGD's at B_eff. One line per alpha > 1, comparing |excess kurtosis| along random and top directions."""
    lines = []
    for a in sorted(table.loc[table["alpha"] > 1, "alpha"].unique()):
        ne = table[(table["kind"] == "NE") & (table["alpha"] == a)]
        plain = table[(table["kind"] == "plain") & (table["alpha"] == a)]
        if ne.empty or plain.empty:
            continue
        ne, plain = ne.iloc[0], plain.iloc[0]
        gap = abs(plain["kurtosis_random"]) - abs(ne["kurtosis_random"])
        se = math.hypot(ne["kurtosis_random_se"], plain["kurtosis_random_se"])
        verdict = ("no significant difference" if abs(gap) < 2 * se else
                   "NE is closer to Gaussian" if gap > 0 else "plain SGD is closer to Gaussian")
        lines.append(
            f"alpha={a:g}: |excess kurtosis| along random directions NE {abs(ne['kurtosis_random']):.2f} vs plain SGD "
            f"at B={int(plain['batch_size'])} {abs(plain['kurtosis_random']):.2f}, difference {gap:+.2f} ± {se:.2f} "
            f"({abs(gap) / se:.1f} standard errors): {verdict}. Along the top 5 directions: "
            f"{abs(ne['kurtosis_top']):.2f} ± {ne['kurtosis_top_se']:.2f} vs {abs(plain['kurtosis_top']):.2f} ± "
            f"{plain['kurtosis_top_se']:.2f}.")
    return lines


def noise_figure(table: pd.DataFrame) -> Figure:
    """Trace ratio vs alpha with Eq. (10)'s curve (left); excess kurtosis vs alpha, NE and plain at B_eff (right)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    ne, plain = table[table["kind"] == "NE"], table[table["kind"] == "plain"]
    grid = np.linspace(1, max(table["alpha"].max(), 1.01), 100)
    left.plot(grid, grid ** 2 + (1 - grid) ** 2, "k--", label="Eq. (10): α² + (1 − α)²")
    if "ratio_to_alpha_1" in table:
        for part, marker, label in ((ne, "o", "NE at B"), (plain, "s", "plain SGD at B_eff")):
            if len(part):
                err = np.vstack([part["ratio_to_alpha_1"] - part["ratio_low"], part["ratio_high"] - part["ratio_to_alpha_1"]])
                left.errorbar(part["alpha"], part["ratio_to_alpha_1"], yerr=err, marker=marker, ls="none", capsize=3,
                              label=label)
    left.set_xlabel("α")
    left.set_ylabel("noise covariance trace / trace at α = 1")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    for part, marker, label, color in ((ne, "o", "NE", "C0"), (plain, "s", "plain SGD at B_eff", "C1")):
        if len(part):
            right.errorbar(part["alpha"], part["kurtosis_random"], yerr=1.96 * part["kurtosis_random_se"],
                           marker=marker, capsize=3, color=color, label=f"{label}, random directions")
            right.plot(part["alpha"], part["kurtosis_top"], marker=marker, ls=":", color=color,
                       label=f"{label}, top 5 directions")
    right.axhline(0, color="k", lw=0.8)
    right.set_xlabel("α (plain SGD: at B_eff = B / (α² + (1 − α)²))")
    right.set_ylabel("excess kurtosis of the noise")
    right.legend(fontsize=7)
    right.grid(True, alpha=0.3)
    return fig


def load_weights(model: nn.Module, path) -> nn.Module:
    """Weights from `nerepro train --save-weights` (a state dict) or a sweep checkpoint (its "model")."""
    from .errors import ConfigError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"] if isinstance(saved, dict) and "model" in saved else saved)
    except Exception as e:  # noqa: BLE001 - unreadable, not a pickle, or another network's weights
        raise ConfigError(f"cannot load weights from {path} ({type(e).__name__}): pass a file written by "
                          "`nerepro train --save-weights` or a checkpoint of the same network") from None
    return model


def write_noise_report(table: pd.DataFrame, meta: dict, out) -> str:
    """noise.csv, noise.md (table, settings, verdict on Sec. 4's hypothesis) and noise.png/.pdf in `out`."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "noise.csv", index=False)
    head = ["kind", "α", "B", "draws", "trace / trace(α=1) [95% CI]", "same, training path [95% CI]", "Eq. (10)/(4)",
            "plain / NE", "kurtosis random", "(sum rule)", "kurtosis top 5", "(sum rule)", "kurtosis top 1",
            "tail index random", "tail index top"]
    rows = []
    for _, r in table.iterrows():
        ratio = (f"{r['ratio_to_alpha_1']:.3f} [{r['ratio_low']:.3f}, {r['ratio_high']:.3f}]"
                 if "ratio_to_alpha_1" in r and pd.notna(r.get("ratio_to_alpha_1")) else "–")
        vs_ne = f"{r['ratio_to_ne']:.3f} (theory {r['ratio_to_ne_theory']:.3f})" if pd.notna(r.get("ratio_to_ne")) else "–"
        train = (f"{r['ratio_training_path']:.3f} [{r['ratio_training_low']:.3f}, {r['ratio_training_high']:.3f}]"
                 if pd.notna(r.get("ratio_training_path")) else "–")
        rows.append([r["kind"], f"{r['alpha']:g}", str(int(r["batch_size"])), str(int(r["draws"])), ratio, train,
                     f"{r['theory_ratio']:.3f}", vs_ne, f"{r['kurtosis_random']:.2f} ± {r['kurtosis_random_se']:.2f}",
                     f"{r['kurtosis_random_theory']:.2f}", f"{r['kurtosis_top']:.2f} ± {r['kurtosis_top_se']:.2f}",
                     f"{r['kurtosis_top_theory']:.2f}",
                     f"{r['kurtosis_top1']:.2f}", f"{r['tail_index_random']:.2f}",
                     f"{r['tail_index_top']:.2f}"])
    lines = ["# SGD noise at fixed weights", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()) + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Trace ratio: the noise covariance trace relative to plain SGD at B (alpha = 1); Eq. (10) predicts "
              "alpha^2 + (1 - alpha)^2 for NE; for plain SGD at B_eff the column gives Eq. (4)'s finite-N value "
              "(N - B_eff) / B_eff / ((N - B) / B). The first NE column assembles NE's noise from the two draws' "
              "noises (alpha xi_B + (1 - alpha) xi_B', Eq. 9), which checks only that B and B' are independent; "
              "the training-path column measures it on the same draws through the gradient a training step follows "
              "(the run's sampler and objective). Intervals: bootstrap over the draws. Kurtosis: mean sample excess "
              "kurtosis (0 for a Gaussian) of the noise along the sketch's random directions and along the "
              "top 5 principal directions of the alpha = 1 noise, ± a standard error from a bootstrap over the draws "
              "(every direction sees the same draws, so the spread over directions would understate it). Sum rule: what the alpha = 1 kurtosis k1 implies if "
              "minibatch noise is a sum of independent per-sample terms: k1 (alpha^4 + (1 - alpha)^4) / "
              "(alpha^2 + (1 - alpha)^2)^2 for NE (it falls with alpha) and k1 B / B_eff for plain SGD (it grows as "
              "B_eff shrinks). Tail index: Hill's estimator on the largest 10% of standardized projections.", "", "## Sec. 4's hypothesis: NE's noise is closer to Gaussian than "
              "plain SGD's at equal covariance", ""]
    lines += [f"- {line}" for line in gaussianity_verdict(table)] or ["- needs alpha > 1"]
    text = "\n".join(lines) + "\n"
    (out / "noise.md").write_text(text)
    fig = noise_figure(table)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"noise.{ext}", dpi=150)
    return text
