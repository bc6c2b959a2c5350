"""BERT's WordPiece tokenizer: Google's text rules, run by the Rust `tokenizers` engine.

Google's `tokenization.py` (google-research/bert) fixes the text rules every original BERT
checkpoint was trained with: drop control characters, isolate CJK ideographs, lowercase and strip
accents (uncased models), split off every punctuation character, then greedy longest-match
WordPiece on words of at most 200 characters; its `run_classifier.py` frames a pair as
`[CLS] A [SEP] B [SEP]`, and a second text with no tokens as no second text. transformers keeps
a copy as `BertTokenizerLegacy`, which departs from it: it NFC-composes the text first and keeps
special tokens typed in the text whole (both kept here), drops every "C*" character where Google
drops only Cc and Cf (Google keeps private-use, unassigned and surrogate code points), turns
words of 101-200 characters into [UNK], and gives `[CLS] A [SEP] [SEP]` for an empty second text
(these three follow Google here).
`tokenizers` ships the text steps as `BertNormalizer` and `BertPreTokenizer`, which drift further:

* they classify characters with Unicode 9-era tables where the reference uses Python's: they keep
  newer format characters that it drops, do not split off newer punctuation, strip U+1734 (no
  longer a nonspacing mark) and keep newer nonspacing marks;
* their CJK range U+2B820-U+2CEAF starts at U+2B920;
* they lowercase character by character, so a word-final capital sigma becomes "σ" where Python's
  `str.lower` gives "ς" ("ΟΔΟΣ" -> "οδος");
* they do not NFC-compose (matters for cased models), and the engine's NFC/NFD tables lack
  decompositions newer than Unicode 9 (U+11938).

So the pipeline here is assembled from the engine's generic parts (regex replace, NFC, lowercase,
NFD, regex split), driven by character classes computed from Python's `unicodedata`. It matches
the reference on every code point (the tests check them all) with two exceptions: for cased
models, a combining mark newer than Unicode 9 has no combining class in the engine's NFC, so it
blocks the composition of an accent after it; for uncased models, the few code points that
Python's tables leave unassigned but the engine's newer ones know as capital letters (U+A7CB, the
Garay capitals...) would be lowercased by the engine, so they become U+FFFF, which like them is
kept and in no vocabulary: the same [UNK], not the same normalised text. Encoding stays in Rust:
parallel batches, and character offsets into the original text.

Folders: `vocab.txt` (+ `tokenizer_config.json`) as Google and transformers 4 write them, or a
WordPiece `tokenizer.json` as transformers 5 and sentence-transformers write them; a
`tokenizer.json` asking for something else than BERT's rules is refused, naming the setting.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tokenizers
import torch
from tokenizers import (
    Encoding,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from . import files
from .sources import MODELS, cache_dir, fetch

logger = logging.getLogger("bertkit")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # the order train_vocab gives them: ids 0..4
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length")
VOCAB_NAME = "vocab.txt"
CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_FILE_NAME = "tokenizer.json"
# Google's WordpieceTokenizer limit (max_input_chars_per_word=200): longer words become a single
# [UNK]. transformers uses 100, and its converters write 100 into every tokenizer.json.
MAX_CHARS_PER_WORD = 200
_TRANSFORMERS_MAX_CHARS_PER_WORD = 100
# transformers writes this model_max_length when a checkpoint states none.
_TRANSFORMERS_NO_MAX_LENGTH = int(1e30)

# Google's `_is_chinese_char`: the CJK Unified Ideographs blocks, not Hangul or kana.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Google counts all non-alphanumeric ASCII as punctuation, although "$", "+", "^", "`" ... are not
# in a Unicode P* category.
_ASCII_PUNCTUATION = {*range(33, 48), *range(58, 65), *range(91, 97), *range(123, 127)}
# Google drops only these "control" categories (Cc, Cf), tab, newline and return aside.
_CONTROL_CATEGORIES = ("Cc", "Cf")
# A stand-in for characters the reference keeps but the engine cannot carry as they are: it is
# kept too (an unassigned code point), is in no vocabulary, and has no case or decomposition.
_STAND_IN = "\uffff"
# Lone surrogates can live in a Python str but not reach Rust; the reference keeps them (category
# Cs), as part of a word that no vocabulary holds, so a same-length stand-in keeps ids and offsets.
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


class _TextRules(NamedTuple):
    """Google's character classes as regex classes, and Unicode patches for the engine."""

    dropped: str  # `_clean_text` removes these: NUL, U+FFFD and the Cc/Cf "control" characters
    nonspacing_marks: str  # category Mn, what accent stripping removes after NFD
    alone: str  # punctuation and CJK ideographs: always a word of their own
    cased: str  # cased and not case-ignorable: where `str.lower`'s final-sigma rule looks
    case_ignorable: str
    decompositions: tuple[tuple[str, str], ...]  # (character, NFD) the engine's tables lack
    newer_capitals: str | None  # kept; unassigned for Python, but the engine would lowercase them


def _is_dropped(char: str, category: str) -> bool:
    """Google's `_clean_text` test: NUL, U+FFFD and control characters other than tab/newline."""
    return char in "\x00\ufffd" or (category in _CONTROL_CATEGORIES and char not in "\t\n\r")


def _engine_disagreements(chars: list[str], engine: Callable[[str], str],
                          python: Callable[[str], str]) -> list[int]:
    """Code points of `chars` that `engine` maps differently from `python` (checked in chunks)."""
    found = []
    for start in range(0, len(chars), 4096):
        chunk = chars[start:start + 4096]
        text = " ".join(chunk)
        if engine(text) != python(text):
            found += [ord(c) for c in chunk if engine(c) != python(c)]
    return found


