#!/usr/bin/env bash
# F1's headline rows on this machine's CPU cores, in the background of other work: `make f1-cpu`.
#
#   scripts/f1_cpu.sh                    priority 1 of configs/f1.toml (Table 2's F1 rows, default reading) into
#                                        results/f1 for 2 h, then stop; run it again to continue
#   TIME=5h PRIORITY=2 scripts/f1_cpu.sh the Eq. (1) reading's rows too, for 5 hours
#   WORKERS=1 scripts/f1_cpu.sh          one single-threaded run at a time (a core left for other work)
#   FILL=1 TIME=2h scripts/f1_cpu.sh     start runs until 10 minutes before the sweep's pause at the end of TIME
#                                        (--fill), even those that cannot finish: the limit pauses them, the
#                                        next call continues them; after that only runs that fit start
#
# The sweep runs the code of the checkout's HEAD commit from its own worktree (.worktrees/f1-cpu-<commit>),
# so its records say git_dirty: false and editing the checkout meanwhile changes nothing it runs; records go
# into the checkout's results directory. Workers are single-threaded, one per core by default (the CPU's
# best throughput for F1, results/performance.md), niced. A run is started only if its estimated time fits
# what is left of TIME (the sweep's --time-limit); a run still going at the limit pauses in its checkpoint
# (results/f1/checkpoints/, ignored), copied at the end into results/f1/paused/ (`nerepro keep-paused`: commit it
# with the records), and the next call continues it, paused runs first, here or in a fresh checkout; with FILL=1 every
# run is started until 10 minutes (a quarter of a shorter TIME) before the pause, so the cores work to the end.
# The plan is printed first: the records' fastest speed scaled to this machine's by CALIBRATE seconds (default
# 10) of training each kind of run to do here, the workers side by side (`--calibrate`; the sweep times them
# again before it plans).
set -euo pipefail
{  # the whole script is read before it runs: editing the checkout meanwhile cannot change what runs
cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=${CONFIG:-configs/f1.toml}
RESULTS=${RESULTS:-results/f1}
PRIORITY=${PRIORITY:-1}
TIME=${TIME:-2h}
CALIBRATE=${CALIBRATE:-10}
CORES=$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')
WORKERS=${WORKERS:-$CORES}
THREADS=${THREADS:-1}
case ${FILL:-0} in
  0) fill= ;;
  1) fill=--fill ;;
  *) echo "f1-cpu: FILL takes 0 or 1, got '$FILL'" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if [ -z "${NEREPRO_DATA:-}" ] && [ -d "$ROOT/.data/FashionMNIST" ]; then
  export NEREPRO_DATA=$ROOT/.data  # the checkout's copy (else the default; the sweep stops at once without it)
fi

commit=$(git rev-parse HEAD)
tree=${TREES:-$ROOT/.worktrees}/f1-cpu-${commit:0:10}  # TREES: where the worktrees go
if [ ! -d "$tree" ]; then
  git worktree prune
  git worktree add --detach --quiet "$tree" "$commit"
fi
if [ -n "$(git status --porcelain --untracked-files=no -- nerepro configs)" ]; then
  echo "f1-cpu: the checkout has uncommitted changes to nerepro/ or configs/; the sweep runs commit ${commit:0:10} as committed"
fi
case $CONFIG in /*) config=$CONFIG ;; *) config=$tree/$CONFIG ;; esac  # the commit's config, or one given whole
case $RESULTS in /*) results=$RESULTS ;; *) results=$ROOT/$RESULTS ;; esac
run() {  # nerepro from the worktree, writing into the checkout's results
  (cd "$tree" && PYTHONPATH="$tree" OMP_NUM_THREADS=$THREADS nice -n "${NICE:-10}" \
    "$PYTHON" -m nerepro sweep "$config" --results "$results" --device cpu --priority "$PRIORITY" \
    --workers-per-device "$WORKERS" --threads "$THREADS" "$@")
}
echo "f1-cpu: commit ${commit:0:10}, $CONFIG priorities <= $PRIORITY -> $RESULTS, $WORKERS worker(s) x $THREADS thread(s), for $TIME"
run --dry-run --calibrate "$CALIBRATE"
status=0
run --time-limit "$TIME" --calibrate "$CALIBRATE" $fill || status=$?
# the paused runs' checkpoints beside the records ($RESULTS/paused/): committed or copied with them, they
# continue the runs in another checkout or on another machine
(cd "$tree" && PYTHONPATH="$tree" "$PYTHON" -m nerepro keep-paused --results "$results") ||
  echo "f1-cpu: keep-paused failed: run 'nerepro keep-paused --results $RESULTS' before this checkout goes" >&2
exit $status
}
