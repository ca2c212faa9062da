"""A GPU lease of a fixed length turned into the paper's F1 rows, then the benchmarks a user's GPU-hours need.

    python -m nerepro.session run OUTDIR --seconds 540        (scripts/gpu_session.sh is its entry point)
    python -m nerepro.session plan configs/f1.toml --seconds 540 --device cuda

`run` finishes inside its budget, counted from the wrapper's start (--started), with everything it made in
OUTDIR (at most 8 files, none over 15 MiB, the logs first). In order:

0. The data: Fashion-MNIST in $NEREPRO_DATA, else in the checkout's .data/, else in the default directory,
   exported for every step. Without it the session stops at once, its summary's first line naming what is
   missing and the carry/export that fixes it: every run would only write an error record.
1. The results directory: a fresh one that starts from a copy of --results-from (the checkout's results/f1
   by default: the sweep skips what it holds, and results.tar.gz brings it back with the new records), or
   --results, extended in place.
2. Side by side: the environment probe, the sweep's plan (`lease_plan.plan_lease`, in this process) and the
   gate: the float64 CUDA test of packs against runs alone and one short fp32 check (GATE_TESTS), under a
   limit counted from its interpreter's start; packs are used only if it passed (`gate_decision`).
3. The sweep: the rows first (lease_plan.ROWS: Table 2's and Table 3's F1 rows under the default reading,
   then Table 2's under the Eq. (1) reading), then the rest by priority; only the runs the plan expects to
   finish (`nerepro sweep --runs`), under a --time-limit of what the rows need. The sweep itself starts a
   pack only if its bound fits the time left, and never one of unknown time after a pack did not fit.
4. Benchmarks, where a user's GPU-hours go (BENCHMARKS: C1 at B = 5000 compiled and eager, C1 at B = 100
   eager and with CUDA graphs, C2), each under its cap, in what the sweep left; one whose least time is not
   left is skipped for the next.
5. The other GPU tests and the smoke (scripts/gpu_smoke.py), in what is left.
6. The hand-back (results.tar.gz also right after the sweep; a SIGTERM stops the steps and hands back).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .handback import copy_results, hand_back, hand_back_results, unpack

REPO = Path(__file__).resolve().parent.parent
HANDBACK_S = 10.0           # kept for the hand-back at the end of the budget
STOP_S = 4.0                # a step stopped at its limit: SIGTERM, 2 s, SIGKILL, 2 s (`stop`)
SWEEP_START_S = 12.0        # the sweep's interpreter and torch, before its --time-limit counts
SESSION_START_S = 15.0      # the session's own interpreter, torch, the data check and the copy of results/f1
# The gate: float64 packs against runs alone on CUDA (decisive), and fp32's first steps (one short check)
GATE_TESTS = ("test_cuda_pack_is_its_runs_alone_in_float64 or "
              "(test_cuda_pack_first_steps_in_each_precision and fp32)")
GATE_S = 60.0  # its interpreter (about 10 s there), CUDA, four tests; never timed on a GPU: room to spare
# (name, cap in seconds, the least time in which it can give its figure, `nerepro bench` arguments): most needed
# first; one whose least time is more than what is left is skipped for the next. C1 is 75% of the paper's
# training FLOP, almost all of it at large B; CUDA graphs decide C1's small-B runs, which launches bound. The
# least times are guesses (an interpreter's start, about 10 s there, and inductor's compile) until a lease
# times them.
BENCHMARKS = (
    ("c1-b5000-fp32-compiled", 120, 75, "--network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 "
                                        "--compile default"),
    ("c1-b5000-bf16-compiled", 120, 75, "--network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 "
                                        "--compile default --precision bf16"),
    ("c1-b5000-fp32-eager", 60, 30, "--network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 2 --compile off"),
    ("c1-b5000-bf16-eager", 60, 30, "--network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 2 --compile off "
                                    "--precision bf16"),
    ("c1-b100-eager", 45, 25, "--network C1 --batch-size 100 --alpha 1 --steps 200 --warmup 20 --compile off"),
    ("c1-b100-graphs", 120, 80, "--network C1 --batch-size 100 --alpha 1 --steps 200 --warmup 30 "
                                "--compile reduce-overhead"),
    ("c2-b600-compiled", 120, 75, "--network C2 --batch-size 600 --alpha 1 --steps 50 --warmup 5 --compile default"),
    ("c2-b5000-compiled", 120, 75, "--network C2 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 "
                                   "--compile default"),
    ("f1-b2000-pack10", 45, 20, "--network F1 --batch-size 2000 --alpha 1.5 --steps 100 --warmup 10 --pack 10"),
)
REHEARSAL_BENCHMARKS = (("f1-b100-pack2", 30, 10, "--network F1 --batch-size 100 --alpha 1.5 --steps 5 --warmup 1 "
                                                  "--pack 2"),)


# ---- decisions (each tested on the CPU) ---------------------------------------------------------------------

def find_data(env: dict, checkout: Path = REPO) -> tuple[Path, list[Path]]:
    """The data directory a session uses, and where it looked: $NEREPRO_DATA where set, else the checkout's
    .data/ where it holds Fashion-MNIST, else the default (~/.cache/nerepro/data)."""
    from .data import DEFAULT_DATA_DIR

    if env.get("NEREPRO_DATA"):
        return Path(env["NEREPRO_DATA"]).expanduser(), [Path(env["NEREPRO_DATA"]).expanduser()]
    looked = [checkout / ".data", DEFAULT_DATA_DIR]
    for place in looked:
        if (place / "FashionMNIST").is_dir():
            return place, looked
    return looked[0], looked


def missing_data_line(problem: str, looked: list[Path], env: dict) -> str:
    """The summary's first line when Fashion-MNIST is not there: what is missing and the fix."""
    if env.get("NEREPRO_DATA"):
        fix = ("point NEREPRO_DATA at a directory that holds FashionMNIST/raw/, or unset it and carry the "
               "checkout's .data/ (`mkdir -p .data && cp -r ../shared/data/FashionMNIST .data/`, `.data` in the "
               "call's carry)")
    else:
        fix = ("copy it into the checkout (`mkdir -p .data && cp -r ../shared/data/FashionMNIST .data/`), name "
               "`.data` in the call's carry and run again (the session finds .data/ itself; or export "
               "NEREPRO_DATA=<a copy>)")
    where = f"NEREPRO_DATA={env['NEREPRO_DATA']}" if env.get("NEREPRO_DATA") else " and ".join(map(str, looked))
    return f"**Nothing ran: Fashion-MNIST is missing** (looked in {where}: {problem.split(': run')[0]}). Fix: {fix}."


