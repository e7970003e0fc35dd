"""Learnability probe: scenes whose answer is always the most-rated option.

  python3 bench/fidelity/popular_probe.py TRAIN_SCENES EVAL_SCENES OUT_DIR N_TRAIN N_EVAL [digits|rank] [top|real]

Takes scenes built with `--item-stats` (each option line ends in `— N ratings, average R/5` or
`— no ratings yet`), keeps those with one most-rated option, and makes that option the answer
(`answer` and `item_id`). Writes OUT_DIR/sft.jsonl (the prompt with `Behavior: [X]` naming the
most-rated option as the reply) from the first N_TRAIN such train scenes and
OUT_DIR/scenes.eval.jsonl from the first N_EVAL such eval scenes, with the eval scenes'
scenes.summary.json beside it.

`digits` leaves the prompt as built: the model must compare the counts written as numbers.
`rank` also appends each option's rank by count among the listed options
(` (most rated of these)`, ` (2nd most rated of these)`, ...; equal counts share a rank), so the
comparison is already made and the model only has to find the line that says so.

`real` keeps every scene and its real answer and only changes the prompt (with `rank`): real
choices follow the most-rated option in about 60 % of scenes, so this asks whether SFT learns a
rule that the labels follow only that often.

Real choices follow the most-rated option in about 60 % of ML-1M scenes. If SFT cannot teach
SmolLM2 this rule when it holds every time, it cannot learn it from real choices either."""
import json
import re
import shutil
import sys
from pathlib import Path

OPTION = re.compile(r"^\[([A-Z])\] ")
COUNT = re.compile(r"— ([\d,]+) ratings?, average")
ORDINALS = ["most rated", "2nd most rated", "3rd most rated", "4th most rated", "5th most rated",
            "6th most rated", "7th most rated", "8th most rated", "9th most rated", "10th most rated"]


def prompt_lines(scene):
    return [m for m in scene["direct_messages"] if m["role"] == "user"][-1]["content"].split("\n")


def option_counts(scene):
    counts = {}
    for line in prompt_lines(scene):
        match = OPTION.match(line)
        if match:
            found = COUNT.search(line)
            counts[match.group(1)] = int(found.group(1).replace(",", "")) if found else 0
    if len(counts) != len(scene["labels"]):
        sys.exit(f"scene {scene['id']}: found {len(counts)} option lines, expected "
                 f"{len(scene['labels'])}; were the scenes built with --item-stats?")
    return [counts[label] for label in scene["labels"]]


def add_ranks(scene, counts):
    rank = {label: sum(other > count for other in counts)
            for label, count in zip(scene["labels"], counts)}
    for key in ("messages", "direct_messages"):
        for message in scene[key]:
            if message["role"] != "user":
                continue
            lines = message["content"].split("\n")
            for i, line in enumerate(lines):
                match = OPTION.match(line)
                if match:
                    lines[i] = f"{line} ({ORDINALS[rank[match.group(1)]]} of these)"
            message["content"] = "\n".join(lines)


def relabel(scene, style, answer):
    """With `answer == "top"`, the scene with the most-rated option as its answer, or None when
    the top count is tied; with `real`, the scene with its own answer."""
    counts = option_counts(scene)
    if answer == "top":
        top = max(counts)
        if counts.count(top) != 1:
            return None
        scene["answer"] = counts.index(top)
        scene["item_id"] = scene["options"][scene["answer"]]
    if style == "rank":
        add_ranks(scene, counts)
    return scene


def relabelled(path, limit, style, answer):
    with open(path) as source:
        for line in source:
            if limit == 0:
                return
            scene = relabel(json.loads(line), style, answer)
            if scene is not None:
                limit -= 1
                yield scene


def main():
    if len(sys.argv) not in (6, 7, 8):
        sys.exit(__doc__)
    train_path, eval_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    n_train, n_eval = int(sys.argv[4]), int(sys.argv[5])
    style = sys.argv[6] if len(sys.argv) >= 7 else "digits"
    answer = sys.argv[7] if len(sys.argv) == 8 else "top"
    if style not in ("digits", "rank"):
        sys.exit(f"style must be digits or rank, not {style}")
    if answer not in ("top", "real"):
        sys.exit(f"the answer must be top or real, not {answer}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sft.jsonl", "w") as sft:
        for scene in relabelled(train_path, n_train, style, answer):
            label = scene["labels"][scene["answer"]]
            messages = scene["direct_messages"] + [
                {"role": "assistant", "content": f"Behavior: [{label}]"}]
            sft.write(json.dumps({"messages": messages}) + "\n")
    with open(out / "scenes.eval.jsonl", "w") as scenes:
        for scene in relabelled(eval_path, n_eval, style, answer):
            scenes.write(json.dumps(scene) + "\n")
    summary = Path(eval_path).with_name("scenes.summary.json")
    if summary.is_file():
        shutil.copy(summary, out / "scenes.summary.json")


main()
