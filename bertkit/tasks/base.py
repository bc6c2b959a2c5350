"""What every task family shares: the Task interface, input-file helpers and batch padding.

A task family turns labelled files into model inputs and model outputs back into answers:

    read(path)                    -> examples (each knows its file and line, for error messages)
    encode(examples, tokenizer)   -> features (lists of ids, one or more per example)
    collate(features)             -> a padded batch of tensors for the model
    decode(examples, features, outputs) -> one prediction per example
    score(examples, predictions)  -> metrics, the first of which picks the best checkpoint

An input longer than the model's window is, for tasks given a ``doc_stride``, encoded as several
overlapping windows (each feature names its ``example``); ``decode`` combines them again.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import os
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

logger = logging.getLogger("bertkit")

IGNORE_INDEX = -100  # labels at this value are left out of the loss (sub-tokens, padding)


class DataError(ValueError):
    """An input file is malformed; the message names the file and the line or record."""


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}
UTF8_HINT = "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)"


def text_lines(source: str | Path | BinaryIO, name: str | None = None, *,
               keepends: bool = True) -> Iterator[str]:
    """The lines of a UTF-8 text file, decoded strictly: every task reader reads through this.

    ``source`` is a path (``.gz`` and ``.bz2`` are decompressed) or a binary file object such as
    ``sys.stdin.buffer`` (``name`` names it in messages). Lines split at ``\\n`` only, so a form
    feed or U+2028 inside a line does not make two inputs of it; ``keepends`` keeps each line's
    end (as the csv module needs). A byte-order mark before the first line is dropped. A byte
    that is not UTF-8 is a DataError naming ``file:line:column`` (the column counts bytes) and
    the byte; a compressed file that is cut short or corrupt is a DataError naming the file and
    the last line read whole.
    """
    if not isinstance(source, (str, os.PathLike)):
        yield from _decoded_lines(source, name or "<input>", keepends)
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    opener = COMPRESSED.get(path.suffix)
    with (opener or open)(path, "rb") as file:
        yield from _decoded_lines(file, name or str(path), keepends,
                                  path.suffix if opener else None)


def _decoded_lines(file: BinaryIO, name: str, keepends: bool,
                   compressed: str | None = None) -> Iterator[str]:
    raws, number = iter(file), 0
    while True:
        try:
            raw = next(raws, None)
        except (EOFError, OSError, zlib.error) as error:
            if compressed is None:
                raise
            where = f"beyond line {number}" if number else "it"
            raise DataError(f"{name}: cannot decompress {where} ({error}): the {compressed} "
                            "file is cut short or corrupt; copy or compress it again.") from None
        if raw is None:
            return
        number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{name}:{number}:{error.start + 1}: not valid UTF-8 (byte "
                            f"0x{raw[error.start]:02x}); {UTF8_HINT}.") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield line if keepends else line.rstrip("\r\n")


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
    kind = table_format(path)
    if kind == "jsonl":
        return [(f"{path}:{number}", json_object(line, f"{path}:{number}"))
                for number, line in enumerate(text_lines(path), 1) if line.strip()]
    return _table_rows(path, "," if kind == "csv" else "\t", kind.upper())


def json_object(line: str, where: str, hint: str = "") -> dict:
    """The JSON object on one line; ``hint`` (``"; ..."``) ends a message about a bad line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg}){hint}.") from None
    except ValueError:  # json reads integers with int(), which stops at that many digits
        raise DataError(f"{where}: a number of more than {sys.get_int_max_str_digits()} "
                        f"digits{hint}; no task reads one: fix or remove the line.") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}.")
    return record


def json_input_lines(lines: list[str], source: str, hint: str) -> list[tuple[str, dict]]:
    """(where, record) for raw input lines that each hold a JSON object (``predict``'s input
    for QA and multiple choice); an empty line is refused, not dropped, so that outputs line up
    with inputs."""
    records = []
    for number, line in enumerate(lines, 1):
        where = f"{source}:{number}"
        if not line.strip():
            raise DataError(f"{where}: the line is empty{hint}; each line is one input (and one "
                            "output), so remove the line.")
        records.append((where, json_object(line, where, hint)))
    return records


