"""Sweep configs: the paper's grids, overrides, dedup, shards and stable run ids."""

import subprocess
import sys
from pathlib import Path

import pytest

from nerepro.errors import ConfigError
from nerepro.cost import estimated_steps
from nerepro.grid import load_grid, load_plan, parse_shard, shard

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
B_GRID = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 2000, 3000, 5000]


def keys(runs):
    return {(c.network, c.alpha, c.batch_size, c.seed) for c in runs}


def test_paper_grids():
    fig1, fig2, fig3 = (load_grid([CONFIGS / f"fig{i}.toml"]) for i in (1, 2, 3))
    assert keys(fig1) == {("C1", a, b, s) for a in (1, 1.5, 2, 2.5) for b in B_GRID for s in range(10)}
    assert keys(fig2) == {(n, a, b, s) for n in ("F1", "C2") for a in (1, 1.5) for b in B_GRID for s in range(10)}
    triangles = {(n, float(a), 5000, s) for n, top in (("F1", 11), ("C1", 11), ("C2", 7))
                 for a in range(1, top + 1) for s in range(10)}
    circles = {(n, 1.0, b, s) for n in ("F1", "C1", "C2") for b in B_GRID for s in range(10)}
    assert keys(fig3) == triangles | circles
    paper = load_grid([CONFIGS / "paper.toml"])
    assert keys(paper) == keys(fig1) | keys(fig2) | keys(fig3)
    assert len(paper) == len({c.run_id for c in paper}) == 1290  # shared runs appear once


