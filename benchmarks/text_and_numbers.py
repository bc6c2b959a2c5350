"""Text and numbers on real data: VADER's movie-review snippets with one rater's own score.

Each of VADER's 10,605 movie snippets (Hutto & Gilbert 2014, in the pinned vader-movies source)
was rated -4..+4 by several people; the archive keeps every rating. This script builds a
regression task from it: the label is the mean of the other raters, and ``first_rater`` (the
first rater's score, a real number of the data) goes beside the text. Duplicate texts are
dropped; train/validation/test is 80/10/10 with seed 0, then a fixed ``--train-examples``
subset of the training split is used. Five models, one seed each, test Pearson / Spearman /
MSE (finished runs in ``--out`` are read back: delete one's folder to run it again):

- the number alone (no model: first_rater's correlation with the label);
- fine-tuning on the text; fine-tuning with ``--feature-fields first_rater`` (a head over
  [pooler_output, number]); fine-tuning with the number written into the text
  ("first rater: 2. <text>");
- feature-based (linear on the mean-pooled last layer) on the text, and with the number.

    .venv/bin/python benchmarks/text_and_numbers.py --threads 1
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import torch

from bertkit.finetune import finetune
from bertkit.sources import fetch
from bertkit.tasks.classification import regression_metrics

MODEL = "all-minilm-l6-v2"
FOLDER = "hutto_ICWSM_2014/"


def vader_rows() -> list[dict]:
    """text, first_rater and the mean of the other raters, for every distinct snippet."""
    with tarfile.open(fetch("vader-movies", quiet=True)) as archive:
        def lines(name):
            text = archive.extractfile(FOLDER + name).read().decode("utf-8")
            return [line.split("\t") for line in io.StringIO(text, newline=None)
                    if line.strip()]
        texts = {parts[0]: parts[2].strip() for parts in lines(
            "movieReviewSnippets_GroundTruth.txt") if len(parts) == 3}
        ratings = {parts[0]: ast.literal_eval(parts[3]) for parts in lines(
            "movieReviewSnippets_anonDataRatings.txt") if len(parts) == 4}
    rows, seen = [], set()
    for key, text in texts.items():
        text = " ".join(text.split())
        scores = ratings.get(key)
        if text and text not in seen and scores and len(scores) > 1:
            seen.add(text)
            rows.append({"text": text, "first_rater": scores[0],
                         "label": round(float(np.mean(scores[1:])), 6)})
    return rows


def write_splits(folder: Path, train_examples: int) -> dict[str, Path]:
    rows = vader_rows()
    random.Random(0).shuffle(rows)
    n_train, n_eval = round(0.8 * len(rows)), round(0.1 * len(rows))
    parts = {"train": rows[:n_train][:train_examples],
             "validation": rows[n_train:n_train + n_eval], "test": rows[n_train + n_eval:]}
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, part in parts.items():
        for name, rewrite in (("", False), ("-in-text", True)):
            path = folder / f"{split}{name}.csv"
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["text", "first_rater", "label"])
                writer.writeheader()
                for row in part:
                    text = f"first rater: {row['first_rater']}. {row['text']}" if rewrite \
                        else row["text"]
                    writer.writerow({**row, "text": text})
            paths[split + name] = path
    return paths


def finished(out: Path) -> dict | None:
    """The results of a run that ended before (delete its folder to run it again)."""
    path = out / "results.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return results if results and results.get("stopped") is False else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/text-and-numbers"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = write_splits(args.out / "data", args.train_examples)
    test = list(csv.DictReader(open(paths["test"], encoding="utf-8")))
    rows = [("the number alone (no model)", regression_metrics(
        [float(r["label"]) for r in test], [float(r["first_rater"]) for r in test]), None)]
    fine = dict(epochs=args.epochs, batch_size=16, lr=5e-5)
    features = dict(feature_based=True, epochs=10, batch_size=32)
    runs = [("fine-tuning, text", "", fine), ("fine-tuning, text + first_rater", "",
                                              {**fine, "feature_fields": ["first_rater"]}),
            ("fine-tuning, number written into the text", "-in-text", fine),
            ("feature-based linear, text", "", features),
            ("feature-based linear, text + first_rater", "",
             {**features, "feature_fields": ["first_rater"]})]
    for name, suffix, options in runs:
        out = args.out / name.replace(" ", "-").replace(",", "").replace("+", "and")
        result = finished(out) or finetune(
            "regression", MODEL, paths["train" + suffix], paths["validation" + suffix],
            paths["test" + suffix], out, progress=False, overwrite=True, **options)
        rows.append((name, result["test"], result["seconds"]))
    print(f"vader-movies with one rater's score: {args.train_examples} training snippets, "
          f"test {len(test)}\n")
    print("| model | test Pearson | Spearman | MSE | minutes |\n|---|---|---|---|---|")
    for name, metrics, seconds in rows:
        minutes = "—" if seconds is None else f"{seconds / 60:.1f}"
        print(f"| {name} | {metrics['pearson']:.3f} | {metrics['spearman']:.3f} | "
              f"{metrics['mse']:.3f} | {minutes} |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
