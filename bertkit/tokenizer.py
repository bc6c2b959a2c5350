"""BERT's WordPiece tokenizer: Google's text rules, run by the Rust `tokenizers` engine.

Google's `tokenization.py` (kept in transformers as `BertTokenizerLegacy`, our reference) fixes
the text rules every BERT checkpoint was trained with: drop control characters, isolate CJK
ideographs, lowercase and strip accents (uncased models), split off every punctuation character,
then greedy longest-match WordPiece; transformers' copy also NFC-composes the text first.
`tokenizers` ships these steps as `BertNormalizer` and `BertPreTokenizer`, which drift from the
reference:

* they classify characters with Unicode 9-era tables where the reference uses Python's: they keep
  unassigned code points and newer format characters that it drops, do not split off newer
  punctuation, strip U+1734 (no longer a nonspacing mark) and keep newer nonspacing marks;
* their CJK range U+2B820-U+2CEAF starts at U+2B920;
* they lowercase character by character, so a word-final capital sigma becomes "σ" where Python's
  `str.lower` gives "ς" ("ΟΔΟΣ" -> "οδος");
* they do not NFC-compose (matters for cased models), and the engine's NFC/NFD tables lack
  decompositions newer than Unicode 9 (U+11938).

So the pipeline here is assembled from the engine's generic parts (regex replace, NFC, lowercase,
NFD, regex split), driven by character classes computed from Python's `unicodedata`. It matches
the reference on every code point (the tests check them all) with one exception for cased models:
a combining mark newer than Unicode 9 has no combining class in the engine's NFC, so it blocks
the composition of an accent after it. Encoding stays in Rust: parallel batches, and character
offsets into the original text.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

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

from .sources import MODELS, fetch

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


class _TextRules(NamedTuple):
    """Google's character classes as regex classes, and Unicode patches for the engine."""

    dropped: str  # `_clean_text` removes these: NUL, U+FFFD and all "control" (C*) characters
    nonspacing_marks: str  # category Mn, what accent stripping removes after NFD
    alone: str  # punctuation and CJK ideographs: always a word of their own
    cased: str  # cased and not case-ignorable: where `str.lower`'s final-sigma rule looks
    case_ignorable: str
    decompositions: tuple[tuple[str, str], ...]  # (character, NFD) the engine's tables lack


