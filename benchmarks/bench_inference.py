"""Sentence embeddings: bertkit's `Embedder` against transformers' `BertModel`, side by side.

Both embed the same real sentences (Wikipedia leads split into sentences, mixed lengths) into
mean-pooled, L2-normalised vectors, the sentence-transformers recipe. The reference is what a
user writes with transformers: its tokenizer and `BertModel` (default attention), batches of 32
in input order, fp32. bertkit runs its defaults (exact fp32) and each opt-in mode. Runs
alternate in one process, round after round, so every system sees the same machine load; the
ratio of each round is HF's time over bertkit's in that round, and the median over rounds is
reported (absolute times on a shared machine are noise). Accuracy: exact mode against HF (max
abs difference), opt-in modes against bertkit's fp32 vectors (cosine).

    .venv/bin/python benchmarks/bench_inference.py                      # all-MiniLM-L6-v2
    .venv/bin/python benchmarks/bench_inference.py --preset base --sentences 1000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from bertkit.config import BertConfig
from bertkit.embeddings import Embedder, length_sorted_batches, padded
from bertkit.export import export_onnx
from bertkit.model import BertModel
from bertkit.sources import fetch
from bertkit.tokenizer import BertTokenizer

MODEL = "all-minilm-l6-v2"
GOALS = {"fp32": 2.0, "fastest": 4.0}


def wiki_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences drawn at random from all Wikipedia lead sections."""
    records = json.loads(fetch("wiki-leads", quiet=True).read_text(encoding="utf-8"))
    sentences = [s for title in sorted(records)
                 for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", records[title]["extract"]) if s]
    return random.Random(seed).sample(sentences, count)


def model_folder(preset: str | None, scratch: Path) -> Path:
    """all-MiniLM-L6-v2, or a preset with random weights and the same (bert-base) vocabulary."""
    minilm = fetch(MODEL, quiet=True)
    if preset is None:
        return minilm
    torch.manual_seed(0)
    BertModel(BertConfig.from_preset(preset)).save_pretrained(scratch)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json",
                 "special_tokens_map.json"):
        shutil.copy(minilm / name, scratch / name)
    return scratch