def gate_decision(rc: int | None, output: str) -> tuple[bool, str]:
    """Whether packs are used after the gate, and why: only if pytest exited 0 with at least one test passed
    and none skipped, failed or in error (fail closed: a timeout, a collection error, no test, no pytest)."""
    if rc is None:
        return False, "the gate did not finish in its limit"
    last = next((line for line in reversed(output.splitlines()) if re.search(r" in [0-9.]+s", line)), "")
    passed = re.search(r"(^|[ ,=])(\d+) passed", last)
    if rc != 0:
        said = last or next((line for line in reversed(output.splitlines()) if line.strip()), "")
        return False, f"the gate failed (exit {rc}{': ' + said.strip('= ') if said else ''})"
    if not passed or re.search(r"skipped|failed|error|xfail|xpass|no tests", last):
        return False, f"the gate did not pass cleanly ({last.strip('= ') or 'no summary line'})"
    return True, f"the gate passed ({last.strip('= ')})"


def gate_seconds(args) -> float:
    """What the plan keeps for the gate: its limit where one runs (CUDA, --pack auto, the gate among the stages)."""
    runs = args.device != "cpu" and getattr(args, "pack", "auto") == "auto" and "gate" in getattr(args, "stages", ["gate"])
    return args.gate_s if runs else 0.0


