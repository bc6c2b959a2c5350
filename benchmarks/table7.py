"""The paper's Table 7 in shape, on real data with all-MiniLM-L6-v2: fine-tuning against the
feature-based approach with each layer strategy.

- wsj-pos (word accuracy) and wnut16 (entity F1), the built-in splits: fine-tuning (the README's
  flags) against the frozen encoder with every strategy of `bertkit.embeddings.STRATEGIES` and
  the learned weighted sum, each under the paper's two-layer BiLSTM tagger;
- rt-polarity (a fixed subset of the training split, the full validation and test splits):
  fine-tuning against a linear layer and an MLP on the mean-pooled last layer.

Every row is ``bertkit.finetune.finetune`` over ``--seeds`` (mean ± std of the test metric) with
its wall time: for the feature-based rows, computing the features once (seed 1, into a fresh
feature cache under ``--out``) plus the task model per seed (training and evaluation; later seeds
read the cached features); for fine-tuning, the whole run per seed. Finished rows are kept in
``--out`` and read back, so a stopped run continues; the table is printed as Markdown and saved
as ``table7.json``.

    .venv/bin/python benchmarks/table7.py --seeds 1,2,3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bertkit.finetune import RESULTS_FILE, SETTINGS_FILE, finetune

MODEL = "all-minilm-l6-v2"
STRATEGIES = ("embeddings", "second_to_last", "last", "sum_last_four", "concat_last_four",
              "sum_all", "weighted")
TAGGING = {  # data set: (metric shown, fine-tuning flags as in the README)
    "wsj-pos": ("accuracy", dict(epochs=6, batch_size=16, lr=1e-4)),
    "wnut16": ("f1", dict(epochs=4, batch_size=16, lr=1e-4)),
}


def rows(args) -> list[dict]:
    """Every row of the table: a name and the finetune() options that produce it."""
    planned = []
    hidden = dict(task_model="bilstm", task_hidden=args.lstm_hidden, epochs=args.lstm_epochs,
                  batch_size=32)
    for data, (metric, flags) in TAGGING.items():
        planned.append(dict(data=data, metric=metric, approach="fine-tuning", options=flags))
        for layers in STRATEGIES:
            planned.append(dict(data=data, metric=metric, approach="feature-based",
                                layers=layers, options=dict(feature_based=True, layers=layers,
                                                            **hidden)))
    subset = dict(max_train_examples=args.rt_train)
    planned.append(dict(data="rt-polarity", metric="accuracy", approach="fine-tuning",
                        options=dict(epochs=2, batch_size=16, lr=5e-5, **subset)))
    for body in ("linear", "mlp"):
        planned.append(dict(data="rt-polarity", metric="accuracy", approach="feature-based",
                            layers="last", options=dict(feature_based=True, task_model=body,
                                                        epochs=10, batch_size=32, **subset)))
    return planned


def run_row(row: dict, args) -> dict | None:
    """The row's results: read back if finished earlier, else run now; None while another
    process runs it (several may share ``--out``, e.g. one with ``--reverse``)."""
    name = row["approach"] + ("" if "layers" not in row else "-" + row["layers"]
                              + "-" + row["options"]["task_model"])
    out = args.out / row["data"] / name
    results = finished(out)
    if results is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = out.parent / f".{name}.lock"
        try:
            lock.open("x").write(str(os.getpid()))
        except FileExistsError:
            print(f"table7: {row['data']} {name} is running elsewhere ({lock})", flush=True)
            return None
        try:
            print(f"table7: {row['data']} {name}", flush=True)
            results = finetune(data=row["data"], model=MODEL, out=out, seeds=args.seeds,
                               progress=False, feature_cache=str(args.out / "feature-cache"),
                               resume=(out / SETTINGS_FILE).is_file(), **row["options"])
        finally:
            lock.unlink()
    return summarise(row, results)


def finished(out: Path) -> dict | None:
    path = out / RESULTS_FILE
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return results if results and results.get("stopped") is False else None


def summarise(row: dict, results: dict) -> dict:
    runs = results.get("runs", [results])
    values = [run["test"][row["metric"]] for run in runs]
    features = [run.get("feature_based", {}).get("feature_seconds", 0.0) for run in runs]
    per_seed = [run["seconds"] - f for run, f in zip(runs, features, strict=True)]
    info = runs[0].get("feature_based", {})
    return {**{k: v for k, v in row.items() if k != "options"},
            "task_model": info.get("task_model", {}).get("body", "—"),
            "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))
            if len(values) > 1 else 0.0, "values": values,
            "features_seconds": features[0], "per_seed_seconds": float(np.mean(per_seed)),
            "features_read": bool(info) and all(r["cache"] == "hit" for r in info["features"]),
            "baseline": runs[0].get("test_baselines", {}).get("most_frequent_tag_accuracy"),
            "layer_weights": info.get("layer_weights")}


def markdown(summaries: list[dict], args) -> str:
    lines = ["| data (test metric) | approach | layers | task model | test, mean ± std "
             f"({len(args.seeds)} seeds) | wall: features once + task model per seed |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        scale = 100 if s["metric"] in ("accuracy", "f1") else 1
        once = f"{s['features_seconds']:.0f} s"
        if s["features_read"]:  # another row of the same data and layers computed them
            owner = next((o for o in summaries if o["data"] == s["data"] and not
                          o["features_read"] and o.get("layers") == s.get("layers")), None)
            once = ("shared" if owner is None else
                    f"shared with {owner['task_model']} ({owner['features_seconds']:.0f} s)")
        wall = (f"{s['per_seed_seconds'] / 60:.1f} min per seed" if s["approach"] ==
                "fine-tuning" else f"{once} + {s['per_seed_seconds']:.0f} s")
        lines.append(f"| {s['data']} ({s['metric']}) | {s['approach']} | {s.get('layers', '—')}"
                     f" | {s['task_model'] if s['approach'] != 'fine-tuning' else '—'} | "
                     f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f} | {wall} |")
    baselines = {s["data"]: s["baseline"] for s in summaries
                 if s["baseline"] and s["metric"] == "accuracy"}
    notes = [f"{data}: most-frequent-tag word accuracy {100 * b:.1f}"
             for data, b in baselines.items()]
    weights = [f"{s['data']} weighted, seed 1: {s['layer_weights']}" for s in summaries
               if s.get("layer_weights")]
    return "\n".join(lines + [""] + notes + weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/table7"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--lstm-hidden", type=int, default=128,
                        help="BiLSTM size per direction (the paper's: 768)")
    parser.add_argument("--lstm-epochs", type=int, default=8)
    parser.add_argument("--rt-train", type=int, default=2000,
                        help="rt-polarity training snippets (a fixed random subset)")
    parser.add_argument("--only", default=None, help="comma-separated data sets to run")
    parser.add_argument("--reverse", action="store_true",
                        help="run the rows last first (a second process sharing --out)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    wanted = args.only.split(",") if args.only else None
    planned = [row for row in rows(args) if wanted is None or row["data"] in wanted]
    done = [run_row(row, args) for row in (planned[::-1] if args.reverse else planned)]
    summaries = [s for s in (done[::-1] if args.reverse else done) if s is not None]
    table = markdown(summaries, args)
    (args.out / "table7.json").write_text(json.dumps(summaries, indent=2) + "\n",
                                          encoding="utf-8")
    print(table)
    print(f"\n(torch threads {torch.get_num_threads()}; this invocation "
          f"{(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
