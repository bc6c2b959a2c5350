"""Token classification (named entities, part-of-speech tags): one label per word.

Input: CoNLL-style files, one ``word<TAB>tag`` per line (other columns between are ignored) and a
blank line between sentences. A word may become several WordPiece tokens; as in the paper, only
its first sub-token carries the label and the rest get -100, so the loss and the prediction are
per word. Tags in the BIO scheme (``B-person``, ``I-person``, ``O``) are scored as entities with
seqeval's semantics; any other tag set (POS) by word accuracy, beside a most-frequent-tag baseline.

A sentence longer than ``max_length`` is truncated, or, given a ``doc_stride``, covered by
overlapping windows that start ``doc_stride`` tokens apart. Training sees every window; each
word's tag is predicted in the window where its first sub-token has the most context (QA's "max
context" rule). Words cut off by truncation are never seen by the model, so they get no tag
(None; null in ``predict``'s JSON), not a confident O: scoring counts them as wrong for word
accuracy and as no entity for seqeval, and a warning counts them and names --doc-stride.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import BertForTokenClassification
from .base import (
    IGNORE_INDEX,
    DataError,
    Task,
    check_known_labels,
    collate_sequences,
    enough_classes,
    is_max_context,
    passage_windows,
    text_lines,
)

logger = logging.getLogger("bertkit")

OUTSIDE = "O"


@dataclass
class TagExample:
    words: list[str]
    tags: list[str] | None = None
    where: str = ""  # file:line of the first word
    text: str = ""  # the words' text: the raw input line, or the words joined by spaces
    spans: list[tuple[int, int]] = field(default_factory=list)  # each word's characters in text

    def __post_init__(self):
        if not self.text:
            self.text, self.spans, position = " ".join(self.words), [], 0
            for word in self.words:
                self.spans.append((position, position + len(word)))
                position += len(word) + 1


def is_bio(labels) -> bool:
    """True when every tag is O or starts with B-/I-: the tags then describe entities."""
    return all(t == OUTSIDE or t[:2] in ("B-", "I-") for t in labels) and any(
        t != OUTSIDE for t in labels)


def bio_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity, with seqeval's default (lenient) rules.

    An entity starts at B-X, or at I-X that does not continue an entity of type X (after O or
    another type); it ends before O, B-, or an I- of another type.
    """
    entities, current = [], None  # current: [type, start]
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, kind = (tag[0], tag[2:]) if tag != OUTSIDE else (OUTSIDE, "")
        if current is not None and (prefix != "I" or kind != current[0]):
            entities.append((current[0], current[1], i - 1))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = [kind, i]
    return entities