def sweep_seconds(budget: float, elapsed: float, gate_s: float) -> float:
    """The most time a sweep can have: the budget less what came before it, the gate at its limit, the sweep's
    start and the hand-back."""
    return budget - elapsed - gate_s - SWEEP_START_S - HANDBACK_S - 5.0


# ---- steps --------------------------------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    status: str
    seconds: float | None = None
    at: float | None = None
    rc: int | None = None
    output: str = ""


@dataclass
class Session:
    out: Path
    budget: float
    started: float
    device: str
    work: Path
    env: dict
    python: str = sys.executable
    steps: list = field(default_factory=list)
    head: list = field(default_factory=list)      # the summary's first lines
    sections: list = field(default_factory=list)  # (title, text) after the table
    children: list = field(default_factory=list)  # background processes, stopped at the end whatever happens

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def elapsed(self) -> float:
        return time.time() - self.started

    def left(self) -> float:
        """Seconds before the hand-back must begin."""
        return self.started + self.budget - HANDBACK_S - time.time()

    def row(self, name: str, status: str, **kw) -> Step:
        step = Step(name, status, **kw)
        self.steps.append(step)
        self.write_summary()
        return step

    def run(self, name: str, cmd: list[str], limit: float, note: str = "", needs: float = 3.0) -> Step:
        """CMD under a timeout of at most `limit` seconds and the time left (its process group killed at the
        limit), logged to logs/NAME.log; a row of the summary. Skipped where less than `needs` seconds are left."""
        limit = min(limit, self.left() - STOP_S)
        if limit < needs:
            return self.row(name, f"skipped: {max(0.0, limit):.0f} s left, it needs {needs:.0f} s")
        t0, log = time.time(), self.logs / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
                status = f"exit {rc}"
            except subprocess.TimeoutExpired:
                stop(proc)
                rc, status = None, f"stopped at its {limit:.0f} s limit"
            except BaseException:  # the session stopped (SIGTERM, Ctrl-C): so is its step, then the hand-back
                stop(proc)
                self.row(name, "stopped with the session", seconds=time.time() - t0, at=t0 - self.started)
                raise
        output = log.read_text(errors="replace")
        return self.row(name, status + (f"; {note}" if note else ""), seconds=time.time() - t0, at=t0 - self.started,
                        rc=rc, output=output)

    def write_summary(self) -> None:
        lines = [*self.head, "", "| step | status | time |", "|---|---|---|"]
        for s in self.steps:
            when = f"{s.seconds:.0f} s, from +{s.at:.0f} s" if s.seconds is not None else ""
            lines.append(f"| {s.name} | {s.status} | {when} |")
        for title, text in self.sections:
            lines += ["", f"## {title}", "", text]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def session_head(args, device: str, commit: str) -> list[str]:
    return ["# GPU session: nerepro", "", f"Budget {args.seconds:.0f} s; device {device}; config "
            f"{' '.join(map(str, args.configs))}; {args.seeds} seeds; results "
            f"{args.results or 'in a fresh directory'}"
            f"{', starting from a copy of ' + str(args.results_from) if args.results_from else ''}; packs {args.pack}; "
            f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(args.started))}; commit {commit}."]


def commit_of(env: dict) -> str:
    if env.get("NEREPRO_GIT_COMMIT"):
        return env["NEREPRO_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def probe(python: str, env: dict, path: Path) -> subprocess.Popen:
    """The environment (env.txt), in the background."""
    code = ("import sys, torch, torchvision, typer, pandas, matplotlib\n"
            "cuda = torch.cuda.is_available()\n"
            "print('python', sys.version.split()[0])\n"
            "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', "
            "torch.backends.cudnn.version() if cuda else None)\n"
            "print('torchvision', torchvision.__version__, 'typer', typer.__version__, 'pandas', pandas.__version__)\n"
            "print('device', torch.cuda.get_device_name(0) if cuda else 'cpu')\n")
    script = (f"date -u +%Y-%m-%dT%H:%M:%SZ; uname -a; timeout 20 nvidia-smi --query-gpu=name,memory.total,"
              f"driver_version,clocks.max.sm --format=csv 2>&1 || echo 'no nvidia-smi'; "
              f"timeout 60 {python} -c \"$PROBE\"; echo NEREPRO_DATA=$NEREPRO_DATA")
    with open(path, "w") as f:
        return subprocess.Popen(["sh", "-c", script], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**env, "PROBE": code}, start_new_session=True)


