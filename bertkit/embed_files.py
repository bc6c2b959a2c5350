"""Files in, vectors out: what `bertkit embed` runs.

`embed_file` streams the lines of a text file (or standard input) through an `Embedder` into an
.npy with a .index.jsonl beside it, or into JSON lines. Outputs are written through
`bertkit.files.atomic_path`, so an interrupted or failed run leaves no output that looks whole.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .embeddings import Embedder
from .files import atomic_path

EMPTY_POLICIES = ("zero", "skip")
GZIP_MAGIC = b"\x1f\x8b"  # never the start of UTF-8 text: 0x8b cannot begin a character


@dataclass
class EmbedSummary:
    """What an `embed_file` run did, for the closing message."""

    lines: int = 0
    written: int = 0
    outputs: list[Path] = field(default_factory=list)
    empty: int = 0
    empty_policy: str = "zero"
    truncated: int = 0
    max_length: int = 0
    invalid_utf8: int = 0

    def __str__(self) -> str:
        where = ", ".join(str(p) for p in self.outputs) or "standard output"
        parts = [f"embedded {self.written:,} of {self.lines:,} lines into {where}"]
        if self.empty:
            fate = ("got zero vectors" if self.empty_policy == "zero"
                    else "were skipped (the index keeps the line numbers)")
            parts.append(f"{self.empty:,} empty lines {fate}")
        if self.truncated:
            parts.append(f"{self.truncated:,} lines longer than {self.max_length} tokens were "
                         "truncated")
        if self.invalid_utf8:
            parts.append(f"{self.invalid_utf8:,} lines had invalid UTF-8, replaced by U+FFFD")
        return "; ".join(parts) + "."


def embed_file(embedder: Embedder, source: str | Path, out: str | Path, *,
               empty: str = "zero", invalid_utf8: str = "error",
               append_csv: str | Path | None = None, append_columns: Sequence[str] | None = None,
               chunk_size: int = 1024, progress: bool = True) -> EmbedSummary:
    """Embed every line of a UTF-8 text file (``"-"``: standard input), streaming.

    ``out`` ending in ``.npy`` gets a float32 [rows, D] array (per-token output: one row per
    token) and a ``.index.jsonl`` beside it with each row's input line (0-based) and, per token,
    its tokens, offsets and first row; ``.jsonl`` (or ``"-"``: standard output) gets one JSON
    object per line. ``empty``: "zero" (a zero vector) or "skip" (no row; the index keeps line
    numbers). ``append_csv``: a CSV with a header and one row per input line whose numeric
    ``append_columns`` (default: all) are appended to each pooled vector.
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty policy {empty!r}; choose one of "
                         f"{', '.join(EMPTY_POLICIES)}.")
    if invalid_utf8 not in ("error", "replace"):
        raise ValueError(f"invalid_utf8 must be 'error' or 'replace', got {invalid_utf8!r}.")
    per_token = embedder.pooling == "tokens"
    if append_csv is not None and per_token:
        raise ValueError("appended CSV columns go after one vector per text; they do not fit "
                         "pooling='tokens'.")
    if append_columns and append_csv is None:
        raise ValueError("append_columns (--append-columns) names columns of the append_csv "
                         "file: give that CSV (--append-csv) too.")
    _check_outputs(source, out)
    summary = EmbedSummary(empty_policy=empty, max_length=embedder.max_length)
    with contextlib.ExitStack() as stack:
        extra = None
        if append_csv is not None:
            extra = _CsvColumns(append_csv, append_columns)
            stack.callback(extra.file.close)
        width = embedder.dim + (len(extra.columns) if extra else 0)
        lines = stack.enter_context(_LineReader(source, invalid_utf8, progress))
        writer = stack.enter_context(_writer(out, width, per_token))
        for result in embedder.stream(lines, chunk_size=chunk_size):
            summary.lines += 1
            summary.empty += result.empty
            summary.truncated += result.truncated
            row = extra.row(result.index) if extra else None
            if result.empty and empty == "skip":
                continue
            value = result.value
            if row is not None:
                value = np.concatenate([value, row])
            writer.write(result.index, value)
            summary.written += 1
        if extra:
            extra.check_exhausted(summary.lines)
        summary.invalid_utf8 = lines.replaced
        summary.outputs = writer.paths  # moved into place as the block ends without an error
    return summary


