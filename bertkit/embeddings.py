"""Feature-based embeddings from a pre-trained BERT: `Embedder` and what it is built from.

The paper's second way to use BERT (section 5.3) is feature-based: run the pre-trained encoder
once and hand its hidden states to another model. `Embedder` gives those features from any layer
or from the paper's combinations of layers, pooled per text (sentence embeddings for search and
clustering) or per token with its character offsets (for tagging).

Fast paths that leave the results unchanged are always on: texts are sorted by length and
batched up to a token budget, each batch runs on its real tokens only
(`BertModel(skip_padding=True)`; attention text length by text length, no padding anywhere),
and layers above the deepest one a feature needs are not run.
Opt-in modes trade accuracy for speed (see benchmarks/bench_inference.py for what they cost):
``precision="bf16"``, ``quantize="int8"`` (CPU), ``compile=True``, and `bertkit.export.export_onnx`
for serving the encoder elsewhere.

A sentence-transformers folder (``modules.json``: encoder, pooling, normalisation) is read with
its own recipe, so that `Embedder` gives the vectors ``SentenceTransformer`` gives, and
`Embedder.save_sentence_transformers` writes one.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import numbers
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint, files
from .checkpoint import skipping_init
from .config import BertConfig
from .device import DTYPES, choose_device, keep_freed_memory
from .model import BertModel
from .sources import resolve_pretrained
from .speedups import can_pack_linears, join_qkv, pack_linears
from .tokenizer import BertTokenizer, stated_model_max_length

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
# An empty text (no tokens): a zero vector, or what the model makes of [CLS] [SEP] (as
# sentence-transformers does: a unit vector once normalised).
EMPTY = ("zero", "model")
PRECISIONS = ("fp32", "bf16")
# Unsorted batches whose real tokens fill less of the [B, T] grid than this run packed.
PACK_BELOW_FILL = 0.9


def resolve_layers(layers: str | int | Sequence[int], num_layers: int,
                   combine: str = "sum") -> tuple[tuple[int, ...], str]:
    """A layer choice as absolute hidden-state indices (0 = embeddings, ``num_layers`` = last)
    and how to combine them: a strategy name, one layer index, or a sequence of indices."""
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}.")
    if isinstance(layers, str):
        if layers not in STRATEGIES:
            raise ValueError(f"unknown layer strategy {layers!r}; choose one of "
                             f"{', '.join(STRATEGIES)}, a layer number, or a list of them.")
        indices, own_combine = STRATEGIES[layers]
        indices = indices if indices is not None else tuple(range(1, num_layers + 1))
        # "sum" is the default, so only another choice that changes the result is a conflict.
        if combine not in ("sum", own_combine) and len(indices) > 1:
            raise ValueError(f"layers={layers!r} combines its layers by {own_combine!r}, not "
                             f"{combine!r}; to {combine} them, list them: layers="
                             f"{list(indices)}, combine={combine!r}.")
        combine = own_combine
    elif isinstance(layers, numbers.Integral):
        indices = (int(layers),)
    else:
        indices = tuple(layers) if isinstance(layers, Iterable) else ()
        if not indices or not all(isinstance(i, numbers.Integral) for i in indices):
            raise ValueError(f"layers must be a strategy name, an int or a non-empty sequence of "
                             f"ints, got {layers!r}.")
        indices = tuple(int(i) for i in indices)
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


def default_batch_tokens(device: torch.device, quantize: str | None = None) -> int:
    """Tokens per batch (real ones where batches run packed). On a 2-core Xeon with AMX, packed
    batches of new texts: 8192 tokens ran MiniLM's short snippets 1.06x as fast as 2048 in fp32
    and 1.03x as fast as 4096 in bf16 (256-token documents 1.03x); 16384 no faster. int8's
    products (fbgemm) keep 2048: 1.12x as fast as 8192. A GPU wants large batches to fill its
    cores."""
    if device.type != "cpu":
        return 16384
    return 2048 if quantize else 8192


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int, sort: bool = True,
                          padded: bool = True) -> list[np.ndarray]:
    """Row indices in batches of at most ``batch_tokens`` tokens once padded (``padded=False``:
    real tokens, for batches that run packed); a longer row goes alone. Sorted by length, rows
    of a batch are nearly equally long: little padding."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start, longest, total = [], 0, 0, 0
    for end, row in enumerate(order):
        longest, total = max(longest, lengths[row]), total + lengths[row]
        if end > start and ((end - start + 1) * longest if padded else total) > batch_tokens:
            batches.append(order[start:end])
            start, longest, total = end, lengths[row], lengths[row]
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


