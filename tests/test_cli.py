"""`nerepro train` end to end through the CLI, on real and generated data, and its bad-input errors."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from nerepro import data as datasets
from nerepro.cli import app

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def only_record(out):
    files = list(out.glob("*.json"))
    assert len(files) == 1 and not list(out.glob(".*.tmp"))
    return json.loads(files[0].read_text())


def test_train_on_real_fashion_mnist(fmnist_root, tmp_path):
    result = invoke("train", "--network", "F1", "--alpha", 1.5, "--batch-size", 100, "--seed", 0, "--subset", 300,
                    "--max-steps", 10, "--check-every", 5, "--data-dir", fmnist_root, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    r = only_record(tmp_path)
    assert (r["network"], r["dataset"], r["n_train"], r["subset"], r["steps"]) == ("F1", "Fashion-MNIST", 300, 300, 10)
    assert r["samples_processed"] == 10 * 200 and r["curve"]["step"] == [5, 10]
    assert 10 < r["test_acc"] <= 100  # evaluated on the 10,000 real test images
    assert r["run_id"] in result.stdout and "not_converged at step 10" in result.stdout
    assert set(r["provenance"]) >= {"nerepro", "git_commit", "git_dirty", "torch", "device"}


def test_fashion_mnist_tensors(fmnist_root):
    d = datasets.load("fashion-mnist", fmnist_root)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() == 1
    assert d.y_train.dtype == torch.int64 and set(d.y_train.unique().tolist()) == set(range(10))
    assert d.subset(500).n_train == 500 and d.subset(500).x_test.shape[0] == 10000


@pytest.mark.parametrize("network", ["C1", "C2"])
def test_train_on_generated_cifar(cifar_root, tmp_path, network):
    result = invoke("train", "--network", network, "--alpha", 2, "--batch-size", 10, "--ghost-batch-size", 10,
                    "--subset", 40, "--max-steps", 4, "--check-every", 2, "--data-dir", cifar_root, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    r = only_record(tmp_path)
    assert r["dataset"] == ("CIFAR-10" if network == "C1" else "CIFAR-100")
    assert r["steps"] == 4 and r["n_train"] == 40 and r["config"]["ghost_batch_size"] == 10


def test_cifar_tensors(cifar_root):
    d = datasets.load("cifar100", cifar_root)
    assert d.x_train.shape == (200, 3, 32, 32) and d.num_classes == 100 and d.x_test.shape == (50, 3, 32, 32)
    assert d.x_train.max() <= 1 and d.y_train.max() < 100


def corrupt_fashion_mnist(fmnist_root, tmp_path):
    raw = tmp_path / "corrupt" / "FashionMNIST" / "raw"
    shutil.copytree(fmnist_root / "FashionMNIST" / "raw", raw)
    (raw / "t10k-labels-idx1-ubyte.gz").chmod(0o644)
    with open(raw / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    return tmp_path / "corrupt"


BAD = {
    "alpha not finite": (["--network", "F1", "--alpha", "nan", "--batch-size", 100], "alpha must be a finite"),
    "alpha infinite": (["--network", "F1", "--alpha", "inf", "--batch-size", 100], "alpha must be a finite"),
    "alpha not a number": (["--network", "F1", "--alpha", "big", "--batch-size", 100], "--alpha"),
    "batch size zero": (["--network", "F1", "--alpha", 1, "--batch-size", 0], "batch size must be a positive"),
    "ghost split": (["--network", "C1", "--alpha", 1, "--batch-size", 150], "multiple of 100"),
    "unknown network": (["--network", "VGG", "--alpha", 1, "--batch-size", 100], "unknown network 'VGG'"),
    "bad subset": (["--network", "F1", "--alpha", 1, "--batch-size", 100, "--subset", 50], "exceeds the training"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    args, message = BAD[case]
    result = invoke("train", *args, "--out", tmp_path / "o", "--data-dir", tmp_path)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerepro: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr


def test_missing_dataset(tmp_path):
    result = invoke("train", "--network", "F1", "--alpha", 1, "--batch-size", 100, "--data-dir", tmp_path / "none",
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "Fashion-MNIST not found", "nerepro data download fashion-mnist")


def test_corrupt_fashion_mnist(fmnist_root, tmp_path):
    root = corrupt_fashion_mnist(fmnist_root, tmp_path)
    result = invoke("train", "--network", "F1", "--alpha", 1, "--batch-size", 100, "--data-dir", root,
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "t10k-labels-idx1-ubyte.gz is corrupt")


def test_corrupt_cifar_fails_md5(tmp_path):
    from conftest import write_cifar

    root = write_cifar(tmp_path / "data", "cifar10")  # generated files cannot match the real md5 sums
    result = invoke("train", "--network", "C1", "--alpha", 1, "--batch-size", 100, "--data-dir", root,
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "CIFAR-10", "corrupt", "nerepro data download cifar10")


def test_batch_larger_than_training_set(cifar_root, tmp_path):
    result = invoke("train", "--network", "C1", "--alpha", 1, "--batch-size", 100, "--data-dir", cifar_root,
                    "--out", tmp_path / "o")
    assert_one_line_error(result, "batch size 100 exceeds the 60 training samples")


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke("train", "--network", "F1", "--alpha", 1, "--batch-size", 100, "--out", blocker / "runs")
    assert_one_line_error(result, "cannot write to output directory")


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.tvd.FashionMNIST, "download", offline)
    result = invoke("data", "download", "fashion-mnist", "--data-dir", tmp_path)
    assert_one_line_error(result, "could not download Fashion-MNIST", "network unreachable")


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nerepro", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout


def test_sweep_display_in_logs(capsys):
    from nerepro.display import SweepDisplay

    display = SweepDisplay(2, interactive=False, every_s=0)
    display("check", {"run_id": "r1", "step": 50, "loss": "L>=0.02"})
    display("done", {"run_id": "r1", "status": "converged", "steps": 100, "train_loss": 0.0009, "test_acc": 90.0,
                     "wall_s": 3.0})
    display("done", {"run_id": "r2", "status": "error", "error": "ValueError: boom"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[0/2] running: r1 step 50 L>=0.02"
    assert lines[1].startswith("[1/2] r1: converged at step 100, L(w) 0.0009, test acc 90.00%")
    assert lines[2].startswith("[2/2] r2: error: ValueError: boom")


def test_help_summaries_read_whole():
    """`nerepro --help` gives every command a summary that ends where its sentence ends, not at "Fig." or "...".
    (Click cuts a docstring's first sentence at its first period and at 45 characters.)"""
    import re

    out = runner.invoke(app, ["--help"])
    rows = re.findall(r"^  (\w+)\s{2,}(.+)$", out.output.split("Commands:")[1], re.M)
    assert {name for name, _ in rows} >= {"train", "sweep", "collect", "tables", "plots", "claims", "protocol",
                                          "bench", "noise", "data"}
    for name, summary in rows:
        assert summary.endswith(".") and not summary.endswith("...") and not re.search(r"(Fig|Sec|Eq)\.$", summary), \
            (name, summary)
