"""bertkit's fine-tuning against `transformers.Trainer`, what a user copies from any tutorial.

All start from the same weights (all-MiniLM-L6-v2 plus one head initialised by bertkit with the
seed, copied into transformers' BertForSequenceClassification), train on the same examples
(rt-polarity, the same tokenized features) with the same hyper-parameters: fused AdamW (no decay
on LayerNorm/bias, decay 0.01, eps 1e-6), 10% warm-up then linear decay, gradient clipping at
1.0, the same precision (``--precision auto``: bf16 autocast where the CPU has native bf16, else
fp32; the Trainer gets ``bf16=True`` for bf16), and are evaluated by the same code on the whole
test split. The systems, one after the other for each seed, in one run, each in a fresh
process (as users run them; bertkit's training sets process-wide malloc options):

- ``bertkit``: its own loop (`bertkit.finetune.train_epoch` and `training.Trainer`), batches of
  similar lengths in a random order, padded to a multiple of 8 tokens in bf16, to their longest
  in fp32 (`bertkit.tasks.base.length_multiple`);
- ``trainer``: ``transformers.Trainer(model, TrainingArguments(...), train_dataset,
  DataCollatorWithPadding(tokenizer))`` with the tutorial's defaults but for the settings above
  (random batches, padded to their longest; logging, saving and evaluation off,
  ``use_cpu=True``);
- ``loop`` (opt-in, ``--references trainer,loop``): the plain PyTorch loop around transformers'
  model, on bertkit's batches in bertkit's order (the model's speed alone).

Printed per seed and as mean ± std over the seeds: test accuracy, epoch seconds, the speed-up
over each reference, and MFU (3x forward matmul FLOPs of the real tokens, the last layer's
only at [CLS], which is all the classifier reads, `benchmarks/peak.py`; against the matmul peak
of the precision measured in this run). Dropout masks differ (each model
draws its own), part of the run-to-run noise the seeds measure. Issue 17's bar: an epoch >= 2x
the Trainer's at the same test accuracy (means within one standard deviation).

    .venv/bin/python benchmarks/bench_finetune.py --train-examples 3000 --seeds 1,2,3
    .venv/bin/python benchmarks/bench_finetune.py --references trainer,loop --epochs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from peak import measure_peaks, training_flops

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
from bertkit.tasks.base import length_multiple
from bertkit.tasks.datasets import resolve_data
from bertkit.training import Trainer, build_optimizer, seed_everything, warmup_linear_decay

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
        batch = task.collate(chunk, length_multiple(precision))
        batch = {k: v.to(device) for k, v in batch.items()}
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
        batch = task.collate(chunk, length_multiple(precision))
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, precision):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(features)


def trainer_run(model, task, features, args, seed, warmup, precision, scratch) -> float:
    """transformers.Trainer as the tutorials write it; returns its seconds per epoch."""
    import transformers

    settings = transformers.TrainingArguments(
        output_dir=str(scratch), num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, weight_decay=0.01,
        adam_epsilon=1e-6, warmup_steps=warmup, lr_scheduler_type="linear", max_grad_norm=1.0,
        bf16=precision == "bf16", use_cpu=True, seed=seed, save_strategy="no",
        eval_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        remove_unused_columns=False)  # the features hold only model inputs
    tutorial_features = [{k: v for k, v in f.items() if k != "example"} for f in features]
    collator = transformers.DataCollatorWithPadding(
        transformers.AutoTokenizer.from_pretrained(fetch(MODEL, quiet=True)))
    trainer = transformers.Trainer(model=model, args=settings, train_dataset=tutorial_features,
                                   data_collator=collator)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # its final log line
    start = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - start) / args.epochs


def parse_args():
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
    parser.add_argument("--references", default="trainer",
                        help="trainer (transformers.Trainer), loop (a plain loop around "
                        "transformers' model on bertkit's batches), or both: trainer,loop")
    parser.add_argument("--out", default="runs/bench/finetune.json")
    args = parser.parse_args()
    references = args.references.split(",")
    if not references or set(references) - {"trainer", "loop"}:
        parser.error("--references: trainer, loop or trainer,loop")
    return args, references


def rt_polarity(args, task):
    """The fixed training subset and the test examples."""
    rng = np.random.default_rng(0)
    train = task.read(resolve_data("rt-polarity", "train"))
    train = [train[i] for i in rng.permutation(len(train))[: args.train_examples]]
    test = task.read(resolve_data("rt-polarity", "test"))
    return train, test[: args.test_examples] if args.test_examples else test


def run_system(name: str, seed: int, args, precision: str) -> dict:
    """One system's epochs from the seed's shared start: epoch seconds, test accuracy, FLOPs."""
    device = torch.device("cpu")
    task = build_task("classification", max_length=128)
    tokenizer = tokenizer_for(MODEL)
    train, test = rt_polarity(args, task)
    seed_everything(seed)
    ours = load_model(task, MODEL, task.label_names(train), tokenizer.vocab_size).to(device)
    features = task.encode(train, tokenizer, ours.config.label2id)
    steps = -(-len(features) // args.batch_size) * args.epochs
    warmup = round(0.1 * steps)
    flops = training_flops(ours.config, [len(f["input_ids"]) for f in features],
                           pooled=len(features), read=[1] * len(features))  # [CLS] alone
    if name == "trainer":
        theirs = hf_copy(ours).to(device)
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as scratch:
            seconds = trainer_run(theirs, task, features, args, seed, warmup, precision, scratch)
        accuracy = hf_accuracy(theirs, task, tokenizer, test, ours.config.label2id, device,
                               precision)
        return {"epoch_s": seconds, "accuracy": accuracy, "flops": flops}
    if name == "loop":
        import transformers

        model = hf_copy(ours).to(device)
        optimizer = build_optimizer(model, lr=args.lr, weight_decay=0.01)
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, steps)

        def epoch(order_seed):  # bertkit's batches, in bertkit's order
            hf_epoch(model, optimizer, scheduler, task, features, args.batch_size, order_seed,
                     device, precision)
    else:
        model = ours
        optimizer = build_optimizer(model, lr=args.lr, weight_decay=0.01)
        trainer = Trainer(model, optimizer, warmup_linear_decay(optimizer, warmup, steps),
                          device=device, precision=precision, max_grad_norm=1.0)

        def epoch(order_seed):
            train_epoch(trainer, task, features, args.batch_size, seed=order_seed,
                        progress=False)
    seconds = []
    for number in range(1, args.epochs + 1):
        order_seed = seed * 1000 + number
        torch.manual_seed(order_seed)
        start = time.perf_counter()
        epoch(order_seed)
        seconds.append(time.perf_counter() - start)
    if name == "loop":
        accuracy = hf_accuracy(model, task, tokenizer, test, ours.config.label2id, device,
                               precision)
    else:
        accuracy = evaluate_examples(model, task, tokenizer, test, precision=precision)[0][
            "accuracy"]
    return {"epoch_s": float(np.mean(seconds)), "accuracy": accuracy, "flops": flops}


def in_a_fresh_process(*run):
    """``run_system`` in a new interpreter: bertkit's training sets process-wide malloc options
    (`bertkit.device.keep_freed_memory`), which would otherwise reach the references too."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_system, *run).result()


