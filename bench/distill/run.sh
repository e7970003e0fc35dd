#!/usr/bin/env bash
# Scoring benchmark of the distillation pipeline: on ML-1M eval scenes (5 options) with SmolLM2 as
# the predictor, scenes/s for `mirrorsim score` over 10 strong + 10 weak rationales per scene, and
# the share of the stage's wall time spent inside the model (the Backend calls, timed by the
# MeteredBackend wrapper the command puts under the run journal) versus everything else: reading
# the scene and rationale files, the journal (hashing, SQLite), building the requests, sampling
# behaviours, writing the output.
#
# The rationales are generated once per run of this script (SmolLM2 for both sources, strong at
# temperature 0.7 and weak at 1.3 as in configs/demo.toml; generation time reported separately),
# then scored RUNS times, each with a fresh journal (every request goes to the model), and once
# more answered entirely from the journal (the pipeline's cost with no model work at all).
#
# Usage: bench/distill/run.sh
#   env: DATA=path/to/ml-1m SCENES=6 N=10 MAX_TOKENS=96 RUNS=2 THREADS=2 OUT=dir
#        BIN=path/to/mirrorsim  (skip the release build and use this binary)
#        RATIONALES_FROM=dir  (reuse the scenes + rationales of an earlier run's OUT)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${DATA:-../shared/data/ml-1m}"
SCENES="${SCENES:-6}"
N="${N:-10}"
MAX_TOKENS="${MAX_TOKENS:-96}"
RUNS="${RUNS:-2}"
THREADS="${THREADS:-2}"
OUT="${OUT:-$(mktemp -d -t mirrorsim-distill-bench.XXXXXX)}"
RATIONALES_FROM="${RATIONALES_FROM:-}"

if [ ! -d "$DATA" ]; then
    echo "!!! $DATA is absent: the distillation benchmark needs ML-1M from ../shared/data !!!" >&2
    exit 1
fi

if [ -z "${BIN:-}" ]; then
    cargo build --release -p mirrorsim
    BIN=target/release/mirrorsim
fi
MODEL="$(scripts/fetch-model.sh)"
export RAYON_NUM_THREADS="$THREADS"
mkdir -p "$OUT"

echo "machine: $(nproc) cores visible, RAYON_NUM_THREADS=$THREADS; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $MODEL; out: $OUT"

seconds_of() { # elapsed wall time from a `/usr/bin/time -v` report
    awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$1" \
        | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }'
}

if [ -n "$RATIONALES_FROM" ]; then
    cp "$RATIONALES_FROM"/scenes.bench.jsonl "$RATIONALES_FROM"/rationales.strong.jsonl \
        "$RATIONALES_FROM"/rationales.weak.jsonl "$OUT"/
    echo "rationales reused from $RATIONALES_FROM"
else
    "$BIN" --log warn scenes --source "recbole:$DATA" --out "$OUT/scenes" --seed 0 \
        --max-train 1 --max-eval "$SCENES" --eval-options 5 >/dev/null
    head -n "$SCENES" "$OUT/scenes/scenes.eval.jsonl" >"$OUT/scenes.bench.jsonl"
    for role in strong weak; do
        temperature=0.7
        [ "$role" = weak ] && temperature=1.3
        echo "command: $BIN --log warn rationales --scenes $OUT/scenes.bench.jsonl --role $role --n $N --temperature $temperature --max-tokens $MAX_TOKENS --model $MODEL --out $OUT/rationales.$role.jsonl --journal $OUT/rationales.journal.sqlite"
        /usr/bin/time -v "$BIN" --log warn rationales --scenes "$OUT/scenes.bench.jsonl" \
            --role "$role" --n "$N" --temperature "$temperature" --max-tokens "$MAX_TOKENS" \
            --model "$MODEL" --out "$OUT/rationales.$role.jsonl" \
            --journal "$OUT/rationales.journal.sqlite" >/dev/null 2>"$OUT/rationales.$role.log"
        grep -E '^(rationales|time:)' "$OUT/rationales.$role.log" | sed 's/^/  /'
        echo "  generation wall (process): $(seconds_of "$OUT/rationales.$role.log") s"
    done
fi

scenes=$(wc -l <"$OUT/scenes.bench.jsonl")
rationales=$(cat "$OUT/rationales.strong.jsonl" "$OUT/rationales.weak.jsonl" | wc -l)
echo "scoring $scenes scenes, $rationales rationales ($(jq -s 'map(.completion_tokens) | add / length | floor' \
    "$OUT/rationales.strong.jsonl" "$OUT/rationales.weak.jsonl") completion tokens each on average)"
echo "command: $BIN --log warn score --scenes $OUT/scenes.bench.jsonl --rationales $OUT/rationales.strong.jsonl $OUT/rationales.weak.jsonl --model $MODEL --out $OUT/scores.jsonl --journal JOURNAL"

printf '%-9s %9s %9s %10s %10s %9s %9s %9s %10s\n' \
    run load_avg stage_s model_s outside_s outside% scenes/s process_s peak_MiB
score_once() { # $1 = label, $2 = journal
    local label="$1" journal="$2" log="$OUT/score.$1.log"
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -v "$BIN" --log warn score --scenes "$OUT/scenes.bench.jsonl" \
        --rationales "$OUT/rationales.strong.jsonl" "$OUT/rationales.weak.jsonl" \
        --model "$MODEL" --out "$OUT/scores.jsonl" --journal "$journal" >/dev/null 2>"$log"
    # time: T s total, M s in the model (C calls), O s outside it (P %); model loaded in L s
    local line total model outside percent
    line=$(grep '^time:' "$log")
    total=$(sed -E 's/^time: ([0-9.]+) s total.*/\1/' <<<"$line")
    model=$(sed -E 's/.*total, ([0-9.]+) s in the model.*/\1/' <<<"$line")
    outside=$(sed -E 's/.*calls\), ([0-9.]+) s outside.*/\1/' <<<"$line")
    percent=$(sed -E 's/.*outside it \(([0-9.]+) %\).*/\1/' <<<"$line")
    printf '%-9s %9s %9s %10s %10s %9s %9.3f %9s %10d\n' "$label" "$load" "$total" "$model" \
        "$outside" "$percent" "$(echo "$scenes / $total" | bc -l)" "$(seconds_of "$log")" \
        "$(( $(awk -F': ' '/Maximum resident set size/ {print $2}' "$log") / 1024 ))"
}

for run in $(seq 1 "$RUNS"); do
    rm -f "$OUT"/score.journal."$run".sqlite*
    score_once "fresh-$run" "$OUT/score.journal.$run.sqlite"
done
score_once journal "$OUT/score.journal.1.sqlite"
grep -E '^(scores|journal:)' "$OUT/score.journal.log" | sed 's/^/  rerun: /'
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
