#!/usr/bin/env bash
# A GPU lease of a fixed length, turned into the paper's F1 results, the headline first:
#   scripts/gpu_session.sh OUTDIR [SECONDS]          (default 600 s; finishes inside it, all output written)
# On a machine with one CUDA GPU, a preinstalled torch, Fashion-MNIST in $NEREPRO_DATA and no network; nothing
# is installed, nerepro runs from this checkout. In order (shares of the budget):
#   0. side by side, from the first second: the environment probe (one interpreter start), the sweep plan
#      (`python -m nerepro.session plan`: workers and pack size from the cost model and the last lease's
#      measurements) and the gate, the CUDA test of packs against runs alone, by itself
#      (`pytest -m gpu -k test_cuda_pack`, at most GATE_S, 30 s). Packs are used only if it passed: exit 0, a
#      test passed, none skipped. A timeout, a collection error, a missing pytest or no test turn them off.
#   1. the sweep of CONFIG, Table 2's and Table 3's F1 rows first (configs/f1.toml priorities 1-2), with the
#      plan's workers and pack size (summary.md says which and why), under --time-limit (a pack starts only
#      if its estimated time fits), with no periodic checkpoints: the budget left by the shares below
#   2. benchmarks a user's plan needs, one at a time on the idle GPU, in this order: C1 B = 100 eager,
#      --compile default, --compile reduce-overhead; C1 B = 5000 fp32 and bf16 compiled; C2 B = 100; F1
#      packs of 10 at B = 100 and 2000 (2026-11-28 measured F1 alone and C1 B = 5000 eager)         35%
#   3. the other GPU tests (`pytest -m gpu`, the pack test apart) and the smoke (scripts/gpu_smoke.py)  10%
#   4. the report (tables, figures, claims, protocol) of the results directory          7%, at least 25 s
#   5. the hand-back into OUTDIR, at most 8 files, none over 15 MiB, logs.tar.gz first: logs.tar.gz (every
#      step's log), results.tar.gz (the results directory: records, sweep log, report), summary.md
#      (written as the steps end), env.txt, bench.jsonl, smoke.jsonl, checkpoints.tar.gz (runs paused at
#      the limit, only if it fits 15 MiB: an F1 checkpoint alone is 22 MiB, so it almost never does)  10 s
# Environment: PYTHON (python3), DEVICE (cuda), SEEDS (10), CONFIG (configs/f1.toml; several, space-separated),
# STAGES (which of gate sweep bench tests report; all), PACK (auto: the gate decides; on or off: no gate),
# WORKERS (overrides the plan's workers), MAX_PACK (the largest pack the plan may choose, 10), GATE_S (30),
# RESULTS (a results directory the sweep extends in place: recorded runs are skipped, paused runs' checkpoints
# stay there), RESULTS_FROM (a results directory copied in first, e.g. results/f1: the sweep skips its runs,
# and results.tar.gz holds its records and the new ones), RESUME (archives of an earlier session, e.g.
# "OLD/results.tar.gz OLD/checkpoints.tar.gz", unpacked into the results directory).
# Records carry the commit named by $NEREPRO_GIT_COMMIT where set (a copied checkout's .git may be stale).
# Rehearsal on a CPU (the CUDA-only steps reported as skipped, packs off):
#   DEVICE=cpu SEEDS=1 CONFIG="configs/smoke.toml configs/f1.toml" scripts/gpu_session.sh OUT 120
set -uo pipefail
out=${1:?usage: scripts/gpu_session.sh OUTDIR [SECONDS]}
budget=${2:-600}
if ! [[ "$budget" =~ ^[0-9]+$ ]] || (( budget < 30 )); then
  echo "gpu_session.sh: SECONDS must be a whole number of seconds, at least 30, got '$budget'" >&2
  exit 2
fi
absolute() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }  # paths as the caller gave them
mkdir -p "$out"
out=$(cd "$out" && pwd)
resume=()
for archive in ${RESUME:-}; do
  resume+=("$(absolute "$archive")")
