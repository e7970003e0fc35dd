"""Learnability probe: scenes whose real choice is marked in the prompt.

  python3 bench/fidelity/marker_probe.py TRAIN_SCENES EVAL_SCENES OUT_DIR N_TRAIN N_EVAL [direct|title]

Appends ` ← pick this one` to the real choice's option line (in `messages` and
`direct_messages`) of the first N_TRAIN train scenes and the first N_EVAL eval scenes. Writes
OUT_DIR/sft.jsonl (the marked prompt with the real choice as the reply: `Behavior: [X]`, or in
title mode `Behavior: ` and the option's text as listed, which is what `eval --mode title`
scores) and OUT_DIR/scenes.eval.jsonl (with the eval scenes' scenes.summary.json beside it).
If SFT on these cannot teach a model to follow the marker, it cannot be expected to learn
subtler signals from the same prompts."""
import json
import shutil
import sys
from pathlib import Path

MARK = " ← pick this one"


def user_lines(scene):
    return [m for m in scene["direct_messages"] if m["role"] == "user"][-1]["content"].split("\n")


def mark(scene):
    label = scene["labels"][scene["answer"]]
    hits = 0
    for key in ("messages", "direct_messages"):
        for message in scene[key]:
            if message["role"] == "user":
                lines = message["content"].split("\n")
                for i, line in enumerate(lines):
                    if line.startswith(f"[{label}] "):
                        lines[i] = line + MARK
                        hits += 1
                message["content"] = "\n".join(lines)
    if hits == 0:
        sys.exit(f"scene {scene['id']}: no option line starts with [{label}]")
    return scene


def reply(scene, mode):
    label = scene["labels"][scene["answer"]]
    if mode == "direct":
        return f"Behavior: [{label}]"
    line = next(l for l in user_lines(scene) if l.startswith(f"[{label}] "))
    return "Behavior: " + line[len(label) + 3:]


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    train_path, eval_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    n_train, n_eval = int(sys.argv[4]), int(sys.argv[5])
    mode = sys.argv[6] if len(sys.argv) == 7 else "direct"
    if mode not in ("direct", "title"):
        sys.exit(f"mode must be direct or title, not {mode}")
    out.mkdir(parents=True, exist_ok=True)
    with open(train_path) as source, open(out / "sft.jsonl", "w") as sft:
        for i, line in enumerate(source):
            if i >= n_train:
                break
            scene = mark(json.loads(line))
            messages = scene["direct_messages"] + [{"role": "assistant", "content": reply(scene, mode)}]
            sft.write(json.dumps({"messages": messages}) + "\n")
    with open(eval_path) as source, open(out / "scenes.eval.jsonl", "w") as scenes:
        for i, line in enumerate(source):
            if i >= n_eval:
                break
            scenes.write(json.dumps(mark(json.loads(line))) + "\n")
    summary = Path(eval_path).with_name("scenes.summary.json")
    if summary.is_file():
        shutil.copy(summary, out / "scenes.summary.json")


main()
