#!/usr/bin/env bash
# GPU check: on a CUDA machine, run the GPU tests (compiled Triton, the same matrix as CI plus
# bf16 and the (1,128,1024,1024) case) and the GPU benchmarks, writing everything to
# bench/results/ (JSON + markdown named after the date and the GPU). About 11 minutes with the
# default step limits; shorten them with TEST_S, CONV_TEST_S, GN_BENCH_S, CONV_BENCH_S,
# PATCH_BENCH_S, MODEL_BENCH_S (seconds). The model benchmark skips its torch.compile variants
# unless MODEL_COMPILE=1 (inductor needs minutes for them: raise MODEL_BENCH_S to match).
# Then, at most 4 minutes (F8C16_BENCH_S, FIT_BENCH_S, PATCH_SD_S): vivat-f8c16 bf16 training step
# 8x256² and decode 1024² in all four variants (compile included), the memory headline in 16 GiB,
# and patch() on the SD-VAE-configured diffusers model at 512² and 1024².
# Optional packages (lpips, diffusers) may be missing there; tests that need them skip.
#   usage: bash bench/gpu_check.sh            (results also copied to $OUT when it is set)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export VIVAT_NO_CPP=1   # the CPU extension is not what this checks; skip its build
RES=bench/results
mkdir -p "$RES"
day=$(date -u +%F)
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0))" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr A-Z a-z)
log="$RES/gpu-check-$day-$gpu.log"
step() { echo; echo "=== $* ($(date -u +%T))"; }
# copy what exists so far to $OUT after every step, so a run cut short still returns its results
save() { [ -n "${OUT:-}" ] && ls "$RES"/*"$day"*"$gpu"*.json "$RES"/*"$day"*"$gpu"*.md 2>/dev/null | head -16 | xargs -r cp -t "$OUT"/; }
{
  step "device"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
  python3 -m vivat_kernels info
  step "GPU tests: GroupNorm family (compiled Triton)"
  timeout "${TEST_S:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_group_norm.py tests/test_nn.py \
      -k "cuda or gpu" -m "not slow" --durations=5 -rf
  echo "pytest exit: $?"; save
  step "GPU tests: reflect conv (compiled Triton)"
  timeout "${CONV_TEST_S:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_reflect_conv.py \
      -k "cuda or gpu" -m "not slow" --durations=5 -rf
  echo "pytest exit: $?"; save
  step "GroupNorm benchmark"
  timeout "${GN_BENCH_S:-240}" python3 bench/bench_group_norm.py --device cuda --dtypes bfloat16 \
      --layouts "${GN_LAYOUTS:-nchw,cl}" --out "$RES" --warmup 5 --reps 20
  echo "bench exit: $?"; save
  if [ -f bench/bench_reflect_conv.py ]; then
    step "reflect conv benchmark"
    timeout "${CONV_BENCH_S:-200}" python3 bench/bench_reflect_conv.py --device cuda --out "$RES"
    echo "bench exit: $?"; save
  fi
  step "patched vs unpatched diffusers AutoencoderKL decode"
  if python3 -c "import diffusers" 2>/dev/null; then
    timeout "${PATCH_BENCH_S:-120}" python3 bench/bench_patch.py --device cuda --configs tiny,sd --dtype bfloat16 --out "$RES"
    echo "bench exit: $?"; save
  else
    echo "diffusers is not installed here: skipped"
  fi
  step "VIVAT model: decode and training step, fused vs eager vs torch.compile"
  # Writes its results after every case, so a run cut short by the timeout keeps what it finished
  # (the training step, the headline target, first).
  timeout "${MODEL_BENCH_S:-120}" python3 bench/bench_model.py --device cuda --only train,decode --out "$RES" \
      "$([ "${MODEL_COMPILE:-0}" = 1 ] && echo --compile || echo --no-compile)"
  echo "bench exit: $?"; save
  step "vivat-f8c16 bf16: training step 8x256² and decode 1024², eager / compile / fused / fused+compile"
  timeout "${F8C16_BENCH_S:-150}" python3 bench/bench_model.py --device cuda --preset vivat-f8c16 --dtype bfloat16 \
      --only train,decode --train-batch 8 --sizes 1024 --compile --warmup 2 --reps 5 --rounds 2 --tag f8c16-step --out "$RES"
  echo "bench exit: $?"; save
  step "memory headline: largest batch (256², and eager at 512²) and decode in 16 GiB"
  timeout "${FIT_BENCH_S:-60}" sh -c 'python3 bench/bench_model.py --device cuda --preset vivat-f8c16 --only "" --fit \
      --fit-variants eager,fused --fit-budget-gib 16 --tag fit256 --out "$1" && python3 bench/bench_model.py --device cuda \
      --preset vivat-f8c16 --only "" --fit --fit-kinds train --fit-variants eager --train-size 512 --tag fit512 --out "$1"' \
      _ "$RES"
  echo "bench exit: $?"; save
  step "patch(): diffusers AutoencoderKL, SD-VAE config, decode 512² and 1024², bf16"
  timeout "${PATCH_SD_S:-30}" python3 bench/bench_patch.py --device cuda --configs sd --sizes 512,1024 \
      --dtype bfloat16 --warmup 2 --reps 5 --tag sd --out "$RES"
  echo "bench exit: $?"; save
  step "done"
} 2>&1 | tee "$log" ${OUT:+"$OUT/$(basename "$log")"}
