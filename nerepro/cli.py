"""The `nerepro` command line: thin options over the library, one-line errors with exit code 2."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from .errors import NereproError

# Typer's parse errors derive from click's ClickException, which recent Typer vendors: find it by name.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """Bad input is one line on stderr and exit code 2, never a traceback or a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("nerepro: interrupted", err=True)
            sys.exit(130)
        except _ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `nerepro`: show the help, not an error
                typer.echo(e.format_message())
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"nerepro: error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except NereproError as e:
            typer.echo(f"nerepro: error: {e}", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Reproduce 'Improved generalization by noise enhancement' (Mori & Ueda) end to end.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Fetch the datasets ahead of time.")
app.add_typer(data_app, name="data")

DataDir = Annotated[Optional[Path], typer.Option(
    help="Dataset directory (torchvision layout); default $NEREPRO_DATA, else ~/.cache/nerepro/data.")]
Device = Annotated[str, typer.Option(help="auto (first GPU, else CPU), cpu, cuda or cuda:N.")]


@app.command(short_help="Train one network to the paper's stopping rule; write its record.",
             epilog="Details: configs/README.md (the readings, --protocol), results/README.md (the record).")
def train(
    network: Annotated[str, typer.Option(help="F1 (Fashion-MNIST), C1 (CIFAR-10) or C2 (CIFAR-100).")],
    alpha: Annotated[float, typer.Option(help="Noise-enhancement factor of Eq. (6); 1 = plain training.")],
    batch_size: Annotated[int, typer.Option(help="Size B of each minibatch (multiple of 100 for C1/C2).")],
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and of both minibatch streams.")] = 0,
    optimizer: Annotated[str, typer.Option(help="adam (the paper's) or sgd.")] = "adam",
    lr: Annotated[Optional[float], typer.Option(help="Initial learning rate [default: 1e-3 adam, 1e-2 sgd].")] = None,
    max_steps: Annotated[int, typer.Option(help="Steps after which a run ends as not_converged.")] = 100_000,
    check_every: Annotated[Optional[str], typer.Option(
        help="Steps between checks of the training loss, or 'epoch' (at each epoch's end) [default: epoch].")] = None,
    subset: Annotated[Optional[int], typer.Option(help="Train on the first N training samples only.")] = None,
    adam_eps: Annotated[float, typer.Option(help="Adam's epsilon (Keras' default).")] = 1e-7,
    l_star: Annotated[Optional[float], typer.Option(help="Loss that halves the rate [default: Table 1].")] = None,
    l_star_star: Annotated[Optional[float], typer.Option(help="Loss that ends training [default: Table 1].")] = None,
    ghost_batch_size: Annotated[int, typer.Option(help="Ghost-batch size of C1/C2's batch norm.")] = 100,
    bn_eps: Annotated[float, typer.Option(help="Batch-norm epsilon (Keras' default).")] = 1e-3,
    bn_momentum: Annotated[float, typer.Option(help="Batch-norm momentum, PyTorch convention.")] = 0.01,
    check_gate: Annotated[float, typer.Option(
        help="Full loss checks every --check-every steps once the mean minibatch loss is below this many times "
             "the next target (L* or L**); 0 = at every check.")] = 4.0,
    check_budget: Annotated[float, typer.Option(
        help="Before that, full checks only within this share of the training compute.")] = 0.02,
    stop_loss: Annotated[Optional[str], typer.Option(
        help="The loss L* and L** are read on: full (Eq. 1 over the training set), epoch_mean (mean minibatch "
             "loss over the last epoch), ne_epoch_mean (the same for the NE loss), step (each step's own NE loss) "
             "or running (the NE losses' mean since the epoch began); step and running need --check-every 1 "
             "[default: ne_epoch_mean].")] = None,
    sampling: Annotated[Optional[str], typer.Option(
        help="independent (B, B' drawn afresh each step), epoch (each walks its own shuffled epochs), paired "
             "(halves of one 2B chunk of a shuffled epoch) [default: paired].")] = None,
    adam_update: Annotated[Optional[str], typer.Option(
        help="pytorch (eps added to sqrt(v_hat)) or keras (eps added to sqrt(v), as Keras' Adam) "
             "[default: keras].")] = None,
    protocol: Annotated[Optional[str], typer.Option(
        help="A named reading of the paper's open choices: keras (the default) = --check-every epoch --stop-loss "
             "ne_epoch_mean --sampling paired --adam-update keras; eq1 = --check-every 50 --stop-loss full "
             "--sampling independent --adam-update pytorch (L(w) of Eq. 1); step = the Keras reading's draws and "
             "Adam with --check-every 1 --stop-loss step (each step's own NE loss); keras-running = the same with "
             "--stop-loss running (the epoch's running mean). Options given beside it win.")] = None,
    precision: Annotated[str, typer.Option(
        help="fp32 (TF32 convolutions on CUDA), tf32 (TF32 matmuls too), bf16 (autocast body) or fp64 (a "
             "float64 reference: slow; two computations of a run agree to float64 rounding).")] = "fp32",
    reference: Annotated[str, typer.Option(
        help="minibatch (Eq. 6: a second minibatch B') or full (Eq. 5: the exact full-batch gradient; each step "
             "then costs B + N samples).")] = "minibatch",
    compile: Annotated[str, typer.Option(help="auto (torch.compile for C1/C2 on CUDA), off, default, reduce-overhead.")] = "auto",
    save_weights: Annotated[bool, typer.Option(
        help="Also write the final weights to DIR/<run_id>.weights.pt (for `nerepro noise --weights`).")] = False,
    trace: Annotated[bool, typer.Option(
        help="Keep every step's L_B and NE loss in <run_id>.trace.csv.gz beside the record (`nerepro "
             "passage` reads it).")] = False,
    full_checks: Annotated[bool, typer.Option(
        help="Full checks evaluate the whole training set (no early exit; same decisions, slower). With "
             "--check-gate 0 every check is such a pass.")] = False,
    device: Device = "auto",
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Directory for the record <run_id>.json.")] = Path("results/runs"),
):
    """Train one network to the paper's stopping rule and write its record.

    Example: nerepro train --network F1 --alpha 1.5 --batch-size 2000 --seed 0
    """
    from .config import RunConfig, with_protocol
    from .display import RunProgress, summary_line
    from .record import check_writable, write_json_atomic
    from .trace import write_record_trace
    from .train import train as run_training

    chosen = {k: v for k, v in dict(check_every=parse_check_every(check_every), stop_loss=stop_loss,
                                    sampling=sampling, adam_update=adam_update).items() if v is not None}
    cfg = RunConfig(network=network, alpha=alpha, batch_size=batch_size, seed=seed, optimizer=optimizer, lr=lr,
                    adam_eps=adam_eps, max_steps=max_steps, subset=subset, l_star=l_star,
                    l_star_star=l_star_star, ghost_batch_size=ghost_batch_size, bn_eps=bn_eps,
                    bn_momentum=bn_momentum, check_gate=check_gate, check_budget=check_budget, precision=precision,
                    reference=reference, compile=compile, check_early_exit=not full_checks, device=device,
                    trace=trace, **with_protocol(protocol, chosen))
    check_writable(out)
    weights = out / f"{cfg.run_id}.weights.pt" if save_weights else None
    with RunProgress(cfg.max_steps, cfg.run_id) as progress:
        record = run_training(cfg, data_dir=data_dir, progress=progress, save_weights=weights)
    path = out / f"{record['run_id']}.json"
    path = write_json_atomic(path, write_record_trace(record, path))
    typer.echo(summary_line(record, path) + (f" (weights: {weights})" if weights else ""))


@data_app.command("download", epilog="Details: README.md (Data).")
def data_download(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="fashion-mnist, cifar10, cifar100 [default: all three].")] = None,
    data_dir: DataDir = None,
):
    """Download datasets with torchvision (md5-checked) so later runs work offline."""
    from .data import DATASETS, download

    root = download(names or list(DATASETS), data_dir)
    typer.echo(f"datasets ready in {root}")


