"""How far past the sequential baseline can anything in the prompt take a reader?

    python3 bench/fidelity/prior_ceiling.py SCENES PREDICTIONS

SCENES is a `mirrorsim scenes` (or `hint`) eval file, PREDICTIONS the predictions.jsonl of
`mirrorsim eval --model none` on it with the popularity, knn, ease and sequential baselines.
Two upper bounds, both fitted on the eval scenes themselves (so they flatter the mix; a fair
reader would have to choose its weights before seeing them):

1. the best log-linear mix `ln p_seq + b ln p_ease + c ln p_pop + d ln p_knn` over a grid;
2. the sequential score plus what the option lines say about content: the mean genre Jaccard
   overlap and the mean year distance to the user's latest 1, 3 or 6 choices shown.

Prints each predictor's accuracy and the best mixes found.
"""

import json
import math
import re
import sys
from collections import defaultdict

HISTORY = re.compile(r"^- .*?\(genres: ([^;]*); year: (\d+)\)", re.M)
OPTION = re.compile(r"^\[[A-Z]\] .*?\(genres: ([^;]*); year: (\d+)\)", re.M)


def user_text(scene):
    return [m["content"] for m in scene["direct_messages"] if m["role"] == "user"][-1]


def content_features(scene, last):
    text = user_text(scene)
    history = HISTORY.findall(text)[-last:]
    options = OPTION.findall(text)
    if len(options) != len(scene["options"]):
        raise ValueError(f"{scene['id']}: {len(options)} option lines parsed")
    genres = [set(g.split(", ")) for g, _ in history]
    years = [int(y) for _, y in history]
    out = []
    for g, y in options:
        g = set(g.split(", "))
        overlap = sum(len(g & h) / len(g | h) for h in genres) / max(len(genres), 1)
        distance = sum(abs(int(y) - x) for x in years) / max(len(years), 1)
        out.append((overlap, distance))
    return out


def argmax(values):
    return max(range(len(values)), key=lambda j: values[j])


def main(scenes_path, predictions_path):
    scenes = [json.loads(line) for line in open(scenes_path)]
    dist = defaultdict(dict)
    for line in open(predictions_path):
        row = json.loads(line)
        dist[row["predictor"]][row["scene_id"]] = row["distribution"]
    kinds = ["sequential", "ease", "popularity", "knn"]
    missing = [k for k in kinds if len(dist[k]) < len(scenes)]
    if missing:
        sys.exit(f"{predictions_path} lacks predictions of {missing} for some scenes")
    logs = {
        k: {s["id"]: [math.log(max(p, 1e-12)) for p in dist[k][s["id"]]] for s in scenes}
        for k in kinds
    }

    def accuracy(score):
        return sum(argmax(score(s)) == s["answer"] for s in scenes) / len(scenes)

    for k in kinds:
        print(f"{k:>12}: {accuracy(lambda s, k=k: logs[k][s['id']]):.3f}")

    grid = [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    best = max(
        (
            accuracy(
                lambda s, w=(b, c, d): [
                    q + w[0] * e + w[1] * p + w[2] * n
                    for q, e, p, n in zip(*(logs[k][s["id"]] for k in kinds))
                ]
            ),
            (b, c, d),
        )
        for b in grid
        for c in grid[:6]
        for d in grid[:6]
    )
    print(
        f"best mix of the four priors, fitted on these scenes: {best[0]:.3f} "
        f"at (ease, popularity, knn) = {best[1]}"
    )

    for last in (1, 3, 6):
        features = {s["id"]: content_features(s, last) for s in scenes}
        alone = accuracy(lambda s: [o for o, _ in features[s["id"]]])
        mixes = []
        for wg in (0.25, 0.5, 1, 2, 4, 8, 16):
            for wy in (0, 0.002, 0.005):
                acc = accuracy(
                    lambda s, wg=wg, wy=wy: [
                        q + wg * o - wy * y
                        for q, (o, y) in zip(logs["sequential"][s["id"]], features[s["id"]])
                    ]
                )
                mixes.append((acc, wg, wy))
        acc, wg, wy = max(mixes)
        print(
            f"latest {last}: genre overlap alone {alone:.3f}; sequential + content, best fitted on "
            f"these scenes: {acc:.3f} (genre weight {wg}, year weight {wy})"
        )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
