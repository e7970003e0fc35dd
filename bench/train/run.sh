#!/usr/bin/env bash
# LoRA SFT speed: our trainer (examples/sft_step.rs) against PyTorch + PEFT on CPU, same model
# (SmolLM2-135M-Instruct GGUF, dequantised to f32 by both), same token sequence, same LoRA
# (r=16, alpha=32, all seven projections), batch 1, same thread count. On a CPU with Intel AMX,
# two more rows: ours with the frozen base products in bf16 (MIRRORSIM_MATMUL=bf16) and PEFT
# under torch.autocast(bfloat16).
#
#   bench/train/run.sh [MODEL.gguf]      SEQ_LEN (default 512), STEPS (default 4), BENCH_THREADS (2)
#
# The peer runs in a throwaway virtual environment outside the project, never a dependency:
#   PEFT_PYTHON  python of a venv with torch, transformers, gguf and peft
#                (default /tmp/mirrorsim-bench-peft, created when missing).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
threads="${BENCH_THREADS:-2}"
seq_len="${SEQ_LEN:-512}"
steps="${STEPS:-4}"
model="${1:-$("$repo_root/scripts/fetch-model.sh")}"
venv=/tmp/mirrorsim-bench-peft
python="${PEFT_PYTHON:-$venv/bin/python}"
if [[ ! -x "$python" ]]; then
    echo "creating $venv (torch, transformers, gguf, peft)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch transformers accelerate gguf peft numpy sentencepiece protobuf >&2
fi

echo "building our trainer's benchmark (release)" >&2
(cd "$repo_root" && cargo build --quiet --release -p mirrorsim-train --example sft_step)
echo "model: $model; seq_len $seq_len; $steps steps; threads $threads; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ours=$(RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="$threads" \
    "$repo_root/target/release/examples/sft_step" "$model" "$seq_len" "$steps" | tail -n 1)
peer=$(OMP_NUM_THREADS="$threads" "$python" "$repo_root/bench/train/peer_peft.py" \
    "$model" "$seq_len" "$steps" "$threads" 2>/dev/null | tail -n 1)
rows=("$ours" "$peer")
# bf16 where the CPU has AMX: ours with MIRRORSIM_MATMUL=bf16 beside PyTorch's bf16 autocast.
if ours_bf16=$(MIRRORSIM_MATMUL=bf16 RAYON_NUM_THREADS="$threads" CANDLE_NUM_THREADS="$threads" \
    "$repo_root/target/release/examples/sft_step" "$model" "$seq_len" "$steps" 2>/dev/null | tail -n 1) \
    && [[ -n "$ours_bf16" ]]; then
    peer_bf16=$(BENCH_AUTOCAST=bf16 OMP_NUM_THREADS="$threads" "$python" \
        "$repo_root/bench/train/peer_peft.py" "$model" "$seq_len" "$steps" "$threads" 2>/dev/null | tail -n 1)
    rows+=("$ours_bf16" "$peer_bf16")
else
    echo "no bf16 rows: this CPU has no AMX" >&2
fi
printf '%s\n' "${rows[@]}"
python3 - "${rows[@]}" <<'PY'
import json, sys
rows = [json.loads(row) for row in sys.argv[1:]]
print(f"{'':28} {'step s':>8} {'tokens/s':>9} {'peak RSS MiB':>13}")
for row in rows:
    print(f"{row['engine']:28} {row['step_s']:8.2f} {row['tokens_per_s']:9.1f} {row['peak_rss_mib']:13.0f}")
for ours, peer in zip(rows[0::2], rows[1::2]):
    print(f"ratio ({ours['engine']} / {peer['engine']}): tokens/s "
          f"{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x, "
          f"peak RSS {ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x")
if len(rows) == 4:
    ours, peer = rows[2], rows[1]
    print(f"ratio ({ours['engine']} / {peer['engine']}): tokens/s "
          f"{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x, "
          f"peak RSS {ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x")
PY