@app.command(short_help="Run the configs' grids: resumable, prioritised, time-limited.",
             epilog="Details: configs/README.md (configs, options, the plan); scripts/README.md (packs, Slurm, Ray).")
def sweep(
    configs: Annotated[list[Path], typer.Argument(help="Config files (configs/*.toml); runs shared by several "
                                                       "files run once.")],
    results: Annotated[Path, typer.Option(help="Results directory; records go to DIR/runs/.")],
    seeds: Annotated[Optional[int], typer.Option(help="Override the configs' seed count (seeds 0..N-1).")] = None,
    network: Annotated[Optional[list[str]], typer.Option(help="Only the runs of this network (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Plan, train nothing: per network (and priority) the runs to do "
                                               "and recorded, packs, estimated samples, FLOP and time.")] = False,
    list_runs: Annotated[bool, typer.Option(
        "--list", "--verbose", help="With --dry-run: also print the id of every run to do, in the sweep's order.")] = False,
    device: Device = "auto",
    workers_per_device: Annotated[Optional[int], typer.Option(
        help="Worker processes per GPU (or on the CPU) [default: 1 per GPU; on the CPU 1 per core].")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="Threads of each worker [default: the cores shared out among the workers]; e.g. 1 to leave "
             "cores free beside a sweep. A run's results on the CPU depend on its thread count.")] = None,
    max_priority: Annotated[Optional[int], typer.Option(
        "--priority", help="Only the runs of the configs' priorities up to this one (1: the headline rows).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Only shard i/n of the grid, 0 <= i < n (e.g. a Slurm "
                                                      "array task: $SLURM_ARRAY_TASK_ID/16).")] = None,
    runs_file: Annotated[Optional[Path], typer.Option(
        "--runs", help="Only the runs whose ids FILE lists, one per line (e.g. from --dry-run --list), in its "
                       "order; a line 'ID SECONDS' also gives the time its pack may take, used under --time-limit "
                       "until runs of its kind are measured (a GPU lease's session gives its plan so).")] = None,
    executor: Annotated[str, typer.Option(help="local (worker processes on this machine) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (e.g. auto); default: start a "
                                                        "local one.")] = None,
    gpus_per_run: Annotated[float, typer.Option(help="GPU fraction of each Ray task.")] = 1.0,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints of a running "
                                                         "run.")] = 300.0,
    pack: Annotated[str, typer.Option(
        help="on: train F1 runs that differ only in seed and alpha together, up to --max-pack per program; "
             "auto: on where the runs go to GPUs; off: one run per program.")] = "auto",
    max_pack: Annotated[int, typer.Option(help="The most runs in one pack.")] = 10,
    tflops: Annotated[Optional[str], typer.Option(
        help="With --dry-run: training throughputs that turn the estimated FLOP into time, as name=TFLOP/s "
             "pairs, the name a network or a precision, e.g. fp32=40,F1=2 (what `nerepro bench` reaches); "
             "default: the speed of the runs recorded in --results.")] = None,
    time_limit: Annotated[Optional[str], typer.Option(
        help="Wall time this sweep may take (seconds, or 90s, 10m, 2h): runs that cannot finish in the time "
             "left are not started, running ones pause in their checkpoints, and it exits 0; rerun to "
             "continue.")] = None,
    fill: Annotated[bool, typer.Option(
        help="With --time-limit: start every run while a quarter of the time (at most 10 min) is left, whether it "
             "can finish or not; the limit pauses it in its checkpoint and the next call continues it (a machine "
             "worked in stretches whose results directory stays, or whose paused runs are kept: keep-paused; not a "
             "lease whose checkpoints may not come back).")] = False,
    calibrate: Annotated[Optional[float], typer.Option(
        help="On the CPU: first train each kind of run to do (network, B, NE or not) for about this many seconds, "
             "the workers side by side, and plan at the records' speed times this machine's step time over "
             "theirs; 0: at the records' speed [default: 10 for a sweep with --time-limit, else 0; give it to "
             "--dry-run to see the plan the sweep will make]. Local CPU sweeps only; a GPU or Ray sweep plans at "
             "the records' speed.")] = None,
    data_dir: DataDir = None,
):
    """Run every run of the configs' grids not yet recorded in --results; kill it and rerun it at will.

    Example: nerepro sweep configs/paper.toml --results results/paper
    """
    from .display import SweepDisplay
    from .errors import ConfigError
    from .grid import load_plan, parse_shard
    from .grid import shard as take_shard
    from .results import ResultsDir
    from .sweep import (fill_until, pause_margin, paused_steps, pending_runs, resolve_pack, resumed_bound, run_sweep,
                        summarize)

    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r}: use local or ray")
    if workers_per_device is not None and workers_per_device < 1:
        raise ConfigError("--workers-per-device must be at least 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if calibrate is not None and not 0 <= calibrate < math.inf:
        raise ConfigError(f"--calibrate takes seconds, 0 or more (0: plan at the records' speed), got {calibrate:g}")
    if pack not in ("auto", "on", "off") or max_pack < 1:
        raise ConfigError(f"--pack takes auto, on or off and --max-pack a positive number, got {pack!r}, {max_pack}")
    if fill and time_limit is None:
        raise ConfigError("--fill goes with --time-limit (it starts runs that the limit pauses): add --time-limit, "
                          "or drop --fill")
    started = time.time()
    limit = parse_duration(time_limit) if time_limit is not None else None
    plan = load_plan(configs, seeds)
    priority = {cfg.run_id: rank for rank, cfg in plan}
    runs = [cfg for _, cfg in plan]
    if network:
        runs = [c for c in runs if c.network in network]
    if max_priority is not None:
        runs = [c for c in runs if priority[c.run_id] <= max_priority]
    if shard:
        runs = take_shard(runs, *parse_shard(shard))
    planned = {}
    if runs_file is not None:
        runs, planned = listed_runs(runs_file, [cfg for _, cfg in plan], runs)
    store = ResultsDir(results)
    if list_runs and not dry_run:
        raise ConfigError("--list goes with --dry-run (it lists the runs a sweep would do; nothing trains)")
    if dry_run:
        from .plan import dry_run_lines
        from .sweep import slots

        rates = parse_rates(tflops)
        done = store.done() if store.runs.is_dir() else set()
        if list_runs:
            for cfg in _in_order([c for c in runs if c.run_id not in done], runs_file, priority, store):
                typer.echo(cfg.run_id)
        where = slots(device, workers_per_device) if executor == "local" else None
        # a Ray cluster is not started for a dry run: auto is shown as packing
        resolved = resolve_pack(pack, options={"device": device}) if executor == "local" else pack
        records = _records(store) if store.runs.is_dir() else []
        calibrated = None
        if calibrate and not rates and where and where[0] == "cpu":
            from .plan import planning_throughput

            todo = _in_order([c for c in runs if c.run_id not in done], runs_file, priority, store)  # the sweep's
            calibrated = _calibrated(planning_throughput(records, where, threads)[0],
                                [c for c in todo if c.run_id not in planned], where, threads, calibrate, data_dir,
                                workers=min(len(where), len(todo)))
        for line in dry_run_lines(runs, done, priority, records, rates, pack, resolved, max_pack, where, str(results),
                                  listed=list_runs, threads=threads, calibrated=calibrated):
            typer.echo(line)
        if line := _paused_line([c for c in runs if c.run_id not in done], store):
            typer.echo(line)
        return
    from .record import check_writable

    check_writable(results)
    for note in store.prepare():
        typer.echo(note, err=True)
    todo = _in_order(pending_runs(runs, store), runs_file, priority, store)
    check_data(todo, data_dir) if executor == "local" else None
    typer.echo(f"{_todo_line(todo, runs)} -> {store.runs}" + (f" within {limit:g} s" if limit else ""))
    if limit and executor == "local":  # the plan of each run, for plan against actual (scripts/plan_vs_actual.py)
        from .plan import planning_throughput
        from .sweep import slots

        where = slots(device, workers_per_device)
        throughput, _ = planning_throughput(_records(store), where, threads)
        paused_at = paused_steps(store)
        unplanned = [c for c in todo if c.run_id not in planned]  # --runs SECONDS: the file's time stands
        if where[0] == "cpu" and (calibrate is None or calibrate) and unplanned:
            from .calibrate import SECONDS

            _calibrated(throughput, unplanned, where, threads, calibrate or SECONDS, data_dir, store,
                        workers=min(len(where), len(todo)))
        for cfg in todo:
            if (seconds := throughput.seconds(cfg)) is not None:
                factor = throughput.factor(cfg)  # the plan's calibration and steps, for plan against actual
                named = "here" if throughput.timed_here(cfg) else "-" if factor is None else f"{factor:.4g}"
                store.log(f"planned:{seconds:.4g}", cfg.run_id, f"factor:{named} steps:{throughput.run_steps(cfg):.0f}")
                if where[0] == "cpu":  # this machine's own speed, until the sweep measures runs of its kind;
                    # a paused run's for the steps it has left
                    bound = throughput.bound(cfg)
                    if cfg.run_id in paused_at:
                        bound = resumed_bound(bound, throughput.bound_steps(cfg), paused_at[cfg.run_id])
                    planned.setdefault(cfg.run_id, bound)
    display = SweepDisplay(len(todo))
    deadline = started + limit - pause_margin(limit) if limit else None
    options = dict(data_dir=str(data_dir) if data_dir else None, checkpoint_every_s=checkpoint_every,
                   on_event=display, deadline=deadline, pack=pack, max_pack=max_pack, priority=priority,
                   planned=planned, fill_until=fill_until(deadline, limit) if fill else None)
    if executor == "ray":
        options.update(address=address, gpus_per_run=gpus_per_run)
    else:
        options.update(device=device, workers_per_device=workers_per_device, threads=threads)
    try:
        run_sweep(todo, results, executor, **options)
    finally:
        display.close()
    ended = time.time()
    done = store.done()
    counts = summarize([r for r in _records(store) if r["run_id"] in {c.run_id for c in runs}])
    missing = [c.run_id for c in runs if c.run_id not in done]
    typer.echo(f"sweep: {counts.get('converged', 0)} converged, {counts.get('not_converged', 0)} not converged, "
               f"{counts.get('diverged', 0)} diverged, {counts.get('error', 0)} error; "
               f"{len(runs) - len(missing)} of {len(runs)} runs recorded in {store.runs}")
    if limit and missing:
        paused = sum(store.paused(r) for r in missing)
        head = f"time limit {limit:g} s reached after {ended - started:.0f} s" if ended >= deadline else \
            f"sweep ended after {ended - started:.0f} s of its {limit:g} s limit"  # none left fitted (or could start)
        typer.echo(f"{head}: {len(missing)} runs left "
                   f"({paused} paused in checkpoints, {len(missing) - paused} not started); rerun the same "
                   "command to continue")
    if counts.get("error", 0) or (missing and not limit):
        raise typer.Exit(1)


def _paused_line(pending: list, store, shown: int = 5) -> str | None:
    """The dry run's line on the runs to do that are paused in their checkpoints (the sweep continues them first):
    each with the step of its last pause in sweep.log; None where none is."""
    from .sweep import paused_steps

    paused = [c.run_id for c in pending if store.paused(c.run_id)]
    if not paused:
        return None
    at = paused_steps(store)
    named = ", ".join(f"{r} (step {at[r]:,})" if r in at else f"{r} (its step in its checkpoint)"
                      for r in paused[:shown])
    more = f" and {len(paused) - shown} more" if len(paused) > shown else ""
    return f"{len(paused)} paused in checkpoints, continued first (steps of their last pause): {named}{more}"


def _in_order(pending: list, runs_file: Path | None, priority: dict, store) -> list:
    """The runs to do in the sweep's order: a --runs file's as it lists them, else sweep_order with the runs
    paused in their checkpoints first within each priority (paused_first: finish what was begun)."""
    from .sweep import paused_first, sweep_order

    return pending if runs_file is not None else paused_first(sweep_order(pending, priority), store, priority)


def _calibrated(throughput, todo: list, where: list[str], threads: int | None, seconds: float,
               data_dir: Path | None, store=None, workers: int = 1):
    """Set throughput.scale and .here for a plan of `todo` on this machine's CPU workers (calibrate.py), `workers`
    of them side by side (as many as the sweep will run), print what was timed (and log it to the store's
    sweep.log: `calibrated:<factor>` beside the recorded kinds' run timed); return the throughput."""
    from .calibrate import calibrate, kinds
    from .sweep import worker_threads

    threads = threads or worker_threads(len(where))
    try:
        lines = calibrate(throughput, todo, workers, threads, seconds, str(data_dir) if data_dir else None)
    except RuntimeError as e:  # the plan is only less sure: the sweep goes on at the records' speed
        typer.echo(f"calibration failed ({e}): planning at the records' speed", err=True)
        return throughput  # calibrate sets them only once every kind is timed: still empty
    for line in lines:
        typer.echo(line)
    for cfg in kinds(todo, throughput) if store is not None else []:
        if (key := throughput.kind(cfg)[:3]) in throughput.scale:
            store.log(f"calibrated:{throughput.scale[key]:.4g}", cfg.run_id)
    return throughput


def listed_runs(path: Path, configs: list, kept: list) -> tuple[list, dict]:
    """The runs of `kept` (the configs' runs after --network, --priority, --shard) whose ids `path` lists, in
    its order, and the seconds given for them ('ID SECONDS' lines); an id that is not a run of the configs, or
    seconds that are not a positive number, is an error."""
    from .errors import ConfigError

    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise ConfigError(f"--runs {path}: cannot read it ({e.strerror}): give a file of run ids, one per line") from None
    ids, planned = [words[0] for words in lines], {}
    for words in lines:
        try:
            if len(words) > 2 or (len(words) == 2 and not float(words[1]) > 0):
                raise ValueError
        except ValueError:
            raise ConfigError(f"--runs {path}: the line {' '.join(words)!r} is not 'ID' or 'ID SECONDS' with "
                              "positive seconds") from None
        if len(words) == 2:
            planned[words[0]] = float(words[1])
    known = {c.run_id for c in configs}
    if unknown := [i for i in ids if i not in known]:
        raise ConfigError(f"--runs {path}: {len(unknown)} id(s) are not runs of the configs (first: {unknown[0]}); "
                          "`nerepro sweep CONFIGS --dry-run --list` prints theirs")
    by_id = {c.run_id: c for c in kept}
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id], planned


