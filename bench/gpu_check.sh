#!/usr/bin/env bash
# GPU check: on a CUDA machine, run the GPU tests (compiled Triton) and the GPU benchmarks, writing
# everything to bench/results/ (JSON + markdown named after the date and the GPU, one log per step
# under bench/results/gpu-check-<date>-<gpu>/, and a summary). About 6 minutes with the default
# step limits.
#
# A step is one line of the STEPS list below: a name, a time limit in seconds and a command. Each
# runs under `timeout -s INT`, so a pytest cut short still prints its -rf summary (and a step that
# ignores SIGINT is killed 20 s later); pytest steps stop after a few failures (--maxfail) and show
# the first lines of each traceback (--tb=short). Every step runs whatever happened before it, and
# the summary at the end lists every step's exit status and the tail of its log.
#   usage: bash bench/gpu_check.sh            (results also copied to $OUT when it is set)
#          FULL=1 bash bench/gpu_check.sh     (also the reflect-conv benchmark, patch and model steps)
#          SCALE=2 bash bench/gpu_check.sh    (every time limit doubled)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export VIVAT_NO_CPP=1   # the CPU extension is not what this checks; skip its build
RES=bench/results
mkdir -p "$RES"
day=$(date -u +%F)
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr A-Z a-z)
gpu=${gpu:-no-gpu}
LOGS="$RES/gpu-check-$day-$gpu"
mkdir -p "$LOGS"
summary="$RES/gpu-check-$day-$gpu.md"
PYTEST="python3 -m pytest -q -p no:cacheprovider -rfE --tb=short --durations=5"

# name | limit (s) | command
STEPS=(
  "device|20|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; python3 -m vivat_kernels info"
  "gn-f3-first|60|$PYTEST --maxfail=3 tests/test_group_norm.py -k 'cuda and f3'"
  "gn-tests|110|$PYTEST --maxfail=5 tests/test_group_norm.py tests/test_nn.py -k 'cuda or gpu' -m 'not slow'"
  "cuda-graphs|60|$PYTEST --maxfail=3 tests/test_cuda_graphs.py"
  "conv-tests|60|$PYTEST --maxfail=5 tests/test_reflect_conv.py -k 'cuda or gpu' -m 'not slow'"
  "gn-bench|110|python3 bench/bench_group_norm.py --device cuda --dtypes bfloat16 --layouts nchw,cl --out $RES --warmup 3 --reps 20"
)
if [ "${FULL:-0}" = 1 ]; then
  STEPS+=(
    "conv-bench|200|python3 bench/bench_reflect_conv.py --device cuda --out $RES"
    "patch-bench|120|python3 -c 'import diffusers' && python3 bench/bench_patch.py --device cuda --configs tiny,sd --dtype bfloat16 --out $RES"
    "model-bench|120|python3 bench/bench_model.py --device cuda --only train,decode --out $RES --no-compile"
  )
fi

# copy what exists so far to $OUT after every step, so a run cut short still returns its results
save() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT/$(basename "$LOGS")"
  cp -f "$LOGS"/*.log "$OUT/$(basename "$LOGS")/" 2>/dev/null
  cp -f "$summary" "$OUT/" 2>/dev/null
  ls "$RES"/*"$day"*"$gpu"*.json "$RES"/*"$day"*"$gpu"*.md 2>/dev/null | head -12 | xargs -r cp -t "$OUT"/
  return 0
}

write_summary() {
  {
    echo "# GPU check $day on $gpu"
    echo
    echo "| # | step | exit | seconds | limit |"
    echo "|---|---|---|---|---|"
    for line in "${DONE[@]}"; do echo "$line"; done
    echo
    for i in "${!STEPS[@]}"; do
      IFS='|' read -r name limit _ <<< "${STEPS[$i]}"
      log="$LOGS/$(printf %02d "$i")-$name.log"
      [ -f "$log" ] || continue
      echo "## $name"
      echo '```'
      # pytest's own summary when there is one (failures with their first traceback lines), else the tail
      if grep -q "short test summary info" "$log"; then
        sed -n '/short test summary info/,$p' "$log" | head -60
      else
        tail -n 25 "$log"
      fi
      echo '```'
      echo
    done
  } > "$summary"
}

DONE=()
for i in "${!STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<< "${STEPS[$i]}"
  limit=$(( limit * ${SCALE:-1} ))
  log="$LOGS/$(printf %02d "$i")-$name.log"
  echo; echo "=== [$i] $name (limit ${limit}s, $(date -u +%T))"
  start=$(date +%s)
  timeout -s INT -k 20 "$limit" bash -c "$cmd" > "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  tail -n 15 "$log"
  [ "$rc" = 124 ] && echo "!!! $name hit its ${limit}s limit"
  DONE+=("| $i | $name | $rc$([ "$rc" = 124 ] && echo ' (timeout)') | $took | $limit |")
  write_summary
  save
done

echo; echo "=================== summary ($summary)"
cat "$summary"
