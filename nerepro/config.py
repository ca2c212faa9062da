"""One run's settings: a frozen dataclass holding every default, and the run id derived from it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from .errors import ConfigError
from .fastpath import COMPILE_MODES, PRECISIONS
from .paper import TABLE_1
from .sampling import VERSION as SAMPLER_VERSION

NETWORKS = ("F1", "C1", "C2")
OPTIMIZERS = ("adam", "sgd")
REFERENCES = ("minibatch", "full")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}  # Keras' defaults (README, protocol table)
# result-changing fields added later, with the value that leaves the ids of earlier records alone (for
# sampler_version: the device-dependent sampler of those records, which no longer runs)
LATER_FIELDS = {"precision": "fp32", "reference": "minibatch", "stop_loss": "full", "sampling": "independent",
                "sampler_version": 1, "adam_update": "pytorch"}
ADAM_UPDATES = ("pytorch", "keras")
# Named readings of the paper's open choices (configs/README.md, protocol table): shorthands for several
# settings. "keras", the default: how a Keras user of the paper's time would have run it: model.fit over
# batches of 2B ([B; B']), "the training loss" as fit's epoch-end logs["loss"] (the mean NE loss of the
# epoch's steps), Keras' Adam. "eq1": L(w) of Eq. (1) over the whole training set every 50 steps, B and B'
# drawn independently each step, PyTorch's Adam (nerepro's default before the protocol study).
PROTOCOLS = {"keras": {"check_every": "epoch", "stop_loss": "ne_epoch_mean", "sampling": "paired",
                       "adam_update": "keras"},
             "eq1": {"check_every": 50, "stop_loss": "full", "sampling": "independent", "adam_update": "pytorch"},
             # a hand-written loop that tests the loss it just computed, alpha L_B + (1 - alpha) L_B', at every
             # step: a TF2 GradientTape loop over a shuffled dataset of 2B-sample batches with Keras' Adam, i.e.
             # the Keras reading's draws and update (so both share a trajectory until the first halving) with
             # only the reading changed (configs/README.md, protocol table)
             "step": {"check_every": 1, "stop_loss": "step", "sampling": "paired", "adam_update": "keras"},
             # the Keras reading read by a callback at every batch's end: since TF 2.2 logs["loss"] there is
             # the running mean of the epoch's NE losses so far
             "keras-running": {"check_every": 1, "stop_loss": "running", "sampling": "paired",
                               "adam_update": "keras"}}
DEFAULT_PROTOCOL = "keras"
STOP_LOSSES = ("full", "epoch_mean", "ne_epoch_mean", "step", "running")
STEP_READINGS = ("step", "running")  # read at every step, on the losses the step itself computed
# How each reading of "the training loss" is named where it is shown (progress, end line)
READING_NAMES = {"full": "L(w)", "epoch_mean": "epoch mean L_B", "ne_epoch_mean": "epoch mean NE loss",
                 "step": "step NE loss", "running": "running epoch mean NE loss"}
SAMPLINGS = ("independent", "epoch", "paired")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Fields marked (id) change the result and enter the run id."""

    network: str  # (id) "F1" | "C1" | "C2" (Table 1)
    alpha: float  # (id) noise-enhancement factor of Eq. (6); 1 is plain minibatch training
    batch_size: int  # (id) B, the size of each of the two minibatches B and B'
    seed: int = 0  # (id) weights' initialisation and both minibatch streams
    optimizer: str = "adam"  # (id) "adam" (Sec. 3) or "sgd"
    lr: float | None = None  # (id) initial learning rate; None -> Keras' default for the optimizer
    adam_eps: float = 1e-7  # (id) Keras' Adam epsilon (PyTorch's default is 1e-8)
    # The four readings below default to the Keras reading (PROTOCOLS["keras"]); --protocol eq1 names the other.
    adam_update: str = "keras"  # (id) where eps enters Adam's step: "pytorch" (to sqrt(v_hat)) or "keras" (to sqrt(v))
    check_every: int | str = "epoch"  # (id) steps between checks of the training loss, or "epoch": at each epoch's end
    max_steps: int = 100_000  # (id) a run not below L** by then ends as not_converged
    subset: int | None = None  # (id) train on the first N training samples only (quick runs, tests)
    l_star: float | None = None  # (id) loss that halves the learning rate; None -> Table 1
    l_star_star: float | None = None  # (id) loss that ends training; None -> Table 1
    ghost_batch_size: int = 100  # (id) samples per ghost batch in C1/C2's batch norm (Sec. 3)
    bn_eps: float = 1e-3  # (id) batch norm epsilon (Keras' default)
    bn_momentum: float = 0.01  # (id) PyTorch convention; Keras' moving-average momentum 0.99
    check_gate: float = 4.0  # (id) full checks every check_every steps once the mean minibatch loss < gate x target; 0 = always
    check_budget: float = 0.02  # (id) before that, full checks only within this share of the training compute
    precision: str = "fp32"  # (id) "fp32" (TF32 convolutions on CUDA), "tf32" (TF32 matmuls too) or "bf16"
    stop_loss: str = "ne_epoch_mean"  # (id) the loss L* and L** are read on: "full" (Eq. 1), "epoch_mean",
    # "ne_epoch_mean", or at every step "step" (the step's own NE loss) or "running" (its epoch's running mean)
    sampling: str = "paired"  # (id) how B and B' are drawn: "independent", "epoch", "paired"
    reference: str = "minibatch"  # (id) what replaces grad L in Eq. (5): "minibatch" B' (Eq. 6) or "full" grad L
    sampler_version: int = SAMPLER_VERSION  # (id) the minibatch sampler's rule (sampling.py); only the current runs
    compile: str = "auto"  # "auto" (torch.compile for C1/C2 on CUDA) | "off" | "default" | "reduce-overhead"; not in the id
    check_chunk: int = 10_000  # samples per forward pass in loss checks; memory only, not the result
    check_early_exit: bool = True  # stop a check once its partial sum proves L >= target (same decisions)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"; not part of the run id
    trace: bool = False  # keep every step's L_B and NE loss (DIR/traces/<run_id>.csv.gz); not part of the run id

    def __post_init__(self):
        validate(self)

    @property
    def dataset(self) -> str:
        return TABLE_1[self.network]["dataset"]

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    @property
    def target_losses(self) -> tuple[float, float]:
        """(L*, L**): this run's thresholds, Table 1 unless overridden."""
        row = TABLE_1[self.network]
        l1 = row["l_star"] if self.l_star is None else self.l_star
        l2 = row["l_star_star"] if self.l_star_star is None else self.l_star_star
        return float(l1), float(l2)

    @property
    def effective_stop_loss(self) -> str:
        """At alpha = 1 the NE loss is L_B itself, so ne_epoch_mean is epoch_mean (one run, one id)."""
        return "epoch_mean" if self.alpha == 1 and self.stop_loss == "ne_epoch_mean" else self.stop_loss

    @property
    def effective_sampling(self) -> str:
        """At alpha = 1 there is no B', so paired sampling is epoch sampling."""
        return "epoch" if self.alpha == 1 and self.sampling == "paired" else self.sampling

    @property
    def effective_reference(self) -> str:
        """At alpha = 1 Eq. (6) has no reference term, so the reference setting does not apply."""
        return self.reference if self.alpha != 1 else "minibatch"

    def steps_per_epoch(self, n_train: int) -> int:
        """Steps that read the training set once: N / B, or N / 2B when B and B' are halves of one batch."""
        per_step = 2 * self.batch_size if self.effective_sampling == "paired" and self.alpha != 1 else self.batch_size
        return math.ceil(n_train / per_step)

    def check_interval(self, n_train: int) -> int:
        """Steps between loss checks: check_every, or one epoch with check_every = "epoch"."""
        return self.steps_per_epoch(n_train) if self.check_every == "epoch" else self.check_every

    @property
    def effective_adam_update(self) -> str:
        return self.adam_update if self.optimizer == "adam" else LATER_FIELDS["adam_update"]

    def effective_readings(self) -> dict:
        """stop_loss, sampling and reference as they take effect in this run."""
        return {"reference": self.effective_reference, "stop_loss": self.effective_stop_loss,
                "sampling": self.effective_sampling, "adam_update": self.effective_adam_update}

    @property
    def uses_ghost_batch_norm(self) -> bool:
        return self.network in ("C1", "C2")

    @property
    def batch_multiple(self) -> int:
        """Batch sizes must be multiples of this: the ghost-batch size for C1/C2, else 1."""
        return self.ghost_batch_size if self.uses_ghost_batch_norm else 1

    def samples_per_step(self, n_train: int) -> int:
        """Training samples read per step: B, 2B when B' is used, B + N with the full-gradient reference."""
        if self.alpha == 1:
            return self.batch_size
        return self.batch_size + (n_train if self.reference == "full" else self.batch_size)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def result_fields(self) -> dict:
        """The settings that change the result, with defaults resolved (what the run id hashes).

        Settings added after the first release enter only when set away from their default, so records
        written before they existed keep their ids.
        """
        l_star, l_star_star = self.target_losses
        effective = {**{k: getattr(self, k) for k in LATER_FIELDS}, **self.effective_readings()}
        later = {k: v for k, v in effective.items() if v != LATER_FIELDS[k]}
        return {**later, **{
            "network": self.network,
            "alpha": float(self.alpha),
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
            "optimizer": self.optimizer,
            "lr": self.learning_rate,
            "adam_eps": float(self.adam_eps) if self.optimizer == "adam" else None,
            "check_every": self.check_every if self.check_every == "epoch" else int(self.check_every),
            "check_gate": float(self.check_gate),
            "check_budget": float(self.check_budget),
            "max_steps": int(self.max_steps),
            "subset": self.subset,
            "l_star": l_star,
            "l_star_star": l_star_star,
            "ghost_batch_size": int(self.ghost_batch_size) if self.uses_ghost_batch_norm else None,
            "bn_eps": float(self.bn_eps) if self.uses_ghost_batch_norm else None,
            "bn_momentum": float(self.bn_momentum) if self.uses_ghost_batch_norm else None,
        }}

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of `result_fields`: stable across processes, machines and devices."""
        canonical = json.dumps(self.result_fields(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        return f"{self.network}-a{self.alpha:g}-b{self.batch_size}-s{self.seed}-{digest}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def record_config(self) -> dict:
        """Every field as run: defaults resolved (L*, L**, lr) and the readings as they take effect."""
        return {**self.to_dict(), **self.effective_readings(), **self.result_fields()}

    @classmethod
    def from_record(cls, record: dict) -> "RunConfig":
        """The settings a record ran (its `config`, record_config's); a record older than a field ran its legacy
        value (LATER_FIELDS); fields this version does not know are left out."""
        config = {**LATER_FIELDS, **record["config"]}
        return cls(**{k: v for k, v in config.items() if k in cls.__dataclass_fields__ and v is not None})


def with_protocol(name: str | None, settings: dict) -> dict:
    """`settings` with a named protocol's readings filled in where `settings` does not set them."""
    if name is None:
        return settings
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    return {**PROTOCOLS[name], **settings}


def validate(cfg: RunConfig) -> None:
    """Reject settings that cannot run, with a message that names the fix (exit 2 at the CLI)."""
    if cfg.network not in NETWORKS:
        raise ConfigError(f"unknown network {cfg.network!r}: choose one of {', '.join(NETWORKS)}")
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or not math.isfinite(cfg.alpha):
        raise ConfigError(f"alpha must be a finite number, got {cfg.alpha!r}: pass e.g. --alpha 1.5")
    for name in ("lr", "adam_eps", "l_star", "l_star_star", "bn_eps", "bn_momentum", "check_gate", "check_budget"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ConfigError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    if cfg.adam_eps < 0 or cfg.bn_eps <= 0 or not 0 <= cfg.bn_momentum <= 1:
        raise ConfigError(f"need adam-eps >= 0, bn-eps > 0 and 0 <= bn-momentum <= 1, got {cfg.adam_eps}, "
                          f"{cfg.bn_eps}, {cfg.bn_momentum}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {cfg.batch_size!r}")
    if cfg.uses_ghost_batch_norm and cfg.batch_size % cfg.ghost_batch_size:
        raise ConfigError(
            f"batch size {cfg.batch_size} cannot be split into ghost batches of {cfg.ghost_batch_size} "
            f"for {cfg.network}: use a multiple of {cfg.ghost_batch_size}"
        )
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not (cfg.learning_rate > 0 and math.isfinite(cfg.learning_rate)):
        raise ConfigError(f"learning rate must be a positive finite number, got {cfg.lr!r}")
    if cfg.check_every != "epoch" and (not isinstance(cfg.check_every, int) or isinstance(cfg.check_every, bool)
                                       or cfg.check_every < 1):
        raise ConfigError(f"check-every must be a positive number of steps or 'epoch', got {cfg.check_every!r}")
    if not isinstance(cfg.trace, bool):
        raise ConfigError(f"trace must be true or false, got {cfg.trace!r}")
    if cfg.adam_update not in ADAM_UPDATES:
        raise ConfigError(f"unknown Adam update {cfg.adam_update!r}: choose one of {', '.join(ADAM_UPDATES)}")
    for name in ("max_steps", "ghost_batch_size", "check_chunk"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if cfg.subset is not None and (not isinstance(cfg.subset, int) or cfg.subset < 1):
        raise ConfigError(f"subset must be a positive number of samples, got {cfg.subset!r}")
    if cfg.uses_ghost_batch_norm and cfg.check_chunk % cfg.ghost_batch_size:
        raise ConfigError(f"check chunk {cfg.check_chunk} must be a multiple of the ghost-batch size "
                          f"{cfg.ghost_batch_size}")
    if cfg.uses_ghost_batch_norm and cfg.subset is not None and cfg.subset % cfg.ghost_batch_size:
        raise ConfigError(f"subset {cfg.subset} must be a multiple of the ghost-batch size {cfg.ghost_batch_size} "
                          f"for {cfg.network}")
    if cfg.subset is not None and cfg.batch_size > cfg.subset:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the training subset of {cfg.subset}: lower one")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.stop_loss not in STOP_LOSSES:
        raise ConfigError(f"unknown stop loss {cfg.stop_loss!r}: choose one of {', '.join(STOP_LOSSES)}")
    if cfg.sampling not in SAMPLINGS:
        raise ConfigError(f"unknown sampling {cfg.sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if cfg.reference == "full" and (cfg.stop_loss not in ("full", "epoch_mean") or cfg.sampling != "independent"):
        raise ConfigError("--reference full draws no B': use it with --stop-loss full or epoch_mean and "
                          "--sampling independent (e.g. --protocol eq1)")
    if cfg.stop_loss in STEP_READINGS and cfg.check_every != 1:
        raise ConfigError(f"--stop-loss {cfg.stop_loss} is read at every step: use --check-every 1 "
                          f"(--protocol {'step' if cfg.stop_loss == 'step' else 'keras-running'} sets both)")
    if cfg.stop_loss == "full" and cfg.check_every == 1:
        raise ConfigError("--stop-loss full with --check-every 1 evaluates L(w) over the whole training set at "
                          "every step: read the step's own loss (--protocol step), its epoch's running mean "
                          "(--protocol keras-running), or check L(w) every 50 steps (--protocol eq1)")
    if cfg.sampler_version != SAMPLER_VERSION:
        raise ConfigError(f"sampler version {cfg.sampler_version!r} no longer runs (version 1 drew different "
                          f"minibatches on each device; its records stay readable): use {SAMPLER_VERSION}")
    if cfg.reference not in REFERENCES:
        raise ConfigError(f"unknown reference {cfg.reference!r}: choose one of {', '.join(REFERENCES)}")
    if cfg.compile not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {cfg.compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if not (cfg.check_gate >= 0 and 0 <= cfg.check_budget <= 1):
        raise ConfigError(f"need check gate >= 0 and 0 <= check budget <= 1, got {cfg.check_gate}, {cfg.check_budget}")
    l_star, l_star_star = cfg.target_losses
    if not (0 < l_star_star <= l_star):
        raise ConfigError(f"need 0 < L** <= L*, got L*={l_star}, L**={l_star_star}")
