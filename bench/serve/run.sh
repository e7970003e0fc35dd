#!/usr/bin/env bash
# Load test of `mirrorsim serve` over loopback only, bounded in time.
#
# Starts the simulator service (SmolLM2-135M-Instruct, the embedded ml-latest-small catalog) on a
# free 127.0.0.1 port, then runs wrk for DURATION seconds at each concurrency level in
# CONCURRENCY: POST /v1/simulate, direct mode, random users and slates (bench/serve/simulate.lua).
# Records requests/s, p50/p90/p99 latency, 5xx count (must be 0), the server's RSS at start and
# end (and its peak) and the load average, in $OUT/summary.txt.
#
# Load generator: wrk 4.1 from Debian (apt-get, a prebuilt binary: seconds to install), installed
# here when missing; oha would need `cargo install` (hundreds of crates to compile on a shared
# 2-core machine).
#
#   bench/serve/run.sh                          # 60 s at 1, 4 and 16 connections
#   DURATION=20 CONCURRENCY="1 8" bench/serve/run.sh
#   MIRRORSIM_BIN=target/release/mirrorsim bench/serve/run.sh
#   SERVE_ARGS="--history-len 3" bench/serve/run.sh   # extra `mirrorsim serve` flags
#
# Between levels one request is sent and awaited, so each level starts with the engine idle
# (requests wrk abandons at the end of a level may still be running). A last 10 s level on
# GET /healthz measures the HTTP layer alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-60}
CONCURRENCY=${CONCURRENCY:-"1 4 16"}
BIN=${MIRRORSIM_BIN:-target/debug/mirrorsim}
OUT=${OUT:-target/bench-serve}
CATALOG=${CATALOG:-movielens:data/ml-latest-small}
SERVE_ARGS=${SERVE_ARGS:-}
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y wrk >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi
if [ -z "${MIRRORSIM_BIN:-}" ]; then
  # The dev profile builds the engine and every dependency with opt-level 3.
  cargo build -p mirrorsim --bin mirrorsim >&2
fi

# shellcheck disable=SC2086
"$BIN" serve --catalog "$CATALOG" --host 127.0.0.1 --port 0 $SERVE_ARGS \
  >"$OUT/server.out" 2>"$OUT/server.log" &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
  URL=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$OUT/server.out")
  [ -n "$URL" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log" >&2; echo "the server exited" >&2; exit 1; }
  sleep 0.5
done
[ -n "$URL" ] || { echo "the server did not start within 300 s" >&2; exit 1; }
case "$URL" in http://127.0.0.1:*) ;; *) echo "not a loopback URL: $URL" >&2; exit 1 ;; esac

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# One request, awaited: the warm-up (first-call allocations belong to the start figure), and
# between levels the wait until the engine is idle.
one_request() {
  curl -sf --max-time 900 -X POST "$URL/v1/simulate" -H 'content-type: application/json' \
    -d '{"user_id":"1","item_ids":["1","2","260","2571","356"]}' >/dev/null
}
one_request
RSS_START=$(rss_kb)
LOAD_START=$(load)

# RSS and load average every 2 s while the load runs.
( while kill -0 $SERVER 2>/dev/null; do echo "$(date +%s) $(rss_kb) $(load)"; sleep 2; done ) \
  >"$OUT/samples.txt" 2>/dev/null &
SAMPLER=$!

{
  echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "server: $BIN serve --catalog $CATALOG $SERVE_ARGS ($URL), model $(curl -sf "$URL/v1/model" | sed -n 's/.*"model":"\([^"]*\)".*/\1/p')"
  echo "started: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $LOAD_START, RSS ${RSS_START} kB"
} | tee "$OUT/summary.txt"

for c in $CONCURRENCY; do
  threads=$(( c < 2 ? c : 2 ))
  echo "wrk -t$threads -c$c -d${DURATION}s --timeout 300s -s bench/serve/simulate.lua $URL" >&2
  result=$(wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 300s \
    -s bench/serve/simulate.lua "$URL" | tee "$OUT/wrk-c$c.txt" | grep '^RESULT')
  echo "c=$c ${result#RESULT } rss_kb=$(rss_kb) load=$(load | tr ' ' '/')" | tee -a "$OUT/summary.txt"
  one_request
done
health=$(wrk -t2 -c16 -d10s "$URL/healthz" | awk '/Requests\/sec/ {print $2} /Latency/ && !l {print $2; l = 1}' | paste -sd' ')
echo "GET /healthz, 16 connections, 10 s: latency mean ${health% *}, ${health#* } requests/s" | tee -a "$OUT/summary.txt"

RSS_END=$(rss_kb)
kill $SAMPLER 2>/dev/null || true
RSS_PEAK=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$OUT/samples.txt")
LOAD_RANGE=$(awk 'NR == 1 {lo = $3; hi = $3} $3 < lo {lo = $3} $3 > hi {hi = $3} END {print lo "–" hi}' "$OUT/samples.txt")
kill -INT $SERVER
wait $SERVER && STOPPED="cleanly (exit 0)" || STOPPED="with exit $?"
trap - EXIT
{
  echo "ended: $(date -u '+%Y-%m-%d %H:%M UTC'), RSS ${RSS_END} kB (start ${RSS_START}, peak ${RSS_PEAK}), 1-min load average during the run ${LOAD_RANGE}"
  echo "server stopped on SIGINT $STOPPED"
} | tee -a "$OUT/summary.txt"
if grep -q 'e5xx=[1-9]' "$OUT/summary.txt"; then
  echo "FAIL: the server answered 5xx" >&2
  exit 1
fi
