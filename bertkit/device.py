"""Where and in which precision to compute, for training, evaluation and inference alike."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_device(requested: str | torch.device | None = None) -> torch.device:
    """The requested device, else this rank's GPU when there is one, else the CPU. A bare
    ``cuda`` is this rank's GPU too: under torchrun every rank on GPU 0 would stop NCCL."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:  # torch's message lists a dozen device types bertkit never uses
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {str(requested)!r}: bertkit runs on cpu, cuda or cuda:N "
                             "(a GPU's number).")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but PyTorch sees no CUDA GPU "
                             "here; leave --device out to use the CPU.")
        if device.type != "cuda" or device.index is not None:
            return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 where the hardware computes it natively, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 with a loss scaler needs a CUDA GPU; on the CPU use bf16 or fp32.")
    if precision != "auto":
        return precision
    if device.type == "cuda":  # bf16 from Ampere on; older GPUs only emulate it, slowly
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, precision: str):
    """Mixed precision for ``precision`` (bf16/fp16), nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def keep_freed_memory(device: torch.device) -> None:
    """Let a CPU process keep the memory one step frees for the next (glibc's malloc).

    By default glibc maps every block over 128 KiB afresh and hands freed memory back to the
    system, so each step pays a page fault for every 4 KiB of its activations again: ~50,000 a
    step in the demo's pre-training, 1.2x its speed. Blocks up to 32 MiB (glibc's most) now come
    from the heap, which keeps up to 1 GiB free and grows 256 MiB at a time: the process holds
    its high-water mark, as PyTorch's CUDA allocator does. Nothing to do on a GPU or elsewhere.
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - musl and other C libraries lack it
    except (OSError, AttributeError):
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_TOP_PAD, 256 << 20)