def check_data(runs: list, data_dir: Path | None) -> None:
    """Before a sweep trains anything: the dataset of each network it will train must be there (a run without
    it would only write an error record)."""
    from . import data as datasets

    for network in dict.fromkeys(c.network for c in runs):
        if problem := datasets.missing(datasets.NETWORK_DATASET[network], data_dir):
            raise datasets.DataError(f"{problem}; nothing was trained")


def parse_check_every(text: str | None) -> int | str | None:
    """'50' -> 50, 'epoch' -> 'epoch' (RunConfig validates the value)."""
    if text is None or text == "epoch":
        return text
    try:
        return int(text)
    except ValueError:
        from .errors import ConfigError

        raise ConfigError(f"--check-every takes a number of steps or 'epoch', got {text!r}") from None


def parse_rates(text: str | None) -> dict[str, float]:
    """'fp32=40,F1=2' -> {'fp32': 40.0, 'F1': 2.0} (TFLOP/s, for a precision or a network: cost.estimated_seconds)."""
    from .config import NETWORKS
    from .errors import ConfigError
    from .fastpath import PRECISIONS

    rates = {}
    for part in (text or "").split(","):
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--tflops takes name=TFLOP/s pairs, e.g. fp32=40,tf32=250, got {text!r}") from None
        if not rates[name.strip()] > 0:
            raise ConfigError(f"--tflops takes positive throughputs, got {text!r}")
        if name.strip() not in (*NETWORKS, *PRECISIONS):
            raise ConfigError(f"--tflops takes names {', '.join((*NETWORKS, *PRECISIONS))}, got {name.strip()!r}")
    return rates


