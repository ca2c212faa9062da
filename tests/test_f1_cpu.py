"""`make f1-cpu` (scripts/f1_cpu.sh): the F1 rows on the CPU from HEAD's own worktree, plan first, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

CONFIG = """
seeds = 2
[settings]
subset = 200
max_steps = 40
check_every = 10
[[grid]]
priority = 1
network = "F1"
alpha = 1.0
batch_size = 50
[[grid]]
priority = 2
network = "F1"
alpha = 2.0
batch_size = 50
"""


def test_f1_cpu_runs_the_head_commit_into_the_checkouts_results(tmp_path, fake_fmnist_root):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    results = tmp_path / "results"
    env = {**os.environ, "NEREPRO_DATA": str(fake_fmnist_root), "CONFIG": str(config), "RESULTS": str(results),
           "TIME": "120", "WORKERS": "1", "PYTHON": sys.executable, "TREES": str(tmp_path / "trees")}
    out = subprocess.run([str(REPO / "scripts" / "f1_cpu.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    lines = out.stdout.splitlines()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    first = next(line for line in lines if line.startswith("f1-cpu: commit"))
    assert first.startswith(f"f1-cpu: commit {head[:10]}") and "1 worker(s) x 1 thread(s)" in first
    plan = next(i for i, line in enumerate(lines) if line.startswith("network "))
    assert plan < next(i for i, line in enumerate(lines) if "runs to do" in line and "->" in line)  # plan first
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["alpha"] for r in records) == [1.0, 1.0]  # priority 1 only
    for r in records:
        prov = r["provenance"]
        assert prov["git_commit"] == head and prov["git_dirty"] is False and prov["threads"] == 1
    assert lines[-1] == f"no paused runs to keep in {results}"  # the sweep's last word: nothing left paused
    again = subprocess.run([str(REPO / "scripts" / "f1_cpu.sh")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0 and "0 runs to do" in again.stdout
    tree = tmp_path / "trees" / f"f1-cpu-{head[:10]}"
    assert tree.is_dir()  # the commit's own worktree, where TREES says
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def test_f1_cpu_refuses_a_fill_it_does_not_know_before_it_does_anything(tmp_path):
    env = {**os.environ, "FILL": "yes", "RESULTS": str(tmp_path / "results"), "TREES": str(tmp_path / "trees")}
    out = subprocess.run([str(REPO / "scripts" / "f1_cpu.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "FILL takes 0 or 1, got 'yes'" in out.stderr
    assert not (tmp_path / "trees").exists() and not (tmp_path / "results").exists()
