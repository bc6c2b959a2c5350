"""The paper's second way to use BERT (section 5.3): feature-based, the encoder frozen.

`bertkit finetune --feature-based` runs the pre-trained encoder once over every split, caches
the features on disk, and trains only a small task model on them:

- features come from `Embedder`'s exact fast path (length-sorted batches, padding skipped, layers
  above the deepest chosen one not run), fp32 unless ``--precision bf16`` asks for bf16;
- they are cached under ``$BERTKIT_CACHE/features/KEY/`` as ``.npy`` files read memory-mapped;
  KEY hashes the encoder's weights (the tensors themselves, so a copy of a checkpoint hits and a
  random init never does), the config fields its forward pass reads, the layer choice, the
  pooling, the precision and the ids of the encoded inputs, so more epochs, seeds and
  task-model settings cost only the task model; the cache is kept under
  ``--feature-cache-gb`` by evicting the least recently used entries;
- layer choices: the paper's strategies (`bertkit.embeddings.STRATEGIES`), a list of
  hidden-state indices, or ``weighted``: every layer is cached and the task model learns a
  softmax-weighted sum of them and a scale (ELMo's scalar mix);
- task models: a linear layer (default) or an MLP on the pooled vector for classification,
  regression and multiple choice (one score per choice); the paper's two-layer BiLSTM plus a
  linear layer for tagging (labels on first sub-tokens, as in fine-tuning); start/end scores
  per token for QA. The pooled vector is the mean of the chosen features over the real tokens
  (``--pooling cls``: the [CLS] token's); the pooler is part of the frozen encoder and is not
  used.

Numbers beside the text (``--feature-fields age,price``, both approaches): `WithNumbers` reads the
columns, standardises them with training statistics saved with the model, and the output layer
(or MLP) sees [pooled text vector, numbers].

A run saves ``OUT/best/`` with the task model (``head.safetensors``), the tokenizer and
``task.json``, which refers to the encoder's checkpoint folder and the sha256 of its weights (an
encoder that is no folder, a random init, is saved in ``encoder/``). `load_finetuned`,
``evaluate`` and ``predict`` (`bertkit.finetune`) load it as a `FeaturePipeline`, which computes
the same features on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import os
import reprlib
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import files
from .checkpoint import init_skipped, read_weights, skipping_init
from .config import PRESETS, BertConfig
from .embeddings import (
    STRATEGIES,
    Embedder,
    combine_layers,
    length_sorted_batches,
    padded,
    pool,
)
from .finetune import (
    RESULTS_FILE,
    TASK_FILE,
    FinetuneRun,
    WeightedLoss,
    _print,
    checkpoint_dir,
    class_weights,
    run_model,
    start_output,
)
from .model import BertForSequenceClassification, BertModel, Output
from .settings import SettingsError
from .sources import cache_dir
from .tasks.base import IGNORE_INDEX, DataError, read_records
from .tokenizer import BertTokenizer
from .training import build_trainer, seed_everything

logger = logging.getLogger("bertkit")

# What the task model sees, by task family: one pooled vector, one per choice, or every token.
KINDS = {"classification": "sequence", "pair-classification": "sequence",
         "regression": "sequence", "multi-label": "sequence", "multiple-choice": "choice",
         "token-classification": "token", "question-answering": "span"}
NUMBER_TASKS = ("classification", "pair-classification", "regression", "multi-label")
WEIGHTED = "weighted"
TASK_MODELS = ("linear", "mlp", "bilstm")
POOLINGS = ("mean", "cls")
DEFAULT_TASK_LR = {"bilstm": 1e-2}  # others 1e-3 (measured on wsj-pos and rt-polarity)
DEFAULT_HIDDEN = {"mlp": 512, "bilstm": 768}  # the paper's BiLSTM is 768 wide
DEFAULT_DROPOUT = 0.1
FEATURE_OPTIONS = ("layers", "combine", "pooling", "task_model", "task_hidden", "task_lr",
                   "feature_cache")
ENCODER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
# BertConfig fields the frozen encoder's features do not depend on: the task head's labels and
# loss, dropout (off while features are computed; --dropout sets it per run), initialisation;
# config.json's other keys (``extra``: transformers_version ...) are never read by the model.
NOT_IN_FEATURES = ("id2label", "problem_type", "architectures", "hidden_dropout_prob",
                   "attention_probs_dropout_prob", "classifier_dropout", "initializer_range",
                   "extra")
FEATURES_FILE, OFFSETS_FILE, META_FILE = "features.npy", "offsets.npy", "meta.json"
HEAD_FILE, ENCODER_DIR = "head.safetensors", "encoder"
MODE = "feature-based"
# Sequences the encoder has run on in this process: a cache hit adds nothing (tests read it).
COMPUTED = {"sequences": 0}


# --------------------------------------------------------------------------------------------
# Settings


def layer_choice(text: str) -> str | list[int]:
    """``--layers`` as a strategy name, ``weighted``, or a list of hidden-state indices."""
    if text == WEIGHTED or text in STRATEGIES:
        return text
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices:
        raise SettingsError(f"--layers {text!r}: choose one of {', '.join(STRATEGIES)}, "
                            f"{WEIGHTED}, or hidden-state indices such as --layers=-1 or "
                            "--layers=-4,-3,-2,-1.")
    return indices


def features_config(config: BertConfig) -> dict:
    """The fields of an encoder's config its features depend on."""
    return {name: value for name, value in asdict(config).items() if name not in NOT_IN_FEATURES}