class TokenClassification(Task):
    name = "token-classification"
    model_class = BertForTokenClassification

    def __init__(self, max_length: int = 128, doc_stride: int | None = None):
        super().__init__(max_length)
        self.bio = True
        self.doc_stride = doc_stride or None

    def options(self) -> dict:
        return {**super().options(), **({"doc_stride": self.doc_stride} if self.doc_stride
                                        else {})}

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("f1", "precision", "recall", "accuracy") if self.bio else ("accuracy",)

    def use_labels(self, id2label: dict) -> None:
        self.bio = is_bio(id2label.values())

    # -- reading --------------------------------------------------------------------------

    def read(self, path: str | Path, labelled: bool = True) -> list[TagExample]:
        examples, words, tags, start = [], [], [], None

        def close():
            nonlocal words, tags, start
            if words:
                examples.append(TagExample(words, tags if labelled else None, f"{path}:{start}"))
            words, tags, start = [], [], None

        for number, line in enumerate(text_lines(path), 1):
            stripped = line.strip()
            if not stripped:
                close()
                continue
            if stripped.startswith("-DOCSTART-"):
                continue
            # columns split at tabs, or else at ASCII spaces only: str.split() would also split
            # a word at a no-break space ("10\u00a0000") and drop its second half
            parts = (stripped.split("\t") if "\t" in stripped
                     else [part for part in stripped.split(" ") if part])
            if labelled and len(parts) < 2:
                raise DataError(f"{path}:{number}: expected 'word<TAB>tag', got {stripped!r}; "
                                "a blank line separates sentences.")
            if labelled and not parts[-1].strip():
                raise DataError(f"{path}:{number}: the tag is empty.")
            start = start or number
            words.append(parts[0])
            tags.append(parts[-1].strip())
        close()
        if not examples:
            raise DataError(f"{path}: no sentences.")
        return examples

    def read_lines(self, lines: list[str], source: str, tokenizer=None) -> list[TagExample]:
        """Raw text, one example a line, split into words the way BERT's tokenizer splits them.

        A line without words (empty, or only spaces) is an example too, tagged with no words,
        so that outputs line up with inputs."""
        examples = []
        for number, line in enumerate(lines, 1):
            text = line.rstrip("\r\n")
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                return_word_ids=True)
            spans: dict[int, list[int]] = {}
            for word, (start, end) in zip(encoded["word_ids"], encoded["offset_mapping"],
                                          strict=True):
                spans.setdefault(word, [start, end])[1] = end
            word_spans = [tuple(spans[w]) for w in sorted(spans)]
            examples.append(TagExample([text[s:e] for s, e in word_spans], None,
                                       f"{source}:{number}", text, word_spans))
        return examples

    def label_names(self, examples: list[TagExample]) -> list[str]:
        return enough_classes(sorted({t for e in examples for t in e.tags}), examples, "tag")

    def check_labels(self, examples: list[TagExample], label2id: dict) -> None:
        check_known_labels(((e.where, t) for e in examples for t in e.tags), label2id, "training")

    # -- encoding -------------------------------------------------------------------------

    def encode(self, examples: list[TagExample], tokenizer,
               label2id: dict | None = None) -> list[dict]:
        encodings = tokenizer.backend.encode_batch([e.words for e in examples],
                                                   is_pretokenized=True, add_special_tokens=False)
        budget = self.max_length - 2  # room for [CLS] and [SEP]
        features, cut_off = [], []  # (where, words past the cut) of each truncated sentence
        for index, (example, encoding) in enumerate(zip(examples, encodings, strict=True)):
            encoding = every_word_tokened(example, encoding, tokenizer)
            labels = (first_subtoken_labels(encoding.word_ids, example.tags, label2id)
                      if example.tags is not None and label2id is not None else None)
            if self.doc_stride:
                windows = passage_windows(len(encoding.ids), budget, self.doc_stride)
            else:
                windows = [(0, min(budget, len(encoding.ids)))]
                if len(encoding.ids) > budget:
                    seen = len(set(encoding.word_ids[:budget]))
                    cut_off.append((example.where, len(example.words) - seen))
            starts = word_starts(encoding.word_ids)
            for window in windows:
                features.append(window_feature(tokenizer, encoding, windows, window, starts,
                                               labels, index))
        self.warn_cut_off(cut_off)
        return features

    def warn_cut_off(self, cut_off: list[tuple[str, int]]) -> None:
        """Say how many words truncation hides from the model and what becomes of them."""
        if cut_off:
            logger.warning(
                "%d word(s) of %d sentence(s) longer than max_length=%d tokens are cut off "
                "(e.g. %s) and never seen by the model: they get no tag (null in predict's "
                "output) and are scored as untagged (wrong for word accuracy, no entity for "
                "entity F1). Pass --doc-stride (e.g. %d) to tag every word from overlapping "
                "windows, or raise --max-length.", sum(n for _, n in cut_off), len(cut_off),
                self.max_length, cut_off[0][0], self.max_length // 2)

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        return collate_sequences(features, self.max_length, "labels", token_label_pad=IGNORE_INDEX,
                                 pad_to_multiple_of=pad_to_multiple_of)

    # -- decoding and scoring -------------------------------------------------------------

    def decode(self, examples, features, outputs, id2label) -> list[dict]:
        """Each word's tag from its first sub-token, in the window that decides it; None for a
        word truncation cut off (no window holds it)."""
        tags = [[None] * len(example.words) for example in examples]
        for feature, output in zip(features, outputs, strict=True):
            best = output["logits"][: len(feature["input_ids"])].argmax(-1)
            words = tags[feature["example"]]
            for position, (word, decides) in enumerate(zip(feature["word_ids"],
                                                           feature["decides"], strict=True)):
                if decides:
                    words[word] = id2label[int(best[position])]
        return [{"tags": t} for t in tags]

    def score(self, examples, predictions) -> dict[str, float]:
        """Word accuracy counts an untagged (cut-off) word as wrong; entity scores read it as
        O: the run found no entity there, so a gold entity there is missed."""
        gold = [e.tags for e in examples]
        accuracy = word_accuracy(gold, [p["tags"] for p in predictions])
        if not self.bio:
            return {"accuracy": accuracy}
        from seqeval.metrics import f1_score, precision_score, recall_score

        predicted = [outside_if_untagged(p["tags"]) for p in predictions]
        return {"f1": float(f1_score(gold, predicted, zero_division=0)),
                "precision": float(precision_score(gold, predicted, zero_division=0)),
                "recall": float(recall_score(gold, predicted, zero_division=0)),
                "accuracy": accuracy}

    def baselines(self, train_examples, examples) -> dict[str, float]:
        """Word accuracy of tagging each word with its most frequent training tag."""
        return {"most_frequent_tag_accuracy": most_frequent_tag_accuracy(train_examples, examples)}

    def to_json(self, example: TagExample, prediction) -> dict:
        record = {"text": example.text, "words": example.words, "tags": prediction["tags"]}
        if self.bio:
            record["entities"] = [
                {"type": kind, "text": example.text[example.spans[a][0]:example.spans[b][1]],
                 "start": example.spans[a][0], "end": example.spans[b][1]}
                for kind, a, b in bio_entities(outside_if_untagged(prediction["tags"]))]
        return record


def outside_if_untagged(tags: list[str | None]) -> list[str]:
    """``tags`` with O for the words truncation cut off (None): no entity was found there."""
    return [OUTSIDE if tag is None else tag for tag in tags]


def every_word_tokened(example: TagExample, encoding, tokenizer):
    """``encoding``, or (when the normaliser erased a word, a zero-width space or a control
    character, leaving it no token to carry its label) the words encoded again with [UNK]
    standing in for each erased one."""
    present = set(encoding.word_ids)
    if len(present) >= len(example.words):
        return encoding
    words = [w if i in present else tokenizer.unk_token for i, w in enumerate(example.words)]
    return tokenizer.backend.encode(words, is_pretokenized=True, add_special_tokens=False)


def word_starts(word_ids: list[int]) -> list[bool]:
    """Whether each token is its word's first sub-token (the one that carries the label)."""
    return [i == 0 or word != word_ids[i - 1] for i, word in enumerate(word_ids)]


def window_feature(tokenizer, encoding, windows: list[tuple[int, int]], window: tuple[int, int],
                   starts: list[bool], labels: list[int] | None, index: int) -> dict:
    """``[CLS] tokens [SEP]`` of one window; ``decides`` marks the positions whose prediction
    is their word's tag: first sub-tokens that have the most context in this window."""
    start, length = window
    span = slice(start, start + length)
    decides = [starts[t] and (len(windows) == 1 or is_max_context(windows, window, t))
               for t in range(start, start + length)]
    feature = {"input_ids": [tokenizer.cls_token_id, *encoding.ids[span],
                             tokenizer.sep_token_id],
               "token_type_ids": [0] * (length + 2),
               "word_ids": [None, *encoding.word_ids[span], None],
               "decides": [False, *decides, False], "example": index}
    if labels is not None:
        feature["labels"] = [IGNORE_INDEX, *labels[span], IGNORE_INDEX]
    return feature


def first_subtoken_labels(word_ids: list[int | None], tags: list[str],
                          label2id: dict) -> list[int]:
    """The tag id on each word's first sub-token; -100 on later sub-tokens and special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else label2id[tags[word]])
        previous = word
    return labels


def word_accuracy(gold: list[list[str]], predicted: list[list[str]]) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, predicted, strict=True)
             for g, p in zip(gs, ps, strict=True)]
    return float(np.mean([g == p for g, p in pairs])) if pairs else 0.0


def most_frequent_tag_accuracy(train: list[TagExample], examples: list[TagExample]) -> float:
    """Each word gets the tag it most often has in training; unseen words the commonest tag."""
    by_word: dict[str, Counter] = {}
    overall = Counter()
    for example in train:
        for word, tag in zip(example.words, example.tags, strict=True):
            by_word.setdefault(word, Counter())[tag] += 1
            overall[tag] += 1
    commonest = overall.most_common(1)[0][0]
    predicted = [[by_word[w].most_common(1)[0][0] if w in by_word else commonest
                  for w in e.words] for e in examples]
    return word_accuracy([e.tags for e in examples], predicted)
