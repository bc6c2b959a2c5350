"""Corpus → shards of pre-training examples, streaming and on every core.

The main process reads documents and deals them out in chunks of about a megabyte of text; worker
processes tokenise a chunk, make its examples (``dupe_factor`` times, each time masked afresh),
shuffle them and send them back packed; the main process streams them, in chunk order, into
shards. Memory is bounded by the chunks in flight, whatever the corpus and shard sizes.
A chunk's random choices come from a generator seeded by the seed and the chunk's number, so the
output is the same byte for byte whatever the number of workers.

A random next segment (the NotNext half of NSP) is drawn from another document of the same chunk:
Google draws from the whole corpus, which needs it all in memory; a chunk holds thousands of short
documents or hundreds of long ones, which serves the same purpose.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_path
from ..tokenizer import BertTokenizer
from ..version import __version__
from .corpora import Corpus, Skip, is_compressed
from .pretraining import PretrainingConfig, Vocabulary, create_examples_from_document, mask_tokens
from .shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    TOKENIZER_FOLDER,
    ShardWriter,
    pack_examples,
    sha256_of,
    token_dtype,
    write_manifest,
)

CHUNK_CHARS = 1_000_000  # text per unit of work: a fraction of a second, thousands of documents
# Streams of the seed's random numbers: the train/validation split, and each split's chunks.
_SPLIT_STREAM, _CHUNK_STREAMS = 0, {"train": 1, "validation": 2}

logger = logging.getLogger("bertkit")


def load_tokenizer(tokenizer: BertTokenizer | str | os.PathLike) -> BertTokenizer:
    """A BertTokenizer from itself, a tokenizer folder, a vocab.txt or a model bertkit fetches."""
    if isinstance(tokenizer, BertTokenizer):
        return tokenizer
    path = Path(tokenizer)
    if path.is_file():
        # a vocab.txt in a tokenizer folder: the folder says whether it lower-cases
        saved = any((path.parent / name).is_file()
                    for name in ("tokenizer_config.json", "tokenizer.json"))
        return BertTokenizer.from_pretrained(path.parent) if saved else BertTokenizer(path)
    return BertTokenizer.from_pretrained(tokenizer)


def create_pretraining_data(corpus: Corpus | str | os.PathLike | Iterable[str | os.PathLike],
                            output_dir: str | os.PathLike,
                            tokenizer: BertTokenizer | str | os.PathLike,
                            config: PretrainingConfig | None = None, *,
                            workers: int | None = None, shard_mb: float = 64.0,
                            overwrite: bool = False, progress: bool = True) -> dict:
    """Turn ``corpus`` into masked-LM + NSP examples under ``output_dir``; return the manifest.

    ``corpus`` is a `Corpus` or what one is made from (files, folders, globs, built-in corpus
    names). ``tokenizer`` is a BertTokenizer, its folder, a vocab.txt or a fetchable model name.
    ``workers`` processes make examples (default: one per available core). Shards hold about
    ``shard_mb`` MB of ids. Everything is checked before work starts; an existing output is
    replaced only with ``overwrite``, and only once the new data is complete: until then it
    is written to a hidden sibling folder, so a failure leaves the old data as it was. A corpus
    that yields no training example is an error. Read the result with
    ``PretrainingDataset(output_dir)``.
    """
    config = config or PretrainingConfig()
    _warn_of_a_masking_cap(config)
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    tokenizer = load_tokenizer(tokenizer)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1)
    if workers < 1 or shard_mb <= 0:
        raise ValueError(f"workers must be >= 1 and shard_mb > 0, got {workers} and {shard_mb}.")
    output = Path(output_dir)
    write = functools.partial(_write_data, corpus=corpus, tokenizer=tokenizer, vocab=vocab,
                              config=config, workers=workers, shard_mb=shard_mb,
                              progress=progress)
    if not _replaces_data(output, overwrite):
        output.mkdir(parents=True, exist_ok=True)
        return write(output)
    with atomic_path(output) as staging:  # the old data stays until the new is complete
        staging.mkdir()
        manifest = write(staging)
    return manifest


def _warn_of_a_masking_cap(config: PretrainingConfig) -> None:
    """Google's cap of 20 predictions holds masking to 3.9% of a 512-token example: its phase 2
    raised it to 80, which the paper's 15% needs; say so where the cap bites."""
    wanted = round(config.max_seq_length * config.masked_lm_prob)
    if wanted > 1.25 * config.max_predictions_per_seq:
        logger.warning(
            "max_predictions_per_seq=%d masks at most %.1f%% of a full %d-token example, not "
            "masked_lm_prob's %g%%: pass --max-predictions-per-seq %d for that rate (Google's "
            "512-token phase 2 uses 80).", config.max_predictions_per_seq,
            100 * config.max_predictions_per_seq / config.max_seq_length, config.max_seq_length,
            100 * config.masked_lm_prob, wanted)