# --------------------------------------------------------------------------------------------
# sentence-transformers folders


ST_MODULES = "modules.json"
ST_TRANSFORMER_CONFIG = "sentence_bert_config.json"
ST_POOLING_DIR = "1_Pooling"
# The legacy pooling flags of 1_Pooling/config.json, in sentence-transformers' order.
ST_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean",
                     "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean",
                     "pooling_mode_lasttoken": "lasttoken"}


@dataclass(frozen=True)
class SentenceTransformersRecipe:
    """What a sentence-transformers folder declares: where its encoder is, how token vectors
    are pooled, whether the result is L2-normalised, the length texts are cut to (its
    ``max_seq_length``, else its tokenizer's ``model_max_length``, where sentence-transformers
    5+ writes it; None: neither states one, and texts are cut at the model's positions, as
    sentence-transformers does) and whether texts are lower-cased first. ``unsupported`` names
    what `Embedder` cannot apply (other modules, other pooling modes)."""

    encoder_dir: Path
    pooling: str
    normalize: bool
    max_length: int | None
    lowercase: bool
    unsupported: tuple[str, ...] = ()


def read_sentence_transformers(directory: str | Path) -> SentenceTransformersRecipe | None:
    """The recipe of a sentence-transformers folder; None for a folder without modules.json."""
    directory = Path(directory)
    modules = _read_json(directory / ST_MODULES)
    if modules is None:
        return None
    encoder_dir, pooling, normalize, unsupported = None, None, False, []
    for module in modules:
        kind, path = str(module.get("type", "")).rsplit(".", 1)[-1], module.get("path", "")
        if kind in ("Transformer", "BERT") and encoder_dir is None:
            encoder_dir = directory / path
        elif kind == "Pooling" and pooling is None:
            pooling = _st_pooling(_read_json(directory / path / "config.json") or {})
        elif kind == "Normalize":
            normalize = True
        else:
            unsupported.append(f"module {module.get('type')}")
    if encoder_dir is None:
        raise ValueError(f"{directory / ST_MODULES} lists no Transformer module: there is no "
                         "BERT encoder to embed with.")
    if pooling not in POOLINGS[:3]:
        unsupported.append(f"pooling {pooling}" if pooling else "no Pooling module")
    encoder_config = _read_json(encoder_dir / ST_TRANSFORMER_CONFIG) or {}
    max_length = encoder_config.get("max_seq_length") or stated_model_max_length(encoder_dir)
    return SentenceTransformersRecipe(
        encoder_dir, pooling if pooling in POOLINGS[:3] else "mean", normalize, max_length,
        bool(encoder_config.get("do_lower_case", False)), tuple(unsupported))


def _st_pooling(config: dict) -> str:
    """1_Pooling/config.json's mode: ``pooling_mode`` (sentence-transformers 5+) or the legacy
    flags; several modes (concatenated there) come back joined by '+'."""
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in ST_LEGACY_POOLING.items() if config.get(key)] or ["mean"]
    return modes if isinstance(modes, str) else "+".join(modes)


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error


