#!/usr/bin/env bash
# Issue 18's checks on a lent NVIDIA machine, in as few device calls as possible. That machine has Python with a
# CUDA torch and transformers but no Rust toolchain, no network and no model weights, so everything is built here:
#
#   cargo xtask gpu-bundle                                   # here: binaries, test executables, tokenizer -> .gpu/
#   device run: command "bash xtask/gpu-check.sh", carry [".gpu"], timeout_s 590
#
# Stages (GPU_CHECK_STAGES, default all, in this order). All of them likely take more than one call's 10 minutes:
# split them, e.g. GPU_CHECK_STAGES="tests gen-smollm" then "gen-qwen step" (the machine stays warm 30 s between
# calls, and the models made in /tmp are reused while it does). summary.txt has each stage's start time.
#   tests       the CUDA-gated tests: model parity (f32, bf16), shipped algorithms' tensors on the device, one
#               training step of each algorithm with a --deterministic rerun and the CUDA memory metrics
#   gen-smollm  bench-generate, bf16, the default model's shape with random weights
#   gen-qwen    bench-generate, bf16, a Qwen2.5-0.5B-Instruct-shaped model with random weights
#   step        bench-step, bf16 mixed precision, against tests/oracles/bench_grpo_step.py, with peak GPU memory
#   step-gc     the same with gradient checkpointing on both sides, as re-grpo trains (not in the default list)
#
# Settings: GPU_CHECK_DEVICE (cuda; cpu checks this script at home), GPU_CHECK_PYTHON (python3),
# GPU_CHECK_QUICK=1 (tiny sizes), GPU_CHECK_COMPILE=1 (transformers' torch.compile column too; compiling takes
# minutes), GPU_CHECK_SAMPLES, GPU_CHECK_NEW_TOKENS, GPU_CHECK_MULTI_STEP (8: grpo-host also decodes in blocks of
# that many steps per host read, in a column of its own; 1 leaves the column out). Results go to $OUT (the device
# tool returns it; at most 8 files).
set -uo pipefail

device=${GPU_CHECK_DEVICE:-cuda}
python=${GPU_CHECK_PYTHON:-python3}
stages=${GPU_CHECK_STAGES:-tests gen-smollm gen-qwen step}
out=${OUT:-/tmp/gpu-check}
root=$(pwd)
mkdir -p "$out"
summary=$out/summary.txt
say() { echo "== $(date +%T) $*" | tee -a "$summary"; }

if [ ! -e .gpu/bundle.tar.gz ]; then
  echo "gpu-check: .gpu/bundle.tar.gz is missing; run \`cargo xtask gpu-bundle\` here and carry .gpu" >&2
  exit 2
fi
# Unpacked outside .gpu, which must stay as small as the bundle to travel again.
bundle=${TMPDIR:-/tmp}/grpo-gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle" && tar -xzf .gpu/bundle.tar.gz -C "$bundle" || exit 2

# The build baked in absolute paths: the checkout (fixtures, CARGO_BIN_EXE) and libtorch's rpath. Put the checkout
# where it was and find libtorch, and the NVIDIA libraries it loads, in this Python's torch.
built=$(cat "$bundle/checkout.txt")
if [ ! -e "$built/Cargo.toml" ]; then
  mkdir -p "$(dirname "$built")" && ln -sfn "$root" "$built"
fi
mkdir -p target && cp -a "$bundle/target/." target/
libs=$("$python" - <<'EOF'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join([os.path.join(os.path.dirname(torch.__file__), "lib")] + sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))))
EOF
) || { echo "gpu-check: $python has no torch" >&2; exit 2; }
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"

