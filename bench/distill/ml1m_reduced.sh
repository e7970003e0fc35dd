#!/usr/bin/env bash
# A real run of configs/movielens-1m.toml on a reduced size: the shipped file, copied into a temp
# folder with its relative paths made absolute and only these keys changed, run by `mirrorsim run`
# (scenes → rationales strong (Qwen2.5-Coder-0.5B) and weak (SmolLM2) → scores → distill), then
# run again to show every stage is skipped as up to date.
#
# Usage: bench/distill/ml1m_reduced.sh
#   env: TRAIN_SCENES=200 EVAL_SCENES=50 LLM_SCENES=8 N=2 MAX_TOKENS=64 TOP_K=2 THREADS=2 OUT=dir
#        BIN=path/to/mirrorsim  (skip the release build and use this binary)
set -euo pipefail
cd "$(dirname "$0")/../.."

TRAIN_SCENES="${TRAIN_SCENES:-200}"
EVAL_SCENES="${EVAL_SCENES:-50}"
LLM_SCENES="${LLM_SCENES:-8}"
N="${N:-2}"
MAX_TOKENS="${MAX_TOKENS:-64}"
TOP_K="${TOP_K:-2}"
THREADS="${THREADS:-2}"
OUT="${OUT:-$(mktemp -d -t mirrorsim-ml1m-reduced.XXXXXX)}"

if [ -z "${BIN:-}" ]; then
    cargo build --release -p mirrorsim
    BIN="$PWD/target/release/mirrorsim"
fi
scripts/fetch-model.sh >/dev/null
[ -f models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf ] || scripts/fetch-model.sh --qwen >/dev/null
export RAYON_NUM_THREADS="$THREADS"
mkdir -p "$OUT"

python3 - configs/movielens-1m.toml "$OUT/movielens-1m.reduced.toml" "$OUT/run" \
    "$TRAIN_SCENES" "$EVAL_SCENES" "$LLM_SCENES" "$N" "$MAX_TOKENS" "$TOP_K" <<'EOF'
import os, re, sys, tomllib
source, target, run_dir, train, evals, llm_scenes, n, max_tokens, top_k = sys.argv[1:]
base = os.path.dirname(os.path.abspath(source))
overrides = {
    "": {"run_dir": f'"{run_dir}"'},
    "scenes": {"max_train_scenes": train, "max_eval_scenes": evals},
    "rationales": {"n": n, "max_tokens": max_tokens, "max_scenes": llm_scenes},
    "distill": {"top_k": top_k},
}
def absolute(match):
    key, prefix, path = match.group(1), match.group(2), match.group(3)
    if path == "default" or os.path.isabs(path):
        return match.group(0)
    return f'{key} = "{prefix}{os.path.normpath(os.path.join(base, path))}"'
out, section, pending = [], "", dict(overrides[""])
def flush():
    out.extend(f"{k} = {v}" for k, v in pending.items())
for line in open(source).read().splitlines():
    header = re.match(r"^\[([^\]]+)\]\s*$", line)
    if header:
        flush()
        section = header.group(1)
        pending = dict(overrides.get(section, {}))
        out.append(line)
        continue
    key = re.match(r"^([A-Za-z_]+)\s*=", line)
    if key and key.group(1) in pending:
        out.append(f"{key.group(1)} = {pending.pop(key.group(1))}")
        continue
    line = re.sub(r'^(path|spec) = "((?:[a-z]+:)?)([^"]+)"', absolute, line)
    out.append(line)
flush()
text = "\n".join(out) + "\n"
tomllib.loads(text)
open(target, "w").write(text)
EOF
echo "reduced config $OUT/movielens-1m.reduced.toml (diff against the shipped one):"
diff configs/movielens-1m.toml "$OUT/movielens-1m.reduced.toml" | sed 's/^/  /' || true
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: $BIN --log warn run $OUT/movielens-1m.reduced.toml"
/usr/bin/time -v "$BIN" --log warn run "$OUT/movielens-1m.reduced.toml" 2>"$OUT/time.first.txt" \
    | tee "$OUT/first.txt"
grep -E 'loading model|Elapsed|Maximum resident' "$OUT/time.first.txt" | sed 's/^\s*/  /'
echo "second run (everything up to date):"
"$BIN" --log warn run "$OUT/movielens-1m.reduced.toml" | sed 's/^/  /'
jq -c '{scenes, candidates, kept, dropped}' "$OUT/run/distill/distill.summary.json"
wc -l "$OUT"/run/scenes/scenes.*.jsonl "$OUT"/run/rationales.*.jsonl "$OUT"/run/scores.jsonl \
    "$OUT"/run/distill/*.jsonl | sed 's/^/  /'
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
