"""Sweep configs as data: TOML files of grids and overrides, expanded into run settings.

A config file holds (README, 'Sweep configs'):
  include = ["other.toml", ...]   # runs of other files, resolved relative to this one
  seeds = 10                      # or a list of seeds
  [settings]                      # overrides of RunConfig fields for every run of this file
                                  # (and protocol = "keras", a named set of them: config.PROTOCOLS)
  [[grid]]                        # one or more grids: list values are crossed, scalars are fixed
  priority = 1                    # in a grid or at the top of a file: lower runs first (default 0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tomllib
from pathlib import Path

from .config import RunConfig, with_protocol
from .errors import ConfigError

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
FILE_KEYS = {"include", "seeds", "settings", "grid", "priority"}


def load_plan(paths: list[Path], seeds: int | None = None, overrides: dict | None = None) -> list[tuple[int, RunConfig]]:
    """(priority, run) for every run of the config files, each run once with the lowest priority any grid
    naming it gives, in the order a sweep takes them: priority, then run id."""
    runs: dict[str, tuple[int, RunConfig]] = {}
    for path in paths:
        for priority, cfg in _expand_file(Path(path), seeds, overrides or {}, seen=(), priority=0):
            if cfg.run_id not in runs or priority < runs[cfg.run_id][0]:
                runs[cfg.run_id] = (priority, cfg)
    return sorted(runs.values(), key=lambda pc: (pc[0], pc[1].run_id))


def load_grid(paths: list[Path], seeds: int | None = None, overrides: dict | None = None) -> list[RunConfig]:
    """All runs of the config files, each once (runs shared by several outputs share a run id), by run id."""
    return sorted((cfg for _, cfg in load_plan(paths, seeds, overrides)), key=lambda c: c.run_id)


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


def _expand_file(path: Path, seeds: int | None, overrides: dict, seen: tuple,
                 priority: int) -> list[tuple[int, RunConfig]]:
    if path.resolve() in seen:
        raise ConfigError(f"{path} includes itself: remove the cycle")
    doc = _read_toml(path)
    unknown = set(doc) - FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(FILE_KEYS))}")
    if not isinstance(doc.get("include", []), list) or not isinstance(doc.get("settings", {}), dict) \
            or not (isinstance(doc.get("grid", []), list) and all(isinstance(g, dict) for g in doc.get("grid", []))):
        raise ConfigError(f"{path}: include must be a list, [settings] a table and each grid a [[grid]] table")
    priority = _priority(path, doc.get("priority", priority))
    runs = []
    for inc in doc.get("include", []):
        runs += _expand_file(path.parent / inc, seeds, overrides, seen + (path.resolve(),), priority)
    seed_list = _seeds(path, seeds if seeds is not None else doc.get("seeds", 1))
    settings = {**doc.get("settings", {}), **overrides}
    for i, grid in enumerate(doc.get("grid", [])):
        grid = dict(grid)
        rank = _priority(path, grid.pop("priority", priority))
        runs += [(rank, cfg) for cfg in _expand_grid(path, i, grid, settings, seed_list)]
    return runs


def _priority(path: Path, value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{path}: priority must be an integer (lower runs first), got {value!r}")


def _seeds(path: Path, value) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) for s in value):
        return value
    raise ConfigError(f"{path}: seeds must be a positive count or a list of integers, got {value!r}")


def _expand_grid(path: Path, index: int, grid: dict, settings: dict, seeds: list[int]) -> list[RunConfig]:
    merged = {**settings, **grid}
    if "protocol" in merged:  # a named reading (config.PROTOCOLS): fills the settings the tables leave unset
        merged = with_protocol(merged.pop("protocol"), merged)
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