# A private cache: the venv's Python is this one, the default model is its shape with random weights.
export GRPO_RS_CACHE=${GRPO_CHECK_CACHE:-/tmp/grpo-gpu-check}
mkdir -p "$GRPO_RS_CACHE/venv/bin" "$GRPO_RS_CACHE/models"
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$python")" >"$GRPO_RS_CACHE/venv/bin/python"
chmod +x "$GRPO_RS_CACHE/venv/bin/python"
smollm=$GRPO_RS_CACHE/models/SmolLM2-135M-shape-random-weights
qwen=$GRPO_RS_CACHE/models/Qwen2.5-0.5B-shape-random-weights
[ -e "$smollm/config.json" ] || "$python" tests/oracles/random_model.py --preset smollm2-135m \
  --tokenizer "$bundle/tokenizer" --out "$smollm" --dtype f32 >>"$summary" 2>&1
ln -sfn "$smollm" "$GRPO_RS_CACHE/models/SmolLM2-135M-Instruct"

say "checkout $root (built in $built), device $device, stages: $stages"
target/release/grpo-host --version 2>&1 | tee -a "$summary"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$summary"

if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
  samples=${GPU_CHECK_SAMPLES:-1,2}; new_tokens=${GPU_CHECK_NEW_TOKENS:-4}
  step=(--steps 1 --warmup 0 --prompts 1 --group 2 --max-new 4 --train-batch 2)
else
  samples=${GPU_CHECK_SAMPLES:-1,8,64,256}; new_tokens=${GPU_CHECK_NEW_TOKENS:-64,512}
  # The Python loop generates prompt by prompt: 4 calls of 128 steps each per GRPO step, about 15 s on a GPU.
  step=(--steps 2 --warmup 1 --prompts 4 --group 8 --max-new 128 --train-batch 16)
fi
gen_flags=(--multi-step "${GPU_CHECK_MULTI_STEP:-8}"); [ "${GPU_CHECK_COMPILE:-0}" = 1 ] && gen_flags+=(--compile)
prebuilt=(--host target/release/grpo-host --python "$python" --device "$device")
failed=0

for stage in $stages; do
  say "stage $stage"
  case $stage in
    tests)
      export GRPO_TESTS_PREBUILT=1 GRPO_TESTS_CUDA_ONLY=1
      for t in "model_parity:" "plugin_loader:shipped_algorithms_keep_every_tensor_on_the_batch_device" \
        "train_e2e:one_step_of_each_algorithm_on_every_device"; do
        exe=$(awk -v n="${t%%:*}" '$1 == n { print $2 }' "$bundle/tests.txt")
        "$exe" ${t#*:} --test-threads 1 >>"$out/tests.log" 2>&1
        rc=$?; say "test ${t%%:*} ${t#*:}: exit $rc"; [ $rc = 0 ] || failed=1
      done
      tail -n 3 "$out/tests.log" >>"$summary"
      ;;
    gen-smollm | gen-qwen)
      model=$smollm; [ "$stage" = gen-qwen ] && model=$qwen
      if [ ! -e "$model/config.json" ]; then
        "$python" tests/oracles/random_model.py --preset qwen2.5-0.5b --tokenizer "$bundle/tokenizer" --out "$model" \
          --dtype bf16 >>"$summary" 2>&1
      fi
      "$bundle/xtask" bench-generate "${prebuilt[@]}" --dtype bf16 --model "$model" --samples "$samples" \
        --new-tokens "$new_tokens" "${gen_flags[@]}" --out "$out/$stage.md" >>"$out/bench.log" 2>&1
      rc=$?; say "bench-generate $model: exit $rc"; [ $rc = 0 ] || failed=1
      ;;
    step | step-gc)
      gc=(); [ "$stage" = step-gc ] && gc=(--gradient-checkpointing)
      "$bundle/xtask" bench-step "${prebuilt[@]}" --model "$smollm" --precision bf16 "${step[@]}" "${gc[@]}" \
        --out "$out/$stage.md" >>"$out/bench.log" 2>&1
      rc=$?; say "bench-step: exit $rc"; [ $rc = 0 ] || failed=1
      ;;
    *) say "unknown stage $stage"; failed=1 ;;
  esac
done
say "done (failed: $failed)"
exit $failed
