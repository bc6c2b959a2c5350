"""Fine-tuning, evaluation and prediction for every task family (``bertkit.tasks``).

The paper's recipe: a pre-trained encoder plus one fresh output layer, every weight trained with
AdamW, 10% linear warm-up then linear decay, a few epochs at a small learning rate. Each epoch
ends with an evaluation on the validation set; the best checkpoint by the task's metric is kept
in ``OUT/best`` (model, tokenizer and ``task.json``, everything ``evaluate`` and ``predict``
need), beside ``metrics.jsonl``, ``curves.png`` and ``results.json``. Several seeds run one after
another into ``OUT/seed-N`` and are summarised as mean ± standard deviation.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import PRESETS, BertConfig
from .device import autocast, choose_device, resolve_precision
from .report import plot_metrics
from .sources import resolve_pretrained
from .tasks import Task, build_task
from .tasks.datasets import resolve_data
from .tokenizer import BertTokenizer
from .training import (
    GracefulStop,
    MetricsLog,
    Trainer,
    build_optimizer,
    seed_everything,
    warmup_linear_decay,
)

logger = logging.getLogger("bertkit")

TASK_FILE = "task.json"
DEFAULT_VOCAB = "all-minilm-l6-v2"  # the bert-base-uncased vocabulary, for presets
SUBSET_SEED = 0  # the same training subset for every seed: seeds vary only the training itself


# --------------------------------------------------------------------------------------------
# Models and tokenizers


def checkpoint_dir(model: str | Path) -> Path:
    """The checkpoint folder of ``model``: a folder, a fetchable name, or a ``bertkit pretrain``
    run folder (whose final model is in ``model/``)."""
    directory = resolve_pretrained(model)
    final = directory / "model"
    if not (directory / "config.json").is_file() and (final / "config.json").is_file():
        return final
    return directory


def load_tokenizer(model: str | Path, tokenizer: str | Path | None = None) -> BertTokenizer:
    """The tokenizer given, else the checkpoint's own, else (for a preset) bert-base's vocab."""
    if tokenizer is not None:
        return BertTokenizer.from_pretrained(checkpoint_dir(tokenizer))
    if str(model) in PRESETS:
        logger.warning("a %s model from random initialisation uses the %s vocabulary; pass "
                       "--tokenizer to choose another.", model, DEFAULT_VOCAB)
        return BertTokenizer.from_pretrained(DEFAULT_VOCAB)
    return BertTokenizer.from_pretrained(checkpoint_dir(model))


def load_model(task: Task, model: str | Path, label_names: list[str], vocab_size: int,
               reinit_head: bool = False, random_init: bool = False,
               dropout: float | None = None) -> nn.Module:
    """``task``'s model from a checkpoint folder (or fetchable name), or a preset at random init.

    A checkpoint that already has this task's head keeps it when its labels are the training
    data's (in its own order); a head for other labels is an error unless ``reinit_head``.
    ``random_init`` builds the checkpoint's architecture (its config.json) with fresh weights:
    the baseline that shows what pre-training brings. ``dropout`` replaces the checkpoint's
    hidden and attention dropout (one pre-trained without dropout still wants it here).
    """
    overrides: dict = {}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if task.has_labels:
        overrides["id2label"] = dict(enumerate(label_names))
    if task.name == "regression":
        overrides["problem_type"] = "regression"
    if str(model) in PRESETS:
        config = BertConfig.from_preset(str(model), vocab_size=vocab_size)
        config = BertConfig.from_dict({**config.to_dict(), **overrides})
        return task.model_class(config)

    directory = checkpoint_dir(model)
    saved = BertConfig.from_json_file(directory / "config.json")
    if random_init:
        return task.model_class(BertConfig.from_dict({**saved.to_dict(), **overrides}))
    if vocab_size > saved.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} entries but {directory} has "
                         f"vocab_size {saved.vocab_size}; use the checkpoint's own vocab.txt.")
    has_head = task.model_class.__name__ in (saved.architectures or [])
    if task.has_labels and has_head and not reinit_head:
        saved_labels = list(saved.id2label.values())
        if sorted(saved_labels) == sorted(label_names):
            overrides["id2label"] = saved.id2label  # the head's own order
        else:
            raise ValueError(
                f"{directory} has a {task.model_class.__name__} head for labels "
                f"{saved_labels}, but the training data has {label_names}. Pass --reinit-head "
                "(reinit_head=True) to start a fresh head for these labels.")
    loaded = task.model_class.from_pretrained(directory, ignore_mismatched_sizes=reinit_head,
                                              **overrides)
    if reinit_head and has_head:
        reset_head(loaded)
    return loaded


def reset_head(model: nn.Module) -> None:
    """Fresh output-layer weights, as the paper's initialisation would give them."""
    std = model.config.initializer_range
    for name in ("classifier", "qa_outputs"):
        layer = getattr(model, name, None)
        if layer is not None:
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)


