"""Noise-detection AUC of other ways to combine the signals a score stage already has
(BENCHMARKS.md, issue 14): the text score of a text-only score stage, the probe's out-of-fold
confidence, margin and k-NN agreement, a k-NN agreement in the LDA topic space (cosine and
Hellinger), and the search rank (a sample's row in its query's result list, read from the
WebVision layout beside the truth file). Each signal is ranked within its class, as `[clean] signals` does, then
combined with the weights listed. The truth file is read only to measure.

Usage: python3 scripts/bench/combine_signals.py CACHE TEXT_SCORE_KEY LDA_KEY TRUTH PROBE_KEY...
(CACHE: the stage cache folder; keys as `runner plan` prints them)."""
import csv, sys
import numpy as np
from scipy.special import logit
from scipy.stats import rankdata

cache, score_key, lda_key, truth_file, *probe_keys = sys.argv[1:]
truth = {r["path"]: r for r in csv.DictReader(open(truth_file), delimiter="\t")}
rows = sorted(csv.DictReader(open(f"{cache}/score/{score_key}/scores.tsv"), delimiter="\t"),
              key=lambda r: int(r["id"]))
label = np.array([int(r["label"]) for r in rows])
text = np.array([float(r["score"]) for r in rows])
noisy = np.array([truth[r["path"]]["given_label"] != truth[r["path"]]["true_label"] for r in rows])


def auc(score):
    """Of a noisy and a clean sample, the chance that the noisy one scores lower."""
    r = rankdata(-score)
    n = noisy.sum()
    return (r[noisy].sum() - n * (n + 1) / 2) / (n * (~noisy).sum())


def in_class(x):
    out = np.zeros(len(x))
    for c in np.unique(label):
        m = label == c
        out[m] = (rankdata(x[m]) - 0.5) / m.sum()
    return out


def topic_knn(k, hellinger):
    theta = np.load(f"{cache}/lda/{lda_key}/topics_train.npy").astype(np.float64)
    x = np.sqrt(theta) if hellinger else theta
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    near = np.argpartition(-sim, k, axis=1)[:, :k]
    # Ties broken by the text score, so that the ranks are total.
    return (label[near] == label[:, None]).mean(1) + 1e-6 * text


def search_rank():
    """Each sample's row in its query's result list over the rows of that list, from the
    WebVision layout's line-aligned file and meta lists (rows follow the search rank)."""
    root = truth_file.removesuffix(".truth.tsv")
    files = [l.split() for l in open(f"{root}/info/train_filelist_all.txt")]
    meta = [l.split() for l in open(f"{root}/info/train_meta_list_all.txt")]
    row_of = {f[0]: (m[0], int(m[1])) for f, m in zip(files, meta)}
    rows_in = {}
    for query, _ in row_of.values():
        rows_in[query] = rows_in.get(query, 0) + 1
    # Higher is more plausible: the first results first.
    return np.array([-row_of[r["path"]][1] / rows_in[row_of[r["path"]][0]] for r in rows]) + 1e-6 * text


signals = {"text": in_class(text), "search-rank": in_class(search_rank())}
for k in (10, 30):
    for hellinger in (False, True):
        name = f"topic-knn{k}-{'hellinger' if hellinger else 'cosine'}"
        signals[name] = in_class(topic_knn(k, hellinger))
print("| signal | AUC |\n| --- | --- |")
for name, s in signals.items():
    print(f"| {name} | {auc(s):.3f} |")
combos = [
    ("text + confidence + 0.5 knn (the default)", {"text": 1, "confidence": 1, "knn": 0.5}),
    ("text + confidence", {"text": 1, "confidence": 1}),
    ("1.5 text + confidence + 0.5 knn", {"text": 1.5, "confidence": 1, "knn": 0.5}),
    ("text + confidence + 0.5 margin + 0.5 knn", {"text": 1, "confidence": 1, "margin": 0.5, "knn": 0.5}),
    ("text + 2 confidence + 0.5 knn", {"text": 1, "confidence": 2, "knn": 0.5}),
    ("0.5 text + confidence + 0.5 topic-knn30", {"text": 0.5, "confidence": 1, "topic-knn30-hellinger": 0.5}),
    ("text + confidence + 0.5 topic-knn30 + 0.5 knn", {"text": 1, "confidence": 1, "topic-knn30-hellinger": 0.5, "knn": 0.5}),
    ("text + confidence + 0.5 knn + 0.5 search-rank", {"text": 1, "confidence": 1, "knn": 0.5, "search-rank": 0.5}),
    ("text + confidence + 0.5 knn + search-rank", {"text": 1, "confidence": 1, "knn": 0.5, "search-rank": 1}),
    ("text + confidence + search-rank", {"text": 1, "confidence": 1, "search-rank": 1}),
    ("text + confidence + 0.5 knn + 1.5 search-rank", {"text": 1, "confidence": 1, "knn": 0.5, "search-rank": 1.5}),
]
print("\n| combination | " + " | ".join(probe_keys) + " |\n| --- |" + " --- |" * len(probe_keys))
table = {name: [] for name, _ in combos + [("logits summed: text + confidence + 0.5 knn", None)]}
for key in probe_keys:
    probe = sorted(csv.DictReader(open(f"{cache}/probe/{key}/probe.tsv"), delimiter="\t"),
                   key=lambda r: int(r["id"]))
    s = dict(signals)
    for col in ("confidence", "margin", "knn"):
        s[col] = in_class(np.array([float(r[col]) for r in probe]) + 1e-6 * text)
    for name, weights in combos:
        table[name].append(auc(sum(w * s[n] for n, w in weights.items())))
    lo = {n: logit(np.clip(s[n], 1e-3, 1 - 1e-3)) for n in ("text", "confidence", "knn")}
    table["logits summed: text + confidence + 0.5 knn"].append(
        auc(lo["text"] + lo["confidence"] + 0.5 * lo["knn"]))
for name, values in table.items():
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