# --------------------------------------------------------------------------------------------
# Embedder


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

    A sentence-transformers folder (one with ``modules.json``, like all-MiniLM-L6-v2) brings
    its own ``pooling``, ``normalize`` and ``max_length`` (``max_seq_length``: 256 for
    all-MiniLM-L6-v2), so the vectors are the ones ``SentenceTransformer`` gives; arguments
    given here win. Otherwise the defaults are mean pooling, normalised, and the model's
    position count as the length.

    Texts longer than ``max_length`` tokens are truncated (and counted). An empty text (no
    tokens) gets a zero vector (``empty="zero"``: nothing to embed), or with ``empty="model"``
    the model's vector of ``[CLS] [SEP]``, as sentence-transformers gives. Opt-in speed modes:
    ``precision="bf16"`` (bfloat16 weights and activations: AMX/AVX512-BF16 CPUs, GPUs),
    ``quantize="int8"`` (dynamic int8 Linear layers, CPU) and ``compile=True`` (torch.compile;
    slow first batches). ``batch_tokens`` bounds the tokens of a batch, real ones where it runs
    packed (default 8192 on CPU, 2048 for int8, 16384 on GPU). ``sort_by_length``
    and ``skip_padding`` are exact speed-ups, on by default (switch them off only to compare).
    """

    def __init__(self, model="all-minilm-l6-v2", *, tokenizer=None, layers="last", combine="sum",
                 pooling=None, normalize=None, max_length=None, empty="zero", batch_tokens=None,
                 device=None, precision="fp32", quantize=None, compile=False,
                 sort_by_length=True, skip_padding=True):
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        if empty not in EMPTY:
            raise ValueError(f"unknown empty {empty!r}; choose one of {', '.join(EMPTY)}.")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(PRECISIONS)}.")
        if quantize not in (None, "int8"):
            raise ValueError(f"unknown quantize {quantize!r}; the one mode is 'int8'.")
        if quantize and precision != "fp32":
            raise ValueError("quantize='int8' replaces the fp32 Linear layers; use it with "
                             "precision='fp32'.")
        if normalize is not None and not isinstance(normalize, (bool, np.bool_)):
            # "no" or "false" from a config file would be truthy: normalised silently
            raise ValueError(f"normalize must be True, False or None (the folder's recipe), got "
                             f"{normalize!r}.")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
            raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}.")
        self.device = choose_device(device)
        keep_freed_memory(self.device)
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device, quantize)
        if quantize and self.device.type != "cpu":
            raise ValueError("quantize='int8' is a CPU mode; on a GPU use precision='bf16'.")
        recipe = None
        if isinstance(model, torch.nn.Module):
            loaded = getattr(model, "bert", model)  # a head model embeds with its encoder
            if not isinstance(loaded, BertModel) or tokenizer is None:
                raise ValueError("model must be a checkpoint folder, a model name, or a loaded "
                                 "BertModel (or BertFor* model) given with its tokenizer=.")
            config = loaded.config
        else:
            loaded, directory = None, resolve_pretrained(model)
            recipe = read_sentence_transformers(directory)
            if recipe is not None:
                _check_recipe(recipe, directory, pooling)
                directory = recipe.encoder_dir
            config = BertConfig.from_json_file(directory / "config.json")  # check before loading
        self.layers, self.combine = resolve_layers(layers, config.num_hidden_layers, combine)
        self.tokenizer = tokenizer or BertTokenizer.from_pretrained(directory)
        self.max_length = checked_max_length(
            max_length if max_length is not None else _declared_length(recipe, config),
            config.max_position_embeddings)
        loaded = loaded or BertModel.from_pretrained(directory)
        self._pooler = loaded.pooler  # written by save_sentence_transformers, never run
        encoder = _encoder_view(loaded, max(self.layers)).to(self.device, DTYPES[precision])
        if quantize:
            encoder = _quantize_int8(encoder)
        self.model = encoder
        if compile:
            self._forward = torch.compile(encoder, dynamic=True)
        elif not quantize and can_pack_linears(self.device):  # its own modules, same weights
            self._forward = pack_linears(_encoder_view(encoder, encoder.config.num_hidden_layers),
                                         self.batch_tokens)
        else:
            self._forward = encoder
        width = 1 if self.combine != "concat" else len(self.layers)
        self.dim = config.hidden_size * width
        self.pooling = pooling or (recipe.pooling if recipe else "mean")
        self.normalize = normalize if normalize is not None else (recipe.normalize if recipe
                                                                  else True)
        self.lowercase = bool(recipe and recipe.lowercase)  # sentence-transformers' do_lower_case
        self.empty, self.precision, self.quantize = empty, precision, quantize
        self.sort_by_length, self.skip_padding = sort_by_length, skip_padding
        self.compiled = compile

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
        texts = list(as_texts(texts))
        # All texts are in memory already: one chunk sorts them all by length.
        results = list(self.stream(texts, chunk_size=max(1, len(texts)), progress=progress))
        empty, truncated = sum(r.empty for r in results), sum(r.truncated for r in results)
        if empty:
            fate = ("got zero vectors" if self.empty == "zero"
                    else "were embedded as [CLS] [SEP] (empty='model')")
            logger.warning("%d of %d texts are empty (no tokens) and %s.", empty, len(texts),
                           fate)
        if truncated:
            logger.warning("%d of %d texts are longer than %d tokens and were truncated.",
                           truncated, len(texts), self.max_length)
        return results

    def stream(self, texts: str | Iterable[str], chunk_size: int = 1024,
               progress: bool = False) -> Iterator[Embedded]:
        """Embed an iterable of texts (a str is one text) lazily, ``chunk_size`` at a time
        (each chunk sorted by length), yielding one `Embedded` per text in input order: memory
        stays flat however long the input."""
        if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 and an int, got {chunk_size!r}.")
        texts = iter(as_texts(texts))
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
        lowered = [text.lower() for text in texts] if self.lowercase else texts
        encoded = self.tokenizer(lowered, return_offsets_mapping=per_token)
        ids = encoded["input_ids"]
        truncated = [len(row) > self.max_length for row in ids]
        # Cut to max_length, keeping the final [SEP] (Google's truncation of a single text).
        ids = [row[:self.max_length - 1] + row[-1:] if cut else row
               for row, cut in zip(ids, truncated, strict=True)]
        lengths = [len(row) for row in ids]
        empty = [n <= 2 for n in lengths]  # only [CLS] and [SEP]
        skipped = empty if self.empty == "zero" else [False] * len(empty)
        results = [Embedded(i, self._empty_value(), True, cut) if skip else None
                   for i, (skip, cut) in enumerate(zip(skipped, truncated, strict=True))]
        rows = [i for i, skip in enumerate(skipped) if not skip]
        bar.update(len(texts) - len(rows))
        for batch in length_sorted_batches([lengths[i] for i in rows], self.batch_tokens,
                                           self.sort_by_length, padded=not self._in_runs()):
            batch_rows = [rows[b] for b in batch]
            features, mask = self._features([ids[i] for i in batch_rows])
            if per_token:
                features = features.cpu().numpy()
                for b, i in enumerate(batch_rows):
                    inner = slice(1, lengths[i] - 1)  # without [CLS] and [SEP]
                    offsets = encoded["offset_mapping"][i][inner]
                    if self.lowercase:  # offsets into the text given, not its lower case
                        offsets = _offsets_before_lowercasing(texts[i], offsets)
                    value = TokenVectors(
                        self.tokenizer.convert_ids_to_tokens(ids[i][inner]),
                        [tuple(o) for o in offsets], features[b, inner].copy())
                    results[i] = Embedded(i, value, empty[i], truncated[i])
            else:
                vectors = pool(features, mask.to(self.device), self.pooling)
                if self.normalize:
                    vectors = F.normalize(vectors, dim=-1)
                for b, vector in zip(batch_rows, vectors.cpu().numpy(), strict=True):
                    results[b] = Embedded(b, vector, empty[b], truncated[b])
            bar.update(len(batch_rows))
        return results

    def _features(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] float32 features (normalised per token for pooling='tokens') and the mask."""
        input_ids, mask = padded(sequences)
        # The encoder stops at the deepest chosen layer, so one chosen layer is the last state.
        several = len(self.layers) > 1
        # [CLS] pooling of one layer reads one state a text: that layer computes it alone.
        states_at = (input_ids.new_zeros(len(sequences), 1).to(self.device)
                     if self.pooling == "cls" and not several and max(self.layers) else None)
        out = self._forward(input_ids.to(self.device), mask.to(self.device),
                            output_hidden_states=several, skip_padding=self._worth_packing(mask),
                            states_at=states_at)
        features = (combine_layers(out.hidden_states, self.layers, self.combine) if several
                    else out.last_hidden_state)
        features = features.float()
        if self.pooling == "tokens" and self.normalize:
            features = F.normalize(features, dim=-1)
        return features, mask

    def _in_runs(self) -> bool:
        """Length-sorted batches run packed, their attention text length by text length
        (`bertkit.speedups.Packing.runs`; MiniLM's bf16 embeddings of short snippets 1.045x,
        fp32 1.02x on a 2-core Xeon, at ~9% / 5% padding), and count their real tokens only.
        Not in a traced graph, which pads for attention."""
        return self.skip_padding and self.sort_by_length and not self.compiled

    def _worth_packing(self, mask: torch.Tensor) -> bool:
        """Batches in runs, and unsorted ones with much padding: those copy the real tokens to
        the grid and back in each layer."""
        return self._in_runs() or (self.skip_padding
                                   and mask.float().mean().item() < PACK_BELOW_FILL)

    def weights_digest(self) -> str:
        """A hash of the encoder's weights as they run (cast or quantised): what a resumed
        `bertkit.embed_files.embed_file` checks to go on with the model that began."""
        digest = hashlib.blake2b(digest_size=16)

        def add(value) -> None:
            if isinstance(value, torch.Tensor):
                value = value.int_repr() if value.is_quantized else value.detach()
                digest.update(value.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            elif isinstance(value, (tuple, list)):
                for item in value:
                    add(item)
            else:
                digest.update(repr(value).encode())
        for name, value in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            add(value)
        return digest.hexdigest()

    def _empty_value(self) -> np.ndarray | TokenVectors:
        if self.pooling == "tokens":
            return TokenVectors([], [], np.zeros((0, self.dim), dtype=np.float32))
        return np.zeros(self.dim, dtype=np.float32)

    def save_sentence_transformers(self, directory: str | Path) -> Path:
        """Write this Embedder as a sentence-transformers folder (encoder, tokenizer,
        ``modules.json``, pooling and normalisation, ``max_seq_length``), so that
        ``SentenceTransformer(directory)`` gives the vectors `encode` gives, and
        ``Embedder(directory)`` reads it back with the same settings. Empty texts aside: there,
        sentence-transformers always embeds [CLS] [SEP] (``empty="model"``). The folder is
        replaced whole once written: an interrupted save leaves what was there before.

        The layout holds one layer's token vectors pooled by mean, [CLS] or max: a chosen layer
        below the last is kept by writing the encoder up to it. Combinations of layers,
        per-token output and the int8 / bf16 modes have no such form and are refused.
        """
        if len(self.layers) != 1 or self.pooling == "tokens" or self.quantize or (
                self.precision != "fp32"):
            raise ValueError(
                "a sentence-transformers folder holds one layer's vectors pooled by mean, cls "
                f"or max, in fp32; this Embedder has layers {list(self.layers)}, pooling "
                f"{self.pooling!r}, precision {self.precision!r}, quantize {self.quantize!r}.")
        directory = Path(directory)
        state = self.model.state_dict()
        if self._pooler is not None:  # kept, so that loaders find no missing weights
            state.update({f"pooler.{k}": v for k, v in self._pooler.state_dict().items()})
        tokenizer = copy.copy(self.tokenizer)
        tokenizer.model_max_length = self.max_length  # sentence-transformers 5+ reads it here
        modules = [("Transformer", ""), ("Pooling", ST_POOLING_DIR)]
        if self.normalize:
            modules.append(("Normalize", "2_Normalize"))
        # Written beside and renamed into place: an interrupted save leaves the folder that was
        # there before, never a part of one that loads as a plain encoder with other settings.
        with files.reporting_full_disk(directory, "What it held before is kept."), \
                files.atomic_path(directory) as staging:
            checkpoint.save_pretrained(self.model, staging, state_dict=state)
            tokenizer.save_pretrained(staging)
            _write_json(staging / ST_MODULES, [
                {"idx": i, "name": str(i), "path": path,
                 "type": f"sentence_transformers.models.{kind}"}
                for i, (kind, path) in enumerate(modules)])
            _write_json(staging / ST_TRANSFORMER_CONFIG,
                        {"max_seq_length": self.max_length, "do_lower_case": self.lowercase})
            # The legacy flags: every sentence-transformers version reads them.
            _write_json(staging / ST_POOLING_DIR / "config.json", {
                "word_embedding_dimension": self.dim,
                **{key: mode == self.pooling for key, mode in ST_LEGACY_POOLING.items()}})
            _write_json(staging / "config_sentence_transformers.json", {
                "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
        return directory


def as_texts(texts: str | Iterable[str]) -> Iterable[str]:
    """The texts of an argument that takes one text or many: a str is one text (iterating it
    would embed each character), bytes and non-iterables are refused."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be str, got bytes: decode them first, e.g. "
                        "data.decode('utf-8').")
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or an iterable of str, got "
                        f"{type(texts).__name__}.")
    return texts


def checked_max_length(max_length, positions: int) -> int:
    """A tokens-per-text limit: an int from 3 ([CLS] text [SEP]) to the model's positions."""
    if not (isinstance(max_length, numbers.Integral) and 3 <= max_length <= positions):
        raise ValueError(f"max_length must be an int between 3 and the model's {positions} "
                         f"positions, got {max_length!r}.")
    return max_length


def _offsets_before_lowercasing(text: str, offsets) -> list[tuple[int, int]]:
    """(start, end) offsets into ``text.lower()`` as offsets into ``text``. A few characters
    lower-case to two ('İ' to 'i' and a combining dot), which shifts every offset after them;
    every other character lower-cases to one, in context or alone (final sigma)."""
    source = [i for i, char in enumerate(text) for _ in char.lower()]
    return [(source[start], source[end - 1] + 1) for start, end in offsets]


def _check_recipe(recipe: SentenceTransformersRecipe, directory: Path, pooling) -> None:
    """A folder whose recipe Embedder cannot follow is refused, unless ``pooling`` is chosen."""
    if recipe.unsupported and pooling is None:
        raise ValueError(
            f"{directory} is a sentence-transformers model with {', '.join(recipe.unsupported)}, "
            "which Embedder does not apply, so its vectors would differ from "
            "SentenceTransformer's. Pass pooling= (and normalize=) to embed with the encoder "
            "alone.")
    if recipe.unsupported:
        logger.warning("%s: not applying %s (pooling=%r given).", directory,
                       ", ".join(recipe.unsupported), pooling)


def _declared_length(recipe: SentenceTransformersRecipe | None, config: BertConfig) -> int:
    """The length a sentence-transformers folder cuts texts to, within the model's positions;
    for other folders, the positions."""
    positions = config.max_position_embeddings
    declared = recipe.max_length if recipe else None
    return min(int(declared), positions) if declared else positions


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _encoder_view(model: BertModel, num_layers: int) -> BertModel:
    """An eval-mode encoder sharing ``model``'s weights (not copied, not changed) that stops
    after ``num_layers`` layers and has no pooler: layers above the deepest chosen one cannot
    change the features. Nothing is initialised only to be replaced (`skipping_init`)."""
    config = replace(model.config, num_hidden_layers=num_layers)
    with skipping_init():
        view = BertModel(config, add_pooling_layer=False)
    missing, _ = view.load_state_dict(model.state_dict(), strict=False, assign=True)
    assert not missing, missing
    return view.eval()


def _quantize_int8(model: BertModel) -> BertModel:
    """Dynamic int8 quantization of every Linear layer (weights per output channel, activations
    per batch), for CPUs, in place: ``model`` is an `_encoder_view`, whose modules are its own.
    torch.ao's eager quantization is deprecated upstream in favour of torchao, but it is the one
    that needs no extra package; fbgemm packs the weights because the default x86 engine runs
    per-channel weights several times slower."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
            return quantize_dynamic(join_qkv(model),
                                    {torch.nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8, inplace=True)
    finally:
        torch.backends.quantized.engine = engine
