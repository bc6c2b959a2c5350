"""Reading corpora: every input format, the built-in corpora, and bad input of every kind."""

import gzip
import json
import math
import textwrap

import pytest

from bertkit.data import (
    Corpus,
    PretrainingConfig,
    PretrainingDataset,
    create_pretraining_data,
    split_sentences,
)
from bertkit.data.corpora import MAX_DOCUMENT_CHARS, MAX_SENTENCE_CHARS, Skip


@pytest.fixture(scope="module")
def leads(wiki_leads):
    """Real multi-sentence paragraphs: Wikipedia lead sections."""
    return [r["extract"] for r in wiki_leads if r["extract"].count(". ") >= 3][:200]


def test_google_lines_format(tmp_path, wiki_sentences):
    path = tmp_path / "corpus.txt"
    first, second = wiki_sentences[:3], wiki_sentences[3:5]
    path.write_text("\n".join(first) + "\n\n\n" + "\n".join(second) + "\n\n", encoding="utf-8")
    corpus = Corpus(path, format="lines")
    assert list(corpus) == [first, second]  # several blank lines make no empty document
    assert corpus.skipped == {} and corpus.sentences == 5


def test_raw_text_is_split_into_sentences_across_hard_wraps(tmp_path, leads):
    paragraphs = [" ".join(lead.split()) for lead in leads[:2]]
    # Hard-wrapped at 70 columns under a reStructuredText heading, whose underline is not text.
    text = "Title\n=====\n\n" + "\n\n".join(textwrap.fill(p, 70) for p in paragraphs)
    path = tmp_path / "doc.rst"
    path.write_text(text + "\n", encoding="utf-8")
    [document] = list(Corpus(path, format="text"))
    assert document == ["Title"] + split_sentences(paragraphs[0]) + split_sentences(paragraphs[1])
    assert len(document) >= 9


def test_sentence_splitter_keeps_abbreviations_and_numbers():
    text = ("Dr. Smith arrived at 5 p.m. on Monday. The U.S. economy grew 3.5% in 2019! "
            "Did it? Yes.")
    assert split_sentences(text) == ["Dr. Smith arrived at 5 p.m. on Monday.",
                                     "The U.S. economy grew 3.5% in 2019!", "Did it?", "Yes."]


def test_jsonl_gz_folders_and_globs(tmp_path, leads):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    with gzip.open(folder / "sub" / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        for lead in leads[:3]:
            f.write(json.dumps({"body": lead, "id": 1}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"id": 2}) + "\n")
        f.write(json.dumps([1, 2]) + "\n")
    (folder / "b.txt").write_text(leads[3], encoding="utf-8")
    corpus = Corpus(folder, text_field="body")
    documents = list(corpus)
    assert [" ".join(d) for d in documents] == [" ".join(lead.split()) for lead in leads[3:4]
                                                + leads[:3]]
    assert corpus.skipped == {Skip.BAD_JSON: 2, Skip.NO_TEXT_FIELD: 1}
    assert len(list(Corpus(str(folder / "**" / "*.gz"), text_field="body"))) == 3  # a glob


def test_messy_jsonl_records_are_read_not_skipped(tmp_path, leads):
    """Long records (past one read block, the last without a newline), a byte-order mark, and
    half an emoji (a lone surrogate escape, common in scraped text)."""
    long = " ".join(leads) * 3  # ~300 KB+ of real sentences in one record
    assert len(long.encode()) > 300_000
    path = tmp_path / "messy.jsonl"
    path.write_text("\ufeff" + json.dumps({"text": leads[0]}) + "\n"
                    + json.dumps({"text": long * 3}) + "\n"
                    + json.dumps({"text": "Bad \ud83d emoji here. " + leads[1]}) + "\n"
                    + json.dumps({"text": long}), encoding="utf-8")
    corpus = Corpus(path)
    documents = list(corpus)
    assert corpus.skipped == {}
    assert len(documents) == 4
    assert documents[0] == split_sentences(leads[0])
    assert "Bad \ufffd emoji here." == documents[2][0]