def _write_data(output: Path, *, corpus: Corpus, tokenizer: BertTokenizer, vocab: Vocabulary,
                config: PretrainingConfig, workers: int, shard_mb: float,
                progress: bool) -> dict:
    """Write the vocabulary, the shards and the manifest into the folder ``output``.

    The manifest is rewritten as each shard lands, and says how the run ended if it fails.
    """
    vocab_file = tokenizer.save_pretrained(output / TOKENIZER_FOLDER)[0]
    dtype = token_dtype(tokenizer.vocab_size)
    manifest = _new_manifest(config, corpus, tokenizer, sha256_of(vocab_file), dtype)
    write_manifest(output, manifest)

    def on_shard(split: str, record: dict) -> None:
        manifest["splits"][split]["shards"].append(record)
        manifest["splits"][split]["examples"] += record["examples"]
        write_manifest(output, manifest)

    writers = {split: ShardWriter(output, split, dtype, int(shard_mb * 1e6), on_shard)
               for split in SPLITS}
    started = time.perf_counter()
    try:
        totals = _write_examples(corpus, config, vocab, tokenizer, workers, writers, progress)
        skipped = _skipped(corpus, totals)
        _check_examples(manifest, corpus, totals, skipped)
    except BaseException as error:
        for writer in writers.values():
            writer.discard()
        manifest["status"] = ("interrupted" if isinstance(error, KeyboardInterrupt)
                              else f"failed: {type(error).__name__}: {error}")
        manifest["finished"] = _now()
        write_manifest(output, manifest)
        raise
    manifest["summary"] = _summary(manifest, corpus, totals, skipped, workers,
                                   time.perf_counter() - started)
    manifest.update(complete=True, status="complete", finished=_now())
    write_manifest(output, manifest)
    return manifest


