"""Sweep configs as data: TOML files of grids and overrides, expanded into run settings.

A config file holds (README, 'Sweep configs'):
  include = ["other.toml", ...]   # runs of other files, resolved relative to this one
  seeds = 10                      # or a list of seeds
  [settings]                      # overrides of RunConfig fields for every run of this file
  [[grid]]                        # one or more grids: list values are crossed, scalars are fixed
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import tomllib
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError
from .paper import table_2

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
FILE_KEYS = {"include", "seeds", "settings", "grid"}
TRAIN_SIZE = {"F1": 60_000, "C1": 50_000, "C2": 50_000}  # training samples of each network's dataset


def load_grid(paths: list[Path], seeds: int | None = None, overrides: dict | None = None) -> list[RunConfig]:
    """All runs of the config files, each once (runs shared by several outputs share a run id)."""
    runs: dict[str, RunConfig] = {}
    for path in paths:
        for cfg in _expand_file(Path(path), seeds, overrides or {}, seen=()):
            runs.setdefault(cfg.run_id, cfg)
    return sorted(runs.values(), key=lambda c: c.run_id)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: check the path (configs/ holds the paper's)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or e}): check the path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({e}): fix the file") from None


def _expand_file(path: Path, seeds: int | None, overrides: dict, seen: tuple) -> list[RunConfig]:
    if path.resolve() in seen:
        raise ConfigError(f"{path} includes itself: remove the cycle")
    doc = _read_toml(path)
    unknown = set(doc) - FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(FILE_KEYS))}")
    if not isinstance(doc.get("include", []), list) or not isinstance(doc.get("settings", {}), dict) \
            or not (isinstance(doc.get("grid", []), list) and all(isinstance(g, dict) for g in doc.get("grid", []))):
        raise ConfigError(f"{path}: include must be a list, [settings] a table and each grid a [[grid]] table")
    runs = []
    for inc in doc.get("include", []):
        runs += _expand_file(path.parent / inc, seeds, overrides, seen + (path.resolve(),))
    seed_list = _seeds(path, seeds if seeds is not None else doc.get("seeds", 1))
    settings = {**doc.get("settings", {}), **overrides}
    for i, grid in enumerate(doc.get("grid", [])):
        runs += _expand_grid(path, i, grid, settings, seed_list)
    return runs


def _seeds(path: Path, value) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) for s in value):
        return value
    raise ConfigError(f"{path}: seeds must be a positive count or a list of integers, got {value!r}")


def _expand_grid(path: Path, index: int, grid: dict, settings: dict, seeds: list[int]) -> list[RunConfig]:
    merged = {**settings, **grid}
    unknown = set(merged) - RUN_FIELDS
    if unknown:
        raise ConfigError(f"{path}, grid {index + 1}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key in ("network", "alpha", "batch_size"):
        if key not in merged:
            raise ConfigError(f"{path}, grid {index + 1}: missing {key}")
    axes = {k: v if isinstance(v, list) else [v] for k, v in merged.items() if k != "seed"}
    if "seed" in merged:
        seeds = merged["seed"] if isinstance(merged["seed"], list) else [merged["seed"]]
    runs = []
    for values in itertools.product(*axes.values(), seeds):
        fields = dict(zip([*axes, "seed"], values))
        if isinstance(fields["alpha"], int):
            fields["alpha"] = float(fields["alpha"])
        try:
            runs.append(RunConfig(**fields))
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}, grid {index + 1}: {e}") from None
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes i/n with 0 <= i < n (e.g. 3/16), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard takes i/n with 0 <= i < n (e.g. 3/16), got {text!r}")
    return i, n


def shard(runs: list[RunConfig], i: int, n: int) -> list[RunConfig]:
    """Shard i of n: a hash of the run id picks it, so a run keeps its shard when the grid grows."""
    pick = lambda c: int(hashlib.sha256(c.run_id.encode()).hexdigest(), 16) % n == i  # noqa: E731
    return [c for c in runs if pick(c)]


def _reference_steps() -> dict[str, tuple[int, float]]:
    """Per network, (B_opt, convergence steps) at alpha = 1 from the paper's Table 2."""
    return {r["network"]: (int(r["b_opt"]), float(r["convergence_steps_mean"]))
            for r in table_2() if float(r["alpha"]) == 1.0}


def estimated_steps(cfg: RunConfig, reference: dict | None = None) -> int:
    """A rough guess of a run's steps to L**: Table 2's alpha = 1 time scaled by sqrt(B_opt / B).

    The square-root rule matches Table 2's other rows within about 25%. A run on a subset is assumed to
    need as many epochs, i.e. proportionally fewer steps. Capped at max_steps. The guess only orders runs
    (longest first) and sizes a sweep before it starts.
    """
    b_ref, steps_ref = (reference or _reference_steps())[cfg.network]
    steps = steps_ref * math.sqrt(b_ref / cfg.batch_size)
    if cfg.subset:
        steps *= min(1.0, cfg.subset / TRAIN_SIZE[cfg.network])
    return int(min(cfg.max_steps, max(steps, cfg.check_every)))


def estimated_samples(cfg: RunConfig, reference: dict | None = None) -> int:
    """Training samples a run is expected to read (each NE step reads 2B)."""
    return estimated_steps(cfg, reference) * cfg.samples_per_step(cfg.subset or TRAIN_SIZE[cfg.network])