def load_finetuned(directory: str | Path, device=None) -> tuple[Task, nn.Module, BertTokenizer]:
    """A model saved by ``finetune`` (its ``best`` folder, or the run folder holding one)."""
    directory = Path(directory)
    if not (directory / TASK_FILE).is_file() and (directory / "best" / TASK_FILE).is_file():
        directory = directory / "best"
    if not (directory / TASK_FILE).is_file():
        raise FileNotFoundError(f"{directory} has no {TASK_FILE}: give the folder that "
                                "`bertkit finetune` wrote (OUT or OUT/best).")
    options = json.loads((directory / TASK_FILE).read_text(encoding="utf-8"))
    task = build_task(options.pop("task"), **options)
    model = task.model_class.from_pretrained(directory).to(choose_device(device)).eval()
    task.use_labels(model.config.id2label)
    return task, model, BertTokenizer.from_pretrained(directory)


def save_finetuned(directory: Path, task: Task, model: nn.Module, tokenizer) -> None:
    """Model, tokenizer and task options, written beside and renamed into place."""
    staging = directory.with_name(f".{directory.name}.tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / TASK_FILE).write_text(json.dumps(task.options(), indent=2) + "\n",
                                     encoding="utf-8")
    if directory.exists():
        for old in directory.iterdir():
            old.unlink()
        directory.rmdir()
    staging.rename(directory)


# --------------------------------------------------------------------------------------------
# Running the model over features


BUCKET_BATCHES = 50  # training batches are formed from this many batches' worth of features


def batches(features: list[dict], batch_size: int, seed: int | None = None):
    """Features in batches: in order, or (with ``seed``) in a random order of similar lengths.

    Training shuffles, sorts each window of ``BUCKET_BATCHES`` batches by length, cuts it into
    batches and shuffles the batches: every epoch sees a new random order, but a batch pads its
    features to nearly their own length instead of the longest of a random sample.
    """
    order = list(range(len(features)))
    if seed is None:
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        rng = random.Random(seed)
        rng.shuffle(order)
        window = batch_size * BUCKET_BATCHES
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w:w + window], key=lambda i: _length(features[i]))]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(chunks)
    for chunk in chunks:
        yield [features[j] for j in chunk]


@torch.no_grad()
def run_model(model, task: Task, features: list[dict], batch_size: int = 64, device=None,
              precision: str = "fp32", progress: bool = False) -> list[dict]:
    """The task's outputs (numpy, per feature) in the features' order.

    Features are batched by length, so little compute goes to padding.
    """
    device = device or next(model.parameters()).device
    model.eval()
    order = sorted(range(len(features)), key=lambda i: _length(features[i]))
    outputs: list[dict | None] = [None] * len(features)
    for start in tqdm(range(0, len(order), batch_size), desc="evaluating", leave=False,
                      disable=not progress, mininterval=2):
        chunk = order[start:start + batch_size]
        batch = task.collate([features[i] for i in chunk])
        inputs = {k: batch[k].to(device) for k in ("input_ids", "token_type_ids",
                                                   "attention_mask")}
        with autocast(device, precision):
            out = model(**inputs)
        values = {k: out[k].float().cpu().numpy() for k in task.model_outputs()}
        for row, i in enumerate(chunk):
            outputs[i] = {k: v[row] for k, v in values.items()}
    return outputs


