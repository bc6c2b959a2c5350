"""Inference with a pre-trained BERT: feature-based embeddings, fill-mask, and fast batches.

The paper's second way to use BERT (section 5.3) is feature-based: run the pre-trained encoder
once and hand its hidden states to another model. `Embedder` gives those features from any layer
or from the paper's combinations of layers, pooled per text (sentence embeddings for search and
clustering) or per token with its character offsets (for tagging). `FillMask` shows what a
masked-LM head predicts.

Fast paths that leave the results unchanged are always on: texts are sorted by length and
batched up to a token budget (little padding), a batch that still carries much padding runs on
its real tokens only (`BertModel(skip_padding=True)`), and layers above the deepest one a
feature needs are not run.
Opt-in modes trade accuracy for speed (see benchmarks/bench_inference.py for what they cost):
``precision="bf16"``, ``quantize="int8"`` (CPU), ``compile=True``, and `export_onnx` for serving
the encoder elsewhere.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import BertConfig
from .model import WEIGHTS_NAME, BertForMaskedLM, BertModel, _read_weights
from .sources import resolve_pretrained
from .tokenizer import BertTokenizer

logger = logging.getLogger("bertkit")

# The paper's feature-based strategies (section 5.3, table 7), as hidden-state indices (0 is the
# embedding output, L the last layer, negative indices count from the end; None: every layer
# 1..L) and how to combine them. The paper's "weighted sum" does not give its weights; these sum
# with equal weights (concatenation keeps every layer for a downstream model to weigh).
STRATEGIES: dict[str, tuple[tuple[int, ...] | None, str]] = {
    "last": ((-1,), "sum"),
    "second_to_last": ((-2,), "sum"),
    "sum_last_four": ((-4, -3, -2, -1), "sum"),
    "concat_last_four": ((-4, -3, -2, -1), "concat"),
    "sum_all": (None, "sum"),
    "embeddings": ((0,), "sum"),
}
COMBINES = ("sum", "mean", "concat")
POOLINGS = ("mean", "cls", "max", "tokens")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
EMPTY_POLICIES = ("zero", "skip")
# Batches whose real tokens fill less of the [B, T] grid than this run packed (skip_padding).
PACK_BELOW_FILL = 0.9


def resolve_layers(layers: str | int | Sequence[int], num_layers: int,
                   combine: str = "sum") -> tuple[tuple[int, ...], str]:
    """A layer choice as absolute hidden-state indices (0 = embeddings, ``num_layers`` = last)
    and how to combine them: a strategy name, one layer index, or a sequence of indices."""
    if isinstance(layers, str):
        if layers not in STRATEGIES:
            raise ValueError(f"unknown layer strategy {layers!r}; choose one of "
                             f"{', '.join(STRATEGIES)}, a layer number, or a list of them.")
        indices, combine = STRATEGIES[layers]
        indices = indices if indices is not None else tuple(range(1, num_layers + 1))
    elif isinstance(layers, int):
        indices = (layers,)
    else:
        indices = tuple(layers)
        if not indices or not all(isinstance(i, int) for i in indices):
            raise ValueError(f"layers must be a strategy name, an int or a non-empty sequence of "
                             f"ints, got {layers!r}.")
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}.")
    if any(not -num_layers - 1 <= i <= num_layers for i in indices):
        raise ValueError(f"layers {list(indices)} do not all exist: this model has {num_layers} "
                         f"layers, so use 0 (the embedding output) to {num_layers}, or -1 (the "
                         f"last) to {-num_layers - 1}.")
    return tuple(i % (num_layers + 1) for i in indices), combine


def combine_layers(hidden_states: Sequence[torch.Tensor], indices: Sequence[int],
                   combine: str) -> torch.Tensor:
    """[B, T, H] states of the chosen layers -> [B, T, H] (sum, mean) or [B, T, k*H] (concat)."""
    chosen = [hidden_states[i] for i in indices]
    if combine == "concat":
        return torch.cat(chosen, dim=-1)
    total = torch.stack(chosen).sum(0)
    return total / len(chosen) if combine == "mean" else total


def pool(hidden, attention_mask, pooling: str):
    """[B, T, H] token states -> [B, H], over the real (non-padding) tokens only."""
    mask = attention_mask.bool()[..., None]  # [B, T, 1]
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if pooling == "max":
        return hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(1)
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS[:3])}.")


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int,
                          sort: bool = True) -> list[np.ndarray]:
    """Row indices in batches of at most ``batch_tokens`` tokens once padded (a longer row goes
    alone). Sorted by length, rows of a batch are nearly equally long: little padding."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start, longest = [], 0, 0
    for end, row in enumerate(order):
        longest = max(longest, lengths[row])
        if end > start and (end - start + 1) * longest > batch_tokens:
            batches.append(order[start:end])
            start, longest = end, lengths[row]
    if start < len(order):
        batches.append(order[start:])
    return batches