def task_body(task_model: str | None, kind: str | None) -> str:
    """The task model's body: the one asked for, else the paper's BiLSTM for tagging and a
    linear layer alone for the rest."""
    return task_model or ("bilstm" if kind == "token" else "linear")


def _differs_from_default(settings, name: str) -> bool:
    """Whether a setting with a default of its own (so None cannot say "not given") was set
    to another value."""
    default = next(spec.default for spec in fields(settings) if spec.name == name)
    return getattr(settings, name) != default


def check_settings(settings) -> None:
    """Refuse feature options that cannot apply, before the run folder is touched."""
    if settings.feature_fields:
        if settings.task not in NUMBER_TASKS:
            raise SettingsError(f"--feature-fields adds numbers to {', '.join(NUMBER_TASKS)}; "
                                f"the {settings.task} task has no pooled vector to add them to.")
        if len(set(settings.feature_fields)) < len(settings.feature_fields):
            raise SettingsError(f"--feature-fields names a field twice: {settings.feature_fields}")
        label_field = settings.build_task().options()["label_field"]
        if label_field in settings.feature_fields:
            raise SettingsError(f"--feature-fields names {label_field!r}, the label field: a "
                                "model given its label as an input learns nothing it can "
                                "predict with. Leave it out of --feature-fields.")
    if not settings.feature_based:
        given = [name for name in FEATURE_OPTIONS if getattr(settings, name) is not None]
        if _differs_from_default(settings, "feature_cache_gb"):
            given.append("feature_cache_gb")
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise SettingsError(f"{flags}: options of the feature-based approach; add "
                                "--feature-based (feature_based=True).")
        return
    layers = settings.layers or "last"
    layer_choice(layers)
    if settings.combine is not None and (layers == WEIGHTED or layers in STRATEGIES):
        named = f"--layers {layers}" if settings.layers else "--layers last (the default)"
        own = ("learns its own mix of every layer" if layers == WEIGHTED
               else "is a strategy with its own combination")
        raise SettingsError(f"--combine {settings.combine} applies to a list of --layers "
                            f"indices; {named} {own}: leave --combine out, or give indices such "
                            "as --layers=-4,-3,-2,-1.")
    kind = KINDS.get(settings.task)
    if settings.task_model == "bilstm" and kind not in ("token", "span"):
        raise SettingsError("--task-model bilstm runs over tokens: it is for "
                            "token-classification and question-answering; use linear or mlp.")
    if settings.task_hidden is not None and task_body(settings.task_model, kind) == "linear":
        which = ("--task-model linear" if settings.task_model
                 else f"the {settings.task} default, linear")
        raise SettingsError(f"--task-hidden sizes an mlp or bilstm task model, but this run's is "
                            f"{which}: add --task-model mlp, or leave --task-hidden out.")
    if settings.search:
        raise SettingsError("--search varies fine-tuning's --lr; with --feature-based each run "
                            "costs only the task model: run the --task-lr values you want.")
    # Only a changed --lr can be told apart: every saved run's settings record the default.
    if _differs_from_default(settings, "lr"):
        raise SettingsError(f"--lr {settings.lr:g} is fine-tuning's learning rate; the "
                            "feature-based task model trains at --task-lr (1e-3; 1e-2 for the "
                            f"BiLSTM): give --task-lr {settings.lr:g} instead.")
    if settings.precision == "fp16":
        raise SettingsError("feature-based features are computed in fp32 (exact) or bf16 "
                            "(--precision bf16).")


@dataclass
class FeatureSpec:
    """Which features a run caches and its task model reads (saved in ``task.json``)."""

    layers: str = "last"
    combine: str = "sum"  # for a list of indices
    pooling: str = "mean"  # sequence tasks; token tasks keep every token
    precision: str = "fp32"  # of the encoder; "auto" means fp32 here, bf16 is opt-in

    @classmethod
    def from_settings(cls, settings) -> FeatureSpec:
        return cls(settings.layers or "last", settings.combine or "sum",
                   settings.pooling or "mean", "bf16" if settings.precision == "bf16" else "fp32")


# --------------------------------------------------------------------------------------------
# Numbers beside the text

# The output layer multiplies the standardised numbers by NUMBERS_GAIN and its weights, and
# regression squares the result, in float32 (largest 3.4e38): farther out is refused.
MAX_STANDARD_DEVIATIONS = 1e12


def read_number(record: dict, name: str, where: str) -> float:
    """A finite number from ``record[name]``, or a DataError naming file:line:field."""
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        present = ", ".join(repr(k) for k in record) or "none"
        raise DataError(f"{where}:{name}: the value is missing (fields: {present}); "
                        "--feature-fields needs a number in every row.")
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            number = math.inf
        except ValueError:
            pass
    shown = reprlib.repr(value)  # a long text or integer is cut in the middle
    if number is None:
        raise DataError(f"{where}:{name}: {shown} is not a number; give a plain number such as "
                        "1234.5 or 0.12 (no thousands separators, %, units or true/false).")
    if not math.isfinite(number):
        raise DataError(f"{where}:{name}: {shown} is not a finite number (NaN, infinite, or "
                        "past the float range, ±1.8e308).")
    return number


