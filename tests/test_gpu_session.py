"""scripts/gpu_session.sh, rehearsed on the CPU so that it cannot rot before the next GPU lease."""

import json
import os
import subprocess
import sys
import tarfile
import time

from conftest import REPO, write_fashion_mnist


def test_gpu_session_rehearsal_on_the_cpu(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=6000)  # room for every B of configs/f1.toml
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "SEEDS": "1", "NEREPRO_DATA": str(data), "PYTHONPATH": "",
           "PYTHON": sys.executable,
           "CONFIG": "configs/smoke.toml configs/f1.toml"}  # smoke's runs finish, f1's do not fit the time left
    start = time.time()
    run = subprocess.run([str(REPO / "scripts" / "gpu_session.sh"), str(out), "90"], env=env, capture_output=True,
                         text=True, timeout=150)
    elapsed = time.time() - start
    assert run.returncode == 0, run.stdout + run.stderr
    assert elapsed < 95, elapsed
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"results.tar.gz", "summary.md", "logs.tar.gz", "env.txt", "bench.jsonl"} <= set(files)
    summary = (out / "summary.md").read_text()
    assert "| pytest-gpu | skipped: no CUDA device (rehearsal) | |" in summary
    for name in ("smoke", "sweep", "bench-f1-b1000", "bench-c1-b100", "report"):
        assert f"| {name} | exit 0 |" in summary, (name, summary)
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    records = [n for n in names if n.startswith("results/runs/") and n.endswith(".json")]
    assert 1 <= len(records) <= 2  # smoke.toml at one seed (how many fit the time depends on the machine's load)
    assert "time limit" in summary and "rerun the same command to continue" in summary
    for name in ("table2.md", "fig2.png", "claims.md", "protocol.md"):
        assert f"results/report/{name}" in names
    assert "results/runs.csv" in names
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [(b["network"], b["precision"]) for b in bench] == [("F1", "fp32"), ("C1", "bf16")]
    smoke = [json.loads(line) for line in (out / "smoke.jsonl").read_text().splitlines()]
    assert [(s["network"], s["precision"], s["ok"]) for s in smoke] == [("F1", "fp32", True), ("F1", "bf16", True)]
