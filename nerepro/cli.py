"""The `nerepro` command line: thin options over the library, one-line errors with exit code 2."""

from __future__ import annotations

import sys
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


@app.command()
def train(
    network: Annotated[str, typer.Option(help="F1 (Fashion-MNIST), C1 (CIFAR-10) or C2 (CIFAR-100).")],
    alpha: Annotated[float, typer.Option(help="Noise-enhancement factor of Eq. (6); 1 = plain training.")],
    batch_size: Annotated[int, typer.Option(help="Size B of each minibatch (multiple of 100 for C1/C2).")],
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and of both minibatch streams.")] = 0,
    optimizer: Annotated[str, typer.Option(help="adam (the paper's) or sgd.")] = "adam",
    lr: Annotated[Optional[float], typer.Option(help="Initial learning rate [default: 1e-3 adam, 1e-2 sgd].")] = None,
    max_steps: Annotated[int, typer.Option(help="Steps after which a run ends as not_converged.")] = 100_000,
    check_every: Annotated[int, typer.Option(help="Steps between checks of the training loss.")] = 50,
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
    full_checks: Annotated[bool, typer.Option(
        help="Evaluate the whole training set at every check (no early exit; same decisions, slower).")] = False,
    device: Device = "auto",
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Directory for the record <run_id>.json.")] = Path("results/runs"),
):
    """Train one network to the paper's stopping rule and write its record.

    Example: nerepro train --network F1 --alpha 1.5 --batch-size 2000 --seed 0
    """
    from .config import RunConfig
    from .record import check_writable, write_json_atomic
    from .train import train as run_training

    cfg = RunConfig(network=network, alpha=alpha, batch_size=batch_size, seed=seed, optimizer=optimizer, lr=lr,
                    adam_eps=adam_eps, check_every=check_every, max_steps=max_steps, subset=subset, l_star=l_star,
                    l_star_star=l_star_star, ghost_batch_size=ghost_batch_size, bn_eps=bn_eps,
                    bn_momentum=bn_momentum, check_gate=check_gate, check_budget=check_budget,
                    check_early_exit=not full_checks, device=device)
    check_writable(out)
    with _progress_bar(cfg.max_steps, cfg.run_id) as progress:
        record = run_training(cfg, data_dir=data_dir, progress=progress)
    path = write_json_atomic(out / f"{record['run_id']}.json", record)
    typer.echo(summary_line(record, path))


def summary_line(record: dict, path: Path | None = None) -> str:
    """One line per finished run: id, status, step, losses, accuracy, wall time."""
    loss = record.get("train_loss")
    acc = record.get("test_acc")
    parts = [f"{record['run_id']}: {record['status']} at step {record['steps']}",
             f"train loss {loss:.4g}" if loss is not None else "train loss n/a",
             f"test acc {acc:.2f}%" if acc is not None else "test acc n/a",
             f"{record.get('wall_s', 0):.1f} s"]
    return ", ".join(parts) + (f" -> {path}" if path else "")


class _progress_bar:
    """A tqdm bar (step, last checked loss) on an interactive terminal; nothing otherwise."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.bar = total, label, None

    def __enter__(self):
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.label, unit="step", dynamic_ncols=True, leave=False)
        return self.update

    def update(self, step: int, loss: float) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix_str(f"L={loss:.4g}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


@data_app.command("download")
def data_download(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="fashion-mnist, cifar10, cifar100 [default: all three].")] = None,
    data_dir: DataDir = None,
):
    """Download datasets with torchvision (md5-checked) so later runs work offline."""
    from .data import DATASETS, download

    root = download(names or list(DATASETS), data_dir)
    typer.echo(f"datasets ready in {root}")


def main() -> None:
    app()
