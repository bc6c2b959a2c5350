"""Storage of pre-training examples: safetensors shards, a manifest, and a PyTorch Dataset.

An output folder holds ``manifest.json``, ``tokenizer/`` (the vocabulary the ids refer to) and one
folder per split (``train/``, ``validation/``) of shards. A shard is a safetensors file of flat
arrays, so it is memory-mapped and read by any safetensors tool:

============================  =========================================================
``input_ids``                 every example's ids, one after another (uint16, or uint32 for a
                              vocabulary over 65,536); masked already unless masking is dynamic
``offsets``                   int64, examples + 1: example ``i`` is ``input_ids[offsets[i]:
                              offsets[i + 1]]``
``segment_a_lengths``         uint16: length of ``[CLS] A [SEP]`` (token type 0), the rest is B
``next_sentence_labels``      uint8: 0 = B follows A, 1 = B is random (absent without NSP)
``masked_positions``,         the predicted positions and their original ids, flat, and where
``masked_labels``,            each example's start (absent with dynamic masking)
``masked_offsets``
============================  =========================================================

The manifest says ``"complete": true`` only once every shard is written; shards are written under
a temporary name and renamed, and the manifest lists a shard only after that, so a crash or Ctrl-C
leaves intact shards and a manifest that says the run did not finish.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..files import atomic_path, write_json
from ..sources import sha256_of
from .pretraining import IGNORE_INDEX, PretrainingConfig, Vocabulary, mask_tokens

MANIFEST_NAME = "manifest.json"
TOKENIZER_FOLDER = "tokenizer"
FORMAT_NAME = "bertkit-pretraining-data"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
_SAFETENSORS_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "I64": np.int64}
_SAFETENSORS_CODES = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}


def token_dtype(vocab_size: int) -> type:
    """The narrowest unsigned integer that holds every id."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# -- manifest --------------------------------------------------------------------------------


