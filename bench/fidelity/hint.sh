#!/usr/bin/env bash
# SmolLM2-135M trained to read a collaborative prior's pick in its prompt (FIDELITY.md, "A
# simulator that reads EASE's pick" and "Two priors in the prompt"): ML-1M scenes (5 options,
# random negatives, and a second eval set with popularity-weighted negatives) → `mirrorsim hint
# --prior ease` (or PRIOR=ease,sequential) → behaviour-only SFT on the hinted train scenes → the
# base and the SFT model on the hinted eval scenes, beside the baselines on the same decisions.
#
#   bench/fidelity/hint.sh        OUT (default /tmp/mirrorsim-hint), TRAIN_EXAMPLES (800),
#                                 EVAL_SCENES (500), POP_EVAL_SCENES (200), HISTORY (6),
#                                 MAX_LEN (512), PRIOR (ease; session 12: ease,sequential
#                                 with TRAIN_EXAMPLES=1000), BIN (a prebuilt mirrorsim),
#                                 SKIP_BASE=1 (leave out the base model's hinted evaluations)
#
# Train scenes come from the last 10 % of the pre-cutoff period (about 2,000 of 20,000 sampled);
# their hint is fitted on the interactions before the earliest of them, the eval scenes' hint on
# those before the cutoff, as `mirrorsim eval`'s baselines are.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/mirrorsim-hint}"
train_examples="${TRAIN_EXAMPLES:-800}"
eval_scenes="${EVAL_SCENES:-500}"
pop_eval_scenes="${POP_EVAL_SCENES:-200}"
history="${HISTORY:-6}"
max_len="${MAX_LEN:-512}"
prior="${PRIOR:-ease}"
data="$repo_root/../shared/data/ml-1m"
if [[ -z "${BIN:-}" ]]; then
    (cd "$repo_root" && cargo build --quiet --release -p mirrorsim)
fi
bin="${BIN:-$repo_root/target/release/mirrorsim}"
mkdir -p "$out"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/timings.log"; }

stamp "scenes (random negatives)"
"$bin" --log warn scenes --source "recbole:$data" --out "$out/scenes" --seed 0 \
    --max-train 20000 --max-eval "$eval_scenes" --eval-options 5 --train-options 5..5 \
    --history "$history" --negatives random=1 > /dev/null
stamp "scenes (popularity negatives)"
"$bin" --log warn scenes --source "recbole:$data" --out "$out/scenes-popularity" --seed 0 \
    --max-train 0 --max-eval "$pop_eval_scenes" --eval-options 5 --history "$history" \
    --negatives popularity=1 > /dev/null
stamp "hint ($prior)"
# --sft-examples: behaviour-only SFT, the hinted prompt with the real choice as the reply.
"$bin" --log warn hint --scenes "$out/scenes" --prior "$prior" --catalog "recbole:$data" \
    --sft-examples "$train_examples" --out "$out/hinted"
"$bin" --log warn hint --scenes "$out/scenes-popularity" --prior "$prior" \
    --catalog "recbole:$data" --out "$out/hinted-popularity"

stamp "train sft"
"$bin" --log warn train sft --model default --data "$out/hinted/sft.jsonl" --out "$out/train" \
    --lr 1e-3 --micro-batch 1 --grad-accum 8 --max-len "$max_len" --eval-fraction 0.05 \
    --eval-every 12 --save-every 12

evaluate() { # scenes, out, extra args...
    local scenes="$1" dir="$2"
    shift 2
    "$bin" --log warn eval --scenes "$scenes" --mode direct --no-rotations --no-agent4rec \
        --out "$dir" "$@" > /dev/null
}
stamp "eval: SFT on hinted scenes (random negatives)"
evaluate "$out/hinted/scenes.eval.jsonl" "$out/eval-sft" --model default --adapter "$out/train" \
    --baselines none
stamp "eval: SFT on hinted scenes (popularity negatives)"
evaluate "$out/hinted-popularity/scenes.eval.jsonl" "$out/eval-sft-popularity" --model default \
    --adapter "$out/train" --baselines none
if [[ "${SKIP_BASE:-0}" != 1 ]]; then
    stamp "eval: base on hinted scenes (random negatives)"
    evaluate "$out/hinted/scenes.eval.jsonl" "$out/eval-base" --model default --baselines none
    stamp "eval: base on hinted scenes (popularity negatives)"
    evaluate "$out/hinted-popularity/scenes.eval.jsonl" "$out/eval-base-popularity" \
        --model default --baselines none
fi
stamp "baselines (the plain scenes: the same decisions and options)"
evaluate "$out/scenes/scenes.eval.jsonl" "$out/eval-baselines" --model none \
    --catalog "recbole:$data"
evaluate "$out/scenes-popularity/scenes.eval.jsonl" "$out/eval-baselines-popularity" \
    --model none --catalog "recbole:$data"
stamp "done"
python3 "$repo_root/bench/fidelity/table.py" "$out"/eval-*
