"""Fine-tuning, evaluation and prediction for every task family (``bertkit.tasks``).

The paper's recipe: a pre-trained encoder plus one fresh output layer, every weight trained with
AdamW, 10% linear warm-up then linear decay, a few epochs at a small learning rate. Each epoch
ends with an evaluation on the validation set; the best checkpoint by the task's metric is kept
in ``OUT/best`` (model, tokenizer and ``task.json``, everything ``evaluate`` and ``predict``
need), beside ``metrics.jsonl``, ``curves.png`` and ``results.json``. Several seeds run one after
another into ``OUT/seed-N`` and are summarised as mean ± standard deviation.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import files
from .config import PRESETS, BertConfig
from .device import PRECISIONS, autocast, choose_device, resolve_precision
from .report import plot_confusion, plot_metrics
from .settings import SettingsError, comma_ints, comma_names, one_or_more, option
from .sources import resolve_pretrained
from .tasks import TASKS, Task, build_task
from .tasks.base import length_multiple, text_lines, window_counts
from .tasks.datasets import builtin_task, resolve_data
from .tokenizer import BertTokenizer
from .training import (
    GracefulStop,
    MetricsLog,
    NonFiniteLoss,
    OptimizerSettings,
    Trainer,
    build_trainer,
    restore_rng_states,
    rng_states,
    seed_everything,
    truncate_metrics,
)

logger = logging.getLogger("bertkit")

TASK_FILE = "task.json"
SETTINGS_FILE = "finetune_settings.json"
RESULTS_FILE = "results.json"
RESUME_FILE = "stopped.pt"  # a seed stopped mid-training: what --resume continues from
DEFAULT_VOCAB = "all-minilm-l6-v2"  # the bert-base-uncased vocabulary, for presets
GRID = ("lr", "batch_size", "epochs")  # what --search varies
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


def tokenizer_for(model: str | Path, tokenizer: str | Path | None = None) -> BertTokenizer:
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
               dropout: float | None = None, output_bias: list[float] | None = None
               ) -> nn.Module:
    """``task``'s model from a checkpoint folder (or fetchable name), or a preset at random init.

    A checkpoint that already has this task's head keeps it when its labels are the training
    data's (in its own order); a head for other labels is an error unless ``reinit_head``.
    ``random_init`` builds the checkpoint's architecture (its config.json) with fresh weights:
    the baseline that shows what pre-training brings. ``dropout`` replaces the checkpoint's
    hidden and attention dropout (one pre-trained without dropout still wants it here).
    ``output_bias`` (`Task.output_bias`) starts a new head's biases; a kept head keeps its own.
    """
    overrides: dict = {}
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if task.has_labels:
        overrides["id2label"] = dict(enumerate(label_names))
    # The loss is this task's even when the checkpoint was fine-tuned for another (a kept head
    # of a multi-label run would otherwise train a single-label task with its BCE); None lets
    # the head pick cross-entropy for classes.
    overrides["problem_type"] = task.problem_type
    if str(model) in PRESETS:
        config = BertConfig.from_preset(str(model), vocab_size=vocab_size)
        config = BertConfig.from_dict({**config.to_dict(), **overrides})
        return start_output(task.model_class(config), output_bias)

    directory = checkpoint_dir(model)
    saved = BertConfig.from_json_file(directory / "config.json")
    if random_init:
        config = BertConfig.from_dict({**saved.to_dict(), **overrides})
        return start_output(task.model_class(config), output_bias)
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
    return loaded if has_head and not reinit_head else start_output(loaded, output_bias)


def start_output(model: nn.Module, bias: list[float] | None) -> nn.Module:
    """``model`` with its new output layer's biases set to ``bias`` (None: left at zero)."""
    if bias is not None:
        output = model.output if hasattr(model, "output") else model.classifier
        with torch.no_grad():
            output.bias.copy_(torch.tensor(bias))
    return model


class WeightedLoss(nn.Module):
    """A classifier whose cross-entropy weighs each class (for imbalanced labels); the model
    itself is unchanged and saved as it is."""

    def __init__(self, model: nn.Module, weights: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights)

    def forward(self, labels=None, **inputs):
        out = self.model(**inputs)
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(out["logits"].float(), labels,
                                                      weight=self.weights)
        return out


def class_weights(spec: str, label_ids: list[int], label2id: dict | None) -> torch.Tensor:
    """Per-class loss weights: ``balanced`` (as scikit-learn's: n / (classes x count)) or a
    JSON file mapping every label name to its weight."""
    if not label2id or label_ids and isinstance(label_ids[0], (float, np.floating)):
        raise SettingsError("--class-weights weighs the classes of a classification task.")
    if label_ids and isinstance(label_ids[0], list):
        raise SettingsError("--class-weights weighs the one class of each example; a "
                            "multi-label task has several per example.")
    if spec == "balanced":
        counts = np.bincount(label_ids, minlength=len(label2id))
        if (counts == 0).any():
            missing = [name for name, i in label2id.items() if counts[i] == 0]
            raise SettingsError(f"--class-weights balanced: no training example of {missing}.")
        return torch.tensor(len(label_ids) / (len(label2id) * counts), dtype=torch.float32)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--class-weights {spec}: give 'balanced' or a JSON file "
                                "{label: weight}.")
    given = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(given, dict) or set(given) != set(label2id):
        raise SettingsError(f"{path} must map every label {sorted(label2id)} to a weight.")
    weights = [given[name] for name, _ in sorted(label2id.items(), key=lambda item: item[1])]
    if not all(isinstance(w, (int, float)) and w > 0 for w in weights):
        raise SettingsError(f"{path}: every weight must be a positive number.")
    return torch.tensor(weights, dtype=torch.float32)