def write_manifest(directory: Path, manifest: dict) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half."""
    write_json(directory / MANIFEST_NAME, manifest)


def read_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {MANIFEST_NAME}: it is not pre-training "
                                "data made by `bertkit data pretrain`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} manifest.")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest['format_version']}; this bertkit "
                         f"reads up to {FORMAT_VERSION}. Upgrade bertkit.")
    missing = [key for key in ("complete", "settings", "tokenizer", "splits")
               if key not in manifest]
    splits = manifest.get("splits")
    if not missing and (not isinstance(splits, dict) or not all(
            isinstance(split, dict) and isinstance(split.get("shards"), list)
            for split in splits.values())):
        missing = ["a shard list per split"]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is damaged or was not written "
                         f"by bertkit. {rebuild_hint(directory, manifest)}")
    return manifest


def rebuild_hint(directory, manifest: dict | None = None) -> str:
    """How to make a data folder anew: the command, with the corpus its manifest names."""
    sources = ((manifest or {}).get("inputs") or {}).get("sources") or ["CORPUS"]
    return (f"Rebuild it with `bertkit data pretrain {' '.join(map(str, sources))} --out "
            f"{directory} --overwrite` (and the settings that made it).")


# -- writing ---------------------------------------------------------------------------------


class ShardWriter:
    """Streams packed examples of one split to disk and cuts a shard each time ``shard_bytes`` of
    ids have gathered; ``on_shard`` hears of each shard once it is safely on disk.

    Each array of the shard being gathered grows in a part file of its own; a full shard's parts
    are joined behind a safetensors header. So memory does not depend on the shard size.
    """

    def __init__(self, directory: Path, split: str, dtype: type, shard_bytes: int, on_shard):
        self.directory, self.split, self.dtype = directory / split, split, dtype
        self.shard_tokens = max(1, shard_bytes // np.dtype(dtype).itemsize)
        self.on_shard = on_shard
        self.parts: dict[str, BinaryIO] = {}
        self.lengths: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.ends: dict[str, int] = {}  # the last value of each offsets array
        self.tokens = 0
        self.shards_written = 0

    def add(self, packed: dict[str, np.ndarray]) -> None:
        while (count := len(packed["offsets"]) - 1) > 0:
            # Take examples up to the one that fills the shard, and keep the rest for the next.
            take = min(count, int(np.searchsorted(packed["offsets"][1:],
                                                  self.shard_tokens - self.tokens)) + 1)
            self._append(slice_packed(packed, 0, take))
            packed = slice_packed(packed, take, count)
            if self.tokens >= self.shard_tokens:
                self.flush()

    def _append(self, packed: dict[str, np.ndarray]) -> None:
        for key, values in packed.items():
            first = key not in self.parts
            if first:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.parts[key] = open(self._part_path(key), "wb")
                self.lengths[key], self.dtypes[key], self.ends[key] = 0, values.dtype, 0
            if key.endswith("offsets"):  # they run on from the previous batch's end
                values = (values if first else values[1:]) + self.ends[key]
                self.ends[key] = int(values[-1])
            self.parts[key].write(np.ascontiguousarray(values).tobytes())
            self.lengths[key] += len(values)
        self.tokens += int(packed["offsets"][-1])

    def _part_path(self, key: str) -> Path:
        return self.directory / f".shard-{self.shards_written:05d}.{key}.part"

    def flush(self) -> None:
        """Join the parts gathered so far into a shard (if any)."""
        if not self.parts:
            return
        for part in self.parts.values():
            part.close()
        # Widest items first, as safetensors lays them out, so every array is aligned.
        order = sorted(self.parts, key=lambda key: (-self.dtypes[key].itemsize, key))
        header: dict = {"__metadata__": {"format": FORMAT_NAME}}
        begin = 0
        for key in order:
            end = begin + self.lengths[key] * self.dtypes[key].itemsize
            header[key] = {"dtype": _SAFETENSORS_CODES[self.dtypes[key].type],
                           "shape": [self.lengths[key]], "data_offsets": [begin, end]}
            begin = end
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        name = f"{self.split}/shard-{self.shards_written:05d}.safetensors"
        path = self.directory.parent / name
        with atomic_path(path) as temporary, open(temporary, "wb") as shard:
            shard.write(len(encoded).to_bytes(8, "little") + encoded)
            for key in order:
                with open(self._part_path(key), "rb") as part:
                    shutil.copyfileobj(part, shard, 1 << 20)
        record = {"file": name, "examples": self.lengths["offsets"] - 1,
                  "tokens": self.lengths["input_ids"],
                  "predictions": self.lengths.get("masked_positions", 0),
                  "sha256": sha256_of(path)}
        self.discard()
        self.shards_written += 1
        self.on_shard(self.split, record)

    def discard(self) -> None:
        """Drop the parts of the shard being gathered."""
        for key, part in self.parts.items():
            part.close()
            self._part_path(key).unlink(missing_ok=True)
        self.parts, self.lengths, self.dtypes, self.ends, self.tokens = {}, {}, {}, {}, 0


def pack_examples(examples, masks=None, next_sentence: bool = True,
                  dtype: type = np.uint16) -> dict[str, np.ndarray]:
    """Flat arrays (the shard layout, ids as ``dtype``) for ``examples`` and, with static masking,
    their masks: (input ids, positions, labels) per example."""
    ids = [m[0] for m in masks] if masks is not None else [e.tokens for e in examples]
    packed = {
        "input_ids": np.concatenate([np.zeros(0, dtype)] + ids).astype(dtype),
        "offsets": np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64),
        "segment_a_lengths": np.array([e.segment_a_length for e in examples], np.uint16),
    }
    if next_sentence:
        packed["next_sentence_labels"] = np.array([e.is_random_next for e in examples], np.uint8)
    if masks is not None:
        packed["masked_positions"] = np.concatenate(
            [np.zeros(0, np.uint16)] + [m[1].astype(np.uint16) for m in masks])
        packed["masked_labels"] = np.concatenate(
            [np.zeros(0, dtype)] + [m[2] for m in masks]).astype(dtype)
        packed["masked_offsets"] = np.concatenate(
            [[0], np.cumsum([len(m[1]) for m in masks])]).astype(np.int64)
    return packed


def slice_packed(packed: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Examples ``start:stop`` of a packed batch, itself packed."""
    sliced = {}
    for key, values in packed.items():
        if key.endswith("offsets"):
            sliced[key] = values[start:stop + 1] - values[start]
        elif key in ("input_ids", "masked_positions", "masked_labels"):
            offsets = packed["offsets" if key == "input_ids" else "masked_offsets"]
            sliced[key] = values[offsets[start]:offsets[stop]]
        else:
            sliced[key] = values[start:stop]
    return sliced


# -- reading ---------------------------------------------------------------------------------


