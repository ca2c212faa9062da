"""scripts/import_gpu.py: a GPU session's results archive merged into a committed results directory."""

import copy
import importlib.util
import io
import json
import tarfile

import pytest

from conftest import REPO

SESSION = REPO / "results" / "gpu" / "h100-2026-11-28" / "call2" / "results"
spec = importlib.util.spec_from_file_location("import_gpu", REPO / "scripts" / "import_gpu.py")
import_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_gpu)


def real_record(seed: int, **fields) -> dict:
    """A record of the first lease (F1, alpha = 1.5, B = 2000) as another seed, with a run id of its own."""
    record = copy.deepcopy(json.loads(next(SESSION.glob("runs/F1-a1.5-b2000-s1-*.json")).read_text()))
    record.update(run_id=f"F1-a1.5-b2000-s{seed}-test{seed:06d}", seed=seed, **fields)
    record["config"]["seed"] = seed
    return record


def error_record(seed: int) -> dict:
    return real_record(seed, status="error", convergence_steps=None, test_acc=None, error="CUDA error: an illegal "
                       "memory access", traceback="...")


def archive(path, records, log_lines=(), extra=()):
    """A results.tar.gz laid out as scripts/gpu_session.sh writes it."""
    with tarfile.open(path, "w:gz") as tar:
        members = [(f"results/runs/{r['run_id']}.json", json.dumps(r, indent=1) + "\n") for r in records]
        members += [("results/sweep.log", "".join(f"{line}\n" for line in log_lines)),
                    ("results/report/table2.md", "the session's report, rebuilt here\n"), *extra]
        for name, text in members:
            data = text if isinstance(text, bytes) else text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def snapshot(root):
    """Every file under a results directory (locks aside) with its bytes and modification time."""
    return {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and ".locks" not in p.parts}


def test_an_archive_merges_into_a_results_directory_once(tmp_path, capsys):
    into = tmp_path / "f1"
    (into / "runs").mkdir(parents=True)
    kept, finished, failed = real_record(0), real_record(1), error_record(2)
    for r in (kept, finished, failed):
        (into / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    (into / "sweep.log").write_text("2026-11-28T03:00:00 vm 1 recorded:converged F1-a1.5-b2000-s0-test000000\n")
    new = [real_record(3, convergence_steps=8400), real_record(4, convergence_steps=10100)]
    log = ["2026-12-01T10:00:00 gpu 7 start F1-a1.5-b2000-s3-test000003",
           "2026-12-01T10:02:00 gpu 7 recorded:converged F1-a1.5-b2000-s3-test000003"]
    path = archive(tmp_path / "results.tar.gz",
                   [real_record(0, wall_s=1.0), error_record(1), real_record(2), *new], log,
                   extra=[("results/runs/broken.json", "{not json")])

    assert import_gpu.main([str(path), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    runs = {p.stem: json.loads(p.read_text()) for p in (into / "runs").glob("*.json")}
    assert set(runs) == {r["run_id"] for r in (kept, finished, failed, *new)}  # every run id once
    assert runs[finished["run_id"]] == finished  # an error record never replaces a finished one
    assert runs[failed["run_id"]]["status"] == "converged"  # a finished record replaces an error one
    assert runs[new[0]["run_id"]]["convergence_steps"] == 8400
    assert "2 added, 1 replaced an error record, 1 kept" in out and "1 skipped, 1 invalid" in out
    assert "invalid   results/runs/broken.json is not a valid record (JSONDecodeError)" in out
    assert "already recorded (same results; other fields differ)" in out
    assert (into / "sweep.log").read_text().splitlines()[1:] == log
    for name in ("runs.csv", "report/table2.md", "report/table3.md", "report/protocol.png", "report/claims.md",
                 "report/protocol.md"):
        assert (into / name).is_file(), name
    # Table 2's F1 row: seeds 0 and 1 before (9,550 steps each); then seeds 0-4 (one converged from an error)
    assert "Table 2, alpha = 1.5: B = 2000, alpha = 1.5: n = 2/3, steps 9550 ± 0 -> " \
           "B = 2000, alpha = 1.5: n = 5/5, steps 9430 ± 623" in out

    before = snapshot(into)
    assert import_gpu.main([str(path), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert snapshot(into) == before
    assert "0 added, 0 replaced an error record, 4 kept, 0 conflicts (existing kept), 1 skipped" in out
    assert "0 sweep.log lines appended" in out
    assert "nothing changed" in out


def test_conflicting_results_keep_the_recorded_run_and_are_reported(tmp_path, capsys):
    into = tmp_path / "f1"
    recorded = real_record(0)
    (into / "runs").mkdir(parents=True)
    (into / "runs" / f"{recorded['run_id']}.json").write_text(json.dumps(recorded))
    path = archive(tmp_path / "results.tar.gz", [real_record(0, convergence_steps=123)])
    assert import_gpu.decide(recorded, real_record(0, convergence_steps=123))[0] == "conflict"
    changes = import_gpu.merge(import_gpu.ResultsDir(into), import_gpu.read_archive(path)[0])
    assert [c[0] for c in changes] == ["conflict"] and "convergence_steps 9550 here, 123 in the archive" in changes[0][2]
    assert json.loads((into / "runs" / f"{recorded['run_id']}.json").read_text()) == recorded


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no archive at"),
    (lambda p: (p.write_text("not a tar"), p)[1], "is not a readable tar archive"),
    (lambda p: (p.write_bytes(b"\x1f\x8b\x08\x00truncated"), p)[1], "is not a readable tar archive"),
    (lambda p: archive(p, [], ["2026-12-01T10:00:00 gpu 7 start F1-x"]), "holds no valid records"),
    (lambda p: archive(p, [], extra=[("results/runs/F1-x.json", '{"run_id": "F1-x"}')]), "holds no valid records"),
])
def test_bad_archives_are_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, make, message):
    into = tmp_path / "f1"
    (into / "runs").mkdir(parents=True)
    recorded = real_record(0)
    (into / "runs" / f"{recorded['run_id']}.json").write_text(json.dumps(recorded))
    before = snapshot(into)
    assert import_gpu.main([str(make(tmp_path / "results.tar.gz")), "--into", str(into)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("import_gpu: error: ") and message in err
    assert snapshot(into) == before


def test_traces_come_with_their_records(tmp_path, capsys):
    """A session's per-step traces (runs/<id>.trace.csv.gz) land beside their records; an unreadable one is
    reported invalid and its record still comes in."""
    from nerepro.trace import read_trace, trace_path, write_trace

    good, bad = real_record(5), real_record(6)
    trace = write_trace(tmp_path / "t.trace.csv.gz", {"loss_b": [2.3, 1.9], "objective": [2.4, 1.8]}).read_bytes()
    path = archive(tmp_path / "results.tar.gz", [good, bad], extra=[
        (f"results/runs/{good['run_id']}.trace.csv.gz", trace),
        (f"results/runs/{bad['run_id']}.trace.csv.gz", b"not gzip")])
    into = tmp_path / "f1"
    assert import_gpu.main([str(path), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert "invalid" in out and f"{bad['run_id']}.trace.csv.gz" in out and "with its trace" in out
    assert read_trace(trace_path(into / "runs" / f"{good['run_id']}.json"))["objective"].tolist() == [2.4, 1.8]
    assert (into / "runs" / f"{bad['run_id']}.json").is_file()
    assert not trace_path(into / "runs" / f"{bad['run_id']}.json").exists()