def parse_duration(text: str) -> float:
    """'600', '90s', '10m', '2h' -> seconds."""
    from .errors import ConfigError

    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds != float("inf")):
        raise ConfigError(f"--time-limit takes a positive duration (600, 90s, 10m, 2h), got {text!r}")
    return seconds


def _todo_line(todo: list, runs: list) -> str:
    return f"{len(todo)} run{'' if len(todo) == 1 else 's'} to do ({len(runs) - len(todo)} of {len(runs)} already recorded)"


def _records(store) -> list[dict]:
    from .results import load_records

    return load_records(store.root)[0]


@app.command(short_help="Write DIR/runs.csv, one row per record.", epilog="Details: results/README.md")
def collect(results: Annotated[Path, typer.Option(help="Results directory of a sweep.")]):
    """Write DIR/runs.csv: one row per record (its fields without the curve), for pandas and the report."""
    from .results import collect as collect_records

    path, rows, notes = collect_records(results)
    for note in notes:
        typer.echo(note, err=True)
    typer.echo(f"{rows} runs -> {path}")


ResultsOpt = Annotated[Path, typer.Option(help="Results directory (records in DIR/runs/, or DIR/runs.csv).")]
OutOpt = Annotated[Optional[Path], typer.Option(help="Output directory [default: DIR/report].")]