def _length(feature: dict) -> int:
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


def evaluate_examples(model, task: Task, tokenizer, examples: list, *, batch_size=64,
                      precision="fp32", progress=False) -> tuple[dict, list]:
    """(metrics, predictions) of ``model`` on labelled ``examples``."""
    label2id = model.config.label2id if task.has_labels else None
    features = task.encode(examples, tokenizer, label2id)
    outputs = run_model(model, task, features, batch_size, precision=precision,
                        progress=progress)
    predictions = task.decode(examples, features, outputs, model.config.id2label)
    return task.score(examples, predictions), predictions


# --------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(task: str, model: str | Path, train: str | Path, validation: str | Path | None = None,
             test: str | Path | None = None, out: str | Path = "runs/finetune", *,
             seeds: list[int] | int = 1, tokenizer: str | Path | None = None, lr: float = 3e-5,
             batch_size: int = 32, epochs: int = 3, warmup: float = 0.1,
             weight_decay: float = 0.01, max_train_examples: int | None = None,
             max_eval_examples: int | None = None, reinit_head: bool = False,
             random_init: bool = False, dropout: float | None = None,
             device: str | None = None, precision: str = "auto",
             eval_batch_size: int = 64, log_every: int = 20, progress: bool = True,
             **task_options) -> dict:
    """Fine-tune ``model`` on ``task`` and return the results (also in ``OUT/results.json``).

    ``train``/``validation``/``test`` are files or built-in data set names (``rt-polarity``,
    ``snli:test`` ...). ``model`` is a checkpoint folder, a fetchable model name or a size preset
    (random initialisation; ``random_init`` gives a checkpoint's architecture fresh weights).
    ``task_options`` go to the task family (``max_length``,
    ``text_field``, ``doc_stride`` ...). With several ``seeds`` each run goes to ``OUT/seed-N``
    and the results hold every run plus the mean and standard deviation of each metric.
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    out = Path(out)
    common = dict(task=task, model=model, train=train, validation=validation, test=test,
                  tokenizer=tokenizer, lr=lr, batch_size=batch_size, epochs=epochs,
                  warmup=warmup, weight_decay=weight_decay,
                  max_train_examples=max_train_examples, max_eval_examples=max_eval_examples,
                  reinit_head=reinit_head, random_init=random_init, dropout=dropout,
                  device=device,
                  precision=precision,
                  eval_batch_size=eval_batch_size, log_every=log_every, progress=progress,
                  **task_options)
    if len(seeds) == 1:
        return _finetune_once(out=out, seed=seeds[0], **common)
    runs = [_finetune_once(out=out / f"seed-{seed}", seed=seed, **common) for seed in seeds]
    summary = {"seeds": seeds, "runs": runs, "summary": summarise(runs)}
    _write_json(out / "results.json", summary)
    return summary


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of every metric of every split across runs."""
    summary = {}
    for split in ("validation", "test"):
        metrics = [run[split] for run in runs if run.get(split)]
        if metrics:
            summary[split] = {
                name: {"mean": float(np.mean([m[name] for m in metrics])),
                       "std": float(np.std([m[name] for m in metrics], ddof=1))
                       if len(metrics) > 1 else 0.0}
                for name in metrics[0]}
    return summary


def _read(task: Task, spec, split: str, limit: int | None = None) -> list:
    examples = task.read(resolve_data(spec, split))
    if limit is not None and limit < len(examples):
        examples = random.Random(SUBSET_SEED).sample(examples, limit)
    return examples