def _write_examples(corpus: Corpus, config: PretrainingConfig, vocab: Vocabulary,
                    tokenizer: BertTokenizer, workers: int, writers: dict[str, ShardWriter],
                    progress: bool) -> Counter:
    """Stream the workers' examples into the shard writers, with a progress bar; the totals."""
    totals: Counter = Counter()
    bar = tqdm(total=None if any(is_compressed(path) for path, _ in corpus.files)
               else corpus.input_bytes, unit="B", unit_scale=True, unit_divisor=1000,
               desc="bertkit data", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        initargs = (tokenizer.backend.to_str(), config, vocab)
        for split, batches, counts, bytes_read in _results(_chunks(corpus, config), workers,
                                                           initargs):
            for packed in batches:
                writers[split].add(packed)
            totals.update(counts)
            bar.update(bytes_read - bar.n)
            bar.set_postfix(docs=f"{totals['documents']:,}", tokens=f"{totals['tokens']:,}",
                            examples=f"{totals['examples']:,}", refresh=False)
        for writer in writers.values():
            writer.flush()
    finally:
        bar.close()
    return totals


def _skipped(corpus: Corpus, totals: Counter) -> dict[str, int]:
    """What was skipped and why: by the reader (files, documents) and by the workers."""
    skipped = Counter(corpus.skipped)
    for key, count in totals.items():
        if key.startswith("skipped:"):
            skipped[key.removeprefix("skipped:")] += count
    return {reason: count for reason, count in sorted(skipped.items()) if count}


def _check_examples(manifest: dict, corpus: Corpus, totals: Counter,
                    skipped: dict[str, int]) -> None:
    """Raise when the run made no training example: data to train on is its whole point."""
    if manifest["splits"]["train"]["examples"]:
        return
    reasons = "; ".join(f"{count:,} {reason}" for reason, count in skipped.items())
    named = f" (first: {'; '.join(corpus.skipped_named)})" if corpus.skipped_named else ""
    raise ValueError(
        f"the input made no training examples: read {len(corpus.files):,} file(s) and "
        f"{corpus.documents:,} document(s), {totals['documents']:,} of them usable "
        f"({totals['validation_documents']:,} held out for validation); skipped: "
        f"{reasons or 'nothing'}{named}. Give documents of two or more sentences each.")


def _summary(manifest: dict, corpus: Corpus, totals: Counter, skipped: dict[str, int],
             workers: int, seconds: float) -> dict:
    """The manifest's account of a finished run: what was read, made and skipped, how fast."""
    return {
        "documents_read": corpus.documents,
        "documents": totals["documents"], "validation_documents": totals["validation_documents"],
        "sentences": totals["sentences"],
        "examples": {split: manifest["splits"][split]["examples"] for split in SPLITS},
        "random_next_examples": totals["random_next"], "tokens": totals["tokens"],
        "predictions": totals["predictions"],
        "skipped": skipped, "skipped_named": corpus.skipped_named,
        "documents_cut_for_length": corpus.documents_cut,
        "text_mb": round(corpus.bytes_read / 1e6, 3), "seconds": round(seconds, 2),
        "mb_per_second": round(corpus.bytes_read / 1e6 / max(seconds, 1e-9), 3),
        "workers": workers,
    }


def _new_manifest(config: PretrainingConfig, corpus: Corpus, tokenizer: BertTokenizer,
                  vocab_sha256: str, dtype: type) -> dict:
    """The manifest of a run that has just started: settings, inputs, vocabulary, no shards."""

    roles = ("cls", "sep", "mask", "pad", "unk")
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "complete": False, "status": "running",
        "created_by": f"bertkit {__version__}", "started": _now(), "finished": None,
        "settings": asdict(config),
        "inputs": {"sources": [str(s) for s in corpus.sources], "files": len(corpus.files),
                   "format": corpus.format, "text_field": corpus.text_field,
                   "language": corpus.language},
        "tokenizer": {
            "folder": TOKENIZER_FOLDER, "vocab_size": tokenizer.vocab_size,
            "vocab_sha256": vocab_sha256, "do_lower_case": tokenizer.do_lower_case,
            "special_tokens": {role: getattr(tokenizer, f"{role}_token") for role in roles},
            "special_ids": {role: getattr(tokenizer, f"{role}_token_id") for role in roles},
        },
        "token_dtype": np.dtype(dtype).name,
        "splits": {split: {"examples": 0, "shards": []} for split in SPLITS},
        "summary": None,
    }


def format_summary(manifest: dict) -> str:
    """The end-of-run summary, for people."""
    s = manifest["summary"]
    lines = [
        f"{s['text_mb']:,.1f} MB of text in {s['seconds']:,.1f} s ({s['mb_per_second']:.2f} MB/s,"
        f" {s['workers']} workers)",
        f"documents: {s['documents']:,} used ({s['validation_documents']:,} held out for "
        f"validation) of {s['documents_read']:,} read; sentences: {s['sentences']:,}",
        f"examples: {s['examples']['train']:,} train, {s['examples']['validation']:,} validation;"
        f" tokens: {s['tokens']:,}; predictions: {s['predictions']:,}",
    ]
    if s["skipped"]:
        lines.append("skipped: " + "; ".join(f"{n:,} {why}" for why, n in s["skipped"].items()))
        if s.get("skipped_named"):
            lines.append("first skipped: " + "; ".join(s["skipped_named"]))
    if s["documents_cut_for_length"]:
        lines.append(f"{s['documents_cut_for_length']:,} long documents were cut into parts")
    return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_OWN_ENTRIES = frozenset({MANIFEST_NAME, TOKENIZER_FOLDER, *SPLITS})