@functools.cache
def _google_text_rules() -> _TextRules:
    """`_evaluate_text_rules`, kept in the bertkit cache: evaluating them takes seconds, which
    every command that tokenizes would pay. The file is per Unicode version of Python,
    `tokenizers` version and this module's text (each can change the answers); an unreadable
    one is evaluated again."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    path = (cache_dir() / "text-rules" / f"unicode-{unicodedata.unidata_version}-tokenizers-"
                                         f"{tokenizers.__version__}-{code}.json")
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        values = json.loads(path.read_text(encoding="utf-8"))
        pairs = tuple((char, nfd) for char, nfd in values.pop("decompositions"))
        return _TextRules(**values, decompositions=pairs)
    rules = _evaluate_text_rules()
    with contextlib.suppress(OSError):  # a read-only cache only costs the time again
        files.write_json(path, rules._asdict())
    return rules


def _evaluate_text_rules() -> _TextRules:
    """Evaluate Google's character tests on every code point with Python's `unicodedata`."""
    engine_nfd = normalizers.NFD()
    dropped, nonspacing_marks, punctuation, cased, case_ignorable, decompositions = (
        [], [], [], [], [], [])
    unassigned = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        char = chr(cp)
        category = unicodedata.category(char)
        if _is_dropped(char, category):
            dropped.append(cp)
            continue
        if category == "Cn":
            unassigned.append(char)
        if category == "Mn":
            nonspacing_marks.append(cp)
        if category[0] == "P" or cp in _ASCII_PUNCTUATION:
            punctuation.append(cp)
        # Python exposes Unicode's Cased and Case_Ignorable only through `str.lower`'s final-sigma
        # rule, so ask it: "xΣ" ends in "ς" when x is cased (and not ignorable), "AxΣ" also when
        # x is ignorable, as the rule skips it to find the cased "A".
        if (char + "Σ").lower().endswith("ς"):
            cased.append(cp)
        elif ("A" + char + "Σ").lower().endswith("ς"):
            case_ignorable.append(cp)
        decomposition = unicodedata.decomposition(char)
        if decomposition and not decomposition.startswith("<"):
            nfd = unicodedata.normalize("NFD", char)
            if engine_nfd.normalize_str(char) != nfd:
                decompositions.append((char, nfd))
    newer_capitals = _engine_disagreements(unassigned, normalizers.Lowercase().normalize_str,
                                           str.lower)
    cjk = (cp for lo, hi in _CJK_RANGES for cp in range(lo, hi + 1))
    return _TextRules(
        dropped=_regex_class(dropped),
        nonspacing_marks=_regex_class(nonspacing_marks),
        alone=_regex_class(sorted({*punctuation, *cjk})),
        cased=_regex_class(cased),
        case_ignorable=_regex_class(case_ignorable),
        decompositions=tuple(decompositions),
        newer_capitals=_regex_class(newer_capitals) if newer_capitals else None,
    )


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    """Google's `_clean_text`, NFC, and for uncased models lowercasing and accent stripping."""
    rules = _google_text_rules()
    # Patch the engine's NFC and NFD for the characters whose decomposition its tables lack.
    nfc = functools.partial(unicodedata.normalize, "NFC")
    compose = [normalizers.Replace(form, nfc(form)) for pair in rules.decompositions
               for form in pair if nfc(form) != form]
    decompose = [normalizers.Replace(char, nfd) for char, nfd in rules.decompositions]
    cased, ignorable = rules.cased, rules.case_ignorable
    steps = [normalizers.Replace(Regex(rules.dropped), ""), normalizers.NFC(), *compose]
    if lowercase:
        if rules.newer_capitals is not None:
            steps.append(normalizers.Replace(Regex(rules.newer_capitals), _STAND_IN))
        steps += [
            # Python's `str.lower` gives "ς" for a capital sigma that ends a word: one preceded by a
            # cased letter and not followed by one, skipping case-ignorable characters. (\K, not a
            # lookbehind: Oniguruma's variable-length lookbehind is quadratic on Greek text.)
            normalizers.Replace(Regex(f"{cased}{ignorable}*\\KΣ(?!{ignorable}*{cased})"), "ς"),
            normalizers.Lowercase(),
            normalizers.NFD(),
            *decompose,
            normalizers.Replace(Regex(rules.nonspacing_marks), ""),
        ]
    return normalizers.Sequence(steps)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split at whitespace, then make each punctuation character and CJK ideograph its own word.

    The engine's whitespace includes all of Google's (and, after `_clean_text`, nothing more), so
    Google's mapping of whitespace to " " is not needed.
    """
    alone = Regex(_google_text_rules().alone)
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(alone, behavior="isolated")]
    )


def _bert_framing(vocab: Mapping[str, int]) -> processors.PostProcessor:
    """`[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` (B and its [SEP] of segment 1)."""
    return processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )


def _engine(vocab: Mapping[str, int], lowercase: bool) -> Tokenizer:
    """The Rust tokenizer; its post-processor adds [CLS]/[SEP] for users of the batch API."""
    engine = Tokenizer(
        models.WordPiece(dict(vocab), unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD)
    )
    engine.normalizer = _normalizer(lowercase)
    engine.pre_tokenizer = _pre_tokenizer()
    engine.decoder = decoders.WordPiece(prefix="##")
    # Special tokens typed in the text stay whole, as in transformers (matched case-sensitively,
    # before normalisation); Google's code would split "[CLS]" into "[", "cl", "##s", "]".
    engine.add_special_tokens(list(SPECIAL_TOKENS))
    engine.post_processor = _bert_framing(vocab)
    return engine


def _transformers_engine(vocab: Mapping[str, int], lowercase: bool) -> Tokenizer:
    """The same tokenizer in the terms every `tokenizer.json` reader knows (BertNormalizer,
    BertPreTokenizer), for transformers 5 and the tools that load `tokenizer.json` themselves."""
    engine = Tokenizer(
        models.WordPiece(dict(vocab), unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD)
    )
    engine.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    engine.decoder = decoders.WordPiece(prefix="##")
    engine.add_special_tokens(list(SPECIAL_TOKENS))
    engine.post_processor = _bert_framing(vocab)
    return engine


class BertTokenizer:
    """BERT's WordPiece tokenizer, with Google's semantics and a HuggingFace-like call.

    `tokenizer(texts)` gives `input_ids`, `token_type_ids` and `attention_mask` for a str or a
    batch (list) of str, optionally paired, truncated, padded and as tensors. The Rust tokenizer
    is `backend`: its `encode_batch` gives the same ids (with [CLS]/[SEP]) without Python-side
    overhead, for data pipelines that do their own truncation; only a pair whose second text has
    no tokens differs there (`[CLS] A [SEP] [SEP]`, where Google and this call give `[CLS] A
    [SEP]`).
    """

    pad_token, unk_token, cls_token, sep_token, mask_token = PAD, UNK, CLS, SEP, MASK

    def __init__(self, vocab_file: str | os.PathLike | Mapping[str, int],
                 do_lower_case: bool = True, model_max_length: int = 512,
                 clean_up_tokenization_spaces: bool = False):
        """`vocab_file`: a `vocab.txt` (one token per line, the line number its id), or a
        token → id mapping with ids 0..N-1. `clean_up_tokenization_spaces`: `decode`'s default,
        as in transformers."""
        if isinstance(vocab_file, Mapping):
            self.vocab = _checked_vocab(dict(vocab_file), "the vocabulary given")
        else:
            self.vocab = _read_vocab(Path(vocab_file))
        self.do_lower_case = bool(do_lower_case)
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.backend = _engine(self.vocab, self.do_lower_case)
        self._tokens_by_id = list(self.vocab)
        self.all_special_tokens = list(SPECIAL_TOKENS)
        self.all_special_ids = [self.vocab[token] for token in SPECIAL_TOKENS]
        (self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id,
         self.mask_token_id) = self.all_special_ids

    def __repr__(self) -> str:
        return (f"BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"model_max_length={self.model_max_length})")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # -- files ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike,
                        do_lower_case: bool | None = None) -> BertTokenizer:
        """Load a tokenizer folder: its `vocab.txt` or, when it has none (folders written by
        transformers 5 and sentence-transformers), its WordPiece `tokenizer.json`; and
        `tokenizer_config.json` if present (`do_lower_case`, `model_max_length`).

        `name_or_path` may also name a model bertkit can fetch (see `bertkit.sources.MODELS`).
        An explicit `do_lower_case` overrides the files'. Settings bertkit cannot honour (another
        model than WordPiece, other text rules than BERT's, added tokens) are refused.
        """
        directory = _tokenizer_folder(name_or_path)
        config_file = directory / CONFIG_NAME
        config = _read_config(config_file)
        vocab_file, json_file = directory / VOCAB_NAME, directory / TOKENIZER_FILE_NAME
        if vocab_file.is_file():
            vocab, lowercase_in_json = _read_vocab(vocab_file), None
        elif json_file.is_file():
            vocab, lowercase_in_json = _read_tokenizer_json(json_file)
        else:
            raise FileNotFoundError(
                f"{vocab_file} not found, nor {TOKENIZER_FILE_NAME}: a tokenizer folder needs a "
                f"{VOCAB_NAME} with one WordPiece token per line or a WordPiece "
                f"{TOKENIZER_FILE_NAME} (save_pretrained and train_vocab write both)."
            )
        configured = config.get("do_lower_case")
        if do_lower_case is None and None not in (configured, lowercase_in_json) and (
                bool(configured) != lowercase_in_json):
            raise ValueError(
                f"{config_file} says do_lower_case={json.dumps(configured)} but {json_file} sets "
                f"normalizer.lowercase={json.dumps(lowercase_in_json)}; make the two agree, or "
                "pass do_lower_case= to choose."
            )
        stated = next((value for value in (do_lower_case, configured, lowercase_in_json)
                       if value is not None), True)
        _check_config_text_rules(config, config_file, bool(stated))
        # BERT's 512 positions where the config states no length.
        model_max_length = _stated_max_length(config, config_file) or 512
        tokenizer = cls(vocab, do_lower_case=stated, model_max_length=model_max_length,
                        clean_up_tokenization_spaces=bool(
                            config.get("clean_up_tokenization_spaces", False)))
        if do_lower_case is None and not stated and not _cased_entries(tokenizer.vocab):
            said = (f"{config_file} says do_lower_case=false" if configured is not None
                    else f"{json_file} sets normalizer.lowercase=false")
            source = vocab_file if lowercase_in_json is None else json_file
            raise ValueError(
                f"{said}, but {source} holds an uncased vocabulary (no entry has an upper-case "
                "letter), so every capitalised word would become [UNK]. Set do_lower_case to true "
                "in the config, or pass do_lower_case=True."
            )
        if do_lower_case is None and configured is None and lowercase_in_json is None:
            cased = _cased_entries(tokenizer.vocab)
            if cased:  # e.g. Google's cased download: a vocab.txt alone
                logger.warning(
                    "%s states no casing, so it is read lower-cased (Google's default), but %d of "
                    "its entries have upper-case letters that lower-cased text never produces. If "
                    "the vocabulary is cased, pass do_lower_case=False (or put a "
                    "tokenizer_config.json with \"do_lower_case\": false beside it).",
                    vocab_file, cased)
        return tokenizer

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[Path, Path, Path]:
        """Write `vocab.txt`, `tokenizer_config.json` and `tokenizer.json`.

        Google's code and transformers' loaders read `vocab.txt`; transformers 5 (its fast
        tokenizer, through `AutoTokenizer`) and sentence-transformers read `tokenizer.json`,
        which states the same vocabulary and rules as BertNormalizer/BertPreTokenizer.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab_file, config_file = directory / VOCAB_NAME, directory / CONFIG_NAME
        json_file = directory / TOKENIZER_FILE_NAME
        vocab_file.write_text("".join(token + "\n" for token in self._tokens_by_id),
                              encoding="utf-8")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS,
            "mask_token": MASK,
            "do_basic_tokenize": True,
            "never_split": None,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        }
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        json_file.write_text(_transformers_engine(self.vocab, self.do_lower_case).to_str(
            pretty=True), encoding="utf-8")
        return vocab_file, config_file, json_file

    # -- encoding ---------------------------------------------------------------------------

    def __call__(self, text: str | Sequence[str] | Sequence[Sequence[str]],
                 text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                 max_length: int | None = None, truncation: bool | str | None = None,
                 padding: bool | str = False, pad_to_multiple_of: int | None = None,
                 stride: int = 0, is_split_into_words: bool = False,
                 return_tensors: str | None = None, return_token_type_ids: bool | None = None,
                 return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False,
                 return_special_tokens_mask: bool = False, return_offsets_mapping: bool = False,
                 return_length: bool = False, return_word_ids: bool = False,
                 add_special_tokens: bool = True, **unsupported: object) -> BatchEncoding:
        """Encode a text, or a batch (list) of texts, optionally each with a second segment.

        Gives `input_ids`, `token_type_ids` and `attention_mask` (the last two unless
        `return_token_type_ids`/`return_attention_mask` is False); with `return_offsets_mapping`
        also `offset_mapping` ((start, end) in the original text of the token's segment, (0, 0)
        for special and padding tokens), with `return_word_ids` also `word_ids` (index of the
        word within its segment, None for special and padding tokens), and with either one
        `sequence_ids` (0 or 1: the token's segment; None for special and padding tokens);
        `return_special_tokens_mask` gives `special_tokens_mask` (1 for [CLS], [SEP] and
        padding) and `return_length` gives `length`. As transformers' `BatchEncoding`, the result
        also has `word_ids(i)`, `sequence_ids(i)` and `to(device)`.

        A batch of pairs is `tokenizer(texts, text_pairs)` or a list of (text, text_pair).
        `is_split_into_words=True` takes each text as a list of words (a batch: a list of such
        lists); word ids and offsets then refer to those words.

        Pairs are `[CLS] A [SEP] B [SEP]`; as in Google's code, a second text with no tokens
        ("", " ", only control characters) or none left after truncation is no second segment:
        `[CLS] A [SEP]`.

        `truncation`: True or "longest_first" (Google's rule: drop the last token of the longer
        segment, of the second on ties, until the whole fits), "only_first" or "only_second";
        a `max_length` given without `truncation` (and without padding) truncates, as in
        transformers. `max_length` counts the special tokens and defaults to `model_max_length`.
        `return_overflowing_tokens=True` keeps what truncation cuts as further rows (windows
        overlapping by `stride` tokens, `overflow_to_sample_mapping` naming each row's text).
        `padding`: True or "longest" (to the longest in the batch) or "max_length", rounded up to
        `pad_to_multiple_of`. `return_tensors="pt"` (torch) or "np" (numpy) gives [batch, length]
        arrays (a single text gets batch size 1); `word_ids` and `sequence_ids`, which hold None,
        stay lists.
        """
        _refuse_unsupported(unsupported)
        if text_pair is None and not is_split_into_words and _is_list_of_pairs(text):
            text, text_pair = [pair[0] for pair in text], [pair[1] for pair in text]
        batched, firsts, seconds = _texts_and_pairs(text, text_pair, is_split_into_words)
        if truncation is None and max_length is not None and padding is False:
            truncation = True  # transformers truncates when only a max_length is given
        truncation = _choice(truncation, "truncation", TRUNCATION_STRATEGIES, "longest_first",
                             off="do_not_truncate")
        padding = _choice(padding, "padding", PADDING_STRATEGIES, "longest", off="do_not_pad")
        limit = self.model_max_length if max_length is None else max_length
        _check_call_options(truncation, seconds is not None, return_tensors, limit)
        _check_window_options(padding, pad_to_multiple_of, stride, return_overflowing_tokens,
                              truncation, seconds is not None, max_length)

        encodings_a = self.backend.encode_batch(firsts, is_pretokenized=is_split_into_words,
                                                add_special_tokens=False)
        encodings_b = (self.backend.encode_batch(seconds, is_pretokenized=is_split_into_words,
                                                 add_special_tokens=False)
                       if seconds is not None else [None] * len(firsts))
        fields = {"token_type_ids": return_token_type_ids is not False,
                  "attention_mask": return_attention_mask is not False,
                  "special_tokens_mask": return_special_tokens_mask,
                  "offset_mapping": return_offsets_mapping, "word_ids": return_word_ids,
                  "sequence_ids": return_offsets_mapping or return_word_ids}
        rows, spans, sample_of_row = [], [], []
        for sample, (a, b) in enumerate(zip(encodings_a, encodings_b, strict=True)):
            for span in _spans(a, b, truncation, limit, add_special_tokens, stride,
                               return_overflowing_tokens):
                rows.append(self._row(span, fields))
                spans.append(span)
                sample_of_row.append(sample)
        if padding is not None:
            width = limit if padding == "max_length" else None
            self._pad_rows(rows, width, pad_to_multiple_of)
        if return_length:
            for row in rows:
                row["length"] = len(row["input_ids"])
        if return_overflowing_tokens:
            for row, sample in zip(rows, sample_of_row, strict=True):
                row["overflow_to_sample_mapping"] = sample
        widths = [len(row["input_ids"]) for row in rows]
        return BatchEncoding(_assembled(rows, batched or return_overflowing_tokens,
                                        return_tensors), spans, widths)

    def _row(self, span: _Span, fields: Mapping[str, bool]) -> dict[str, list]:
        """One encoded sequence: `[CLS] A [SEP]`, or `[CLS] A [SEP] B [SEP]` while B has tokens
        (Google's `run_classifier`), cut to the span's tokens."""
        ids = span.framed(attrgetter("ids"), self.cls_token_id, self.sep_token_id)
        row = {"input_ids": ids}
        if fields["token_type_ids"]:
            length_a = span.length_a + 2 if span.add_special_tokens else span.length_a
            row["token_type_ids"] = [0] * length_a + [1] * (len(ids) - length_a)
        if fields["attention_mask"]:
            row["attention_mask"] = [1] * len(ids)
        if fields["special_tokens_mask"]:
            row["special_tokens_mask"] = span.framed(lambda encoding: [0] * len(encoding), 1, 1)
        if fields["offset_mapping"]:
            row["offset_mapping"] = span.framed(attrgetter("offsets"), (0, 0), (0, 0))
        if fields["word_ids"]:
            row["word_ids"] = span.framed(attrgetter("word_ids"), None, None)
        if fields["sequence_ids"]:
            row["sequence_ids"] = span.sequence_ids()
        return row

    def _pad_rows(self, rows: list[dict[str, list]], width: int | None,
                  multiple: int | None = None) -> None:
        """Pad every row to `width`, or to the longest row when `width` is None, rounded up to a
        multiple of `multiple`."""
        if width is None:
            width = max((len(row["input_ids"]) for row in rows), default=0)
        if multiple:
            width = -(-width // multiple) * multiple
        for row in rows:
            missing = width - len(row["input_ids"])
            for key, values in row.items():
                value = self.pad_token_id if key == "input_ids" else _PAD_VALUES[key]
                values.extend([value] * missing)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without [CLS]/[SEP]."""
        return self.backend.encode(_as_texts(text, "text")[0], add_special_tokens=False).tokens

    def encode(self, text: str, text_pair: str | None = None, **options: object) -> list[int]:
        """The `input_ids` of one text (or text pair); `options` as for a call."""
        return self(text, text_pair, **options)["input_ids"]

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids: int | Sequence[int] | Sequence[Sequence[int]],
               skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str | list[str]:
        """Text from ids, as transformers gives it: "##" pieces joined to their word, no space
        before ".", ",", "?", "!"; with `clean_up_tokenization_spaces` (default: the folder's
        setting, else False as in transformers 5) none around "'" and before "n't", "'s"...
        either. A batch of sequences (2-D) gives a list of texts."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        if isinstance(ids, int):
            ids = [ids]
        if ids and all(isinstance(row, (list, tuple)) for row in ids):
            return self.batch_decode(ids, skip_special_tokens, clean_up_tokenization_spaces)
        text = self.backend.decode(self._checked_ids(ids), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for spaced, joined in _DETOKENIZE_FIXES:
                text = text.replace(spaced, joined)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """`decode` of each sequence."""
        sequences = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(ids, skip_special_tokens, clean_up_tokenization_spaces)
                for ids in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._tokens_by_id[self._checked_ids([ids])[0]]
        return [self._tokens_by_id[i] for i in self._checked_ids(ids)]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Ids of tokens; a token not in the vocabulary gets the [UNK] id."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(token, self.unk_token_id) for token in tokens]

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        not_ids = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
        if not_ids:
            raise TypeError(f"token ids must be ints, got {not_ids[0]!r}.")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside this vocabulary "
                             f"(0..{self.vocab_size - 1}).")
        return ids


# transformers' `clean_up_tokenization`, which its decode applies with
# clean_up_tokenization_spaces=True.
_DETOKENIZE_FIXES = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                     (" 're", "'re"))
_FIELDS = ("input_ids", "token_type_ids", "attention_mask")
# What special and padding positions hold in each per-token field other than input_ids.
_PAD_VALUES = {"token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1,
               "offset_mapping": (0, 0), "word_ids": None, "sequence_ids": None}