@functools.cache
def _google_text_rules() -> _TextRules:
    """Evaluate Google's character tests on every code point with Python's `unicodedata`."""
    engine_nfd = normalizers.NFD()
    dropped, nonspacing_marks, punctuation, cased, case_ignorable, decompositions = (
        [], [], [], [], [], [])
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        char = chr(cp)
        category = unicodedata.category(char)
        if cp in (0, 0xFFFD) or (category[0] == "C" and char not in "\t\n\r"):
            dropped.append(cp)
            continue
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
    cjk = (cp for lo, hi in _CJK_RANGES for cp in range(lo, hi + 1))
    return _TextRules(
        dropped=_regex_class(dropped),
        nonspacing_marks=_regex_class(nonspacing_marks),
        alone=_regex_class(sorted({*punctuation, *cjk})),
        cased=_regex_class(cased),
        case_ignorable=_regex_class(case_ignorable),
        decompositions=tuple(decompositions),
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


def _engine(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    """The Rust tokenizer; its post-processor adds [CLS]/[SEP] for users of the batch API."""
    engine = Tokenizer(
        models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD)
    )
    engine.normalizer = _normalizer(lowercase)
    engine.pre_tokenizer = _pre_tokenizer()
    engine.decoder = decoders.WordPiece(prefix="##")
    # Special tokens typed in the text stay whole, as in the reference (matched case-sensitively,
    # before normalisation).
    engine.add_special_tokens(list(SPECIAL_TOKENS))
    engine.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    return engine


class BertTokenizer:
    """BERT's WordPiece tokenizer, with Google's semantics and a HuggingFace-like call.

    `tokenizer(texts)` gives `input_ids`, `token_type_ids` and `attention_mask` for a str or a
    batch (list) of str, optionally paired, truncated, padded and as tensors. The Rust tokenizer
    is `backend`: its `encode_batch` gives the same ids (with [CLS]/[SEP]) without Python-side
    overhead, for data pipelines that do their own truncation.
    """

    pad_token, unk_token, cls_token, sep_token, mask_token = PAD, UNK, CLS, SEP, MASK

    def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True,
                 model_max_length: int = 512):
        self.vocab = _read_vocab(Path(vocab_file))
        self.do_lower_case = bool(do_lower_case)
        self.model_max_length = model_max_length
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
        """Load `vocab.txt` and, if present, `tokenizer_config.json` from a folder.

        `name_or_path` may also name a model bertkit can fetch (see `bertkit.sources.MODELS`).
        An explicit `do_lower_case` overrides the config file's.
        """
        directory = Path(name_or_path)
        if not directory.is_dir():
            if str(name_or_path) not in MODELS:
                raise FileNotFoundError(
                    f"{name_or_path!s} is not a tokenizer folder (no such directory). Give the "
                    f"folder holding {VOCAB_NAME} (and optionally {CONFIG_NAME}), or one of the "
                    f"models bertkit can fetch: {', '.join(MODELS)}."
                )
            directory = fetch(str(name_or_path))
        vocab_file = directory / VOCAB_NAME
        if not vocab_file.is_file():
            raise FileNotFoundError(
                f"{vocab_file} not found: a tokenizer folder needs a {VOCAB_NAME} with one "
                "WordPiece token per line (save_pretrained and train_vocab write one)."
            )
        config = _read_config(directory / CONFIG_NAME)
        cased_by_config = do_lower_case is None and config.get("do_lower_case") is False
        if do_lower_case is None:
            do_lower_case = config.get("do_lower_case", True)
        for key, supported in (("do_basic_tokenize", True), ("tokenize_chinese_chars", True),
                               ("strip_accents", do_lower_case)):
            if config.get(key, supported) not in (supported, None):
                raise ValueError(
                    f"{directory / CONFIG_NAME} sets {key}={config[key]!r}, which bertkit does not "
                    f"support (it follows Google's BERT: {key}={supported!r})."
                )
        tokenizer = cls(vocab_file, do_lower_case=do_lower_case,
                        model_max_length=config.get("model_max_length", 512))
        if cased_by_config and _is_uncased(tokenizer.vocab):
            raise ValueError(
                f"{directory / CONFIG_NAME} says do_lower_case=false, but {vocab_file} is an "
                "uncased vocabulary (no entry has an upper-case letter), so every capitalised "
                "word would become [UNK]. Set do_lower_case to true in the config, or pass "
                "do_lower_case=True."
            )
        return tokenizer

    def save_pretrained(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write `vocab.txt` and a `tokenizer_config.json` that HuggingFace's loaders read too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab_file, config_file = directory / VOCAB_NAME, directory / CONFIG_NAME
        vocab_file.write_text("".join(token + "\n" for token in self._tokens_by_id),
                              encoding="utf-8")
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "model_max_length": self.model_max_length,
            "unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS,
            "mask_token": MASK,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        }
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return vocab_file, config_file

    # -- encoding ---------------------------------------------------------------------------

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None,
                 *, max_length: int | None = None, truncation: bool | str = False,
                 padding: bool | str = False, return_tensors: str | None = None,
                 return_offsets_mapping: bool = False, return_word_ids: bool = False,
                 add_special_tokens: bool = True) -> dict:
        """Encode a text, or a batch (list) of texts, optionally each with a second segment.

        Gives `input_ids`, `token_type_ids` and `attention_mask`; with `return_offsets_mapping`
        also `offset_mapping` ((start, end) in the original text of the token's segment, (0, 0)
        for special and padding tokens), with `return_word_ids` also `word_ids` (index of the
        word within its segment, None for special and padding tokens), and with either one
        `sequence_ids` (0 or 1: the token's segment; None for special and padding tokens).

        `truncation`: True or "longest_first" (Google's rule: drop the last token of the longer
        segment, of the second on ties, until the whole fits), "only_first" or "only_second".
        `max_length` counts the special tokens and defaults to `model_max_length`. `padding`: True
        or "longest" (to the longest in the batch) or "max_length". `return_tensors="pt"` gives
        [batch, length] torch tensors (a single text gets batch size 1); `word_ids` and
        `sequence_ids`, which hold None, stay lists.
        """
        batched = isinstance(text, (list, tuple))
        firsts = _as_texts(text, "text")
        seconds = None
        if text_pair is not None:
            seconds = _as_texts(text_pair, "text_pair")
            if isinstance(text_pair, (list, tuple)) != batched or len(seconds) != len(firsts):
                shape = f"a batch of {len(firsts)}" if batched else "a single str"
                pair_shape = (f"a batch of {len(seconds)}"
                              if isinstance(text_pair, (list, tuple)) else "a single str")
                raise ValueError(f"text is {shape} but text_pair is {pair_shape}; give one "
                                 "text_pair per text, in the same shape.")
        truncation = _choice(truncation, "truncation", TRUNCATION_STRATEGIES, "longest_first",
                             off="do_not_truncate")
        padding = _choice(padding, "padding", PADDING_STRATEGIES, "longest", off="do_not_pad")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' for "
                             "torch tensors or None for lists.")
        if truncation == "only_second" and seconds is None:
            raise ValueError("truncation='only_second' needs a text_pair to truncate; use "
                             "truncation=True for a single text.")
        limit = self.model_max_length if max_length is None else max_length
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"max_length must be a positive int, got {limit!r}.")

        encodings_a = self.backend.encode_batch(firsts, add_special_tokens=False)
        encodings_b = (self.backend.encode_batch(seconds, add_special_tokens=False)
                       if seconds is not None else [None] * len(firsts))
        rows = [self._row(a, b, truncation, limit, add_special_tokens, return_offsets_mapping,
                          return_word_ids)
                for a, b in zip(encodings_a, encodings_b, strict=True)]
        if padding is not None:
            width = limit if padding == "max_length" else max((len(r["input_ids"]) for r in rows),
                                                              default=0)
            for row in rows:
                self._pad(row, width)
        batch = {key: [row[key] for row in rows] for key in (rows[0] if rows else _FIELDS)}
        if return_tensors == "pt":
            return _to_tensors(batch)
        return batch if batched else {key: values[0] for key, values in batch.items()}

    def _row(self, first: Encoding, second: Encoding | None, truncation: str | None, limit: int,
             add_special_tokens: bool, offsets: bool, word_ids: bool) -> dict[str, list]:
        """One encoded sequence: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, truncated to fit."""
        keep_a, keep_b = len(first), len(second) if second is not None else 0
        if truncation is not None:
            n_special = (2 if second is None else 3) if add_special_tokens else 0
            keep_a, keep_b = _truncated_lengths(keep_a, keep_b, limit - n_special, truncation,
                                                limit)

        def framed(field: Callable[[Encoding], list], opener: list, closer: list) -> list:
            part_a = field(first)[:keep_a]
            part_b = field(second)[:keep_b] if second is not None else None
            return _frame(part_a, part_b, opener, closer, add_special_tokens)

        ids = framed(attrgetter("ids"), [self.cls_token_id], [self.sep_token_id])
        length_a = keep_a + 2 if add_special_tokens else keep_a
        row = {"input_ids": ids, "token_type_ids": [0] * length_a + [1] * (len(ids) - length_a),
               "attention_mask": [1] * len(ids)}
        if offsets:
            row["offset_mapping"] = framed(attrgetter("offsets"), [(0, 0)], [(0, 0)])
        if word_ids:
            row["word_ids"] = framed(attrgetter("word_ids"), [None], [None])
        if offsets or word_ids:
            row["sequence_ids"] = _frame([0] * keep_a, None if second is None else [1] * keep_b,
                                         [None], [None], add_special_tokens)
        return row

    def _pad(self, row: dict[str, list], width: int) -> None:
        missing = width - len(row["input_ids"])
        for key, values in row.items():
            value = self.pad_token_id if key == "input_ids" else _PAD_VALUES[key]
            values.extend([value] * missing)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without [CLS]/[SEP]."""
        return self.backend.encode(_as_texts(text, "text")[0], add_special_tokens=False).tokens

    def encode(self, text: str, text_pair: str | None = None, *, max_length: int | None = None,
               truncation: bool | str = False, add_special_tokens: bool = True) -> list[int]:
        """The `input_ids` of one text (or text pair)."""
        return self(text, text_pair, max_length=max_length, truncation=truncation,
                    add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text from ids, as HuggingFace gives it: "##" pieces joined to their word, and the
        spaces before punctuation and English clitics removed."""
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        tokens = [self._tokens_by_id[i] for i in self._checked_ids(ids) if i not in skipped]
        text = " ".join(tokens).replace(" ##", "").strip()
        for spaced, joined in _DETOKENIZE_FIXES:
            text = text.replace(spaced, joined)
        return text

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
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside this vocabulary "
                             f"(0..{self.vocab_size - 1}).")
        return ids


