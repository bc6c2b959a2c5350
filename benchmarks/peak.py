"""The machine's limit, measured in the same run as a benchmark, and BERT's model FLOPs.

Every benchmark that reports MFU (model FLOPs utilisation) imports this module, so all of them
measure the peak and count FLOPs the same way:

- `measure_peaks` times square matmuls (1024² and 2048² on a CPU, 4096² and 8192² on a GPU; as
  ``a @ b``, as ``F.linear`` and, on a CPU, through oneDNN with a packed weight, as bertkit's
  CPU inference runs them) in fp32 and bf16 with torch's current thread count and keeps the
  best rate of a few tries: the practical ceiling of this machine, now, for the dense work a
  transformer is made of. (In fp32 on an AMD EPYC, MKL's ``a @ b`` reached ~0.88x oneDNN's.)
- `fast_precisions` / `parse_precisions`: what ``--precisions auto`` means in every benchmark,
  fp32 plus bf16 only where the hardware has it (AVX512-BF16/AMX, a GPU).
- `forward_flops` counts the matmul FLOPs one forward pass of BERT needs over sequences of given
  real (unpadded) lengths; `training_flops` is 3x that (the backward pass costs two forwards).
  Padding, embedding lookups, layer norms, softmax, GELU and dropout are not counted: they are
  the work a fast implementation avoids or hides, so MFU = counted FLOPs per second / peak.
  Nor is what no head reads: the MLM decoder at unmasked positions, and the last layer at the
  positions whose state no head reads (all but [CLS] for a classifier, all but [CLS] and the
  masked ones in pre-training), which bertkit skips and transformers computes.

Run it alone to see the peak: ``.venv/bin/python benchmarks/peak.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bertkit.speedups import can_pack_linears

TRAINING_FACTOR = 3  # forward + backward (gradients of activations and of weights: 2 forwards)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int, tries: int = 3,
                min_seconds: float = 0.2, slow_seconds: float = 1.0) -> float:
    """Best FLOP/s of ``size`` x ``size`` products over ``tries`` timed bursts of at least
    ``min_seconds`` each, after one call that warms up, for ``a @ b``, ``a @ b.T`` (``F.linear``,
    the nn.Linear path, which in bf16 on a CPU can take other kernels) and on a CPU oneDNN's
    product with ``b`` packed (`bertkit.speedups.PackedLinear`); where
    that first call alone takes over ``slow_seconds`` (a dtype without native kernels), its rate
    is the answer."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, dtype=dtype, device=device)
    calls = [lambda: torch.matmul(a, b, out=out), lambda: torch.nn.functional.linear(a, b)]
    if can_pack_linears(device):
        packed = torch.ops.mkldnn._reorder_linear_weight(b, size)
        calls.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = 0.0
    for call in calls:
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        first = time.perf_counter() - start
        if first > slow_seconds:
            best = max(best, 2 * size**3 / first)
            continue
        for _ in range(tries):
            count, start = 0, time.perf_counter()
            while True:
                call()
                count += 1
                synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            best = max(best, 2 * size**3 * count / elapsed)
    return best


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Peaks:
    """Measured matmul FLOP/s by precision name ("fp32", "bf16")."""

    rates: dict[str, float]
    sizes: tuple[int, ...]
    threads: int
    device: torch.device
    measurements: int = 1

    def __getitem__(self, precision: str) -> float:
        return self.rates.get(precision, self.rates["fp32"])

    def mfu(self, flops_per_second: float, precision: str) -> float:
        """Model FLOPs utilisation (0..1) against the measured peak of ``precision``; int8 and
        other modes are put against the fp32 peak (say so where it is printed)."""
        return flops_per_second / self[precision]

    def best(self, other: Peaks) -> Peaks:
        """The higher rate of two measurements (e.g. before and after a benchmark's rounds)."""
        rates = {k: max(v, other.rates.get(k, 0.0)) for k, v in self.rates.items()}
        return Peaks(rates, self.sizes, self.threads, self.device, self.measurements + 1)

    def line(self) -> str:
        sizes = "/".join(f"{s}²" for s in self.sizes)
        rates = ", ".join(f"{name} {rate / 1e9:,.1f} GFLOP/s" for name, rate in self.rates.items())
        where = f"{self.threads} threads" if self.device.type == "cpu" else str(self.device)
        runs = "" if self.measurements == 1 else f", best of {self.measurements} measurements"
        return f"measured matmul peak ({sizes}, best of 3, {where}{runs}): {rates}"