def padded(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> ([B, T] ids with 0 at padding, [B, T] attention mask)."""
    lengths = torch.tensor([len(s) for s in sequences])
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    ids = torch.zeros(mask.shape, dtype=torch.long)
    ids[mask] = torch.tensor(list(itertools.chain.from_iterable(sequences)), dtype=torch.long)
    return ids, mask.long()


@dataclass
class TokenVectors:
    """Per-token features of one text: its WordPiece tokens ([CLS]/[SEP] left out), their
    (start, end) character offsets in the text, and one vector per token."""

    tokens: list[str]
    offsets: list[tuple[int, int]]
    vectors: np.ndarray  # [tokens, D]


@dataclass
class Embedded:
    """One text's output: its position in the input, its vector (or per-token vectors), and
    whether it was empty (no tokens: a zero vector) or cut to the maximum length."""

    index: int
    value: np.ndarray | TokenVectors
    empty: bool
    truncated: bool


class Embedder:
    """Texts in, features out: one vector per text, or one per token with tokens and offsets.

    ``model``: a checkpoint folder, a model name bertkit can fetch, or a loaded `BertModel` (or
    head model, e.g. one just fine-tuned) with its ``tokenizer``: its weights are shared, not
    copied or changed.

    ``layers``: a strategy from `STRATEGIES` (the paper's feature-based ones: "last",
    "second_to_last", "sum_last_four", "concat_last_four", "sum_all", "embeddings"), one
    hidden-state index (0 = embedding output, -1 = last layer), or a list of them combined by
    ``combine`` ("sum", "mean" or "concat"). ``pooling``: "mean" over real tokens, "cls",
    "max", or "tokens" (per-token output, see `encode_tokens`). Mean pooling + ``normalize``
    (L2, on every output vector) is the sentence-transformers recipe.

    Texts longer than ``max_length`` tokens are truncated (and counted); an empty text (no
    tokens) gets a zero vector. Opt-in speed modes: ``precision="bf16"`` (bfloat16 weights
    and activations: AMX/AVX512-BF16 CPUs, GPUs), ``quantize="int8"`` (dynamic int8 Linear
    layers, CPU) and ``compile=True`` (torch.compile; slow first batches).
    ``batch_tokens`` bounds the padded tokens of a batch (default 2048 on CPU, 16384 on GPU).
    ``sort_by_length`` and ``skip_padding`` are exact speed-ups, on by default (switch them off
    only to compare).
    """

    def __init__(self, model="all-minilm-l6-v2", *, tokenizer=None, layers="last", combine="sum",
                 pooling="mean", normalize=True, max_length=None, batch_tokens=None,
                 device=None, precision="fp32", quantize=None, compile=False,
                 sort_by_length=True, skip_padding=True):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(PRECISIONS)}.")
        if quantize not in (None, "int8"):
            raise ValueError(f"unknown quantize {quantize!r}; the one mode is 'int8'.")
        if quantize and precision != "fp32":
            raise ValueError("quantize='int8' replaces the fp32 Linear layers; use it with "
                             "precision='fp32'.")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
            raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Measured on CPU: batches whose activations stay in the L2 cache run fastest; a GPU
        # wants large batches to fill its cores.
        self.batch_tokens = batch_tokens or (2048 if self.device.type == "cpu" else 16384)
        if quantize and self.device.type != "cpu":
            raise ValueError("quantize='int8' is a CPU mode; on a GPU use precision='bf16'.")
        if isinstance(model, torch.nn.Module):
            loaded = getattr(model, "bert", model)  # a head model embeds with its encoder
            if not isinstance(loaded, BertModel) or tokenizer is None:
                raise ValueError("model must be a checkpoint folder, a model name, or a loaded "
                                 "BertModel (or BertFor* model) given with its tokenizer=.")
            config = loaded.config
        else:
            loaded, directory = None, resolve_pretrained(model)
            config = BertConfig.from_json_file(directory / "config.json")  # check before loading
        self.layers, self.combine = resolve_layers(layers, config.num_hidden_layers, combine)
        self.max_length = max_length or config.max_position_embeddings
        if not 2 < self.max_length <= config.max_position_embeddings:
            raise ValueError(f"max_length must be between 3 and the model's "
                             f"{config.max_position_embeddings} positions, got {max_length}.")
        self.tokenizer = tokenizer or BertTokenizer.from_pretrained(directory)
        loaded = loaded or BertModel.from_pretrained(directory)
        encoder = _encoder_view(loaded, max(self.layers)).to(self.device, PRECISIONS[precision])
        if quantize:
            encoder = _quantize_int8(encoder)
        self.model = encoder
        self._forward = torch.compile(encoder, dynamic=True) if compile else encoder
        width = 1 if self.combine != "concat" else len(self.layers)
        self.dim = config.hidden_size * width
        self.pooling, self.normalize = pooling, normalize
        self.sort_by_length, self.skip_padding = sort_by_length, skip_padding

    def encode(self, texts: str | Sequence[str], progress: bool = False) -> np.ndarray:
        """[N, D] float32 vectors of ``texts`` (a str is a batch of one), in input order."""
        if self.pooling == "tokens":
            raise ValueError("pooling='tokens' gives per-token vectors: use encode_tokens().")
        results = self._encode_all(texts, progress)
        if not results:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([r.value for r in results])

    def encode_tokens(self, texts: str | Sequence[str],
                      progress: bool = False) -> list[TokenVectors]:
        """Per-token vectors, tokens and character offsets of each text, in input order."""
        if self.pooling != "tokens":
            raise ValueError("encode_tokens() gives per-token vectors: build the Embedder with "
                             "pooling='tokens'.")
        return [r.value for r in self._encode_all(texts, progress)]

    def _encode_all(self, texts, progress) -> list[Embedded]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        # All texts are in memory already: one chunk sorts them all by length.
        results = list(self.stream(texts, chunk_size=max(1, len(texts)), progress=progress))
        empty, truncated = sum(r.empty for r in results), sum(r.truncated for r in results)
        if empty:
            logger.warning("%d of %d texts are empty (no tokens) and got zero vectors.",
                           empty, len(texts))
        if truncated:
            logger.warning("%d of %d texts are longer than %d tokens and were truncated.",
                           truncated, len(texts), self.max_length)
        return results

    def stream(self, texts: Iterable[str], chunk_size: int = 1024,
               progress: bool = False) -> Iterator[Embedded]:
        """Embed an iterable of texts lazily, ``chunk_size`` at a time (each chunk sorted by
        length), yielding one `Embedded` per text in input order: memory stays flat however
        long the input."""
        texts = iter(texts)
        bar = tqdm(total=getattr(texts, "__length_hint__", lambda: None)(), desc="embedding",
                   unit="text", disable=not progress)
        with bar:
            for first in itertools.count(0, chunk_size):
                chunk = list(itertools.islice(texts, chunk_size))
                if not chunk:
                    return
                for offset, result in enumerate(self._embed_chunk(chunk, bar)):
                    result.index = first + offset
                    yield result

    @torch.inference_mode()
    def _embed_chunk(self, texts: list[str], bar) -> list[Embedded]:
        per_token = self.pooling == "tokens"
        encoded = self.tokenizer(texts, return_offsets_mapping=per_token)
        ids = encoded["input_ids"]
        truncated = [len(row) > self.max_length for row in ids]
        # Cut to max_length, keeping the final [SEP] (Google's truncation of a single text).
        ids = [row[:self.max_length - 1] + row[-1:] if cut else row
               for row, cut in zip(ids, truncated, strict=True)]
        lengths = [len(row) for row in ids]
        empty = [n <= 2 for n in lengths]  # only [CLS] and [SEP]
        results = [Embedded(i, self._empty_value(), True, cut) if blank else None
                   for i, (blank, cut) in enumerate(zip(empty, truncated, strict=True))]
        rows = [i for i, blank in enumerate(empty) if not blank]
        bar.update(len(texts) - len(rows))
        for batch in length_sorted_batches([lengths[i] for i in rows], self.batch_tokens,
                                           self.sort_by_length):
            batch_rows = [rows[b] for b in batch]
            features, mask = self._features([ids[i] for i in batch_rows])
            if per_token:
                features = features.cpu().numpy()
                for b, i in enumerate(batch_rows):
                    inner = slice(1, lengths[i] - 1)  # without [CLS] and [SEP]
                    value = TokenVectors(
                        self.tokenizer.convert_ids_to_tokens(ids[i][inner]),
                        [tuple(o) for o in encoded["offset_mapping"][i][inner]],
                        features[b, inner].copy())
                    results[i] = Embedded(i, value, False, truncated[i])
            else:
                vectors = pool(features, mask.to(self.device), self.pooling)
                if self.normalize:
                    vectors = F.normalize(vectors, dim=-1)
                for b, vector in zip(batch_rows, vectors.cpu().numpy(), strict=True):
                    results[b] = Embedded(b, vector, False, truncated[b])
            bar.update(len(batch_rows))
        return results

    def _features(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] float32 features (normalised per token for pooling='tokens') and the mask."""
        input_ids, mask = padded(sequences)
        # The encoder stops at the deepest chosen layer, so one chosen layer is the last state.
        several = len(self.layers) > 1
        out = self._forward(input_ids.to(self.device), mask.to(self.device),
                            output_hidden_states=several, skip_padding=self._worth_packing(mask))
        features = (combine_layers(out.hidden_states, self.layers, self.combine) if several
                    else out.last_hidden_state)
        features = features.float()
        if self.pooling == "tokens" and self.normalize:
            features = F.normalize(features, dim=-1)
        return features, mask

    def _worth_packing(self, mask: torch.Tensor) -> bool:
        """Packing the real tokens costs a few copies per layer: worth it for a batch with much
        padding (unsorted input), not for length-sorted batches."""
        return self.skip_padding and mask.float().mean().item() < PACK_BELOW_FILL

    def _empty_value(self) -> np.ndarray | TokenVectors:
        if self.pooling == "tokens":
            return TokenVectors([], [], np.zeros((0, self.dim), dtype=np.float32))
        return np.zeros(self.dim, dtype=np.float32)


def _encoder_view(model: BertModel, num_layers: int) -> BertModel:
    """An eval-mode encoder sharing ``model``'s weights (not copied, not changed) that stops
    after ``num_layers`` layers and has no pooler: layers above the deepest chosen one cannot
    change the features. Built on the meta device, so nothing is initialised only to be
    replaced."""
    config = replace(model.config, num_hidden_layers=num_layers)
    with torch.device("meta"):
        view = BertModel(config, add_pooling_layer=False)
    missing, _ = view.load_state_dict(model.state_dict(), strict=False, assign=True)
    assert not missing, missing
    return view.eval()


def _quantize_int8(model: BertModel) -> BertModel:
    """Dynamic int8 quantization of every Linear layer (weights per output channel, activations
    per batch), for CPUs. torch.ao's eager quantization is deprecated upstream in favour of
    torchao, but it is the one that needs no extra package; fbgemm packs the weights because
    the default x86 engine runs per-channel weights several times slower."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8)
    finally:
        torch.backends.quantized.engine = engine


# --------------------------------------------------------------------------------------------
# Files in, vectors out: what `bertkit embed` runs


@dataclass
class EmbedSummary:
    """What an `embed_file` run did, for the closing message."""

    lines: int = 0
    written: int = 0
    empty: int = 0
    truncated: int = 0
    invalid_utf8: int = 0
    empty_policy: str = "zero"
    max_length: int = 0
    outputs: list[Path] = field(default_factory=list)

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
        writer.commit()
        summary.outputs = writer.paths
    return summary


class _LineReader:
    """The lines of a file or of stdin, decoded as strict UTF-8, with a progress bar in bytes."""

    def __init__(self, source, invalid_utf8: str, progress: bool):
        self.name = "standard input" if str(source) == "-" else str(source)
        if str(source) == "-":
            self.file, size = sys.stdin.buffer, None
        else:
            path = Path(source)
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
        self.file = self.path.open(newline="", encoding="utf-8")
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


class _PartialFiles:
    """Outputs written under a temporary name and renamed when complete, so an interrupted
    run never leaves a file that looks finished."""

    def __init__(self, *paths: Path):
        self.paths = list(paths)
        self.partial = [p.with_name(p.name + ".partial") for p in paths]
        self.committed = False

    def commit(self):
        self.close()
        for partial, path in zip(self.partial, self.paths, strict=True):
            partial.replace(path)
        self.committed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        if not self.committed:
            for partial in self.partial:
                partial.unlink(missing_ok=True)


class _NpyWriter(_PartialFiles):
    """Float32 rows streamed into an .npy; the header is rewritten with the final row count
    (numpy leaves room in it for the first dimension to grow, so it keeps its size)."""

    def __init__(self, path: Path, width: int, per_token: bool):
        super().__init__(path, path.with_suffix(".index.jsonl"))
        self.width, self.per_token, self.rows = width, per_token, 0
        self.file = self.partial[0].open("wb")
        self.index = self.partial[1].open("w", encoding="utf-8")
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


class _JsonlWriter(_PartialFiles):
    def __init__(self, path: Path | None, per_token: bool):
        super().__init__(*([path] if path else []))
        self.per_token = per_token
        self.file = self.partial[0].open("w", encoding="utf-8") if path else sys.stdout

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


# --------------------------------------------------------------------------------------------
# Fill-mask


@dataclass
class Prediction:
    token: str
    token_id: int
    score: float  # softmax probability over the vocabulary


class FillMask:
    """The masked-LM head's top-k tokens, with probabilities, for each [MASK] in a text.

    Needs a checkpoint with the MLM head (`BertForMaskedLM` or `BertForPreTraining` weights:
    ``cls.predictions.*``). Only the masked positions go through the head.
    """

    def __init__(self, model, *, device=None, max_length=None):
        directory = resolve_pretrained(model)
        if "predictions.transform.dense.weight" not in {k.removeprefix("cls.") for k in
                                                        _checkpoint_keys(directory)}:
            raise ValueError(
                f"{model} has no masked-LM head (no cls.predictions.* weights in its "
                "checkpoint), so it cannot fill in [MASK]: use a checkpoint saved from "
                "BertForMaskedLM or BertForPreTraining, such as one bertkit pre-training wrote."
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = BertTokenizer.from_pretrained(directory)
        self.model = BertForMaskedLM.from_pretrained(directory).eval().to(self.device)
        self.max_length = max_length or self.model.config.max_position_embeddings

    @torch.inference_mode()
    def __call__(self, texts: str | Sequence[str],
                 top_k: int = 5) -> list[list[Prediction]] | list[list[list[Prediction]]]:
        """For a str: one list of ``top_k`` predictions per [MASK], left to right. For a list of
        str: one such list per text."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
        mask_id = self.tokenizer.mask_token_id
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                               return_tensors="pt")
        for text, row in zip(texts, batch["input_ids"], strict=True):
            self._check_masks(text, int((row == mask_id).sum()))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model.bert(**batch, skip_padding=True).last_hidden_state
        where = batch["input_ids"] == mask_id  # [B, T]
        probs = self.model.cls.predictions(hidden[where]).float().softmax(-1)  # [masks, V]
        scores, token_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        predictions = [[Prediction(self.tokenizer.convert_ids_to_tokens(i), i, s)
                        for i, s in zip(ids.tolist(), row.tolist(), strict=True)]
                       for ids, row in zip(token_ids, scores, strict=True)]
        per_text = where.sum(1).tolist()
        ends = itertools.accumulate(per_text)
        grouped = [predictions[end - n:end] for end, n in zip(ends, per_text, strict=True)]
        return grouped[0] if single else grouped

    def _check_masks(self, text: str, found: int) -> None:
        mask = self.tokenizer.mask_token
        if found:
            return
        if mask in text:
            raise ValueError(f"every {mask} in {_shorten(text)!r} lies beyond the "
                             f"{self.max_length}-token limit; shorten the text before it.")
        hint = (f" (it is case-sensitive: write {mask}, not {mask.lower()})"
                if mask.lower() in text.lower() else "")
        raise ValueError(f"no {mask} in {_shorten(text)!r}{hint}: put {mask} where a word "
                         f"should be predicted, e.g. 'Paris is the {mask} of France.'")