def test_a_long_text_line_is_cut_between_words(tmp_path):
    """One 359 KB line of short sentences: it is read in pieces, but no word is cut in two
    (the first piece would otherwise end inside "sentence")."""
    line = "".join(f"This is sentence number {i} of a long line. " for i in range(8000))
    (tmp_path / "one.txt").write_text(line, encoding="utf-8")
    sentences = [s for d in Corpus(tmp_path / "one.txt", format="text") for s in d]
    assert len(sentences) == 8000
    assert {w for s in sentences for w in s.split()} == set(line.split())


def test_files_in_hidden_folders_are_not_corpus(tmp_path, leads):
    (tmp_path / ".git" / "hooks").mkdir(parents=True)
    (tmp_path / ".git" / "hooks" / "pre-commit.sample").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text(leads[0])
    (tmp_path / "a.txt").write_text(leads[0])
    assert [p.name for p, _ in Corpus(tmp_path).files] == ["a.txt"]


def test_builtin_corpus_reads_every_lead_in_title_order(wiki_leads):
    corpus = Corpus("wiki-leads")
    documents = list(corpus)
    assert len(documents) == len(wiki_leads) == 10_033 and not corpus.skipped
    for document, record in zip(documents, wiki_leads, strict=True):
        # Every character, in order (a splitter may split "apes.The" where a space was missing).
        assert "".join("".join(document).split()) == "".join(record["extract"].split())
    assert sum(len(d) >= 2 for d in documents) > 9000


