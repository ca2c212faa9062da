#!/usr/bin/env bash
# A GPU lease of a fixed length, turned into the paper's F1 results:
#   scripts/gpu_session.sh OUTDIR [SECONDS]          (default 600 s; finishes inside it, all output written)
# On a machine with one CUDA GPU, a preinstalled torch, Fashion-MNIST in $NEREPRO_DATA and no network; nothing
# is installed, nerepro runs from this checkout. In order, each step under its share of the budget:
#   1. `pytest -m gpu` and a smoke of train (F1, C1, C2 in fp32 and bf16; random data of CIFAR's shape where
#      CIFAR is absent) and of a two-worker sweep (configs/smoke.toml)            ~20%
# Records carry the commit named by $NEREPRO_GIT_COMMIT where set (a copied checkout's .git may be missing or stale).
#   2. configs/f1.toml, most valuable runs first, under `--time-limit`: the rest of the budget
#   3. `nerepro bench`: F1 and C1 in fp32/TF32 and bf16, timed after a device synchronisation   ~20%
#   4. the report (tables, figures, claims, protocol) of whatever finished          ~7%, at least 20 s
# OUTDIR receives at most 8 files: results.tar.gz (records, reports, sweep log), checkpoints.tar.gz (paused
# runs), summary.md, logs.tar.gz, env.txt, bench.jsonl, smoke.jsonl. RESUME="OUTDIR/results.tar.gz
# OUTDIR/checkpoints.tar.gz" continues an earlier session's sweep. Environment: PYTHON (python3), DEVICE
# (cuda), SEEDS (10), WORKERS (workers per GPU for the F1 sweep, 4), PACK (the sweep's --pack, auto; off
# by itself when the CUDA test of packs against runs alone fails), CONFIG (configs/f1.toml; several,
# space-separated), STAGES (which of checks sweep bench report to run; all).
# Rehearsal on a CPU (the CUDA-only steps reported as skipped): DEVICE=cpu SEEDS=1 scripts/gpu_session.sh OUT 90
set -uo pipefail
out=${1:?usage: scripts/gpu_session.sh OUTDIR [SECONDS]}
budget=${2:-600}
if ! [[ "$budget" =~ ^[0-9]+$ ]] || (( budget < 30 )); then
  echo "gpu_session.sh: SECONDS must be a whole number of seconds, at least 30, got '$budget'" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
resume=()
for archive in ${RESUME:-}; do  # paths as the caller gave them, before the cd below
  resume+=("$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")")
done
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-10}
WORKERS=${WORKERS:-4}
PACK=${PACK:-auto}
CONFIG=${CONFIG:-configs/f1.toml}
start=$(date +%s)
work=$(mktemp -d)
results=$work/results
logs=$work/logs
mkdir -p "$results" "$logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
summary=$work/summary.md
pack_s=10
report_s=$(( budget * 7 / 100 > 25 ? budget * 7 / 100 : 25 ))
bench_s=$(( budget / 5 ))
checks_s=$(( budget / 5 ))

elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( start + budget - pack_s - $(date +%s) )); }  # seconds before packing must begin

# step NAME SECONDS CMD...: run CMD under a timeout of at most SECONDS (and the time left), log it, note it
step() {
  local name=$1 limit=$2
  shift 2
  local room
  room=$(( $(left) - 5 ))  # timeout's --kill-after grace stays inside the budget
  (( limit > room )) && limit=$room
  if (( limit < 3 )); then
    echo "| $name | skipped: no time left | |" >> "$summary"
    return 0
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  local status="exit $rc"
  (( rc == 124 || rc == 137 )) && status="stopped at its ${limit} s limit"
  echo "| $name | $status | $(( $(date +%s) - t0 )) s |" >> "$summary"
  return 0
}

pack() {
  trap - EXIT
  {
    echo
    echo "Finished after $(elapsed) s of a ${budget} s budget."
    for f in "$logs/sweep.log" "$logs/bench.log" "$logs/pytest-gpu.log" "$logs/smoke.log"; do
      [ -f "$f" ] || continue
      echo
      echo "### $(basename "$f") (last lines)"
      echo '```'
      tail -n 15 "$f"
      echo '```'
    done
    for f in "$results/report/table2.md" "$results/report/protocol.md"; do
      [ -f "$f" ] && { echo; cat "$f"; }
    done
  } >> "$summary"
  cp "$summary" "$out/summary.md"
  [ -f "$logs/env.txt" ] && cp "$logs/env.txt" "$out/env.txt"
  [ -f "$work/bench.jsonl" ] && cp "$work/bench.jsonl" "$out/bench.jsonl"
  grep -h '^{' "$logs/smoke.log" > "$work/smoke.jsonl" 2>/dev/null && cp "$work/smoke.jsonl" "$out/smoke.jsonl"
  # checkpoints apart: a paused F1 run's is 23 MB (weights and Adam's moments), too big for some hand-backs
  tar -czf "$out/results.tar.gz" -C "$work" --exclude=results/checkpoints results
  if [ -n "$(ls -A "$results/checkpoints" 2>/dev/null)" ]; then
    tar -czf "$out/checkpoints.tar.gz" -C "$work" results/checkpoints
  fi
  tar -czf "$out/logs.tar.gz" -C "$work" logs
  rm -rf "$work"
}
trap pack EXIT

