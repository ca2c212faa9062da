"""Write configs/baselines.toml: for every NE point of the paper's grids, plain runs that match it.

For NE at (B, alpha > 1): plain SGD (alpha = 1) at 2B, which reads the same samples per step, and at
B_eff = B / (alpha^2 + (1 - alpha)^2), which has the same noise covariance (Eq. 11). For C1 and C2, B_eff
is rounded to the nearest multiple of the ghost-batch size 100 (at least 100), so the match is coarse
there; the points that coincide with the B grid are already part of the paper's runs.

    .venv/bin/python scripts/make_baselines.py            # rewrites configs/baselines.toml
"""

from pathlib import Path

from nerepro.grid import load_grid
from nerepro.noise import effective_batch_size

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    paper = load_grid([CONFIGS / "paper.toml"], seeds=1)
    sizes: dict[str, set[int]] = {}
    for cfg in paper:
        if cfg.alpha > 1:
            sizes.setdefault(cfg.network, set()).update(
                {2 * cfg.batch_size, effective_batch_size(cfg.batch_size, cfg.alpha, cfg.batch_multiple)})
    lines = ["# Run:        nerepro sweep configs/baselines.toml --results results/paper",
             "# Reproduces: no figure of the paper: the compute-matched baselines a skeptical reader asks for. For every",
             "#             NE point (B, alpha > 1) of paper.toml, plain runs (alpha = 1) at 2B (the same samples per",
             "#             step) and at B_eff = B / (alpha^2 + (1 - alpha)^2) (the same noise covariance, Eq. 11;",
             "#             C1/C2: rounded to a multiple of 100). The report shows them beside the NE rows of",
             "#             Table 2. Written by scripts/make_baselines.py; 10 seeds.",
             "seeds = 10"]
    for network in sorted(sizes):
        lines += ["", "[[grid]]", f'network = "{network}"', "alpha = 1.0",
                  f"batch_size = [{', '.join(str(b) for b in sorted(sizes[network]))}]"]
    (CONFIGS / "baselines.toml").write_text("\n".join(lines) + "\n")
    runs = load_grid([CONFIGS / "baselines.toml"])
    extra = {c.run_id for c in runs} - {c.run_id for c in load_grid([CONFIGS / "paper.toml"])}
    print(f"configs/baselines.toml: {len(runs)} runs, {len(extra)} of them not in paper.toml")


if __name__ == "__main__":
    main()
