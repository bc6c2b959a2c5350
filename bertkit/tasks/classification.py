"""Sentence classification, sentence-pair classification and regression, read from [CLS].

Input: JSONL, CSV or TSV rows with a text field, for pairs a second text field, and a label field
(a class name, or a number for regression). A pair is packed as ``[CLS] A [SEP] B [SEP]`` with
segment ids 0 for A and 1 for B, as in the paper.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model import BertForSequenceClassification
from .base import (
    DataError,
    Task,
    check_known_labels,
    collate_sequences,
    enough_classes,
    field,
    read_records,
    text_field,
    warn_truncated,
)


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
                 pair_field: str = "text_pair", label_field: str = "label"):
        super().__init__(max_length)
        self.text_field, self.pair_field, self.label_field = text_field, pair_field, label_field

    def options(self) -> dict:
        fields = {"text_field": self.text_field, "label_field": self.label_field}
        if self.pair:
            fields["pair_field"] = self.pair_field
        return {**super().options(), **fields}

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
        return str(value)

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
        too_long = [i for i, ids in enumerate(rows["input_ids"]) if len(ids) > self.max_length]
        if too_long:  # re-encode only those, with Google's pair truncation
            cut = tokenizer([texts[i] for i in too_long],
                            [pairs[i] for i in too_long] if pairs else None,
                            truncation=True, max_length=self.max_length)
            for j, i in enumerate(too_long):
                rows["input_ids"][i] = cut["input_ids"][j]
                rows["token_type_ids"][i] = cut["token_type_ids"][j]
        warn_truncated([examples[i].where for i in too_long], self.max_length)
        features = []
        for i, example in enumerate(examples):
            feature = {"input_ids": rows["input_ids"][i],
                       "token_type_ids": rows["token_type_ids"][i], "example": i}
            if example.label is not None and label2id is not None:
                feature["labels"] = self.label_value(example.label, label2id)
            features.append(feature)
        return features

    def label_value(self, label, label2id: dict):
        return label2id[label]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate_sequences(features, "labels")

    # -- decoding and scoring -------------------------------------------------------------

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        logits = np.stack([o["logits"] for o in outputs])
        probabilities = torch.tensor(logits).float().softmax(-1).numpy()
        return [{"label": id2label[int(p.argmax())],
                 "probabilities": {id2label[j]: round(float(v), 6) for j, v in enumerate(p)}}
                for p in probabilities]

    def score(self, examples, predictions) -> dict[str, float]:
        return classification_metrics([e.label for e in examples],
                                      [p["label"] for p in predictions])

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

    def check_label_type(self, value, where, first_where, first) -> None:
        """1, "1" and 1.0 are the same number."""

    def parse_label(self, value, where: str) -> float:
        if isinstance(value, bool):
            raise DataError(f"{where}: regression label {json.dumps(value)} is not a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: regression label {value!r} is not a number.") from None
        if not math.isfinite(number):
            raise DataError(f"{where}: regression label {value!r} is not finite.")
        return number

    def label_names(self, examples) -> list[str]:
        return ["score"]

    def check_labels(self, examples, label2id) -> None:
        """Any number is a valid target."""

    def label_value(self, label, label2id):
        return float(label)

    def collate(self, features):
        return collate_sequences(features, "labels", dtype=torch.float32)

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        return [{"score": round(float(o["logits"][0]), 6)} for o in outputs]

    def score(self, examples, predictions) -> dict[str, float]:
        return regression_metrics([e.label for e in examples], [p["score"] for p in predictions])


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


def regression_metrics(gold: list[float], predicted: list[float]) -> dict[str, float]:
    """Pearson and Spearman correlation, and mean squared error (lower is better)."""
    from scipy.stats import pearsonr, spearmanr

    gold_array, predicted_array = np.asarray(gold, float), np.asarray(predicted, float)
    constant = np.ptp(predicted_array) == 0 or np.ptp(gold_array) == 0
    return {"pearson": 0.0 if constant else float(pearsonr(gold_array, predicted_array)[0]),
            "spearman": 0.0 if constant else float(spearmanr(gold_array, predicted_array)[0]),
            "mse": float(np.mean((gold_array - predicted_array) ** 2))}
