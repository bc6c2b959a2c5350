"""Pre-training: masked LM + next sentence prediction on examples built by ``bertkit.data``.

One step: a global batch of examples, split into micro-batches over ranks and accumulation, loss =
mean MLM cross-entropy over the predicted tokens + mean NSP cross-entropy (the paper's), AdamW with
warm-up then linear decay. The data position is part of every checkpoint, so ``resume`` continues
exactly where the run stopped: same examples, same masks, same random state.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import PRESETS, BertConfig
from .data import PretrainingDataset, example_stream, micro_batches
from .data.shards import TOKENIZER_FOLDER
from .device import autocast, choose_device, resolve_precision
from .model import BertForPreTraining
from .report import plot_metrics
from .settings import SettingsError, option
from .sources import resolve_pretrained
from .tokenizer import BertTokenizer
from .training import (
    Checkpoints,
    Distributed,
    GracefulStop,
    MetricsLog,
    OptimizerSettings,
    build_trainer,
    every_ranks_rng_states,
    init_distributed,
    restore_ranks_rng_states,
    seed_everything,
    truncate_metrics,
)

logger = logging.getLogger("bertkit")

SETTINGS_NAME = "pretrain_settings.json"
BUDGET_PROVISIONAL_STEPS = 1_000_000
# --sinusoidal-positions and --cooccurrence-embeddings start at 3x the initializer range: in the
# demo's recipe 1x gained less, sinusoids at 12x drowned the words (NSP at chance) and word vectors
# at 6x lost 3.9 points (README, "The demo's recipe").
START_SCALE = 3
# --cooccurrence-embeddings counts the tokens within this many places of each other, in (at most)
# this many tokens of the training text: enough for a vocabulary's neighbourhoods, in under a
# minute (BERT's 30,522 pieces at width 768: 53 s and 2.8 GB on 2 cores; the demo's: 5 s).
COOCCURRENCE_WINDOW, COOCCURRENCE_TOKENS = 2, 20_000_000
# --mimetic-attention's weights start at std MIMETIC_GAIN / sqrt(hidden size): 0.04 for `mini`,
# the best of those tried (README, "The demo's recipe"); W_v^T W_v and a token's attention score
# for itself then start the same at every width.
MIMETIC_GAIN = 0.64
# the options that choose a new model's starting weights (a preset's, not a checkpoint's)
NEW_MODEL_STARTS = ("mlm_bias_prior", "sinusoidal_positions", "cooccurrence_embeddings",
                    "mimetic_attention")


@dataclass
class PretrainSettings(OptimizerSettings):
    """Everything a run depends on; saved in the run folder and reloaded by ``resume``."""

    data: str = option(help="folder of examples written by `bertkit data pretrain` (with its "
                       "vocab)")
    out: str = option("runs/pretrain", "run folder: checkpoints, metrics.jsonl, curves.png, the "
                      "final model")
    model: str = option("mini", "a preset (tiny, mini, small, medium, base, large) or a "
                        "checkpoint folder to continue pre-training from")
    validation_data: str | None = option(None, "folder whose validation split is evaluated "
                                         "instead of --data's: the same corpus, seed and "
                                         "--validation-fraction, built another way (e.g. "
                                         "training examples masked at another rate)")
    phase2_data: str | None = option(None, "examples of length 512 used for the last "
                                     "--phase2-fraction of the steps")
    phase2_fraction: float = option(0.1, "share of the steps on --phase2-data", at_least=0,
                                    at_most=1)
    batch_size: int = option(32, "examples per optimisation step over all ranks", at_least=1)
    accumulation: int = option(1, "micro-batches per rank per step (gradient accumulation)",
                               at_least=1)
    steps: int | None = option(None, "optimisation steps (default: --epochs passes over the "
                               "data)", at_least=1)
    epochs: float = option(1.0, "passes over the data when --steps is not given", above=0)
    budget_minutes: float | None = option(None, "size the run to this many minutes, from the "
                                          "step time measured at the start", above=0)
    lr: float = option(1e-4, "peak learning rate", above=0)
    precision: str = option("auto", "auto (bf16 where the hardware has it), fp32, bf16, or "
                            "fp16 (CUDA)", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model")
    gradient_checkpointing: bool = option(False, "recompute each layer's activations in the "
                                          "backward pass: less memory, ~30% more time, the "
                                          "same gradients")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: this rank's GPU if any)")
    nsp: bool = option(True, "train next sentence prediction too (the paper's objective)")
    dropout: float = option(0.1, "hidden and attention dropout", at_least=0, at_most=1)
    mlm_bias_prior: bool = option(False, "a new model's MLM output bias starts at each token's "
                                  "log frequency among the training predictions, not at the "
                                  "paper's zero (a shorter early plateau in a short run)")
    sinusoidal_positions: bool = option(False, "a new model's position embeddings start at the "
                                        "Transformer's sinusoids (std 0.06) instead of the "
                                        "paper's random 0.02: offsets are told apart from the "
                                        "first step (a shorter plateau in a short run)")
    cooccurrence_embeddings: bool = option(False, "a new model's word embeddings start at word "
                                           "vectors of the training text (its tokens' "
                                           "co-occurrence statistics, std 0.06) instead of "
                                           "random ones: words used alike start close (a "
                                           "shorter plateau in a short run)")
    mimetic_attention: bool = option(False, "a new model's attention layers start with equal "
                                     "query and key weights and with output weights the "
                                     "negative transpose of the value weights: each token "
                                     "first attends to tokens like itself and near it "
                                     "(a shorter plateau in a short run)")
    eval_every: int = option(200, "steps between held-out evaluations", at_least=1)
    eval_examples: int = option(2048, "held-out examples per evaluation", at_least=1)
    log_every: int = option(10, "steps between metrics records", at_least=1)
    save_every: int = option(500, "steps between checkpoints", at_least=1)
    keep_checkpoints: int = option(3, "newest checkpoints kept", at_least=1)
    seed: int = option(12345, "random seed (data order, dropout, initialisation)")


# --------------------------------------------------------------------------------------------
# Measuring: accuracies on training batches and held-out data


def count_predictions(outputs, batch: dict, counts: Counter) -> None:
    """Add one batch's right and total masked-token (and NSP) predictions to ``counts``."""
    targets = batch["labels"][batch["labels"] != -100]
    logits = outputs["prediction_logits"]
    counts["mlm_right"] += (logits.argmax(-1).cpu() == targets.cpu()).sum().item()
    counts["mlm_total"] += targets.numel()
    if "next_sentence_label" in batch:
        guesses = outputs["seq_relationship_logits"].argmax(-1).cpu()
        counts["nsp_right"] += (guesses == batch["next_sentence_label"].cpu()).sum().item()
        counts["nsp_total"] += batch["next_sentence_label"].numel()