def main() -> None:
    args, references = parse_args()
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)
    task = build_task("classification", max_length=128)
    train, test = rt_polarity(args, task)
    print(f"rt-polarity: {len(train)} train, {len(test)} test; {args.epochs} epoch(s), batch "
          f"{args.batch_size}, lr {args.lr}, {precision}, torch threads "
          f"{torch.get_num_threads()}; references: {', '.join(references)}; each system in a "
          "fresh process", flush=True)
    peaks = measure_peaks(device, precisions=[precision])
    print(peaks.line(), flush=True)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = {"seed": seed}
        for name in ("bertkit", *references):
            result = in_a_fresh_process(name, seed, args, precision)
            row[f"{name}_accuracy"], row[f"{name}_epoch_s"] = result["accuracy"], result["epoch_s"]
            row[f"{name}_mfu"] = peaks.mfu(result["flops"] / result["epoch_s"], precision)
        for name in references:
            row[f"speedup_vs_{name}"] = row[f"{name}_epoch_s"] / row["bertkit_epoch_s"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        summary = write_results(Path(args.out), args, precision, peaks, rows)  # after each seed
    print(f"\nmean ± std over {len(rows)} seed(s), MFU against the {precision} peak "
          f"({peaks[precision] / 1e9:,.1f} GFLOP/s)")
    for key, (mean, std) in summary.items():
        print(f"  {key:22} {mean:.4f} ± {std:.4f}")
    if "trainer" in references:
        (ours_mean, ours_std), (theirs_mean, theirs_std) = (summary["bertkit_accuracy"],
                                                            summary["trainer_accuracy"])
        speedup = summary["speedup_vs_trainer"][0]
        same = abs(ours_mean - theirs_mean) <= max(ours_std, theirs_std)
        side = "above" if ours_mean > theirs_mean else "below"
        verdict = ("NOT met: under 2x" if speedup < 2 else "met" if same else
                   f"NOT met: bertkit's accuracy {side} the Trainer's by more than one std")
        print(f"\nepoch {speedup:.2f}x transformers.Trainer, accuracy {ours_mean:.4f} vs "
              f"{theirs_mean:.4f} (goal >= 2x, means within one std): {verdict}")
    print(f"written to {args.out}")


def write_results(out: Path, args, precision: str, peaks, rows: list[dict]) -> dict:
    def mean_std(key):
        values = [r[key] for r in rows]
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    summary = {key: mean_std(key) for key in rows[0] if key != "seed"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "precision": precision,
                               "peaks": peaks.rates, "threads": peaks.threads, "runs": rows,
                               "summary": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