@app.command("keep-paused", short_help="Copy paused runs' checkpoints beside the records, to commit or move.",
             epilog="Details: results/README.md")
def keep_paused(results: Annotated[Path, typer.Option(help="Results directory of a sweep.")]):
    """Copy each paused run's checkpoint into DIR/paused/ and drop the copies of runs recorded since: DIR's runs/,
    paused/ and sweep.log, committed or copied elsewhere, let a sweep there continue the paused runs (it restores
    the kept copies into DIR/checkpoints/ first). For a results directory that does not stay where it ran."""
    from .errors import ResultsError
    from .results import ResultsDir

    store = ResultsDir(results)
    if not store.runs.is_dir() and not store.checkpoints.is_dir():
        raise ResultsError(f"{results} is not a results directory (no runs/ or checkpoints/): give the --results "
                           "of a sweep")
    for note in store.keep_paused():
        typer.echo(note)
    kept = sorted(store.kept.glob("*.pt"))
    size = sum(p.stat().st_size for p in kept)
    typer.echo(f"{len(kept)} paused runs kept in {store.kept} ({size / 2 ** 20:.0f} MiB)" if kept else
               f"no paused runs to keep in {results}")


def _load_report_inputs(results: Path, out: Optional[Path]):
    """Results and output directory for the report commands; notes on partial data go to stderr."""
    from .report import load_results

    loaded = load_results(results)
    for note in loaded.notes:
        typer.echo(f"note: {note}", err=True)
    return loaded, out or results / "report"


