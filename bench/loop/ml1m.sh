#!/usr/bin/env bash
# The ML-1M figures of FIDELITY.md ("Recommender-in-the-loop and augmentation"): augmentation
# with the default SmolLM2-135M simulator, then simulate-recs with the three built-in
# recommenders. Reads ML-1M from ../shared/data (never copied into the repo).
# Usage: bench/loop/ml1m.sh OUT_DIR [MIRRORSIM_BINARY]
set -euo pipefail
out=${1:?usage: bench/loop/ml1m.sh OUT_DIR [MIRRORSIM_BINARY]}
bin=${2:-target/debug/mirrorsim}
data=../shared/data/ml-1m
"$bin" augment --catalog "recbole:$data" --recommender knn --evaluate knn,ease \
  --cut-quantile 0.8 --users 120 --page-size 10 --pages 2 --picks-per-user 1 \
  --history-len 5 --seed 0 --out "$out/augment"
"$bin" simulate-recs --catalog "recbole:$data" --builtin popularity,knn,ease \
  --cut-quantile 0.8 --users 30 --page-size 10 --pages 2 --history-len 5 --seed 0 \
  --out "$out/simulate-recs"