def accuracies(counts: Counter, prefix: str = "") -> dict:
    result = {f"{prefix}mlm_accuracy": counts["mlm_right"] / max(1, counts["mlm_total"])}
    if counts["nsp_total"]:
        result[f"{prefix}nsp_accuracy"] = counts["nsp_right"] / counts["nsp_total"]
    return result


@torch.no_grad()
def held_out_metrics(model, dataset, *, device, precision, batch_size=64,
                     max_examples=None) -> dict:
    """Held-out MLM loss (mean over predicted tokens), masked-token accuracy and NSP accuracy."""
    model.eval()
    count = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    counts, mlm_loss = Counter(), 0.0
    for start in range(0, count, batch_size):
        batch = dataset.collate([dataset[i] for i in range(start, min(count, start + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, precision):
            out = model(**batch)
        targets = batch["labels"][batch["labels"] != -100]
        logits = out["prediction_logits"].float()
        mlm_loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count_predictions(out, batch, counts)
    return {"val_mlm_loss": mlm_loss / max(1, counts["mlm_total"]),
            **accuracies(counts, "val_")}


def most_frequent_token_accuracy(train: PretrainingDataset,
                                 validation: PretrainingDataset) -> float:
    """Masked-token accuracy of always guessing the token most often masked in training: the
    floor a model that ignores the context reaches."""
    held_out = validation.masked_labels()
    if not len(held_out):
        return 0.0
    most_frequent = np.bincount(train.masked_labels()).argmax()
    return float((held_out == most_frequent).mean())


def plot(run: str | Path) -> Path | None:
    """Draw a run's curves into RUN/curves.png (None while its log holds nothing to draw)."""
    run = Path(run)
    return plot_metrics(run / "metrics.jsonl", run / "curves.png",
                        {"loss": ["loss", "val_mlm_loss"],
                         "accuracy": ["mlm_accuracy", "val_mlm_accuracy", "nsp_accuracy",
                                      "val_nsp_accuracy"],
                         "learning rate": ["lr"]},
                        title=f"pre-training {run.name}")


# --------------------------------------------------------------------------------------------
# The parts of a run


def vocabulary_sha256(tokenizer: BertTokenizer) -> str:
    """The sha256 of the vocab.txt bertkit writes for ``tokenizer``: the one test of whether
    two data sets or checkpoints share a vocabulary (ids mean the same tokens)."""
    tokens = tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size))
    return hashlib.sha256("".join(t + "\n" for t in tokens).encode("utf-8")).hexdigest()


def load_examples(settings: PretrainSettings):
    """(train, validation, phase-2 or None, tokenizer), each checked to share one vocabulary."""
    train = PretrainingDataset(settings.data, split="train")
    validation = PretrainingDataset(settings.validation_data or settings.data, split="validation")
    if settings.validation_data:
        same = ("seed", "validation_fraction", "max_seq_length")

        def documents(dataset):  # what decides which documents are held out
            return dataset.manifest["inputs"], [dataset.manifest["settings"][k] for k in same]

        if documents(validation) != documents(train):
            raise ValueError(
                f"{settings.validation_data} was not built from the same documents as "
                f"{settings.data} (its inputs, {', '.join(same)} differ), so its validation "
                "split may hold training documents: build both with the same corpus, --seed, "
                "--validation-fraction and --max-seq-length.")
    tokenizer = BertTokenizer.from_pretrained(Path(settings.data) / TOKENIZER_FOLDER)
    recorded = train.manifest["tokenizer"]["vocab_sha256"]
    if vocabulary_sha256(tokenizer) != recorded:
        raise ValueError(f"{Path(settings.data) / TOKENIZER_FOLDER} is not the vocabulary the "
                         f"examples in {settings.data} were made with (its sha256 differs from "
                         "the manifest's): it was replaced after `bertkit data pretrain`. Build "
                         "the examples again with the vocabulary you want.")
    phase2 = PretrainingDataset(settings.phase2_data) if settings.phase2_data else None
    for other, folder in ((phase2, settings.phase2_data),
                          (validation, settings.validation_data)):
        if folder and other.manifest["tokenizer"]["vocab_sha256"] != recorded:
            raise ValueError(f"{folder} was built with another vocabulary than "
                             f"{settings.data}; build both with the same vocab.")
    if phase2 is not None and phase2.config.next_sentence != train.config.next_sentence:
        with_nsp, without = ((settings.data, settings.phase2_data) if train.config.next_sentence
                             else (settings.phase2_data, settings.data))
        raise ValueError(f"{with_nsp} has next-sentence labels and {without} has none (built "
                         "with --no-nsp): the two phases must train the same objectives. Build "
                         "both with or both without --no-nsp.")
    return train, validation, phase2, tokenizer


def build_model(settings: PretrainSettings, tokenizer: BertTokenizer,
                train: PretrainingDataset) -> BertForPreTraining:
    """A preset at random initialisation, or the checkpoint to continue pre-training from."""
    overrides = dict(hidden_dropout_prob=settings.dropout,
                     attention_probs_dropout_prob=settings.dropout)
    if settings.model in PRESETS:
        config = BertConfig.from_preset(
            settings.model, vocab_size=tokenizer.vocab_size,
            max_position_embeddings=max(512, train.config.max_seq_length), **overrides)
        model = BertForPreTraining(config)
        with torch.no_grad():
            if settings.mlm_bias_prior:
                model.cls.predictions.bias.copy_(unigram_log_prior(train, config.vocab_size))
            if settings.sinusoidal_positions:
                positions = model.bert.embeddings.position_embeddings.weight
                positions.copy_(sinusoids(*positions.shape,
                                          std=START_SCALE * config.initializer_range))
            if settings.cooccurrence_embeddings:
                words = model.bert.embeddings.word_embeddings.weight
                vectors = cooccurrence_vectors(train.token_ids(COOCCURRENCE_TOKENS),
                                               *words.shape)
                seen = vectors.any(dim=1)  # the rest ([MASK], unused pieces) stay random
                scale = START_SCALE * config.initializer_range / vectors[seen].std()
                words[seen] = vectors[seen] * scale
            if settings.mimetic_attention:
                mimetic_attention(model, std=MIMETIC_GAIN / math.sqrt(config.hidden_size))
        return model
    new_model_starts = [name for name in NEW_MODEL_STARTS if getattr(settings, name)]
    if new_model_starts:
        flags = ", ".join("--" + name.replace("_", "-") for name in new_model_starts)
        raise SettingsError(f"{flags} set a new model's starting weights, but --model "
                            f"{settings.model} is a checkpoint, whose weights are trained: leave "
                            f"{'it' if len(new_model_starts) == 1 else 'them'} out.")
    checkpoint = resolve_pretrained(settings.model)
    check_vocabulary(checkpoint, tokenizer, settings.data,
                     f"build the examples with its vocabulary (bertkit data pretrain ... "
                     f"--vocab {checkpoint}).")
    return BertForPreTraining.from_pretrained(checkpoint, **overrides)


def vocabulary_difference(checkpoint: BertTokenizer, examples: BertTokenizer) -> str | None:
    """How the examples' tokenizer turns text into other ids than ``checkpoint``'s, or None."""
    if checkpoint.vocab_size != examples.vocab_size:
        return (f"its vocabulary has {checkpoint.vocab_size:,} tokens, the examples' "
                f"{examples.vocab_size:,}")
    ids = range(checkpoint.vocab_size)
    for index, (theirs, ours) in enumerate(zip(checkpoint.convert_ids_to_tokens(ids),
                                               examples.convert_ids_to_tokens(ids),
                                               strict=True)):
        if theirs != ours:
            return f"id {index} is {theirs!r} there but {ours!r} in the examples"
    if checkpoint.do_lower_case != examples.do_lower_case:
        return ("it is cased (do_lower_case false) but the examples were lower-cased"
                if examples.do_lower_case else
                "it is uncased (do_lower_case true) but the examples kept upper case")
    return None


def check_vocabulary(checkpoint: Path, tokenizer: BertTokenizer, data: str, fix: str) -> None:
    """Refuse to train ``checkpoint`` on examples whose ids mean other tokens than the ones it
    learned: nothing else would fail, the run would just unlearn the checkpoint."""
    if not any((checkpoint / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise ValueError(
            f"{checkpoint} holds no vocab.txt or tokenizer.json, so nothing shows that the token "
            f"ids of the examples in {data} mean the tokens it was trained on: copy the "
            "vocab.txt (and tokenizer_config.json) it was trained with into that folder.")
    difference = vocabulary_difference(BertTokenizer.from_pretrained(checkpoint), tokenizer)
    if difference:
        raise ValueError(f"{checkpoint} was trained with another tokenizer than the examples in "
                         f"{data} ({difference}): {fix}")


def check_positions(config: BertConfig, model: str | Path,
                    examples: list[tuple[str, PretrainingDataset]]) -> None:
    """Refuse examples longer than the model's position embeddings before the first step: the
    run would fail at the first batch holding one (phase 2 at 90% of the run)."""
    for folder, dataset in examples:
        length = dataset.config.max_seq_length
        if length > config.max_position_embeddings:
            raise ValueError(
                f"{folder} holds examples of up to {length} tokens but the model ({model}) has "
                f"{config.max_position_embeddings} positions (max_position_embeddings): build "
                f"the examples again with --max-seq-length {config.max_position_embeddings} "
                "or less.")


def data_fingerprint(dataset: PretrainingDataset) -> str:
    """The examples a run's data position counts: a hash of the sha256 its manifest records for
    each shard of the split."""
    shards = dataset.manifest["splits"][dataset.split]["shards"]
    return hashlib.sha256("".join(shard["sha256"] for shard in shards).encode()).hexdigest()


def check_same_examples(saved: dict, found: dict, settings: PretrainSettings) -> None:
    """A resumed run on a data folder rebuilt in place (same vocabulary, other examples) would
    carry on from a position among examples it never counted."""
    for flag, fingerprint in saved.items():
        if found.get(flag) != fingerprint:
            raise SettingsError(
                f"--{flag.replace('_', '-')} {getattr(settings, flag)} holds other examples than "
                "when the run started (rebuilt in place?): the run's position counts the "
                "examples it began with. Resume with those, or start a new run in another "
                "--out.")


def unigram_log_prior(train: PretrainingDataset, vocab_size: int) -> torch.Tensor:
    """log p(token) among the predicted tokens of ``train`` (add-one smoothed): the MLM's best
    guess before it reads any context. As a start for the output bias (Focal Loss's prior
    init, Lin et al. 2017) the first steps need not learn token frequencies through the tied
    word embeddings, and the model leaves the frequency plateau sooner."""
    counts = np.bincount(train.masked_labels(), minlength=vocab_size) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def sinusoids(positions: int, width: int, std: float) -> torch.Tensor:
    """Vaswani et al.'s position encodings, [positions, width], scaled to ``std``.

    The dot product of two rows depends only on their offset, so attention can tell neighbours
    from far tokens before the embeddings have learned anything; they are still trained as
    BERT's learned position embeddings, and the checkpoint is an ordinary one.
    """
    angles = torch.arange(positions)[:, None] * torch.exp(
        torch.arange(0, width, 2) * (-math.log(10000.0) / width))  # [positions, width / 2]
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :width]  # interleaved
    return table * (std / table.std())


def cooccurrence_vectors(token_ids: np.ndarray, vocab_size: int, width: int,
                         window: int = COOCCURRENCE_WINDOW) -> torch.Tensor:
    """Word vectors of a text, [vocab_size, width]: the top singular directions of its positive
    PMI matrix, rows scaled by the square roots of the singular values (Levy, Goldberg & Dagan
    2015: pairs within ``window`` tokens weighted 1 / distance, context counts smoothed by
    ^0.75). Tokens that share contexts get close vectors; tokens absent from the text get zeros.
    """
    from scipy import sparse
    from sklearn.utils.extmath import randomized_svd

    token_ids = token_ids.astype(np.int32)  # half the memory of the pairs below
    pairs = []  # (token, context, weight), both directions
    for distance in range(1, window + 1):
        left, right = token_ids[:-distance], token_ids[distance:]
        weight = np.full(len(left), 1.0 / distance, np.float32)
        pairs += [(left, right, weight), (right, left, weight)]
    tokens, contexts, weights = (np.concatenate(column) for column in zip(*pairs, strict=True))
    counts = sparse.coo_matrix((weights, (tokens, contexts)), shape=(vocab_size, vocab_size))
    counts = counts.tocsr().tocoo()  # sums the repeated pairs
    token_counts = np.asarray(counts.sum(axis=1)).ravel()
    context_counts = np.asarray(counts.sum(axis=0)).ravel() ** 0.75
    pmi = np.log(counts.data * context_counts.sum()
                 / (token_counts[counts.row] * context_counts[counts.col]))
    positive = pmi > 0
    ppmi = sparse.csr_matrix((pmi[positive], (counts.row[positive], counts.col[positive])),
                             shape=(vocab_size, vocab_size))
    rank = min(width, vocab_size)
    # PMI's spectrum falls off slowly: as many extra directions as kept ones make the kept ones
    # near exact (Halko et al. 2011)
    u, s, _ = randomized_svd(ppmi, rank, n_oversamples=rank, random_state=0)
    vectors = np.zeros((vocab_size, width), np.float32)
    vectors[:, :rank] = u * np.sqrt(s)
    vectors[token_counts == 0] = 0  # rather than the power iterations' rounding errors
    return torch.from_numpy(vectors)


def mimetic_attention(model: BertForPreTraining, std: float) -> None:
    """Start every attention layer as trained ones look (Trockman & Kolter 2023, "Mimetic
    Initialization of Self-Attention Layers"): W_q = W_k, so W_q^T W_k is positive
    semi-definite, ~identity plus noise, and a token's scores favour tokens like itself and, by
    the position embeddings, near it; W_o = -W_v^T, so W_o W_v ~ -identity. Random weights
    instead give scores near zero, attention spread evenly over the sequence, and a plateau
    until the MLM shapes it."""
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            attention, output = layer.attention.self, layer.attention.output
            attention.query.weight.normal_(0, std)
            attention.key.weight.copy_(attention.query.weight)
            attention.value.weight.normal_(0, std)
            output.dense.weight.copy_(-attention.value.weight.T)


class BudgetSizer:
    """Sizes a run to a wall-time budget from the step time it measures.

    The first steps (allocations, a cold page cache) are slower, so timing starts at step
    ``TIMED_FROM``; the length is set ``FIRST`` steps into the run, then again every ``EVERY``
    steps at the pace of the steps since the last sizing, which takes in the evaluations,
    checkpoints and plots, and a machine whose speed drifts (a shared 2-core machine ran 12%
    slower after its first 300 steps and overran a 530-second budget by 41 seconds when only
    steps 30, 300 and 1,500 sized the run). A resumed run keeps the length it was given; one
    stopped before its first sizing is sized on resuming, with ``started`` moved back by the
    time its earlier sessions spent (set-up included), so the budget is all sessions' time.

    Until the first sizing the run's lr is 0 and its warm-up starts there (`PretrainRun`): the
    few steps that measure the pace change nothing, and the run after them is a run of that
    length from its start. Sizing first at step 30, in a warm-up stretched over the provisional
    length (lr ~0) that then jumped to 40% of its peak, cost the demo's budget runs ~1-2 points
    of masked-token accuracy at ~1,200 steps against runs given that length.
    """

    TIMED_FROM, FIRST, EVERY = 3, 10, 300

    def __init__(self, minutes: float | None, first_step: int, sizings_done: int, started: float):
        resumed_after_sizing = first_step > 0 and sizings_done > 0
        self.seconds = minutes * 60 if minutes and not resumed_after_sizing else None
        self.first_step, self.done = first_step, sizings_done
        # the run's start: the budget takes in its set-up (and a resumed run's earlier sessions)
        self.started = started
        self.paced_from = None  # (step, time) the pace is measured from

    def new_total(self, step: int, total_steps: int) -> int | None:
        """The run's length sized at this step, or None when it is not a sizing step."""
        into_run = step - self.first_step
        if into_run == self.TIMED_FROM:
            self.paced_from = (step, time.perf_counter())
        if (not self.seconds or step >= total_steps or into_run < self.FIRST
                or (into_run != self.FIRST and into_run % self.EVERY)):
            return None
        now = time.perf_counter()
        per_step = (now - self.paced_from[1]) / (step - self.paced_from[0])
        self.paced_from = (step, now)
        self.done += 1
        return max(step + 1, step + int((self.seconds - (now - self.started)) / per_step))


class Phases:
    """Which examples a step reads: phase 1, then ``phase2`` for the run's last share."""

    def __init__(self, settings: PretrainSettings, train, phase2, total_steps: int):
        self.settings, self.train, self.phase2 = settings, train, phase2
        self.resize(total_steps, step=0)
        self._stream, self._dataset = None, None

    def resize(self, total_steps: int, step: int) -> None:
        share = 1 - self.settings.phase2_fraction
        self.phase2_start = (max(step + 1, int(total_steps * share)) if self.phase2
                             else total_steps)

    def batch_indices(self, step: int) -> tuple[PretrainingDataset, np.ndarray]:
        """The dataset of ``step`` and the global batch's examples in it: [batch, 2] rows of an
        example's index and its pass over the data (dynamic masking draws new masks each pass;
        a batch that crosses into the next pass holds examples of both)."""
        in_phase2 = self.phase2 is not None and step >= self.phase2_start
        dataset = self.phase2 if in_phase2 else self.train
        position = (step - (self.phase2_start if in_phase2 else 0)) * self.settings.batch_size
        if dataset is not self._dataset:  # the first step, a resume, or phase 2 starting
            self._stream = example_stream(dataset, self.settings.seed, start=position)
            self._dataset = dataset
        indices = np.fromiter(itertools.islice(self._stream, self.settings.batch_size), np.int64)
        passes = (position + np.arange(len(indices))) // len(dataset)
        return dataset, np.stack([indices, passes], axis=1)


# --------------------------------------------------------------------------------------------
# The run


class PretrainRun:
    """One pre-training run's state: model, trainer, data position, log and checkpoints."""

    def __init__(self, settings: PretrainSettings, resume: bool):
        started = time.perf_counter()
        self.settings = settings
        self.device = choose_device(settings.device)
        self.distributed: Distributed = init_distributed(self.device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.folder = Path(settings.out)
        self.checkpoints = Checkpoints(self.folder / "checkpoints", keep=settings.keep_checkpoints)
        latest = self._checkpoint_to_resume(resume)
        if settings.batch_size % (self.distributed.world_size * settings.accumulation):
            raise SettingsError(
                f"batch_size {settings.batch_size} must split evenly into "
                f"{self.distributed.world_size} ranks x {settings.accumulation} micro-batches.")
        seed_everything(settings.seed + self.distributed.rank)  # ranks draw different masks
        self.train, self.validation, phase2, self.tokenizer = load_examples(settings)
        if latest:
            check_vocabulary(latest, self.tokenizer, settings.data,
                             "they were rebuilt since the run started. Build them again with "
                             f"the run's vocabulary (bertkit data pretrain ... --vocab {latest}),"
                             " or start a new run in another --out.")
        self.model = (BertForPreTraining.from_pretrained(latest) if latest else build_model(
            settings, self.tokenizer, self.train))
        examples = [(settings.data, self.train)]
        if phase2 is not None:
            examples.append((settings.phase2_data, phase2))
        check_positions(self.model.config, latest or settings.model, examples)
        self.model.to(self.device)
        if settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        # NSP is trained where asked for and the examples have its labels
        self.nsp = settings.nsp and self.train.config.next_sentence
        if not self.nsp:  # out of the loss: frozen, so DDP waits for no gradient of theirs
            for module in (self.model.bert.pooler, self.model.cls.seq_relationship):
                module.requires_grad_(False)
        state = Checkpoints.load_state(latest) if latest else {}
        self.data_fingerprints = {"data": data_fingerprint(self.train)}
        if phase2 is not None:
            self.data_fingerprints["phase2_data"] = data_fingerprint(phase2)
        check_same_examples(state.get("data", {}), self.data_fingerprints, settings)
        self.step = state.get("step", 0)
        self.trainer = build_trainer(torch.compile(self.model) if settings.compile
                                     else self.model, settings, self._planned_steps(),
                                     device=self.device, precision=self.precision,
                                     distributed=self.distributed)
        if latest:
            self.trainer.load_state_dict(state["trainer"])
            if not restore_ranks_rng_states(state["rng"], self.device, self.distributed):
                logger.warning("rank %d: %s holds no random state of this rank (another number "
                               "of ranks?): its dropout masks from here on are new draws.",
                               self.distributed.rank, latest)
        self.phases = Phases(settings, self.train, phase2, self.total_steps)
        if "phase2_start" in state:  # a budget's sizings moved it: where the run had it
            self.phases.phase2_start = state["phase2_start"]
        # a run stopped before its first sizing has spent part of its budget in earlier sessions
        self.budget = BudgetSizer(settings.budget_minutes, self.step,
                                  state.get("budget_sizings", 0),
                                  started - state.get("seconds_spent", 0.0))
        if settings.budget_minutes and not latest:  # lr 0 until the pace sizes the run
            self.trainer.scheduler.resize(self.total_steps, start=self.total_steps)
        self.main = self.distributed.is_main
        self.log = MetricsLog(self.folder / "metrics.jsonl", enabled=self.main)
        if self.main:  # the settings first: a resume refused (a full disk) changes nothing
            settings.save(self.folder / SETTINGS_NAME)
            if latest:
                truncate_metrics(self.log.path, self.step)
        self.tokens, self.started, self.held_out = 0, time.perf_counter(), {}

    @property
    def total_steps(self) -> int:
        return self.trainer.scheduler.total_steps

    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        latest = self.checkpoints.latest()
        if resume and latest is None:
            raise FileNotFoundError(f"--resume: {self.folder} holds no checkpoint to resume "
                                    "from.")
        if not resume and latest is not None:
            raise FileExistsError(f"{self.folder} already holds checkpoints: pass --resume to "
                                  "continue that run, or choose another --out.")
        saved = self.folder / SETTINGS_NAME
        if resume and saved.is_file():
            self.settings.check_resumes(PretrainSettings.from_file(saved))
        return latest if resume else None

    def _planned_steps(self) -> int:
        """The run's length before any budget sizing (a resumed run's comes from its state)."""
        if self.settings.steps:
            return self.settings.steps
        if self.settings.budget_minutes:  # sized once the step time is known
            return BUDGET_PROVISIONAL_STEPS
        return max(1, int(self.settings.epochs * len(self.train) / self.settings.batch_size))

    def train_step(self) -> dict | None:
        """One optimisation step; returns the metrics record when this step logs one."""
        dataset, examples = self.phases.batch_indices(self.step)
        parts = micro_batches(examples, self.distributed.rank, self.distributed.world_size,
                              self.settings.accumulation)
        batches = [dataset.collate([dataset.example(int(i), int(number)) for i, number in part])
                   for part in parts]
        if not self.nsp:
            for batch in batches:
                batch.pop("next_sentence_label", None)
        outputs, loss = self.trainer.step(batches)
        self.step += 1
        self.tokens += sum(int(b["attention_mask"].sum()) for b in batches)
        if self.due(self.settings.log_every):
            counts = Counter()
            for out, batch in zip(outputs, batches, strict=True):
                count_predictions(out, batch, counts)
            if self.distributed.world_size > 1:  # the accuracies of the whole global batch
                keys = ("mlm_right", "mlm_total", "nsp_right", "nsp_total")
                summed = torch.tensor([counts[k] for k in keys], device=self.device)
                dist.all_reduce(summed)
                counts = Counter(dict(zip(keys, summed.tolist(), strict=True)))
            if not self.main:
                return None
            record = dict(step=self.step, loss=loss, lr=self.trainer.scheduler.get_last_lr()[0],
                          tokens_per_second=self.tokens_per_second(), **accuracies(counts))
            self.log.write(**record)
            return record
        return None

    def size_to_budget(self) -> None:
        total = self.budget.new_total(self.step, self.total_steps)
        if total is None:
            return
        if self.distributed.world_size > 1:  # every rank must stop at the same step
            agreed = torch.tensor([total], device=self.device)
            dist.broadcast(agreed, src=0)
            total = int(agreed.item())
        # the warm-up starts at the first sizing, and keeps its share of the run
        self.trainer.scheduler.resize(total, start=self.step if self.budget.done == 1 else None)
        if self.step < self.phases.phase2_start:  # phase 2 keeps its share too
            self.phases.resize(total, self.step)

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.total_steps

    def agreed_stop(self, requested: bool) -> bool:
        """Whether any rank was asked to stop: all ranks then save and stop at the same step (a
        signal reaches them at different moments, and one alone would leave the others waiting
        in DDP's all-reduce)."""
        if self.distributed.world_size == 1:
            return requested
        flag = torch.tensor([int(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def evaluate(self) -> None:
        if not self.main:
            return
        self.held_out = held_out_metrics(self.model, self.validation, device=self.device,
                                         precision=self.precision,
                                         max_examples=self.settings.eval_examples)
        self.log.write(step=self.step, **self.held_out)
        plot(self.folder)

    def save(self, reason: str) -> None:
        """A checkpoint, written by rank 0 (every rank calls this: it gathers their states)."""
        rng = every_ranks_rng_states(self.device, self.distributed)
        if not self.main:
            return
        path = self.checkpoints.save(self.step, self.model, self.tokenizer,
                                     {"trainer": self.trainer.state_dict(), "rng": rng,
                                      "budget_sizings": self.budget.done,
                                      "seconds_spent": time.perf_counter() - self.budget.started,
                                      "phase2_start": self.phases.phase2_start,
                                      "data": self.data_fingerprints,
                                      "examples_seen": self.step * self.settings.batch_size})
        self.log.write(step=self.step, event=f"checkpoint ({reason})", path=str(path))

    def tokens_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.tokens * self.distributed.world_size / max(elapsed, 1e-9)

    def finish(self) -> dict:
        """The final model and the last held-out metrics."""
        result = {"steps": self.step, "total_steps": self.total_steps,
                  "tokens_per_second": self.tokens_per_second(), "precision": self.precision,
                  "seconds": time.perf_counter() - self.started, "stopped": False,
                  "rank": self.distributed.rank}
        if not self.main:
            return result
        if not self.held_out:  # resumed from the final checkpoint: nothing left but to measure
            self.evaluate()
        self.model.save_pretrained(self.folder / "model")
        self.tokenizer.save_pretrained(self.folder / "model")
        plot(self.folder)
        return {**self.held_out, "most_frequent_token_accuracy":
                most_frequent_token_accuracy(self.train, self.validation), **result}


def pretrain(settings: PretrainSettings, resume: bool = False) -> dict:
    """Run (or resume) pre-training.

    Returns the last held-out metrics with ``steps``, ``total_steps``, ``tokens_per_second``,
    ``rank`` (under torchrun; rank 0 alone has the metrics) and ``stopped`` (True when
    SIGINT/SIGTERM ended the run early, after saving a checkpoint; then ``exit_code`` is the
    shell's code for that signal). A resumed run must be given the settings
    it was started with (``PretrainSettings.from_file(RUN / SETTINGS_NAME)``).
    """
    run = PretrainRun(settings, resume)
    progress = tqdm(total=run.total_steps, initial=run.step, desc="pre-training", unit="step",
                    disable=not run.main, dynamic_ncols=True)
    stopping = False
    with GracefulStop() as stop, progress:
        while run.step < run.total_steps and not stopping:
            record = run.train_step()
            if record:
                progress.set_postfix(loss=f"{record['loss']:.3f}",
                                     mlm=f"{record['mlm_accuracy']:.3f}",
                                     nsp=f"{record.get('nsp_accuracy', 0):.2f}",
                                     tok_s=f"{record['tokens_per_second']:.0f}")
            run.size_to_budget()
            progress.total = run.total_steps
            progress.update(1)
            stopping = run.agreed_stop(stop.requested)
            if run.due(settings.eval_every):
                run.evaluate()
            if run.due(settings.save_every) or stopping:
                run.save("stop requested" if stopping else "periodic")
    if stopping:
        return {**run.held_out, "steps": run.step, "total_steps": run.total_steps,
                "stopped": True, "exit_code": stop.exit_code, "rank": run.distributed.rank}
    return run.finish()
