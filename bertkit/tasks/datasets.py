"""Built-in data sets: real labelled text from pinned packages, split once and saved.

Each built-in name (``rt-polarity``, ``snli``, ...) is turned into train/validation/test files in
the task's own input format under ``$BERTKIT_CACHE/datasets/NAME/``, with a fixed seed, so every
run and every user sees the same split and can open the files. ``resolve_data`` lets every command
take either a file or a built-in name (``rt-polarity`` or ``rt-polarity:test``).
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text
from ..sources import cache_dir, fetch

SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Builtin:
    task: str
    description: str
    make: Callable[[], dict[str, tuple[str, object]]]  # split -> (file name, content writer)


def _split(items: list, fractions=(0.8, 0.1)) -> dict[str, list]:
    """Shuffle with the fixed seed and cut 80/10/10 (or the given train/validation fractions)."""
    items = list(items)
    random.Random(SPLIT_SEED).shuffle(items)
    n_train = round(len(items) * fractions[0])
    n_validation = round(len(items) * fractions[1])
    return {"train": items[:n_train], "validation": items[n_train:n_train + n_validation],
            "test": items[n_train + n_validation:]}


def _unique(rows: list[dict]) -> list[dict]:
    """Rows with whitespace-trimmed text, each text kept once (the first): a snippet repeated in
    the source would otherwise land in both training and test."""
    seen, unique = set(), []
    for row in rows:
        row = {**row, "text": " ".join(row["text"].split())}
        if row["text"] and row["text"] not in seen:
            seen.add(row["text"])
            unique.append(row)
    return unique


def _unique_sentences(sentences: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Each word sequence once (the first): retweets would otherwise straddle the splits."""
    seen, unique = set(), []
    for sentence in sentences:
        words = tuple(w for w, _ in sentence)
        if words not in seen:
            seen.add(words)
            unique.append(sentence)
    return unique


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _conll(sentences: list[list[tuple[str, str]]]) -> str:
    return "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences)


def _wiki_leads() -> list[dict]:
    records = json.loads(fetch("wiki-leads", quiet=True).read_text(encoding="utf-8"))
    return [records[title] for title in sorted(records)]


# -- the data sets --------------------------------------------------------------------------


def _rt_polarity():
    with bz2.open(fetch("rt-polarity", quiet=True), "rt", encoding="utf-8", newline="") as f:
        rows = _unique([{"text": r["text"], "label": r["category"]} for r in csv.DictReader(f)
                        if r["category"] in ("fresh", "rotten")])
    return {split: (f"{split}.jsonl", _jsonl(rows)) for split, rows in _split(rows).items()}


def _vader_movies():
    member = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    with tarfile.open(fetch("vader-movies", quiet=True)) as archive:
        text = archive.extractfile(member).read().decode("utf-8")
    rows = []
    for line in io.StringIO(text, newline=None):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append({"text": parts[2], "label": float(parts[1])})
    rows = _unique(rows)
    return {split: (f"{split}.jsonl", _jsonl(rows)) for split, rows in _split(rows).items()}


