#!/usr/bin/env bash
# The fidelity plan of bench/fidelity/run.sh on a GPU machine, from scene and training files
# built elsewhere (the GPU machine needs neither the dataset nor a Rust toolchain): the base
# model's evaluations, LoRA SFT, its evaluations, DPO on top, its evaluation. Each step runs
# under the time left before BUDGET seconds (default 560) so that a slow step never takes the
# evaluations after it down with it; DPO is skipped when under MIN_DPO_S (default 60) remain.
#
#   bench/gpu/fidelity.sh BIN_DIR MODEL.gguf DATA_DIR OUT_DIR
#
# DATA_DIR holds random.jsonl and popularity.jsonl (eval scenes), sft.jsonl and dpo.jsonl, as
# `mirrorsim scenes` and bench/fidelity/run.sh write them. BIN_DIR holds a `--features cuda`
# mirrorsim (bench/gpu/build.sh) and libcudart.so.13. MAX_LEN (default 640) bounds training
# sequences. MAX_SCENES limits every evaluation; CPU=1
# with a CPU binary is a dry run of the script here.
set -uo pipefail

bin_dir="$(cd "$1" && pwd)"
model="$2"
data="$(cd "$3" && pwd)"
out="$(mkdir -p "$4" && cd "$4" && pwd)"
started=$SECONDS
deadline=$((SECONDS + ${BUDGET:-560}))

cublas_dir="$(dirname "$(find /usr/local/cuda* /usr/local/nvidia /opt /usr/lib -name 'libcublas.so.1*' 2>/dev/null | head -n 1)")"
export LD_LIBRARY_PATH="$bin_dir:$cublas_dir:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export MIRRORSIM_MODEL="$model"
if [[ "${CPU:-0}" != 1 ]]; then
    export MIRRORSIM_CUDA=0
fi
bin="$bin_dir/mirrorsim"

stamp() { echo "[$((SECONDS - started)) s] $*" | tee -a "$out/timings.log"; }
left() { echo $((deadline - SECONDS)); }

evaluate() {  # name scenes adapter [eval flags...]
    local name="$1" scenes="$2" adapter="$3"
    shift 3
    stamp "eval $name"
    timeout "$(left)" "$bin" --log warn eval --scenes "$data/$scenes.jsonl" --model default \
        ${adapter:+--adapter "$adapter"} --mode direct --repeats 5 --no-agent4rec \
        --baselines none ${MAX_SCENES:+--max-scenes "$MAX_SCENES"} "$@" --out "$out/eval-$name" \
        > "$out/eval-$name.txt" 2>&1
    stamp "eval $name: rc $?"
}

evaluate base-random random "" --no-rotations
evaluate base-popularity popularity "" --no-rotations
stamp "train sft"
timeout "$(left)" "$bin" --log warn train sft --data "$data/sft.jsonl" --out "$out/train/sft" \
    --lr 1e-3 --micro-batch 8 --grad-accum 1 --max-len "${MAX_LEN:-640}" --eval-fraction 0.1 \
    --eval-every 0 --save-every 0 > "$out/train-sft.txt" 2>&1
stamp "train sft: rc $?"
cat "$out/train-sft.txt"
evaluate sft-random random "$out/train/sft"
evaluate sft-popularity popularity "$out/train/sft" --no-rotations
if (($(left) - 20 >= ${MIN_DPO_S:-60})); then
    stamp "train dpo"
    timeout "$(($(left) - 20))" "$bin" --log warn train dpo --adapter "$out/train/sft" \
        --data "$data/dpo.jsonl" --out "$out/train/dpo" --lr 5e-4 --micro-batch 4 --grad-accum 1 \
        --max-len "${MAX_LEN:-640}" --eval-fraction 0.1 --eval-every 0 --save-every 0 > "$out/train-dpo.txt" 2>&1
    stamp "train dpo: rc $?"
    cat "$out/train-dpo.txt"
    evaluate sft-dpo-random random "$out/train/dpo" --no-rotations
fi
stamp "done"
