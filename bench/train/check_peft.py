"""Loads an adapter written by `mirrorsim train` with PEFT (on transformers' dequantisation of the
same GGUF base) and compares its logits with our engine's (base + adapter merged at load).

  python bench/train/check_peft.py MODEL.gguf ADAPTER_DIR OUR_LOGITS.json

OUR_LOGITS.json comes from `cargo run --release -p mirrorsim-train --example adapter_logits`.
Prints the largest absolute logit difference and whether the argmax tokens agree."""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

model_path, adapter, ours_path = sys.argv[1:4]
ours = json.load(open(ours_path))
base = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(os.path.abspath(model_path)), gguf_file=os.path.basename(model_path),
    torch_dtype=torch.float32)
base_logits = base(input_ids=torch.tensor([ours["tokens"]])).logits[0]
model = PeftModel.from_pretrained(base, adapter)
model.eval()
with torch.no_grad():
    theirs = model(input_ids=torch.tensor([ours["tokens"]])).logits[0]
mine = torch.tensor(ours["logits"])
diff = (theirs - mine).abs().max().item()
effect = (theirs - base_logits).abs().max().item()
agree = bool((theirs.argmax(-1) == mine.argmax(-1)).all())
print(json.dumps({"tokens": len(ours["tokens"]), "max_abs_diff": diff,
                  "adapter_effect_max_abs": effect, "argmax_agree": agree}))