def open_shard(path: Path, hint: str = "") -> dict[str, np.ndarray]:
    """A shard's arrays, memory-mapped (safetensors: 8-byte header length, JSON header, data).

    A missing, cut short or unreadable shard is an error naming it, ending with ``hint`` (what
    to do about it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the data folder is incomplete (copied "
                                f"without its shards?). {hint}".rstrip())
    size = path.stat().st_size
    try:
        with open(path, "rb") as file:
            header_length = int.from_bytes(file.read(8), "little")
            if not 2 <= header_length <= size - 8:
                raise ValueError("no safetensors header")
            header = json.loads(file.read(header_length))
        layout = [(name, np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]), *info["data_offsets"])
                  for name, info in header.items() if name != "__metadata__"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable shard ({error}). {hint}".rstrip()) from None
    needed = 8 + header_length + max((end for *_, end in layout), default=0)
    if size < needed:
        raise ValueError(f"{path} is cut short: {size:,} bytes where its header needs "
                         f"{needed:,}. {hint}".rstrip())
    arrays = {}
    for name, dtype, begin, end in layout:
        count = (end - begin) // dtype.itemsize
        arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=8 + header_length + begin,
                                  shape=(count,)) if count else np.zeros(0, dtype))
    return arrays


class PretrainingDataset(torch.utils.data.Dataset):
    """Random access to the examples of one split of ``bertkit data pretrain`` output.

    ``dataset[i]`` is a dict of 1-D LongTensors ``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``labels`` (the original id at predicted positions, -100 elsewhere) and,
    with NSP, a 0-d ``next_sentence_label`` (0 = B follows A, 1 = B is random). Batch them with
    ``dataset.collate``; give each rank its share with ``PretrainingSampler``. With dynamic
    masking the masks are drawn on reading, from the seed, the epoch (``set_epoch``) and the
    index, so they are fresh every epoch and the same on every rerun.
    """

    def __init__(self, directory: str | os.PathLike, split: str = "train", *,
                 allow_incomplete: bool = False):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        hint = rebuild_hint(self.directory, self.manifest)
        if not self.manifest["complete"] and not allow_incomplete:
            raise ValueError(
                f"{self.directory} is incomplete ({self.manifest.get('status')}): the "
                f"`bertkit data pretrain` run that wrote it did not finish. {hint} (From "
                "Python, PretrainingDataset(..., allow_incomplete=True) reads the shards it "
                "did finish.)")
        if split not in self.manifest["splits"]:
            raise ValueError(f"unknown split {split!r}; {self.directory} has "
                             f"{', '.join(self.manifest['splits'])}.")
        self.split = split
        self.config = PretrainingConfig(**self.manifest["settings"])
        self.pad_token_id = self.manifest["tokenizer"]["special_ids"]["pad"]
        recorded = self.manifest["splits"][split]["shards"]
        self.shards = [open_shard(self.directory / shard["file"], hint) for shard in recorded]
        counts = [len(shard["offsets"]) - 1 for shard in self.shards]
        for record, shard, count in zip(recorded, self.shards, counts, strict=True):
            # a cheap check on every read (`verify` compares the sha256): a shard swapped
            # for another one whose header is as valid
            if (count, len(shard["input_ids"])) != (record["examples"], record["tokens"]):
                raise ValueError(
                    f"{self.directory / record['file']} holds {count:,} examples of "
                    f"{len(shard['input_ids']):,} tokens where {MANIFEST_NAME} records "
                    f"{record['examples']:,} of {record['tokens']:,}: it is not the shard that "
                    f"was written there. {hint}".rstrip())
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.epoch = 0
        self.vocab = None
        if self.config.dynamic_masking:
            tokens = (self.directory / TOKENIZER_FOLDER / "vocab.txt").read_text(
                encoding="utf-8").split("\n")[:self.manifest["tokenizer"]["vocab_size"]]
            self.vocab = Vocabulary.from_tokens(tokens,
                                                self.manifest["tokenizer"]["special_tokens"])

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def set_epoch(self, epoch: int) -> None:
        """Dynamic masking draws new masks for every epoch; call this before each."""
        self.epoch = epoch

    def arrays(self, index: int, epoch: int | None = None) -> dict[str, np.ndarray | int]:
        """Example ``index`` as numpy: ``input_ids``, ``segment_a_length``, ``positions``,
        ``labels`` (the predicted positions and their original ids) and ``next_sentence_label``
        (None without NSP). Dynamic masking draws the masks of pass ``epoch`` (default: the one
        `set_epoch` set)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} out of range for {len(self)} examples")
        index %= len(self)
        shard_index = int(np.searchsorted(self.shard_starts, index, side="right")) - 1
        shard, local = self.shards[shard_index], index - int(self.shard_starts[shard_index])
        begin, end = shard["offsets"][local], shard["offsets"][local + 1]
        input_ids = shard["input_ids"][begin:end].astype(np.int64)
        vocab_size = self.manifest["tokenizer"]["vocab_size"]
        if not 0 < len(input_ids) <= self.config.max_seq_length or not _within(input_ids,
                                                                                vocab_size):
            self._corrupt(shard_index, local, f"{len(input_ids)} tokens with ids from "
                          f"{input_ids.min(initial=0)} to {input_ids.max(initial=0)} (at most "
                          f"{self.config.max_seq_length} tokens, ids below {vocab_size})")
        if self.config.dynamic_masking:
            rng = np.random.default_rng([self.config.seed,
                                         self.epoch if epoch is None else epoch, index])
            input_ids, positions, labels = mask_tokens(
                input_ids, self.vocab, rng, masked_lm_prob=self.config.masked_lm_prob,
                max_predictions_per_seq=self.config.max_predictions_per_seq,
                whole_word_mask=self.config.whole_word_mask)
        else:
            mask_begin, mask_end = shard["masked_offsets"][local:local + 2]
            positions = shard["masked_positions"][mask_begin:mask_end].astype(np.int64)
            labels = shard["masked_labels"][mask_begin:mask_end].astype(np.int64)
            if not (_within(positions, len(input_ids)) and _within(labels, vocab_size)):
                self._corrupt(shard_index, local, "masked positions or original ids out of "
                              "range")
        nsp = shard.get("next_sentence_labels")
        return {"input_ids": input_ids, "segment_a_length": int(shard["segment_a_lengths"][local]),
                "positions": positions, "labels": labels,
                "next_sentence_label": None if nsp is None else int(nsp[local])}

    def _corrupt(self, shard_index: int, local: int, what: str) -> None:
        """A cheap check on every read (`verify` compares whole shards' sha256): damaged bytes
        would otherwise reach the model as an index error, or as examples of garbage."""
        record = self.manifest["splits"][self.split]["shards"][shard_index]
        raise ValueError(f"{self.directory / record['file']}, example {local}: {what}; the shard "
                         f"is damaged. {rebuild_hint(self.directory, self.manifest)}".rstrip())

    def masked_labels(self) -> np.ndarray:
        """The original ids at every predicted position of the split (of this epoch's masks)."""
        if self.config.dynamic_masking:
            parts = [self.arrays(i)["labels"] for i in range(len(self))]
        else:
            parts = [shard["masked_labels"].astype(np.int64) for shard in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def token_ids(self, limit: int | None = None) -> np.ndarray:
        """The examples' original ids (before masking), one after another: the split's text, or
        its first ``limit`` tokens."""
        parts, count = [], 0
        for shard in self.shards:
            if limit is not None and count >= limit:
                break
            ids = shard["input_ids"].astype(np.int64)
            if not self.config.dynamic_masking:  # put the originals back where [MASK] etc. went
                example = np.repeat(np.arange(len(shard["offsets"]) - 1),
                                    np.diff(shard["masked_offsets"]))
                ids[shard["offsets"][example] + shard["masked_positions"]] = shard["masked_labels"]
            parts.append(ids)
            count += len(ids)
        return np.concatenate(parts)[:limit] if parts else np.zeros(0, np.int64)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.example(index)

    def example(self, index: int, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """Example ``index`` as the tensors `collate` batches (masks of pass ``epoch``, as in
        `arrays`)."""
        example = self.arrays(index, epoch)
        length = len(example["input_ids"])
        labels = torch.full((length,), IGNORE_INDEX, dtype=torch.long)
        labels[torch.from_numpy(example["positions"])] = torch.from_numpy(example["labels"])
        token_type_ids = torch.ones(length, dtype=torch.long)
        token_type_ids[:example["segment_a_length"]] = 0
        item = {"input_ids": torch.from_numpy(example["input_ids"]),
                "token_type_ids": token_type_ids,
                "attention_mask": torch.ones(length, dtype=torch.long),
                "labels": labels}
        if example["next_sentence_label"] is not None:
            item["next_sentence_label"] = torch.tensor(example["next_sentence_label"])
        return item

    @property
    def collate(self):
        """A ``collate_fn`` for a DataLoader, padding with this data's [PAD] id."""
        return functools.partial(collate, pad_token_id=self.pad_token_id)

    def verify(self) -> None:
        """Check every shard against the sha256 the manifest recorded; raise on a mismatch."""
        for shard in self.manifest["splits"][self.split]["shards"]:
            actual = sha256_of(self.directory / shard["file"])
            if actual != shard["sha256"]:
                raise ValueError(f"{shard['file']} is corrupt: sha256 {actual}, the manifest "
                                 f"recorded {shard['sha256']}. "
                                 f"{rebuild_hint(self.directory, self.manifest)}")


def _within(values: np.ndarray, end: int) -> bool:
    """Whether every value is in [0, end)."""
    return values.size == 0 or (int(values.min()) >= 0 and int(values.max()) < end)


_PAD_VALUES = {"token_type_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}


def collate(examples: list[dict[str, torch.Tensor]], pad_token_id: int = 0,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack examples into a batch of LongTensors, padding sequences to the longest (rounded up
    to ``pad_to_multiple_of``): [PAD] ids, attention 0, token type 0, label -100."""
    width = max(len(example["input_ids"]) for example in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch = {}
    for key in examples[0]:
        if examples[0][key].dim() == 0:
            batch[key] = torch.stack([example[key] for example in examples])
            continue
        padded = torch.full((len(examples), width), _PAD_VALUES.get(key, pad_token_id),
                            dtype=torch.long)
        for row, example in enumerate(examples):
            padded[row, :len(example[key])] = example[key]
        batch[key] = padded
    return batch


class PretrainingSampler(torch.utils.data.Sampler[int]):
    """The example indices one rank reads in one epoch: disjoint across ranks, resumable.

    An epoch's order visits the shards in a shuffled order and each shard's examples in a shuffled
    order (memory: one shard's worth of indices, not the corpus's), seeded by ``seed`` and the
    epoch (``set_epoch``). Rank ``r`` of ``world_size`` takes every ``world_size``-th index from
    position ``r``; every rank gets ``len(dataset) // world_size`` (the few left over are dropped
    so ranks stay in step). ``start`` skips that many of this rank's indices: the position to
    resume from.
    """

    def __init__(self, dataset: PretrainingDataset, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, start: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        self.shard_starts = dataset.shard_starts
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self.per_rank = len(dataset) // world_size
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start must be in [0, {self.per_rank}], got {start}.")
        self.start = start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self):
        counts = np.diff(self.shard_starts)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(counts)) if self.shuffle else np.arange(len(counts))
        # Global positions this rank reads: first + k·world_size for k in [start, per_rank).
        first = self.start * self.world_size + self.rank
        stop = self.per_rank * self.world_size
        position = 0
        for shard in order:
            count = int(counts[shard])
            if position + count > first and position < stop:
                local = np.arange(count)
                if self.shuffle:
                    local = np.random.default_rng([self.seed, self.epoch, shard]).permutation(count)
                lo = max(first, position)
                lo += (self.rank - lo) % self.world_size  # the next position that is ours
                hi = min(stop, position + count)
                mine = local[lo - position:hi - position:self.world_size]
                yield from (int(i) for i in mine + self.shard_starts[shard])
            position += count


def example_stream(dataset: PretrainingDataset, seed: int, start: int = 0) -> Iterator[int]:
    """Every example index a run reads, from global position ``start`` on, pass after pass
    without end: pass ``p`` is ``PretrainingSampler(dataset, seed=seed)``'s order for epoch
    ``p``. Position ``start`` is found without replaying the passes before it, so a resumed run
    reads on exactly where it stopped; memory stays at one shard's worth of indices."""
    size = len(dataset)
    if size == 0:
        raise ValueError(f"{dataset.directory} holds no {dataset.split} examples to read (its "
                         f"{MANIFEST_NAME} lists no shard with any). "
                         f"{rebuild_hint(dataset.directory, dataset.manifest)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}.")
    first_pass, offset = divmod(start, size)
    for number in itertools.count(first_pass):
        sampler = PretrainingSampler(dataset, seed=seed, start=offset if number == first_pass
                                     else 0)
        sampler.set_epoch(number)
        yield from sampler


def micro_batches(indices: np.ndarray, rank: int, world_size: int,
                  accumulation: int) -> list[np.ndarray]:
    """This rank's micro-batches of one step's global batch ``indices``.

    The global batch is cut into world_size x accumulation equal micro-batches in order and rank
    ``r`` takes its consecutive share, so a run on N ranks sees exactly the examples (and
    averages the same per-micro-batch losses) as one process with N times the accumulation.
    """
    if not 0 <= rank < world_size or accumulation < 1:
        raise ValueError(f"need 0 <= rank < world_size and accumulation >= 1, got rank {rank}, "
                         f"world_size {world_size}, accumulation {accumulation}.")
    parts = np.array_split(np.asarray(indices), world_size * accumulation)
    return parts[rank * accumulation:(rank + 1) * accumulation]