def _index_path(out: Path) -> Path:
    return out.with_suffix(".index.jsonl")


def _check_outputs(source, out) -> None:
    """Outputs that would replace the input, or that are folders, are refused before anything
    is embedded: found only at the final rename, they would waste the run and leave the index
    of an .npy without the .npy."""
    if str(out) == "-":
        return
    outputs = [Path(out)] + ([_index_path(Path(out))] if Path(out).suffix == ".npy" else [])
    for output in outputs:
        if str(source) != "-" and output.resolve() == Path(source).resolve():
            raise ValueError(f"output {output} would replace its input {source}: write the "
                             "vectors to another file.")
        if output.is_dir():
            raise ValueError(f"output {output} is a folder: give a file name for the vectors "
                             "(e.g. vectors.npy).")


class _LineReader:
    """The lines of a file or of stdin, decoded as strict UTF-8, with a progress bar in bytes."""

    def __init__(self, source, invalid_utf8: str, progress: bool):
        self.name = "standard input" if str(source) == "-" else str(source)
        if str(source) == "-":
            self.file, size = sys.stdin.buffer, None
        else:
            path = Path(source)
            if path.is_dir():
                raise ValueError(f"input {path} is a folder: give one text file (one text per "
                                 "line), or - for standard input.")
            if not path.is_file():
                raise FileNotFoundError(f"input file {path} not found.")
            self.file, size = path.open("rb"), path.stat().st_size
        self.invalid_utf8, self.replaced = invalid_utf8, 0
        self.bar = tqdm(total=size, unit="B", unit_scale=True, desc="embedding",
                        disable=not progress)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        if self.file is not sys.stdin.buffer:
            self.file.close()

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self.file):
            self.bar.update(len(raw))
            if number == 0 and raw.startswith(GZIP_MAGIC):
                raise ValueError(
                    f"{self.name} is gzip-compressed, not text: decompress it (gunzip -k "
                    "FILE.gz), or pipe it in: gunzip -c FILE.gz | bertkit embed --input - ...")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if self.invalid_utf8 == "error":
                    raise ValueError(
                        f"{self.name}, line {number + 1}: not valid UTF-8 (byte "
                        f"0x{raw[error.start]:02x} at column {error.start + 1}). Convert the file "
                        "to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --invalid-utf8 "
                        "replace to embed such lines with U+FFFD in place of the bad bytes."
                    ) from None
                text = raw.decode("utf-8", errors="replace")
                self.replaced += 1
            if number == 0:
                text = text.removeprefix("\ufeff")  # a byte-order mark is not text
            yield text.rstrip("\r\n")