def _finetune_once(*, task, model, train, validation, test, out: Path, seed: int, tokenizer,
                   lr, batch_size, epochs, warmup, weight_decay, max_train_examples,
                   max_eval_examples, reinit_head, random_init, dropout, device, precision,
                   eval_batch_size,
                   log_every, progress, **task_options) -> dict:
    started = time.time()
    task_name = task
    task = build_task(task_name, **task_options)
    device = choose_device(device)
    precision = resolve_precision(precision, device)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    log = MetricsLog(log_path)

    tok = load_tokenizer(model, tokenizer)
    train_examples = _read(task, train, "train", max_train_examples)
    task.prepare(train_examples)
    validation_examples = (_read(task, validation, "validation", max_eval_examples)
                           if validation is not None else None)
    seed_everything(seed)  # the new head's initial weights depend on it
    net = load_model(task, model, task.label_names(train_examples), tok.vocab_size, reinit_head,
                     random_init, dropout)
    net.to(device)
    task.use_labels(net.config.id2label)
    label2id = net.config.label2id if task.has_labels else None
    if label2id is not None:
        task.check_labels(train_examples, label2id)
        if validation_examples:
            task.check_labels(validation_examples, label2id)
    features = task.encode(train_examples, tok, label2id)

    steps_per_epoch = math.ceil(len(features) / batch_size)
    total_steps = steps_per_epoch * epochs
    optimizer = build_optimizer(net, lr=lr, weight_decay=weight_decay)
    scheduler = warmup_linear_decay(optimizer, round(warmup * total_steps), total_steps)
    trainer = Trainer(net, optimizer, scheduler, device=device, precision=precision,
                      max_grad_norm=1.0)
    _print(f"fine-tuning {model} on {task.name}: {len(train_examples)} examples "
           f"({len(features)} features), {epochs} epochs x {steps_per_epoch} steps, batch "
           f"{batch_size}, lr {lr}, seed {seed}, {device} {precision} -> {out}")

    best_dir, best_score, best_validation, epoch_seconds, step = out / "best", None, None, [], 0
    history = []
    with GracefulStop() as stop:
        for epoch in range(1, epochs + 1):
            epoch_start = time.time()
            step = train_epoch(trainer, task, features, batch_size, seed=seed * 1000 + epoch,
                               log=log, step=step, epoch=epoch, log_every=log_every,
                               progress=progress, stop=stop)
            epoch_seconds.append(round(time.time() - epoch_start, 2))
            record = {"epoch": epoch, "step": step, "epoch_seconds": epoch_seconds[-1]}
            if validation_examples:
                metrics, _ = evaluate_examples(net, task, tok, validation_examples,
                                               batch_size=eval_batch_size, precision=precision)
                record.update({f"validation_{k}": v for k, v in metrics.items()})
            log.write(**record)
            history.append(record)
            score = record.get(f"validation_{task.metric}", epoch)
            _print(f"epoch {epoch}: {_format(record)}")
            if best_score is None or score > best_score:
                best_score, best_validation = score, metrics if validation_examples else None
                save_finetuned(best_dir, task, net, tok)
            if stop.requested:
                _print("stopped early on request; the best checkpoint so far is kept.")
                break

    net = task.model_class.from_pretrained(best_dir).to(device)
    results = {"task": task.name, "model": str(model), "random_init": random_init or
               str(model) in PRESETS, "seed": seed, "out": str(out),
               "train": str(train), "train_examples": len(train_examples), "epochs": epochs,
               "lr": lr, "batch_size": batch_size, "precision": precision,
               "options": task.options(), "epoch_seconds": epoch_seconds,
               "best_epoch": max(history, key=lambda r: r.get(f"validation_{task.metric}",
                                                             r["epoch"]))["epoch"],
               "history": history}
    for split, spec, examples in (("validation", validation, validation_examples),
                                  ("test", test, None)):
        if spec is None:
            continue
        if examples is None:
            examples = _read(task, spec, split, max_eval_examples)
            if label2id is not None:
                task.check_labels(examples, label2id)
        if split == "validation" and best_validation is not None:
            metrics = best_validation  # the best checkpoint was scored when it was saved
        else:
            metrics, _ = evaluate_examples(net, task, tok, examples,
                                           batch_size=eval_batch_size, precision=precision)
        results[split] = metrics
        baselines = task.baselines(train_examples, examples)
        if baselines:
            results[f"{split}_baselines"] = baselines
        _print(f"best checkpoint on {split} ({len(examples)} examples): {_format(metrics)}"
               + (f"; baselines {_format(baselines)}" if baselines else ""))
    results["seconds"] = round(time.time() - started, 1)
    _write_json(out / "results.json", results)
    panels = {"training loss": ["loss"]}
    if validation_examples:
        panels["validation"] = [f"validation_{m}" for m in task.metrics
                                if m not in ("mse",)]
    plot_metrics(log_path, out / "curves.png", panels,
                 title=f"{task.name}: {model} (seed {seed})")
    return results