class _Wrapped:
    """A task family with some steps replaced; everything else is the wrapped task's."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)


class WithNumbers(_Wrapped):
    """Classification, pair classification or regression whose examples also carry numeric
    columns of the same CSV/TSV/JSONL rows: standardised with the training split's mean and
    standard deviation (saved in ``task.json``), they go into the batch as ``numbers``."""

    def __init__(self, task, fields: list[str], mean=None, std=None):
        super().__init__(task)
        self.fields, self.mean, self.std = list(fields), mean, std

    @classmethod
    def from_options(cls, task, options: dict) -> WithNumbers:
        return cls(task, options["feature_fields"], options["feature_mean"],
                   options["feature_std"])

    @property
    def model_class(self):
        return numbers_model(len(self.fields))

    def options(self) -> dict:
        return {**self.task.options(), "feature_fields": self.fields, "feature_mean": self.mean,
                "feature_std": self.std}

    def prepare(self, train_examples: list) -> None:
        values = np.array([e.numbers for e in train_examples], dtype=np.float64)
        # Statistics of the values over the power of two at or below each column's largest
        # magnitude: the sums and squares of values past 1e154 overflow to infinity, and
        # dividing by a power of two rounds nothing.
        scale = np.ldexp(1.0, np.frexp(np.abs(values).max(0))[1] - 1)
        mean, std = (values / scale).mean(0) * scale, (values / scale).std(0) * scale
        # Rounding leaves the std of one value repeated (0.1) at 1e-17, not 0: another value
        # later would be blown up 1e16 times. Such a column is centred and left unscaled.
        constant = values.min(0) == values.max(0)
        for column in np.flatnonzero(constant):
            logger.warning("--feature-fields %s: %g in every training row; the model cannot "
                           "learn anything from it.", self.fields[column], values[0, column])
        self.mean = np.where(constant, values[0], mean).tolist()
        self.std = np.where(constant, 1.0, std).tolist()
        self.task.prepare(train_examples)

    def read(self, path, labelled: bool = True) -> list:
        examples = self.task.read(path, labelled)
        records = dict(read_records(path))
        for example in examples:
            example.numbers = [read_number(records[example.where], name, example.where)
                               for name in self.fields]
        if self.mean is not None:  # refused now, not when the split is scored after an epoch
            for example in examples:
                self.standardised(example)
        return examples

    def standardised(self, example) -> list[float]:
        """The example's numbers in standard deviations from the training mean; one too far
        out for the model's float32 arithmetic is refused, naming its file:line:field."""
        with np.errstate(over="ignore"):  # an overflow is refused below
            distances = (np.asarray(example.numbers) - self.mean) / self.std
        for name, value, distance, mean, std in zip(self.fields, example.numbers, distances,
                                                    self.mean, self.std, strict=True):
            if not abs(distance) <= MAX_STANDARD_DEVIATIONS:
                raise DataError(
                    f"{example.where}:{name}: {value:g} is {abs(distance):.3g} standard "
                    f"deviations from the training mean {mean:g} (std {std:g}), past the "
                    f"{MAX_STANDARD_DEVIATIONS:g} the model's arithmetic holds: check the "
                    "value's units, or train on data that holds such values.")
        return distances.tolist()

    def read_lines(self, lines, source: str, tokenizer=None) -> list:
        raise DataError(f"{source}: this model also reads the numeric fields "
                        f"{', '.join(self.fields)}: give a CSV, TSV or JSONL file with them.")

    def encode(self, examples: list, tokenizer, label2id: dict | None = None) -> list[dict]:
        features = self.task.encode(examples, tokenizer, label2id)
        standardised = [self.standardised(example) for example in examples]
        for feature in features:
            feature["numbers"] = standardised[feature["example"]]
        return features

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        numbers = torch.tensor([f["numbers"] for f in features], dtype=torch.float32)
        return {**self.task.collate(features, pad_to_multiple_of), "numbers": numbers}

    def to_json(self, example, prediction) -> dict:
        return {**self.task.to_json(example, prediction),
                **dict(zip(self.fields, example.numbers, strict=True))}


def task_loss(logits, labels, problem_type: str | None):
    """The task's loss (its ``problem_type``): mean squared error for regression, binary
    cross-entropy per label for multi-label, else cross-entropy ignoring -100."""
    if labels is None:
        return None
    if problem_type == "regression":  # float32 targets, as `BertForSequenceClassification`'s
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