# ---- the session ----------------------------------------------------------------------------------------------

def run_session(args) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"nerepro-session-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    device = args.device
    s = Session(out, args.seconds, args.started, device, work, env, python=args.python)
    for i, archive in enumerate(args.resume):  # RESUME may name an earlier session's files in OUTDIR itself
        (work / "resume" / str(i)).mkdir(parents=True)
        args.resume[i] = Path(shutil.copy(archive, work / "resume" / str(i) / archive.name))
    for name in ("logs.tar.gz", "results.tar.gz", "checkpoints.tar.gz", "env.txt", "bench.jsonl", "smoke.jsonl"):
        (out / name).unlink(missing_ok=True)  # an earlier session's
    s.head = session_head(args, device, commit_of(env))
    s.write_summary()

    def terminated(signum, frame):
        raise Terminated(f"{signal.Signals(signum).name} after {s.elapsed():.0f} s")

    previous = signal.signal(signal.SIGTERM, terminated)  # a kill from outside still gets the hand-back
    try:
        _run(s, args)
    except Exception as e:  # noqa: BLE001 - whatever broke, the hand-back still comes, saying what broke
        import traceback

        s.head.insert(0, f"**The session stopped early: {type(e).__name__}: {e}** (traceback below).\n")
        s.sections.append(("Traceback", f"```\n{traceback.format_exc()}```"))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the hand-back short
        for child in s.children:
            stop(child)
        hand_back(s, args)
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    return 0


class Terminated(Exception):
    """The session was sent SIGTERM (a timeout around it): its steps are stopped and the hand-back written."""


