#!/usr/bin/env bash
# CUDA check and timings on a GPU machine, with binaries built elsewhere by bench/gpu/build.sh
# (the GPU machine needs no Rust toolchain and no network). In order, each step under its own
# time limit so that one failure does not hide the others:
#   1. the SmolLM2 engine tests (crates/mirrorsim-llm/tests/engine_smollm2.rs) on CUDA:
#      "Paris", the recorded greedy reference token for token, HF logprobs, choice sums, sharing;
#   2. `mirrorsim --cuda 0 chat` and the whole demo (`mirrorsim --cuda 0 demo`) on CUDA;
#   3. the LLM benchmark (bench/llm) with our engine and HF transformers on the same GPU;
#   4. the LoRA SFT step (bench/train) with our trainer and PyTorch + PEFT on the same GPU;
#   5. `mirrorsim --cuda 0 train sft` for a few steps on the demo's SFT set.
#
#   bench/gpu/run.sh BIN_DIR MODEL.gguf OUT_DIR
#
# BIN_DIR holds mirrorsim, bench_prompts, sft_step, engine_smollm2 and libcudart.so.13. The
# peers use the machine's own python3 with torch, transformers, peft and gguf. ONLY="name ..."
# runs only those steps (engine_tests chat demo llm_ours llm_transformers train_ours train_peft
# train_cli), e.g. the peers in one call and our binaries in the next. The engine test binary
# reads its fixtures under the source path it was built from (e.g. /work/main/crates/...): run it
# from a checkout at that path, or link one there.
set -uo pipefail

bin_dir="$(cd "$1" 2>/dev/null && pwd || echo "$1")"
model="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
out="$(mkdir -p "$3" && cd "$3" && pwd)"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

cublas_dir="$(dirname "$(find /usr/local/cuda* /usr/local/nvidia /opt /usr/lib -name 'libcublas.so.1*' 2>/dev/null | head -n 1)")"
export LD_LIBRARY_PATH="$bin_dir:$cublas_dir:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export MIRRORSIM_MODEL="$model" MIRRORSIM_CUDA=0

step() {  # step NAME SECONDS COMMAND...: runs COMMAND, its output in OUT/NAME.log
    local name="$1" seconds="$2"
    shift 2
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
        return
    fi
    local started=$SECONDS first_sample
    first_sample=$(wc -l < "$out/gpu_memory_mib.txt")
    timeout "$seconds" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local peak
    peak=$(tail -n "+$((first_sample + 1))" "$out/gpu_memory_mib.txt" | sort -n | tail -n 1)
    echo "== $name: rc $rc in $((SECONDS - started)) s; peak GPU memory in use ${peak:-?} MiB"
    tail -n 12 "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "cuBLAS from: $cublas_dir"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$out/gpu_memory_mib.txt" &
sampler=$!

step engine_tests 150 "$bin_dir/engine_smollm2" --test-threads 1
step chat 60 "$bin_dir/mirrorsim" chat --model "$model" "What is the capital of France?"
step demo 200 "$bin_dir/mirrorsim" demo --model "$model" --out "$out/demo"
step llm_ours 150 "$bin_dir/bench_prompts" "$model" bench/llm/prompts.json
step llm_transformers 200 env BENCH_DEVICE=cuda python3 bench/llm/peer_transformers.py \
    "$model" bench/llm/prompts.json 16
step train_ours 120 "$bin_dir/sft_step" "$model" 512 6
step train_peft 150 env BENCH_DEVICE=cuda python3 bench/train/peer_peft.py "$model" 512 6 16
if [[ -f "$out/demo/distill/sft.jsonl" ]]; then
    step train_cli 150 "$bin_dir/mirrorsim" train sft --model "$model" \
        --data "$out/demo/distill/sft.jsonl" --out "$out/sft" --max-steps 8 --grad-accum 2 --json
fi
kill "$sampler" 2>/dev/null