def reset_head(model: nn.Module) -> None:
    """Fresh output-layer weights, as the paper's initialisation would give them."""
    std = model.config.initializer_range
    for name in ("classifier", "qa_outputs"):
        layer = getattr(model, name, None)
        if layer is not None:
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)


def load_finetuned(directory: str | Path, device=None) -> tuple[Task, nn.Module, BertTokenizer]:
    """A model saved by ``finetune`` (its ``best`` folder, or the run folder holding one), or a
    fine-tuned BERT checkpoint without ``task.json`` (one transformers saved): its task is read
    from config.json (`task_of_checkpoint`)."""
    directory = Path(directory)
    if not (directory / TASK_FILE).is_file() and (directory / "best" / TASK_FILE).is_file():
        directory = directory / "best"
    if not (directory / TASK_FILE).is_file():
        task, tokenizer = task_of_checkpoint(directory)
        model = task.model_class.from_pretrained(directory).to(choose_device(device)).eval()
        task.use_labels(model.config.id2label)
        return task, model, tokenizer
    options = json.loads((directory / TASK_FILE).read_text(encoding="utf-8"))
    task = build_task(options.pop("task"), **options)
    if options.get("feature_fields"):  # numbers beside the text (bertkit.features)
        from .features import WithNumbers
        task = WithNumbers.from_options(task, options)
    if options.get("mode") == "feature-based":
        from .features import load_feature_model
        return load_feature_model(directory, task, options, device)
    model = task.model_class.from_pretrained(directory).to(choose_device(device)).eval()
    task.use_labels(model.config.id2label)
    return task, model, BertTokenizer.from_pretrained(directory)


# The task of each head class transformers saves; a sequence head's problem_type may change it.
HEAD_TASKS = {"BertForSequenceClassification": "classification",
              "BertForTokenClassification": "token-classification",
              "BertForQuestionAnswering": "question-answering",
              "BertForMultipleChoice": "multiple-choice"}
SEQUENCE_TASKS = {None: "classification", "single_label_classification": "classification",
                  "multi_label_classification": "multi-label", "regression": "regression"}


