"""Multi-label classification: any number of labels per text (topics, tags), read from [CLS].

Input: JSONL, CSV or TSV rows with a text field and a label field (default ``labels``) that holds
a JSON list of label names, or a string of names joined by ``label_separator`` (default ``|``;
the way a CSV/TSV column holds them: ``sports|politics``). An empty list or string is a text
with no label. Each label is one output with a sigmoid and binary cross-entropy (the head's
``multi_label_classification`` loss); a label is predicted when its probability reaches the
decision ``threshold``, which the run tunes on the validation set (``tune``) and saves in
``task.json``. Metrics: micro- and macro-averaged F1 and subset accuracy (every label right);
the report adds each label's precision, recall and F1. Long texts take windows as
classification does (``doc_stride``).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import torch

from .base import (
    DataError,
    check_known_labels,
    collate_sequences,
    enough_classes,
    pooled_logits,
    scores_from_counts,
)
from .classification import Classification

# The thresholds ``tune`` tries; ties go to the one nearest 0.5.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


class MultiLabel(Classification):
    """One text in, a set of labels out: micro-F1 (picks the best epoch), macro-F1, subset
    accuracy."""

    name = "multi-label"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy")
    problem_type = "multi_label_classification"
    tunes = True

    def __init__(self, max_length: int = 128, text_field: str = "text",
                 label_field: str = "labels", label_separator: str = "|",
                 doc_stride: int | None = None, window_pooling: str = "mean",
                 threshold: float = 0.5):
        super().__init__(max_length, text_field, label_field=label_field, doc_stride=doc_stride,
                         window_pooling=window_pooling)
        if not label_separator:
            raise ValueError("label_separator is empty; give the character(s) between labels.")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold {threshold} must lie between 0 and 1.")
        self.label_separator, self.threshold = label_separator, threshold

    def options(self) -> dict:
        return {**super().options(), "label_separator": self.label_separator,
                "threshold": self.threshold}

    # -- reading --------------------------------------------------------------------------

    def check_label_type(self, value, where, first_where, first) -> None:
        """Labels are names: 1 and "1" are the same label."""

    def parse_label(self, value, where: str) -> tuple[str, ...]:
        """The label names of a JSON list or a separated string, each once, sorted."""
        separator = self.label_separator
        if isinstance(value, str):
            names = [n.strip() for n in value.split(separator)] if value.strip() else []
            if not all(names):
                raise DataError(f"{where}: labels {value!r} hold an empty name between "
                                f"{separator!r} separators; remove the extra separator (or set "
                                "--label-separator).")
        elif isinstance(value, list):
            if not all(isinstance(n, int) and not isinstance(n, bool)
                       or isinstance(n, str) and n.strip() for n in value):
                raise DataError(f"{where}: labels {json.dumps(value)}: each label of the list "
                                "must be a name (a non-empty string or an integer).")
            names = [str(n).strip() for n in value]
        else:
            raise DataError(f"{where}: labels {json.dumps(value)} are neither a JSON list of "
                            f"names nor names separated by {separator!r}.")
        return tuple(sorted(set(names)))

    def label_names(self, examples) -> list[str]:
        names = sorted({name for e in examples for name in e.label})
        return enough_classes(names, examples, "label")

    def output_bias(self, train_examples, label_names: list[str]) -> list[float]:
        """Each label's log prior odds in training (as Lin et al. 2017, "Focal Loss", section 3.3,
        start a rare class): a new head starts at the label frequencies, not at 0.5 for every
        label, so training does not first spend its steps pushing all of them down. On
        wiki-tags with the default recipe, a zero-bias head still predicted 2 of 19 labels after
        3 epochs. Counts are smoothed by a half, so a label on every text stays finite."""
        counts = Counter(name for e in train_examples for name in e.label)
        shares = [(counts[name] + 0.5) / (len(train_examples) + 1) for name in label_names]
        return [math.log(p / (1 - p)) for p in shares]

    def check_labels(self, examples, label2id: dict) -> None:
        check_known_labels(((e.where, name) for e in examples for name in e.label), label2id,
                           "training")

    # -- encoding, decoding, scoring ------------------------------------------------------

    def label_value(self, label, label2id: dict) -> list[float]:
        """Multi-hot: 1.0 for each of the example's labels."""
        hot = [0.0] * len(label2id)
        for name in label:
            hot[label2id[name]] = 1.0
        return hot

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        return collate_sequences(features, self.max_length, "labels", dtype=torch.float32,
                                 pad_to_multiple_of=pad_to_multiple_of)

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        logits = pooled_logits(features, outputs, len(examples), self.window_pooling)
        probabilities = torch.tensor(logits).sigmoid().numpy()
        names = [id2label[j] for j in range(logits.shape[1])]
        rounded = [{n: round(float(p), 6) for n, p in zip(names, row, strict=True)}
                   for row in probabilities]
        # decided on the probabilities shown, as `decide_again` and `tune` decide
        return [{"labels": self._chosen(row), "probabilities": row} for row in rounded]

    def decide_again(self, predictions: list[dict]) -> list[dict]:
        return [{**p, "labels": self._chosen(p["probabilities"])} for p in predictions]

    def _chosen(self, probabilities: dict) -> list[str]:
        return [name for name, p in probabilities.items() if p >= self.threshold]

    def label_order(self, examples, predictions) -> list[str]:
        """The model's labels (then any others seen, sorted)."""
        known = self.classes or []
        seen = {n for e in examples for n in e.label} | {n for p in predictions
                                                         for n in p["labels"]}
        return [*known, *sorted(seen - set(known))]

    def score(self, examples, predictions) -> dict[str, float]:
        labels = self.label_order(examples, predictions)
        return multilabel_metrics(binarize([e.label for e in examples], labels),
                                  binarize([p["labels"] for p in predictions], labels))

    def report(self, examples, predictions) -> dict:
        """Each label's precision, recall, F1 and support (no confusion matrix: labels are not
        exclusive)."""
        labels = self.label_order(examples, predictions)
        gold = binarize([e.label for e in examples], labels)
        predicted = binarize([p["labels"] for p in predictions], labels)
        return {"per_class": scores_from_counts(*label_counts(gold, predicted), labels)}

    def tune(self, examples, predictions) -> dict:
        """The threshold of THRESHOLDS with the best micro-F1 on these (validation) examples."""
        labels = list(predictions[0]["probabilities"])
        gold = binarize([e.label for e in examples], labels)
        probabilities = np.array([[p["probabilities"][n] for n in labels] for p in predictions])
        self.threshold = max(THRESHOLDS, key=lambda t: (
            multilabel_metrics(gold, probabilities >= t)["micro_f1"], -abs(t - 0.5)))
        return {"threshold": self.threshold}

    def to_json(self, example, prediction) -> dict:
        return {"text": example.text, **prediction}


