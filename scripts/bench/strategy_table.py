"""The strategy table of BENCHMARKS.md (issue 13) from the runs of several seeds: per recipe,
top-1 at each seed, mean ± sample sd, top-5 mean, the difference from the labels as given
(`noisy`) paired by seed, and the share of the noisy → oracle gap. For an ensemble recipe,
the ensemble's own columns (`top1_ensemble`) give a row of their own.

Usage: python3 scripts/bench/strategy_table.py RUNNER SEED_DIR...
(RUNNER: the `runner` binary; each SEED_DIR holds one seed's runs, e.g. runs/s0/imagenette)."""
import json, statistics as st, subprocess, sys

runner, *seed_dirs = sys.argv[1:]
table = {}  # recipe -> {seed index: (top1, top5)}
for seed, folder in enumerate(seed_dirs):
    report = subprocess.run([runner, "report", folder, "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    for row in json.loads(report):
        if row["state"] != "finished" or row.get("top1_last") is None:
            continue
        name = row["run"].split("/")[-1]
        table.setdefault(name, {})[seed] = (100 * row["top1_last"], 100 * row["top5_last"])
        if row.get("top1_ensemble") is not None:
            table.setdefault(name + " (averaged)", {})[seed] = (
                100 * row["top1_ensemble"], 100 * row["top5_ensemble"])
seeds = len(seed_dirs)
noisy, oracle = table.get("noisy", {}), table.get("oracle", {})


def mean_sd(values):
    if len(values) < 2:
        return f"{values[0]:.2f}%" if values else "–"
    return f"{st.mean(values):.2f}% ± {st.stdev(values):.2f}"


print("| recipe | " + " | ".join(f"seed {i}" for i in range(seeds))
      + " | top-1 mean ± sd | top-5 mean | paired Δ vs noisy | share of the gap |")
print("| --- |" + " --- |" * (seeds + 4))
for name in sorted(table, key=lambda n: (n != "noisy", n != "oracle", n)):
    runs = table[name]
    top1 = [runs[i][0] for i in sorted(runs)]
    top5 = [runs[i][1] for i in sorted(runs)]
    cells = [f"{runs[i][0]:.2f}%" if i in runs else "–" for i in range(seeds)]
    paired = [runs[i][0] - noisy[i][0] for i in sorted(runs) if i in noisy]
    delta = "–" if name == "noisy" or not paired else (
        f"{paired[0]:+.2f}" if len(paired) == 1 else f"{st.mean(paired):+.2f} ± {st.stdev(paired):.2f}")
    base = [noisy[i][0] for i in sorted(runs) if i in noisy and i in oracle]
    top = [oracle[i][0] for i in sorted(runs) if i in noisy and i in oracle]
    share = "–"
    if base and paired and st.mean(top) != st.mean(base):
        share = f"{st.mean(paired) / (st.mean(top) - st.mean(base)):+.2f}"
    print(f"| {name} | " + " | ".join(cells)
          + f" | {mean_sd(top1)} | {st.mean(top5):.2f}% | {delta} | {share} |")