# transformers' call options bertkit does not take, and what to do instead.
_UNSUPPORTED_OPTIONS = {
    "padding_side": "pad on the right (BERT's absolute positions make left padding pointless)",
    "truncation_side": "truncation cuts the end of a text, as Google's code does",
    "text_target": "encode the targets in a call of their own",
    "text_pair_target": "encode the targets in a call of their own",
}


class _Span(NamedTuple):
    """The tokens of one row: `length_a` tokens of `first` from `start_a`, and as many of
    `second` (None: no second segment), framed when `add_special_tokens`."""

    first: Encoding
    second: Encoding | None
    start_a: int
    length_a: int
    start_b: int
    length_b: int
    add_special_tokens: bool

    def framed(self, field: Callable[[Encoding], list], opener: object, closer: object) -> list:
        """`opener A closer [B closer]` of a per-token field: where [CLS] and [SEP] go."""
        part_a = field(self.first)[self.start_a:self.start_a + self.length_a]
        part_b = (field(self.second)[self.start_b:self.start_b + self.length_b]
                  if self.second is not None else None)
        return _frame(part_a, part_b, [opener], [closer], self.add_special_tokens)

    def sequence_ids(self) -> list[int | None]:
        return _frame([0] * self.length_a, None if self.second is None else [1] * self.length_b,
                      [None], [None], self.add_special_tokens)


