#!/usr/bin/env bash
# Scene-building benchmark: load ML-1M (RecBole atomic files from ../shared/data), build 10,000
# train + 1,000 eval scenes with the content, collaborative, popularity and random exposure
# sources on, render both prompts per scene and write the files. Reports wall time, scenes/s,
# peak RSS (/usr/bin/time -v) and the tool's own per-stage timings (--json).
#
# Usage: bench/scenes/run.sh            (env: DATA=path/to/ml-1m RUNS=3 THREADS=2 OUT=dir)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA="${DATA:-../shared/data/ml-1m}"
RUNS="${RUNS:-3}"
THREADS="${THREADS:-2}"
OUT="${OUT:-$(mktemp -d -t mirrorsim-scenes-bench.XXXXXX)}"

if [ ! -d "$DATA" ]; then
    echo "!!! $DATA is absent: the scene benchmark needs ML-1M from ../shared/data !!!" >&2
    exit 1
fi

cargo build --release -p mirrorsim
BIN=target/release/mirrorsim
export RAYON_NUM_THREADS="$THREADS"

echo "machine: $(nproc) cores visible, RAYON_NUM_THREADS=$THREADS; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "command: $BIN --log warn scenes --source recbole:$DATA --out $OUT/scenes --seed 0 --max-train 10000 --max-eval 1000 --negatives random=1,popularity=1,collaborative=1,content=1 --json"
printf '%-4s %8s %8s %9s %7s %7s %7s %8s %9s %8s %10s %9s\n' \
    run wall_s load_s split_s svd_s tfidf_s sample_s render_s writing_s scenes "scenes/s" peak_MiB
for run in $(seq 1 "$RUNS"); do
    /usr/bin/time -v "$BIN" --log warn scenes \
        --source "recbole:$DATA" --out "$OUT/scenes" --seed 0 \
        --max-train 10000 --max-eval 1000 \
        --negatives random=1,popularity=1,collaborative=1,content=1 \
        --json >"$OUT/run$run.json" 2>"$OUT/time$run.txt"
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$OUT/time$run.txt" \
        | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/time$run.txt")
    jq -r --arg run "$run" --arg wall "$wall" --arg rss "$rss_kib" '
        [$run, ($wall|tonumber), .timings.load_s, .timings.split_s, .timings.svd_s,
         .timings.tfidf_s, .timings.sampling_s, .timings.rendering_s, .timings.writing_s,
         .scenes, (.scenes / (($wall|tonumber) - .timings.load_s)), (($rss|tonumber) / 1024)]
        | "\(.[0])\t\(.[1])\t\(.[2])\t\(.[3])\t\(.[4])\t\(.[5])\t\(.[6])\t\(.[7])\t\(.[8])\t\(.[9])\t\(.[10])\t\(.[11])"' \
        "$OUT/run$run.json" \
        | awk -F'\t' '{ printf "%-4s %8.2f %8.3f %9.3f %7.3f %7.3f %7.3f %8.3f %9.3f %8d %10.0f %9.0f\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12 }'
done
echo "scenes/s = scenes / (wall − load): building, rendering and writing, process start and exit included."
echo "files: $OUT/scenes ($(du -sh "$OUT/scenes" | cut -f1)); raw outputs: $OUT/run*.json, $OUT/time*.txt"
