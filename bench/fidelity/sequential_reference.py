"""A pure-Python reference of the sequential baseline, to check mirrorsim's numbers and time it.

    python3 bench/fidelity/sequential_reference.py ../shared/data/ml-1m SCENES PREDICTIONS

SCENES is a `mirrorsim scenes` eval file (scenes.summary.json beside it gives the cutoff);
PREDICTIONS the predictions.jsonl of `mirrorsim eval --model none --baselines sequential` on
it. The definition is the one in crates/mirrorsim-eval/src/baselines.rs: from each user's
sequence before the cutoff, F[a][b] adds 1/d whenever b came d <= 20 steps after a; an option
scores eps + sum over the user's last 20 choices h_k (k = 1 the latest) of
F[h_k][o] / (k * (1 + sum_b F[h_k][b])), and the distribution is proportional to that.
Interactions are ordered as mirrorsim orders them: by time, then item, items numbered in order
of first appearance (the .item file first); the order of users does not change any sequence.

Prints the largest absolute difference between the two distributions, how many argmax picks
agree, and this script's fit and scoring time.
"""

import gzip
import json
import os
import sys
import time
from collections import defaultdict

WINDOW, RECENT, EPS = 20, 20, 1e-5


def main(data_dir, scenes_path, predictions_path):
    name = os.path.basename(os.path.normpath(data_dir))
    item_index = {}
    with open(os.path.join(data_dir, f"{name}.item"), encoding="utf-8") as f:
        next(f)
        for line in f:
            item_index.setdefault(line.split("\t", 1)[0], len(item_index))
    user_index = {}
    rows = []
    with gzip.open(os.path.join(data_dir, f"{name}.inter.gz"), "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, _rating, timestamp = line.rstrip("\n").split("\t")[:4]
            u = user_index.setdefault(user, len(user_index))
            i = item_index.setdefault(item, len(item_index))
            rows.append((int(float(timestamp)), u, i, user, item))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    summary = os.path.join(os.path.dirname(scenes_path), "scenes.summary.json")
    with open(summary, encoding="utf-8") as f:
        cutoff = json.load(f)["cutoff_timestamp"]

    started = time.perf_counter()
    by_user = defaultdict(list)
    for timestamp, _, _, user, item in rows:
        by_user[user].append((timestamp, item))
    follows = defaultdict(lambda: defaultdict(float))
    totals = defaultdict(float)
    for sequence in by_user.values():
        before = [item for timestamp, item in sequence if timestamp < cutoff]
        for i, a in enumerate(before):
            for d, b in enumerate(before[i + 1 : i + 1 + WINDOW], start=1):
                follows[a][b] += 1.0 / d
                totals[a] += 1.0 / d
    fitted = time.perf_counter()

    reference = {}
    with open(scenes_path, encoding="utf-8") as f:
        for line in f:
            scene = json.loads(line)
            history = [i for t, i in by_user[scene["user_id"]] if t < scene["timestamp"]]
            recent = list(reversed(history))[:RECENT]
            scores = [
                EPS
                + sum(
                    follows[h].get(o, 0.0) / (k * (1.0 + totals[h]))
                    for k, h in enumerate(recent, start=1)
                )
                for o in scene["options"]
            ]
            total = sum(scores)
            reference[scene["id"]] = [s / total for s in scores]
    scored = time.perf_counter()

    worst, agree, n = 0.0, 0, 0
    with open(predictions_path, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            if p["predictor"] != "sequential":
                continue
            ours = reference[p["scene_id"]]
            theirs = p["distribution"]
            worst = max(worst, max(abs(a - b) for a, b in zip(ours, theirs)))
            agree += ours.index(max(ours)) == theirs.index(max(theirs))
            n += 1
    print(f"{n} scenes: largest |p_python - p_mirrorsim| = {worst:.3g}; argmax agrees in {agree}")
    print(f"python: fit {fitted - started:.1f} s, scoring {scored - fitted:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:4])
