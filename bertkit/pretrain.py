"""Pre-training: masked LM + next sentence prediction on examples built by ``bertkit.data``.

One step: a global batch of examples, split into micro-batches over ranks and accumulation, loss =
mean MLM cross-entropy over the predicted tokens + mean NSP cross-entropy (the paper's), AdamW with
warm-up then linear decay. The data position is part of every checkpoint, so ``resume`` continues
exactly where the run stopped: same examples, same masks, same random state.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import PRESETS, BertConfig
from .data import PretrainingDataset
from .data.shards import TOKENIZER_FOLDER
from .device import autocast, choose_device, resolve_precision
from .model import BertForPreTraining
from .report import plot_metrics
from .tokenizer import BertTokenizer
from .training import (
    Checkpoints,
    GracefulStop,
    MetricsLog,
    NonFiniteLoss,
    Trainer,
    build_optimizer,
    init_distributed,
    restore_rng_states,
    seed_everything,
    truncate_metrics,
    warmup_linear_decay,
)

SETTINGS_NAME = "pretrain_settings.json"
BUDGET_PROVISIONAL_STEPS = 1_000_000
# With --budget-minutes the schedule is sized from the step time measured from step 10 (the first
# steps, with allocations and a cold page cache, are slower) at step 30, and sized again at steps
# 300 and 1500 as longer averages take in the evaluations, checkpoints and plots.
SIZING_TIMED_FROM = 10
SIZING_AT = (30, 300, 1500)


@dataclass
class PretrainSettings:
    """Everything a run depends on; saved in the run folder and reloaded by ``resume``."""

    data: str  # a folder written by `bertkit data pretrain`
    out: str = "runs/pretrain"
    model: str = "mini"  # a preset name, or a checkpoint folder to continue pre-training from
    phase2_data: str | None = None  # examples of length 512 for the last phase2_fraction of steps
    phase2_fraction: float = 0.1
    batch_size: int = 32  # examples per optimisation step, over all ranks and micro-batches
    accumulation: int = 1  # micro-batches per rank per step
    steps: int | None = None  # optimisation steps; None: `epochs` passes over the data
    epochs: float = 1.0
    budget_minutes: float | None = None  # size the run to this wall time (measured at the start)
    lr: float = 1e-4
    warmup: float = 0.1  # a fraction of the steps (< 1) or a number of steps (>= 1)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    optimizer: str = "adamw"
    max_grad_norm: float = 1.0
    precision: str = "auto"
    compile: bool = False
    device: str | None = None
    nsp: bool = True
    dropout: float = 0.1
    eval_every: int = 200
    eval_examples: int = 2048
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3
    skip_nonfinite: bool = False
    seed: int = 12345

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> PretrainSettings:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or "
                                 "write the settings as JSON.") from error
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}.")
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


class ExampleOrder:
    """The example indices a run reads, position by position: a seeded shuffle of the data for
    every pass, so any position (and so any resume point) is found without replaying the run."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._passes: dict[int, np.ndarray] = {}

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        passes, offsets = np.divmod(positions, self.size)
        for number in np.unique(passes):
            if number not in self._passes:
                self._passes = {k: v for k, v in self._passes.items() if k >= number - 1}
                self._passes[number] = np.random.default_rng([self.seed, number]).permutation(
                    self.size)
        return np.array([self._passes[p][o] for p, o in zip(passes, offsets, strict=True)])


def _micro_batches(order: ExampleOrder, step: int, settings: PretrainSettings, rank: int,
                   world_size: int) -> list[np.ndarray]:
    """This rank's micro-batches of step ``step``.

    The global batch is cut into world_size x accumulation equal micro-batches in order and rank r
    takes its consecutive share, so a run on N ranks sees exactly the examples (and averages the
    same per-micro-batch losses) as one process with N times the accumulation.
    """
    start = step * settings.batch_size
    batch = order[np.arange(start, start + settings.batch_size)]
    parts = np.array_split(batch, world_size * settings.accumulation)
    return parts[rank * settings.accumulation:(rank + 1) * settings.accumulation]


