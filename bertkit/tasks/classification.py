"""Sentence classification, sentence-pair classification and regression, read from [CLS].

Input: JSONL, CSV or TSV rows with a text field, for pairs a second text field, and a label field
(a class name, or a number for regression). A pair is packed as ``[CLS] A [SEP] B [SEP]`` with
segment ids 0 for A and 1 for B, as in the paper.

An input longer than ``max_length`` is truncated (with a warning), or, given a ``doc_stride``,
covered by overlapping windows of segment A that start ``doc_stride`` tokens apart, each with
the whole of segment B (a short B; one longer than half the window is cut). Training sees every
window with its document's label; a document's logits are the mean (or max: ``window_pooling``)
of its windows' logits.
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model import BertForSequenceClassification
from .base import (
    WINDOW_POOLINGS,
    DataError,
    Task,
    check_known_labels,
    collate_sequences,
    enough_classes,
    field,
    passage_windows,
    pooled_logits,
    read_records,
    scores_from_counts,
    text_field,
    warn_truncated,
)

logger = logging.getLogger("bertkit")


@dataclass
class TextExample:
    text: str
    text_pair: str | None = None
    label: str | float | None = None
    where: str = ""  # file:line, for messages


class Classification(Task):
    """One text in, one class out: accuracy, macro-F1 and Matthews correlation."""

    name = "classification"
    model_class = BertForSequenceClassification
    metrics = ("accuracy", "macro_f1", "mcc")
    pair = False

    def __init__(self, max_length: int = 128, text_field: str = "text",
                 pair_field: str = "text_pair", label_field: str = "label",
                 doc_stride: int | None = None, window_pooling: str = "mean"):
        super().__init__(max_length)
        self.text_field, self.pair_field, self.label_field = text_field, pair_field, label_field
        if window_pooling not in WINDOW_POOLINGS:
            raise ValueError(f"window_pooling {window_pooling!r}: choose one of "
                             f"{', '.join(WINDOW_POOLINGS)}.")
        self.doc_stride, self.window_pooling = doc_stride or None, window_pooling
        self.classes: list[str] | None = None  # the model's labels, in its order

    def options(self) -> dict:
        fields = {"text_field": self.text_field, "label_field": self.label_field}
        if self.pair:
            fields["pair_field"] = self.pair_field
        if self.doc_stride:
            fields.update(doc_stride=self.doc_stride, window_pooling=self.window_pooling)
        return {**super().options(), **fields}

    def use_labels(self, id2label: dict) -> None:
        self.classes = [id2label[i] for i in sorted(id2label)]

    # -- reading --------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        examples, first = [], None  # first: (where, value) of the file's first label
        for where, record in read_records(path):
            text = text_field(record, self.text_field, where)
            pair = text_field(record, self.pair_field, where, "pair") if self.pair else None
            label = None
            if labelled:
                value = field(record, self.label_field, where, "label")
                first = first or (where, value)
                self.check_label_type(value, where, *first)
                label = self.parse_label(value, where)
            examples.append(TextExample(text, pair, label, where))
        if not examples:
            raise DataError(f"{path}: no records.")
        return examples

    def check_label_type(self, value, where: str, first_where: str, first) -> None:
        """One file's class labels are all of one JSON type: beside 1 (or "1"), 1.0 and true
        would otherwise be the further classes "1.0" and "True"."""
        if label_type(value) != label_type(first):
            raise DataError(
                f"{where}: label {json.dumps(value)} is {label_type(value)}, but {first_where} "
                f"has {json.dumps(first)}, {label_type(first)}: give every label of a file as "
                "the same type (all strings, or all integers), or they become different classes.")

    def read_lines(self, lines: list[str], source: str, tokenizer=None) -> list[TextExample]:
        """Raw text, one example a line; for pairs the two texts are separated by a tab.

        An empty line is an input too (an empty text gets a prediction; an empty pair is
        refused), so that outputs line up with inputs."""
        examples = []
        for number, line in enumerate(lines, 1):
            where = f"{source}:{number}"
            if self.pair:
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 2 or not all(p.strip() for p in parts):
                    raise DataError(f"{where}: a sentence pair needs two texts separated by a tab.")
                examples.append(TextExample(parts[0], parts[1], where=where))
            else:
                examples.append(TextExample(line.rstrip("\r\n"), where=where))
        return examples

    def parse_label(self, value, where: str) -> str:
        if isinstance(value, (dict, list)) or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: label {value!r} is not a class name.")
        # a spreadsheet's "pos " beside "pos" is one class, not two
        return value.strip() if isinstance(value, str) else str(value)

    def label_names(self, examples: list[TextExample]) -> list[str]:
        """The classes of the training examples; refused when there are fewer than two (one
        output would make the head a regression head)."""
        return enough_classes(sorted({e.label for e in examples}), examples, "label")

    def check_labels(self, examples: list[TextExample], label2id: dict) -> None:
        check_known_labels(((e.where, e.label) for e in examples), label2id, "training")

    # -- encoding -------------------------------------------------------------------------

    def encode(self, examples: list[TextExample], tokenizer,
               label2id: dict | None = None) -> list[dict]:
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples] if self.pair else None
        rows = tokenizer(texts, pairs)
        sequences = [[(ids, types)] for ids, types in zip(rows["input_ids"],
                                                          rows["token_type_ids"], strict=True)]
        too_long = [i for i, ids in enumerate(rows["input_ids"]) if len(ids) > self.max_length]
        if too_long and self.doc_stride:
            long_pairs = [pairs[i] for i in too_long] if pairs else None
            windowed = self.windows(tokenizer, [texts[i] for i in too_long], long_pairs,
                                    [examples[i].where for i in too_long])
            for i, windows in zip(too_long, windowed, strict=True):
                sequences[i] = windows
        elif too_long:  # re-encode only those, with Google's pair truncation
            cut = tokenizer([texts[i] for i in too_long],
                            [pairs[i] for i in too_long] if pairs else None,
                            truncation=True, max_length=self.max_length)
            for j, i in enumerate(too_long):
                sequences[i] = [(cut["input_ids"][j], cut["token_type_ids"][j])]
            warn_truncated([examples[i].where for i in too_long], self.max_length)
        features = []
        for i, example in enumerate(examples):
            label = (self.label_value(example.label, label2id)
                     if example.label is not None and label2id is not None else None)
            for ids, types in sequences[i]:
                feature = {"input_ids": ids, "token_type_ids": types, "example": i}
                if label is not None:
                    feature["labels"] = label
                features.append(feature)
        return features

    def windows(self, tokenizer, texts: list[str], pairs: list[str] | None,
                where: list[str]) -> list[list[tuple[list[int], list[int]]]]:
        """(ids, segment ids) of each window of each text: ``[CLS] A-window [SEP] (B [SEP])``."""
        backend = tokenizer.backend
        firsts = backend.encode_batch(texts, add_special_tokens=False)
        seconds = (backend.encode_batch(pairs, add_special_tokens=False) if pairs
                   else [None] * len(texts))
        cls, sep, half = tokenizer.cls_token_id, tokenizer.sep_token_id, (self.max_length - 3) // 2
        windowed, cut = [], []
        for first, second, place in zip(firsts, seconds, where, strict=True):
            b = list(second.ids) if second is not None else []
            if len(b) > half:
                b = b[:half]
                cut.append(place)
            tail = [*b, sep] if b else []
            room = self.max_length - 2 - len(tail)
            windowed.append([([cls, *first.ids[start:start + length], sep, *tail],
                              [0] * (length + 2) + [1] * len(tail))
                             for start, length in passage_windows(len(first.ids), room,
                                                                  self.doc_stride)])
        if cut:
            logger.warning("%d second text(s) longer than half of max_length=%d were cut to "
                           "leave room for the windows of the first, e.g. %s.", len(cut),
                           self.max_length, cut[0])
        return windowed

    def label_value(self, label, label2id: dict):
        return label2id[label]

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        return collate_sequences(features, self.max_length, "labels",
                                 pad_to_multiple_of=pad_to_multiple_of)

    # -- decoding and scoring -------------------------------------------------------------

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        logits = pooled_logits(features, outputs, len(examples), self.window_pooling)
        probabilities = torch.tensor(logits).float().softmax(-1).numpy()
        return [{"label": id2label[int(p.argmax())],
                 "probabilities": {id2label[j]: round(float(v), 6) for j, v in enumerate(p)}}
                for p in probabilities]

    def score(self, examples, predictions) -> dict[str, float]:
        return classification_metrics([e.label for e in examples],
                                      [p["label"] for p in predictions])

    def report(self, examples, predictions) -> dict:
        """Precision, recall, F1 and support of each class and the confusion matrix, in the
        model's label order (classes the model does not know, if any, after them)."""
        gold = [e.label for e in examples]
        predicted = [p["label"] for p in predictions]
        seen = sorted(set(gold) | set(predicted))
        labels = [*(self.classes or []), *(c for c in seen if c not in (self.classes or []))]
        return class_report(gold, predicted, labels)

    def to_json(self, example: TextExample, prediction) -> dict:
        record = {"text": example.text}
        if self.pair:
            record["text_pair"] = example.text_pair
        return {**record, **prediction}


