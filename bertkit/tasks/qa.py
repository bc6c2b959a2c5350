"""Extractive question answering in the SQuAD v1.1 / v2.0 format.

Each question is packed with its passage as ``[CLS] question [SEP] passage window [SEP]``. A
passage longer than the window is covered by overlapping windows that start ``doc_stride``
tokens apart. The model scores every token as the answer's start and end; the answer is the best
``start + end`` score over all windows among spans that lie in the passage, end after they start,
are at most ``max_answer_length`` tokens long and start where that window sees the most context
(Google's ``_check_is_max_context``). Token offsets map the span back to characters of the
passage. SQuAD v2.0 questions without an answer train to point at [CLS]; at prediction time the
answer is empty when the [CLS] score beats the best span by more than ``null_threshold``.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import BertForQuestionAnswering
from .base import (
    DataError,
    Task,
    collate_sequences,
    is_max_context,
    json_input_lines,
    passage_windows,
    read_records,
    text_field,
    text_lines,
)


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict] = field(default_factory=list)  # [{"text", "answer_start"}]; [] = none
    is_impossible: bool = False
    where: str = ""


def squad_list(parent, key: str, where: str) -> list:
    """``parent[key]``, a list of SQuAD objects (absent: none), or a message naming the place."""
    if not isinstance(parent, dict):
        raise DataError(f"{where}: should be a JSON object, got {type(parent).__name__}; see "
                        "SQuAD's layout (data[].paragraphs[].qas[]).")
    items = parent.get(key, [])
    if not isinstance(items, list):
        raise DataError(f"{where}: {key!r} should be a list, got {type(items).__name__}; see "
                        "SQuAD's layout (data[].paragraphs[].qas[]).")
    return items


class QuestionAnswering(Task):
    name = "question-answering"
    model_class = BertForQuestionAnswering
    metrics = ("f1", "exact_match")
    has_labels = False

    def __init__(self, max_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
                 n_best_size: int = 20, max_answer_length: int = 30, allow_null: bool = False,
                 null_threshold: float = 0.0):
        super().__init__(max_length)
        if doc_stride < 1:
            raise ValueError(f"doc_stride {doc_stride}: question answering slides its windows "
                             "over the passage; give a stride of 1 token or more.")
        if max_query_length + doc_stride + 3 > max_length:
            raise ValueError(f"doc_stride {doc_stride} + max_query_length {max_query_length} "
                             f"leaves windows of max_length {max_length} no room to overlap; "
                             "lower them or raise max_length.")
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.n_best_size, self.max_answer_length = n_best_size, max_answer_length
        self.allow_null, self.null_threshold = allow_null, null_threshold

    def options(self) -> dict:
        return {**super().options(), "doc_stride": self.doc_stride,
                "max_query_length": self.max_query_length, "n_best_size": self.n_best_size,
                "max_answer_length": self.max_answer_length, "allow_null": self.allow_null,
                "null_threshold": self.null_threshold}

    def prepare(self, train_examples: list[QAExample]) -> None:
        """Training data with unanswerable questions makes this a SQuAD v2.0 model."""
        self.allow_null = self.allow_null or any(e.is_impossible for e in train_examples)

    def model_outputs(self) -> tuple[str, ...]:
        return ("start_logits", "end_logits")

    # -- reading --------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[QAExample]:
        """A SQuAD JSON file, or JSONL with ``id``, ``question``, ``context`` (and ``answers``:
        SQuAD's list of ``text``/``answer_start`` objects, or HuggingFace datasets' object of
        two lists, where an empty one is SQuAD 2.0's unanswerable question)."""
        if str(path).lower().removesuffix(".gz").removesuffix(".bz2").endswith(
                (".jsonl", ".ndjson")):
            return [self._example(r, where, labelled) for where, r in read_records(path)]
        try:
            squad = json.loads("".join(text_lines(path)))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})."
                            ) from None
        if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
            raise DataError(f"{path}: not SQuAD format (a top-level object with a 'data' list).")
        examples = []
        for i, article in enumerate(squad["data"]):
            for j, paragraph in enumerate(squad_list(article, "paragraphs", f"{path}: data[{i}]")):
                place = f"{path}: data[{i}].paragraphs[{j}]"
                for k, qa in enumerate(squad_list(paragraph, "qas", place)):
                    where = f"{place}.qas[{k}]"
                    if not isinstance(qa, dict):
                        raise DataError(f"{where}: a question should be a JSON object, got "
                                        f"{type(qa).__name__}.")
                    record = {**qa, "context": paragraph.get("context")}
                    examples.append(self._example(record, where, labelled))
        if not examples:
            raise DataError(f"{path}: no questions.")
        return examples

    def _example(self, record: dict, where: str, labelled: bool) -> QAExample:
        question = text_field(record, "question", where, "question")
        context = text_field(record, "context", where, "context")
        qid = str(record.get("id", where))
        where = f"{where} (id {qid})"
        impossible = record.get("is_impossible") or False
        if impossible not in (True, False):  # bool("false") would drop the question's answers
            raise DataError(f"{where}: is_impossible is {json.dumps(impossible)}; write true or "
                            "false (a JSON boolean).")
        impossible = bool(impossible)
        answers = record.get("answers") or []
        if isinstance(answers, dict):  # HuggingFace datasets' layout: lists side by side
            texts, starts = answers.get("text"), answers.get("answer_start")
            if not (isinstance(texts, list) and isinstance(starts, list)
                    and len(texts) == len(starts)):
                raise DataError(f"{where}: 'answers' as an object needs equally long 'text' and "
                                f"'answer_start' lists, got {answers!r}.")
            answers = [{"text": t, "answer_start": a} for t, a in zip(texts, starts, strict=True)]
            impossible = impossible or not answers  # SQuAD 2.0 there: no answer, no flag
        if labelled and not impossible and not answers:
            raise DataError(f"{where}: no answers, and is_impossible is not set.")
        for answer in answers:
            text, start = answer.get("text"), answer.get("answer_start")
            if not isinstance(text, str) or not isinstance(start, int) or not text:
                raise DataError(f"{where}: each answer needs a non-empty 'text' and an integer "
                                f"'answer_start', got {answer!r}.")
            if context[start:start + len(text)] != text:
                raise DataError(f"{where}: answer {text!r} is not at offset {start} of the "
                                f"context (found {context[start:start + len(text)]!r}).")
        return QAExample(qid, question, context, [] if impossible else answers, impossible, where)

    def read_lines(self, lines: list[str], source: str, tokenizer=None) -> list[QAExample]:
        """JSONL lines with ``question`` and ``context``."""
        hint = "; question answering reads JSON lines with 'question' and 'context'"
        return [self._example(record, where, labelled=False)
                for where, record in json_input_lines(lines, source, hint)]

    # -- encoding: question + sliding passage windows -------------------------------------

    def encode(self, examples: list[QAExample], tokenizer, label2id=None) -> list[dict]:
        backend = tokenizer.backend
        questions = backend.encode_batch([e.question for e in examples], add_special_tokens=False)
        contexts = backend.encode_batch([e.context for e in examples], add_special_tokens=False)
        features = []
        for index, (example, question, context) in enumerate(
                zip(examples, questions, contexts, strict=True)):
            if not context.ids:
                raise DataError(f"{example.where}: the context has no tokens.")
            query = question.ids[: self.max_query_length]
            room = self.max_length - len(query) - 3
            answer = self._answer_tokens(example, context.offsets) if example.answers else None
            windows = passage_windows(len(context.ids), room, self.doc_stride)
            for window_start, window_length in windows:
                first = len(query) + 2  # position of the window's first passage token
                window = range(window_start, window_start + window_length)
                feature = {
                    "input_ids": [tokenizer.cls_token_id, *query, tokenizer.sep_token_id,
                                  *context.ids[window.start:window.stop],
                                  tokenizer.sep_token_id],
                    "token_type_ids": [0] * first + [1] * (window_length + 1),
                    "example": index,
                    "passage_start": first,
                    "offsets": context.offsets[window.start:window.stop],
                    "max_context": [is_max_context(windows, (window_start, window_length), t)
                                    for t in window],
                }
                if example.answers or example.is_impossible:
                    start = end = 0  # [CLS]: no answer, or not in this window
                    if answer is not None and answer[0] in window and answer[1] in window:
                        start = first + answer[0] - window_start
                        end = first + answer[1] - window_start
                    feature["start_positions"], feature["end_positions"] = start, end
                features.append(feature)
        return features

    @staticmethod
    def _answer_tokens(example: QAExample, offsets: list[tuple[int, int]]) -> tuple[int, int]:
        """The first and last passage tokens overlapping the (first) answer's characters."""
        answer = example.answers[0]
        start_char = answer["answer_start"]
        end_char = start_char + len(answer["text"])
        covered = [i for i, (s, e) in enumerate(offsets) if s < end_char and e > start_char]
        if not covered:
            raise DataError(f"{example.where}: answer {answer['text']!r} covers no token of the "
                            "context (is it only spaces or control characters?).")
        return covered[0], covered[-1]

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        batch = collate_sequences(features, self.max_length,
                                  pad_to_multiple_of=pad_to_multiple_of)
        if all("start_positions" in f for f in features):
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch

    # -- decoding and scoring -------------------------------------------------------------

    def decode(self, examples, features, outputs, id2label=None) -> list[dict]:
        by_example = collections.defaultdict(list)
        for feature, output in zip(features, outputs, strict=True):
            by_example[feature["example"]].append((feature, output))
        return [self._best_answer(examples[i], by_example[i]) for i in range(len(examples))]

    def _best_answer(self, example: QAExample, windows: list) -> dict:
        best, null_score = None, float("inf")
        for feature, output in windows:
            length = len(feature["input_ids"])
            starts = np.asarray(output["start_logits"][:length], dtype=np.float64)
            ends = np.asarray(output["end_logits"][:length], dtype=np.float64)
            null_score = min(null_score, starts[0] + ends[0])
            first, count = feature["passage_start"], len(feature["offsets"])
            for s in np.argsort(starts)[::-1][: self.n_best_size]:
                for e in np.argsort(ends)[::-1][: self.n_best_size]:
                    if not (first <= s < first + count and first <= e < first + count):
                        continue
                    if e < s or e - s + 1 > self.max_answer_length:
                        continue
                    if not feature["max_context"][s - first]:
                        continue
                    score = starts[s] + ends[e]
                    if best is None or score > best[0]:
                        best = (score, feature["offsets"][s - first][0],
                                feature["offsets"][e - first][1])
        if best is None or (self.allow_null and null_score - best[0] > self.null_threshold):
            return {"answer": "", "start": None, "end": None,
                    "score": round(float(null_score), 4)}
        score, start, end = best
        return {"answer": example.context[start:end], "start": int(start), "end": int(end),
                "score": round(float(score), 4)}

    def score(self, examples, predictions) -> dict[str, float]:
        return squad_metrics([[a["text"] for a in e.answers] for e in examples],
                             [p["answer"] for p in predictions])

    def to_json(self, example: QAExample, prediction) -> dict:
        return {"id": example.id, "question": example.question, **prediction}


# -- the official SQuAD evaluation (v1.1 script; v2.0's handling of empty answers) --------------


PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:  # v2.0: an empty answer is right only if empty
        return float(predicted_tokens == gold_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(gold_answers: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's gold answers."""
    em = f1 = 0.0
    for golds, prediction in zip(gold_answers, predictions, strict=True):
        golds = golds or [""]  # an unanswerable question: the right answer is the empty one
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    n = max(1, len(predictions))
    return {"f1": 100 * f1 / n, "exact_match": 100 * em / n}