def stop(proc: subprocess.Popen) -> None:
    """A step's process group killed, waited for at most a few seconds (a process stuck in the driver is left)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_S / 2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_S / 2)


def _run(s: Session, args) -> None:
    from . import data as datasets

    # 0. the data, before anything else
    data_dir, looked = find_data(s.env)
    s.env["NEREPRO_DATA"] = str(data_dir)
    if problem := datasets.missing("fashion-mnist", data_dir):
        s.head.insert(0, missing_data_line(problem, looked, s.env) + "\n")
        s.row("data", f"missing: {problem}")
        return
    s.row("data", f"Fashion-MNIST in {data_dir}")
    s.children.append(probe(s.python, s.env, s.logs / "env.txt"))

    # 1. the results directory
    results = args.results.resolve() if args.results else s.work / "results"
    results.mkdir(parents=True, exist_ok=True)
    (s.work / "started").touch()  # records newer than this are this session's
    if args.results_from and args.results_from.resolve() != results:
        copied = copy_results(args.results_from, results)
        s.row("results-from", f"{copied} records of {args.results_from}")
    for archive in args.resume:
        unpack(archive, results, s.work)
        s.row(f"resume-{archive.name}", "unpacked")
    s.results = results

    # 2. the gate in the background, the plan here
    gate = None
    if args.pack in ("on", "off"):
        packs, why = args.pack == "on", f"PACK={args.pack}: no gate"
    elif s.device == "cpu":
        packs, why = False, "no CUDA device (rehearsal)"
    elif "gate" not in args.stages:
        packs, why = False, "the gate was not asked for (STAGES)"
    else:
        with open(s.logs / "gate.log", "w") as log:
            gate = subprocess.Popen([s.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-k",
                                     GATE_TESTS, "tests/test_fastpath.py"], cwd=REPO, env=s.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        s.children.append(gate)
        gate_t0 = time.time()
    plans = plan_both(args, results) if "sweep" in args.stages else None
    if gate is not None:
        try:
            rc = gate.wait(timeout=max(1.0, args.gate_s - (time.time() - gate_t0)))
        except subprocess.TimeoutExpired:
            stop(gate)
            rc = None
        output = (s.logs / "gate.log").read_text(errors="replace")
        packs, why = gate_decision(rc, output)
        took = time.time() - gate_t0
        s.row("gate", f"{why} in {took:.0f} s with its interpreter's start; packs {'on' if packs else 'off'}",
              seconds=took, at=gate_t0 - s.started, rc=rc)
    else:
        s.row("gate", f"not run: {why}; packs {'on' if packs else 'off'}")

    # 3. the sweep: the rows first
    if plans is not None:
        plan = plans["on" if packs else "off"]
        sweep(s, args, plan, packs, results)
        hand_back_results(s, args, [])  # the records in OUTDIR now: a kill (SIGKILL) later cannot lose them
    else:
        s.row("sweep", "not asked for (STAGES)")

    # 4. benchmarks, one at a time on the idle device
    if "bench" in args.stages:
        for name, cap, needs, flags in (REHEARSAL_BENCHMARKS if s.device == "cpu" else BENCHMARKS):
            step = s.run(f"bench-{name}", [s.python, "-m", "nerepro", "bench", "--device", s.device, "--json",
                                           *flags.split()], cap, needs=needs)
            with open(s.work / "bench.jsonl", "a") as f:
                f.writelines(line + "\n" for line in step.output.splitlines() if line.startswith("{"))
    else:
        s.row("bench", "not asked for (STAGES)")

    # 5. the other GPU tests and the smoke
    if "tests" not in args.stages:
        s.row("tests", "not asked for (STAGES)")
    elif s.device == "cpu":  # a CPU trains C1/C2 too slowly for a rehearsal: F1 here
        s.row("pytest-gpu", "skipped: no CUDA device (rehearsal)")
        s.run("smoke", [s.python, "scripts/gpu_smoke.py", "--device", "cpu", "--steps", "3", "--networks", "F1"], 60)
    else:
        s.run("pytest-gpu", [s.python, "-m", "pytest", "-q", "-rf", "--tb=short", "-p", "no:cacheprovider", "-m",
                             "gpu", "-k", f"not ({GATE_TESTS})", "tests"], 120)
        s.run("smoke", [s.python, "scripts/gpu_smoke.py", "--device", s.device, "--steps", "10"], 90)
    with contextlib.suppress(subprocess.TimeoutExpired):
        s.children[0].wait(timeout=max(1.0, min(30.0, s.left())))


def plan_both(args, results: Path) -> dict:
    """The lease plan with packs and without, for the time the sweep can have."""
    from .cost import observed_in
    from .lease_plan import CPU, H100, plan_lease, planned_runs

    device = CPU if args.device == "cpu" else H100
    if args.tflops:
        device = dataclasses.replace(device, tflops=args.tflops)
    runs, priority = planned_runs(args.configs, args.seeds, ["F1"], results)
    observed = observed_in(results)  # the rows' steps so far
    seconds = sweep_seconds(args.seconds, time.time() - args.started, gate_seconds(args))
    off = plan_lease(runs, seconds, 1, priority, device, observed=observed)
    return {"on": plan_lease(runs, seconds, args.max_pack, priority, device, observed=observed)
            if args.device != "cpu" else off, "off": off}


def sweep(s: Session, args, plan, packs: bool, results: Path) -> None:
    from .lease_plan import ROWS

    planned = [c.run_id for c in plan.order if c.run_id in plan.finishing]
    s.sections.append(("Sweep plan", plan_text(plan, packs)))
    (s.work / "runs.txt").write_text("".join(f"{r} {plan.bounds[r]:.1f}\n" for r in planned))
    if not planned:
        s.row("sweep", "skipped: " + ("every run is recorded" if not plan.order else "no run fits the time left"))
    else:
        limit = min(plan.seconds, s.left() - SWEEP_START_S - 8)
        workers = args.workers or plan.workers
        mode = "on" if packs and plan.max_pack > 1 else "off"
        note = f"{len(planned)} runs planned, {workers} worker{'s' if workers > 1 else ''}, packs " + \
            (f"of up to {plan.max_pack}" if mode == "on" else "off")
        s.run("sweep", [s.python, "-m", "nerepro", "sweep", *map(str, args.configs), "--results", str(results),
                        "--seeds", str(args.seeds), "--network", "F1", "--device", s.device,
                        "--workers-per-device", str(workers), "--pack", mode, "--max-pack", str(plan.max_pack),
                        "--checkpoint-every", "1000000000", "--runs", str(s.work / "runs.txt"),
                        *(["--threads", "1"] if s.device == "cpu" else []),  # a rehearsal beside other work
                        "--time-limit", f"{max(1.0, limit):.0f}"], limit + SWEEP_START_S + 5, note)
    ended = s.steps[-1] if s.steps and s.steps[-1].name == "sweep" else None
    gate_off = not packs and s.device != "cpu" and args.pack == "auto" and "gate" in args.stages
    s.head[1:1] = ["", *rows_lines(results, args, ROWS, plan, ended, gate_off)]
    s.write_summary()


def plan_text(plan, packs: bool) -> str:
    rows = "\n".join(f"- {r.label}: {r.done} of {r.todo} to do planned to finish"
                     + (f", the last at {r.end:.0f} s" if r.end is not None else "") for r in plan.rows)
    return (f"Workers {plan.workers}, packs of up to {plan.max_pack} (packs {'on' if packs else 'off'}), "
            f"--time-limit {plan.seconds:.0f} s. {plan.reason}\n\n{rows}")


def rows_lines(results: Path, args, rows, plan, ended: Step | None = None, gate_off: bool = False) -> list[str]:
    """The summary's first lines: each row of ROWS finished (all its seeds recorded) or not, and why: error
    records, the sweep's own end (a failure, its limit), the plan (without packs where the gate turned them
    off), or slower than planned."""
    from .grid import load_plan
    from .lease_plan import row_of
    from .results import ResultsDir

    store = ResultsDir(results)
    records = {}
    for path in store.runs.glob("*.json") if store.runs.is_dir() else []:
        try:
            records[path.stem] = json.loads(path.read_text()).get("status")
        except (OSError, ValueError):
            continue
    runs = [c for _, c in load_plan(args.configs, args.seeds)]
    planned = {r.label: r for r in plan.rows}
    finished, not_finished = [], []
    for i, (label, *_) in enumerate(rows):
        ids = [c.run_id for c in runs if row_of(c) == i]
        if not ids:
            continue
        done = sum(records.get(r) in ("converged", "not_converged", "diverged") for r in ids)
        if done == len(ids):
            finished.append(f"{label} ({done} of {len(ids)})")
            continue
        errors = sum(records.get(r) == "error" for r in ids)
        p = planned.get(label)
        why = (f"{errors} error records" if errors else
               f"the sweep {ended.status}" if ended is not None and ended.rc != 0 else
               ("the plan did not fit it in the time" + (" without packs (the gate turned them off)" if gate_off else ""))
               if p and p.done < p.todo else
               "no sweep ran" if ended is None else
               "slower than planned (its runs were planned to finish)")
        not_finished.append(f"{label} ({done} of {len(ids)}: {why})")
    lines = [f"**Rows finished:** {'; '.join(finished) or 'none'}."]
    if not_finished:
        lines.append(f"**Not finished:** {'; '.join(not_finished)}.")
    return lines


# ---- the command line -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nerepro.session", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "plan"):
        p = sub.add_parser(name)
        if name == "run":
            p.add_argument("out", type=Path, help="Where the hand-back goes (at most 8 files).")
        else:
            p.add_argument("configs", nargs="+", type=Path, help="Config files of the sweep.")
        p.add_argument("--seconds", type=float, required=True, help="The lease's budget in seconds.")
        p.add_argument("--seeds", type=int, default=10, help="The sweep's seeds (10).")
        p.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse.")
        p.add_argument("--results", type=Path, default=None,
                       help="A results directory extended in place (default: a fresh one).")
        p.add_argument("--results-from", default=None,
                       help="A results directory whose records the sweep skips and the hand-back brings back "
                            "(default: the checkout's results/f1; 'none': none).")
        p.add_argument("--max-pack", type=int, default=10, help="The largest pack (10).")
        p.add_argument("--tflops", type=float, default=None, help="A pack's sustained TFLOP/s (the H100 model's 40).")
        p.add_argument("--gate-s", type=float, default=GATE_S, help=f"The gate's limit ({GATE_S:g} s).")
    run = sub.choices["run"]
    run.add_argument("--config", dest="configs", action="append", type=Path, default=None,
                     help="A config file of the sweep (repeatable; configs/f1.toml).")
    run.add_argument("--stages", default="gate sweep bench tests", help="Which of gate sweep bench tests run.")
    run.add_argument("--pack", default="auto", choices=("auto", "on", "off"), help="auto: the gate decides.")
    run.add_argument("--workers", type=int, default=None, help="Override the plan's workers.")
    run.add_argument("--resume", type=Path, action="append", default=[], help="An earlier session's archive.")
    run.add_argument("--python", default=sys.executable, help="The interpreter of every step.")
    run.add_argument("--started", type=float, default=None, help="When the budget began (epoch seconds).")
    args = parser.parse_args(argv)
    if args.seconds < 30:
        print(f"error: --seconds must be at least 30, got {args.seconds:g}", file=sys.stderr)
        return 2
    if args.results_from is None:  # the committed F1 records, where the checkout has them
        args.results_from = REPO / "results" / "f1" if (REPO / "results" / "f1" / "runs").is_dir() else None
    elif args.results_from in ("", "none"):
        args.results_from = None
    elif not Path(args.results_from).is_dir():
        print(f"error: --results-from {args.results_from} is not a directory: give a results directory, or none",
              file=sys.stderr)
        return 2
    else:
        args.results_from = Path(args.results_from).resolve()
    if args.command == "plan":
        return print_plan(args)
    if missing := next((a for a in args.resume if not a.is_file()), None):
        print(f"error: --resume {missing} is not a file: give an earlier session's results.tar.gz or "
              "checkpoints.tar.gz", file=sys.stderr)
        return 2
    args.configs = args.configs or [REPO / "configs" / "f1.toml"]
    args.started = args.started or time.time()
    args.stages = args.stages.split()
    return run_session(args)


def print_plan(args) -> int:
    """The rows a lease of --seconds finishes at the planned pack rate and at the pessimistic one."""
    from .errors import ConfigError
    from .cost import observed_in
    from .lease_plan import CPU, H100, PESSIMISTIC_TFLOPS, plan_lease, planned_runs

    device = CPU if args.device == "cpu" else H100
    if args.tflops:
        device = dataclasses.replace(device, tflops=args.tflops)
    try:
        results = args.results or args.results_from
        runs, priority = planned_runs(args.configs, args.seeds, ["F1"], results)
        observed = observed_in(results)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gate_s = gate_seconds(args)
    seconds = sweep_seconds(args.seconds, SESSION_START_S, gate_s)
    rates = [device] if args.device == "cpu" else [device, dataclasses.replace(device, tflops=PESSIMISTIC_TFLOPS)]
    print(f"A lease of {args.seconds:.0f} s: the sweep can have {seconds:.0f} s (after the session's start, the gate "
          f"at its {gate_s:.0f} s and the sweep's start; {HANDBACK_S:.0f} s kept for the hand-back). "
          f"{len(runs)} runs not recorded{' in ' + str(results) if results else ''}.")
    for d in rates:
        plan = plan_lease(runs, seconds, args.max_pack if args.device != "cpu" else 1, priority, d, observed=observed)
        print(f"\nAt {d.tflops:g} TFLOP/s for packs ({d.name}): workers {plan.workers}, packs of up to "
              f"{plan.max_pack}; the sweep's --time-limit {plan.seconds:.0f} s, about "
              f"{seconds - plan.seconds:.0f} s left for the benchmarks.")
        for r in plan.rows:
            state = "finishes" if r.done == r.todo else f"does not finish ({r.done} of {r.todo})"
            print(f"  {r.label}: {r.todo} runs, {state}" + (f", the last at {r.end:.0f} s" if r.end else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