class _CsvColumns:
    """Numeric columns of a CSV (header row, then one row per input line), read in step."""

    def __init__(self, path, columns: Sequence[str] | None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file {self.path} not found.")
        # utf-8-sig: spreadsheets save CSVs with a byte-order mark before the first column name
        self.file = self.path.open(newline="", encoding="utf-8-sig")
        self.reader = csv.reader(self.file)
        header = next(self.reader, None)
        if not header:
            raise ValueError(f"{self.path} is empty: it needs a header row naming its columns.")
        names = columns or header
        missing = [name for name in names if name not in header]
        if missing:
            raise ValueError(f"{self.path} has no column {missing[0]!r}; its columns are "
                             f"{', '.join(header)}.")
        self.columns = [header.index(name) for name in names]
        self.names, self.fields = list(names), len(header)

    def row(self, line: int) -> np.ndarray:
        values = next(self.reader, None)
        if values is None:
            raise ValueError(f"{self.path} has {line} data rows but the input has more lines; "
                             "give one CSV row per input line.")
        if len(values) < self.fields:
            raise ValueError(f"{self.path}, data row {line + 1}: {len(values)} fields where the "
                             f"header has {self.fields}.")
        numbers = []
        for name, column in zip(self.names, self.columns, strict=True):
            cell = values[column].strip()
            try:
                numbers.append(float(cell) if cell else math.nan)  # empty cell: missing value
            except ValueError:
                raise ValueError(f"{self.path}, data row {line + 1}, column {name!r}: {cell!r} "
                                 "is not a number.") from None
        return np.array(numbers, dtype=np.float32)

    def check_exhausted(self, lines: int) -> None:
        extra = sum(1 for _ in self.reader)
        if extra:
            raise ValueError(f"{self.path} has {lines + extra} data rows but the input has "
                             f"{lines} lines; give one CSV row per input line.")


def _writer(out, width: int, per_token: bool):
    if str(out) == "-":
        return _JsonlWriter(None, per_token)
    path = Path(out)
    if path.suffix == ".npy":
        return _NpyWriter(path, width, per_token)
    if path.suffix == ".jsonl":
        return _JsonlWriter(path, per_token)
    raise ValueError(f"output {path} must end in .npy or .jsonl (or be - for JSON lines on "
                     "standard output).")


class _AtomicFiles:
    """Outputs written under temporary names by `bertkit.files.atomic_path`: they replace their
    paths when the writer's block ends without an error and are removed otherwise, so an
    interrupted run never leaves a file that looks finished."""

    def __init__(self, *paths: Path):
        self.paths = list(paths)
        self._outputs = contextlib.ExitStack()
        self.staging = [self._outputs.enter_context(atomic_path(p)) for p in paths]
        self._outputs.callback(self.close)  # runs first: files are whole before they are moved

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._outputs.__exit__(*exc)


class _NpyWriter(_AtomicFiles):
    """Float32 rows streamed into an .npy; the header is rewritten with the final row count
    (numpy leaves room in it for the first dimension to grow, so it keeps its size)."""

    def __init__(self, path: Path, width: int, per_token: bool):
        super().__init__(path, _index_path(path))
        self.width, self.per_token, self.rows = width, per_token, 0
        self.file = self.staging[0].open("wb")
        self.index = self.staging[1].open("w", encoding="utf-8")
        self._write_header()
        self.data_start = self.file.tell()

    def _write_header(self):
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(
            self.file, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.width)})

    def write(self, line: int, value):
        record = {"line": line}
        if self.per_token:
            record.update(tokens=value.tokens, offsets=value.offsets, first_row=self.rows)
            value = value.vectors
        block = np.ascontiguousarray(value, dtype="<f4").reshape(-1, self.width)
        self.file.write(block.tobytes())
        self.rows += len(block)
        self.index.write(json.dumps(record) + "\n")

    def close(self):
        if not self.file.closed:
            self._write_header()
            assert self.file.tell() == self.data_start, "npy header changed size"
            self.file.close()
            self.index.close()


class _JsonlWriter(_AtomicFiles):
    def __init__(self, path: Path | None, per_token: bool):
        super().__init__(*([path] if path else []))
        self.per_token = per_token
        self.file = self.staging[0].open("w", encoding="utf-8") if path else sys.stdout

    def write(self, line: int, value):
        if self.per_token:
            record = {"line": line, "tokens": value.tokens, "offsets": value.offsets,
                      "vectors": value.vectors.tolist()}
        else:
            record = {"line": line, "vector": value.tolist()}
        self.file.write(json.dumps(record) + "\n")

    def close(self):
        if self.file is sys.stdout:
            self.file.flush()
        elif not self.file.closed:
            self.file.close()
