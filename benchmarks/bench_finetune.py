"""bertkit's fine-tuning against HuggingFace transformers' BertForSequenceClassification.

Both start from the same weights (all-MiniLM-L6-v2 plus one head initialised by bertkit with the
seed, copied into the HF model), see the same batches in the same order, and use the same
hyper-parameters: AdamW (no decay on LayerNorm/bias, eps 1e-6), 10% warm-up then linear decay,
gradient clipping at 1.0, the same autocast precision. bertkit trains through its own loop
(`bertkit.finetune.train_epoch` and `training.Trainer`); transformers through a plain PyTorch
loop. Epochs alternate in one process (bertkit, then HF, for each epoch of each seed) so both see
the same machine load. Dropout masks differ (each model draws its own), which is part of the
run-to-run noise that the seeds measure.

    .venv/bin/python benchmarks/bench_finetune.py --train-examples 3000 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bertkit.device import autocast, resolve_precision
from bertkit.finetune import (
    batches,
    evaluate_examples,
    load_model,
    tokenizer_for,
    train_epoch,
)
from bertkit.sources import fetch
from bertkit.tasks import build_task
from bertkit.tasks.datasets import resolve_data
from bertkit.training import (
    Trainer,
    build_optimizer,
    parameter_groups,
    seed_everything,
    warmup_linear_decay,
)

MODEL = "all-minilm-l6-v2"


def hf_copy(model):
    """A transformers BertForSequenceClassification holding exactly ``model``'s weights."""
    import transformers

    config = transformers.BertConfig.from_pretrained(fetch(MODEL, quiet=True),
                                                     num_labels=model.config.num_labels)
    hf = transformers.BertForSequenceClassification(config)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


def hf_epoch(model, optimizer, scheduler, task, features, batch_size, seed, device, precision):
    """The plain PyTorch loop users write around transformers."""
    model.train()
    for chunk in batches(features, batch_size, seed):
        batch = {k: v.to(device) for k, v in task.collate(chunk).items()}
        with autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def hf_accuracy(model, task, tokenizer, examples, label2id, device, precision) -> float:
    model.eval()
    features = task.encode(examples, tokenizer, label2id)
    correct = 0
    for chunk in batches(features, 64):
        batch = {k: v.to(device) for k, v in task.collate(chunk).items()}
        with autocast(device, precision):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-examples", type=int, default=3000,
                        help="fixed random subset of the rt-polarity training split")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="subset of the 1,275-snippet test split (default: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default="runs/bench/finetune.json")
    args = parser.parse_args()

    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    task = build_task("classification", max_length=128)
    tokenizer = tokenizer_for(MODEL)
    rng = np.random.default_rng(0)
    train = task.read(resolve_data("rt-polarity", "train"))
    train = [train[i] for i in rng.permutation(len(train))[: args.train_examples]]
    test = task.read(resolve_data("rt-polarity", "test"))
    if args.test_examples:
        test = test[: args.test_examples]
    labels = task.label_names(train)
    print(f"rt-polarity: {len(train)} train, {len(test)} test; {args.epochs} epoch(s), batch "
          f"{args.batch_size}, lr {args.lr}, {precision}, torch threads "
          f"{torch.get_num_threads()}")

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_everything(seed)
        ours = load_model(task, MODEL, labels, tokenizer.vocab_size).to(device)
        theirs = hf_copy(ours).to(device)
        features = task.encode(train, tokenizer, ours.config.label2id)
        steps = -(-len(features) // args.batch_size) * args.epochs
        warmup = round(0.1 * steps)

        our_optimizer = build_optimizer(ours, lr=args.lr, weight_decay=0.01)
        trainer = Trainer(ours, our_optimizer, warmup_linear_decay(our_optimizer, warmup, steps),
                          device=device, precision=precision, max_grad_norm=1.0)
        import transformers

        their_optimizer = torch.optim.AdamW(parameter_groups(theirs, 0.01), lr=args.lr,
                                            eps=1e-6)
        their_scheduler = transformers.get_linear_schedule_with_warmup(their_optimizer, warmup,
                                                                       steps)
        our_seconds, their_seconds = [], []
        for epoch in range(1, args.epochs + 1):
            order_seed = seed * 1000 + epoch  # the same batches, in the same order, for both
            torch.manual_seed(order_seed)
            start = time.perf_counter()
            train_epoch(trainer, task, features, args.batch_size, seed=order_seed,
                        progress=False)
            our_seconds.append(time.perf_counter() - start)
            torch.manual_seed(order_seed)
            start = time.perf_counter()
            hf_epoch(theirs, their_optimizer, their_scheduler, task, features, args.batch_size,
                     order_seed, device, precision)
            their_seconds.append(time.perf_counter() - start)
        our_metrics, _ = evaluate_examples(ours, task, tokenizer, test, precision=precision)
        their_accuracy = hf_accuracy(theirs, task, tokenizer, test, ours.config.label2id,
                                     device, precision)
        row = {"seed": seed, "bertkit_accuracy": our_metrics["accuracy"],
               "transformers_accuracy": their_accuracy,
               "bertkit_epoch_s": float(np.mean(our_seconds)),
               "transformers_epoch_s": float(np.mean(their_seconds))}
        row["speedup"] = row["transformers_epoch_s"] / row["bertkit_epoch_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        summary = write_results(Path(args.out), args, precision, rows)  # after every seed
    print("\nmean ± std over seeds")
    for key, (mean, std) in summary.items():
        print(f"  {key:22} {mean:.4f} ± {std:.4f}")
    print(f"written to {args.out}")


def write_results(out: Path, args, precision: str, rows: list[dict]) -> dict:
    def mean_std(key):
        values = [r[key] for r in rows]
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    summary = {key: mean_std(key) for key in rows[0] if key != "seed"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "precision": precision, "runs": rows,
                               "summary": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