class BertForSequenceClassificationWithNumbers(BertForSequenceClassification):
    """Fine-tuning with numbers: BertForSequenceClassification whose output layer reads
    [pooler_output, standardised numbers]. `numbers_model` sets how many numbers.

    A fresh weight barely moves at BERT's learning rates (5e-5 for a few hundred steps: ~0.02),
    so the numbers' weights are reparametrised to learn ``NUMBERS_GAIN`` times faster: the
    numbers enter multiplied by it and their weights start at zero (Adam's steps are about the
    learning rate whatever the gradient's scale)."""

    num_numbers = 0
    NUMBERS_GAIN = 100.0

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size + self.num_numbers, config.num_labels)
        self.init_weights(only={"classifier.weight", "classifier.bias"})

    def init_weights(self, only: set[str] | None = None):
        super().init_weights(only)
        if not init_skipped() and (only is None or "classifier.weight" in only):
            with torch.no_grad():
                self.classifier.weight[:, self.config.hidden_size:] = 0.0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                numbers=None, output_hidden_states=False, output_attentions=False,
                skip_padding=False, return_dict=None) -> Output | tuple:
        out, labels = self._encode(input_ids, attention_mask, token_type_ids, labels,
                                   output_hidden_states, output_attentions, skip_padding)
        pooled = self.dropout(out.pooler_output)  # the numbers are never dropped out
        gained = self.NUMBERS_GAIN * numbers.to(pooled.dtype)
        logits = self.classifier(torch.cat([pooled, gained], dim=-1))
        return self._head_output(out, return_dict, logits=logits,
                                 loss=task_loss(logits, labels, self.config.problem_type))


@functools.cache
def numbers_model(count: int) -> type:
    """The numbers head for ``count`` numbers (a class, so ``from_pretrained`` builds it)."""
    base = BertForSequenceClassificationWithNumbers
    return type(base.__name__, (base,), {"num_numbers": count})


# --------------------------------------------------------------------------------------------
# The frozen encoder's features


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's tensors (names, shapes, dtypes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                      .numpy().data)
    return digest.hexdigest()


def sequences_of(features: list[dict]) -> tuple[list, list, list[tuple[int, int]]]:
    """Every encoder input of a task's features (a multiple-choice feature has one per choice):
    (input ids, segment ids, (first sequence, count) per feature)."""
    ids, types, spans = [], [], []
    for feature in features:
        several = bool(feature["input_ids"]) and isinstance(feature["input_ids"][0], list)
        rows = feature["input_ids"] if several else [feature["input_ids"]]
        spans.append((len(ids), len(rows)))
        ids.extend(rows)
        types.extend(feature["token_type_ids"] if several else [feature["token_type_ids"]])
    return ids, types, spans


def data_sha256(ids: list[list[int]], types: list[list[int]]) -> str:
    """sha256 of the encoded inputs: what the features are computed from."""
    digest = hashlib.sha256()
    for rows in (ids, types):
        digest.update(np.asarray([len(r) for r in rows], dtype=np.int64).tobytes())
        digest.update(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64).tobytes())
    return digest.hexdigest()


class FeatureEncoder:
    """The frozen encoder as `Embedder` runs it (its encoder view, device, precision and
    batching), giving per-token features of the chosen layers ([B, T, D], or [B, T, L+1, H]
    for ``weighted``), mean- or [CLS]-pooled for the pooled kinds."""

    def __init__(self, encoder: BertModel, tokenizer, spec: FeatureSpec, kind: str, device=None):
        self.spec, self.kind = spec, kind
        self.weighted = spec.layers == WEIGHTED
        depth, hidden = encoder.config.num_hidden_layers, encoder.config.hidden_size
        chosen = list(range(depth + 1)) if self.weighted else layer_choice(spec.layers)
        self.embedder = Embedder(encoder, tokenizer=tokenizer, layers=chosen,
                                 combine=spec.combine, pooling="mean", normalize=False,
                                 precision=spec.precision, device=device)
        self.indices, self.combine = self.embedder.layers, self.embedder.combine
        self.shape = (len(self.indices), hidden) if self.weighted else (self.embedder.dim,)
        self.pooled = kind in ("sequence", "choice")

    @property
    def encoder(self) -> BertModel:
        return self.embedder.model

    def key(self) -> dict:
        """What the features depend on besides the weights and the inputs: the encoder's config
        (the same weights with another activation, layer-norm epsilon or head count compute
        other features) and the layer choice, pooling and precision."""
        return {"encoder_config": features_config(self.encoder.config),
                "layers": list(self.indices),
                "combine": WEIGHTED if self.weighted else self.combine,
                "reduce": self.spec.pooling if self.pooled else "tokens",
                "precision": self.spec.precision}

    def features(self, input_ids, mask, token_type_ids) -> torch.Tensor:
        """float32 features of a padded batch, zero at padding, pooled for the pooled kinds."""
        embedder = self.embedder
        out = embedder._forward(input_ids, mask, token_type_ids=token_type_ids,
                                output_hidden_states=True,
                                skip_padding=embedder._worth_packing(mask))
        hidden = out.hidden_states
        x = (torch.stack([hidden[i] for i in self.indices], dim=2) if self.weighted
             else combine_layers(hidden, self.indices, self.combine)).float()
        x = x * mask.to(x.dtype).view(*mask.shape, *[1] * (x.dim() - 2))
        if not self.pooled:
            return x
        batch, length = mask.shape
        return pool(x.reshape(batch, length, -1), mask, self.spec.pooling).view(batch, *x.shape[2:])

    @torch.inference_mode()
    def write(self, folder: Path, ids: list[list[int]], types: list[list[int]]) -> None:
        """Compute every sequence's features into ``folder`` (memory stays one batch)."""
        lengths = np.asarray([len(row) for row in ids])
        rows = len(ids) if self.pooled else int(lengths.sum())
        target = np.lib.format.open_memmap(folder / FEATURES_FILE, mode="w+", dtype=np.float32,
                                           shape=(rows, *self.shape))
        offsets = None if self.pooled else np.concatenate([[0], np.cumsum(lengths)])
        if offsets is not None:
            np.save(folder / OFFSETS_FILE, offsets)
        device = self.embedder.device
        for batch in length_sorted_batches(lengths, self.embedder.batch_tokens,
                                           padded=not self.embedder._in_runs()):
            input_ids, mask = padded([ids[i] for i in batch])
            segments, _ = padded([types[i] for i in batch])
            values = self.features(input_ids.to(device), mask.to(device),
                                   segments.to(device)).cpu().numpy()
            if offsets is None:
                target[batch] = values
            else:
                for row, i in enumerate(batch):
                    target[offsets[i]:offsets[i + 1]] = values[row, :lengths[i]]
            COMPUTED["sequences"] += len(batch)
        target.flush()

    def size(self, ids: list[list[int]]) -> int:
        rows = len(ids) if self.pooled else sum(map(len, ids))
        return rows * int(np.prod(self.shape)) * 4


