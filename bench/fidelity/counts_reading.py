"""Does a simulator read the options' rating counts? (scenes built with `--item-stats`)

  python3 bench/fidelity/counts_reading.py SCENES.jsonl EVAL_DIR [EVAL_DIR ...]

Per eval folder and predictor: mean probability of the real choice, how often the argmax is
the option with the most ratings in the prompt and the mean probability put on it, and the
argmax's slot histogram. The first line gives how often the most-rated option is the real
choice (what a simulator that only read the counts would score)."""
import json
import re
import sys
from collections import Counter

COUNT = re.compile(r" — ([\d,]+) ratings?, average|— no ratings yet")


def most_rated(scene):
    """Slot of the option with the most ratings as the prompt shows them (first on ties)."""
    user = [m for m in scene["direct_messages"] if m["role"] == "user"][-1]["content"]
    lines = user.split("\n")
    counts = []
    for label in scene["labels"]:
        line = next(l for l in lines if l.startswith(f"[{label}] "))
        match = COUNT.search(line)
        if match is None:
            sys.exit(f"scene {scene['id']}: option {label} shows no rating count; "
                     "were the scenes built with --item-stats?")
        counts.append(int(match.group(1).replace(",", "")) if match.group(1) else 0)
    return max(range(len(counts)), key=lambda i: counts[i])


scenes = {}
for line in open(sys.argv[1]):
    s = json.loads(line)
    scenes[s["id"]] = s
top = {sid: most_rated(s) for sid, s in scenes.items()}
real_is_top = sum(top[sid] == s["answer"] for sid, s in scenes.items()) / len(scenes)
print(f"real choice is the most-rated option in {real_is_top:.3f} of {len(scenes)} scenes")
print("| eval | predictor | scenes | mean p(real) | argmax = most-rated | mean p(most-rated) | argmax slot (A..) |")
print("|---|---|---|---|---|---|---|")
for folder in sys.argv[2:]:
    rows = {}
    for line in open(f"{folder}/predictions.jsonl"):
        p = json.loads(line)
        if p["scene_id"] in scenes:
            rows.setdefault(p["predictor"], []).append(p)
    for predictor, preds in rows.items():
        n = len(preds)
        p_real = sum(p["distribution"][p["answer"]] for p in preds) / n
        argmaxes = [max(range(len(p["distribution"])), key=lambda i: p["distribution"][i]) for p in preds]
        hits = sum(a == top[p["scene_id"]] for a, p in zip(argmaxes, preds)) / n
        mass = sum(p["distribution"][top[p["scene_id"]]] for p in preds) / n
        slots = Counter(argmaxes)
        k = len(preds[0]["distribution"])
        hist = " / ".join(f"{100 * slots[i] / n:.0f}" for i in range(k))
        print(f"| {folder.rstrip('/').split('/')[-1]} | {predictor} | {n} | {p_real:.3f} | {hits:.3f} | "
              f"{mass:.3f} | {hist} % |")