def _table_rows(path: str | Path, delimiter: str, kind: str) -> list[tuple[str, dict]]:
    """The rows of a CSV/TSV file under its header, each a single line of the file.

    A row that spans lines is refused: a stray ``"`` at the start of a field would otherwise
    open a quoted field that runs on through the rows after it and swallow them.
    """
    reader = csv.reader(text_lines(path), delimiter=delimiter, strict=True)
    rows, header, end = [], None, 0
    try:
        for values in reader:
            start, end = end + 1, reader.line_num
            if not values:  # a blank line
                continue
            if end > start:
                raise DataError(
                    f"{path}:{start}: a quoted field runs on over lines {start}-{end}: a '\"' "
                    "that opens a field and does not close it on its line swallows the rows "
                    "after it. Quote the whole field and double each '\"' inside it; a text "
                    "that really holds line breaks belongs in JSONL.")
            if header is None:
                header = checked_header(values, f"{path}:{start}", delimiter)
            elif len(values) != len(header):
                raise DataError(f"{path}:{start}: {len(values)} fields where the header has "
                                f"{len(header)} ({', '.join(map(repr, header))}); quote a field "
                                f"that holds the delimiter {delimiter!r}.")
            else:
                rows.append((f"{path}:{start}", dict(zip(header, values, strict=True))))
    except csv.Error as error:
        raise DataError(f"{path}:{end + 1}: malformed {kind} ({error}); a field that starts "
                        "with '\"' must end with '\"', with each '\"' inside it doubled.") from None
    if header is None:
        raise DataError(f"{path}: the file is empty (a header row is needed).")
    return rows


def checked_header(names: list[str], where: str, delimiter: str) -> list[str]:
    """A CSV/TSV header whose columns can be told apart: of two columns of one name, a row would
    keep only the last; a header that is one field holding ``;`` or a tab is a file separated by
    that (a spreadsheet's export in many locales), which would read as one column."""
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise DataError(f"{where}: the header names column(s) {', '.join(map(repr, repeated))} "
                        "more than once; rename them so that each column has its own name.")
    other = next((d for d in (";", "\t", ",") if d != delimiter and len(names) == 1
                  and d in names[0]), None)
    if other is not None:
        raise DataError(f"{where}: the header {names[0]!r} is one column: the file seems "
                        f"separated by {other!r}, but this file name is read as separated by "
                        f"{delimiter!r}; save it with commas as .csv or with tabs as .tsv.")
    return names


def field(record: dict, name: str, where: str, what: str):
    """``record[name]``, or a message that names the record and the fields it does have."""
    if record.get(name, "") is None:
        raise DataError(f"{where}: field {name!r} is null; give it a value or remove the "
                        "record.")
    if name not in record:
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


def enough_classes(names: list[str], examples: list, what: str) -> list[str]:
    """``names``, the label vocabulary of training ``examples``, if it has two or more labels."""
    if len(names) >= 2:
        return names
    found = f"only {what} {names[0]!r}" if names else f"no {what}"
    source = examples[0].where.rsplit(":", 1)[0] if examples else "the training data"
    raise DataError(f"{source}: the {len(examples)} training examples have {found}, but a "
                    f"classifier needs at least two {what}s to choose between; train on data "
                    f"that holds examples of every {what}.")


def warn_truncated(where: list[str], max_length: int) -> None:
    if where:
        logger.warning("%d input(s) longer than max_length=%d tokens were truncated, e.g. %s; "
                       "raise --max-length to keep more text.", len(where), max_length, where[0])


def length_multiple(precision: str) -> int:
    """The multiple of tokens a batch's length is rounded up to under ``precision``: 8 in bf16
    and fp16, none in fp32. oneDNN builds its 16-bit kernels anew for every shape it meets (a
    bf16 product's first call on a Xeon with AMX took 2-10 ms against ~1 ms after): padded to
    their longest, a MiniLM fine-tuning epoch on rt-polarity met 49 lengths in 188 batches and
    ran 1.13-1.18x slower in bf16 than padded to a multiple of 8 (1.1x over three epochs). In
    fp32 the padding is only more work: the same epoch ran 1.07x faster padded to its longest
    than to a multiple of 8 (eight alternating runs; a multiple of 2 the same, 4 1.04x slower)."""
    return 8 if precision in ("bf16", "fp16") else 1


