#!/usr/bin/env bash
# The project's test command (README: "Run the tests").
# Fetches the default model if it is not cached yet, then runs every test of the workspace.
# Real-data tests read ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
