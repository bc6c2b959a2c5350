"""The main job for now: embed Wikipedia lead sentences with real weights, search by meaning."""

from __future__ import annotations

import json
import re
import time

from .inference import Embedder
from .sources import fetch

QUERIES = [
    "A painter of the Italian Renaissance.",
    "The largest planet of the solar system.",
    "An illness that spreads from person to person.",
    "A machine that computes with numbers.",
    "A sport played with a ball and a bat.",
]


def lead_sentences(limit: int) -> list[tuple[str, str]]:
    """(title, first sentence) for ``limit`` Wikipedia leads spread evenly over the titles."""
    records = json.loads(fetch("wiki-leads").read_text(encoding="utf-8"))
    titles = sorted(records)
    step = max(1, len(titles) // limit)
    picked = titles[::step][:limit]
    return [(t, re.split(r"(?<=[.!?])\s+(?=[A-Z])", records[t]["extract"])[0]) for t in picked]


def run(corpus_size: int = 3000, top_k: int = 3, queries: list[str] | None = None) -> None:
    queries = queries or QUERIES
    corpus = lead_sentences(corpus_size)
    print(f"Embedding {len(corpus)} Wikipedia lead sentences with all-MiniLM-L6-v2 "
          "(mean pooling + L2, the sentence-transformers recipe)...")
    started = time.perf_counter()
    embedder = Embedder("all-minilm-l6-v2")
    vectors = embedder.encode([sentence for _, sentence in corpus], progress=True)
    elapsed = time.perf_counter() - started
    print(f"{len(corpus)} sentences in {elapsed:.1f} s ({len(corpus) / elapsed:.0f} per second)\n")
    scores = embedder.encode(queries) @ vectors.T  # cosine similarity: both sides unit length
    for query, row in zip(queries, scores, strict=True):
        print(f"query: {query}")
        for index in row.argsort()[::-1][:top_k]:
            title, sentence = corpus[index]
            shown = sentence if len(sentence) <= 90 else sentence[:87] + "..."
            print(f"  {row[index]:.3f}  {title}: {shown}")
        print()