def test_unknown_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        Corpus(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        Corpus(str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match="format must be one of"):
        Corpus("wiki-leads", format="xml")
    with pytest.raises(ValueError, match="no corpus given"):
        Corpus([])


def test_bad_input_is_skipped_with_reasons_and_the_rest_is_used(tmp_path, leads, tokenizer):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, lead in enumerate(leads[:20]):
        (folder / f"good{i:02d}.txt").write_text(lead, encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "junk.bin").write_bytes(bytes(range(256)) * 64)  # binary junk
    (folder / "latin1.txt").write_bytes(leads[20].encode("utf-8") + " caf\xe9.".encode("latin-1"))
    (folder / "one.txt").write_text("Only one sentence here.", encoding="utf-8")
    (folder / "blank.txt").write_text("  \n\n \n", encoding="utf-8")
    # A single 10 MB line without a sentence end; memory caps a document, so it comes in parts.
    huge = "word " * 2_000_000
    (folder / "huge.txt").write_text(huge, encoding="utf-8")
    huge_parts = math.ceil(len(huge) / MAX_DOCUMENT_CHARS)
    (folder / "bad.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    # Special tokens typed into the text are not taken as structure.
    (folder / "typed.txt").write_text("A [SEP] and a [MASK] here. " + leads[21], encoding="utf-8")
    out = tmp_path / "out"
    manifest = create_pretraining_data(folder, out, tokenizer, PretrainingConfig(dupe_factor=2),
                                       workers=1, progress=False)
    summary = manifest["summary"]
    assert summary["skipped"] == {
        Skip.BINARY_FILE: 1, Skip.EMPTY_FILE: 1, Skip.NOT_UTF8: 1, Skip.ONE_SENTENCE: 1,
        Skip.EMPTY_DOCUMENT: 1, Skip.LONG_SENTENCE: huge_parts, Skip.UNREADABLE_FILE: 1}
    assert summary["documents_cut_for_length"] == huge_parts - 1
    assert summary["documents"] == 21 and manifest["complete"]
    assert sum(summary["examples"].values()) > 40
    dataset = PretrainingDataset(out)
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    for i in range(len(dataset)):
        e = dataset.arrays(i)
        ids = e["input_ids"].copy()
        ids[e["positions"]] = e["labels"]
        assert (ids == sep).sum() == 2 and (ids == cls).sum() == 1
        assert (ids == tokenizer.mask_token_id).sum() == 0


def test_every_part_of_a_document_cut_for_length_goes_to_one_split(tmp_path, leads, tokenizer,
                                                                   monkeypatch):
    """A document past MAX_DOCUMENT_CHARS (lowered here to 2,000) comes in parts; they are held
    out or trained on together, so the held-out score never counts text that training saw."""
    monkeypatch.setattr("bertkit.data.corpora.MAX_DOCUMENT_CHARS", 2_000)
    folder = tmp_path / "corpus"
    folder.mkdir()
    long_document, others = leads[:40], leads[40:60]
    (folder / "long.txt").write_text("\n\n".join(long_document), encoding="utf-8")
    for i, lead in enumerate(others):
        (folder / f"lead{i:02d}.txt").write_text(lead, encoding="utf-8")
    out = tmp_path / "out"
    manifest = create_pretraining_data(folder, out, tokenizer,
                                       PretrainingConfig(dupe_factor=1, validation_fraction=0.3),
                                       workers=1, progress=False)
    assert manifest["summary"]["documents_cut_for_length"] >= 10

    def token_ids(texts):
        return {i for text in texts for i in tokenizer.encode(text, add_special_tokens=False)}

    only_in_long = token_ids(long_document) - token_ids(others)  # names, rare words
    examples_of_long = {}
    for split in ("train", "validation"):
        dataset = PretrainingDataset(out, split)
        examples_of_long[split] = 0
        for i in range(len(dataset)):
            e = dataset.arrays(i)
            ids = e["input_ids"].copy()
            ids[e["positions"]] = e["labels"]
            examples_of_long[split] += bool(only_in_long.intersection(ids.tolist()))
    assert sorted(count > 0 for count in examples_of_long.values()) == [False, True], \
        examples_of_long


def test_long_line_is_read_in_bounded_pieces(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("First sentence.\n" + "x" * (10 * MAX_SENTENCE_CHARS) + "\nLast one.\n",
                    encoding="utf-8")
    corpus = Corpus(path, format="lines")
    assert list(corpus) == []
    assert corpus.skipped == {Skip.LONG_SENTENCE: 1}


def test_a_vocab_that_is_not_a_vocab_fails_before_work_starts(tmp_path):
    junk = tmp_path / "vocab.txt"
    junk.write_bytes(bytes(range(256)))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not a vocabulary"):
        create_pretraining_data("wiki-leads", out, junk, progress=False)
    words = tmp_path / "words.txt"
    words.write_text("the\nof\nand\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special tokens"):
        create_pretraining_data("wiki-leads", out, words, progress=False)
    with pytest.raises(ValueError, match="invalid pre-training settings"):
        create_pretraining_data("wiki-leads", out, junk,
                                PretrainingConfig(max_seq_length=4, dupe_factor=0))
    assert not out.exists()


def test_a_jsonl_record_longer_than_a_read_block_comes_whole(tmp_path, leads):
    """A record spanning several 1 MiB reads, none of which holds a line end."""
    text = " ".join(leads) * 20
    assert len(text.encode()) > 2 * 2**20
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": leads[0]}) + "\n",
                    encoding="utf-8")
    corpus = Corpus(path)
    documents = list(corpus)
    assert corpus.skipped == {} and len(documents) >= 2


def test_symbolic_links_are_followed_and_each_file_read_once(tmp_path, leads):
    """A linked folder was silently left out (rglob does not follow links); a broken link was
    silently dropped; a link loop under a quoted glob read each file ~40 times."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "s.txt").write_text(leads[0], encoding="utf-8")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "own.txt").write_text(leads[1], encoding="utf-8")
    (folder / "linked").symlink_to(shared)
    (folder / "again.txt").symlink_to(folder / "own.txt")
    (folder / "loop").symlink_to(folder)
    (folder / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    corpus = Corpus(folder)
    assert [str(p.relative_to(folder)) for p, _ in corpus.files] == [
        "gone.txt", "linked/s.txt", "own.txt"]
    assert len(list(corpus)) == 2
    assert corpus.skipped == {Skip.BROKEN_LINK: 1}
    assert corpus.skipped_named == [f"{folder / 'gone.txt'}: {Skip.BROKEN_LINK}"]
    assert [p.name for p, _ in Corpus(str(folder / "**" / "*.txt")).files] == [
        "gone.txt", "s.txt", "own.txt"]


def test_bz2_and_xz_are_read_and_other_packed_files_are_named(tmp_path, leads):
    import bz2
    import lzma
    import zipfile

    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(leads[0].encode()))
    (tmp_path / "b.jsonl.xz").write_bytes(lzma.compress(json.dumps({"text": leads[1]}).encode()))
    (tmp_path / "c.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + leads[2].encode())
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        archive.writestr("d.txt", leads[3])
    (tmp_path / "e.txt").write_bytes(gzip.compress(leads[4].encode()))  # not named .gz
    corpus = Corpus(tmp_path)
    assert [format for _, format in corpus.files] == ["text", "jsonl", "text", "text", "text"]
    assert list(corpus) == [split_sentences(leads[0]),
                            split_sentences(" ".join(leads[1].split()))]
    assert corpus.skipped == {Skip.PACKED_FILE: 3}
    assert corpus.skipped_named[-1] == f"{tmp_path / 'e.txt'}: {Skip.PACKED_FILE}"


def test_utf16_and_utf32_text_with_a_byte_order_mark_is_read(tmp_path, leads):
    text = leads[0] + "\r\n\r\n" + leads[1]
    for encoding in ("utf-16", "utf-16-be", "utf-32"):
        mark = "\ufeff" if encoding == "utf-16-be" else ""  # the others write their own
        (tmp_path / f"{encoding}.txt").write_bytes((mark + text).encode(encoding))
    # half a surrogate pair: U+FFFD, which BERT's cleaning drops, as in JSONL's "\ud83d"
    (tmp_path / "z-half.txt").write_bytes("Fine text here. Half \ud83d".encode(
        "utf-16", "surrogatepass") + " one. Also fine.".encode("utf-16-le"))
    corpus = Corpus(tmp_path)
    documents = list(corpus)
    assert documents[:3] == [split_sentences(leads[0]) + split_sentences(leads[1])] * 3
    assert documents[3] == ["Fine text here.", "Half \ufffd one.", "Also fine."]
    assert corpus.skipped == {}


def test_a_file_in_another_encoding_is_named(tmp_path, leads, caplog):
    """The warnings per line named the first five bad lines of the corpus; a second Latin-1 file
    losing all its lines went unnamed."""
    french = "Le café est très bon. La crème brûlée est délicieuse.\n" * 50
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_bytes(french.encode("latin-1"))
    (tmp_path / "c.txt").write_text(leads[0] + "\n" + "Un café.".encode().decode() + "\n",
                                    encoding="utf-8")
    # one bad byte in a UTF-8 file: the line is dropped and named, the file is not blamed
    (tmp_path / "d.txt").write_bytes("\n".join(leads[1:21]).encode() + "\ncafé.\n".encode(
        "latin-1"))
    with caplog.at_level("WARNING", logger="bertkit"):
        list(Corpus(tmp_path))
    named = [r.getMessage() for r in caplog.records if "lines are not UTF-8" in r.getMessage()]
    assert [message.split(":")[0] for message in named] == [
        str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert "50 of its 50 lines" in named[0] and "iconv" in named[0]


def test_an_overlong_jsonl_line_is_skipped_without_being_held(tmp_path, leads, monkeypatch):
    """A JSONL line is parsed whole, at ~20 times its size in memory: one 50 MB line took 1 GB.
    A line past MAX_RECORD_BYTES (lowered here) is skipped as it streams past, named by line."""
    monkeypatch.setattr("bertkit.data.corpora.MAX_RECORD_BYTES", 2_000)
    monkeypatch.setattr("bertkit.data.corpora.READ_BYTES", 500)
    path = tmp_path / "dump.jsonl"
    path.write_text(json.dumps({"text": leads[0][:400]}) + "\n"
                    + json.dumps([{"text": lead} for lead in leads[:20]]) + "\n"
                    + "not json\n" + json.dumps({"text": leads[1][:400]}) + "\n",
                    encoding="utf-8")
    corpus = Corpus(path)
    documents = list(corpus)
    assert len(documents) == 2
    assert corpus.skipped_named == [f"{path}:2: {Skip.LONG_RECORD}", f"{path}:3: {Skip.BAD_JSON}"]
