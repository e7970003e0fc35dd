"""Hybrid tables of FIDELITY.md from `mirrorsim eval --prior …` output.

  python3 bench/fidelity/hybrid_table.py OUT/SET/eval-knn/predictions.jsonl [more …]

Per file: every predictor's accuracy (argmax, ties split), NLL (bits) and ECE (15 equal-width
bins of the top probability), each with a 95 % percentile bootstrap interval over scenes (2000
resamples, seed 0); then paired bootstrap differences of the hybrid against the LLM alone and
against its temperature-fitted prior alone."""
import json
import math
import random
import sys
from collections import defaultdict

BINS, FLOOR, RESAMPLES = 15, 1e-12, 2000


def credit(d, a):
    top = max(d)
    return 0.0 if d[a] != top else 1.0 / sum(1 for p in d if p == top)


def stats(rows):
    n = len(rows)
    acc = sum(credit(d, a) for d, a in rows) / n
    nll = sum(-math.log2(max(d[a], FLOOR)) for d, a in rows) / n
    bins = [[0, 0.0, 0.0] for _ in range(BINS)]
    for d, a in rows:
        c = min(max(max(d), 0.0), 1.0)
        b = bins[min(int(c * BINS), BINS - 1)]
        b[0] += 1
        b[1] += c
        b[2] += credit(d, a)
    ece = sum(k / n * abs(h / k - c / k) for k, c, h in bins if k)
    return acc, nll, ece


def interval(values):
    v = sorted(values)
    return v[int(0.025 * len(v))], v[int(0.975 * len(v)) - 1]


for path in sys.argv[1:]:
    preds = defaultdict(dict)
    for line in open(path):
        p = json.loads(line)
        preds[p["predictor"]][p["scene_id"]] = (p["distribution"], p["answer"])
    names = list(preds)
    ids = sorted(preds[names[0]])
    rows = {n: [preds[n][s] for s in ids] for n in names}
    rng = random.Random(0)
    boot = defaultdict(list)
    for _ in range(RESAMPLES):
        pick = [rng.randrange(len(ids)) for _ in ids]
        for n in names:
            boot[n].append(stats([rows[n][i] for i in pick]))
    print(f"\n## {path}: {len(ids)} scenes\n")
    print("| predictor | accuracy [95% CI] | NLL bits [95% CI] | ECE [95% CI] |")
    print("|---|---|---|---|")
    for n in names:
        a, l, e = stats(rows[n])
        (al, ah), (ll, lh), (el, eh) = (interval([x[k] for x in boot[n]]) for k in range(3))
        print(f"| {n} | {a:.3f} [{al:.3f}, {ah:.3f}] | {l:.3f} [{ll:.3f}, {lh:.3f}] "
              f"| {e:.3f} [{el:.3f}, {eh:.3f}] |")
    hybrids = [n for n in names if n.startswith("hybrid(")]
    llms = [n for n in names if "(direct)" in n and not n.startswith("hybrid(")]
    priors = [n for n in names if "from validation" in n]
    for h in hybrids:
        for other in llms + priors:
            diffs = [(x[0] - y[0], x[1] - y[1]) for x, y in zip(boot[h], boot[other])]
            a, l, _ = stats(rows[h])
            a2, l2, _ = stats(rows[other])
            (al, ah), (ll, lh) = (interval([d[k] for d in diffs]) for k in range(2))
            print(f"\npaired {h} − {other}: accuracy {a - a2:+.3f} [{al:+.3f}, {ah:+.3f}], "
                  f"NLL bits {l - l2:+.3f} [{ll:+.3f}, {lh:+.3f}]")
