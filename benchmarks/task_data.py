"""Data files for the README's fine-tuning measurements that no built-in data set gives as is.

    .venv/bin/python benchmarks/task_data.py imbalanced runs/data/rt-imbalanced
    .venv/bin/python benchmarks/task_data.py long-documents runs/data/linux-docs

``imbalanced``: rt-polarity's own splits with the "rotten" snippets thinned (a fixed random
choice, seed 0) to 10% of each split; training keeps ``--train`` snippets (3,000) in all.

``long-documents``: files of the Linux kernel documentation (``fetch_corpus("linux-docs")``),
each labelled with its top-level folder (``admin-guide``, ``driver-api``, ``filesystems``,
``networking``, ``userspace-api``); files of at least 3,000 characters, ``--per-class`` (75) of
each folder drawn with seed 0, split 60/20/20 within each folder; ``--extra-test N`` writes N more
files a folder, none of them in the splits, to ``test-extra.jsonl``. The text is the file with its
reStructuredText underlines (lines of punctuation only) and SPDX/comment lines dropped, cut at
``--max-chars`` (8,000) characters: long documents, but a bounded number of windows each.

Both write ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (``text``, ``label``) into the
folder and print how many tokens the documents have.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from bertkit.data import fetch_corpus
from bertkit.tasks.datasets import resolve_data
from bertkit.tokenizer import BertTokenizer

FOLDERS = ("admin-guide", "driver-api", "filesystems", "networking", "userspace-api")
SEED = 0
MARKUP = re.compile(r"^\s*([=\-~^*#+`'\".:_]{3,}|\.\. .*)\s*$")  # underlines, comments


def imbalanced(out: Path, train_size: int = 3000, minority: str = "rotten",
               share: float = 0.10) -> dict[str, list[dict]]:
    """Each rt-polarity split with ``minority`` kept at ``share`` of the split's rows."""
    rng = random.Random(SEED)
    splits = {}
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in
                resolve_data("rt-polarity", split).read_text(encoding="utf-8").splitlines()]
        majority = [r for r in rows if r["label"] != minority]
        if split == "train":
            majority = rng.sample(majority, round(train_size * (1 - share)))
        kept = round(len(majority) * share / (1 - share))
        rows = majority + rng.sample([r for r in rows if r["label"] == minority], kept)
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def cleaned(text: str, max_chars: int) -> str:
    """The prose of a reStructuredText file: markup-only lines dropped, blank runs collapsed."""
    lines = [line for line in text.splitlines() if not MARKUP.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()[:max_chars]


def long_documents(out: Path, per_class: int = 75, max_chars: int = 8000,
                   min_chars: int = 3000, extra_test: int = 0) -> dict[str, list[dict]]:
    """Linux documentation files labelled by their top-level folder, split within each folder
    (and ``extra_test`` more files a folder, drawn from the rest, as ``test-extra``)."""
    root = fetch_corpus("linux-docs", quiet=True)
    rng, extra_rng = random.Random(SEED), random.Random(SEED + 1)
    splits = {"train": [], "validation": [], "test": [], "test-extra": []}
    for folder in FOLDERS:
        texts = [gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
                 for path in sorted((root / folder).rglob("*.rst.gz"))]
        texts = [cleaned(t, max_chars) for t in texts if len(t) >= min_chars]
        chosen = rng.sample(texts, min(per_class, len(texts)))
        n_train, n_validation = round(0.6 * len(chosen)), round(0.2 * len(chosen))
        for split, part in (("train", chosen[:n_train]),
                            ("validation", chosen[n_train:n_train + n_validation]),
                            ("test", chosen[n_train + n_validation:])):
            splits[split].extend({"text": t, "label": folder} for t in part)
        taken = set(chosen)
        rest = [t for t in texts if t not in taken]
        splits["test-extra"].extend({"text": t, "label": folder} for t in extra_rng.sample(
            rest, min(extra_test, len(rest))))
    for rows in splits.values():
        rng.shuffle(rows)
    return {split: rows for split, rows in splits.items() if rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("imbalanced", "long-documents"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=3000, help="imbalanced: training snippets")
    parser.add_argument("--per-class", type=int, default=75, help="long-documents: files a folder")
    parser.add_argument("--max-chars", type=int, default=8000, help="long-documents: text kept")
    parser.add_argument("--extra-test", type=int, default=0,
                        help="long-documents: files a folder for test-extra.jsonl")
    args = parser.parse_args()
    splits = (imbalanced(args.out, args.train) if args.kind == "imbalanced"
              else long_documents(args.out, args.per_class, args.max_chars,
                                  extra_test=args.extra_test))
    tokenizer = BertTokenizer.from_pretrained("all-minilm-l6-v2")
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (args.out / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        lengths = np.array([len(ids) for ids in tokenizer([r["text"] for r in rows])["input_ids"]])
        print(f"{split}: {len(rows)} rows {dict(sorted(Counter(r['label'] for r in rows).items()))}"
              f"; tokens median {int(np.median(lengths))}, over 128: {(lengths > 128).sum()}, "
              f"over 512: {(lengths > 512).sum()}")


if __name__ == "__main__":
    main()
