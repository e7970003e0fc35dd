"""HF transformers (PyTorch, float32, SDPA, GGUF dequantised via gguf_file=) side of the LLM
benchmark; prints one JSON object. BENCH_DEVICE=cuda runs on the GPU (default: cpu).
BENCH_AUTOCAST=bf16 runs every forward under torch.autocast(bfloat16): PyTorch's own mixed
precision, whose matmuls use oneDNN's AMX kernels on CPUs that have them (the peer of our
--matmul bf16).
    python peer_transformers.py <model.gguf> <prompts.json> [threads]
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

model_path, prompts_path = os.path.abspath(sys.argv[1]), sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
torch.set_num_threads(threads)
prompts = json.load(open(prompts_path, encoding="utf-8"))
folder, file_name = os.path.split(model_path)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32,
                                             attn_implementation="sdpa")
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
model.to(DEVICE)
model.eval()
PAD = 2
AUTOCAST = os.environ.get("BENCH_AUTOCAST", "")
if AUTOCAST not in ("", "bf16"):
    sys.exit(f"BENCH_AUTOCAST must be bf16 or unset, not {AUTOCAST!r}")
if AUTOCAST:
    # Entered once for the whole script: autocast is thread-local state.
    torch.autocast(DEVICE.type, dtype=torch.bfloat16).__enter__()


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def tensor(values):
    return torch.tensor(values, device=DEVICE)


def tokenize(text):
    return tokenizer.encode(text, add_special_tokens=False)


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - started)
    return min(times)


results = {"engine": "transformers" + (" bf16-autocast" if AUTOCAST else ""), "threads": threads,
           "weights": "f32 (dequantised Q4_1)" + (", bf16 autocast" if AUTOCAST else ""),
           "device": str(DEVICE),
           "version": f"transformers {transformers.__version__}, torch {torch.__version__}"}
prefill_ids = tensor([tokenize(prompts["prefill_text"])])
with torch.inference_mode():
    model(prefill_ids[:, :32])  # warm-up
    seconds = best_of(3, lambda: model(prefill_ids, use_cache=True))
results["prefill_tokens"] = prefill_ids.shape[1]
results["prefill_tok_s"] = prefill_ids.shape[1] / seconds
new_tokens = prompts["decode_new_tokens"]


def decode_rate(texts):
    sequences = [tokenize(text) for text in texts]
    longest = max(len(ids) for ids in sequences)
    input_ids = tensor([[PAD] * (longest - len(ids)) + ids for ids in sequences])
    mask = tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in sequences])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past, next_ids = out.past_key_values, out.logits[:, -1].argmax(-1)
        positions = positions[:, -1:]
        sync()
        started = time.perf_counter()
        for _ in range(new_tokens):
            mask = torch.cat([mask, torch.ones(len(sequences), 1, dtype=mask.dtype, device=DEVICE)], dim=1)
            positions = positions + 1
            out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                        past_key_values=past, use_cache=True)
            past, next_ids = out.past_key_values, out.logits[:, -1].argmax(-1)
        sync()
        return len(sequences) * new_tokens / (time.perf_counter() - started)


results["decode_b1_tok_s"] = decode_rate(prompts["decode_texts"][:1])
results["decode_b8_tok_s"] = decode_rate(prompts["decode_texts"][:8])

scene = prompts["scene"]
label_ids = [tokenize(label)[0] for label in scene["labels"]]
prompt_ids = tokenize(scene["prompt_text"])
continuations = []
for continuation in scene["continuations"]:
    full = tokenize(scene["prompt_text"] + continuation)
    assert full[:len(prompt_ids)] == prompt_ids, "prompt is not a token prefix"
    continuations.append(full[len(prompt_ids):])


def label_distribution(logits):
    chosen = logits[label_ids].double()
    return torch.softmax(chosen, dim=0).cpu().numpy()


def score_with_kv_reuse():
    """Prompt once; each continuation on top of its cache, which is cut back after each."""
    with torch.inference_mode():
        out = model(tensor([prompt_ids]), use_cache=True)
        cache = out.past_key_values
        distributions = []
        for ids in continuations:
            out = model(tensor([ids]), past_key_values=cache, use_cache=True)
            distributions.append(label_distribution(out.logits[0, -1]))
            cache.crop(-(cache.get_seq_length() - len(prompt_ids)))  # drop the continuation
        return distributions


def score_without_reuse():
    with torch.inference_mode():
        return [label_distribution(model(tensor([prompt_ids + ids])).logits[0, -1])
                for ids in continuations]


reused = score_with_kv_reuse()
plain = score_without_reuse()
results["score_max_abs_diff_reuse_vs_plain"] = float(np.max(np.abs(np.array(reused) - np.array(plain))))
results["score_scene_s"] = best_of(2, score_with_kv_reuse)
results["score_scene_no_reuse_s"] = best_of(1, score_without_reuse)
results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if DEVICE.type == "cuda":
    results["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(results))
