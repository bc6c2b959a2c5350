"""Files in, vectors out: what `bertkit embed` runs.

`embed_file` streams the lines of a text file (or standard input) through an `Embedder` into an
.npy with a .index.jsonl beside it, or into JSON lines. Outputs are written through
`bertkit.files.atomic_path`, so an interrupted or failed run leaves no output that looks whole.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .embeddings import Embedder
from .files import failed_write, remove, replace, reporting_full_disk
from .training import Stopped

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
    resumed_at: int = 0  # lines a stopped run embedded before this one went on
    kept: int = 0  # rows of those lines

    def __str__(self) -> str:
        where = ", ".join(str(p) for p in self.outputs) or "standard output"
        parts = [f"embedded {self.written:,} of {self.lines:,} lines into {where}"]
        if self.resumed_at:
            parts[0] += (f", after the stopped run's {self.resumed_at:,} lines ({self.kept:,} "
                         "vectors kept; the counts below are of this run's lines)")
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
               chunk_size: int = 1024, progress: bool = True,
               resume: bool = False) -> EmbedSummary:
    """Embed every line of a UTF-8 text file (``"-"``: standard input), streaming.

    ``out`` ending in ``.npy`` gets a float32 [rows, D] array (per-token output: one row per
    token) and a ``.index.jsonl`` beside it with each row's input line (0-based) and, per token,
    its tokens, offsets and first row; ``.jsonl`` (or ``"-"``: standard output) gets one JSON
    object per line. ``empty``: "zero" (a zero vector) or "skip" (no row; the index keeps line
    numbers). ``append_csv``: a CSV with a header and one row per input line whose numeric
    ``append_columns`` (default: all) are appended to each pooled vector.

    Stopped by Ctrl-C or SIGTERM (`EmbedStopped`), or by a full disk, a run from a file into a
    file keeps the rows written in hidden partial files beside ``out``; ``resume=True`` goes on
    from the first line they lack, once it has checked that the input, the weights and the
    settings are the same. The rows equal an uninterrupted run's.
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
    run = None
    with contextlib.ExitStack() as stack:
        extra = None
        if append_csv is not None:
            extra = _CsvColumns(append_csv, append_columns)
            stack.callback(extra.file.close)
        width = embedder.dim + (len(extra.columns) if extra else 0)
        lines = stack.enter_context(_LineReader(source, invalid_utf8, progress))
        run = _describe(embedder, source, out, empty=empty, invalid_utf8=invalid_utf8,
                        append_csv=append_csv, append_columns=extra and extra.names, width=width)
        if resume and run is None:
            raise ValueError("--resume goes on with a stopped run's output file: it needs a "
                             "file as --input and as --out, not - (standard input or output).")
        stack.enter_context(reporting_full_disk(
            out, "The rows written so far are kept: make room and run the same command with "
            "--resume to go on." if run else "Nothing was kept."))
        writer = stack.enter_context(_writer(out, width, per_token, run=run, resume=resume))
        lines.skip = summary.resumed_at = writer.next_line
        summary.kept = writer.kept
        if extra:
            extra.skip(writer.next_line)
        stack.enter_context(_sigterm_as_interrupt())
        try:
            for result in embedder.stream(lines, chunk_size=chunk_size):
                line = writer.next_line + result.index
                summary.lines += 1
                summary.empty += result.empty
                summary.truncated += result.truncated
                row = extra.row(line) if extra else None
                if result.empty and empty == "skip":
                    continue
                value = result.value
                if row is not None:
                    value = np.concatenate([value, row])
                writer.write(line, value)
                summary.written += 1
        except KeyboardInterrupt as stop:
            if run is None:
                raise
            raise EmbedStopped(
                f"stopped after line {writer.next_line + summary.lines:,}; the vectors so far "
                f"are kept in {writer.staging[0]}: run the same command with --resume to go "
                "on.", getattr(stop, "exit_code", 130)) from None
        if extra:
            extra.check_exhausted(writer.next_line + summary.lines)
        summary.invalid_utf8 = lines.replaced
        summary.outputs = writer.paths  # moved into place as the block ends without an error
    return summary