@app.command(short_help="Write Tables 1-3 beside the paper's numbers.", epilog="Details: results/README.md")
def tables(results: ResultsOpt, out: OutOpt = None):
    """Write Tables 1-3 (Markdown, CSV, LaTeX) beside the paper's numbers, and print them."""
    from .tables import write_tables

    loaded, out = _load_report_inputs(results, out)
    typer.echo(write_tables(loaded, out))
    typer.echo(f"tables -> {out}")


@app.command(short_help="Write Figures 1-3 as PNG and PDF.", epilog="Details: results/README.md")
def plots(results: ResultsOpt, out: OutOpt = None):
    """Write Figures 1-3 (and Fig. 3 against samples processed) as PNG and PDF."""
    from .figures import write_figures

    loaded, out = _load_report_inputs(results, out)
    for line in write_figures(loaded, out):
        typer.echo(line)


@app.command(short_help="Test each claim of Sec. 3; write claims.md.", epilog="Details: results/README.md")
def claims(results: ResultsOpt, out: OutOpt = None):
    """Test each claim of Sec. 3 on the results and write claims.md."""
    from .claims import write_claims

    loaded, out = _load_report_inputs(results, out)
    typer.echo(_claims_line(write_claims(loaded, out), out))


def _claims_line(text: str, out: Path) -> str:
    verdicts = [line.rsplit("**", 2)[-2] for line in text.splitlines() if line.endswith("** |")]
    return f"claims -> {out / 'claims.md'}: " + ", ".join(
        f"{verdicts.count(v)} {v}" for v in ("supported", "not supported", "not enough data"))


