"""The training machinery shared by pre-training and fine-tuning.

The optimiser with the paper's settings, the warm-up + linear-decay schedule,
gradient accumulation and clipping, non-finite loss handling, atomic checkpoints with exact
resume, a JSONL metrics log, clean stops on SIGINT/SIGTERM, and PyTorch's own DDP under torchrun.
What differs between the two jobs is only the batch and the loss, which the model computes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import files
from .device import autocast, keep_freed_memory
from .report import read_metrics
from .settings import Settings, option
from .speedups import KeptEmbeddingGradients, NormsAsWritten

OPTIMIZERS = ("adamw", "lamb")
STATE_NAME = "trainer_state.pt"


# --------------------------------------------------------------------------------------------
# Where to compute: one process, or one rank of a torchrun job


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed()
    if device.type == "cuda":  # what follows the current GPU (NCCL's own buffers) uses this one
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


# --------------------------------------------------------------------------------------------
# Optimiser and schedule


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The paper's rule: weight decay on weight matrices, none on biases and LayerNorm."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam's update rescaled per tensor by ||w|| / ||update||.

    It keeps large-batch pre-training stable (NVIDIA's 64K-batch recipe); PyTorch has no built-in.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * p
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
                p.sub_(update * (group["lr"] * trust))  # no float(): a GPU need not wait
        return loss


def build_optimizer(model, *, name="adamw", lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999),
                    eps=1e-6) -> torch.optim.Optimizer:
    """AdamW (or LAMB) with the paper's defaults: lr 1e-4, decay 0.01, β 0.9/0.999, ε 1e-6."""
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        # The fused kernel is one launch for all tensors; foreach is the portable fallback.
        fused = next(model.parameters()).device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


@dataclass(kw_only=True)
class OptimizerSettings(Settings):
    """The optimiser and schedule settings that pre-training and fine-tuning share (each job
    adds its own ``lr``)."""

    warmup: float = option(0.1, "warm-up: a fraction of the steps (< 1) or a number of steps",
                           at_least=0)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)",
                                 at_least=0)
    beta1: float = option(0.9, "Adam beta1", at_least=0, at_most=1)
    beta2: float = option(0.999, "Adam beta2", at_least=0, at_most=1)
    eps: float = option(1e-6, "Adam epsilon", above=0)
    optimizer: str = option("adamw", "adamw (the paper's) or lamb (large batches)",
                            choices=OPTIMIZERS)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)",
                                  at_least=0)
    skip_nonfinite: bool = option(False, "skip steps whose loss is NaN/inf (counted) instead "
                                  "of stopping")


class WarmupLinearDecay(torch.optim.lr_scheduler.LambdaLR):
    """lr rises linearly from 0 over the warm-up, then falls linearly to 0 at ``total_steps``.

    ``warmup`` is a number of steps (>= 1) or a share of the run (< 1). ``resize`` gives the run
    another length mid-way (a time budget measured at the start); a warm-up given as a share
    keeps its share. A run may also begin with ``start`` steps at lr 0 (a budget run measuring
    its pace), after which the schedule is that of a run of ``total_steps - start``. All three
    are part of the state dict, so a resumed run keeps its schedule.
    """

    def __init__(self, optimizer, warmup: float, total_steps: int):
        self.warmup, self.total_steps, self.start = warmup, total_steps, 0
        super().__init__(optimizer, self.factor)

    @property
    def warmup_steps(self) -> int:
        return (int(self.warmup) if self.warmup >= 1
                else round(self.warmup * (self.total_steps - self.start)))

    def factor(self, step: int) -> float:
        step -= self.start
        warmup = self.warmup_steps
        if step < 0:
            return 0.0
        if step < warmup:
            return (step + 1) / warmup
        length = self.total_steps - self.start
        return max(0.0, (length - step) / max(1, length - warmup))

    def resize(self, total_steps: int, start: int | None = None) -> None:
        self.total_steps = total_steps
        if start is not None:
            self.start = start
        factor = self.factor(self.last_epoch)  # the lr of the next step, on the new length
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def warmup_linear_decay(optimizer, warmup_steps: int, total_steps: int) -> WarmupLinearDecay:
    """The schedule with a warm-up of exactly ``warmup_steps`` steps."""
    return WarmupLinearDecay(optimizer, warmup_steps, total_steps)


