"""Multiple choice (SWAG-style): one score per choice, softmax across the choices.

Input: JSONL with a question (``--text-field``, default ``question``), a list of ``choices``, the
index of the right one as ``label`` (or its text: a string that is the text of one choice and
the index of another is refused, see `choice_index`), and optionally a ``context``. Each choice is
packed as a pair: ``[CLS] context [SEP] question choice [SEP]``, or ``[CLS] question [SEP] choice
[SEP]`` without a context; the model scores each from its pooled [CLS] vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model import BertForMultipleChoice
from .base import (
    DataError,
    Task,
    field,
    json_input_lines,
    pad,
    padded_length,
    read_records,
    text_field,
    warn_truncated,
)


@dataclass
class ChoiceExample:
    question: str
    choices: list[str]
    label: int | None = None
    context: str | None = None
    where: str = ""


class MultipleChoice(Task):
    name = "multiple-choice"
    model_class = BertForMultipleChoice
    metrics = ("accuracy",)
    has_labels = False

    def __init__(self, max_length: int = 128, text_field: str = "question",
                 choices_field: str = "choices", label_field: str = "label",
                 context_field: str = "context"):
        super().__init__(max_length)
        self.text_field, self.choices_field = text_field, choices_field
        self.label_field, self.context_field = label_field, context_field

    def options(self) -> dict:
        return {**super().options(), "text_field": self.text_field,
                "choices_field": self.choices_field, "label_field": self.label_field,
                "context_field": self.context_field}

    def read(self, path: str | Path, labelled: bool = True) -> list[ChoiceExample]:
        examples = [self._example(r, where, labelled) for where, r in read_records(path)]
        if not examples:
            raise DataError(f"{path}: no records.")
        return same_number_of_choices(examples)

    def read_lines(self, lines: list[str], source: str, tokenizer=None) -> list[ChoiceExample]:
        hint = (f"; multiple choice reads JSON lines with {self.text_field!r} and "
                f"{self.choices_field!r}")
        examples = [self._example(record, where, labelled=False)
                    for where, record in json_input_lines(lines, source, hint)]
        return same_number_of_choices(examples) if examples else examples

    def _example(self, record: dict, where: str, labelled: bool) -> ChoiceExample:
        question = text_field(record, self.text_field, where)
        choices = field(record, self.choices_field, where, "choices")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise DataError(f"{where}: {self.choices_field!r} must be a list of two or more "
                            "non-empty texts.")
        context = record.get(self.context_field)
        if context is not None and (not isinstance(context, str) or not context.strip()):
            raise DataError(f"{where}: {self.context_field!r} must be a non-empty text.")
        label = None
        if labelled:
            label = choice_index(field(record, self.label_field, where, "label"), choices,
                                 where)
        return ChoiceExample(question, choices, label, context, where)

    def encode(self, examples: list[ChoiceExample], tokenizer, label2id=None) -> list[dict]:
        firsts, seconds = [], []
        for e in examples:
            for choice in e.choices:
                firsts.append(e.context if e.context else e.question)
                seconds.append(f"{e.question} {choice}" if e.context else choice)
        full = tokenizer(firsts, seconds)
        rows = tokenizer(firsts, seconds, truncation=True, max_length=self.max_length)
        truncated = {examples[i // len(examples[0].choices)].where
                     for i, ids in enumerate(full["input_ids"]) if len(ids) > self.max_length}
        warn_truncated(sorted(truncated), self.max_length)
        features, position = [], 0
        for index, example in enumerate(examples):
            span = slice(position, position + len(example.choices))
            position = span.stop
            feature = {"input_ids": rows["input_ids"][span],
                       "token_type_ids": rows["token_type_ids"][span], "example": index}
            if example.label is not None:
                feature["labels"] = example.label
            features.append(feature)
        return features

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        """[batch, choices, tokens] tensors, every choice padded to the batch's `padded_length`."""
        width = padded_length((len(ids) for f in features for ids in f["input_ids"]),
                              self.max_length, pad_to_multiple_of)

        def padded(key, value):
            return torch.stack([pad(f[key], value, width) for f in features])

        batch = {"input_ids": padded("input_ids", 0),
                 "token_type_ids": padded("token_type_ids", 0)}
        batch["attention_mask"] = torch.stack([pad([[1] * len(r) for r in f["input_ids"]], 0,
                                                   width) for f in features])
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def decode(self, examples, features, outputs, id2label=None) -> list[dict]:
        predictions = []
        for example, output in zip(examples, outputs, strict=True):
            probabilities = torch.tensor(np.asarray(output["logits"])).float().softmax(-1)
            best = int(probabilities.argmax())
            predictions.append({"label": best, "choice": example.choices[best],
                                "probabilities": [round(float(p), 6) for p in probabilities]})
        return predictions

    def score(self, examples, predictions) -> dict[str, float]:
        correct = [p["label"] == e.label for e, p in zip(examples, predictions, strict=True)]
        return {"accuracy": float(np.mean(correct))}

    def to_json(self, example: ChoiceExample, prediction) -> dict:
        return {"question": example.question, "choices": example.choices, **prediction}


def choice_index(label, choices: list[str], where: str) -> int:
    """The right choice's index from a label: a JSON integer is an index; a string is the text
    of a choice or an index written in digits. A string that is both, naming two different
    choices ("2" with choices ["4", "2", "1"]), is refused: either reading would be a guess."""
    if isinstance(label, str):
        by_text = choices.index(label) if label in choices else None
        by_index = int(label) if label.strip().isdecimal() else None
        if by_index is not None and by_index >= len(choices):
            by_index = None
        if by_text is not None and by_index is not None and by_text != by_index:
            raise DataError(
                f"{where}: label {label!r} is both the text of choice {by_text} and the index of "
                f"choice {by_index} ({choices[by_index]!r}); give the right choice's index as a "
                f"JSON number ({by_text} or {by_index}), which is always read as an index.")
        label = next((i for i in (by_text, by_index) if i is not None), label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise DataError(f"{where}: label {label!r} is neither a choice index "
                        f"(0..{len(choices) - 1}) nor the text of a choice.")
    return label


def same_number_of_choices(examples: list[ChoiceExample]) -> list[ChoiceExample]:
    """Batches are [batch, choices, tokens] tensors, so one input needs one number of choices."""
    odd = next((e for e in examples if len(e.choices) != len(examples[0].choices)), None)
    if odd is not None:
        raise DataError(f"{odd.where}: {len(odd.choices)} choices, but {examples[0].where} has "
                        f"{len(examples[0].choices)}; every question of one input needs the same "
                        "number of choices.")
    return examples