def _snli():
    """Validation: 5,000 pairs held out of the 100,000-pair training subset; test: the official
    10,000-pair test set. Pairs without a consensus label ("-") are dropped, as is standard."""
    folder = fetch("snli", quiet=True)

    def pairs(name):
        with open(folder / name, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [{"text": r["sentence1"], "text_pair": r["sentence2"], "label": r["gold_label"]}
                for r in rows if r["gold_label"] != "-"]

    train = pairs("snli_1.0_train_subset.jsonl")
    random.Random(SPLIT_SEED).shuffle(train)
    return {"train": ("train.jsonl", _jsonl(train[5000:])),
            "validation": ("validation.jsonl", _jsonl(train[:5000])),
            "test": ("test.jsonl", _jsonl(pairs("snli_1.0_test.jsonl")))}


def _wnut16():
    sentences, current = [], []
    for line in fetch("wnut16", quiet=True).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
            current = []
            continue
        word, tag = line.split("\t")
        current.append((word, tag))
    if current:
        sentences.append(current)
    sentences = _unique_sentences(sentences)
    return {split: (f"{split}.conll", _conll(s)) for split, s in _split(sentences).items()}


def _wsj_pos():
    sentences = []
    for line in fetch("wsj-pos", quiet=True).read_text(encoding="utf-8").splitlines():
        if line.strip():
            sentences.append([tuple(token.rsplit("/", 1)) for token in line.split()])
    sentences = _unique_sentences(sentences)
    return {split: (f"{split}.conll", _conll(s)) for split, s in _split(sentences).items()}


def _squad_sample():
    """Five real SQuAD v1.1 questions: the same file for every split (a format check only)."""
    text = fetch("squad-sample", quiet=True).read_text(encoding="utf-8")
    return {split: (f"{split}.json", text) for split in SPLITS}


def _wiki_topics():
    rows = _unique([{"text": r["extract"], "label": r["topic"]} for r in _wiki_leads()
                    if r["topic"] != "Uncategorized"])
    return {split: (f"{split}.jsonl", _jsonl(rows)) for split, rows in _split(rows).items()}


# wiki-tags: words of the articles' short descriptions that become labels beside the topic.
DESCRIPTION_TAGS = ("american", "french", "city", "capital", "country", "species", "chemical",
                    "language")


def _wiki_tags():
    """Derived multi-label: each lead's labels are its topic (Wikipedia's vital-article topic)
    and each of DESCRIPTION_TAGS that is a word of its short description ("American jazz
    musician" -> People, american), both written by Wikipedia editors."""
    rows = []
    for record in _wiki_leads():
        if record["topic"] == "Uncategorized":
            continue
        words = set(re.findall(r"[a-z]+", (record.get("description") or "").lower()))
        tags = [tag for tag in DESCRIPTION_TAGS if tag in words]
        rows.append({"text": record["extract"], "labels": [record["topic"], *tags]})
    rows = _unique(rows)
    return {split: (f"{split}.jsonl", _jsonl(rows)) for split, rows in _split(rows).items()}


# A sentence ends at . ! or ? before a space and a capital letter (so "G.I. Joe" is cut after
# "G.I.": derived questions inherit such rough edges), or at the end of the text.
SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s+[A-Z])|$)", re.S)
YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-2][0-9])\b")
# Two or more capitalised words in a row ("Hasbro" alone is too often a sentence's subject).
NAME = re.compile(r"\b[A-Z][a-z]+(?: (?:of (?:the )?|de |the )?[A-Z][a-z]+)+\b")


def derived_questions(record: dict) -> list[dict]:
    """Cloze-style questions from one Wikipedia lead: a sentence with a year (or a multi-word
    name) replaced by "what year" (or "what"), whose answer is that span of the passage.

    The questions are derived by rule from the text, not written by people: they test finding and
    copying a span, with the question's wording taken from the passage itself.
    """
    context, questions = record["extract"], []
    for kind, pattern, phrase in (("year", YEAR, "what year"), ("name", NAME, "what")):
        for sentence in SENTENCE.finditer(context):
            if sentence.start() == 0:
                continue  # the first sentence usually just defines the title
            body = sentence.group().strip()
            offset = sentence.start() + (len(sentence.group()) - len(sentence.group().lstrip()))
            match = pattern.search(sentence.group())
            if match is None or sentence.start() + match.start() == offset:
                continue  # a capital that starts the sentence is no sign of a name
            start, end = sentence.start() + match.start(), sentence.start() + match.end()
            question = (body[: start - offset] + phrase + body[end - offset:]).rstrip(".!? ")
            questions.append({
                "id": f"{record['title']}#{kind}", "question": question + "?",
                "answers": [{"text": context[start:end], "answer_start": start}]})
            break
    return questions


def _wiki_qa():
    """Derived QA over Wikipedia leads (see derived_questions), split by article."""
    articles = [r for r in _wiki_leads() if r["extract"].strip()]

    def squad(records):
        data = []
        for record in records:
            questions = derived_questions(record)
            if questions:
                data.append({"title": record["title"], "paragraphs": [
                    {"context": record["extract"], "qas": questions}]})
        return json.dumps({"version": "bertkit-derived-1", "data": data}, ensure_ascii=False)

    return {split: (f"{split}.json", squad(rows)) for split, rows in _split(articles).items()}