def train_epoch(trainer: Trainer, task: Task, features: list[dict], batch_size: int, *,
                seed: int, log: MetricsLog | None = None, step: int = 0, epoch: int = 1,
                log_every: int = 20, progress: bool = True, stop: GracefulStop | None = None
                ) -> int:
    """One pass over ``features`` in an order fixed by ``seed``; returns the global step."""
    n_batches = math.ceil(len(features) / batch_size)
    bar = tqdm(batches(features, batch_size, seed), total=n_batches, desc=f"epoch {epoch}",
               disable=not progress, mininterval=2, leave=False)
    recent = []
    for chunk in bar:
        _, loss = trainer.step([task.collate(chunk)])
        step += 1
        recent.append(loss)
        if step % log_every == 0 or len(recent) == n_batches:
            mean = float(np.mean(recent))
            bar.set_postfix(loss=f"{mean:.4f}")
            if log is not None:
                log.write(step=step, epoch=epoch, loss=mean,
                          lr=trainer.scheduler.get_last_lr()[0])
            recent = []
        if stop is not None and stop.requested:
            break
    return step


# --------------------------------------------------------------------------------------------
# Evaluation and prediction with a fine-tuned model


def evaluate(model_dir: str | Path, data: str | Path, *, split: str = "test",
             batch_size: int = 64, device: str | None = None, precision: str = "auto",
             max_examples: int | None = None, progress: bool = True) -> dict:
    """Metrics of a fine-tuned model on a labelled file or built-in data set."""
    task, model, tokenizer = load_finetuned(model_dir, device)
    examples = _read(task, data, split, max_examples)
    if task.has_labels:
        task.check_labels(examples, model.config.label2id)
    precision = resolve_precision(precision, next(model.parameters()).device)
    metrics, _ = evaluate_examples(model, task, tokenizer, examples, batch_size=batch_size,
                                   precision=precision, progress=progress)
    return {"examples": len(examples), **metrics}


STRUCTURED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".conll", ".gz", ".bz2")


def predict(model_dir: str | Path, inputs: str | Path | list[str], *, batch_size: int = 64,
            device: str | None = None, precision: str = "fp32") -> list[dict]:
    """One JSON-able answer per input: label and probabilities, tags and entity spans, or answer
    text with its span and score.

    ``inputs`` is a file in the task's format (labels are not needed), a built-in data set name,
    or a list of raw lines (one text a line; tab-separated pairs; JSON lines for QA and
    multiple choice).
    """
    task, model, tokenizer = load_finetuned(model_dir, device)
    if isinstance(inputs, list):
        examples = task.read_lines(inputs, "<input>", tokenizer)
    else:
        path = resolve_data(inputs, "test")
        if path.suffix in STRUCTURED_SUFFIXES:
            examples = task.read(path, labelled=False)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            examples = task.read_lines(lines, str(path), tokenizer)
    if not examples:
        return []
    features = task.encode(examples, tokenizer)
    precision = resolve_precision(precision, next(model.parameters()).device)
    outputs = run_model(model, task, features, batch_size, precision=precision)
    predictions = task.decode(examples, features, outputs, model.config.id2label)
    return [task.to_json(e, p) for e, p in zip(examples, predictions, strict=True)]


# --------------------------------------------------------------------------------------------


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def _print(message: str) -> None:
    print(f"bertkit: {message}", file=sys.stderr, flush=True)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
