"""What every task family shares: the Task interface, input-file helpers and batch padding.

A task family turns labelled files into model inputs and model outputs back into answers:

    read(path)                    -> examples (each knows its file and line, for error messages)
    encode(examples, tokenizer)   -> features (lists of ids, one or more per example)
    collate(features)             -> a padded batch of tensors for the model
    decode(examples, features, outputs) -> one prediction per example
    score(examples, predictions)  -> metrics, the first of which picks the best checkpoint
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger("bertkit")

IGNORE_INDEX = -100  # labels at this value are left out of the loss (sub-tokens, padding)


class DataError(ValueError):
    """An input file is malformed; the message names the file and the line or record."""


def open_text(path: str | Path):
    """Open a text file for reading, decompressing ``.gz`` and ``.bz2`` transparently."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")
    if path.suffix == ".bz2":
        return io.TextIOWrapper(bz2.open(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def table_format(path: str | Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file name (compression suffixes ignored)."""
    suffixes = [s for s in Path(path).suffixes if s not in (".gz", ".bz2")]
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    raise DataError(f"{path}: cannot tell the format from the name; use .jsonl, .csv or .tsv "
                    "(optionally .gz/.bz2 compressed).")


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) for every row of a JSONL/CSV/TSV file; ``where`` is ``file:line``."""
    import csv

    kind = table_format(path)
    rows = []
    with open_text(path) as f:
        if kind == "jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got "
                                    f"{type(record).__name__}.")
                rows.append((f"{path}:{number}", record))
        else:
            reader = csv.DictReader(f, delimiter="," if kind == "csv" else "\t")
            if reader.fieldnames is None:
                raise DataError(f"{path}: the file is empty (a header row is needed).")
            for record in reader:
                rows.append((f"{path}:{reader.line_num}", record))
    return rows


def field(record: dict, name: str, where: str, what: str):
    """``record[name]``, or a message that names the record and the fields it does have."""
    if name not in record or record[name] is None:
        present = ", ".join(repr(k) for k in record) or "none"
        raise DataError(f"{where}: no {what} field {name!r} (fields: {present}); choose the "
                        f"field with --{what}-field.")
    return record[name]


def text_field(record: dict, name: str, where: str, what: str = "text") -> str:
    value = field(record, name, where, what)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} should be text, got {type(value).__name__}.")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty; remove the record or give it text.")
    return value


def check_known_labels(labels_by_where, label2id: dict, role: str) -> None:
    """Every label must be one the model was trained with: an unseen one cannot be predicted."""
    for where, label in labels_by_where:
        if label not in label2id:
            known = ", ".join(sorted(map(str, label2id)))
            raise DataError(f"{where}: label {label!r} does not occur in the {role} labels "
                            f"({known}); the model could never predict it.")


def warn_truncated(where: list[str], max_length: int) -> None:
    if where:
        logger.warning("%d input(s) longer than max_length=%d tokens were truncated, e.g. %s; "
                       "raise --max-length to keep more text.", len(where), max_length, where[0])


def pad(rows: list[list], value) -> torch.Tensor:
    """Right-pad lists of equal rank to one rectangular tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def collate_sequences(features: list[dict], label_key: str | None = None,
                      label_pad=IGNORE_INDEX, dtype=None) -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``token_type_ids`` to the longest feature and build the attention mask.

    ``label_key`` adds per-feature labels: a number each (stacked) or a list per token (padded
    with ``label_pad``).
    """
    ids = [f["input_ids"] for f in features]
    batch = {
        "input_ids": pad(ids, 0),
        "token_type_ids": pad([f["token_type_ids"] for f in features], 0),
        "attention_mask": pad([[1] * len(r) for r in ids], 0),
    }
    if label_key is not None and all(label_key in f for f in features):
        values = [f[label_key] for f in features]
        batch[label_key] = (pad(values, label_pad) if isinstance(values[0], list)
                            else torch.tensor(values))
        if dtype is not None:
            batch[label_key] = batch[label_key].to(dtype)
    return batch


class Task:
    """One task family. Subclasses set the class attributes and implement the five steps."""

    name: str
    model_class: type
    metrics: tuple[str, ...]  # metric names; the first picks the best checkpoint (higher wins)
    has_labels = True  # False for tasks whose answers are spans (no label vocabulary)

    def __init__(self, max_length: int = 128):
        if max_length < 8:
            raise ValueError(f"max_length={max_length} leaves no room for text; use 64 or more.")
        self.max_length = max_length

    @property
    def metric(self) -> str:
        return self.metrics[0]

    def options(self) -> dict:
        """What must be saved beside a fine-tuned model to read and encode data the same way."""
        return {"task": self.name, "max_length": self.max_length}

    def read(self, path: str | Path, labelled: bool = True) -> list:
        raise NotImplementedError

    def read_lines(self, lines: list[str], source: str, tokenizer=None) -> list:
        """Unlabelled examples from raw input lines (``predict`` on stdin or a text file)."""
        raise NotImplementedError

    def prepare(self, train_examples: list) -> None:
        """Learn task options from the training data (e.g. that some questions have no answer)."""

    def use_labels(self, id2label: dict) -> None:
        """Adapt to the model's label names (e.g. BIO tags are scored as entities)."""

    def baselines(self, train_examples: list, examples: list) -> dict[str, float]:
        """Scores of a trivial predictor on ``examples``, for context beside the model's."""
        return {}

    def label_names(self, examples: list) -> list[str]:
        """The label vocabulary found in training examples, in a stable order."""
        return []

    def check_labels(self, examples: list, label2id: dict) -> None:
        """Raise DataError if an example has a label outside ``label2id``."""

    def encode(self, examples: list, tokenizer, label2id: dict | None = None) -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, examples: list, features: list[dict], outputs: list[dict],
               id2label: dict) -> list:
        raise NotImplementedError

    def score(self, examples: list, predictions: list) -> dict[str, float]:
        raise NotImplementedError

    def to_json(self, example, prediction) -> dict:
        """One line of ``predict`` output."""
        raise NotImplementedError

    def model_outputs(self) -> tuple[str, ...]:
        """The model output keys that ``decode`` reads."""
        return ("logits",)
