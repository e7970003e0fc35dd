"""Markdown table of the predictors in one or more `mirrorsim eval` output folders.

  python3 bench/fidelity/table.py OUT/eval-base-random OUT/eval-sft-random ...

For each folder: every predictor row (the simulator under the folder's name, then baselines once)."""
import json
import os
import sys

seen_baselines = set()
print("| run | predictor | scenes | accuracy [95% CI] | sampled acc. | NLL (bits) | Brier | ECE |")
print("|---|---|---|---|---|---|---|---|")
for folder in sys.argv[1:]:
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    for p in metrics["predictors"]:
        m = p["metrics"]
        if p["kind"] == "baseline":
            key = (metrics["scenes_file"], metrics["scenes"], p["name"])
            if key in seen_baselines:
                continue
            seen_baselines.add(key)
        print(f"| {os.path.basename(folder.rstrip('/'))} | {p['name']} ({p['kind']}) | {m['scenes']} | "
              f"{m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] | {m['sampled_accuracy']:.3f} | "
              f"{m['nll_bits']:.3f} | {m['brier']:.3f} | {m['ece']:.3f} |")
