#!/usr/bin/env bash
# Hybrid simulator tables of FIDELITY.md (issue 8): the LLM alone, each prior alone (temperature
# fitted on validation) and the hybrid, on ML-1M eval scenes with
#   (1) popularity-weighted negatives, and
# with rating prediction (MAE/RMSE) on the same eval decisions, and
#   (2) a cold-start slice: eval scenes whose real item had fewer than 5 distinct pre-cutoff users
#       (random negatives; a targeted sample, since a plain sample of 500 holds none).
# Validation scenes come from the last 10 % of the pre-cutoff period (`--validation-scenes`),
# never from the eval period.
#
#   bench/fidelity/hybrid.sh        OUT (default /tmp/mirrorsim-hybrid), EVAL_SCENES (200),
#                                   COLD_SCENES (150), VALIDATION (104), HISTORY (6),
#                                   HINT_PRIORS ("knn": priors also tried as a hint in the prompt,
#                                   each one more LLM pass over eval and validation scenes)
# Then: python3 bench/fidelity/hybrid_table.py OUT/popularity/eval-*/predictions.jsonl
#       python3 bench/fidelity/hybrid_table.py OUT/cold/eval-*/predictions.jsonl
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-/tmp/mirrorsim-hybrid}"
eval_scenes="${EVAL_SCENES:-200}"
cold_scenes="${COLD_SCENES:-150}"
hint_priors="${HINT_PRIORS:-knn}"
validation="${VALIDATION:-104}"
history="${HISTORY:-6}"
data="$repo_root/../shared/data/ml-1m"
if [[ -z "${BIN:-}" ]]; then
    (cd "$repo_root" && cargo build --quiet --release -p mirrorsim)
fi
bin="${BIN:-$repo_root/target/release/mirrorsim}"
mkdir -p "$out"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/timings.log"; }

scenes() {  # dir negatives max-eval max-train seed
    "$bin" --log warn scenes --source "recbole:$data" --out "$out/$1" --seed "$5" \
        --max-train "$4" --max-eval "$3" --eval-options 5 --train-options 5..5 \
        --history "$history" --negatives "$2" > /dev/null
}

hybrids() {  # set-name eval-scenes validation-scenes
    local name="$1" eval="$2" val="$3" prior
    for prior in knn ease popularity; do
        stamp "$name: eval with prior $prior"
        # The LLM's answers are computed for the first prior and replayed from its journal.
        if [[ "$prior" != knn && ! -e "$out/$name/eval-$prior/journal.sqlite" ]]; then
            mkdir -p "$out/$name/eval-$prior"
            cp "$out/$name/eval-knn/journal.sqlite" "$out/$name/eval-$prior/journal.sqlite"
        fi
        local hint=()
        if [[ " ${hint_priors//,/ } " == *" $prior "* ]]; then hint=(--prior-in-prompt); fi
        # Rating prediction once per set, with the first prior.
        if [[ "$prior" == knn ]]; then hint+=(--ratings); fi
        "$bin" --log warn eval --scenes "$eval" --model default --mode direct --repeats 5 "${hint[@]}" \
            --no-rotations --no-agent4rec --catalog "recbole:$data" --prior "$prior" \
            --validation-scenes "$val" --max-validation-scenes "$validation" \
            --out "$out/$name/eval-$prior" > /dev/null
    done
}

stamp "popularity negatives: eval and validation scenes"
scenes popularity/scenes popularity=1 "$eval_scenes" 0 0
scenes popularity/scenes-val popularity=1 0 4000 1
hybrids popularity "$out/popularity/scenes/scenes.eval.jsonl" \
    "$out/popularity/scenes-val/scenes.train.jsonl"

stamp "cold start: 30,000 eval decisions, then the targeted sample"
scenes cold/all random=1 30000 0 0
scenes cold/scenes-val random=1 0 4000 1
python3 - "$data/ml-1m.inter.gz" "$out/cold/all" "$cold_scenes" <<'PY'
import gzip, json, random, sys
inter, folder, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
cutoff = json.load(open(f"{folder}/scenes.summary.json"))["cutoff_timestamp"]
users = {}
with gzip.open(inter, "rt") as f:
    f.readline()
    for line in f:
        u, i, _, t = line.rstrip("\n").split("\t")
        if int(float(t)) < cutoff:
            users.setdefault(i, set()).add(u)
scenes = [l for l in open(f"{folder}/scenes.eval.jsonl")
          if len(users.get(json.loads(l)["item_id"], ())) < 5]
random.Random(0).shuffle(scenes)
with open(f"{folder}/scenes.cold.jsonl", "w") as out:
    out.writelines(scenes[:wanted])
print(f"cold-start eval scenes: {len(scenes)} of the eval period, {min(wanted, len(scenes))} kept")
PY
hybrids cold "$out/cold/all/scenes.cold.jsonl" "$out/cold/scenes-val/scenes.train.jsonl"
stamp "done"