# HuggingFace's `clean_up_tokenization`, which its BERT decode applies.
_DETOKENIZE_FIXES = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                     (" 're", "'re"))
_FIELDS = ("input_ids", "token_type_ids", "attention_mask")
# What special and padding positions hold in each per-token field other than input_ids.
_PAD_VALUES = {"token_type_ids": 0, "attention_mask": 0, "offset_mapping": (0, 0),
               "word_ids": None, "sequence_ids": None}


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


def _to_tensors(batch: dict[str, list]) -> dict:
    """Torch tensors for the numeric fields; all rows must have the same length (padding)."""
    out = {}
    for key, rows in batch.items():
        if key in ("word_ids", "sequence_ids"):
            out[key] = rows
            continue
        if len({len(row) for row in rows}) > 1:
            raise ValueError("sequences of different lengths cannot form a tensor; pass "
                             "padding=True (or 'max_length').")
        tensor = torch.tensor(rows, dtype=torch.long)
        out[key] = tensor.reshape(len(rows), 0) if not rows else tensor
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
    return [_SURROGATES.sub("\x00", item) for item in items]


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


def _is_uncased(vocab: Iterable[str]) -> bool:
    """No entry changes when lowercased, bracketed markers such as [CLS] or [unused0] aside."""
    return all(token == token.lower() for token in vocab
               if not (token.startswith("[") and token.endswith("]")))


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
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"{path} lacks the special tokens {', '.join(missing)}; a BERT "
                         f"vocabulary needs all of {', '.join(SPECIAL_TOKENS)}.")
    return vocab