class PairClassification(Classification):
    """Two texts in (sentence A and B, segment ids 0 and 1), one class out; e.g. NLI."""

    name = "pair-classification"
    pair = True


class Regression(Classification):
    """One number out (one output unit, mean squared error): Pearson and Spearman correlation."""

    name = "regression"
    metrics = ("pearson", "spearman", "mse")
    problem_type = "regression"

    def check_label_type(self, value, where, first_where, first) -> None:
        """1, "1" and 1.0 are the same number."""

    def parse_label(self, value, where: str) -> float:
        if isinstance(value, bool):
            raise DataError(f"{where}: regression label {json.dumps(value)} is not a number.")
        try:
            number = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            number = math.inf
        except (TypeError, ValueError):
            raise DataError(f"{where}: regression label {value!r} is not a number.") from None
        if not math.isfinite(number):
            raise DataError(f"{where}: regression label {reprlib.repr(value)} is not finite.")
        return number

    def label_names(self, examples) -> list[str]:
        return ["score"]

    def check_labels(self, examples, label2id) -> None:
        """Any number is a valid target."""

    def label_value(self, label, label2id):
        return float(label)

    def collate(self, features, pad_to_multiple_of=1):
        return collate_sequences(features, self.max_length, "labels", dtype=torch.float32,
                                 pad_to_multiple_of=pad_to_multiple_of)

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        logits = pooled_logits(features, outputs, len(examples), self.window_pooling)
        return [{"score": round(float(row[0]), 6)} for row in logits]

    def score(self, examples, predictions) -> dict[str, float]:
        return regression_metrics([e.label for e in examples], [p["score"] for p in predictions])

    def report(self, examples, predictions) -> None:
        """A number has no classes."""
        return None