def measure_peaks(device: torch.device | str = "cpu", sizes: Sequence[int] | None = None,
                  tries: int = 3, precisions: Sequence[str] = ("fp32", "bf16")) -> Peaks:
    """The best matmul rates of this machine now, by precision (a few seconds on a CPU). A
    larger size is skipped where one call of the smaller took over 0.1 s (bf16 on a CPU without
    native bf16 runs ~100x slower than fp32; its rate at the small size says as much)."""
    device = torch.device(device)
    sizes = tuple(sorted(sizes or ((4096, 8192) if device.type == "cuda" else (1024, 2048))))
    rates = {}
    for name in dict.fromkeys(("fp32", *precisions)):
        for size in sizes:
            rate = matmul_rate(DTYPES[name], device, size, tries)
            rates[name] = max(rates.get(name, 0.0), rate)
            if 2 * size**3 / rate > 0.1:
                break
    return Peaks(rates, sizes, torch.get_num_threads(), device)


def fast_precisions(device: torch.device | str = "cpu") -> list[str]:
    """fp32, and bf16 (fp16 on an older GPU) where the hardware computes it natively: what a
    benchmark's ``--precisions auto`` runs. bf16 on a CPU without AVX512-BF16 or AMX is
    emulated, far slower than fp32, and a benchmark of it would take hours."""
    from bertkit.device import resolve_precision

    device = torch.device(device)
    fast = resolve_precision("auto", device)
    return ["fp32"] + ([fast] if fast != "fp32" else [])


def parse_precisions(value: str, device: torch.device | str = "cpu") -> list[str]:
    """``auto`` (`fast_precisions`) or a comma-separated list such as ``fp32,bf16``."""
    if value == "auto":
        return fast_precisions(device)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in DTYPES]
    if unknown or not chosen:
        raise SystemExit(f"unknown precision(s) {unknown}; choose from auto, fp32, bf16, fp16")
    return chosen


def encoder_matmul_params(config) -> int:
    """Weights of the encoder's matmuls: per layer Q, K, V, output (4 H²) and the feed-forward
    in and out (2 H I). Embedding tables are looked up, not multiplied; biases are ignored."""
    h, inter = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 2 * h * inter)


def forward_flops(config, lengths: Sequence[int], *, predicted: int = 0, pooled: int = 0,
                  read: Sequence[int] | None = None) -> float:
    """Matmul FLOPs of one BERT forward pass over sequences of the given real lengths.

        encoder   2 · params · tokens               (params: `encoder_matmul_params`)
        attention 4 · L · T² · H per sequence       (Q·Kᵀ and weights·V, 2 T² H each, per layer)
        MLM head  2 · predicted · (H² + H · V)      (transform and decoder, masked positions only)
        pooler    2 · pooled · H²                   (the [CLS] dense layer of NSP / classifiers)

    ``lengths``: real tokens of each sequence (padding is not model work); ``predicted``: masked
    positions the MLM decoder scores; ``pooled``: sequences through the pooler; ``read``: per
    sequence, the positions whose final state a head reads (None: all): the last layer needs its
    keys and values at every token, its queries, output and feed-forward only there.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    read = lengths if read is None else read
    per_layer = encoder_matmul_params(config) // layers
    key_value = 2 * h * h
    return (2 * per_layer * sum(lengths) * (layers - 1)
            + 2 * (key_value * sum(lengths) + (per_layer - key_value) * sum(read))
            + 4 * h * sum(t * t for t in lengths) * (layers - 1)
            + 4 * h * sum(t * r for t, r in zip(lengths, read, strict=True))
            + 2 * predicted * (h * h + h * config.vocab_size)
            + 2 * pooled * h * h)


def training_flops(config, lengths: Sequence[int], *, predicted: int = 0, pooled: int = 0,
                   read: Sequence[int] | None = None) -> float:
    """Model FLOPs of one training step over these sequences: 3x the forward pass."""
    return TRAINING_FACTOR * forward_flops(config, lengths, predicted=predicted, pooled=pooled,
                                           read=read)


if __name__ == "__main__":
    where = "cuda" if torch.cuda.is_available() else "cpu"
    print(measure_peaks(where, precisions=fast_precisions(where)).line())