done
results_dir=
if [ -n "${RESULTS:-}" ]; then
  mkdir -p "$RESULTS" && results_dir=$(cd "$RESULTS" && pwd)
fi
results_from=
if [ -n "${RESULTS_FROM:-}" ]; then
  [ -d "$RESULTS_FROM" ] || { echo "gpu_session.sh: RESULTS_FROM=$RESULTS_FROM is not a directory" >&2; exit 2; }
  results_from=$(cd "$RESULTS_FROM" && pwd)
fi
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-10}
PACK=${PACK:-auto}
CONFIG=${CONFIG:-configs/f1.toml}
STAGES=${STAGES-gate sweep bench tests report}
GATE_S=${GATE_S:-30}
read -ra configs <<< "$CONFIG"
start=$(date +%s)
work=$(mktemp -d)
logs=$work/logs
results=${results_dir:-$work/results}
mkdir -p "$logs" "$results"
touch "$work/started"  # records newer than this are this session's
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
summary=$out/summary.md
notes=$work/notes.md  # lines for the summary's closing section
limit_bytes=$(( 15 * 1024 * 1024 ))  # the most a handed-back file may have

stage() { [[ " $STAGES " == *" $1 "* ]]; }
pack_s=10
bench_s=0 tests_s=0 report_s=0
stage bench && bench_s=$([ "$DEVICE" = cpu ] && echo 20 || echo $(( budget * 35 / 100 )))  # a rehearsal: one short one
stage tests && tests_s=$(( budget / 10 > 15 ? budget / 10 : 15 ))
stage report && report_s=$(( budget * 7 / 100 > 25 ? budget * 7 / 100 : 25 ))

elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( start + budget - pack_s - $(date +%s) )); }  # seconds before the hand-back must begin
row() { echo "| $1 | $2 | ${3:+$3 }|" >> "$summary"; }

# step NAME SECONDS CMD...: CMD under a timeout of at most SECONDS (and the time left), logged, a row of the
# summary (with `note` appended to its status where the caller sets it); its exit status in step_rc
step() {
  local name=$1 limit=$2
  shift 2
  local room
  room=$(( $(left) - 5 ))  # timeout's --kill-after grace stays inside the budget
  (( limit > room )) && limit=$room
  if (( limit < 3 )); then
    row "$name" "skipped: no time left" ""
    step_rc=255
    return 0
  fi
  local t0 status
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$logs/$name.log" 2>&1
  step_rc=$?
  status="exit $step_rc"
  (( step_rc == 124 || step_rc == 137 )) && status="stopped at its ${limit} s limit"
  row "$name" "$status${note:+; $note}" "$(( $(date +%s) - t0 )) s, from +$(( t0 - start )) s"
  return 0
}

# archive NAME TAR-ARGS...: OUTDIR/NAME unless it would be over 15 MiB; returns 1 (and leaves nothing) if so
archive() {
  local name=$1
  shift
  tar -czf "$out/$name" "$@" 2>> "$work/hand-back.log" || true
  if [ -f "$out/$name" ] && (( $(stat -c %s "$out/$name") > limit_bytes )); then
    echo "- $name would have been $(( $(stat -c %s "$out/$name") / 1048576 )) MiB, over the 15 MiB a file may have" >> "$notes"
    rm -f "$out/$name"
    return 1
  fi
  return 0
}

