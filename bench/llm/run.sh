#!/usr/bin/env bash
# LLM engine benchmark: our engine, llama.cpp (llama-cpp-python) and HF transformers (PyTorch
# CPU, float32, SDPA, GGUF dequantised through gguf_file=) on the same model and the same prompts
# (bench/llm/prompts.json), with the same thread count. Prints one JSON line per engine and a table.
# On a CPU with Intel AMX, two more rows: ours with --matmul bf16 and transformers under
# torch.autocast(bfloat16). llama.cpp runs its AVX-512/VNNI build: its native AMX build dies with
# SIGILL on the VMs we measure on (llama-cpp-python 0.3.36, GGML_NATIVE=ON, tried 2026-11-27).
#
#   bench/llm/run.sh [MODEL.gguf]         default: the SmolLM2 GGUF from scripts/fetch-model.sh
#
# The peers run in throwaway virtual environments outside the project, never as dependencies:
#   LLAMA_CPP_PYTHON     python of a venv with llama-cpp-python  (default /tmp/mirrorsim-bench-llamacpp)
#   TRANSFORMERS_PYTHON  python of a venv with torch+transformers (default /tmp/mirrorsim-bench-hf)
# Missing default venvs are created (llama.cpp builds from source: several minutes on 2 cores).
# BENCH_THREADS (default 2) sets the threads of every engine.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bench_dir="$repo_root/bench/llm"
threads="${BENCH_THREADS:-2}"
model="${1:-$("$repo_root/scripts/fetch-model.sh")}"
prompts="$bench_dir/prompts.json"
out_dir="${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mirrorsim-llm-bench.XXXXXX")}"
mkdir -p "$out_dir"

llama_venv=/tmp/mirrorsim-bench-llamacpp
hf_venv=/tmp/mirrorsim-bench-hf
llama_python="${LLAMA_CPP_PYTHON:-$llama_venv/bin/python}"
hf_python="${TRANSFORMERS_PYTHON:-$hf_venv/bin/python}"

if [[ ! -x "$llama_python" ]]; then
    echo "creating $llama_venv (llama-cpp-python from source)" >&2
    python3 -m venv "$llama_venv"
    # AMX kernels of a native build die with 'illegal instruction' on VMs that do not enable AMX.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" \
        "$llama_venv/bin/pip" install --quiet llama-cpp-python==0.3.36 numpy >&2
fi
if [[ ! -x "$hf_python" ]]; then
    echo "creating $hf_venv (torch, transformers)" >&2
    python3 -m venv "$hf_venv"
    "$hf_venv/bin/pip" install --quiet torch transformers accelerate gguf numpy sentencepiece protobuf >&2
fi

echo "building our engine's benchmark (release)" >&2
(cd "$repo_root" && cargo build --quiet --release -p mirrorsim-llm --example bench_prompts)
ours="$repo_root/target/release/examples/bench_prompts"

echo "model: $model; threads: $threads; results in $out_dir" >&2
RAYON_NUM_THREADS="$threads" "$ours" "$model" "$prompts" | tail -n 1 > "$out_dir/mirrorsim.json"
ours_rows=(mirrorsim.json)
# bf16 on AMX where the CPU has it (the engine refuses it in words elsewhere).
if MIRRORSIM_MATMUL=bf16 RAYON_NUM_THREADS="$threads" "$ours" "$model" "$prompts" \
    > "$out_dir/mirrorsim_bf16.out" 2> "$out_dir/mirrorsim_bf16.err"; then
    tail -n 1 "$out_dir/mirrorsim_bf16.out" > "$out_dir/mirrorsim_bf16.json"
    ours_rows+=(mirrorsim_bf16.json)
else
    echo "no bf16 row: $(tail -n 1 "$out_dir/mirrorsim_bf16.err")" >&2
fi
OMP_NUM_THREADS="$threads" "$llama_python" "$bench_dir/peer_llama_cpp.py" "$model" "$prompts" "$threads" \
    | tail -n 1 > "$out_dir/llama_cpp.json"
OMP_NUM_THREADS="$threads" "$hf_python" "$bench_dir/peer_transformers.py" "$model" "$prompts" "$threads" \
    2>/dev/null | tail -n 1 > "$out_dir/transformers.json"
peer_rows=(llama_cpp.json transformers.json)
if [[ ${#ours_rows[@]} -gt 1 ]]; then
    # Our bf16 row's peer: PyTorch's own bf16 mixed precision (oneDNN AMX matmuls).
    BENCH_AUTOCAST=bf16 OMP_NUM_THREADS="$threads" "$hf_python" "$bench_dir/peer_transformers.py" \
        "$model" "$prompts" "$threads" 2>/dev/null | tail -n 1 > "$out_dir/transformers_bf16.json"
    peer_rows+=(transformers_bf16.json)
fi
for row in "${ours_rows[@]}" "${peer_rows[@]}"; do cat "$out_dir/$row"; done

python3 - "$out_dir" "${#ours_rows[@]}" "${ours_rows[@]}" "${peer_rows[@]}" <<'PY'
import json, os, sys
folder, ours_count, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ours_names = names[:ours_count]
rows = [json.load(open(os.path.join(folder, name))) for name in names]
columns = [("prefill_tok_s", "prefill tok/s", "{:.0f}"), ("decode_b1_tok_s", "decode b1 tok/s", "{:.1f}"),
           ("decode_b8_tok_s", "decode b8 tok/s", "{:.1f}"), ("score_scene_s", "scoring s/scene", "{:.2f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.0f}")]
print("| engine | " + " | ".join(title for _, title, _ in columns) + " |")
print("|---" * (len(columns) + 1) + "|")
for row in rows:
    print(f"| {row['engine']} | " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
peers = rows[len(ours_names):]
print()
for ours in rows[:len(ours_names)]:
    for label, group in (("f32/Q4_1 peers", [p for p in peers if "bf16" not in p["engine"]]),
                         ("all peers", peers)):
        best_score = min(peer["score_scene_s"] for peer in group)
        best_b8 = max(peer["decode_b8_tok_s"] for peer in group)
        print(f"{ours['engine']} vs the faster of the {label}: scoring speed-up "
              f"{best_score / ours['score_scene_s']:.2f}x; decode b8 ratio "
              f"{ours['decode_b8_tok_s'] / best_b8:.2f}x")
PY