def _checkpoint_keys(directory: Path) -> set[str]:
    """Tensor names of a checkpoint, from the safetensors header alone when there is one."""
    if (directory / WEIGHTS_NAME).is_file():
        from safetensors import safe_open

        with safe_open(directory / WEIGHTS_NAME, framework="pt") as weights:
            return set(weights.keys())
    return set(_read_weights(directory))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# ONNX export


class _ExportedEncoder(torch.nn.Module):
    """The encoder with plain tensor inputs and one output, as ONNX runtimes expect."""

    def __init__(self, model: BertModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids).last_hidden_state


def export_onnx(model, path: str | Path) -> Path:
    """Write the encoder of ``model`` (a folder, a model name, or a loaded model) as ONNX for
    serving elsewhere: inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (int64 [batch, tokens], both dynamic), output
    ``last_hidden_state`` (float32 [batch, tokens, H]). Needs the ``onnx`` extra
    (onnx, onnxscript; onnxruntime to run it)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail early with a clear hint)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx extra: pip install 'bertkit[onnx]' "
                           "(onnx, onnxscript, onnxruntime).") from None
    if isinstance(model, torch.nn.Module):
        loaded = getattr(model, "bert", model)  # a head model exports its encoder
    else:
        loaded = BertModel.from_pretrained(model)
    # A view: exporting leaves the caller's model where it is (device, dtype, mode).
    encoder = _encoder_view(loaded, loaded.config.num_hidden_layers).float().cpu()
    limit = encoder.config.max_position_embeddings
    input_ids = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 4]])  # any ids: only shapes are traced
    mask = (input_ids != 0).long()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", max=limit)}
    path = Path(path)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    # The exporter's progress notes and its remarks on ops BERT does not use are not for users.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                _ExportedEncoder(encoder), (input_ids, mask, torch.zeros_like(input_ids)),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"], dynamic_shapes=(dims, dims, dims),
                dynamo=True)
        finally:
            exporter_log.setLevel(level)
    program.save(str(path))
    return path
