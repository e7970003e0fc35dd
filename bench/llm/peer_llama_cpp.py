"""llama.cpp (llama-cpp-python) side of the LLM benchmark; prints one JSON object.
    python peer_llama_cpp.py <model.gguf> <prompts.json> [threads]
"""
import ctypes
import json
import resource
import sys
import time

import llama_cpp
import llama_cpp.llama_cpp as raw
import numpy as np

model_path, prompts_path = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
prompts = json.load(open(prompts_path, encoding="utf-8"))
BATCH_SEQUENCES = 8

# The high-level wrapper opens contexts for one sequence; batch decoding needs several.
_default_params = raw.llama_context_default_params


def _params_with_sequences():
    params = _default_params()
    params.n_seq_max = 16
    params.kv_unified = True
    return params


raw.llama_context_default_params = _params_with_sequences
llm = llama_cpp.Llama(model_path=model_path, n_ctx=4096, n_batch=1024, n_ubatch=512,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
ctx = llm._ctx.ctx
vocab = llm.n_vocab()
memory = raw.llama_get_memory(ctx)


def tokenize(text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def clear():
    raw.llama_memory_clear(memory, True)


def decode(entries):
    """entries: (token, position, sequence, wants_logits). Returns rows of logits in order."""
    batch = raw.llama_batch_init(len(entries), 0, 1)
    try:
        for index, (token, position, sequence, wants) in enumerate(entries):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = wants
        batch.n_tokens = len(entries)
        if raw.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        rows = []
        for index, (_, _, _, wants) in enumerate(entries):
            if wants:
                pointer = raw.llama_get_logits_ith(ctx, index)
                rows.append(np.ctypeslib.as_array(pointer, shape=(vocab,)).copy())
        return rows
    finally:
        raw.llama_batch_free(batch)


def prefill(tokens, sequence=0, start=0):
    last = None
    for offset in range(0, len(tokens), 512):
        chunk = tokens[offset:offset + 512]
        entries = [(t, start + offset + i, sequence, offset + i == len(tokens) - 1)
                   for i, t in enumerate(chunk)]
        rows = decode(entries)
        if rows:
            last = rows[-1]
    return last


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


results = {"engine": "llama.cpp", "version": f"llama-cpp-python {llama_cpp.__version__}",
           "threads": threads, "weights": "Q4_1 as stored"}

prefill_ids = tokenize(prompts["prefill_text"])
def run_prefill():
    clear()
    prefill(prefill_ids)
prefill(prefill_ids[:32])  # warm-up
seconds = best_of(3, run_prefill)
results["prefill_tokens"] = len(prefill_ids)
results["prefill_tok_s"] = len(prefill_ids) / seconds

new_tokens = prompts["decode_new_tokens"]


def decode_rate(texts):
    clear()
    sequences = [tokenize(text) for text in texts]
    next_tokens, positions = [], []
    for sequence, ids in enumerate(sequences):
        logits = prefill(ids, sequence)
        next_tokens.append(int(np.argmax(logits)))
        positions.append(len(ids))
    started = time.perf_counter()
    for _ in range(new_tokens):
        rows = decode([(next_tokens[s], positions[s], s, True) for s in range(len(sequences))])
        next_tokens = [int(np.argmax(row)) for row in rows]
        positions = [p + 1 for p in positions]
    return len(sequences) * new_tokens / (time.perf_counter() - started)


results["decode_b1_tok_s"] = decode_rate(prompts["decode_texts"][:1])
results["decode_b8_tok_s"] = decode_rate(prompts["decode_texts"][:BATCH_SEQUENCES])

scene = prompts["scene"]
label_ids = [tokenize(label)[0] for label in scene["labels"]]
scene_prompt_ids = tokenize(scene["prompt_text"])
continuation_ids = []
for continuation in scene["continuations"]:
    full = tokenize(scene["prompt_text"] + continuation)
    assert full[:len(scene_prompt_ids)] == scene_prompt_ids, "prompt is not a token prefix"
    continuation_ids.append(full[len(scene_prompt_ids):])


def label_distribution(logits):
    chosen = logits[label_ids].astype(np.float64)
    chosen = np.exp(chosen - chosen.max())
    return chosen / chosen.sum()


def score_scene_sequential():
    """Prompt once, then each continuation on top of it (cache cut back to the prompt)."""
    clear()
    prefill(scene_prompt_ids)
    distributions = []
    for ids in continuation_ids:
        raw.llama_memory_seq_rm(memory, 0, len(scene_prompt_ids), -1)
        distributions.append(label_distribution(prefill(ids, 0, len(scene_prompt_ids))))
    return distributions


def score_scene_batched():
    """Prompt once, copied to 10 sequences, all continuations in shared batches."""
    clear()
    prefill(scene_prompt_ids)
    for sequence in range(1, len(continuation_ids)):
        raw.llama_memory_seq_cp(memory, 0, sequence, -1, -1)
    entries = []
    for sequence, ids in enumerate(continuation_ids):
        entries += [(t, len(scene_prompt_ids) + i, sequence, i == len(ids) - 1)
                    for i, t in enumerate(ids)]
    rows = []
    for offset in range(0, len(entries), 1024):
        rows += decode(entries[offset:offset + 1024])
    return [label_distribution(row) for row in rows]


sequential = score_scene_sequential()
batched = score_scene_batched()
results["score_max_abs_diff_batched_vs_sequential"] = float(
    np.max(np.abs(np.array(sequential) - np.array(batched))))
results["score_scene_s"] = best_of(2, score_scene_batched)
results["score_scene_sequential_kv_reuse_s"] = best_of(2, score_scene_sequential)
results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(results))