def binarize(label_sets, labels: list[str]) -> np.ndarray:
    """[examples, labels] of 0/1: which labels each set holds."""
    index = {name: j for j, name in enumerate(labels)}
    hot = np.zeros((len(label_sets), len(labels)), dtype=bool)
    for i, names in enumerate(label_sets):
        hot[i, [index[n] for n in names]] = True
    return hot


def label_counts(gold: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, ...]:
    """True positives, false positives and false negatives of each label (column)."""
    gold, predicted = np.asarray(gold, bool), np.asarray(predicted, bool)
    return ((gold & predicted).sum(0), (~gold & predicted).sum(0), (gold & ~predicted).sum(0))


def multilabel_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Micro-F1 (every decision pooled), macro-F1 (the mean of the labels' F1) and subset
    accuracy (the share of examples with every label right), counted here; the tests hold
    them to scikit-learn's."""
    tp, fp, fn = label_counts(gold, predicted)
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    per_label = scores_from_counts(tp, fp, fn, list(range(len(tp))))
    return {"micro_f1": float(2 * tp.sum() / pooled) if pooled else 0.0,
            "macro_f1": float(np.mean([s["f1"] for s in per_label.values()])),
            "subset_accuracy": float(np.mean((np.asarray(gold, bool)
                                              == np.asarray(predicted, bool)).all(1)))}
