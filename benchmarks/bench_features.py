"""What an epoch costs once the features are cached, against an epoch of fine-tuning.

The same encoder (all-MiniLM-L6-v2), the same training data, one process: fine-tuning (every
weight trained) against the feature-based approach (`bertkit finetune --feature-based`), whose
first run computes the features of every split once into a fresh cache under ``--out`` and
whose second run (other seed) reads them back. Timed per epoch of training (evaluation after
each epoch is left out of ``epoch_seconds``, as the run's own log records it):

- rt-polarity (a fixed subset of ``--train-examples`` snippets): a linear layer on the
  mean-pooled last layer;
- wsj-pos (its 800 training sentences): the paper's two-layer BiLSTM (``--lstm-hidden`` per
  direction) on the sum of all layers.

    .venv/bin/python benchmarks/bench_features.py --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bertkit.finetune import finetune

MODEL = "all-minilm-l6-v2"


def cases(args) -> list[tuple[str, dict, dict]]:
    """(data, fine-tuning options, feature-based options) of each comparison."""
    subset = dict(max_train_examples=args.train_examples)
    return [
        ("rt-polarity", dict(lr=5e-5, batch_size=16, **subset),
         dict(task_model="linear", layers="last", batch_size=32, **subset)),
        ("wsj-pos", dict(lr=1e-4, batch_size=16),
         dict(task_model="bilstm", layers="sum_all", task_hidden=args.lstm_hidden,
              batch_size=32)),
    ]


def compare(data: str, fine: dict, features: dict, args) -> dict:
    out = args.out / data
    common = dict(data=data, model=MODEL, progress=False, overwrite=True,
                  max_eval_examples=args.eval_examples)
    tuned = finetune(out=out / "fine-tuning", epochs=args.fine_tuning_epochs, **common, **fine)
    cached = dict(feature_based=True, epochs=args.feature_epochs,
                  feature_cache=str(out / "feature-cache"), **common, **features)
    first = finetune(out=out / "features-first", seeds=[1], **cached)
    again = finetune(out=out / "features-again", seeds=[2], **cached)
    fine_epoch = float(np.mean(tuned["epoch_seconds"]))
    feature_epoch = float(np.mean(first["epoch_seconds"] + again["epoch_seconds"]))
    return {"data": data, "train_examples": tuned["train_examples"],
            "task_model": features["task_model"], "layers": features["layers"],
            "fine_tuning_epoch_seconds": fine_epoch, "feature_epoch_seconds": feature_epoch,
            "times_cheaper": fine_epoch / feature_epoch,
            "features_once_seconds": first["feature_based"]["feature_seconds"],
            "features_from_cache_seconds": again["feature_based"]["feature_seconds"],
            "cache": [r["cache"] for r in again["feature_based"]["features"]],
            "fine_tuning_test": tuned["test"], "feature_test": first["test"]}


def report(rows: list[dict]) -> str:
    lines = ["| data (training examples) | task model | epoch of fine-tuning | epoch of the task "
             "model, features cached | × cheaper | features once (all splits) | read back |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} ({r['train_examples']}) | {r['task_model']} on "
                     f"{r['layers']} | {r['fine_tuning_epoch_seconds']:.1f} s | "
                     f"{r['feature_epoch_seconds']:.2f} s | {r['times_cheaper']:.0f} | "
                     f"{r['features_once_seconds']:.1f} s | "
                     f"{r['features_from_cache_seconds']:.2f} s ({', '.join(r['cache'])}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-features"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--eval-examples", type=int, default=300,
                        help="validation and test examples (a fixed subset)")
    parser.add_argument("--fine-tuning-epochs", type=int, default=1)
    parser.add_argument("--feature-epochs", type=int, default=5)
    parser.add_argument("--lstm-hidden", type=int, default=128)
    parser.add_argument("--only", default=None, help="rt-polarity or wsj-pos")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [compare(data, fine, features, args) for data, fine, features in cases(args)
            if args.only in (None, data)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_features.json").write_text(json.dumps(rows, indent=2) + "\n",
                                                  encoding="utf-8")
    print(report(rows))
    print(f"\n(torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