def _spans(first: Encoding, second: Encoding | None, truncation: str | None, limit: int,
           add_special_tokens: bool, stride: int, overflow: bool) -> list[_Span]:
    """The rows of one text (pair): its tokens truncated to fit, and with `overflow` further
    windows over the truncated segment, each `stride` tokens into the one before."""
    if second is not None and not len(second):
        second = None  # nothing to pair: Google truncates and frames A alone
    keep_a, keep_b = len(first), len(second) if second is not None else 0
    if truncation is not None:
        n_special = (2 if second is None else 3) if add_special_tokens else 0
        keep_a, keep_b = _truncated_lengths(keep_a, keep_b, limit - n_special, truncation, limit)
    if keep_b == 0:
        second = None  # truncation took all of B: Google drops its [SEP] too
    if overflow and keep_a < len(first):
        return [_Span(first, second, start, min(keep_a, len(first) - start), 0, keep_b,
                      add_special_tokens)
                for start in _window_starts(len(first), keep_a, stride)]
    if overflow and second is not None and keep_b < len(second):
        return [_Span(first, second, 0, keep_a, start, min(keep_b, len(second) - start),
                      add_special_tokens)
                for start in _window_starts(len(second), keep_b, stride)]
    return [_Span(first, second, 0, keep_a, 0, keep_b, add_special_tokens)]


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where windows of `window` tokens start so that they cover `length` tokens, each one
    repeating the last `stride` tokens of the one before (transformers' overflowing tokens)."""
    if stride >= window:
        raise ValueError(f"stride={stride} must be smaller than the {window} tokens of text that "
                         "fit in each window; lower stride or raise max_length.")
    starts = [0]
    while starts[-1] + window < length:
        starts.append(starts[-1] + window - stride)
    return starts


class BatchEncoding(dict):
    """What a tokenizer call gives: a dict of fields, so `model(**batch)` works, with what
    transformers' BatchEncoding adds: `batch.input_ids`, `batch.word_ids(i)`,
    `batch.sequence_ids(i)` and `batch.to(device)`."""

    def __init__(self, fields: Mapping[str, object], spans: Sequence[_Span],
                 widths: Sequence[int]):
        super().__init__(fields)
        self._spans, self._widths = list(spans), list(widths)

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the encoding has no field {name!r}") from None

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's word (within its segment); None for special and padding tokens."""
        span = self._spans[batch_index]
        return self._padded(batch_index, span.framed(attrgetter("word_ids"), None, None))

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Each token's segment (0 or 1); None for special and padding tokens."""
        return self._padded(batch_index, self._spans[batch_index].sequence_ids())

    def _padded(self, batch_index: int, values: list) -> list:
        return values + [None] * (self._widths[batch_index] - len(values))

    def to(self, device: str | torch.device) -> BatchEncoding:
        """The tensors moved to `device` (lists stay as they are)."""
        moved = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                 for key, value in self.items()}
        return BatchEncoding(moved, self._spans, self._widths)