@app.command(short_help="Set each reading's F1 results beside the paper's.", epilog="Details: configs/README.md")
def protocol(results: ResultsOpt, out: OutOpt = None):
    """Set each reading's F1 results (configs/protocol.toml) beside the paper's Tables 2-3: which one matches?"""
    from .protocol import write_protocol

    loaded, out = _load_report_inputs(results, out)
    typer.echo(write_protocol(loaded, out))


@app.command(short_help="First passage of each reading below L* (traced runs).",
             epilog="Details: configs/README.md (the readings).")
def passage(results: ResultsOpt, out: OutOpt = None):
    """For every run recorded with --trace: the step at which each reading of the training loss (the step's NE
    loss, its L_B, the epoch's running mean, the epoch mean, means over 2-30 steps) first falls below L* on that
    trajectory, and its spread on the plateau above L*; writes passage.md, passage.csv and passage.png.

    Example: nerepro passage --results results/f1 --out results/f1/report
    """
    from .errors import ResultsError
    from .passage import write_passage

    if not (results / "runs").is_dir():
        raise ResultsError(f"no records in {results / 'runs'}: run `nerepro sweep ... --results {results}` first")
    text = write_passage(results, out or results / "report")
    if text is None:
        raise ResultsError(f"no traced runs in {results}: record some with `nerepro train --trace` or "
                           "`trace = true` in a sweep config's [settings]")
    typer.echo(text)


@app.command(short_help="Rebuild runs.csv and every table, figure and claim at once.",
             epilog="Details: results/README.md")
def report(results: ResultsOpt, out: OutOpt = None):
    """Rebuild runs.csv, Tables 1-3, Figures 1-3, the claims and the protocol comparison from the records, and
    README.md, one page that holds them all.

    Example: nerepro report --results results/quick --out results/quick
    """
    from .claims import write_claims
    from .figures import write_figures
    from .headline import write_headline
    from .page import write_page
    from .passage import write_passage
    from .protocol import write_protocol
    from .results import collect as collect_records
    from .tables import write_tables

    path, rows, _ = collect_records(results)
    typer.echo(f"{rows} runs -> {path}")
    loaded, out = _load_report_inputs(results, out)
    write_tables(loaded, out)
    typer.echo(f"tables -> {out}")
    for line in write_figures(loaded, out):
        typer.echo(line)
    typer.echo(_claims_line(write_claims(loaded, out), out))
    write_protocol(loaded, out)
    typer.echo(f"protocol -> {out / 'protocol.md'}")
    if write_headline(loaded, out) is not None:
        typer.echo(f"F1's headline rows and the NE claim -> {out / 'headline.md'}")
    if write_passage(results, out) is not None:
        typer.echo(f"first passages of the readings -> {out / 'passage.md'}")
    typer.echo(f"page -> {write_page(loaded, results, out)}")


@app.command(short_help="Time the training loop against the device's peak.",
             epilog="Details: results/performance.md")
def bench(
    network: Annotated[str, typer.Option(help="F1, C1 or C2.")] = "F1",
    batch_size: Annotated[int, typer.Option(help="Minibatch size B.")] = 1000,
    alpha: Annotated[float, typer.Option(help="Noise-enhancement factor (alpha != 1 reads 2B per step).")] = 1.5,
    steps: Annotated[int, typer.Option(help="Steps to time, after the warm-up.")] = 100,
    warmup: Annotated[int, typer.Option(help="Steps the same run takes first, not timed (compilation, autotuning, "
                                             "CUDA-graph recording).")] = 20,
    check_every: Annotated[int, typer.Option(help="Steps between loss checks, as in a real run.")] = 50,
    precision: Annotated[str, typer.Option(help="fp32 (TF32 convolutions on CUDA), tf32 (matmuls too) or bf16.")] = "fp32",
    compile: Annotated[str, typer.Option(help="auto (on for C1/C2 on CUDA), off, default or reduce-overhead.")] = "auto",
    device: Device = "auto",
    data_dir: DataDir = None,
    pack: Annotated[int, typer.Option(help="Time this many runs (seeds 0..N-1) one after another and as one pack "
                                           "(F1); 1: a single run.")] = 1,
    workers: Annotated[int, typer.Option(help="With --pack: also time the runs in this many worker processes, "
                                              "as `sweep --workers-per-device` would (opt-in: it starts them).")] = 0,
    protocol: Annotated[Optional[str], typer.Option(
        help="Train under a named reading (keras, eq1, step, keras-running: see `nerepro train --help`); its "
             "cadence replaces --check-every. E.g. step times the per-step read and decision.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object instead of the summary line.")] = False,
):
    """Time the training loop: steps/s, samples/s, TFLOP/s against a matmul peak measured now, check share, memory,
    and with --compile reduce-overhead whether CUDA graphs were captured or skipped (and why).
    With --pack R: TFLOP/s of R runs as one pack against R runs one after another (and K worker processes).

    Example: nerepro bench --network C1 --batch-size 5000 --alpha 1.5 --precision bf16 --device cuda
    Example: nerepro bench --pack 10 --batch-size 2000 --workers 4 --device cuda
    """
    import json

    from .bench import bench as run_bench
    from .bench import bench_pack, pack_summary, summary
    from .errors import ConfigError

    if pack < 1:
        raise ConfigError(f"--pack takes a number of runs, at least 1, got {pack}")
    if workers and (pack == 1 or not 1 < workers <= pack):
        raise ConfigError(f"--workers goes with --pack R and takes 2 to R worker processes, got {workers}")
    if pack > 1:
        result = bench_pack(network, batch_size, alpha, steps, pack, device, precision, check_every, warmup,
                            str(data_dir) if data_dir else None, workers, protocol)
        typer.echo(json.dumps(result) if json_out else pack_summary(result))
        return
    result = run_bench(network, batch_size, alpha, steps, device, precision, check_every, compile, warmup,
                       str(data_dir) if data_dir else None, protocol)
    typer.echo(json.dumps(result) if json_out else summary(result))