def _accuracies(outputs: list, batches: list[dict]) -> dict:
    """Masked-token and NSP accuracy over this step's micro-batches."""
    mlm_right = mlm_total = nsp_right = nsp_total = 0
    for out, batch in zip(outputs, batches, strict=True):
        targets = batch["labels"][batch["labels"] != -100]
        mlm_right += (out["prediction_logits"].argmax(-1).cpu() == targets).sum().item()
        mlm_total += targets.numel()
        if "next_sentence_label" in batch:
            guesses = out["seq_relationship_logits"].argmax(-1).cpu()
            nsp_right += (guesses == batch["next_sentence_label"]).sum().item()
            nsp_total += batch["next_sentence_label"].numel()
    result = {"mlm_accuracy": mlm_right / max(1, mlm_total)}
    if nsp_total:
        result["nsp_accuracy"] = nsp_right / nsp_total
    return result


@torch.no_grad()
def evaluate(model, dataset, *, device, precision, batch_size=64, max_examples=None) -> dict:
    """Held-out MLM loss (mean over predicted tokens), masked-token accuracy and NSP accuracy."""
    model.eval()
    count = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    mlm_loss = mlm_right = mlm_total = nsp_right = nsp_total = 0.0
    for start in range(0, count, batch_size):
        batch = dataset.collate([dataset[i] for i in range(start, min(count, start + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, precision):
            out = model(**batch)
        targets = batch["labels"][batch["labels"] != -100]
        logits = out["prediction_logits"].float()
        mlm_loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        mlm_right += (logits.argmax(-1) == targets).sum().item()
        mlm_total += targets.numel()
        if "next_sentence_label" in batch:
            guesses = out["seq_relationship_logits"].argmax(-1)
            nsp_right += (guesses == batch["next_sentence_label"]).sum().item()
            nsp_total += batch["next_sentence_label"].numel()
    result = {"val_mlm_loss": mlm_loss / max(1, mlm_total),
              "val_mlm_accuracy": mlm_right / max(1, mlm_total)}
    if nsp_total:
        result["val_nsp_accuracy"] = nsp_right / nsp_total
    return result


def most_frequent_token_accuracy(train: PretrainingDataset,
                                 validation: PretrainingDataset) -> float:
    """Masked-token accuracy of always guessing the token most often masked in training: the
    floor a model that ignores the context reaches."""
    held_out = validation.masked_labels()
    if not len(held_out):
        return 0.0
    most_frequent = np.bincount(train.masked_labels()).argmax()
    return float((held_out == most_frequent).mean())


def _build_model(settings: PretrainSettings, tokenizer: BertTokenizer, max_seq_length: int):
    overrides = dict(hidden_dropout_prob=settings.dropout,
                     attention_probs_dropout_prob=settings.dropout)
    if settings.model in PRESETS:
        config = BertConfig.from_preset(settings.model, vocab_size=tokenizer.vocab_size,
                                        max_position_embeddings=max(512, max_seq_length),
                                        **overrides)
        return BertForPreTraining(config)
    model = BertForPreTraining.from_pretrained(settings.model, **overrides)
    checkpoint_vocab = Path(settings.model) / "vocab.txt"
    if checkpoint_vocab.is_file():
        vocab = checkpoint_vocab.read_text(encoding="utf-8").split("\n")
        if [t for t in vocab if t] != tokenizer.convert_ids_to_tokens(range(tokenizer.vocab_size)):
            raise ValueError(
                f"{settings.model} was trained with another vocabulary than the examples in "
                f"{settings.data}: build the examples with that checkpoint's vocab.txt "
                f"(bertkit data pretrain --vocab {checkpoint_vocab})."
            )
    return model


def _plot(run: Path) -> None:
    plot_metrics(run / "metrics.jsonl", run / "curves.png",
                 {"loss": ["loss", "val_mlm_loss"],
                  "accuracy": ["mlm_accuracy", "val_mlm_accuracy", "nsp_accuracy",
                               "val_nsp_accuracy"],
                  "learning rate": ["lr"]},
                 title=f"pre-training {run.name}")


def pretrain(settings: PretrainSettings, resume: bool = False) -> dict:
    """Run (or resume) pre-training.

    Returns the last held-out metrics with ``steps``, ``total_steps``, ``tokens_per_second`` and
    ``stopped`` (True when SIGINT/SIGTERM ended the run early, after saving a checkpoint).
    """
    device = choose_device(settings.device)
    distributed = init_distributed(device)
    precision = resolve_precision(settings.precision, device)
    run = Path(settings.out)
    checkpoints = Checkpoints(run / "checkpoints", keep=settings.keep_checkpoints)
    latest = checkpoints.latest() if resume else None
    if resume and latest is None:
        raise FileNotFoundError(f"--resume: {run} holds no checkpoint to resume from.")
    if not resume and checkpoints.latest() is not None:
        raise FileExistsError(f"{run} already holds checkpoints: pass --resume to continue that "
                              "run, or choose another --out.")
    if settings.batch_size % (distributed.world_size * settings.accumulation):
        raise ValueError(f"batch_size {settings.batch_size} must split evenly into "
                         f"{distributed.world_size} ranks x {settings.accumulation} micro-batches.")
    seed_everything(settings.seed + distributed.rank)  # ranks draw different dropout masks

    train = PretrainingDataset(settings.data, split="train")
    validation = PretrainingDataset(settings.data, split="validation")
    tokenizer = BertTokenizer.from_pretrained(Path(settings.data) / TOKENIZER_FOLDER)
    model = BertForPreTraining.from_pretrained(latest) if latest else _build_model(
        settings, tokenizer, train.config.max_seq_length)
    model.to(device)
    state = Checkpoints.load_state(latest) if latest else {}

    epoch_steps = max(1, int(settings.epochs * len(train) / settings.batch_size))
    # With a time budget the real length is set at SIZING_AT; until then, a long run.
    provisional = BUDGET_PROVISIONAL_STEPS if settings.budget_minutes else epoch_steps
    total_steps = state.get("total_steps") or settings.steps or provisional
    optimizer = build_optimizer(model, name=settings.optimizer, lr=settings.lr,
                                weight_decay=settings.weight_decay,
                                betas=(settings.beta1, settings.beta2), eps=settings.eps)

    def schedule(total_steps: int):
        """Linear warm-up (a number of steps, or a share of the run) then linear decay to 0."""
        warmup = settings.warmup if settings.warmup >= 1 else settings.warmup * total_steps
        return warmup_linear_decay(optimizer, max(1, int(warmup)), total_steps)

    scheduler = schedule(total_steps)
    forward_model = torch.compile(model) if settings.compile else model
    trainer = Trainer(forward_model, optimizer, scheduler, device=device, precision=precision,
                      max_grad_norm=settings.max_grad_norm,
                      skip_nonfinite=settings.skip_nonfinite, distributed=distributed)
    step = 0
    if latest:
        trainer.load_state_dict(state["trainer"])
        restore_rng_states(state["rng"])
        step = state["step"]
    main = distributed.is_main
    log = MetricsLog(run / "metrics.jsonl", enabled=main)
    if main and latest:
        truncate_metrics(log.path, step)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        (run / SETTINGS_NAME).write_text(json.dumps(asdict(settings), indent=2) + "\n")

    def save(reason: str) -> Path | None:
        if not main:
            return None
        path = checkpoints.save(step, model, tokenizer,
                                {"trainer": trainer.state_dict(), "total_steps": total_steps,
                                 "budget_sizings": sizings,
                                 "examples_seen": step * settings.batch_size})
        log.write(step=step, event=f"checkpoint ({reason})", path=str(path))
        return path

    order = ExampleOrder(len(train), settings.seed)
    phase2 = PretrainingDataset(settings.phase2_data) if settings.phase2_data else None
    if phase2 and phase2.manifest["tokenizer"]["vocab_sha256"] != \
            train.manifest["tokenizer"]["vocab_sha256"]:
        raise ValueError(f"{settings.phase2_data} was built with another vocabulary than "
                         f"{settings.data}; build both phases with the same vocab.")
    phase2_start = int(total_steps * (1 - settings.phase2_fraction)) if phase2 else total_steps
    budget_seconds = settings.budget_minutes * 60 if settings.budget_minutes else None
    # A resumed run keeps the schedule it was given (its clock restarted with the resume).
    sizings = len(SIZING_AT) if state.get("budget_sizings") or state.get("sized_to_budget") else 0
    first_step = step
    started = time.perf_counter()
    tokens = 0
    progress = tqdm(total=total_steps, initial=step, desc="pre-training", unit="step",
                    disable=not main, dynamic_ncols=True)
    result: dict = {}
    with GracefulStop() as stop:
        while step < total_steps:
            dataset = phase2 if phase2 and step >= phase2_start else train
            if dataset is phase2 and step == phase2_start:
                order = ExampleOrder(len(phase2), settings.seed)
            # Dynamic masking draws each pass over the data its own masks.
            dataset.set_epoch(step * settings.batch_size // len(dataset))
            parts = _micro_batches(order, step, settings, distributed.rank,
                                   distributed.world_size)
            batches = [dataset.collate([dataset[int(i)] for i in part]) for part in parts]
            if not settings.nsp:
                for batch in batches:
                    batch.pop("next_sentence_label", None)
            try:
                outputs, loss = trainer.step(batches)
            except NonFiniteLoss as error:
                progress.close()
                raise SystemExit(f"bertkit pretrain: {error}") from None
            step += 1
            tokens += sum(int(b["attention_mask"].sum()) for b in batches)
            if main and (step % settings.log_every == 0 or step == total_steps):
                elapsed = time.perf_counter() - started
                record = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                          "tokens_per_second": tokens * distributed.world_size / elapsed,
                          **_accuracies(outputs, batches)}
                log.write(**record)
                progress.set_postfix(loss=f"{loss:.3f}", mlm=f"{record['mlm_accuracy']:.3f}",
                                     nsp=f"{record.get('nsp_accuracy', 0):.2f}",
                                     lr=f"{record['lr']:.1e}",
                                     tok_s=f"{record['tokens_per_second']:.0f}")
            progress.update(1)
            if step - first_step == SIZING_TIMED_FROM:
                sizing_started = time.perf_counter()
            if (budget_seconds and sizings < len(SIZING_AT) and step < total_steps
                    and step - first_step == SIZING_AT[sizings]):
                now = time.perf_counter()
                per_step = (now - sizing_started) / (step - first_step - SIZING_TIMED_FROM)
                total_steps = max(step + 1, step + int((budget_seconds - (now - started))
                                                       / per_step))
                if distributed.world_size > 1:  # every rank must stop at the same step
                    agreed = torch.tensor([total_steps], device=device)
                    dist.broadcast(agreed, src=0)
                    total_steps = int(agreed.item())
                sizings += 1
                if phase2 and step < phase2_start:  # phase 2 keeps its share of the run
                    phase2_start = max(step + 1,
                                       int(total_steps * (1 - settings.phase2_fraction)))
                scheduler = schedule(total_steps)  # the warm-up keeps its share of the run
                scheduler.last_epoch = step
                trainer.scheduler = scheduler
                progress.total = total_steps
            if main and (step % settings.eval_every == 0 or step == total_steps):
                result = evaluate(model, validation, device=device, precision=precision,
                                  max_examples=settings.eval_examples)
                log.write(step=step, **result)
                _plot(run)
            if step % settings.save_every == 0 or step == total_steps or stop.requested:
                save("stop requested" if stop.requested else "periodic")
            if stop.requested:
                progress.close()
                print(f"bertkit pretrain: stopped at step {step}/{total_steps}; continue with "
                      f"--resume --out {run}", file=sys.stderr)
                return {**result, "steps": step, "total_steps": total_steps, "stopped": True}
    progress.close()
    if main and not result:  # resumed from the final checkpoint: nothing left but to measure
        result = evaluate(model, validation, device=device, precision=precision,
                          max_examples=settings.eval_examples)
    elapsed = time.perf_counter() - started
    speed = tokens * distributed.world_size / elapsed
    if main:
        result["most_frequent_token_accuracy"] = most_frequent_token_accuracy(train, validation)
        model.save_pretrained(run / "model")
        tokenizer.save_pretrained(run / "model")
        _plot(run)
        print(f"\npre-training done: {step} steps in {elapsed / 60:.1f} min, "
              f"{speed:.0f} tokens/s ({precision})")
        for key, value in result.items():
            print(f"  {key:28} {value:.4f}")
        print(f"model (HuggingFace layout): {run / 'model'}\ncurves: {run / 'curves.png'}\n"
              f"metrics: {run / 'metrics.jsonl'}")
    return {**result, "steps": step, "total_steps": total_steps, "tokens_per_second": speed,
            "stopped": False}