def _frame(first: list, second: list | None, opener: list, closer: list,
           add_special_tokens: bool) -> list:
    """`opener first closer [second closer]`: where [CLS] and [SEP] go, for any per-token field."""
    if not add_special_tokens:
        return first if second is None else first + second
    if second is None:
        return opener + first + closer
    return opener + first + closer + second + closer


def _truncated_lengths(len_a: int, len_b: int, budget: int, strategy: str,
                       max_length: int) -> tuple[int, int]:
    """How many tokens of each segment to keep so that they fit in `budget` tokens."""
    if budget < 0:
        raise ValueError(f"max_length={max_length} is shorter than the special tokens alone; "
                         "raise max_length.")
    overflow = len_a + len_b - budget
    if overflow <= 0:
        return len_a, len_b
    if strategy == "longest_first":
        return _truncate_longest_first(len_a, len_b, budget)
    which, length = ("first", len_a) if strategy == "only_first" else ("second", len_b)
    # Like HuggingFace, refuse to empty a segment: a pair without one of its texts is no pair.
    if length <= overflow:
        raise ValueError(
            f"truncation={strategy!r} cannot fit max_length={max_length}: {overflow} tokens must "
            f"go but the {which} text has only {length}. Raise max_length, shorten the other "
            "text, or use truncation='longest_first'."
        )
    return (len_a - overflow, len_b) if strategy == "only_first" else (len_a, len_b - overflow)