@app.command(short_help="Measure the SGD noise at fixed weights (Eqs. 9-11).",
             epilog="Details: results/noise/README.md")
def noise(
    network: Annotated[str, typer.Option(help="F1, C1 or C2.")],
    batch_size: Annotated[int, typer.Option(help="Minibatch size B of the NE draws.")],
    alphas: Annotated[str, typer.Option(help="Comma-separated alphas; 1 is added if missing.")] = "1,1.5,2,3",
    draws: Annotated[int, typer.Option(help="Minibatch draws (each: B, B', and one plain batch per B_eff).")] = 400,
    out: Annotated[Path, typer.Option(help="Directory for noise.csv, noise.md and noise.png/.pdf.")] = Path("results/noise"),
    weights: Annotated[Optional[Path], typer.Option(help="Weights to measure at (`train --save-weights` or a "
                                                         "checkpoint); default: the seed's initialisation.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, the draws and the sketch.")] = 0,
    subset: Annotated[Optional[int], typer.Option(help="Use the first N training samples as the dataset.")] = None,
    sketch_dim: Annotated[int, typer.Option(help="Random directions kept (CountSketch rows).")] = 256,
    device: Device = "auto",
    data_dir: DataDir = None,
):
    """Measure the SGD noise at fixed weights: covariance trace vs Eq. (10), plain SGD at B_eff (Eq. 11), kurtosis.

    Example: nerepro noise --network F1 --batch-size 500 --alphas 1,1.5,2,3 --draws 400 --out R/noise
    """
    import math
    import time

    from .config import RunConfig
    from .errors import ConfigError
    from .models import build_model
    from .noise import draw_noise, load_weights, summarize_noise, write_noise_report
    from .train import prepare_data, resolve_device

    try:
        alpha_list = sorted({1.0, *(float(a) for a in alphas.split(","))})
    except ValueError:
        raise ConfigError(f"--alphas takes comma-separated numbers, got {alphas!r}") from None
    if not all(math.isfinite(a) for a in alpha_list):
        raise ConfigError(f"--alphas must be finite numbers, got {alphas!r}")
    if draws < 10 or sketch_dim < 1:
        raise ConfigError("--draws must be at least 10 and --sketch-dim at least 1")
    cfg = RunConfig(network=network, alpha=max(alpha_list), batch_size=batch_size, seed=seed, subset=subset)
    dev = resolve_device(device)
    data = prepare_data(cfg, None, dev, str(data_dir) if data_dir else None)
    model = build_model(network, seed=seed)
    if weights:
        load_weights(model, weights)
    model = model.to(dev)
    multiple = cfg.batch_multiple
    start = time.time()
    drawn = draw_noise(model, data.x_train, data.y_train, batch_size, alpha_list, draws, seed, sketch_dim, multiple)
    table = summarize_noise(drawn, batch_size, alpha_list, multiple, seed=seed)
    meta = {"network": network, "dataset": data.name, "n_train": data.n_train, "B": batch_size, "draws": draws,
            "weights": str(weights) if weights else f"initialisation, seed {seed}", "parameters": drawn.params,
            "sketch_dim": sketch_dim, "seed": seed, "device": str(dev), "wall_s": round(time.time() - start, 1),
            "date": time.strftime("%Y-%m-%d")}
    typer.echo(write_noise_report(table, meta, out))
    typer.echo(f"noise -> {out}")


def main() -> None:
    app()