def label_type(value) -> str:
    """The JSON type of a label, in words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a fractional number"
    return "a string" if isinstance(value, str) else f"a JSON {type(value).__name__}"


def classification_metrics(gold: list, predicted: list) -> dict[str, float]:
    """Accuracy, macro-averaged F1 over the gold and predicted classes, Matthews correlation."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {"accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(gold, predicted))}


def class_report(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Per-class precision, recall, F1 and support and the confusion matrix (rows gold, columns
    predicted) over ``labels``, counted here (the tests hold them to scikit-learn's)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[g] for g in gold], [index[p] for p in predicted]), 1)
    tp = np.diag(matrix)
    per_class = scores_from_counts(tp, matrix.sum(0) - tp, matrix.sum(1) - tp, labels)
    return {"per_class": per_class, "confusion": {"labels": labels, "matrix": matrix.tolist()}}


def regression_metrics(gold: list[float], predicted: list[float]) -> dict[str, float]:
    """Pearson and Spearman correlation, and mean squared error (lower is better)."""
    from scipy.stats import pearsonr, spearmanr

    gold_array, predicted_array = np.asarray(gold, float), np.asarray(predicted, float)
    constant = np.ptp(predicted_array) == 0 or np.ptp(gold_array) == 0
    return {"pearson": 0.0 if constant else float(pearsonr(gold_array, predicted_array)[0]),
            "spearman": 0.0 if constant else float(spearmanr(gold_array, predicted_array)[0]),
            "mse": float(np.mean((gold_array - predicted_array) ** 2))}