# --------------------------------------------------------------------------------------------
# The cache


class FeatureStore:
    """One cache entry, memory-mapped: [sequences, ...] pooled features, or [tokens, ...] with
    each sequence's token offsets."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.array = np.load(folder / FEATURES_FILE, mmap_mode="r")
        offsets = folder / OFFSETS_FILE
        self.offsets = np.load(offsets) if offsets.is_file() else None

    def batch(self, spans: list[tuple[int, int]], width: int = 0) -> dict[str, torch.Tensor]:
        """The features of a batch of task features: [B, count, ...] pooled, or per token
        [B, T, ...] padded with zeros plus ``feature_mask`` (T: the longest, or ``width`` where
        that is more, the width of the task's padded batch)."""
        if self.offsets is None:
            rows = [first + j for first, count in spans for j in range(count)]
            values = torch.from_numpy(np.asarray(self.array[rows]))
            return {"features": values.view(len(spans), spans[0][1], *values.shape[1:])}
        bounds = [(int(self.offsets[first]), int(self.offsets[first + 1])) for first, _ in spans]
        width = max(width, *(end - start for start, end in bounds))
        values = torch.zeros(len(spans), width, *self.array.shape[1:])
        mask = torch.zeros(len(spans), width, dtype=torch.long)
        for row, (start, end) in enumerate(bounds):
            values[row, :end - start] = torch.from_numpy(np.array(self.array[start:end]))
            mask[row, :end - start] = 1
        return {"features": values, "feature_mask": mask}


class FeatureCache:
    """Feature entries under ``$BERTKIT_CACHE/features``, at most ``limit_gb`` in all: the least
    recently used entries are evicted to make room (never one this process is using)."""

    def __init__(self, limit_gb: float = 10.0, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.limit = int(limit_gb * 1e9)
        self.in_use: set[Path] = set()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, folder) of every complete entry, least recently used first."""
        found = []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                meta = folder / META_FILE
                if not folder.name.startswith(".") and meta.is_file():
                    size = sum(p.stat().st_size for p in folder.iterdir())
                    found.append((meta.stat().st_mtime, size, folder))
        return sorted(found)

    def fetch(self, key: str) -> FeatureStore | None:
        folder = self.root / key
        if not (folder / META_FILE).is_file():
            return None
        _touch(folder / META_FILE)
        self.in_use.add(folder)
        return FeatureStore(folder)

    def store(self, key: str, meta: dict, size: int, write) -> FeatureStore:
        """A new entry: room made, ``write(folder)`` fills it, then it is renamed into place."""
        if size > self.limit:
            raise ValueError(f"these features need {size / 1e9:.2f} GB, more than the feature "
                             f"cache may hold ({self.limit / 1e9:g} GB): raise "
                             "--feature-cache-gb.")
        self.evict(self.limit - size)
        folder = self.root / key
        with files.atomic_path(folder) as staging:
            staging.mkdir(parents=True)
            write(staging)
            (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _touch(folder / META_FILE)
        self.in_use.add(folder)
        return FeatureStore(folder)

    def evict(self, budget: int) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, folder in entries:
            if total <= budget:
                break
            if folder not in self.in_use:
                files.remove(folder)
                total -= size
                logger.info("feature cache: evicted %s (%.1f MB)", folder.name, size / 1e6)

    def summary(self) -> dict:
        entries = self.entries()
        return {"folder": str(self.root), "entries": len(entries),
                "bytes": sum(size for _, size, _ in entries), "limit_bytes": self.limit}


def _touch(path: Path) -> None:
    """Mark an entry used now (to the nanosecond: the file system's own clock is coarser)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


# --------------------------------------------------------------------------------------------
# Task models


class LayerMix(nn.Module):
    """ELMo's scalar mix over stacked layers (dim -2): scale * sum_l softmax(w)_l h_l."""

    def __init__(self, layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * torch.einsum("...ld,l->...d", x, self.weights.softmax(0))


class BiLSTM(nn.Module):
    """The paper's tagger body: a two-layer bidirectional LSTM over the real tokens."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(width, hidden, num_layers=2, bidirectional=True, batch_first=True,
                            dropout=dropout)

    def forward(self, x, mask):  # [B, T, D], [B, T] -> [B, T, 2 * hidden]
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


class TaskModel(nn.Module):
    """What the feature-based approach trains: (the layer mix), dropout, [features, numbers],
    a body (none, an MLP or the BiLSTM; dropout after it) and the output layer. ``spec`` (in
    ``task.json``): kind, width, layers (mixed, 0 for none), body, hidden, outputs, numbers,
    dropout, problem_type (the loss, as `task_loss` reads it).

    Numbers enter multiplied by ``NUMBERS_GAIN`` and their weights start at zero: they learn
    that much faster than the text's (see `BertForSequenceClassificationWithNumbers`)."""

    NUMBERS_GAIN = 10.0

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self.mix = LayerMix(spec["layers"]) if spec["layers"] else None
        width, hidden = spec["width"] + spec["numbers"], spec["hidden"]
        self.body = None
        if spec["body"] == "mlp":
            self.body = nn.Sequential(nn.Linear(width, hidden), nn.GELU())
            width = hidden
        elif spec["body"] == "bilstm":
            self.body = BiLSTM(width, hidden, spec["dropout"])
            width = 2 * hidden
        self.dropout = nn.Dropout(spec["dropout"])
        self.output = nn.Linear(width, spec["outputs"])
        if spec["numbers"]:
            reader = self.output if self.body is None else self.body[0]
            with torch.no_grad():
                reader.weight[:, spec["width"]:] = 0.0

    def forward(self, features, feature_mask=None, numbers=None, labels=None,
                start_positions=None, end_positions=None) -> Output:
        x = self.dropout(features if self.mix is None else self.mix(features))
        if numbers is not None:  # never dropped out
            x = torch.cat([x, self.NUMBERS_GAIN * numbers.to(x.dtype)], dim=-1)
        if isinstance(self.body, BiLSTM):
            x = self.dropout(self.body(x, feature_mask))
        elif self.body is not None:
            x = self.dropout(self.body(x))
        logits = self.output(x)
        if self.spec["kind"] == "span":  # start and end scores over the real tokens
            logits = logits.masked_fill(~feature_mask.bool()[..., None], -1e4)
            start, end = logits.unbind(-1)
            loss = None
            if start_positions is not None:
                loss = (F.cross_entropy(start, start_positions)
                        + F.cross_entropy(end, end_positions)) / 2
            return Output(loss=loss, start_logits=start.contiguous(), end_logits=end.contiguous())
        if self.spec["kind"] == "choice":
            logits = logits.squeeze(-1)  # [B, C]: one score per choice
        return Output(loss=task_loss(logits, labels, self.spec["problem_type"]), logits=logits)

    def layer_weights(self) -> list[float] | None:
        """The learned share of each mixed layer (0 = embeddings), or None."""
        if self.mix is None:
            return None
        return [round(float(w), 4) for w in self.mix.weights.detach().softmax(0).cpu()]


class FeaturePipeline(nn.Module):
    """The frozen encoder's features, then the task model, on a task's own padded batches:
    the model `load_finetuned` gives for a feature-based run. It runs in the precision its
    features were trained with, whatever autocast is around it."""

    def __init__(self, extractor: FeatureEncoder, head: TaskModel, config: BertConfig):
        super().__init__()
        self.extractor, self.config = extractor, config
        self.encoder, self.head = extractor.encoder, head

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, numbers=None,
                **labels) -> Output:
        shape = input_ids.shape  # [B, T], or [B, C, T] for multiple choice
        flat = input_ids.reshape(-1, shape[-1])
        mask = (torch.ones_like(flat) if attention_mask is None
                else attention_mask.reshape(-1, shape[-1]))
        types = (torch.zeros_like(flat) if token_type_ids is None
                 else token_type_ids.reshape(-1, shape[-1]))
        with torch.autocast(flat.device.type, enabled=False):
            x = self.extractor.features(flat, mask, types)
            if len(shape) == 3:
                x = x.view(shape[0], shape[1], *x.shape[1:])
            return self.head(x, feature_mask=mask, numbers=numbers, **labels)


class CachedTask(_Wrapped):
    """A task whose training and evaluation batches read cached features: the labels (and
    numbers) still come from the task's own collate."""

    def __init__(self, task, kind: str):
        super().__init__(task)
        self.kind = kind

    def collate(self, features: list[dict], pad_to_multiple_of: int = 1
                ) -> dict[str, torch.Tensor]:
        batch = self.task.collate(features, pad_to_multiple_of)
        cached = features[0]["store"].batch([f["rows"] for f in features],
                                            batch["input_ids"].shape[-1])
        batch = {k: v for k, v in batch.items() if k not in ENCODER_INPUTS}
        if self.kind == "sequence":
            cached["features"] = cached["features"][:, 0]
        return {**batch, **cached}


# --------------------------------------------------------------------------------------------
# Saving and loading


def save_feature_model(directory: Path, task, head: TaskModel, encoder: BertModel, tokenizer,
                       options: dict) -> None:
    """``directory``: head.safetensors, the tokenizer, task.json and, for an encoder that is no
    checkpoint folder (random init), encoder/; renamed into place when complete. A checkpoint
    folder's encoder is referenced in task.json (its path and weights' sha256), not copied; an
    encoder/ already saved with the same weights is linked, not written again."""
    previous, reference = directory / ENCODER_DIR, options["encoder"]
    with files.atomic_path(directory) as staging:
        staging.mkdir(parents=True)
        if reference["path"] is not None:
            pass  # referenced, not copied
        elif _saved_sha256(directory) == reference["sha256"] and previous.is_dir():
            (staging / ENCODER_DIR).mkdir()
            for path in previous.iterdir():
                _link_or_copy(path, staging / ENCODER_DIR / path.name)
        else:
            encoder.save_pretrained(staging / ENCODER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  staging / HEAD_FILE)
        tokenizer.save_pretrained(staging)
        files.write_json(staging / TASK_FILE, {**task.options(), **options})


def _saved_sha256(directory: Path) -> str | None:
    path = directory / TASK_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("encoder", {}).get("sha256")
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def load_encoder(folder: Path) -> BertModel:
    """The saved encoder, exactly as saved (with a pooler only if it had one)."""
    config = BertConfig.from_json_file(folder / "config.json")
    state = read_weights(folder)
    with skipping_init():
        encoder = BertModel(config, add_pooling_layer=any(k.startswith("pooler.") for k in state))
    encoder.load_state_dict(state, strict=True)
    return encoder.eval().requires_grad_(False)


def referenced_encoder(reference: dict) -> BertModel:
    """The encoder a feature-based model refers to: its checkpoint folder, else (moved to
    another machine) the model name fetched again."""
    path = Path(reference["path"])
    if not (path / "config.json").is_file():
        path = checkpoint_dir(reference["model"])
    return BertModel.from_pretrained(path).eval().requires_grad_(False)


def load_feature_model(directory: Path, task, options: dict, device=None):
    """(task, `FeaturePipeline`, tokenizer) of a feature-based ``best`` folder; the encoder's
    weights must be the ones it was trained on (sha256)."""
    tokenizer = BertTokenizer.from_pretrained(directory)
    reference = options["encoder"]
    encoder = (load_encoder(directory / ENCODER_DIR) if reference["path"] is None
               else referenced_encoder(reference))
    spec = options["task_model"]
    extractor = FeatureEncoder(encoder, tokenizer, FeatureSpec(**options["features"]),
                               spec["kind"], device)
    if weights_sha256(extractor.encoder) != reference["sha256"]:
        raise ValueError(f"{directory}: the encoder ({reference['path'] or ENCODER_DIR}) is not "
                         "the one this task model was trained on (its weights' sha256 differs).")
    trained_on = reference.get("config")  # absent from folders saved before it was recorded
    now = json.loads(json.dumps(features_config(encoder.config)))  # as task.json holds it
    if trained_on is not None and now != trained_on:
        changes = ", ".join(f"{name} {trained_on.get(name)!r} -> {now.get(name)!r}"
                            for name in sorted(set(now) | set(trained_on))
                            if now.get(name) != trained_on.get(name))
        raise ValueError(f"{directory}: the encoder ({reference['path'] or ENCODER_DIR}) has "
                         f"another config than the one this task model was trained on, which "
                         f"changes its features: {changes}.")
    head = TaskModel(spec)
    head.load_state_dict(load_file(directory / HEAD_FILE))
    config = replace(encoder.config, id2label={int(k): v for k, v in options["id2label"].items()})
    model = FeaturePipeline(extractor, head, config).to(extractor.embedder.device).eval()
    task.use_labels(config.id2label)
    return task, model, tokenizer


# --------------------------------------------------------------------------------------------
# The run


class FeatureRun(FinetuneRun):
    """One seed of the feature-based approach: `FinetuneRun`'s data, epochs, evaluation and
    best checkpoint, with the encoder frozen and only the task model trained, on features
    cached once per split."""

    mode = "feature-based training of"

    def __init__(self, settings, seed: int, folder: Path, final: Path | None = None):
        super().__init__(settings, seed, folder, final)  # data, task, tokenizer, encoder's model
        self.kind = KINDS[self.task.name]
        self.spec = FeatureSpec.from_settings(settings)
        self.precision = self.spec.precision
        self.id2label = self.model.config.id2label
        self.encoder = self.model.bert.eval().requires_grad_(False)
        self.extractor = FeatureEncoder(self.encoder, self.tokenizer, self.spec, self.kind,
                                        self.device)
        self.encoder_sha256 = weights_sha256(self.extractor.encoder)
        fresh = settings.random_init or settings.model in PRESETS  # no folder holds it
        self.encoder_reference = {
            "model": settings.model, "sha256": self.encoder_sha256,
            "config": features_config(self.encoder.config),
            "path": None if fresh else str(checkpoint_dir(settings.model).resolve())}
        self.cache = FeatureCache(settings.feature_cache_gb, settings.feature_cache)
        self.feature_report: list[dict] = []
        started = time.time()
        self.prepared = {"train": self.store_features(self.features, "train")}
        for split, examples in (("validation", self.validation_examples),
                                ("test", self.test_examples)):
            if examples:
                features = self.task.encode(examples, self.tokenizer, self.label2id)
                self.prepared[split] = self.store_features(features, split)
        self.feature_seconds = round(time.time() - started, 2)
        output_bias = self.task.output_bias(self.train_examples,
                                            [self.id2label[i] for i in range(len(self.id2label))])
        self.task = CachedTask(self.task, self.kind)
        body = self.head_spec()["body"]
        self.task_lr = settings.task_lr or DEFAULT_TASK_LR.get(body, 1e-3)
        seed_everything(seed)  # the task model's initial weights depend on it
        self.model = trained = start_output(TaskModel(self.head_spec()),
                                            output_bias).to(self.device)
        if settings.class_weights:
            trained = WeightedLoss(self.model, class_weights(
                settings.class_weights, [f["labels"] for f in self.features], self.label2id))
        # The run's optimiser settings at the task model's lr: a namespace, as `replace` would
        # check them again and refuse an --lr other than fine-tuning's with --feature-based.
        optimizer_settings = SimpleNamespace(**{**asdict(settings), "lr": self.task_lr})
        self.trainer = build_trainer(trained.to(self.device), optimizer_settings,
                                     self.steps_per_epoch * settings.epochs, device=self.device,
                                     precision="fp32")
        summary = self.cache.summary()
        _print(f"feature cache: {summary['entries']} entries, {summary['bytes'] / 1e9:.2f} of "
               f"{summary['limit_bytes'] / 1e9:g} GB in {summary['folder']}")

    def store_features(self, features: list[dict], split: str) -> list[dict]:
        """Features of one split from the cache (computed first if missing); each task
        feature learns where its rows are."""
        started = time.time()
        ids, types, spans = sequences_of(features)
        parts = {"version": 1, "encoder_sha256": self.encoder_sha256, **self.extractor.key(),
                 "data_sha256": data_sha256(ids, types)}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        store, hit = self.cache.fetch(key), True
        if store is None:
            hit, size = False, self.extractor.size(ids)
            meta = {**parts, "sequences": len(ids), "bytes": size, "created": time.time()}
            store = self.cache.store(key, meta, size,
                                     lambda folder: self.extractor.write(folder, ids, types))
        for feature, span in zip(features, spans, strict=True):
            feature["rows"], feature["store"] = span, store
        record = {"split": split, "sequences": len(ids), "key": key, "cache": "hit" if hit
                  else "miss", "bytes": store.array.nbytes,
                  "seconds": round(time.time() - started, 2)}
        self.feature_report.append(record)
        _print(f"features of {split}: {len(ids)} sequences, {record['bytes'] / 1e6:.1f} MB, "
               + ("read from the cache" if hit else f"computed in {record['seconds']} s"))
        return features

    def head_spec(self) -> dict:
        s = self.settings
        body = task_body(s.task_model, self.kind)
        return {"kind": self.kind, "width": self.extractor.shape[-1],
                "layers": len(self.extractor.indices) if self.extractor.weighted else 0,
                "body": body, "hidden": s.task_hidden or DEFAULT_HIDDEN.get(body, 0),
                "outputs": {"choice": 1, "span": 2}.get(self.kind, len(self.id2label)),
                "numbers": len(s.feature_fields or []),
                "dropout": DEFAULT_DROPOUT if s.dropout is None else s.dropout,
                "problem_type": self.task.problem_type}

    def evaluate_on(self, model, split: str) -> tuple[dict, list]:
        examples = self.validation_examples if split == "validation" else self.test_examples
        features = self.prepared[split]
        outputs = run_model(model, self.task, features, self.settings.eval_batch_size)
        predictions = self.task.decode(examples, features, outputs, self.id2label)
        return self.task.score(examples, predictions), predictions

    def save_best(self) -> None:
        options = {"mode": MODE, "features": asdict(self.spec), "task_model": self.head_spec(),
                   "id2label": {str(k): v for k, v in self.id2label.items()},
                   "encoder": self.encoder_reference}
        save_feature_model(self.folder / "best", self.task, self.model, self.encoder,
                           self.tokenizer, options)

    def load_best(self) -> TaskModel:
        head = TaskModel(self.head_spec())
        head.load_state_dict(load_file(self.folder / "best" / HEAD_FILE))
        self.best_head = head.to(self.device)
        return self.best_head

    def finish(self) -> dict:
        results = super().finish()
        after = weights_sha256(self.extractor.encoder)
        if after != self.encoder_sha256:  # the proof that the encoder stayed frozen
            raise RuntimeError("the frozen encoder's weights changed during feature-based "
                               "training; this is a bug.")
        results["lr"] = self.task_lr
        results["feature_based"] = {
            **asdict(self.spec), "task_model": self.head_spec(),
            "encoder": self.encoder_reference, "encoder_sha256_after": after,
            "features": self.feature_report, "feature_seconds": self.feature_seconds,
            "task_model_seconds": round(sum(r["epoch_seconds"] for r in self.history), 2),
            "layer_weights": self.best_head.layer_weights(), "cache": self.cache.summary()}
        files.write_json(self.folder / RESULTS_FILE, results)
        return results