def _truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Google's `truncate_seq_pair` in closed form.

    It drops the last token of the longer segment, of the second one on ties, until the pair
    fits: so the longer one shrinks to the shorter one's length, then they shrink in turn.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    shorter = min(len_a, len_b)
    if budget - shorter >= shorter:  # cutting the longer one is enough
        return (budget - shorter, len_b) if len_a > len_b else (len_a, budget - shorter)
    return (budget + 1) // 2, budget // 2


def _to_tensors(batch: dict[str, list], kind: str) -> dict:
    """Torch ("pt") or numpy ("np") int64 arrays for the numeric fields; all rows must have the
    same length (padding)."""
    out = {}
    for key, rows in batch.items():
        if key in ("word_ids", "sequence_ids"):
            out[key] = rows
            continue
        if len({len(row) if isinstance(row, list) else 0 for row in rows}) > 1:
            raise ValueError("sequences of different lengths cannot form a tensor; pass "
                             "padding=True (or 'max_length').")
        array = np.array(rows, dtype=np.int64)
        array = array.reshape(len(rows), 0) if not rows else array
        out[key] = torch.from_numpy(array) if kind == "pt" else array
    return out


def _as_texts(value: object, name: str) -> list[str]:
    """`value` as a list of str, checked; a lone str is a list of one."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for index, item in enumerate(items):
        if not isinstance(item, str):
            where = f"{name}[{index}]" if isinstance(value, (list, tuple)) else name
            hint = " (decode bytes first, e.g. data.decode('utf-8'))" if isinstance(
                item, (bytes, bytearray)) else ""
            raise TypeError(f"{where} must be a str or a list of str, got "
                            f"{type(item).__name__}{hint}.")
    return [_SURROGATES.sub(_STAND_IN, item) for item in items]


def _choice(value: object, name: str, valid: tuple[str, ...], default: str, off: str) -> str | None:
    """Normalise a truncation/padding argument: None when off, else a strategy name."""
    if value is None or value is False or value == off:
        return None
    if value is True:
        return default
    if value in valid:
        return value
    raise ValueError(f"unknown {name} {value!r}; valid: True, False, "
                     f"{', '.join(repr(v) for v in valid)}.")


def _cased_entries(vocab: Iterable[str]) -> int:
    """Entries that change when lowercased, bracketed markers such as [CLS] or [unused0] aside."""
    return sum(1 for token in vocab if token != token.lower()
               and not (token.startswith("[") and token.endswith("]")))




def _is_list_of_pairs(text: object) -> bool:
    """A batch given as [(text, text_pair), ...], as transformers takes it."""
    return isinstance(text, (list, tuple)) and bool(text) and all(
        isinstance(item, (list, tuple)) and len(item) == 2 for item in text)


def _texts_and_pairs(text: object, text_pair: object, split_into_words: bool
                     ) -> tuple[bool, list, list | None]:
    """Whether the call is a batch, and its texts and second texts as lists, checked to be str
    (lists of str: words) and of the same shape."""
    read = _as_word_lists if split_into_words else _as_texts
    batched = _is_batch(text, split_into_words)
    firsts = read(text, "text")
    if text_pair is None:
        return batched, firsts, None
    seconds = read(text_pair, "text_pair")
    pair_batched = _is_batch(text_pair, split_into_words)
    if pair_batched != batched or len(seconds) != len(firsts):
        single = "a single list of words" if split_into_words else "a single str"
        shape = f"a batch of {len(firsts)}" if batched else single
        pair_shape = f"a batch of {len(seconds)}" if pair_batched else single
        raise ValueError(f"text is {shape} but text_pair is {pair_shape}; give one "
                         "text_pair per text, in the same shape.")
    return batched, firsts, seconds


def _is_batch(value: object, split_into_words: bool) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    return not split_into_words or bool(value) and isinstance(value[0], (list, tuple))


def _as_word_lists(value: object, name: str) -> list[list[str]]:
    """`value` (a list of words, or a batch of them) as a list of lists of str, checked."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of words (str) with is_split_into_words=True, "
                        f"got {type(value).__name__}.")
    batch = value if _is_batch(value, True) else [value]
    for index, words in enumerate(batch):
        if not isinstance(words, (list, tuple)):
            raise TypeError(f"{name}[{index}] must be a list of words like {name}[0], got "
                            f"{type(words).__name__}.")
    return [_as_texts(words, f"{name}[{index}]" if batch is value else name)
            for index, words in enumerate(batch)]


def _refuse_unsupported(options: Mapping[str, object]) -> None:
    for name in options:
        if name in _UNSUPPORTED_OPTIONS:
            raise TypeError(f"bertkit's tokenizer does not take {name}=: "
                            f"{_UNSUPPORTED_OPTIONS[name]}.")
        raise TypeError(f"bertkit's tokenizer got an unexpected argument {name}=; see "
                        "help(BertTokenizer.__call__) for the ones it takes.")


def _check_window_options(padding: str | None, pad_to_multiple_of: object, stride: object,
                          overflow: bool, truncation: str | None, paired: bool,
                          max_length: int | None) -> None:
    """Refuse padding and overflow options that would otherwise be ignored or ill-defined."""
    if pad_to_multiple_of is not None:
        if padding is None:
            raise ValueError("pad_to_multiple_of needs padding=True (or 'max_length'); without "
                             "padding it would be ignored.")
        if not isinstance(pad_to_multiple_of, int) or isinstance(
                pad_to_multiple_of, bool) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive int, got "
                             f"{pad_to_multiple_of!r}.")
        if truncation is not None and max_length is not None and max_length % pad_to_multiple_of:
            raise ValueError(f"max_length={max_length} is not a multiple of pad_to_multiple_of="
                             f"{pad_to_multiple_of}: truncated rows would be padded past it. "
                             "Give a max_length that is a multiple.")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
        raise ValueError(f"stride must be an int of 0 or more, got {stride!r}.")
    if stride and not overflow:
        raise ValueError("stride only applies with return_overflowing_tokens=True; pass it too, "
                         "or leave stride out.")
    if overflow and truncation is None:
        raise ValueError("return_overflowing_tokens=True needs truncation (True, 'only_first' "
                         "or 'only_second') and a max_length: they set the window size.")
    if overflow and paired and truncation == "longest_first":
        raise ValueError("return_overflowing_tokens=True with text pairs needs "
                         "truncation='only_first' or 'only_second' (the segment to cut into "
                         "windows), e.g. 'only_second' for question/context pairs.")