class EmbedStopped(Stopped):
    """An `embed_file` run stopped by Ctrl-C or SIGTERM, its rows kept for ``resume=True``."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(exit_code)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) ends the run as Ctrl-C does, at once: the
    rows written are whole, so nothing is lost by not finishing the batch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe(embedder: Embedder, source, out, **settings) -> dict | None:
    """What a run's vectors depend on (the input file as it is, the weights as they run, every
    setting that changes a row), for a resumed run to check it goes on with the same; None for
    a run that cannot resume (standard input or output)."""
    if str(source) == "-" or str(out) == "-":
        return None
    stat = Path(source).stat()
    csv_path = settings["append_csv"]
    run = {"input": str(Path(source).resolve()), "input_bytes": stat.st_size,
           "input_modified_ns": stat.st_mtime_ns, "weights": embedder.weights_digest(),
           "layers": [int(layer) for layer in embedder.layers], "combine": embedder.combine,
           "pooling": embedder.pooling, "normalize": bool(embedder.normalize),
           "lowercase": embedder.lowercase, "max_length": embedder.max_length,
           "precision": embedder.precision, "quantize": embedder.quantize, **settings,
           "append_csv": csv_path and str(Path(csv_path).resolve()),
           "append_csv_modified_ns": csv_path and Path(csv_path).stat().st_mtime_ns}
    return json.loads(json.dumps(run))  # as it reads back from the file


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
        self.skip = 0  # lines a stopped run embedded already
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
            if number < self.skip:
                continue
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

    def skip(self, rows: int) -> None:
        """Pass the rows of the lines a stopped run embedded."""
        for _ in itertools.islice(self.reader, rows):
            pass

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


def _writer(out, width: int, per_token: bool, **resuming):
    if str(out) == "-":
        return _JsonlWriter(None, per_token)
    path = Path(out)
    if path.suffix == ".npy":
        return _NpyWriter(path, width, per_token, **resuming)
    if path.suffix == ".jsonl":
        return _JsonlWriter(path, per_token, **resuming)
    raise ValueError(f"output {path} must end in .npy or .jsonl (or be - for JSON lines on "
                     "standard output).")


class _StagedFiles:
    """Outputs that grow under hidden sibling names (`_partial_path`) and replace their paths
    when the writer's block ends without an error, so no run leaves a file that looks finished.

    A resumable run (``run``: its description, `_describe`) keeps them when it is stopped
    (Ctrl-C, SIGTERM) or the disk fills, with the description beside them, and ``resume`` goes
    on with them: the whole records they hold are kept (`_kept_records`: a run killed mid-write
    leaves a cut last one) and `next_line` is the first input line still to embed. Other
    errors, and stops of runs that cannot resume, remove them."""

    def __init__(self, *paths: Path, run: dict | None = None, resume: bool = False):
        self.paths = list(paths)
        self.staging = [_partial_path(p) for p in paths]
        self.run, self.next_line, self.kept = run, 0, 0
        self.described = _partial_path(paths[0]).with_suffix(".partial.json") if paths else None
        stopped = self.described is not None and all(
            p.exists() for p in [self.described, *self.staging])
        if stopped and not (run and resume):
            raise ValueError(
                f"a stopped run left the first rows of {paths[0]} in {self.staging[0]}: add "
                "--resume to go on from where it stopped, or delete "
                f"{', '.join(str(p) for p in [*self.staging, self.described])} to start over.")
        if stopped:
            _check_same_run(json.loads(self.described.read_text(encoding="utf-8")), run,
                            self.described)
        else:
            for path in [*self.staging, *([self.described] if self.described else [])]:
                remove(path)
            for path in self.paths:
                path.parent.mkdir(parents=True, exist_ok=True)
            if run:
                self.described.write_text(json.dumps(run, indent=1), encoding="utf-8")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            self.close()
        except OSError:
            if error is None:
                raise
        if error is None:
            for staged, path in zip(self.staging, self.paths, strict=True):
                replace(staged, path)
        elif self.run and (isinstance(error, KeyboardInterrupt) or failed_write(error)):
            return False  # kept for --resume
        for path in [*self.staging, *([self.described] if self.described else [])]:
            remove(path)
        return False

    def close(self):
        raise NotImplementedError


class _NpyWriter(_StagedFiles):
    """Float32 rows streamed into an .npy; the header is rewritten with the final row count
    (numpy leaves room in it for the first dimension to grow, so it keeps its size)."""

    def __init__(self, path: Path, width: int, per_token: bool, **resuming):
        super().__init__(path, _index_path(path), **resuming)
        self.width, self.per_token, self.rows = width, per_token, 0
        vectors, index = self.staging
        if vectors.exists():  # a stopped run's rows, kept as far as the index names them
            self.file = vectors.open("r+b")
            np.lib.format.read_magic(self.file)
            shape, _, _ = np.lib.format.read_array_header_1_0(self.file)
            self.data_start = self.file.tell()
            if shape[1:] != (width,):
                raise ValueError(f"{vectors} holds rows of {shape[1:]} values, not {width}.")
            room = (vectors.stat().st_size - self.data_start) // (4 * width)
            self.kept, last, self.rows = _kept_records(index, self._fits(room))
            self.file.truncate(self.data_start + 4 * width * self.rows)
            self.file.seek(0, 2)
            self.next_line = last["line"] + 1 if last else 0
        else:
            self.file = vectors.open("wb")
            self._write_header()
            self.data_start = self.file.tell()
        self.index = index.open("a", encoding="utf-8")

    def _fits(self, room: int):
        """Whether each next index record's rows are all in the file (``room`` rows long):
        gives the rows up to that record, or None."""
        rows = 0

        def rows_up_to(record) -> int | None:
            nonlocal rows
            rows = record["first_row"] + len(record["tokens"]) if self.per_token else rows + 1
            return rows if rows <= room else None
        return rows_up_to

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
            end = self.file.seek(0, 2)
            self._write_header()
            assert self.file.tell() == self.data_start, "npy header changed size"
            self.file.seek(end)
            self.file.close()
            self.index.close()


class _JsonlWriter(_StagedFiles):
    def __init__(self, path: Path | None, per_token: bool, **resuming):
        super().__init__(*([path] if path else []), **resuming)
        self.per_token = per_token
        if path is None:
            self.file = sys.stdout
            return
        if self.staging[0].exists():
            self.kept, last, _ = _kept_records(self.staging[0], lambda record: 0)
            self.next_line = last["line"] + 1 if last else 0
        self.file = self.staging[0].open("a", encoding="utf-8")

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


def _partial_path(path: Path) -> Path:
    """The hidden sibling an output grows in until the run ends (kept by a stopped run)."""
    return path.with_name(f".{path.name}.partial")


def _kept_records(path: Path, rows_up_to) -> tuple[int, dict | None, int]:
    """A stopped run's JSON-lines file cut after its last whole record whose rows are written
    (``rows_up_to(record)``: the rows written up to it, or None): the records kept, the last
    of them, and its rows. A process killed mid-write leaves a cut or an unwritten last line."""
    kept, last, rows, size = 0, None, 0, 0
    with path.open("r+b") as file:
        for raw in file:
            try:
                record = json.loads(raw) if raw.endswith(b"\n") else None
            except ValueError:
                record = None
            reached = None if record is None else rows_up_to(record)
            if reached is None:
                break
            kept, last, rows, size = kept + 1, record, reached, size + len(raw)
        file.truncate(size)
    return kept, last, rows


def _check_same_run(stopped: dict, run: dict, described: Path) -> None:
    """Refuses to go on with a stopped run's rows for another input or other settings: the
    output would mix vectors of two kinds."""
    changed = [key for key in run if stopped.get(key) != run[key]]
    if changed:
        key = changed[0]
        raise ValueError(
            f"--resume: the stopped run ({described}) had {key} {stopped.get(key)!r}, this one "
            f"has {run[key]!r}; resume with the settings and input it had, or delete its partial "
            "files to start over.")
