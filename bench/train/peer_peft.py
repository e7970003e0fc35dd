"""LoRA SFT step time with PyTorch + PEFT on CPU, the same setup as our sft_step example:
the GGUF model dequantised by transformers (float32), LoRA r=16, alpha=32, dropout 0.05 on
q,k,v,o,gate,up,down, AdamW lr 2e-4, batch 1, the same fixed token sequence, loss on its second
half. Prints one JSON line: median step time over the steps after the first, peak RSS.
BENCH_DEVICE=cuda trains on the GPU (default: cpu). BENCH_AUTOCAST=bf16 runs forward and loss
under torch.autocast(bfloat16), PyTorch's mixed precision (oneDNN AMX matmuls where the CPU has
AMX; weights, LoRA parameters and optimizer stay f32): the peer of our MIRRORSIM_MATMUL=bf16."""
import contextlib
import json
import os
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model_path, seq_len, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(os.path.abspath(model_path)),
    gguf_file=os.path.basename(model_path),
    torch_dtype=torch.float32,
)
device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
model.to(device)
model = get_peft_model(model, LoraConfig(
    r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
))
model.train()
tokens = torch.tensor([[(i * 7919) % 49000 + 17 for i in range(seq_len)]], device=device)
labels = tokens.clone()
labels[0, : seq_len // 2] = -100
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
autocast = os.environ.get("BENCH_AUTOCAST", "")
if autocast not in ("", "bf16"):
    sys.exit(f"BENCH_AUTOCAST must be bf16 or unset, not {autocast!r}")
times = []
for step in range(steps):
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        loss = model(input_ids=tokens, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    print(f"step {step}: {total:.2f} s = {seq_len / total:.0f} tokens/s", file=sys.stderr)
    if step > 0 or steps == 1:
        times.append(total)
times.sort()
median = times[len(times) // 2]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu = {"peak_gpu_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20)} if device.type == "cuda" else {}
print(json.dumps({"engine": "pytorch+peft" + (" bf16-autocast" if autocast else ""), "device": str(device), "torch": torch.__version__, "seq_len": seq_len,
                  **gpu,
                  "step_s": round(median, 3), "tokens_per_s": round(seq_len / median, 1),
                  "peak_rss_mib": round(peak)}))