handback() {
  trap - EXIT
  [ -n "${probe_pid:-}" ] && wait "$probe_pid" 2>/dev/null
  cp "$summary" "$logs/summary.md"
  # 1. the logs first, so that they come back even if a later step dies; logs over 1 MiB cut to their ends if need be
  if ! archive logs.tar.gz -C "$work" logs; then
    find "$logs" -type f -size +1M -exec sh -c 'tail -c 1048576 "$1" > "$1.end" && mv "$1.end" "$1"' _ {} \;
    archive logs.tar.gz -C "$work" logs && echo "- logs.tar.gz: logs over 1 MiB cut to their last MiB" >> "$notes"
  fi
  # 2. the results directory as results/ (its records, also those it started with), without checkpoints and locks
  local tarred=(-C "$results" --exclude=./checkpoints --exclude=./.locks --transform 's,^\.,results,')
  if ! archive results.tar.gz "${tarred[@]}" .; then
    (cd "$results" && { find ./runs \( -name '*.json' -o -name '*.trace.csv.gz' \) -newer "$work/started"; ls ./sweep.log ./report/*.md 2>/dev/null; } \
      > "$work/new-files")
    archive results.tar.gz "${tarred[@]}" -T "$work/new-files" \
      && echo "- results.tar.gz holds only this session's records, the sweep log and the report's tables" >> "$notes"
  fi
  # 3. runs paused at the limit: their checkpoints come back only where they fit
  local paused raw
  paused=$(find "$results/checkpoints" -name '*.pt' 2>/dev/null | wc -l)
  raw=$(du -sb "$results/checkpoints" 2>/dev/null | cut -f1)
  if (( paused > 0 )) && [ -n "$results_dir" ]; then
    echo "- runs paused at the limit: $paused; their checkpoints stay in $results_dir/checkpoints, where RESULTS=$results_dir continues them" >> "$notes"
  elif (( paused > 0 )); then
    # weights and Adam's moments hardly compress: far over the limit, do not spend the hand-back's time on gzip
    if (( raw < 2 * limit_bytes )) && archive checkpoints.tar.gz -C "$results" --transform 's,^,results/,' checkpoints; then
      echo "- runs paused at the limit: $paused, in checkpoints.tar.gz (RESUME continues them)" >> "$notes"
    else
      echo "- runs paused at the limit: $paused; their checkpoints ($(( raw / 1048576 )) MiB) are not handed back, over the 15 MiB a file may have; the next session starts them afresh" >> "$notes"
    fi
  fi
  # 4. the small files
  [ -f "$logs/env.txt" ] && cp "$logs/env.txt" "$out/env.txt"
  [ -s "$work/bench.jsonl" ] && cp "$work/bench.jsonl" "$out/bench.jsonl"
  grep -h '^{' "$logs/smoke.log" > "$work/smoke.jsonl" 2>/dev/null && cp "$work/smoke.jsonl" "$out/smoke.jsonl"
  # 5. the summary's closing sections
  {
    echo
    echo "Finished after $(elapsed) s of a ${budget} s budget."
    if [ -n "${plan_line:-}" ]; then
      echo
      echo "## Sweep plan"
      echo
      echo "$plan_line"
    fi
    echo
    echo "## Hand-back"
    echo
    [ -f "$notes" ] && cat "$notes"
    for f in "$out"/*; do
      [ "$f" = "$summary" ] || echo "- $(basename "$f"): $(stat -c %s "$f") bytes"
    done
    for f in "$logs/sweep.log" "$logs/gate.log" "$logs/pytest-gpu.log" "$logs/smoke.log"; do
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
  rm -rf "$work"
}
trap handback EXIT

commit=${NEREPRO_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -z "${NEREPRO_GIT_COMMIT:-}" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi
{
  echo "# GPU session: nerepro"
  echo
  echo "Budget ${budget} s; device ${DEVICE}; config ${CONFIG}; ${SEEDS} seeds; results"\
       "${results_dir:-in a fresh directory}${results_from:+, starting from a copy of $results_from}; packs ${PACK};"\
       "started $(date -u +%Y-%m-%dT%H:%M:%SZ); commit ${commit}."
  echo
  echo "| step | status | time |"
  echo "|---|---|---|"
} > "$summary"

# 0. at once: the probe and the plan in the background, the gate in the foreground
probe() {
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  timeout 60 "$PY" -c "
import sys, torch, torchvision, typer, pandas, matplotlib
cuda = torch.cuda.is_available()
print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version() if cuda else None)
print('torchvision', torchvision.__version__, 'typer', typer.__version__, 'pandas', pandas.__version__, 'matplotlib', matplotlib.__version__)
print('device', torch.cuda.get_device_name(0) if cuda else 'cpu')"
  echo "NEREPRO_DATA=${NEREPRO_DATA:-unset}"
}
probe > "$logs/env.txt" 2>&1 &
probe_pid=$!

if [ -n "$results_from" ] && [ "$results_from" != "$results" ]; then
  note="records: $(find "$results_from/runs" -name '*.json' 2>/dev/null | wc -l)" \
    step results-from 60 cp -a -n "$results_from/." "$results/"
fi
for archive in "${resume[@]}"; do
  mkdir -p "$work/unpacked"
  step "resume-$(basename "$archive" .tar.gz)" 60 sh -c 'tar -xzf "$1" -C "$2" && cp -a -n "$2/results/." "$3/"' _ \
    "$archive" "$work/unpacked" "$results"
done

for f in logs.tar.gz results.tar.gz checkpoints.tar.gz env.txt bench.jsonl smoke.jsonl; do
  rm -f "$out/$f"  # an earlier session's, once RESUME has read them
done

start_allow=12  # the sweep's interpreter and torch start before its --time-limit counts (about 10 s on the last VM)
pre_s=$([ "$DEVICE" = cpu ] && echo 10 || echo $(( GATE_S + 5 )))  # the gate at its limit, then the plan's wait
sweep_plan_s=$(( budget - pack_s - 5 - bench_s - tests_s - report_s - $(elapsed) - pre_s - start_allow ))
if stage sweep; then
  timeout 45 "$PY" -m nerepro.session plan "${configs[@]}" --results "$results" --seeds "$SEEDS" --network F1 \
    --device "$DEVICE" --max-pack "${MAX_PACK:-10}" --seconds "$(( sweep_plan_s > 10 ? sweep_plan_s : 10 ))" > "$work/plan.tsv" 2> "$logs/plan.log" &
  plan_pid=$!
fi

# gate: packs only after the CUDA test of packs against runs alone passed, alone on the GPU (fail closed)
gate_passed() {
  (( step_rc == 0 )) || return 1
  local last
  last=$(grep -E ' in [0-9.]+s' "$logs/gate.log" 2>/dev/null | tail -n 1)
  [[ "$last" =~ (^|[ ,])[0-9]+\ passed ]] && ! [[ "$last" =~ skipped|failed|error|xfail|xpass|no\ tests ]]
}
packs=off
if [ "$PACK" = on ] || [ "$PACK" = off ]; then
  packs=$PACK
  row gate "not run: PACK=$PACK; packs $PACK" ""
elif [ "$DEVICE" = cpu ]; then
  row gate "skipped: no CUDA device (rehearsal); packs off" ""
elif ! stage gate; then
  row gate "not asked for (STAGES); packs off" ""
else
  note="packs off" step gate "$GATE_S" "$PY" -m pytest -q -p no:cacheprovider -m gpu -k test_cuda_pack tests/test_fastpath.py
  if gate_passed; then
    packs=on
    sed -i '$ s/; packs off |/; packs on |/' "$summary"
  fi
fi

# 1. the sweep, headline rows first, with the plan's workers and pack size
if [ -n "${plan_pid:-}" ]; then
  wait "$plan_pid"
  plan_rc=$?
  IFS=$'\t' read -r _ workers max_pack reason < <(grep "^$packs"$'\t' "$work/plan.tsv" 2>/dev/null)
  if [ -z "${reason:-}" ]; then
    workers=1 max_pack=$([ "$packs" = on ] && echo 10 || echo 1)
    reason="the plan failed (exit $plan_rc, logs/plan.log): one worker, the choice that never time-shares the device."
  fi
  [ -n "${WORKERS:-}" ] && { workers=$WORKERS; reason="$reason WORKERS=$WORKERS overrides the workers."; }
  [ -n "${MAX_PACK:-}" ] && reason="$reason (MAX_PACK=$MAX_PACK: packs of at most $MAX_PACK.)"
  plan_line="Workers $workers, packs of up to $max_pack (packs $packs): $reason"
  echo "$plan_line" > "$logs/plan.md"
fi
sweep_s=$(( $(left) - 5 - bench_s - tests_s - report_s ))  # the step's timeout; its --time-limit counts after start-up
if ! stage sweep; then
  row sweep "not asked for (STAGES)" ""
elif (( sweep_s - start_allow > 10 )); then
  mode=$([ "$packs" = on ] && (( max_pack > 1 )) && echo on || echo off)
  note="$workers worker$( (( workers > 1 )) && echo s), packs $([ "$mode" = on ] && echo "of up to $max_pack" || echo off)" \
    step sweep "$sweep_s" "$PY" -m nerepro sweep "${configs[@]}" --results "$results" --seeds "$SEEDS" \
    --network F1 --device "$DEVICE" --workers-per-device "$workers" --pack "$mode" --max-pack "$max_pack" \
    --checkpoint-every 1000000000 --time-limit "$(( sweep_s - start_allow ))"
else
  row sweep "skipped: no time left" ""
fi

# 2. benchmarks, one at a time on an idle device, most needed first, in what the tests and the report leave
bench() {  # bench NAME CAP ARGS...: at most CAP seconds
  local name=$1 cap=$2
  shift 2
  local room=$(( $(left) - tests_s - report_s ))
  step "bench-$name" $(( cap < room ? cap : room )) "$PY" -m nerepro bench --device "$DEVICE" --json "$@"
  grep -h '^{' "$logs/bench-$name.log" >> "$work/bench.jsonl" 2>/dev/null
}
if ! stage bench; then
  row bench "not asked for (STAGES)" ""
elif [ "$DEVICE" = cpu ]; then
  bench f1-b100-pack2 60 --network F1 --batch-size 100 --alpha 1.5 --steps 5 --warmup 1 --pack 2
else
  bench c1-b100-eager 40 --network C1 --batch-size 100 --alpha 1 --steps 200 --warmup 20 --compile off
  bench c1-b100-compile-default 90 --network C1 --batch-size 100 --alpha 1 --steps 200 --warmup 20 --compile default
  bench c1-b100-reduce-overhead 90 --network C1 --batch-size 100 --alpha 1 --steps 200 --warmup 20 \
    --compile reduce-overhead
  bench c1-b5000-fp32-compiled 75 --network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 --compile default
  bench c1-b5000-bf16-compiled 75 --network C1 --batch-size 5000 --alpha 1.5 --steps 10 --warmup 3 --compile default \
    --precision bf16
  bench c2-b100-eager 40 --network C2 --batch-size 100 --alpha 1 --steps 100 --warmup 10 --compile off
  bench f1-b100-pack10 60 --network F1 --batch-size 100 --alpha 1.5 --steps 300 --warmup 20 --pack 10
  bench f1-b2000-pack10 60 --network F1 --batch-size 2000 --alpha 1.5 --steps 100 --warmup 10 --pack 10
fi

# 3. the other GPU tests and the smoke, in what the report leaves
tests_end=$(( $(date +%s) + $(left) - report_s ))
if ! stage tests; then
  row tests "not asked for (STAGES)" ""
elif [ "$DEVICE" = cpu ]; then  # a CPU trains C1/C2 too slowly for a rehearsal: F1 here, C1 in the benchmarks
  row pytest-gpu "skipped: no CUDA device (rehearsal)" ""
  step smoke $(( tests_end - $(date +%s) )) "$PY" scripts/gpu_smoke.py --device cpu --steps 3 --networks F1
else
  step pytest-gpu $(( tests_s * 6 / 10 )) "$PY" -m pytest -q -rf --tb=short -p no:cacheprovider -m gpu \
    -k "not test_cuda_pack" tests
  step smoke $(( tests_end - $(date +%s) )) "$PY" scripts/gpu_smoke.py --device "$DEVICE" --steps 10
fi

# 4. the report of the results directory
if ! stage report; then
  row report "not asked for (STAGES)" ""
elif ls "$results"/runs/*.json > /dev/null 2>&1; then
  step report "$(left)" "$PY" -m nerepro report --results "$results"
else
  row report "skipped: no finished runs" ""
fi
exit 0