def _check_call_options(truncation: str | None, paired: bool, return_tensors: str | None,
                        limit: object) -> None:
    if return_tensors not in (None, "pt", "np"):
        raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' for "
                         "torch tensors, 'np' for numpy arrays or None for lists.")
    if truncation == "only_second" and not paired:
        raise ValueError("truncation='only_second' needs a text_pair to truncate; use "
                         "truncation=True for a single text.")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_length must be a positive int, got {limit!r}.")


def _assembled(rows: list[dict[str, list]], batched: bool, return_tensors: str | None) -> dict:
    """Rows as one dict of fields: lists per row, tensors, or a single text's lists."""
    batch = {key: [row[key] for row in rows] for key in (rows[0] if rows else _FIELDS)}
    if return_tensors is not None:
        return _to_tensors(batch, return_tensors)
    return batch if batched else {key: values[0] for key, values in batch.items()}


# -- reading tokenizer folders -------------------------------------------------------------------


def _tokenizer_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder `name_or_path` names, fetching it when it is a model bertkit knows."""
    directory = Path(name_or_path)
    if directory.is_dir():
        return directory
    if str(name_or_path) not in MODELS:
        raise FileNotFoundError(
            f"{name_or_path!s} is not a tokenizer folder (no such directory). Give the folder "
            f"holding {VOCAB_NAME} or {TOKENIZER_FILE_NAME} (and optionally {CONFIG_NAME}), or "
            f"one of the models bertkit can fetch: {', '.join(MODELS)}."
        )
    return fetch(str(name_or_path))


def _check_config_text_rules(config: dict, path: Path, lowercase: bool) -> None:
    """Refuse tokenizer_config.json settings that ask for other text rules than Google's."""
    for key, supported in (("do_basic_tokenize", True), ("tokenize_chinese_chars", True),
                           ("strip_accents", lowercase)):
        if config.get(key, supported) not in (supported, None):
            raise ValueError(
                f"{path} sets {key}={config[key]!r}, which bertkit does not support (it follows "
                f"Google's BERT: {key}={supported!r})."
            )


def stated_model_max_length(directory: str | os.PathLike) -> int | None:
    """The model_max_length a tokenizer folder's `tokenizer_config.json` states; None where it
    states none (sentence-transformers then cuts at the model's positions, however many)."""
    config_file = Path(directory) / CONFIG_NAME
    return _stated_max_length(_read_config(config_file), config_file)


def _stated_max_length(config: dict, path: Path) -> int | None:
    value = config.get("model_max_length")
    if value is None or (isinstance(value, (int, float)) and value >= _TRANSFORMERS_NO_MAX_LENGTH):
        return None  # transformers writes about 1e30 for "no limit known"
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{path} sets model_max_length={value!r}; it must be a positive int.")
    return value


def _read_vocab(path: Path) -> dict[str, int]:
    """token → id (its line number), checked to be a BERT WordPiece vocabulary."""
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist (a BERT vocab.txt holds "
                                "one WordPiece token per line).")
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines, like the reference
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise ValueError(f"{path} is not a vocabulary: it is binary, not UTF-8 text with one "
                         "WordPiece token per line. Point to the model's vocab.txt.")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty; a vocabulary lists one WordPiece token per line.")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if token in vocab:
            raise ValueError(f"{path} is not a valid vocabulary: {token!r} appears twice (lines "
                             f"{vocab[token] + 1} and {index + 1}); a token's line is its id, so "
                             "each must be listed once.")
        vocab[token] = index
    return _checked_vocab(vocab, path)


def _checked_vocab(vocab: dict[str, int], where: object) -> dict[str, int]:
    """`vocab` ordered by id, checked: ids 0..N-1, each once, and BERT's special tokens."""
    ids = sorted(vocab.values()) if all(
        isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()) else None
    if not vocab or ids != list(range(len(vocab))):
        raise ValueError(f"{where} is not a valid vocabulary: its ids must be 0..N-1, each "
                         "used once, and it must not be empty.")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"{where} lacks the special tokens {', '.join(missing)}; a BERT "
                         f"vocabulary needs all of {', '.join(SPECIAL_TOKENS)}.")
    return dict(sorted(vocab.items(), key=lambda item: item[1]))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _read_config(path: Path) -> dict:
    """The tokenizer_config.json as a dict; {} when there is none."""
    return _read_json(path) if path.is_file() else {}


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], bool]:
    """The vocabulary and lowercasing of a WordPiece `tokenizer.json`, checked to ask for BERT's
    rules only: bertkit then applies them as Google's code does. Its truncation and padding
    (runtime settings) are not read: a call says how to truncate and pad."""
    data = _read_json(path)
    refuse = functools.partial(_refuse, path)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    _check_wordpiece_model(model, refuse)
    lowercase = _bert_text_rules(data, refuse)
    vocab = model.get("vocab")
    vocab = _checked_vocab(vocab if isinstance(vocab, dict) else {}, f"{path} (model.vocab)")
    _check_framing(data.get("post_processor"), vocab, path)
    for added in data.get("added_tokens") or []:
        content, token_id = ((added.get("content"), added.get("id"))
                             if isinstance(added, dict) else (added, None))
        if content not in SPECIAL_TOKENS or vocab[content] != token_id:
            raise ValueError(
                f"{path} sets added_tokens with {json.dumps(content, ensure_ascii=False)} (id "
                f"{token_id}), which bertkit cannot honour: it keeps only BERT's "
                f"{' '.join(SPECIAL_TOKENS)}, at their vocabulary ids, whole."
            )
    return vocab, lowercase


def _refuse(path: Path, setting: str, value: object, honoured: str) -> None:
    raise ValueError(
        f"{path} sets {setting}={json.dumps(value, ensure_ascii=False)}, which bertkit cannot "
        f"honour: it reads BERT WordPiece tokenizers only ({setting} {honoured})."
    )


def _check_wordpiece_model(model: dict, refuse: Callable[[str, object, str], None]) -> None:
    """WordPiece with BERT's [UNK] and "##", and Google's word length limit."""
    if model.get("type") != "WordPiece":
        refuse("model.type", model.get("type"), 'must be "WordPiece"')
    for key, expected in (("unk_token", UNK), ("continuing_subword_prefix", "##")):
        if model.get(key, expected) != expected:
            refuse(f"model.{key}", model[key], f"must be {json.dumps(expected)}")
    limit = model.get("max_input_chars_per_word", MAX_CHARS_PER_WORD)
    if limit not in (MAX_CHARS_PER_WORD, _TRANSFORMERS_MAX_CHARS_PER_WORD):
        refuse("model.max_input_chars_per_word", limit,
               f"must be {MAX_CHARS_PER_WORD}, Google's limit, or "
               f"{_TRANSFORMERS_MAX_CHARS_PER_WORD}, which transformers writes everywhere and "
               "bertkit reads as Google's")