# --------------------------------------------------------------------------------------------
# One optimisation step


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Runs optimisation steps: micro-batches in, one update out.

    ``model(**batch)`` must return an output with ``loss``. Gradients of ``accumulation``
    micro-batches are averaged before the update; under DDP they are all-reduced once per update.
    """

    def __init__(self, model, optimizer, scheduler, *, device, precision="fp32",
                 max_grad_norm=1.0, skip_nonfinite=False, distributed=Distributed()):
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision = device, precision
        self.max_grad_norm, self.skip_nonfinite = max_grad_norm, skip_nonfinite
        self.distributed = distributed
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.skipped_steps = 0
        keep_freed_memory(device)
        self.wrapped = model
        if distributed.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        self.embedding_gradients = KeptEmbeddingGradients(model, device, distributed.world_size)
        self.gradient_norms = NormsAsWritten(
            model, device, distributed.world_size,
            skip=[e.weight for e in self.embedding_gradients.embeddings])

    def step(self, micro_batches: list[dict]) -> tuple[list, float]:
        """Forward/backward every micro-batch, then clip and update. Returns (outputs, loss)."""
        self.model.train()
        outputs, total = [], 0.0
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.distributed.world_size == 1 \
                else self.wrapped.no_sync()
            with sync, self.embedding_gradients.sparse_lookups():
                with autocast(self.device, self.precision):
                    out = self.wrapped(**batch)
                loss = out["loss"] / len(micro_batches)
                with self.gradient_norms.taken() if last and self._clips_in_optimizer() \
                        else contextlib.nullcontext():
                    self.scaler.scale(loss).backward()
            total += loss.item()
            outputs.append(out)
        self.embedding_gradients.densify()
        if self.distributed.world_size > 1:  # report the loss of the whole global batch
            reduced = torch.tensor([total], device=self.device)
            dist.all_reduce(reduced)
            total = reduced.item() / self.distributed.world_size
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            if not self.skip_nonfinite:
                raise NonFiniteLoss(
                    f"the loss became {total} at step {self.scheduler.last_epoch + 1}; the last "
                    "good checkpoint is kept. Lower the learning rate, use fp32 or bf16 instead "
                    "of fp16, or pass skip_nonfinite to skip such steps."
                )
            self.skipped_steps += 1
            return outputs, total
        self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm:
            self._clip_gradients()
        self.scaler.step(self.optimizer)
        self.optimizer.__dict__.pop("grad_scale", None)  # this step's clipping, if set
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return outputs, total

    def _clip_gradients(self) -> None:
        """Scale the gradients to norm ``max_grad_norm`` when it is exceeded. A fused optimizer
        (bertkit's AdamW on CPU and CUDA) divides them by its ``grad_scale`` as it reads them,
        so they are scaled there instead of in a pass over every gradient of their own (~2% of a
        fine-tuning step on a CPU); the same update, to rounding."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if not self._clips_in_optimizer():
            torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
            return
        norm = self.gradient_norms.total(parameters,
                                         self.embedding_gradients.norm_parts(parameters))
        self.optimizer.grad_scale = torch.clamp((norm + 1e-6) / self.max_grad_norm, min=1.0)

    def _clips_in_optimizer(self) -> bool:
        """Whether `_clip_gradients` hands the scale to a fused optimizer (fp16's scaler sets
        ``grad_scale`` itself)."""
        return bool(self.max_grad_norm) and not self.scaler.is_enabled() and getattr(
            self.optimizer, "_step_supports_amp_scaling", False)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state["skipped_steps"]


def build_trainer(model, settings, total_steps: int, *, device, precision,
                  distributed: Distributed = Distributed()) -> Trainer:
    """The optimiser, schedule and step runner a job's settings describe (the fields ``lr``,
    ``warmup``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``, ``optimizer``,
    ``max_grad_norm``, ``skip_nonfinite``), for a run of ``total_steps``."""
    optimizer = build_optimizer(model, name=settings.optimizer, lr=settings.lr,
                                weight_decay=settings.weight_decay,
                                betas=(settings.beta1, settings.beta2), eps=settings.eps)
    return Trainer(model, optimizer, WarmupLinearDecay(optimizer, settings.warmup, total_steps),
                   device=device, precision=precision, max_grad_norm=settings.max_grad_norm,
                   skip_nonfinite=settings.skip_nonfinite, distributed=distributed)


# --------------------------------------------------------------------------------------------
# Reproducibility, checkpoints, logs, clean stops


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> dict:
    """This process's random states (Python, numpy, torch, and its GPU's when on one)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    # Plain tuples and tensors only, so the state loads with torch.load(weights_only=True).
    states = {"python": random.getstate(),
              "numpy": (name, torch.from_numpy(keys.copy()), position, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict, device: torch.device) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        cuda = states["cuda"]  # this GPU's; older checkpoints held a list of every GPU's
        torch.cuda.set_rng_state(cuda[device.index or 0] if isinstance(cuda, list) else cuda,
                                 device)


def every_ranks_rng_states(device: torch.device, distributed: Distributed) -> list[dict]:
    """`rng_states` of every rank, in rank order, on rank 0 (a collective: all ranks call it;
    the other ranks get an empty list). Each rank draws its own dropout masks, so an exact
    resume needs each rank's states, not rank 0's everywhere."""
    mine = rng_states(device)
    if distributed.world_size == 1:
        return [mine]
    # as torch.save's bytes: the object collectives' unpickler cannot rebuild tensors
    buffer = io.BytesIO()
    torch.save(mine, buffer)
    gathered = [None] * distributed.world_size if distributed.is_main else None
    dist.gather_object(buffer.getvalue(), gathered, dst=0)
    return [torch.load(io.BytesIO(b), weights_only=True) for b in gathered or []]


def restore_ranks_rng_states(saved: dict | list[dict], device: torch.device,
                             distributed: Distributed) -> bool:
    """This rank's states from a checkpoint's; False where it holds none for this rank (another
    number of ranks, or a checkpoint that kept rank 0's alone): its seeded states stay."""
    saved = saved if isinstance(saved, list) else [saved]
    if len(saved) != distributed.world_size and distributed.rank > 0:
        return False
    restore_rng_states(saved[distributed.rank], device)
    return len(saved) == distributed.world_size


class Checkpoints:
    """``step-NNNNNNN`` folders under ``directory``: the model in HuggingFace layout plus
    ``trainer_state.pt``. Written to a temporary folder and renamed, so a crash mid-save never
    leaves a checkpoint that looks complete; only the newest ``keep`` are kept.
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory)
        self.keep = keep

    def all(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob("step-*") if p.name[5:].isdigit()
                 and p.is_dir() and (p / STATE_NAME).is_file()]
        return sorted(found, key=lambda p: int(p.name[5:]))  # step-10000000 after step-9999999

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, model, tokenizer, state: dict) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{step:07d}"
        with files.reporting_full_disk(f"the checkpoint {final}",
                                       "The last complete checkpoint is kept."):
            with files.atomic_path(final) as staging:
                model.save_pretrained(staging)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
                torch.save({**state, "step": step}, staging / STATE_NAME)
        for old in self.all()[:-self.keep]:
            shutil.rmtree(old)
        return final

    @staticmethod
    def load_state(path: str | Path) -> dict:
        return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)


class MetricsLog:
    """Appends one JSON object per line; only the main rank writes."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.started = time.time()

    def write(self, **record) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": round(time.time() - self.started, 3), **record}
        size = self.path.stat().st_size if self.path.is_file() else 0
        with files.reporting_full_disk(self.path, "The lines before are kept."):
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError:  # no half line left behind for the next reader
                with contextlib.suppress(OSError):
                    os.truncate(self.path, size)
                raise


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop records past ``last_step``: a resumed run redoes those steps and logs them again."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
        files.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class Stopped(KeyboardInterrupt):
    """A stage of a longer job stopped by SIGINT/SIGTERM after saving its work; ``exit_code``
    is the shell's code for that signal (130, 143)."""

    def __init__(self, exit_code: int = 130):
        super().__init__(exit_code)
        self.exit_code = exit_code


class GracefulStop:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so it can save before exiting.

    A second signal falls through to the default behaviour, for a user who insists. Blocks
    nest (a demo stage around a fine-tuning run): a stop requested before the inner block
    begins is the inner block's too, and one the inner block received is the outer block's
    once it ends, so a signal that came too late to stop the inner work still stops the job.
    """

    _active: list[GracefulStop] = []  # the blocks entered, outermost first

    def __init__(self):
        self.requested = False
        self.signal: int | None = None
        self._previous = {}

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 130 for SIGINT, 143 SIGTERM."""
        return 128 + (self.signal or signal.SIGINT)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum
        signal.signal(signum, self._default(signum))

    def _default(self, signum) -> object:
        """The handler the outermost block replaced: where a second signal goes."""
        return (self._active[0] if self._active else self)._previous[signum]

    def __enter__(self):
        outer = self._active[-1] if self._active else None
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        self._active.append(self)
        if outer is not None and outer.requested:
            self.requested, self.signal = True, outer.signal
            signal.signal(self.signal, self._default(self.signal))
        return self

    def __exit__(self, *exc):
        outer = self._active[-2] if len(self._active) > 1 else None
        for signum, handler in self._previous.items():
            signal.signal(signum, self._default(signum) if signum == self.signal else handler)
        self._active.remove(self)
        if outer is not None and self.requested and not outer.requested:
            outer.requested, outer.signal = True, self.signal
        return False
