#!/usr/bin/env bash
# First fidelity result (FIDELITY.md): SmolLM2-135M base vs after LoRA SFT vs after SFT+DPO, in
# direct mode, on leakage-free ML-1M eval scenes (5 options), beside the classical baselines.
#
#   bench/fidelity/run.sh            OUT (default /tmp/mirrorsim-fidelity), EVAL_SCENES (500),
#                                    TRAIN_SCENES (96), DPO_PAIRS (48), HISTORY (6),
#                                    EVAL_EVERY / SAVE_EVERY (4: optimizer steps between held-out
#                                    evaluations / checkpoints), MICRO_BATCH (1: sequences per
#                                    forward; 8 / MICRO_BATCH micro-batches per optimizer step),
#                                    SKIP_BASE_RANDOM=1 (the base model's random-negative
#                                    evaluation is already at hand), BASELINES=none (no baselines
#                                    at all: fit them elsewhere with `eval --model none`),
#                                    BIN (a prebuilt mirrorsim), ITEM_STATS=1 (options show
#                                    their rating count and mean: `scenes --item-stats`),
#                                    MAX_LEN (512: longest training sequence), MODE (direct:
#                                    the reply is `Behavior: [X]` and the evaluations score the
#                                    letters; title: the reply is `Behavior: ` and the option's
#                                    text as listed, and the evaluations score each option's text
#                                    by its likelihood, `eval --mode title`)
#
# MIRRORSIM_CUDA=0 with a `--features cuda` binary runs every model stage on the GPU. The
# baselines are fitted once, in the base model's evaluation; the fine-tuned models' evaluations
# run on the same scenes with --baselines none.
#
# Training data: behaviour-only targets built from train scenes (the prompt's real choice as the
# reply; for DPO the rejected reply names another option, seeded) — the "direct" ablation, since
# rationale distillation at a useful size does not fit on 2 CPU cores (see FIDELITY.md).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/mirrorsim-fidelity}"
eval_scenes="${EVAL_SCENES:-500}"
train_scenes="${TRAIN_SCENES:-96}"
dpo_pairs="${DPO_PAIRS:-48}"
history="${HISTORY:-6}"
max_len="${MAX_LEN:-512}"
item_stats=()
if [[ "${ITEM_STATS:-0}" == 1 ]]; then
    item_stats=(--item-stats)
fi
eval_every="${EVAL_EVERY:-4}"
save_every="${SAVE_EVERY:-4}"
micro_batch="${MICRO_BATCH:-1}"
mode="${MODE:-direct}"
case "$mode" in direct|title) ;; *) echo "MODE must be direct or title, not $mode" >&2; exit 2 ;; esac
grad_accum=$((8 / micro_batch))
dpo_micro_batch=$((micro_batch < 4 ? micro_batch : 4))
data="${DATA:-$repo_root/../shared/data/ml-1m}"
if [[ -z "${BIN:-}" ]]; then
    (cd "$repo_root" && cargo build --quiet --release -p mirrorsim)
fi
bin="${BIN:-$repo_root/target/release/mirrorsim}"
mkdir -p "$out"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/timings.log"; }

stamp "scenes (random negatives)"
"$bin" --log warn scenes --source "recbole:$data" --out "$out/scenes-random" --seed 0 \
    --max-train "$train_scenes" --max-eval "$eval_scenes" --eval-options 5 --train-options 5..5 \
    --history "$history" --negatives random=1 "${item_stats[@]}" > /dev/null
stamp "scenes (popularity negatives)"
"$bin" --log warn scenes --source "recbole:$data" --out "$out/scenes-popularity" --seed 0 \
    --max-train 0 --max-eval "$eval_scenes" --eval-options 5 --history "$history" \
    --negatives popularity=1 "${item_stats[@]}" > /dev/null

python3 - "$out/scenes-random/scenes.train.jsonl" "$out" "$dpo_pairs" "$mode" <<'PY'
import json, random, sys
scenes_path, out, pairs, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(0)

def replies(s):
    """Per option, the reply that names it: its letter, or (title mode) its text as listed,
    which is what `eval --mode title` scores."""
    if mode == "direct":
        return [f"Behavior: [{label}]" for label in s["labels"]]
    user = [m for m in s["direct_messages"] if m["role"] == "user"][-1]["content"].split("\n")
    texts = []
    for label in s["labels"]:
        line = next(l for l in user if l.startswith(f"[{label}] "))
        texts.append("Behavior: " + line[len(label) + 3:])
    return texts

with open(f"{out}/sft.jsonl", "w") as sft, open(f"{out}/dpo.jsonl", "w") as dpo:
    for i, line in enumerate(open(scenes_path)):
        s = json.loads(line)
        answer = s["answer"]
        options = replies(s)
        chosen = options[answer]
        wrong = rng.choice([o for j, o in enumerate(options) if j != answer])
        prompt = s["direct_messages"]
        sft.write(json.dumps({"messages": prompt + [{"role": "assistant", "content": chosen}]}) + "\n")
        if i < pairs:
            dpo.write(json.dumps({"prompt": prompt,
                                  "chosen": [{"role": "assistant", "content": chosen}],
                                  "rejected": [{"role": "assistant", "content": wrong}]}) + "\n")
PY

evaluate() {  # name scenes-dir [adapter]
    local name="$1" scenes="$2" adapter="${3:-}"
    stamp "eval $name"
    local baselines=(--catalog "recbole:$data")
    if [[ -n "$adapter" || "${BASELINES:-}" == none ]]; then
        baselines=(--baselines none)
    fi
    "$bin" --log warn eval --scenes "$out/$scenes/scenes.eval.jsonl" --model default \
        ${adapter:+--adapter "$adapter"} --mode "$mode" --repeats 5 --no-rotations --no-agent4rec \
        "${baselines[@]}" --out "$out/eval-$name" > /dev/null
}

if [[ "${SKIP_BASE_RANDOM:-0}" != 1 ]]; then
    evaluate base-random scenes-random
fi
stamp "train sft"
"$bin" --log warn train sft --data "$out/sft.jsonl" --out "$out/train/sft" --lr 1e-3 \
    --micro-batch "$micro_batch" --grad-accum "$grad_accum" --max-len "$max_len" --eval-fraction 0.1 --eval-every "$eval_every" \
    --save-every "$save_every" --resume \
    > "$out/train-sft.txt"
evaluate sft-random scenes-random "$out/train/sft"
stamp "train dpo"
"$bin" --log warn train dpo --adapter "$out/train/sft" --data "$out/dpo.jsonl" \
    --out "$out/train/dpo" --lr 5e-4 --micro-batch "$dpo_micro_batch" \
    --grad-accum $((4 / dpo_micro_batch)) --max-len "$max_len" --eval-fraction 0.1 \
    --eval-every "$eval_every" --save-every "$save_every" --resume > "$out/train-dpo.txt"
evaluate sft-dpo-random scenes-random "$out/train/dpo"
evaluate base-popularity scenes-popularity
evaluate sft-popularity scenes-popularity "$out/train/sft"
stamp "done"