def _read_config(path: Path) -> dict:
    """The tokenizer_config.json as a dict; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}.")
    return config


def train_vocab(files: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
                texts: Iterable[str] | None = None, vocab_size: int = 30522,
                lowercase: bool = True, min_frequency: int = 2, limit_alphabet: int = 1000,
                out_dir: str | os.PathLike | None = None) -> BertTokenizer:
    """Train a WordPiece vocabulary on raw text with BERT's normalisation; return its tokenizer.

    Give text files (`files`) or strings (`texts`). The vocabulary starts with [PAD] [UNK] [CLS]
    [SEP] [MASK] (ids 0-4), then the alphabet (at most `limit_alphabet` characters) and its "##"
    forms, then learnt pieces up to `vocab_size` entries. With `out_dir`, `vocab.txt` and
    `tokenizer_config.json` are written there. Runs are not bit-identical: `tokenizers` breaks
    ties between equally frequent pairs in hash order, so a few late entries can differ.
    """
    if (files is None) == (texts is None):
        raise ValueError("give the training text either as files=[paths] or as texts=[strings], "
                         "exactly one of the two.")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the "
                         f"{len(SPECIAL_TOKENS)} special tokens.")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet, continuing_subword_prefix="##", show_progress=False,
    )
    engine = Tokenizer(models.WordPiece(unk_token=UNK))
    engine.normalizer = _normalizer(lowercase)
    engine.pre_tokenizer = _pre_tokenizer()
    if files is not None:
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not paths:
            raise ValueError("files is empty; give at least one text file to train on.")
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"training file {path} does not exist.")
        engine.train([str(path) for path in paths], trainer)
    else:
        if isinstance(texts, str):
            texts = [texts]
        engine.train_from_iterator(_as_texts_lazily(texts), trainer)

    trained = engine.get_vocab()
    tokens = sorted(trained, key=trained.get)
    if len(tokens) == len(SPECIAL_TOKENS):
        raise ValueError("the training text is empty (no words after normalisation).")
    if len(tokens) > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the special tokens and the alphabet (the "
            f"{len(tokens) - len(SPECIAL_TOKENS)} characters and \"##\" forms seen) already take "
            f"{len(tokens)} entries. Raise vocab_size or lower limit_alphabet."
        )
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(out_dir) if out_dir is not None else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_NAME).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        tokenizer = BertTokenizer(directory / VOCAB_NAME, do_lower_case=lowercase)
        tokenizer.save_pretrained(directory)
    return tokenizer


def _as_texts_lazily(texts: Iterable[str]) -> Iterable[str]:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}.")
        yield _SURROGATES.sub("\x00", text)
