"""BERT's WordPiece tokenizer: Google's text rules, run by the Rust `tokenizers` engine.

Google's `tokenization.py` (kept in transformers as `BertTokenizerLegacy`) fixes the text rules every
BERT checkpoint was trained with: drop control characters, isolate CJK ideographs, NFC-compose,
lowercase and strip accents (uncased models), split off every punctuation character, then greedy
longest-match WordPiece. `tokenizers` ships those steps as `BertNormalizer` and `BertPreTokenizer`,
but they drift from the reference:

* they classify characters with Unicode tables older than Python's, which the reference uses: they
  keep unassigned code points and new format characters that it drops, do not split off
  punctuation added since Unicode 9, and strip U+1734, a combining mark that is no longer Mn;
* their last-but-one CJK range starts at U+2B920 instead of U+2B820;
* they lowercase character by character, so a word-final capital sigma becomes "σ" where Python's
  `str.lower` gives "ς";
* they never NFC-compose, and their NFC/NFD tables lack decompositions newer than Unicode 12.

So the pipeline below is assembled from the engine's generic parts (regex replace, NFC, lowercase,
NFD, regex split) driven by character classes computed from Python's `unicodedata`. That matches
the reference on every code point (the tests check them all) while encoding stays in Rust: parallel
batches, and character offsets into the original text.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Encoding, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # the order train_vocab gives them: ids 0..4
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")
VOCAB_NAME = "vocab.txt"
CONFIG_NAME = "tokenizer_config.json"
MAX_CHARS_PER_WORD = 100  # Google's limit: longer words become a single [UNK]

# Google's `_is_chinese_char`: the CJK Unified Ideographs blocks, not Hangul or kana.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Google counts all non-alphanumeric ASCII as punctuation, although "$", "+", "^", "`" ... are not
# in a Unicode P* category.
_ASCII_PUNCTUATION = {*range(33, 48), *range(58, 65), *range(91, 97), *range(123, 127)}
# A capital sigma that ends a word, in Unicode's sense that `str.lower` implements.
_FINAL_SIGMA = r"(?<=\p{Cased}\p{Case_Ignorable}*)Σ(?!\p{Case_Ignorable}*\p{Cased})"
# Lone surrogates can live in a Python str but not reach Rust; the reference drops them (they
# are in category Cs), and a same-length stand-in that is dropped too keeps offsets valid.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _regex_class(code_points: Iterable[int]) -> str:
    """An Oniguruma character class matching exactly `code_points` (ascending)."""
    ranges: list[list[int]] = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges) + "]"


@functools.cache
def _google_text_rules() -> dict[str, object]:
    """Character classes and Unicode patches for Google's rules, from Python's `unicodedata`.

    Returns `dropped`, `nonspacing_marks` and `alone` (punctuation and CJK: always a word of their
    own) as regex classes, and `decompositions`: (character, NFD form) pairs the engine's older
    normalisation tables do not know.
    """
    engine_nfd = normalizers.NFD()
    dropped, nonspacing_marks, alone, decompositions = [], [], [], []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        char = chr(cp)
        category = unicodedata.category(char)
        if cp in (0, 0xFFFD) or (category[0] == "C" and char not in "\t\n\r"):
            dropped.append(cp)
        if category == "Mn":
            nonspacing_marks.append(cp)
        if (cp in _ASCII_PUNCTUATION or category[0] == "P"
                or any(lo <= cp <= hi for lo, hi in _CJK_RANGES)):
            alone.append(cp)
        decomposition = unicodedata.decomposition(char)
        if decomposition and not decomposition.startswith("<"):
            nfd = unicodedata.normalize("NFD", char)
            if engine_nfd.normalize_str(char) != nfd:
                decompositions.append((char, nfd))
    return {"dropped": _regex_class(dropped), "nonspacing_marks": _regex_class(nonspacing_marks),
            "alone": _regex_class(alone), "decompositions": tuple(decompositions)}


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    """Google's `_clean_text`, then NFC and, for uncased models, lowercasing and accent stripping."""
    rules = _google_text_rules()
    # Patch the engine's NFC/NFD for characters whose decomposition its tables lack: compose
    # after its NFC and decompose after its NFD, as Python's tables would have.
    compose = [normalizers.Replace(nfd, unicodedata.normalize("NFC", nfd))
               for _, nfd in rules["decompositions"]]
    decompose = [normalizers.Replace(char, nfd) for char, nfd in rules["decompositions"]]
    steps = [normalizers.Replace(Regex(rules["dropped"]), ""), normalizers.NFC(), *compose]
    if lowercase:
        steps += [
            normalizers.Replace(Regex(_FINAL_SIGMA), "ς"),
            normalizers.Lowercase(),
            normalizers.NFD(),
            *decompose,
            normalizers.Replace(Regex(rules["nonspacing_marks"]), ""),
        ]
    return normalizers.Sequence(steps)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split at whitespace, then make each punctuation character and CJK ideograph its own word."""
    alone = Regex(_google_text_rules()["alone"])
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(alone, behavior="isolated")]
    )


def _engine(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    """The Rust tokenizer; its post-processor adds [CLS]/[SEP] for users of the batch API."""
    engine = Tokenizer(
        models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD)
    )
    engine.normalizer = _normalizer(lowercase)
    engine.pre_tokenizer = _pre_tokenizer()
    engine.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # Special tokens typed in the text stay whole, as in the reference (matched case-sensitively,
    # before normalisation).
    engine.add_special_tokens(list(SPECIAL_TOKENS))
    engine.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    return engine
