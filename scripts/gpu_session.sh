#!/usr/bin/env bash
# A GPU lease of a fixed length turned into the paper's F1 rows, then the benchmarks a user's GPU-hours need:
#   scripts/gpu_session.sh OUTDIR [SECONDS]          (default 540 s; finishes inside it, all output written)
# The session is `python -m nerepro.session run` (nerepro/session.py: the steps, their order and limits); this
# wrapper starts its clock, reads the environment and runs it from the checkout, nothing installed.
# Environment: PYTHON (python3), DEVICE (cuda; cpu rehearses), SEEDS (10), CONFIG (configs/f1.toml; several,
# space-separated), STAGES (which of gate sweep bench tests run; all), PACK (auto: the gate decides; on, off),
# WORKERS (overrides the plan's), MAX_PACK (10), GATE_S (60), TFLOPS (a pack's rate for the plan; 40),
# RESULTS (a results directory extended in place), RESULTS_FROM (results/f1 by default, when the checkout has
# it: its records are skipped and handed back with the new ones; "none" for a fresh start), RESUME (archives of
# an earlier session), NEREPRO_DATA (else the checkout's .data/, else ~/.cache/nerepro/data), NEREPRO_GIT_COMMIT.
# Rehearsal on a CPU:
#   DEVICE=cpu SEEDS=1 CONFIG="configs/smoke.toml configs/f1.toml" scripts/gpu_session.sh OUT 120
set -uo pipefail
started=$(date +%s.%N)
out=${1:?usage: scripts/gpu_session.sh OUTDIR [SECONDS]}
budget=${2:-540}
if ! [[ "$budget" =~ ^[0-9]+$ ]] || (( budget < 30 )); then
  echo "gpu_session.sh: SECONDS must be a whole number of seconds, at least 30, got '$budget'" >&2
  exit 2
fi
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
args=(run "$(absolute "$out")" --seconds "$budget" --started "$started" --device "${DEVICE:-cuda}"
      --seeds "${SEEDS:-10}" --pack "${PACK:-auto}" --max-pack "${MAX_PACK:-10}" --gate-s "${GATE_S:-60}")
for config in ${CONFIG:-configs/f1.toml}; do args+=(--config "$(absolute "$config")"); done
for archive in ${RESUME:-}; do args+=(--resume "$(absolute "$archive")"); done
[ -n "${STAGES+x}" ] && args+=(--stages "$STAGES")
[ -n "${WORKERS:-}" ] && args+=(--workers "$WORKERS")
[ -n "${TFLOPS:-}" ] && args+=(--tflops "$TFLOPS")
[ -n "${RESULTS:-}" ] && args+=(--results "$(absolute "$RESULTS")")
if [ -n "${RESULTS_FROM:-}" ]; then
  case $RESULTS_FROM in none) args+=(--results-from none) ;; *) args+=(--results-from "$(absolute "$RESULTS_FROM")") ;; esac
fi
PY=${PYTHON:-python3}
args+=(--python "$PY")
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m nerepro.session "${args[@]}"
