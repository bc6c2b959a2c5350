"""train_vocab on the Wikipedia leads, and cased tokenization against Google's reference."""

import re

import pytest
from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, BertTokenizerLegacy

from bertkit.tokenizer import BertTokenizer, train_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def split_leads(wiki_leads):
    """90% of the leads to train on, 10% held out."""
    texts = [record["extract"] for record in wiki_leads]
    cut = len(texts) * 9 // 10
    return texts[:cut], texts[cut:]


@pytest.fixture(scope="module")
def trained(split_leads, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("uncased")
    return train_vocab(texts=split_leads[0], vocab_size=16_000, out_dir=out_dir), out_dir


@pytest.fixture(scope="module")
def cased(split_leads, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cased")
    return train_vocab(texts=split_leads[0][:3000], vocab_size=8000, lowercase=False,
                       out_dir=out_dir), out_dir


def test_trained_vocab_layout_and_files(trained):
    tokenizer, out_dir = trained
    tokens = (out_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == SPECIALS and len(tokens) == tokenizer.vocab_size == 16_000
    assert any(token.startswith("##") for token in tokens)
    reloaded = BertTokenizer.from_pretrained(out_dir)
    assert reloaded.vocab == tokenizer.vocab and reloaded.do_lower_case


def test_few_unknown_tokens_on_held_out_leads(trained, split_leads):
    tokenizer, _ = trained
    ids = [i for row in tokenizer(split_leads[1], add_special_tokens=False)["input_ids"]
           for i in row]
    assert len(ids) > 100_000
    assert ids.count(tokenizer.unk_token_id) / len(ids) < 0.001


def test_decode_inverts_encode_up_to_normalisation(trained, split_leads):
    tokenizer, out_dir = trained
    # What survives tokenization: Google's lowercased, accent-stripped, punctuation-split words,
    # joined by spaces, with the decoder's spacing rules (HuggingFace's clean-up) applied.
    words = BasicTokenizer(do_lower_case=True)
    reference = BertTokenizerLegacy(vocab_file=str(out_dir / "vocab.txt"))
    sentences = [s for lead in split_leads[1] for s in re.split(r"(?<=[.!?])\s+", lead)]
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    in_vocabulary = [(s, ids) for s, ids in zip(sentences, encoded, strict=True)
                     if tokenizer.unk_token_id not in ids]
    assert len(in_vocabulary) > 0.97 * len(sentences)
    for sentence, ids in in_vocabulary:
        expected = reference.clean_up_tokenization(" ".join(words.tokenize(sentence)))
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=True) == expected


def test_cased_tokenization_matches_the_reference(cased, wiki_sentences, google_reference):
    tokenizer, out_dir = cased
    assert not tokenizer.do_lower_case
    reference = google_reference(vocab_file=str(out_dir / "vocab.txt"), do_lower_case=False)
    held_out = wiki_sentences[-3000:]
    accented = [s for s in wiki_sentences if re.search(r"[À-ÿĀ-ž]", s)][:2000]
    assert len(accented) > 500
    texts = held_out + accented
    ours = tokenizer(texts)["input_ids"]
    assert ours == reference(texts)["input_ids"]
    tokens = {token for row in ours for token in tokenizer.convert_ids_to_tokens(row)}
    assert any(token[:1].isupper() for token in tokens)
    # The folder it wrote says "cased", so it loads back cased.
    assert not BertTokenizer.from_pretrained(out_dir).do_lower_case


def test_training_from_files(tmp_path, split_leads):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(split_leads[1][:300]), encoding="utf-8")
    tokenizer = train_vocab(corpus, vocab_size=2000)
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == SPECIALS
    assert tokenizer.vocab_size <= 2000


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match="either as files=.* or as texts="):
        train_vocab()
    with pytest.raises(ValueError, match="exactly one of the two"):
        train_vocab(tmp_path / "a.txt", texts=["a"])
    with pytest.raises(FileNotFoundError, match="training file .*missing.txt does not exist"):
        train_vocab([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="files is empty"):
        train_vocab([])
    with pytest.raises(ValueError, match="vocab_size=5 leaves no room"):
        train_vocab(texts=["some text"], vocab_size=5)
    with pytest.raises(ValueError, match="vocab_size=20 is too small.*Raise vocab_size or lower "
                                         "limit_alphabet"):
        train_vocab(texts=["the quick brown fox jumps over the lazy dog"] * 3, vocab_size=20)
    with pytest.raises(ValueError, match="the training text is empty"):
        train_vocab(texts=["", "   "])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got bytes"):
        train_vocab(texts=["fine", b"bytes"])


def test_a_training_file_that_is_not_utf8_is_named(tmp_path, split_leads):
    """The engine said only "stream did not contain valid UTF-8", naming no file."""
    good = tmp_path / "good.txt"
    good.write_text("\n".join(split_leads[1][:20]), encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"Plain first line.\nLe caf\xe9 est bon.\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(latin1))}:2 is not UTF-8: .*iconv"):
        train_vocab([good, latin1], vocab_size=300)


def test_vocab_train_on_a_corpus_sums_up_what_it_skipped(tmp_path, split_leads, caplog):
    """`vocab train` has no summary of its own: the warning "counted by reason in the summary"
    pointed at nothing, so lines dropped past the first five went unreported."""
    from bertkit.data import train_vocab_on_corpus

    (tmp_path / "en.txt").write_text("\n\n".join(split_leads[1][:20]), encoding="utf-8")
    (tmp_path / "fr.txt").write_bytes(b"Le caf\xe9 est tr\xe8s bon.\n" * 30)
    with caplog.at_level("WARNING", logger="bertkit"):
        train_vocab_on_corpus(tmp_path, tmp_path / "vocab", vocab_size=300)
    assert any(r.getMessage().startswith("skipped while reading the corpus: 30 line with bytes "
                                         "that are not UTF-8") for r in caplog.records)