def test_overrides_and_seed_option(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('seeds = [3, 4]\n[settings]\nsubset = 500\nmax_steps = 9\n'
                   '[[grid]]\nnetwork = "F1"\nalpha = [1, 2]\nbatch_size = [100, 200]\ncheck_every = 3\n')
    runs = load_grid([cfg])
    assert len(runs) == 8 and {c.seed for c in runs} == {3, 4}
    assert all(c.subset == 500 and c.max_steps == 9 and c.check_every == 3 for c in runs)
    assert {c.seed for c in load_grid([cfg], seeds=1)} == {0}
    assert load_grid([cfg, cfg]) == runs  # the same runs twice are one set


@pytest.mark.parametrize("text,message", [
    ('[[grid]]\nnetwork = "F1"\nalpha = 1\nbatch_size = 100\nbogus = 1\n', "unknown setting(s) bogus"),
    ('[[grid]]\nnetwork = "F1"\nalpha = 1\n', "missing batch_size"),
    ('[[grid]]\nnetwork = "C1"\nalpha = 1\nbatch_size = 150\n', "multiple of 100"),
    ('grids = 1\n', "unknown key(s) grids"),
    ('[[grid]\n', "not valid TOML"),
    ('seeds = 0\n[[grid]]\nnetwork = "F1"\nalpha = 1\nbatch_size = 100\n', "seeds must be"),
])
def test_bad_configs_name_the_problem(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="bad.toml") as e:
        load_grid([cfg])
    assert message in str(e.value)


def test_shards_are_disjoint_and_cover_the_grid():
    runs = load_grid([CONFIGS / "paper.toml"])
    parts = [shard(runs, i, 16) for i in range(16)]
    ids = [c.run_id for p in parts for c in p]
    assert len(ids) == len(set(ids)) == len(runs)
    assert min(map(len, parts)) > 0.5 * len(runs) / 16  # roughly balanced
    assert parse_shard("3/16") == (3, 16)
    for bad in ("16/16", "a/b", "3", "-1/4"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_run_ids_are_stable_across_processes():
    """Ids are hashes of settings, not of Python's per-process string hashing."""
    code = ("from pathlib import Path; from nerepro.grid import load_grid; "
            f"print(' '.join(c.run_id for c in load_grid([Path(r'{CONFIGS / 'fig2.toml'}')])[:20]))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outs) == 1
    assert outs.pop().split() == [c.run_id for c in load_grid([CONFIGS / "fig2.toml"])[:20]]


def test_estimated_steps_follow_table_2():
    c1 = load_grid([CONFIGS / "fig1.toml"])
    at = {(c.alpha, c.batch_size): estimated_steps(c) for c in c1 if c.seed == 0}
    assert at[(1.0, 100)] == 24500 and at[(1.0, 400)] == 12250


def test_run_id_is_pinned():
    """Run ids must not drift between versions or machines: records already written would be orphaned. (They
    changed once, on purpose, with the device-independent sampler: test_sampling.py pins the old ones. The
    default reading's change kept every id: a run's id hashes its settings, not which of them are defaults.)"""
    from nerepro import RunConfig
    from nerepro.config import PROTOCOLS

    assert RunConfig("F1", 1.5, 2000, **PROTOCOLS["eq1"]).run_id == "F1-a1.5-b2000-s0-02c5e4b131"
    assert RunConfig("F1", 1.5, 2000).run_id == "F1-a1.5-b2000-s0-f7690462c2"  # the Keras reading's record
    assert RunConfig("C1", 2.0, 300, seed=7, **PROTOCOLS["eq1"]).run_id == "C1-a2-b300-s7-94fc179e5c"


@pytest.mark.parametrize("text", ['[[grid]]\nnetwork = "F1"\nalpha = 1\nbatch_size = 100\nlr = "x"\n',
                                  '[grid]\nnetwork = "F1"\n', 'settings = 3\n'])
def test_malformed_configs_are_config_errors(tmp_path, text):
    cfg = tmp_path / "odd.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="odd.toml"):
        load_grid([cfg])


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_grid([tmp_path])


def test_priorities_order_the_plan(tmp_path):
    (tmp_path / "inc.toml").write_text('[[grid]]\nnetwork = "F1"\nalpha = 1\nbatch_size = [100, 300]\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text('priority = 5\ninclude = ["inc.toml"]\n'
                   '[[grid]]\npriority = 2\nnetwork = "F1"\nalpha = 1\nbatch_size = [300, 200]\n'
                   '[[grid]]\nnetwork = "F1"\nalpha = 2\nbatch_size = 100\n')
    plan = [(p, c.alpha, c.batch_size) for p, c in load_plan([cfg])]
    # B = 300 is named at priority 5 (the include inherits the file's) and 2: it runs at 2
    assert plan == sorted(plan, key=lambda t: t[0])
    assert sorted(plan) == [(2, 1.0, 200), (2, 1.0, 300), (5, 1.0, 100), (5, 2.0, 100)]
    cfg.write_text('[[grid]]\npriority = "high"\nnetwork = "F1"\nalpha = 1\nbatch_size = 100\n')
    with pytest.raises(ConfigError, match="priority must be an integer"):
        load_plan([cfg])


def test_f1_config_puts_the_headline_rows_first():
    """configs/f1.toml: Table 2's rows under the default reading, then under the Eq. (1) reading, then Table 3's
    row, then the per-step readings of those rows, then the other readings, then the rest of the F1 grid; the
    first rows traced."""
    plan = load_plan([CONFIGS / "f1.toml"])
    points = [(p, c.alpha, c.batch_size, c.effective_stop_loss, c.effective_sampling) for p, c in plan]
    keras = ("ne_epoch_mean", "paired")  # the default reading; at alpha = 1 epoch_mean and epoch
    assert {pt[1:] for pt in points[:20]} == {(1.0, 900, "epoch_mean", "epoch"), (1.5, 2000, *keras)}  # Table 2
    eq1 = [c for _, c in plan[20:40]]  # then Table 2's rows under the Eq. (1) reading
    assert {(c.alpha, c.batch_size, c.check_every, c.stop_loss, c.sampling, c.adam_update) for c in eq1} == \
        {(a, b, 50, "full", "independent", "pytorch") for a, b in ((1.0, 900), (1.5, 2000))}
    assert {pt[1:] for pt in points[40:50]} == {(3.0, 5000, *keras)}  # Table 3
    assert all(c.effective_adam_update == "keras" for _, c in plan[:20] + plan[40:50])
    assert all(c.trace for _, c in plan[:50])
    assert all(c.check_every == "epoch" for _, c in plan[:20] + plan[40:50])
    steps = {(pt[0], pt[1], pt[2], pt[3]) for pt in points[50:110]}  # the per-step readings of all three rows
    rows = ((1.0, 900), (1.5, 2000), (3.0, 5000))
    assert steps == {(4, a, b, reading) for a, b in rows for reading in ("step", "running")}
    assert all(c.check_every == 1 for _, c in plan[50:110])
    assert {(p, c.alpha, c.batch_size, c.stop_loss) for p, c in plan[110:120]} == {(5, 3.0, 5000, "full")}
    assert {pt[1:3] for pt in points[120:530]} == {(1.0, 900), (1.5, 2000), (3.0, 5000)}  # their other readings
    assert {p for p, *_ in points[530:]} == {8} and len(points) == 860
    f1 = {c.run_id for c in load_grid([CONFIGS / "paper.toml"]) if c.network == "F1"}
    assert {c.run_id for _, c in plan} == f1 | {c.run_id for c in load_grid([CONFIGS / "protocol.toml"])}


def test_throughput_turns_estimates_into_seconds():
    """Measured on a GPU (2026-11-28): F1's step time barely depends on B, so a run at a smaller B must not be
    estimated from samples per second alone (it would look short and start where it cannot finish)."""
    from nerepro import RunConfig
    from nerepro.cost import Throughput, estimated_samples

    t = Throughput()
    small = RunConfig("F1", 1.0, 700)
    assert t.seconds(small) is None
    t.add({"network": "F1", "batch_size": 2000, "alpha": 1.5, "status": "converged", "steps": 10_000,
           "samples_processed": 40_000_000, "wall_s": 100.0, "resumes": 0})
    same = RunConfig("F1", 1.5, 2000, seed=4)
    assert t.seconds(same) == pytest.approx(estimated_steps(same) * 0.01)
    assert t.seconds(small) == pytest.approx(estimated_steps(small) * 0.01)  # per step: the larger guess
    big = RunConfig("F1", 3.0, 5000)
    assert t.seconds(big) == pytest.approx(estimated_samples(big) * 100 / 40e6)  # per sample: the larger
    t.add({"network": "F1", "batch_size": 700, "alpha": 1.0, "status": "converged", "steps": 10,
           "samples_processed": 7000, "wall_s": 1e6, "resumes": 1})  # a resumed run's time is partial: unused
    assert t.seconds(small) == pytest.approx(estimated_steps(small) * 0.01)