def padded_length(lengths, max_length: int, multiple: int = 1) -> int:
    """The longest of ``lengths`` rounded up to a multiple of ``multiple`` (`length_multiple`),
    not past the task's ``max_length``."""
    longest = max(lengths)
    return max(longest, min(-(-longest // multiple) * multiple, max_length))


def pad(rows: list[list], value, width: int) -> torch.Tensor:
    """Right-pad lists of equal rank to one rectangular tensor ``width`` wide."""
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def collate_sequences(features: list[dict], max_length: int, label_key: str | None = None,
                      token_label_pad=None, dtype=None, pad_to_multiple_of: int = 1
                      ) -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``token_type_ids`` to the `padded_length` of the batch (its longest,
    rounded up to ``pad_to_multiple_of``) and build the attention mask.

    ``label_key`` adds the labels: one per feature (a number or a vector, stacked), or with
    ``token_label_pad`` one per token (padded with it like the tokens).
    """
    ids = [f["input_ids"] for f in features]
    width = padded_length(map(len, ids), max_length, pad_to_multiple_of)
    batch = {
        "input_ids": pad(ids, 0, width),
        "token_type_ids": pad([f["token_type_ids"] for f in features], 0, width),
        "attention_mask": pad([[1] * len(r) for r in ids], 0, width),
    }
    if label_key is not None and all(label_key in f for f in features):
        values = [f[label_key] for f in features]
        batch[label_key] = (torch.tensor(values) if token_label_pad is None
                            else pad(values, token_label_pad, width))
        if dtype is not None:
            batch[label_key] = batch[label_key].to(dtype)
    return batch


def passage_windows(n_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over ``n_tokens`` tokens, windows of at most ``room``
    tokens starting ``doc_stride`` apart; Google's ``doc_spans`` loop."""
    windows, start = [], 0
    while True:
        length = min(room, n_tokens - start)
        windows.append((start, length))
        if start + length >= n_tokens:
            return windows
        start += min(length, doc_stride)


def is_max_context(windows: list[tuple[int, int]], window: tuple[int, int], token: int) -> bool:
    """Whether ``window`` gives ``token`` the most context on its shorter side (ties: first)."""
    best_score, best_window = None, None
    for start, length in windows:
        if not start <= token < start + length:
            continue
        score = min(token - start, start + length - 1 - token) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_window = score, (start, length)
    return best_window == window


WINDOW_POOLINGS = ("mean", "max")


def pooled_logits(features: list[dict | None], outputs: list[dict], count: int,
                  pooling: str = "mean") -> np.ndarray:
    """[count, labels]: each example's logits, the mean or max over its windows' logits.

    A feature names its example (``feature["example"]``); without features (None) the outputs
    are one per example, in order.
    """
    grouped: list[list] = [[] for _ in range(count)]
    for i, (feature, output) in enumerate(zip(features, outputs, strict=True)):
        grouped[feature["example"] if feature is not None else i].append(output["logits"])
    combine = np.mean if pooling == "mean" else np.max
    return np.stack([combine(np.asarray(rows, dtype=np.float64), axis=0) for rows in grouped])


def window_counts(features: list[dict]) -> dict[str, int]:
    """How many examples (documents) the features cover, how many of them needed more than
    one window, and the number of windows."""
    per_example = Counter(f["example"] for f in features)
    return {"documents": len(per_example),
            "multi_window_documents": sum(1 for n in per_example.values() if n > 1),
            "windows": len(features)}


def scores_from_counts(tp, fp, fn, labels: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support (tp + fn) of each label from its true positives, false
    positives and false negatives (0 where a ratio has nothing to count, as scikit-learn's
    ``zero_division=0``)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "f1": float(f1[i]), "support": int(tp[i] + fn[i])}
            for i, label in enumerate(labels)}


class Task:
    """One task family. Subclasses set the class attributes and implement the five steps."""

    name: str
    model_class: type
    metrics: tuple[str, ...]  # metric names; the first picks the best checkpoint (higher wins)
    has_labels = True  # False for tasks whose answers are spans (no label vocabulary)
    problem_type: str | None = None  # the sequence head's loss when not one class per input
    tunes = False  # True: ``tune`` chooses decision options on validation predictions

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
        """Unlabelled examples from raw input lines (``predict`` on stdin or a text file), one
        per line, an empty line included (or refused, naming it): outputs line up with inputs.
        Read a file's or stdin's lines with `text_lines` (``keepends=False``)."""
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

    def output_bias(self, train_examples: list, label_names: list[str]) -> list[float] | None:
        """Starting biases of a new output layer, one per label (None: zeros)."""
        return None

    def check_labels(self, examples: list, label2id: dict) -> None:
        """Raise DataError if an example has a label outside ``label2id``: call it on the
        validation and test examples before training, with the model's ``label2id``."""

    def encode(self, examples: list, tokenizer, label2id: dict | None = None) -> list[dict]:
        raise NotImplementedError

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        """A batch of tensors, padded to its longest feature rounded up to
        ``pad_to_multiple_of`` tokens (`length_multiple` of the precision it runs in)."""
        raise NotImplementedError

    def decode(self, examples: list, features: list[dict], outputs: list[dict],
               id2label: dict) -> list:
        raise NotImplementedError

    def score(self, examples: list, predictions: list) -> dict[str, float]:
        raise NotImplementedError

    def to_json(self, example, prediction) -> dict:
        """One line of ``predict`` output."""
        raise NotImplementedError

    def report(self, examples: list, predictions: list) -> dict | None:
        """Detail beside the metrics: ``per_class`` ({label: precision, recall, f1, support})
        and, where it has one, a ``confusion`` matrix ({"labels", "matrix"}: rows gold,
        columns predicted, in the labels' order); None for tasks without classes."""
        return None

    def tune(self, examples: list, predictions: list) -> dict | None:
        """Choose decision options (a threshold) on the best checkpoint's validation
        predictions; they become part of ``options()``. Returns them (None: nothing tuned)."""
        return None

    def decide_again(self, predictions: list) -> list:
        """``predictions`` decided again under the options `tune` just chose, from the scores
        they hold (no second pass of the model)."""
        return predictions

    def model_outputs(self) -> tuple[str, ...]:
        """The model output keys that ``decode`` reads."""
        return ("logits",)
