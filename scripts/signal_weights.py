#!/usr/bin/env python3
"""Noise-detection AUC of weighted combinations of a score stage's signals (issue 14).

Usage: scripts/signal_weights.py TRUTH:SCORE_DIR [TRUTH:SCORE_DIR ...]

Each SCORE_DIR is a score stage folder of a recipe with image signals (it holds scores.tsv
and signals.tsv); TRUTH is the dataset's truth file (path, given_label, true_label). Every
signal is ranked within its class, as websieve's `score::combine` does, and each weighting on
a grid is scored by the AUC of a low combined score as a detector of noise; printed as mean
[min, max] over the folders (seeds). Needs numpy and scipy.
"""
import csv
import itertools
import sys

import numpy as np
from scipy.stats import rankdata

SIGNALS = ["text", "confidence", "margin", "knn"]
GRID = [0, 0.5, 1, 2]


def load(arg):
    truth_path, score_dir = arg.split(":", 1)
    with open(truth_path) as f:
        truth = {r["path"]: r["given_label"] != r["true_label"] for r in csv.DictReader(f, delimiter="\t")}
    with open(f"{score_dir}/scores.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(f"{score_dir}/signals.tsv") as f:
        signals = list(csv.DictReader(f, delimiter="\t"))
    labels = np.array([int(r["label"]) for r in rows])
    known = np.array([r["path"] in truth for r in rows])
    noisy = np.array([truth.get(r["path"], False) for r in rows])
    ranks = {}
    for name in SIGNALS:
        values = np.array([float(s[name]) for s in signals])
        ranked = np.zeros_like(values)
        for c in np.unique(labels):
            members = labels == c
            ranked[members] = (rankdata(values[members]) - 1) / max(members.sum() - 1, 1)
        ranks[name] = ranked[known]
    return ranks, noisy[known]


def auc_low_is_noisy(score, noisy):
    ranks = rankdata(score)
    n_noisy, n_clean = noisy.sum(), (~noisy).sum()
    return (ranks[~noisy].sum() - n_clean * (n_clean + 1) / 2) / (n_noisy * n_clean)


def main():
    folders = [load(arg) for arg in sys.argv[1:]]
    results = []
    for weights in itertools.product(GRID, repeat=len(SIGNALS)):
        if sum(weights) == 0:
            continue
        aucs = [
            auc_low_is_noisy(sum(w * ranks[name] for w, name in zip(weights, SIGNALS)), noisy)
            for ranks, noisy in folders
        ]
        results.append((np.mean(aucs), min(aucs), max(aucs), weights))
    results.sort(reverse=True)
    print("weights (" + ", ".join(SIGNALS) + "): AUC mean [min, max]")
    for mean, low, high, weights in results:
        print(f"{weights}: {mean:.4f} [{low:.4f}, {high:.4f}]")


if __name__ == "__main__":
    main()
