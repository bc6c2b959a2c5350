"""Pre-training data: corpora in, masked-LM + next-sentence examples out, read back as a Dataset.

``Corpus`` streams documents from files or a built-in corpus; ``create_pretraining_data`` turns
them into sharded examples (``bertkit data pretrain`` on the command line); ``PretrainingDataset``
and ``PretrainingSampler`` feed them to training (``example_stream`` runs the sampler pass after
pass from any position, ``micro_batches`` deals a step's batch out to ranks and accumulation).
The pure steps (pairing, truncation, masking) live in `bertkit.data.pretraining`.
"""

from .corpora import BUILTIN_CORPORA, Corpus, fetch_corpus, split_sentences
from .pipeline import (
    create_pretraining_data,
    format_summary,
    load_tokenizer,
    train_vocab_on_corpus,
)
from .pretraining import (
    IGNORE_INDEX,
    Example,
    PretrainingConfig,
    Vocabulary,
    create_examples_from_document,
    mask_tokens,
    truncate_seq_pair,
)
from .shards import (
    PretrainingDataset,
    PretrainingSampler,
    collate,
    example_stream,
    micro_batches,
    read_manifest,
)

__all__ = [
    "BUILTIN_CORPORA",
    "IGNORE_INDEX",
    "Corpus",
    "Example",
    "PretrainingConfig",
    "PretrainingDataset",
    "PretrainingSampler",
    "Vocabulary",
    "collate",
    "create_examples_from_document",
    "create_pretraining_data",
    "example_stream",
    "fetch_corpus",
    "format_summary",
    "load_tokenizer",
    "mask_tokens",
    "micro_batches",
    "read_manifest",
    "split_sentences",
    "train_vocab_on_corpus",
    "truncate_seq_pair",
]
