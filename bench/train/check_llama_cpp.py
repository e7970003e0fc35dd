"""Loads a merged GGUF written by `mirrorsim export --merge` with llama.cpp (llama-cpp-python) and
compares its last-position logits with our engine's (base + adapter merged at load).

  python bench/train/check_llama_cpp.py MERGED.gguf OUR_LOGITS.json

OUR_LOGITS.json comes from `cargo run --release -p mirrorsim-train --example adapter_logits`."""
import json
import sys

import numpy as np
from llama_cpp import Llama

merged, ours_path = sys.argv[1:3]
ours = json.load(open(ours_path))
llm = Llama(model_path=merged, logits_all=True, verbose=False, n_ctx=512, n_threads=2)
llm.eval(ours["tokens"])
theirs = np.array(llm.scores[len(ours["tokens"]) - 1])
mine = np.array(ours["logits"][-1])
print(json.dumps({"file": merged, "max_abs_diff_last": float(np.abs(theirs - mine).max()),
                  "argmax_agree": int(theirs.argmax()) == int(mine.argmax()),
                  "top5_ours": np.argsort(-mine)[:5].tolist(),
                  "top5_llama_cpp": np.argsort(-theirs)[:5].tolist()}))