def _replaces_data(output: Path, overwrite: bool) -> bool:
    """Whether ``output`` holds pre-training data that this run is to replace; raise when it
    may not be written at all (a file, a folder of other things, data without ``overwrite``)."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file; give a folder.")
    if (output / MANIFEST_NAME).exists():
        if not overwrite:
            raise ValueError(f"{output} already holds pre-training data; pass overwrite "
                             "(--overwrite) to replace it, or choose another folder.")
        # The new data replaces the whole folder: anything else in it would go with the old.
        foreign = sorted(entry.name for entry in output.iterdir()
                         if entry.name not in _OWN_ENTRIES)
        if foreign:
            raise ValueError(f"{output} holds pre-training data and also {', '.join(foreign)}; "
                             "overwrite replaces the whole folder, so move those out first.")
        return True
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty and holds no bertkit data; choose a new or "
                         "empty folder, so nothing of yours is overwritten.")
    return False


# -- dealing documents out -------------------------------------------------------------------


def _chunks(corpus: Corpus, config: PretrainingConfig) -> Iterator[tuple]:
    """(split, chunk number, documents, corpus bytes read so far) in reading order.

    Each document goes to validation with probability ``validation_fraction``, with all its parts
    when it was cut for length (held-out text is never trained on). A chunk closes at
    CHUNK_CHARS of text; the last chunk of a split joins the one before it when it holds a single
    document, which would have no other document to draw a random next segment from.
    """
    split_rng = np.random.default_rng([config.seed, _SPLIT_STREAM])
    gathering = {split: [] for split in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    held: dict[str, list | None] = dict.fromkeys(SPLITS)  # a full chunk not yet dealt out
    numbers = dict.fromkeys(SPLITS, 0)

    def deal(split):
        chunk, held[split] = held[split], gathering[split]
        gathering[split], sizes[split] = [], 0
        if chunk is not None:
            numbers[split] += 1
            return split, numbers[split] - 1, chunk, corpus.bytes_read
        return None

    drawn_for = None  # the input document the split was drawn for
    for document in corpus:
        if corpus.document_number != drawn_for:
            split = "validation" if split_rng.random() < config.validation_fraction else "train"
            drawn_for = corpus.document_number
        gathering[split].append(document)
        sizes[split] += sum(map(len, document))
        if sizes[split] >= CHUNK_CHARS and len(gathering[split]) >= 2:
            if (task := deal(split)) is not None:
                yield task
    for split in SPLITS:
        if held[split] is not None and len(gathering[split]) == 1:
            held[split] += gathering[split]
            gathering[split] = []
        for chunk in (held[split], gathering[split]):
            if chunk:
                numbers[split] += 1
                yield split, numbers[split] - 1, chunk, corpus.bytes_read


def _results(tasks: Iterator[tuple], workers: int, initargs: tuple) -> Iterator[tuple]:
    """The workers' results, in task order, with at most 2 tasks per worker in flight."""
    if workers == 1:
        _init_worker(*initargs, ignore_interrupts=False)
        yield from map(_process_chunk, tasks)
        return
    # Forked workers start at once and share the parent's loaded modules; elsewhere the
    # platform's default start method works too, only slower to start.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=initargs)
    in_flight: deque = deque()
    try:
        for task in tasks:
            in_flight.append(pool.submit(_process_chunk, task))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- the workers' side -----------------------------------------------------------------------

_worker: dict = {}


def _init_worker(backend_json: str, config: PretrainingConfig, vocab: Vocabulary,
                 ignore_interrupts: bool = True) -> None:
    from tokenizers import Tokenizer

    if ignore_interrupts:  # Ctrl-C is the main process's to handle: it shuts the pool down
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # One process per core already; the engine's own threads would only compete.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker.update(backend=Tokenizer.from_str(backend_json), config=config, vocab=vocab)


def _process_chunk(task: tuple) -> tuple:
    split, number, documents, bytes_read = task
    config: PretrainingConfig = _worker["config"]
    rng = np.random.default_rng([config.seed, _CHUNK_STREAMS[split], number])
    tokenised = tokenize_documents(documents, _worker["backend"], _worker["vocab"])
    least = 2 if config.next_sentence else 1  # a sentence pair needs two sentences
    usable = [document for document in tokenised if len(document) >= least]
    counts_skipped = Counter(Skip.ONE_SENTENCE if document else Skip.EMPTY_DOCUMENT
                             for document in tokenised if len(document) < least)
    if config.next_sentence and len(usable) == 1:
        counts_skipped[Skip.ALONE] = 1
        usable = []
    # Held-out text is read once per evaluation; copies of it with other masks add nothing.
    dupe_factor = config.dupe_factor if split == "train" else 1
    batches, counts = make_examples(usable, config, _worker["vocab"], rng, dupe_factor)
    counts.update({"skipped:" + reason: n for reason, n in counts_skipped.items()})
    counts["documents"] = len(usable)
    counts["validation_documents"] = len(usable) if split == "validation" else 0
    counts["sentences"] = sum(map(len, usable))
    return split, batches, counts, bytes_read


