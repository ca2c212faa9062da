"""The paper's published numbers (Tables 1-3), shipped with the package as CSV."""

from __future__ import annotations

import csv
from importlib import resources


def _read(name: str) -> list[dict]:
    with resources.files("nerepro").joinpath("paper", name).open() as f:
        return list(csv.DictReader(f))


def _table_1() -> dict[str, dict]:
    rows = {}
    for r in _read("table1.csv"):
        rows[r["network"]] = {
            "network_type": r["network_type"],
            "dataset": r["dataset"],
            "num_classes": int(r["num_classes"]),
            "l_star": float(r["l_star"]),
            "l_star_star": float(r["l_star_star"]),
        }
    return rows


TABLE_1 = _table_1()  # Table 1: network -> dataset, classes, L*, L**


def table_2() -> list[dict]:
    """Table 2: B_opt, test accuracy and convergence time (mean, std) per network and alpha."""
    return _read("table2.csv")


def table_3() -> list[dict]:
    """Table 3: best test accuracy without NE (best B, alpha=1) and with NE (B=5000, best alpha)."""
    return _read("table3.csv")
