#!/usr/bin/env bash
# GPU check: on a CUDA machine, run the GPU tests (compiled Triton) and the GPU benchmarks, writing
# everything to bench/results/ (JSON + markdown named after the date and the GPU, one log per step
# under bench/results/gpu-check-<date>-<gpu>/, and a summary). The steps come in two parts, each
# within one 10-minute device call: `kernels` (the default, about 7 minutes: GPU tests of both ops,
# CUDA graphs, GroupNorm benchmark) and `model` (about 5 minutes: vivat-f8c16 bf16 training step and
# decode in eager / compile / fused / fused+compile, the 16 GiB memory headline, and patch() on the
# SD-VAE-configured diffusers model).
#
# A step is one line of the STEPS list below: a name, a time limit in seconds and a command. Each
# runs under `timeout -s INT`, so a pytest cut short still prints its -rf summary (and a step that
# ignores SIGINT is killed 20 s later); pytest steps stop after a few failures (--maxfail) and show
# the first lines of each traceback (--tb=short). Every step runs whatever happened before it, and
# the summary at the end lists every step's exit status and the tail of its log.
#   usage: bash bench/gpu_check.sh            (the kernels part; results also copied to $OUT when set)
#          bash bench/gpu_check.sh model      (the model part)
#          bash bench/gpu_check.sh all        (both, about 12 minutes)
#          FULL=1 bash bench/gpu_check.sh     (kernels part plus the reflect-conv, tiny patch and model benchmarks)
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
PART=${1:-kernels}
case "$PART" in kernels|model|all) ;; *) echo "usage: bash bench/gpu_check.sh [kernels|model|all]" >&2; exit 2 ;; esac
LOGS="$RES/gpu-check-$day-$gpu-$PART"
mkdir -p "$LOGS"
summary="$RES/gpu-check-$day-$gpu-$PART.md"
PYTEST="python3 -m pytest -q -p no:cacheprovider -rfE --tb=short --durations=5"

# name | limit (s) | command
KERNEL_STEPS=(
  "device|20|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; python3 -m vivat_kernels info"
  "gn-f3-first|60|$PYTEST --maxfail=3 tests/test_group_norm.py -k 'cuda and f3'"
  "gn-tests|110|$PYTEST --maxfail=5 tests/test_group_norm.py tests/test_nn.py -k 'cuda or gpu' -m 'not slow'"
  "cuda-graphs|60|$PYTEST --maxfail=3 tests/test_cuda_graphs.py"
  "conv-tests|60|$PYTEST --maxfail=5 tests/test_reflect_conv.py -k 'cuda or gpu' -m 'not slow'"
  "gn-bench|110|python3 bench/bench_group_norm.py --device cuda --dtypes bfloat16 --layouts nchw,cl --out $RES --warmup 3 --reps 20"
)
if [ "${FULL:-0}" = 1 ]; then
  KERNEL_STEPS+=(
    "conv-bench|200|python3 bench/bench_reflect_conv.py --device cuda --rounds 1 --out $RES"
    "patch-bench|120|if ! python3 -c 'import diffusers' 2>/dev/null; then echo 'diffusers is not installed here: step skipped'; exit 0; fi; python3 bench/bench_patch.py --device cuda --configs tiny,sd --dtype bfloat16 --out $RES"
    "model-bench|120|python3 bench/bench_model.py --device cuda --only train,decode --out $RES --no-compile"
  )
fi
MODEL_STEPS=(
  "device|20|nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -m vivat_kernels info"
  "f8c16-step|170|python3 bench/bench_model.py --device cuda --preset vivat-f8c16 --dtype bfloat16 --only train,decode --train-batch 8 --sizes 1024 --compile --warmup 2 --reps 5 --rounds 2 --tag f8c16-step --out $RES"
  "fit-16gib|70|python3 bench/bench_model.py --device cuda --preset vivat-f8c16 --only '' --fit --fit-variants eager,fused --fit-budget-gib 16 --tag fit256 --out $RES && python3 bench/bench_model.py --device cuda --preset vivat-f8c16 --only '' --fit --fit-kinds train --fit-variants eager --train-size 512 --tag fit512 --out $RES"
  "patch-sd|40|if ! python3 -c 'import diffusers' 2>/dev/null; then echo 'diffusers is not installed here: step skipped'; exit 0; fi; python3 bench/bench_patch.py --device cuda --configs sd --sizes 512,1024 --dtype bfloat16 --channels-last --warmup 2 --reps 5 --tag sd --out $RES"
)
case "$PART" in
  kernels) STEPS=("${KERNEL_STEPS[@]}") ;;
  model) STEPS=("${MODEL_STEPS[@]}") ;;
  all) STEPS=("${KERNEL_STEPS[@]}" "${MODEL_STEPS[@]:1}") ;;
esac

# copy what exists so far to $OUT after every step, so a run cut short still returns its results
save() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT/$(basename "$LOGS")"
  cp -f "$LOGS"/*.log "$OUT/$(basename "$LOGS")/" 2>/dev/null
  cp -f "$summary" "$OUT/" 2>/dev/null
  ls "$RES"/*"$day"*"$gpu"*.json "$RES"/*"$day"*"$gpu"*.md 2>/dev/null | head -24 | xargs -r cp -t "$OUT"/
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
