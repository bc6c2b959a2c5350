"""Tokenizer speed: bertkit's BertTokenizer against transformers' fast tokenizer, side by side.

Both load the same bert-base-uncased vocabulary (all-MiniLM-L6-v2's) and tokenize the same real
Wikipedia leads; the two alternate round by round in one process, so machine noise hits both
alike. Three workloads: one batch call over every text, one call per text, and sentence pairs
truncated to 128 tokens (longest first). Prints MB/s, the ratio bertkit / transformers, and
how many rows got other ids, and issue 17's bar (every workload >= 0.9x transformers). Batch
calls run in parallel in both (the Rust `tokenizers` thread pool: RAYON_NUM_THREADS, all cores
by default; TOKENIZERS_PARALLELISM=false turns it off for both).

    .venv/bin/python benchmarks/bench_tokenizer.py [--rounds 5] [--texts 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import transformers

import bertkit
from bertkit.tokenizer import BertTokenizer


def workloads(texts: list[str]) -> dict:
    """name -> (call(tokenizer) -> list of id lists, bytes processed)."""
    pairs = list(zip(texts[::2], texts[1::2], strict=False))
    size = sum(len(t.encode()) for t in texts)

    def batch(tokenizer):
        return tokenizer(texts)["input_ids"]

    def single(tokenizer):
        return [tokenizer(text)["input_ids"] for text in texts]

    def pair(tokenizer):
        return tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                         max_length=128)["input_ids"]

    return {"batch call": (batch, size), "one call per text": (single, size),
            "pairs, truncated to 128": (pair, size)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=3000)
    args = parser.parse_args()
    folder = bertkit.fetch("all-minilm-l6-v2", quiet=True)
    records = json.loads(bertkit.fetch("wiki-leads", quiet=True).read_text())
    texts = [records[key]["extract"] for key in sorted(records)][:args.texts]
    tokenizers = {"bertkit": BertTokenizer.from_pretrained(folder),
                  "transformers fast": transformers.BertTokenizerFast.from_pretrained(folder)}
    print(f"{len(texts)} Wikipedia leads, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB, "
          f"{args.rounds} rounds alternating; {os.cpu_count()} CPUs, RAYON_NUM_THREADS="
          f"{os.environ.get('RAYON_NUM_THREADS', 'unset')}, TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}\n")
    print(f"{'workload':26} {'bertkit MB/s':>13} {'transformers MB/s':>18} {'ratio':>7} "
          "rows with other ids")
    ratios = {}
    for name, (call, size) in workloads(texts).items():
        seconds = {label: [] for label in tokenizers}
        outputs = {}
        for _ in range(args.rounds):
            for label, tokenizer in tokenizers.items():
                started = time.perf_counter()
                outputs[label] = call(tokenizer)
                seconds[label].append(time.perf_counter() - started)
        differ = sum(a != b for a, b in zip(outputs["bertkit"], outputs["transformers fast"],
                                            strict=True))
        speed = {label: size / statistics.median(s) / 1e6 for label, s in seconds.items()}
        ratios[name] = speed["bertkit"] / speed["transformers fast"]
        print(f"{name:26} {speed['bertkit']:13.2f} {speed['transformers fast']:18.2f} "
              f"{speed['bertkit'] / speed['transformers fast']:7.2f} {differ}")
    slowest = min(ratios, key=ratios.get)
    print(f"\nslowest workload: {slowest}, {ratios[slowest]:.2f}x transformers (goal >= 0.9x on "
          f"every workload: {'met' if ratios[slowest] >= 0.9 else 'NOT met'})")
    print("(Pairs: where truncation leaves an odd budget, Google's longest-first gives the "
          "extra token to the first text and Rust's to the second; bertkit follows Google.)")


if __name__ == "__main__":
    main()
