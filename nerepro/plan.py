"""The dry run's plan: what a sweep has left to do and what it will cost, per network and priority.

`nerepro sweep CONFIGS --results R --dry-run` prints it (README, 'Sweeps'): runs to do and already recorded,
the packs the sweep would form, the expected steps, samples and training FLOP of the runs to do (cost.py:
the steps the time is for), and their time on one device at the --tflops or the measured throughput; then
the total, and the wall time on this machine's devices. `plan_rows` is the table as data, `render_table`
the aligned text.
"""

from __future__ import annotations

import dataclasses
import os

from .config import DEFAULT_PROTOCOL, NETWORKS, RunConfig
from .cost import (Throughput, _reference_steps, estimated_seconds, estimated_steps, flop_per_sample, n_train,
                   row_key)

MEASURED = "measured"  # the source of a time taken from finished records (else a --tflops name=rate)


@dataclasses.dataclass
class PlanRow:
    """One row of the plan: the runs of a network (and priority), estimates over those still to do."""
    network: str  # "total" for the total row
    priority: int | None  # None where the configs set no priorities, and for the total
    todo: int = 0
    recorded: int = 0
    packs: int = 0  # the units the sweep would hand out (a run alone is a pack of one)
    steps: int = 0
    samples: int = 0
    flop: float = 0.0
    seconds: dict = dataclasses.field(default_factory=dict)  # source -> seconds on one device, summed
    unknown: int = 0  # runs to do without a time estimate
    observed: int = 0  # runs to do whose steps are their row's finished runs' mean (else the cost model's guess)
    readings: dict = dataclasses.field(default_factory=dict)  # reading (a protocol's name, or "other") -> runs

    @property
    def time_s(self) -> float:
        """Seconds on one device of the runs to do that have an estimate."""
        return sum(self.seconds.values())

    def add(self, other: "PlanRow") -> None:
        for name in ("todo", "recorded", "packs", "steps", "samples", "flop", "unknown", "observed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reading, count in other.readings.items():
            self.readings[reading] = self.readings.get(reading, 0) + count
        for source, seconds in other.seconds.items():
            self.seconds[source] = self.seconds.get(source, 0.0) + seconds


def plan_rows(runs: list[RunConfig], done: set[str], priority: dict, max_pack: int = 1,
              throughput: Throughput | None = None, rates: dict[str, float] | None = None) -> list[PlanRow]:
    """Rows per network, and per priority where the runs have more than one, in the sweep's order (priority
    first), then the total. `done`: run ids already recorded; `max_pack`: 1 where the sweep would not pack."""
    from .sweep import form_packs

    by_priority = len({priority.get(c.run_id, 0) for c in runs}) > 1
    groups: dict[tuple, list[RunConfig]] = {}
    for cfg in runs:
        groups.setdefault((priority.get(cfg.run_id, 0) if by_priority else None, cfg.network), []).append(cfg)
    rows, total, reference = [], PlanRow("total", None), _reference_steps()
    for (rank, network), members in sorted(groups.items(), key=lambda kv: (
            kv[0][0] or 0, NETWORKS.index(kv[0][1]), kv[0][1])):
        todo = [c for c in members if c.run_id not in done]
        row = PlanRow(network, rank, todo=len(todo), recorded=len(members) - len(todo),
                      packs=len(form_packs(todo, max_pack, priority)))
        for cfg in members:
            reading = reading_name(cfg)
            row.readings[reading] = row.readings.get(reading, 0) + 1
        for cfg in todo:
            seconds, source = estimated_seconds(cfg, throughput, rates)
            if seconds is None:
                row.unknown += 1
            else:
                row.seconds[source] = row.seconds.get(source, 0.0) + seconds
            # the steps the time is for: a measured time's (its row's finished runs where the throughput keeps
            # them, a CPU plan's), else the cost model's guess, which a --tflops time is for
            observed = source == MEASURED and row_key(cfg) in throughput.observed
            steps = round(throughput.run_steps(cfg)) if observed else estimated_steps(cfg, reference)
            row.observed += observed
            row.steps += steps
            samples = steps * cfg.samples_per_step(n_train(cfg))
            row.samples += samples
            row.flop += samples * flop_per_sample(cfg.network)
        rows.append(row)
        total.add(row)
    return rows + [total]


def reading_name(cfg: RunConfig) -> str:
    """The named reading (config.PROTOCOLS) a run follows, or "other"."""
    from .results import DEFAULT_VARIANT, variant_of

    variant = variant_of({"network": cfg.network, "alpha": cfg.alpha, "batch_size": cfg.batch_size,
                          "config": cfg.record_config()})
    if variant == DEFAULT_VARIANT:
        return DEFAULT_PROTOCOL
    named = variant.split(", ")[0]
    return named.removeprefix("protocol=") if named.startswith("protocol=") and "," not in variant else "other"


def machine_wall_s(row: PlanRow, devices: int, workers: int) -> float:
    """Wall time of a row's runs (those with an estimate) spread over this machine: a --tflops time is a
    device's, shared by the devices; a measured time is a worker's (its runs shared the device with the
    machine's other workers as the sweep runs them), shared by the workers."""
    return sum(s / (workers if source == MEASURED else devices) for source, s in row.seconds.items())


def planning_throughput(records: list[dict], slots: list[str] | None, threads: int | None = None):
    """(Throughput, the records it is from) for a plan on `slots`: the finished records of this machine's kind
    of device (cpu or cuda). On a CPU, each worker has a core to itself: records of the planned thread count
    where there are any, each row at its fastest run's speed, and each run's steps from its row's finished
    runs on any device (a record made beside other work is slower than the sweep will be)."""
    from .cost import measured_throughput, one_machine

    kind = slots[0].split(":")[0] if slots else None
    timed = [r for r in records if r.get("status") not in (None, "error") and r.get("wall_s") and one_machine(r)
             and kind in (None, (r.get("provenance") or {}).get("device_type", kind))]
    if kind == "cpu":
        threads = threads or max(1, (os.cpu_count() or 1) // len(slots))
        timed = [r for r in timed if (r.get("provenance") or {}).get("threads") == threads] or timed
    return measured_throughput(timed, fastest=kind == "cpu", steps_from=records), timed


def dry_run_lines(runs: list[RunConfig], done: set[str], priority: dict, records: list[dict],
                  rates: dict[str, float], pack: str, resolved: str, max_pack: int, slots: list[str] | None,
                  results: str, listed: bool = False, threads: int | None = None,
                  calibrated=None) -> list[str]:
    """The dry run's report: the table, then what the time means and how to get it where it is unknown.
    `records`: those in the results directory (the speed of those run on this machine's kind of device, cpu or
    cuda, is the measured throughput); `pack` as given and as the sweep resolves it (on/off); `slots`: the
    sweep's workers on this machine (None: a Ray cluster, any device); `calibrated`: the Throughput that
    calibrate.py timed this machine into (its scale and here; none: the records' speed)."""
    kind = slots[0].split(":")[0] if slots else None
    throughput, timed = planning_throughput(records, slots, threads)
    if calibrated is not None:
        throughput.scale, throughput.here = dict(calibrated.scale), dict(calibrated.here)
    rows = plan_rows(runs, done, priority, max_pack if resolved != "off" else 1, throughput, rates)
    total = rows[-1]
    packs = f"on, up to {max_pack} F1 runs differing in seed and alpha per program" if resolved != "off" else \
        "off, one run per program"
    if pack == "auto" and slots:
        packs += " (--pack auto on a GPU)" if resolved != "off" else \
            " (--pack auto on a CPU; add --pack on to plan a GPU sweep's packs)"
    lines = [f"{total.todo:,} runs to do, {total.recorded:,} of {total.todo + total.recorded:,} already recorded in "
             f"{results}", f"packs: {packs}", *render_table(rows),
             "estimates: steps to L** = Table 2's alpha = 1 time x sqrt(B_opt/B) (rough: about 25%)" + (
                 f"; for {total.observed:,} of the runs to do the mean of their row's finished runs under their "
                 "reading, as their time is for" if total.observed else ""),
             "  samples = steps x B (2B with NE); FLOP of the conv and linear layers (loss checks not counted)"]
    for source in sorted(total.seconds):
        if source == MEASURED:
            on = ", ".join(sorted({(r.get("provenance") or {}).get("device") or "?" for r in timed}))
            lines.append(f"device time: at the speed of the {len(timed):,} runs recorded in {results} on {on} (a "
                         "packed run counts its share of its pack)" + (
                             "; on a CPU each row at its fastest run's speed with the sweep's threads per worker, and "
                             "steps as its row's finished runs took" if kind == "cpu" else "")
                         + ("; scaled to this machine's speed by --calibrate (above)" if throughput.scale else "")
                         + ("; kinds without records at their step time timed here (above)" if throughput.here else ""))
        else:
            lines.append(f"device time: at --tflops {source} TFLOP/s (the FLOP column / that rate)")
    if total.seconds:
        if slots:
            devices = sorted(set(slots))
            wall = _duration(machine_wall_s(total, len(devices), len(slots)))
            lines.append(f"this machine ({len(devices)} device{'s' * (len(devices) > 1)}: {', '.join(devices)}; "
                         f"{len(slots)} worker{'s' * (len(slots) > 1)}): about {wall} wall")
        lines.append(f"over n devices (--shard i/n or Ray): {_duration(total.time_s)} / n each"
                     + (", besides the runs without a time" if total.unknown else ""))
    if total.unknown:
        networks = list(dict.fromkeys(r.network for r in rows[:-1] if r.unknown))
        lines += [f"device time: unknown for {total.unknown:,} runs ({', '.join(networks)}): no finished runs of "
                  f"theirs in {results} to time{f' on {kind}' if kind else ''}, no --tflops;",
                  f"  pass --tflops fp32=T (or {networks[0]}=T), T the TFLOP/s that `nerepro bench --network "
                  f"{networks[0]} --device cuda`", f"  reports on your GPU, or let a few of their runs finish in "
                  f"{results} first"]
    if total.todo and not listed:
        lines.append("--list prints the ids of the runs to do, in the order the sweep takes them")
    return lines


def render_table(rows: list[PlanRow]) -> list[str]:
    """Aligned plain text: names left, numbers right; device time '?' where no run has an estimate, '+?' where
    some have none."""
    with_priority = any(r.priority is not None for r in rows)
    header = ["network", *(["priority"] if with_priority else []), "to do", "recorded", "packs", "steps",
              "samples", "FLOP", "device time", "speed", "readings"]
    table = [header]
    for r in rows:
        time = "-" if not r.todo else "?" if r.unknown == r.todo else _duration(r.time_s) + ("+?" if r.unknown else "")
        speed = ", ".join(sorted(r.seconds)) or "-"  # "measured", or the --tflops name=TFLOP/s that applied
        table.append([r.network, *([("" if r.priority is None else str(r.priority))] if with_priority else []),
                      f"{r.todo:,}", f"{r.recorded:,}", f"{r.packs:,}", _sci(r.steps), _sci(r.samples), _sci(r.flop),
                      time, speed, _readings(r)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = {0, len(header) - 2, len(header) - 1}  # network, speed and readings: text
    return ["  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
                      ).rstrip() for row in table]


def _readings(row: PlanRow) -> str:
    """'step', 'keras,eq1', 'other': the row's readings (the total: their count)."""
    if row.network == "total":
        return f"{len(row.readings)} kinds" if len(row.readings) > 1 else next(iter(row.readings), "-")
    return ",".join(sorted(row.readings, key=lambda name: name == "other"))


def _sci(x: float) -> str:
    """480, 4.12e6, 9.03e16: three digits, short exponents."""
    return f"{x:.0f}" if x < 1e4 else f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


def _duration(seconds: float) -> str:
    """45 s, 38 min, 5.2 h, 1,234 h: hours above 90 minutes, the unit GPU time is counted in."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{hours:,.0f} h"