class HuggingFace:
    """What a transformers user writes: tokenizer + BertModel, batches of 32 in input order."""

    def __init__(self, folder: Path):
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.BertModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), 32):
            batch = self.tokenizer(texts[start:start + 32], padding=True, truncation=True,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            mean = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(vectors).numpy()


class OnnxRuntime:
    """The encoder exported by `bertkit.export.export_onnx`, run by onnxruntime on bertkit's
    length-sorted batches."""

    def __init__(self, folder: Path, scratch: Path, batch_tokens: int):
        import onnxruntime

        path = export_onnx(folder, scratch / "encoder.onnx")
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = BertTokenizer.from_pretrained(folder)
        self.width = BertConfig.from_json_file(folder / "config.json").hidden_size
        self.batch_tokens = batch_tokens or 2048  # the Embedder's CPU default

    def encode(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts, truncation=True)["input_ids"]
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        for rows in length_sorted_batches([len(row) for row in ids], self.batch_tokens):
            input_ids, mask = padded([ids[i] for i in rows])
            hidden = self.session.run(None, {"input_ids": input_ids.numpy(),
                                             "attention_mask": mask.numpy(),
                                             "token_type_ids": np.zeros_like(mask.numpy())})[0]
            mean = (hidden * mask.numpy()[..., None]).sum(1) / mask.numpy().sum(1, keepdims=True)
            out[rows] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        return out


def build_systems(folder: Path, scratch: Path, modes: list[str], batch_tokens: int,
                  warmup_texts: list[str]) -> dict:
    systems = {"hf": HuggingFace(folder)}
    options = {"fp32": {}, "bf16": {"precision": "bf16"}, "int8": {"quantize": "int8"},
               "compile": {"compile": True}, "bf16+compile": {"precision": "bf16",
                                                               "compile": True}}
    for mode in modes:
        started = time.perf_counter()
        if mode == "onnx":
            systems[mode] = OnnxRuntime(folder, scratch, batch_tokens)
        else:
            systems[mode] = Embedder(folder, batch_tokens=batch_tokens, **options[mode])
        systems[mode].encode(warmup_texts)  # compilation and first-call costs, not timed
        print(f"  set up {mode}: {time.perf_counter() - started:.1f} s")
    return systems


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--preset", help="random weights of this size (e.g. base) instead of "
                        "all-MiniLM-L6-v2's")
    parser.add_argument("--modes", default="fp32,bf16,int8,onnx",
                        help="bertkit modes: fp32, bf16, int8, onnx, compile, bf16+compile")
    parser.add_argument("--batch-tokens", type=int,
                        help="bertkit's padded tokens per batch (default: the Embedder's)")
    args = parser.parse_args()

    texts = wiki_sentences(args.sentences)
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(args.preset, Path(scratch))
        systems = build_systems(folder, Path(scratch), modes, args.batch_tokens, texts[:64])
        lengths = [len(ids) for ids in systems["hf"].tokenizer(texts)["input_ids"]]
        print(f"{len(texts)} sentences, {np.mean(lengths):.1f} tokens on average (min "
              f"{min(lengths)}, max {max(lengths)}); model {args.preset or MODEL}; "
              f"{torch.get_num_threads()} threads; HF attention "
              f"{systems['hf'].model.config._attn_implementation}")
        seconds = {name: [] for name in systems}
        vectors = {}
        for round_number in range(args.rounds):
            for name, system in systems.items():
                started = time.perf_counter()
                vectors[name] = system.encode(texts)
                seconds[name].append(time.perf_counter() - started)
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{name} {s[-1]:.1f} s" for name, s in seconds.items()))

    print(f"\n{'system':20} {'median s':>9} {'sent/s':>7} {'x HF (rounds)':>19}  accuracy")
    hf_median = statistics.median(seconds["hf"])
    print(f"{'hf fp32, batch 32':20} {hf_median:9.2f} {len(texts) / hf_median:7.0f} "
          f"{'1.00':>19}  reference")
    speedups, cosines = {}, {}
    for name in modes:
        rounds = [h / s for h, s in zip(seconds["hf"], seconds[name], strict=True)]
        speedups[name] = statistics.median(rounds)
        median = statistics.median(seconds[name])
        spread = f"{speedups[name]:.2f} ({min(rounds):.1f}-{max(rounds):.1f})"
        if name == "fp32":
            accuracy = (f"max |diff| to HF {np.abs(vectors[name] - vectors['hf']).max():.1e}, "
                        f"min cosine {cosine(vectors[name], vectors['hf']).min():.6f}")
        else:
            cos = cosines[name] = cosine(vectors[name], vectors.get("fp32", vectors["hf"]))
            accuracy = f"cosine to fp32: mean {cos.mean():.6f}, min {cos.min():.6f}"
        print(f"{'bertkit ' + name:20} {median:9.2f} {len(texts) / median:7.0f} {spread:>19}  "
              f"{accuracy}")

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    if "fp32" in speedups:
        diff = np.abs(vectors["fp32"] - vectors["hf"]).max()
        print(f"\nexact fp32: {speedups['fp32']:.2f}x HF, max abs diff {diff:.1e} (goal >= "
              f"{GOALS['fp32']}x and <= 1e-4: "
              f"{verdict(speedups['fp32'] >= GOALS['fp32'] and diff <= 1e-4)})")
    accurate = [m for m, cos in cosines.items() if cos.mean() >= 0.999]
    if accurate:
        fastest = max(accurate, key=speedups.get)
        print(f"fastest opt-in mode with mean cosine >= 0.999: {fastest}, "
              f"{speedups[fastest]:.2f}x HF fp32 (goal >= {GOALS['fastest']}x: "
              f"{verdict(speedups[fastest] >= GOALS['fastest'])})")


if __name__ == "__main__":
    main()