def _bert_text_rules(data: dict, refuse: Callable[[str, object, str], None]) -> bool:
    """Check for BertNormalizer and BertPreTokenizer with Google's settings; give `lowercase`."""
    normalizer = data.get("normalizer")
    normalizer = normalizer if isinstance(normalizer, dict) else {"type": normalizer}
    if normalizer.get("type") != "BertNormalizer":
        refuse("normalizer.type", normalizer.get("type"), 'must be "BertNormalizer"')
    lowercase = normalizer.get("lowercase", True)
    if not isinstance(lowercase, bool):
        refuse("normalizer.lowercase", lowercase, "must be true or false")
    for key in ("clean_text", "handle_chinese_chars"):
        if normalizer.get(key, True) is not True:
            refuse(f"normalizer.{key}", normalizer[key], "must be true")
    if normalizer.get("strip_accents") not in (None, lowercase):
        refuse("normalizer.strip_accents", normalizer["strip_accents"],
               f"must be null or the same as lowercase ({json.dumps(lowercase)})")
    pre_tokenizer = data.get("pre_tokenizer")
    pre_type = pre_tokenizer.get("type") if isinstance(pre_tokenizer, dict) else pre_tokenizer
    if pre_type != "BertPreTokenizer":
        refuse("pre_tokenizer.type", pre_type, 'must be "BertPreTokenizer"')
    return lowercase


def _check_framing(post_processor: object, vocab: dict[str, int], path: Path) -> None:
    """Refuse a post-processor that frames texts otherwise than `[CLS] A [SEP] B [SEP]`."""
    if post_processor is None:
        return  # bertkit frames the texts as BERT does, as for a vocab.txt folder
    bert = [json.loads(_bert_framing(vocab).__getstate__()),
            {"type": "BertProcessing", "sep": [SEP, vocab[SEP]], "cls": [CLS, vocab[CLS]]}]
    if post_processor not in bert:
        kind = post_processor.get("type") if isinstance(post_processor, dict) else post_processor
        raise ValueError(
            f"{path} sets a post_processor ({kind}) that does not frame texts as BERT's "
            f"[CLS] A [SEP] B [SEP] (segment ids 0 for [CLS] A [SEP], 1 for B [SEP]; [CLS]="
            f"{vocab[CLS]}, [SEP]={vocab[SEP]}), which bertkit cannot honour."
        )


# -- training --------------------------------------------------------------------------------


def train_vocab(files: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
                texts: Iterable[str] | None = None, vocab_size: int = 30522,
                lowercase: bool = True, min_frequency: int = 2, limit_alphabet: int = 1000,
                out_dir: str | os.PathLike | None = None) -> BertTokenizer:
    """Train a WordPiece vocabulary on raw text with BERT's normalisation; return its tokenizer.

    Give text files (`files`) or strings (`texts`). The vocabulary starts with [PAD] [UNK] [CLS]
    [SEP] [MASK] (ids 0-4), then the alphabet (at most `limit_alphabet` characters) and its "##"
    forms, then learnt pieces up to `vocab_size` entries. With `out_dir`, `vocab.txt`,
    `tokenizer_config.json` and `tokenizer.json` are written there. Runs are not bit-identical:
    `tokenizers` breaks ties between equally frequent pairs in hash order, so a few late entries
    can differ.
    """
    if (files is None) == (texts is None):
        raise ValueError("give the training text either as files=[paths] or as texts=[strings], "
                         "exactly one of the two.")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the "
                         f"{len(SPECIAL_TOKENS)} special tokens.")
    # The engine takes both as unsigned: a negative count fails inside it, and an alphabet of 0
    # characters keeps no word, which it reports as an empty training text.
    if min_frequency < 0:
        raise ValueError(f"min_frequency={min_frequency} is negative; give 0 or more (the "
                         "least count of a pair merged into a piece).")
    if limit_alphabet < 1:
        raise ValueError(f"limit_alphabet={limit_alphabet} leaves no characters to build words "
                         "from; give 1 or more (the default 1000 keeps the commonest characters).")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet, continuing_subword_prefix="##", show_progress=False,
    )
    engine = Tokenizer(models.WordPiece(unk_token=UNK))
    engine.normalizer = _normalizer(lowercase)
    engine.pre_tokenizer = _pre_tokenizer()
    if files is not None:
        paths = _training_files(files)
        try:
            engine.train(paths, trainer)
        except Exception as error:  # the engine raises its errors as bare Exceptions
            if "valid UTF-8" not in str(error):
                raise
            raise ValueError(
                f"{_first_line_not_utf8(paths)} is not UTF-8: train_vocab reads UTF-8 text "
                "files. Convert the file (e.g. iconv -f CP1252 -t UTF-8), or train with "
                "`bertkit vocab train` (train_vocab_on_corpus), which reads .gz/.bz2/.xz and "
                "UTF-16 and skips lines that are not UTF-8.") from error
    else:
        engine.train_from_iterator(_as_texts_lazily([texts] if isinstance(texts, str) else texts),
                                   trainer)
    tokenizer = BertTokenizer(_trained_vocab(engine, vocab_size), do_lower_case=lowercase)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _training_files(files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError("files is empty; give at least one text file to train on.")
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"training file {path} does not exist.")
    return [str(path) for path in paths]


def _first_line_not_utf8(paths: list[str]) -> str:
    """``file:line`` of the first line of ``paths`` that is not UTF-8 (the engine names none)."""
    for path in paths:
        with open(path, "rb") as file:
            for number, line in enumerate(file, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{path}:{number}"
    return "a training file"


def _trained_vocab(engine: Tokenizer, vocab_size: int) -> dict[str, int]:
    """The trained engine's vocabulary, checked to hold more than the special tokens and to fit."""
    trained = engine.get_vocab()
    if len(trained) == len(SPECIAL_TOKENS):
        raise ValueError("the training text is empty (no words after normalisation).")
    if len(trained) > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the special tokens and the alphabet (the "
            f"{len(trained) - len(SPECIAL_TOKENS)} characters and \"##\" forms seen) already "
            f"take {len(trained)} entries. Raise vocab_size or lower limit_alphabet."
        )
    return trained


def _as_texts_lazily(texts: Iterable[str]) -> Iterable[str]:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}.")
        yield _SURROGATES.sub(_STAND_IN, text)
