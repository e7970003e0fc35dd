#!/usr/bin/env bash
# The project's test command (README: "Run the tests").
# Fetches the default model if it is not cached yet, then runs every test of the workspace.
# Real-data tests read ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so the run closes on nextest's summary.
  cargo test --workspace --doc
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