def _wiki_mc():
    """Derived multiple choice: which of four articles of the same topic does a Wikipedia short
    description belong to? Distractors are drawn with the fixed seed."""
    leads = [r for r in _wiki_leads() if r.get("description") and r["topic"] != "Uncategorized"]
    by_topic: dict[str, list[str]] = {}
    for r in leads:
        by_topic.setdefault(r["topic"], []).append(r["title"])
    rng = random.Random(SPLIT_SEED)
    rows = []
    for r in leads:
        others = [t for t in by_topic[r["topic"]] if t != r["title"]]
        choices = [r["title"], *rng.sample(others, 3)]
        rng.shuffle(choices)
        rows.append({"question": r["description"], "choices": choices,
                     "label": choices.index(r["title"])})
    return {split: (f"{split}.jsonl", _jsonl(rows)) for split, rows in _split(rows).items()}


BUILTINS: dict[str, Builtin] = {
    "rt-polarity": Builtin("classification", "Rotten Tomatoes snippets, fresh/rotten; 80/10/10",
                           _rt_polarity),
    "vader-movies": Builtin("regression", "movie snippets with mean human sentiment -4..+4; "
                            "80/10/10", _vader_movies),
    "snli": Builtin("pair-classification", "SNLI 1.0 entailment/neutral/contradiction; train "
                    "95K, validation 5K held out, official 10K test", _snli),
    "wnut16": Builtin("token-classification", "WNUT-16 Twitter NER, BIO, 10 types; 80/10/10 "
                      "of tweets", _wnut16),
    "wsj-pos": Builtin("token-classification", "WSJ Penn part-of-speech tags; 80/10/10 of "
                       "lines", _wsj_pos),
    "squad-sample": Builtin("question-answering", "5 real SQuAD v1.1 questions (format check; "
                            "same file in every split)", _squad_sample),
    "wiki-topics": Builtin("classification", "Wikipedia lead sections, 11 topics; 80/10/10",
                           _wiki_topics),
    "wiki-tags": Builtin("multi-label", "DERIVED multi-label: Wikipedia lead sections labelled "
                         "with their topic and the words american, french, city, capital, "
                         "country, species, chemical, language of their short description; "
                         "80/10/10", _wiki_tags),
    "wiki-qa": Builtin("question-answering", "DERIVED cloze questions over Wikipedia leads "
                       "(answers are real spans; questions made by rule, not people); split by "
                       "article 80/10/10", _wiki_qa),
    "wiki-mc": Builtin("multiple-choice", "DERIVED: match a Wikipedia short description to one "
                       "of 4 same-topic article titles; 80/10/10", _wiki_mc),
}


def builtin_splits(name: str) -> dict[str, Path]:
    """The saved train/validation/test files of built-in data set ``name``, made on first use."""
    if name not in BUILTINS:
        raise KeyError(f"unknown built-in data set {name!r}; known: {', '.join(BUILTINS)}.")
    folder = cache_dir() / "datasets" / name
    done = folder / ".complete"
    if not done.exists():
        for file_name, content in BUILTINS[name].make().values():
            write_text(folder / file_name, content)
        write_text(done, f"seed {SPLIT_SEED}\n")
    return {split: next(folder.glob(f"{split}.*")) for split in SPLITS}


def resolve_data(spec: str | Path, split: str) -> Path:
    """A file path as given, or a built-in's split: ``NAME`` (this split) or ``NAME:SPLIT``."""
    path = Path(spec)
    if path.exists():
        return path
    name, _, chosen = str(spec).partition(":")
    if name in BUILTINS:
        chosen = chosen or split
        if chosen not in SPLITS:
            raise ValueError(f"{spec}: unknown split {chosen!r}; use one of {', '.join(SPLITS)}.")
        return builtin_splits(name)[chosen]
    raise FileNotFoundError(f"{spec}: no such file, and not a built-in data set "
                            f"({', '.join(BUILTINS)}).")


def builtin_task(spec: str | Path) -> str | None:
    """The task of a built-in data set spec, or None for a file."""
    name = str(spec).partition(":")[0]
    return BUILTINS[name].task if name in BUILTINS and not Path(spec).exists() else None