def tokenize_documents(documents: list[list[str]], backend, vocab: Vocabulary
                       ) -> list[list[np.ndarray]]:
    """Each document's sentences as arrays of token ids, sentences without tokens dropped.

    [CLS], [SEP], [MASK] and [PAD] written in the text are dropped: the engine keeps them whole,
    and in a segment they would pose as structure (or as a mask) to the model.
    """
    sentences = list(chain.from_iterable(documents))
    encodings = backend.encode_batch_fast(sentences, add_special_tokens=False)
    ids = [encoding.ids for encoding in encodings]
    lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int64, count=int(lengths.sum()))
    structural = np.isin(flat, [vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id])
    if structural.any():
        sentence_of = np.repeat(np.arange(len(ids)), lengths)
        lengths = np.bincount(sentence_of[~structural], minlength=len(ids))
        flat = flat[~structural]
    per_sentence = np.split(flat, np.cumsum(lengths)[:-1])
    tokenised, start = [], 0
    for document in documents:
        pieces = per_sentence[start:start + len(document)]
        tokenised.append([piece for piece in pieces if len(piece)])
        start += len(document)
    return tokenised


def make_examples(documents: list[list[np.ndarray]], config: PretrainingConfig,
                  vocab: Vocabulary, rng: np.random.Generator, dupe_factor: int
                  ) -> tuple[list[dict[str, np.ndarray]], Counter]:
    """The examples of ``documents``, packed, one batch per pass over them (``dupe_factor``
    passes), each shuffled and masked unless masking is dynamic; with counts of examples,
    tokens and predictions.

    Packing pass by pass keeps a worker's memory at one pass of example objects; the order
    across passes does not matter, since training reads every shard in a shuffled order.
    """
    batches, counts = [], Counter()
    for _ in range(dupe_factor):
        examples = [example for index in range(len(documents))
                    for example in create_examples_from_document(documents, index, config,
                                                                 vocab, rng)]
        examples = [examples[i] for i in rng.permutation(len(examples))]
        masks = None
        if not config.dynamic_masking:
            masks = [mask_tokens(example.tokens, vocab, rng,
                                 masked_lm_prob=config.masked_lm_prob,
                                 max_predictions_per_seq=config.max_predictions_per_seq,
                                 whole_word_mask=config.whole_word_mask)
                     for example in examples]
        packed = pack_examples(examples, masks, config.next_sentence, token_dtype(vocab.size))
        batches.append(packed)
        counts.update(examples=len(examples), tokens=len(packed["input_ids"]),
                      predictions=len(packed.get("masked_positions", ())),
                      random_next=sum(example.is_random_next for example in examples))
    return batches, counts


def train_vocab_on_corpus(corpus: Corpus | str | os.PathLike | Iterable[str | os.PathLike],
                          out_dir: str | os.PathLike, **options) -> BertTokenizer:
    """`bertkit.tokenizer.train_vocab` on the sentences of ``corpus`` (streamed); ``options`` are
    train_vocab's (vocab_size, lowercase, min_frequency, limit_alphabet)."""
    from ..tokenizer import train_vocab

    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    tokenizer = train_vocab(texts=_sentences_or_refusal(corpus), out_dir=out_dir, **options)
    if corpus.skipped:  # the reader's warnings name only the first few
        logger.warning("skipped while reading the corpus: %s.", "; ".join(
            f"{count:,} {reason}" for reason, count in sorted(corpus.skipped.items())))
    return tokenizer


def _sentences_or_refusal(corpus: Corpus) -> Iterator[str]:
    """The corpus's sentences; a corpus that gives none raises, saying what it skipped."""
    yield from chain.from_iterable(corpus)
    if not corpus.sentences:
        reasons = "; ".join(f"{count:,} {reason}" for reason, count in corpus.skipped.items())
        named = f" ({'; '.join(corpus.skipped_named)})" if corpus.skipped_named else ""
        raise ValueError(f"the corpus gave no text to train on: read {len(corpus.files):,} "
                         f"file(s); skipped: {reasons or 'nothing'}{named}.")