commit=${NEREPRO_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -z "${NEREPRO_GIT_COMMIT:-}" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi
{
  echo "# GPU session: nerepro"
  echo
  echo "Budget ${budget} s; device ${DEVICE}; config ${CONFIG}; ${SEEDS} seeds; ${WORKERS} workers per GPU; packs ${PACK};"\
       "started $(date -u +%Y-%m-%dT%H:%M:%SZ); commit ${commit}."
  echo
  echo "| step | status | time |"
  echo "|---|---|---|"
} > "$summary"

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version() if torch.cuda.is_available() else None); print('torchvision', torchvision.__version__); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  "$PY" -c "import typer, pandas, matplotlib; print('typer', typer.__version__, 'pandas', pandas.__version__, 'matplotlib', matplotlib.__version__)"
  echo "NEREPRO_DATA=${NEREPRO_DATA:-unset}"
} > "$logs/env.txt" 2>&1

for archive in "${resume[@]}"; do
  step "resume-$(basename "$archive" .tar.gz)" 60 tar -xzf "$archive" -C "$work"
done
STAGES=${STAGES:-checks sweep bench report}
stage() { [[ " $STAGES " == *" $1 "* ]]; }

# 1. correctness on this device
stage checks || checks_s=0
stage bench || bench_s=0
stage report || report_s=0
t1=$(( $(date +%s) + checks_s ))
if ! stage checks; then
  echo "| checks | not asked for (STAGES) | |" >> "$summary"
elif [ "$DEVICE" = cpu ]; then  # a CPU trains C1/C2 too slowly for a rehearsal: F1 here, C1 in the benchmarks
  echo "| pytest-gpu | skipped: no CUDA device (rehearsal) | |" >> "$summary"
  smoke=(--steps 3 --networks F1)
else
  step pytest-gpu $(( checks_s * 45 / 100 )) "$PY" -m pytest -q -rf --tb=short -p no:cacheprovider -m gpu tests
  smoke=(--steps 20)
  if grep -q "^FAILED .*test_cuda_pack" "$logs/pytest-gpu.log" 2>/dev/null; then  # wrong packs cost more than slow runs
    PACK=off
    echo "| packs | off for the sweep: the CUDA test of packs against runs alone failed | |" >> "$summary"
  fi
fi
stage checks && step smoke $(( t1 - $(date +%s) - checks_s / 4 )) "$PY" scripts/gpu_smoke.py --device "$DEVICE" "${smoke[@]}"
if stage checks && [ "$DEVICE" != cpu ]; then
  step smoke-sweep $(( t1 - $(date +%s) )) "$PY" -m nerepro sweep configs/smoke.toml --results "$work/smoke-sweep" \
    --device "$DEVICE" --workers-per-device 2
fi

# 2. the F1 sweep, headline rows first, until the time reserved for the benchmarks and the report
sweep_s=$(( $(left) - 10 - bench_s - report_s ))  # its own --time-limit, inside the step's timeout
if ! stage sweep; then
  echo "| sweep | not asked for (STAGES) | |" >> "$summary"
elif (( sweep_s > 10 )); then
  read -ra configs <<< "$CONFIG"
  step sweep $(( sweep_s + 5 )) "$PY" -m nerepro sweep "${configs[@]}" --results "$results" --seeds "$SEEDS" \
    --network F1 --device "$DEVICE" --workers-per-device "$([ "$DEVICE" = cpu ] && echo 1 || echo "$WORKERS")" \
    --checkpoint-every 60 --time-limit "$sweep_s" --pack "$PACK"
else
  echo "| sweep | skipped: no time left | |" >> "$summary"
fi

# 3. benchmarks, one at a time on an idle device
bench_end=$(( $(date +%s) + $(left) - report_s ))
bench() {
  local name=$1
  shift
  step "bench-$name" $(( bench_end - $(date +%s) )) "$PY" -m nerepro bench --device "$DEVICE" --json "$@"
  grep -h '^{' "$logs/bench-$name.log" >> "$work/bench.jsonl" 2>/dev/null
}
if ! stage bench; then
  echo "| bench | not asked for (STAGES) | |" >> "$summary"
elif [ "$DEVICE" = cpu ]; then
  bench f1-b1000 --network F1 --batch-size 1000 --alpha 1.5 --steps 5 --warmup 1
  bench c1-b100 --network C1 --batch-size 100 --alpha 1 --steps 1 --warmup 0 --precision bf16
else
  bench f1-b100-pack10 --network F1 --batch-size 100 --alpha 1.5 --steps 300 --warmup 20 --pack 10
  bench f1-b2000-pack10 --network F1 --batch-size 2000 --alpha 1.5 --steps 100 --warmup 10 --pack 10
  bench f1-b100 --network F1 --batch-size 100 --alpha 1 --steps 500 --warmup 50
  bench f1-b2000 --network F1 --batch-size 2000 --alpha 1.5 --steps 200 --warmup 20
  bench f1-b100-compiled --network F1 --batch-size 100 --alpha 1 --steps 500 --warmup 50 --compile default
  bench c1-b5000-fp32 --network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 --compile off
  bench c1-b5000-bf16 --network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 --compile off --precision bf16
  bench c1-b100 --network C1 --batch-size 100 --alpha 1 --steps 100 --warmup 10 --compile off
  bench c1-b5000-bf16-compiled --network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 --precision bf16
fi
cat "$logs"/bench-*.log > "$logs/bench.log" 2>/dev/null

# 4. the report of whatever finished
if ! stage report; then
  echo "| report | not asked for (STAGES) | |" >> "$summary"
elif ls "$results"/runs/*.json > /dev/null 2>&1; then
  step report "$(left)" "$PY" -m nerepro report --results "$results"
else
  echo "| report | skipped: no finished runs | |" >> "$summary"
fi
exit 0
