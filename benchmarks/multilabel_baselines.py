"""Baselines for a multi-label data set, to read a fine-tuned model's micro/macro-F1 against.

- ``most frequent``: every text gets the training set's most frequent label;
- ``tf-idf + logistic``: scikit-learn's one-vs-rest logistic regression on word uni- and bigram
  TF-IDF, its threshold per data set tuned on validation as bertkit tunes its own.

    .venv/bin/python benchmarks/multilabel_baselines.py wiki-tags
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from bertkit.tasks.datasets import resolve_data


def read(name: str, split: str) -> tuple[list[str], list[list[str]]]:
    rows = [json.loads(line) for line in
            resolve_data(name, split).read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows], [r["labels"] for r in rows]


def scores(truth: np.ndarray, predicted: np.ndarray) -> str:
    micro = f1_score(truth, predicted, average="micro", zero_division=0)
    macro = f1_score(truth, predicted, average="macro", zero_division=0)
    subset = float((truth == predicted).all(axis=1).mean())
    return f"micro-F1 {micro:.3f}, macro-F1 {macro:.3f}, subset acc {subset:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a built-in multi-label data set, e.g. wiki-tags")
    args = parser.parse_args()
    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = (
        read(args.data, split) for split in ("train", "validation", "test"))
    labels = MultiLabelBinarizer().fit(train_y)
    train_t, dev_t, test_t = (labels.transform(y) for y in (train_y, dev_y, test_y))

    top = Counter(label for row in train_y for label in row).most_common(1)[0][0]
    print(f"most frequent ({top}):", scores(test_t, labels.transform([[top]] * len(test_y))))

    vectors = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(train_x)
    model = OneVsRestClassifier(LogisticRegression(C=10, max_iter=2000))
    model.fit(vectors.transform(train_x), train_t)
    dev_p, test_p = (model.predict_proba(vectors.transform(x)) for x in (dev_x, test_x))
    grid = np.arange(0.05, 0.96, 0.05)
    best = max(grid, key=lambda t: f1_score(dev_t, dev_p >= t, average="micro", zero_division=0))
    print(f"tf-idf + logistic (threshold {best:.2f}):", scores(test_t, test_p >= best))


if __name__ == "__main__":
    main()