def task_of_checkpoint(directory: Path) -> tuple[Task, BertTokenizer]:
    """The task (and tokenizer) of a checkpoint folder without ``task.json`` (``save_pretrained`` or
    ``Trainer.save_model`` of transformers' BERT heads), from its config.json: the head class,
    and for a sequence head its ``problem_type`` (one label without one is regression, as
    transformers trains it). Anything predict would run with an untrained head, or cannot run,
    is refused in one line saying what to do instead."""
    _check_checkpoint_folder(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    named = ", ".join(architectures) or "no architecture"
    if config.get("model_type", "bert") != "bert":
        raise SettingsError(f"{directory} holds a {named} model (model_type "
                            f"{config.get('model_type')!r}), and bertkit runs BERT only; use "
                            "transformers' pipeline for this model.")
    head = next((name for name in architectures if name in HEAD_TASKS), None)
    if head is None:
        use = ("`bertkit embed`" if (directory / "modules.json").is_file()
               else "`bertkit embed` or `bertkit fill-mask`")
        raise SettingsError(f"{directory} holds a BERT with {named} and no fine-tuned task head "
                            f"(predict would answer with a random one): fine-tune it first "
                            f"(`bertkit finetune --model {directory} ...`), or use {use}.")
    from .checkpoint import read_weights
    output = "qa_outputs." if head == "BertForQuestionAnswering" else "classifier."
    if not any(name.startswith(output) for name in read_weights(directory)):
        raise SettingsError(f"{directory}: config.json names {head}, but the weights hold no "
                            f"{output}* head (predict would answer with a random one); save the "
                            "fine-tuned model again, or fine-tune this one first.")
    name = HEAD_TASKS[head]
    if name == "classification":
        problem = config.get("problem_type")
        if problem not in SEQUENCE_TASKS:
            raise SettingsError(f"{directory}: config.json has problem_type {problem!r}; "
                                f"bertkit knows {', '.join(map(str, SEQUENCE_TASKS))}.")
        one_output = len(config.get("id2label") or {}) == 1
        name = "regression" if problem is None and one_output else SEQUENCE_TASKS[problem]
    tokenizer = BertTokenizer.from_pretrained(directory)
    # Texts as long as the model takes, as transformers' pipelines take them.
    longest = min(config.get("max_position_embeddings", 512), tokenizer.model_max_length)
    if name != "question-answering":
        return build_task(name, max_length=longest), tokenizer
    length = min(384, longest)  # SQuAD's windows, or the same shares of a shorter one
    return build_task(name, max_length=length, doc_stride=min(128, length // 3),
                      max_query_length=min(64, length // 6)), tokenizer


def _check_checkpoint_folder(directory: Path) -> None:
    """The files a checkpoint without ``task.json`` needs, or one line saying what it is."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder; give the folder that `bertkit "
                                "finetune` wrote (OUT or OUT/best), or a fine-tuned BERT folder.")
    seeds = sorted(directory.glob(f"seed-*/best/{TASK_FILE}"))
    if seeds:
        raise FileNotFoundError(f"{directory} holds a run of {len(seeds)} seeds: give one of "
                                f"them, e.g. {seeds[0].parent.parent} (results.json has each "
                                "seed's scores).")
    if not (directory / "config.json").is_file():
        trainer = (" (transformers' Trainer.save_model() writes only weights for a model that is "
                   "no PreTrainedModel: save it with trainer.model.save_pretrained(folder))"
                   if (directory / "training_args.bin").is_file() else "")
        raise FileNotFoundError(f"{directory} has neither {TASK_FILE} nor config.json: give the "
                                "folder that `bertkit finetune` wrote (OUT or OUT/best), or a "
                                f"fine-tuned BERT folder{trainer}.")
    if not any((directory / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise FileNotFoundError(f"{directory} has no tokenizer (vocab.txt or tokenizer.json): "
                                "save the tokenizer of the model it was fine-tuned from into it "
                                "(tokenizer.save_pretrained(folder)).")


def save_finetuned(directory: Path, task: Task, model: nn.Module, tokenizer) -> None:
    """Model, tokenizer and task options, written beside and renamed into place."""
    # The tokenizer says where the task truncates, so a transformers pipeline cuts the same way.
    tokenizer.model_max_length = task.max_length
    with files.reporting_full_disk(directory, "What it held before is kept."), \
            files.atomic_path(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files.write_json(staging / TASK_FILE, task.options())


# --------------------------------------------------------------------------------------------
# Running the model over features


BUCKET_BATCHES = 50  # training batches are formed from this many batches' worth of features
# Batch entries run_model passes to the model (numbers: --feature-fields; features and
# feature_mask: cached features of the feature-based approach, bertkit.features).
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "numbers", "features",
                "feature_mask")


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
        batch = task.collate([features[i] for i in chunk], length_multiple(precision))
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
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
# Settings


@dataclass
class FinetuneSettings(OptimizerSettings):
    """Everything a fine-tuning run depends on; saved as ``OUT/finetune_settings.json``.

    Task options (``max_length``, ``text_field`` ...) left at None take the task family's own
    defaults; a family reads the ones its ``__init__`` accepts.
    """

    task: str | None = option(None, "the task family (default: the built-in data set's)",
                              choices=tuple(TASKS))
    model: str | None = option(None, "checkpoint folder (HF layout), all-minilm-l6-v2, or a "
                               "preset for random init: tiny, mini, small, medium, base, large")
    train: str | None = option(None, "training file or built-in name", metavar="FILE")
    validation: str | None = option(None, "validation file (picks the best epoch)",
                                    metavar="FILE")
    test: str | None = option(None, "test file, scored once at the end", metavar="FILE")
    out: str = option("runs/finetune", "run folder")
    data: str | None = option(None, "a built-in data set for all splits (NAME)", metavar="NAME")
    seeds: list[int] = option([1], "comma-separated seeds, e.g. 1,2,3: one run each, reported "
                              "as mean ± std", parse=comma_ints, metavar="1,2,3")
    tokenizer: str | None = option(None, "tokenizer folder (default: the model's; bert-base's "
                                   "uncased vocab for presets)")
    # With --search, lists (--lr 5e-5,3e-5) give the grid; a single value fixes that dimension.
    lr: float | list[float] = option(3e-5, "peak learning rate (--search: 5e-5,3e-5,2e-5)",
                                     above=0, parse=one_or_more(float), metavar="LR")
    batch_size: int | list[int] = option(32, "examples per step (--search: 16,32)", at_least=1,
                                         parse=one_or_more(int), metavar="N")
    epochs: int | list[int] = option(3, "passes over the data (--search: 2,3,4)", at_least=1,
                                     parse=one_or_more(int), metavar="N")
    max_train_examples: int | None = option(None, "train on a fixed random subset of N examples",
                                            at_least=1, metavar="N")
    max_eval_examples: int | None = option(None, "evaluate on a fixed random subset of N "
                                           "examples", at_least=1, metavar="N")
    reinit_head: bool = option(False, "start a fresh output layer even if the checkpoint has "
                               "one (e.g. for other labels)")
    random_init: bool = option(False, "the --model checkpoint's architecture with fresh random "
                               "weights (the no-pre-training baseline)")
    dropout: float | None = option(None, "hidden and attention dropout (default: the "
                                   "checkpoint's config, 0.1 for presets)", at_least=0,
                                   at_most=1)
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: GPU if any)")
    precision: str = option("auto", "auto, fp32, bf16, fp16", choices=PRECISIONS)
    eval_batch_size: int = option(64, "examples per evaluation batch", at_least=1)
    log_every: int = option(20, "steps between loss records", at_least=1)
    progress: bool = option(True, "progress bars")
    gradient_checkpointing: bool = option(False, "recompute each layer's activations in the "
                                          "backward pass: less memory, more time, the same "
                                          "gradients")
    # The paper's model selection (bertkit.search) and early stopping.
    search: bool = option(False, "the paper's hyper-parameter search: a full run per point of "
                          "the --lr x --batch-size x --epochs grid, the best on validation "
                          "kept, test scored once for it")
    restarts: int = option(1, "random restarts per point (seeds from the first --seeds on); "
                           "the best on validation is kept", at_least=1)
    budget_minutes: float | None = option(None, "--search: start no new point after this many "
                                          "minutes", above=0)
    patience: int | None = option(None, "stop after this many epochs without a better "
                                  "validation score", at_least=1)
    class_weights: str | None = option(None, "classification: weight each class's loss, "
                                       "'balanced' (n / (classes x count)) or a JSON file "
                                       "{label: weight}", metavar="balanced|FILE")
    # Task options: None leaves the family's default.
    max_length: int | None = option(None, "tokens per input, longer inputs are truncated with a "
                                    "warning (128; QA windows 384)", at_least=8)
    text_field: str | None = option(None, "field of the text (text; MC: question)")
    pair_field: str | None = option(None, "field of the second text (text_pair)")
    label_field: str | None = option(None, "field of the label (label)")
    choices_field: str | None = option(None, "MC: field of the choices (choices)")
    context_field: str | None = option(None, "MC: field of an optional context (context)")
    doc_stride: int | None = option(None, "tokens between the starts of overlapping windows "
                                    "over a long input (QA: 128; classification, regression, "
                                    "multi-label, tagging: none, long inputs are truncated; 0 "
                                    "truncates)", at_least=0)
    window_pooling: str | None = option(None, "--doc-stride: a document's logits are the mean "
                                        "(default) or max of its windows'",
                                        choices=("mean", "max"))
    label_separator: str | None = option(None, "multi-label: the separator between labels in "
                                         "a CSV/TSV (or JSONL string) label field (|)")
    max_query_length: int | None = option(None, "QA: question tokens kept (64)", at_least=1)
    max_answer_length: int | None = option(None, "QA: longest answer (30 tokens)", at_least=1)
    n_best_size: int | None = option(None, "QA: start/end candidates (20)", at_least=1)
    allow_null: bool | None = option(None, "QA: SQuAD v2.0, questions may have no answer "
                                     "(automatic when the training data has some)")
    null_threshold: float | None = option(None, "QA v2.0: answer empty when null score - best "
                                          "span > this (0)")
    # The feature-based approach (bertkit.features) and numbers beside the text.
    feature_based: bool = option(False, "feature-based: freeze the encoder, cache its features "
                                 "once, train only a task model on them")
    layers: str | None = option(None, "feature-based: last (default), second_to_last, "
                                "sum_last_four, concat_last_four, sum_all, embeddings, weighted "
                                "(a learned softmax-weighted sum), or indices such as "
                                "--layers=-4,-3 (with '=': a leading minus is a value then)")
    combine: str | None = option(None, "feature-based: how a list of --layers indices is "
                                 "combined (sum)", choices=("sum", "mean", "concat"))
    pooling: str | None = option(None, "feature-based: the pooled vector of classification, "
                                 "regression and multiple choice: mean of the token features "
                                 "(default) or the [CLS] token's", choices=("mean", "cls"))
    task_model: str | None = option(None, "feature-based: linear (default), mlp, or bilstm "
                                    "(the paper's two-layer BiLSTM; default for tagging)",
                                    choices=("linear", "mlp", "bilstm"))
    task_hidden: int | None = option(None, "feature-based: hidden size of the MLP (512) or of "
                                     "each BiLSTM direction (768, the paper's)", at_least=1)
    task_lr: float | None = option(None, "feature-based: the task model's peak learning rate "
                                   "(1e-3; 1e-2 for the BiLSTM)", above=0)
    feature_cache: str | None = option(None, "feature-based: the feature cache folder (default "
                                       "$BERTKIT_CACHE/features)", metavar="DIR")
    feature_cache_gb: float = option(10.0, "feature-based: most GB the feature cache in "
                                     "$BERTKIT_CACHE/features keeps (least recently used "
                                     "entries are evicted)", above=0)
    feature_fields: list[str] | None = option(None, "numeric columns (CSV/TSV/JSONL) added to "
                                              "the pooled text vector, standardised with the "
                                              "training split's statistics", parse=comma_names,
                                              metavar="AGE,PRICE")

    def __post_init__(self):
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if self.data is not None:  # a built-in data set gives every split, and its task
            self.train = self.train or self.data
            self.validation = self.validation or self.data
            self.test = self.test or self.data
        if self.train is not None:
            self.train, self.validation, self.test = (
                None if spec is None else str(spec) for spec in (self.train, self.validation,
                                                                self.test))
            self.task = self.task or builtin_task(self.train)
        self.out, self.model = str(self.out), None if self.model is None else str(self.model)
        if self.model is None:
            raise SettingsError("fine-tuning needs a --model (a checkpoint folder, "
                                "all-minilm-l6-v2, or a preset such as mini).")
        if self.train is None:
            raise SettingsError("fine-tuning needs --train FILE (or --data NAME for a built-in "
                                "data set).")
        if self.task is None:
            raise SettingsError(f"--task is needed for {self.train} (it is not a built-in data "
                                "set).")
        if not self.seeds:
            raise SettingsError("--seeds lists no seed; give e.g. 1 or 1,2,3.")
        grid = [name for name in GRID if isinstance(getattr(self, name), list)]
        if grid and not self.search:
            raise SettingsError(f"several values of --{grid[0].replace('_', '-')} need --search.")
        if self.search and len(self.seeds) > 1:
            raise SettingsError(f"--search runs each point with --restarts seeds counted from "
                                f"one --seeds value; give one (e.g. --seeds {self.seeds[0]} "
                                f"--restarts {len(self.seeds)}), not {len(self.seeds)}.")
        if (self.search or self.patience) and self.validation is None:
            raise SettingsError("--search and --patience choose on validation: give "
                                "--validation FILE.")
        if isinstance(self.feature_fields, str):
            self.feature_fields = comma_names(self.feature_fields)
        super().__post_init__()
        from .features import check_settings
        check_settings(self)

    def build_task(self) -> Task:
        task = build_task(self.task, **asdict(self))
        if self.feature_fields:
            from .features import WithNumbers
            task = WithNumbers(task, self.feature_fields)
        return task


# --------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(*args, resume: bool = False, overwrite: bool = False, **options) -> dict:
    """Fine-tune a model on a task and return the results (also in ``OUT/results.json``).

    The arguments are `FinetuneSettings`' fields (``task, model, train, validation, test, out``
    may be given in that order), or one `FinetuneSettings`. ``train``/``validation``/``test``
    are files or built-in data set names (``rt-polarity``, ``snli:test`` ...); ``model`` is a
    checkpoint folder, a fetchable model name or a size preset (random initialisation). With
    several ``seeds`` each run goes to ``OUT/seed-N`` and the results hold every run plus the
    mean and standard deviation of each metric.

    An ``out`` holding earlier results is refused unless ``overwrite`` (the new run is written
    beside it and replaces it only once finished) or ``resume`` (finished seeds are kept and the
    rest run again). SIGINT/SIGTERM stops every seed: the results then say ``stopped`` (with
    ``exit_code``) and ``resume`` finishes the run.
    """
    settings = (args[0] if len(args) == 1 and isinstance(args[0], FinetuneSettings)
                else FinetuneSettings(*args, **options))
    out = Path(settings.out)
    for split in ("train", "validation", "test"):  # a missing file stops before --out is touched
        if getattr(settings, split) is not None:
            resolve_data(getattr(settings, split), split)
    work = _work_folder(out, settings, resume, overwrite)
    with GracefulStop() as stop:
        if settings.search:
            from .search import search

            results = search(settings, work, stop)
            stopped = stop.requested
        else:
            results, stopped = _every_seed(settings, work, stop)
    if stopped:
        results = {**results, "stopped": True, "exit_code": stop.exit_code}
    else:
        results["stopped"] = False
    files.write_json(work / RESULTS_FILE, results)
    if not stopped and work != out:
        files.replace(work, out)
    return results


def _every_seed(settings: FinetuneSettings, work: Path, stop: GracefulStop) -> tuple[dict, bool]:
    """One run per seed (into ``work/seed-N`` when there are several), summarised; and whether
    a stop left seeds unfinished (a signal during a seed's final evaluation comes too late to
    stop it: its results stand)."""
    runs = []
    for seed in settings.seeds:
        folder = work if len(settings.seeds) == 1 else work / f"seed-{seed}"
        final = final_folder(settings, work, folder)
        runs.append(_finished(folder) or new_run(settings, seed, folder, final).run(stop))
        if stop.requested:
            break
    stopped = len(runs) < len(settings.seeds) or any(r.get("stopped") for r in runs)
    if len(settings.seeds) == 1:
        return runs[0], stopped
    return {"seeds": settings.seeds, "runs": runs, "summary": summarise(runs)}, stopped


def new_run(settings: FinetuneSettings, seed: int, folder: Path,
            final: Path | None = None) -> FinetuneRun:
    """The run of one seed into ``folder``: fine-tuning, or the feature-based approach.
    ``final`` is where that folder ends up (see `FinetuneRun`)."""
    if settings.feature_based:
        from .features import FeatureRun

        return FeatureRun(settings, seed, folder, final)
    return FinetuneRun(settings, seed, folder, final)


def final_folder(settings: FinetuneSettings, work: Path, folder: Path) -> Path:
    """Where ``folder``, written under the work folder, is once the run is done (under --out)."""
    return Path(settings.out) / folder.relative_to(work)


def staging_folder(out: Path) -> Path:
    """The sibling an ``--overwrite`` run is written to; it replaces ``out`` once finished."""
    return out.with_name(f".{out.name}.new")


def _work_folder(out: Path, settings: FinetuneSettings, resume: bool, overwrite: bool) -> Path:
    """The folder this run writes: ``out`` itself, or (overwriting a finished run) a sibling
    that replaces it at the end, so a run that fails leaves the earlier results as they were."""
    beside = staging_folder(out)
    if resume:
        work = beside if beside.is_dir() else out
        saved = work / SETTINGS_FILE
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {out} holds no fine-tuning run to continue.")
        settings.check_resumes(FinetuneSettings.from_file(saved), ignore=("progress",))
        return work
    if (out / SETTINGS_FILE).is_file() or (out / RESULTS_FILE).is_file() or (out / "best").is_dir():
        if not overwrite:
            raise FileExistsError(f"{out} holds an earlier fine-tuning run: pass --overwrite to "
                                  "replace it (it is kept until the new run finishes), --resume "
                                  "to continue it, or choose another --out.")
        files.remove(beside)
        work = beside
    else:
        work = out
    work.mkdir(parents=True, exist_ok=True)
    settings.save(work / SETTINGS_FILE)
    return work


def _finished(folder: Path) -> dict | None:
    """The results of a seed that ran to the end before (a resumed run keeps them)."""
    path = folder / RESULTS_FILE
    if path.is_file():
        results = json.loads(path.read_text(encoding="utf-8"))
        if results.get("stopped") is False:
            return results
    return None


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of every metric of every split across runs."""
    summary = {}
    for split in ("validation", "test"):
        metrics = [run[split] for run in runs if run.get(split)]
        if metrics:
            summary[split] = {
                name: {"mean": float(np.mean([m[name] for m in metrics])),
                       # one run (the others stopped) has no spread to give
                       "std": float(np.std([m[name] for m in metrics], ddof=1))
                       if len(metrics) > 1 else None}
                for name in metrics[0]}
    return summary


def _read(task: Task, spec, split: str, limit: int | None = None) -> list:
    examples = task.read(resolve_data(spec, split))
    if limit is not None and limit < len(examples):
        examples = random.Random(SUBSET_SEED).sample(examples, limit)
    return examples


class FinetuneRun:
    """One seed's run: data, model and trainer, then epochs with an evaluation after each, the
    best checkpoint kept in ``folder/best``. `bertkit.features.FeatureRun` replaces the model
    and the hooks ``evaluate_on``, ``save_best`` and ``load_best``.

    ``final`` is where ``folder`` will be once the run is done (default: ``folder`` itself): an
    ``--overwrite`` run writes a staging sibling of ``--out`` and renames it, and what the
    results record is the path the files are found at afterwards.
    """

    mode = "fine-tuning"

    def __init__(self, settings: FinetuneSettings, seed: int, folder: Path,
                 final: Path | None = None):
        self.settings, self.seed, self.folder = settings, seed, folder
        self.final = folder if final is None else Path(final)
        self.started = time.time()
        self.task = settings.build_task()
        self.device = choose_device(settings.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.tokenizer = tokenizer_for(settings.model, settings.tokenizer)
        self.train_examples = _read(self.task, settings.train, "train",
                                    settings.max_train_examples)
        self.task.prepare(self.train_examples)
        self.validation_examples, self.test_examples = (
            _read(self.task, spec, split, settings.max_eval_examples) if spec is not None
            else None for split, spec in (("validation", settings.validation),
                                          ("test", settings.test)))
        seed_everything(seed)  # the new head's initial weights depend on it
        label_names = self.task.label_names(self.train_examples)
        self.model = load_model(self.task, settings.model, label_names,
                                self.tokenizer.vocab_size, settings.reinit_head,
                                settings.random_init, settings.dropout,
                                self.task.output_bias(self.train_examples, label_names)
                                ).to(self.device)
        positions = self.model.config.max_position_embeddings
        if self.task.max_length > positions:  # found now, not by the first long test input
            raise SettingsError(f"--max-length {self.task.max_length} is longer than the "
                                f"{positions} positions of {settings.model}: use --max-length "
                                f"{positions} or less.")
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.task.use_labels(self.model.config.id2label)
        self.label2id = self.model.config.label2id if self.task.has_labels else None
        if self.label2id is not None:
            for examples in (self.train_examples, self.validation_examples or [],
                             self.test_examples or []):  # before training, not after it
                self.task.check_labels(examples, self.label2id)
        self.features = self.task.encode(self.train_examples, self.tokenizer, self.label2id)
        self.steps_per_epoch = math.ceil(len(self.features) / settings.batch_size)
        trained = self.model
        if settings.class_weights:
            trained = WeightedLoss(self.model, class_weights(
                settings.class_weights, [f["labels"] for f in self.features], self.label2id))
        self.trainer = build_trainer(trained.to(self.device), settings,
                                     self.steps_per_epoch * settings.epochs,
                                     device=self.device, precision=self.precision)
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "metrics.jsonl"
        if not (folder / RESUME_FILE).is_file():  # a stopped seed's log goes on
            self.log_path.unlink(missing_ok=True)
        self.log = MetricsLog(self.log_path)
        self.history: list[dict] = []
        self.best_score = self.best_validation = None
        self.best_epoch = 0
        self.window: list[float] = []  # losses not logged yet
        self.epoch_seconds = 0.0  # of the current epoch before a stop

    def run(self, stop: GracefulStop) -> dict:
        s = self.settings
        lr = self.trainer.scheduler.base_lrs[0]
        _print(f"{self.mode} {s.model} on {self.task.name}: {len(self.train_examples)} examples "
               f"({len(self.features)} features), {s.epochs} epochs x {self.steps_per_epoch} "
               f"steps, batch {s.batch_size}, lr {lr}, seed {self.seed}, {self.device} "
               f"{self.precision} -> {self.folder}")
        first, step = self.restore()
        for epoch in range(first, s.epochs + 1):
            epoch_start = time.time() - self.epoch_seconds
            try:
                step = train_epoch(self.trainer, self.task, self.features, s.batch_size,
                                   seed=self.seed * 1000 + epoch, log=self.log, step=step,
                                   epoch=epoch, log_every=s.log_every, progress=s.progress,
                                   stop=stop, start=step - (epoch - 1) * self.steps_per_epoch,
                                   window=self.window)
            except NonFiniteLoss:  # the trainer's own advice speaks of pre-training's options
                raise NonFiniteLoss(
                    f"the loss became NaN or infinite in epoch {epoch} of seed {self.seed} "
                    f"({self.folder}): lower the learning rate (this run's: {lr:g}), or use "
                    "--precision fp32 or bf16 instead of fp16.") from None
            if stop.requested:
                self.save_stopped(epoch, step, time.time() - epoch_start)
                _print(f"stopped in epoch {epoch} of seed {self.seed} at step {step}, saved; "
                       "--resume continues from there.")
                return {"seed": self.seed, "stopped": True, "step": step}
            self.epoch_seconds = 0.0
            self.end_epoch(epoch, step, round(time.time() - epoch_start, 2))
            if s.patience and epoch - self.best_epoch >= s.patience:
                _print(f"no better validation score in {s.patience} epochs: stopping after "
                       f"epoch {epoch} (best: epoch {self.best_epoch}).")
                break
        return self.finish()

    def save_stopped(self, epoch: int, step: int, seconds: float) -> None:
        """Everything `restore` needs to go on from ``step`` as if never stopped: the weights,
        optimiser and schedule, the random states (dropout's next masks), the epoch's unlogged
        losses, the evaluations so far and the best of them."""
        run = {"epoch": epoch, "step": step, "epoch_seconds": seconds, "window": self.window,
               "history": self.history,
               "best": [self.best_score, self.best_validation, self.best_epoch]}
        state = {"model": self.model.state_dict(), "trainer": self.trainer.state_dict(),
                 "rng": rng_states(self.device), "run": json.dumps(run)}
        path = self.folder / RESUME_FILE
        with files.reporting_full_disk(path, "--resume runs the seed again from its start."), \
                files.atomic_path(path) as staging:
            torch.save(state, staging)

    def restore(self) -> tuple[int, int]:
        """(epoch, global step) to train from: where `save_stopped` left this seed, or (1, 0)."""
        path = self.folder / RESUME_FILE
        if not path.is_file():
            return 1, 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.trainer.load_state_dict(state["trainer"])
        restore_rng_states(state["rng"], self.device)
        run = json.loads(state["run"])
        self.history, self.window, self.epoch_seconds = (run["history"], run["window"],
                                                         run["epoch_seconds"])
        self.best_score, self.best_validation, self.best_epoch = run["best"]
        truncate_metrics(self.log_path, run["step"])
        _print(f"seed {self.seed}: resuming in epoch {run['epoch']} after step {run['step']}")
        return run["epoch"], run["step"]

    def end_epoch(self, epoch: int, step: int, seconds: float) -> None:
        """Evaluate on validation, log, and keep the checkpoint if it is the best so far."""
        record = {"epoch": epoch, "step": step, "epoch_seconds": seconds}
        metrics = None
        if self.validation_examples:
            metrics, predictions = self.evaluate_on(self.model, "validation")
            if self.task.tunes:
                # Each epoch is scored with the options tuned on it, as its checkpoint would be
                # used: at a threshold of 0.5 an early multi-label model predicts no label at all,
                # and the best epoch would be chosen among zeros.
                record.update(self.task.tune(self.validation_examples, predictions))
                metrics = self.task.score(self.validation_examples,
                                          self.task.decide_again(predictions))
            record.update({f"validation_{k}": v for k, v in metrics.items()})
        self.log.write(**record)
        self.history.append(record)
        measured = {k: v for k, v in record.items() if k not in ("epoch", "step", "epoch_seconds")}
        _print(f"epoch {epoch}, step {step}, {seconds:.1f} s"
               + (f", {_format(measured)}" if measured else ""))
        score = record.get(f"validation_{self.task.metric}", epoch)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_validation, self.best_epoch = score, metrics, epoch
            self.save_best()

    def evaluate_on(self, model, split: str) -> tuple[dict, list]:
        """(metrics, predictions) of ``model`` on the validation or test examples."""
        examples = self.validation_examples if split == "validation" else self.test_examples
        return evaluate_examples(model, self.task, self.tokenizer, examples,
                                 batch_size=self.settings.eval_batch_size,
                                 precision=self.precision)

    def save_best(self) -> None:
        save_finetuned(self.folder / "best", self.task, self.model, self.tokenizer)

    def load_best(self) -> nn.Module:
        return self.task.model_class.from_pretrained(self.folder / "best").to(self.device)

    def finish(self) -> dict:
        """The best checkpoint scored on validation and test; results, curves."""
        s = self.settings
        model = self.load_best()
        tuned = self.tune_best(model)
        best = max(self.history, key=lambda r: r.get(f"validation_{self.task.metric}",
                                                      r["epoch"]))
        results = {"task": self.task.name, "model": s.model,
                   "random_init": s.random_init or s.model in PRESETS, "seed": self.seed,
                   "out": str(self.final), "train": s.train,
                   "train_examples": len(self.train_examples), "epochs": s.epochs, "lr": s.lr,
                   "batch_size": s.batch_size, "precision": self.precision,
                   "options": self.task.options(),
                   "epoch_seconds": [r["epoch_seconds"] for r in self.history],
                   "best_epoch": best["epoch"], "metric": self.task.metric,
                   "history": self.history}
        if tuned:
            results["tuned"] = tuned
        for split, spec in (("validation", s.validation), ("test", s.test)):
            if spec is not None:
                results.update(self.score_split(model, split))
        results.update(self.window_report())
        results["seconds"] = round(time.time() - self.started, 1)
        results["stopped"] = False
        files.write_json(self.folder / RESULTS_FILE, results)
        (self.folder / RESUME_FILE).unlink(missing_ok=True)
        panels = {"training loss": ["loss"]}
        if self.validation_examples:
            panels["validation"] = [f"validation_{m}" for m in self.task.metrics if m != "mse"]
        plot_metrics(self.log_path, self.folder / "curves.png", panels,
                     title=f"{self.task.name}: {s.model} (seed {self.seed})")
        return results

    def score_split(self, model, split: str) -> dict:
        """Metrics (and trivial baselines) of the best checkpoint on one split; on the test
        split (validation without one) also the task's per-class report."""
        examples = self.validation_examples if split == "validation" else self.test_examples
        reported = split == ("test" if self.test_examples else "validation")
        if split == "validation" and self.best_validation is not None and not reported:
            metrics = self.best_validation  # the best checkpoint was scored when it was saved
        else:
            metrics, predictions = self.evaluate_on(model, split)
        scored = {split: metrics}
        if reported:
            scored.update(self.class_report(split, examples, predictions))
        baselines = self.task.baselines(self.train_examples, examples)
        if baselines:
            scored[f"{split}_baselines"] = baselines
        _print(f"best checkpoint on {split} ({len(examples)} examples): {_format(metrics)}"
               + (f"; baselines {_format(baselines)}" if baselines else ""))
        return scored

    def class_report(self, split: str, examples: list, predictions: list) -> dict:
        """``{split}_per_class`` and ``{split}_confusion`` (drawn as ``confusion-{split}.png``)
        for tasks with classes."""
        report = self.task.report(examples, predictions)
        if not report:
            return {}
        scored = {f"{split}_per_class": report["per_class"]}
        if "confusion" in report:
            scored[f"{split}_confusion"] = report["confusion"]
            plot_confusion(report["confusion"]["matrix"], report["confusion"]["labels"],
                           self.folder / f"confusion-{split}.png",
                           f"{self.task.name} {split}: {self.settings.model} (seed {self.seed})")
        return scored

    def tune_best(self, model) -> dict | None:
        """The task's decision options (a multi-label threshold) tuned on the best checkpoint's
        validation predictions, and written into its ``task.json`` for evaluate and predict."""
        if not (self.task.tunes and self.validation_examples):
            return None
        _, predictions = self.evaluate_on(model, "validation")
        tuned = self.task.tune(self.validation_examples, predictions)
        path = self.folder / "best" / TASK_FILE
        files.write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **tuned})
        self.best_validation = None  # scored again with the tuned options
        _print(f"tuned on validation: {_format(tuned)}")
        return tuned

    def window_report(self) -> dict:
        """For tasks with --doc-stride: per split, how many documents needed more than one
        window."""
        if not getattr(self.task, "doc_stride", None):
            return {}
        splits = {"train": self.features}
        for split, examples in (("validation", self.validation_examples),
                                ("test", self.test_examples)):
            if examples:
                splits[split] = self.task.encode(examples, self.tokenizer)
        counts = {split: window_counts(features) for split, features in splits.items()}
        _print("documents in more than one window: " + ", ".join(
            f"{split} {c['multi_window_documents']} of {c['documents']}"
            for split, c in counts.items()))
        return {"windows": counts}


def train_epoch(trainer: Trainer, task: Task, features: list[dict], batch_size: int, *,
                seed: int, log: MetricsLog | None = None, step: int = 0, epoch: int = 1,
                log_every: int = 20, progress: bool = True, stop: GracefulStop | None = None,
                start: int = 0, window: list[float] | None = None) -> int:
    """One pass over ``features`` in an order fixed by ``seed``, from its batch ``start`` (a
    resumed epoch); returns the global step. ``window`` keeps the losses not logged yet."""
    n_batches = math.ceil(len(features) / batch_size)
    bar = tqdm(itertools.islice(batches(features, batch_size, seed), start, None),
               initial=start, total=n_batches, desc=f"epoch {epoch}", disable=not progress,
               mininterval=2, leave=False)
    recent = [] if window is None else window
    for number, chunk in enumerate(bar, start + 1):
        _, loss = trainer.step([task.collate(chunk, length_multiple(trainer.precision))])
        step += 1
        recent.append(loss)
        if step % log_every == 0 or number == n_batches:  # the epoch's last window too
            mean = float(np.mean(recent))
            bar.set_postfix(loss=f"{mean:.4f}")
            if log is not None:
                log.write(step=step, epoch=epoch, loss=mean,
                          lr=trainer.scheduler.get_last_lr()[0])
            recent.clear()
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


STRUCTURED_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".tab", ".conll"}


def _structured(path: Path) -> bool:
    """Whether ``path`` is a file in a task's format (by its name, any case, compression
    aside) rather than raw lines of text."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2")]
    return bool(suffixes) and suffixes[-1] in STRUCTURED_SUFFIXES


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
        if _structured(path):
            examples = task.read(path, labelled=False)
        else:
            lines = list(text_lines(path, keepends=False))
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
