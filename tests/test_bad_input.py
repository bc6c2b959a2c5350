"""Bad input, end to end: each kind is refused with one line naming the file, the line and what
to do, or read as far as it is readable with the skipped parts named; never silently dropped.

Commands run in-process through `bertkit.cli.main` (its exit code and its stderr line); the
models are tiny and the files a few lines. The full-disk tests run `bertkit pretrain` as a
process on a small tmpfs they mount (skipped where mounting is not permitted).
"""

import argparse
import contextlib
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from bertkit.cli import build_parser, main
from bertkit.data import Corpus, PretrainingConfig, PretrainingDataset, create_pretraining_data
from bertkit.data.corpora import NAMED_SKIPS, Skip
from bertkit.fill_mask import FillMask
from bertkit.finetune import predict
from bertkit.tasks import DataError, build_task
from bertkit.tasks.base import text_lines
from bertkit.tasks.datasets import resolve_data
from bertkit.tokenizer import train_vocab
from bertkit.training import STATE_NAME, read_metrics

TINY = ["--model", "tiny", "--max-length", "32", "--batch-size", "8", "--epochs", "1",
        "--no-progress"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, args) -> str:
    """The error of a command that must exit with code 1: the last line it wrote to stderr."""
    code, _, err = run_cli(args, capsys)
    assert code == 1, err
    return err.strip().splitlines()[-1]


def finetune_args(tmp_path, train, *more) -> list:
    return ["finetune", "--task", "classification", *TINY, "--train", train, *more, "--out",
            tmp_path / "run"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rt_rows():
    """The first 40 snippets of the saved rt-polarity training split (real text, two labels)."""
    lines = resolve_data("rt-polarity", "train").read_text(encoding="utf-8").splitlines()[:40]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, rt_rows):
    """A tiny classifier fine-tuned for one epoch on 16 snippets: its best/ folder."""
    tmp = tmp_path_factory.mktemp("classifier")
    train = write_jsonl(tmp / "train.jsonl", rt_rows[:16])
    assert main(["finetune", "--task", "classification", *TINY, "--train", str(train),
                 "--out", str(tmp / "run")]) == 0
    return tmp / "run" / "best"


# -- labels ----------------------------------------------------------------------------------


def test_labels_of_two_types_in_one_file_are_refused(tmp_path, capsys):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"text": f"snippet {i}", "label": label}
                                                  for i, label in enumerate([1, "1", 0, "0"])])
    assert refused(capsys, finetune_args(tmp_path, path)) == (
        f'bertkit: error: {path}:2: label "1" is a string, but {path}:1 has 1, an integer: give '
        "every label of a file as the same type (all strings, or all integers), or they become "
        "different classes.")
    task = build_task("classification")
    for second, kind in ((1.0, "a fractional number"), (True, "a boolean")):
        write_jsonl(path, [{"text": "a", "label": 1}, {"text": "b", "label": second}])
        with pytest.raises(DataError, match=rf"mixed.jsonl:2: label {json.dumps(second)} is "
                                            rf"{kind}, but .*mixed.jsonl:1 has 1, an integer"):
            task.read(path)
    # Regression reads numbers of any spelling, but not a boolean.
    write_jsonl(path, [{"text": "a", "label": 1}, {"text": "b", "label": "1.5"},
                       {"text": "c", "label": 2.5}])
    assert [e.label for e in build_task("regression").read(path)] == [1.0, 1.5, 2.5]
    write_jsonl(path, [{"text": "a", "label": True}])
    with pytest.raises(DataError, match=r"mixed.jsonl:1: regression label true is not a number"):
        build_task("regression").read(path)


def test_training_data_with_one_class_is_refused(tmp_path, capsys, rt_rows):
    path = write_jsonl(tmp_path / "one.jsonl", [{**r, "label": "fresh"} for r in rt_rows[:6]])
    assert refused(capsys, finetune_args(tmp_path, path)) == (
        f"bertkit: error: {path}: the 6 training examples have only label 'fresh', but a "
        "classifier needs at least two labels to choose between; train on data that holds "
        "examples of every label.")
    conll = tmp_path / "one.conll"
    conll.write_text("Empire\tO\nState\tO\n\nHello\tO\n", encoding="utf-8")
    task = build_task("token-classification")
    with pytest.raises(DataError, match=r"one.conll: the 2 training examples have only tag 'O'"):
        task.label_names(task.read(conll))


def test_an_unseen_test_label_stops_the_run_before_training(tmp_path, capsys, rt_rows):
    train = write_jsonl(tmp_path / "train.jsonl", rt_rows[:8])
    test = write_jsonl(tmp_path / "test.jsonl", [*rt_rows[8:10],
                                                 {"text": "So-so.", "label": "mixed"}])
    code, _, err = run_cli(finetune_args(tmp_path, train, "--test", test), capsys)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"bertkit: error: {test}:3: label 'mixed' does not occur in the training labels "
        "(fresh, rotten); the model could never predict it.")
    assert "epoch" not in err and not (tmp_path / "run" / "best").exists()  # nothing trained
    # The same check, from Python, on any split before training: what FinetuneRun calls.
    task = build_task("classification")
    label2id = {label: i for i, label in enumerate(task.label_names(task.read(train)))}
    with pytest.raises(DataError, match=r"test.jsonl:3: label 'mixed' does not occur"):
        task.check_labels(task.read(test), label2id)


# -- CSV/TSV quoting -------------------------------------------------------------------------


def write_rows(path, rows, delimiter=","):
    path.write_text("text" + delimiter + "label\n"
                    + "".join(f"{text}{delimiter}{label}\n" for text, label in rows),
                    encoding="utf-8")
    return path


def test_a_stray_quote_in_a_csv_is_named_instead_of_swallowing_rows(tmp_path, capsys, rt_rows):
    rows = [(r["text"].replace('"', "").replace(",", ""), r["label"]) for r in rt_rows]
    rows[3] = ('"Tremendous' + rows[3][0], rows[3][1])  # opens a quote: lines 5 ...
    rows[10] = (rows[10][0] + '"', rows[10][1])  # ... to 12 become one field
    path = write_rows(tmp_path / "quotes.csv", rows)
    assert refused(capsys, finetune_args(tmp_path, path)).startswith(
        f"bertkit: error: {path}:5: a quoted field runs on over lines 5-12: a "
                          "'\"' that opens a field and does not close it on its line swallows "
                          "the rows after it.")
    task = build_task("classification")
    rows[10] = (rows[10][0] + " she said", rows[10][1])  # text after the closing quote
    with pytest.raises(DataError, match=r"quotes.csv:5: malformed CSV \(',' expected after"):
        task.read(write_rows(path, rows))
    rows[10] = (rows[10][0].replace('"', ""), rows[10][1])  # never closed: runs to the end
    with pytest.raises(DataError, match=r"quotes.csv:5: malformed CSV \(unexpected end of data"):
        task.read(write_rows(path, rows))
    rows[3] = ("a\tb", "fresh")
    with pytest.raises(DataError, match=r"quotes.tsv:5: 3 fields where the header has 2 "
                                        r"\('text', 'label'\); quote a field that holds the "
                                        r"delimiter '\\t'"):
        task.read(write_rows(tmp_path / "quotes.tsv", rows, "\t"))
    # Quoting done right (commas, doubled quotes) still reads every row, each at its line.
    rows[3] = ('"A ""tremendous"", witty film"', "fresh")
    examples = task.read(write_rows(path, rows))
    assert len(examples) == 40 and examples[3].text == 'A "tremendous", witty film'
    assert examples[39].where == f"{path}:41"


# -- UTF-8 -----------------------------------------------------------------------------------


LATIN1 = "Caf\xe9 au lait".encode("latin-1")  # byte 0xe9 at column 4


@pytest.mark.parametrize("name, task, lines", [
    ("train.csv", "classification", [b"text,label", b"fine,fresh", LATIN1 + b",rotten"]),
    ("train.tsv.bz2", "classification", [b"text\tlabel", b"fine\tfresh", LATIN1 + b"\trotten"]),
    ("train.jsonl.gz", "classification", [b'{"text": "fine", "label": "fresh"}', b"",
                                          b'{"text": "' + LATIN1 + b'", "label": "rotten"}']),
    ("train.conll", "token-classification", [b"Fine\tO", b"", LATIN1 + b"\tB-x"]),
    ("squad.json", "question-answering", [b'{"data": [', b"", b'"' + LATIN1 + b'"]}']),
])
def test_bytes_that_are_not_utf8_are_named_by_file_line_and_column(tmp_path, name, task, lines):
    import bz2

    path = tmp_path / name
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if name.endswith(".gz")
                     else bz2.compress(data) if name.endswith(".bz2") else data)
    column = lines[2].index(b"\xe9") + 1
    with pytest.raises(DataError) as error:
        build_task(task).read(path)
    assert str(error.value) == (
        f"{path}:3:{column}: not valid UTF-8 (byte 0xe9); convert the file to UTF-8 (e.g. iconv "
        "-f latin1 -t utf-8 FILE > FILE.utf8).")


def test_a_latin1_training_file_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "fine", "label": "fresh"}\n{"text": "' + LATIN1
                     + b'", "label": "rotten"}\n')
    assert refused(capsys, finetune_args(tmp_path, path)) == (
        f"bertkit: error: {path}:2:14: not valid UTF-8 (byte 0xe9); convert the file to UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8).")


def test_the_line_reader_on_files_and_streams(tmp_path):
    stream = io.BytesIO(b"\xef\xbb\xbfone\r\ntwo\x0cstill two\n\nfour")
    assert list(text_lines(stream, keepends=False)) == ["one", "two\x0cstill two", "", "four"]
    with pytest.raises(DataError, match=r"^standard input:2:3: not valid UTF-8 \(byte 0xff\)"):
        list(text_lines(io.BytesIO(b"ok\nno\xff\n"), "standard input"))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(b'{"text": "line %d", "label": "a"}\n' % i
                                           for i in range(2000)))[:2000])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: cannot decompress beyond line \d+ "
                                        r"\(Compressed file ended.*cut short or corrupt"):
        build_task("classification").read(cut)
    cut.write_bytes(b"\x1f\x8b\x08\x00 not gzip at all")
    with pytest.raises(DataError, match=r"cut.jsonl.gz: cannot decompress it \(.*\): the .gz "
                                        r"file is cut short or corrupt; copy or compress it"):
        build_task("classification").read(cut)


# -- predict: one output per input line ------------------------------------------------------


def test_predict_gives_one_output_per_input_line_empty_ones_too(classifier, tmp_path, capsys):
    results = predict(classifier, ["A gorgeous, witty film.", "", "Dull."])
    assert [r["text"] for r in results] == ["A gorgeous, witty film.", "", "Dull."]
    assert results[1]["label"] in ("fresh", "rotten")
    source = tmp_path / "in.txt"
    source.write_text("Witty.\n\nDull.\n", encoding="utf-8")
    code, out, _ = run_cli(["predict", "--model", classifier, source], capsys)
    assert code == 0 and [json.loads(line)["text"] for line in out.splitlines()] == [
        "Witty.", "", "Dull."]


def test_raw_lines_of_every_task_line_up_or_are_refused_by_line(tokenizer):
    tagger = build_task("token-classification")
    examples = tagger.read_lines(["Empire State", "", "\u200b", "ESB"], "<input>", tokenizer)
    assert [e.words for e in examples] == [["Empire", "State"], [], [], ["ESB"]]
    features = tagger.encode(examples, tokenizer)
    assert tokenizer.convert_ids_to_tokens(features[1]["input_ids"]) == ["[CLS]", "[SEP]"]
    assert tagger.to_json(examples[1], {"tags": []}) == {"text": "", "words": [], "tags": [],
                                                         "entities": []}
    with pytest.raises(DataError, match=r"^<input>:2: a sentence pair needs two texts"):
        build_task("pair-classification").read_lines(["a\tb", "", "c\td"], "<input>")
    qa_line = json.dumps({"question": "Who?", "context": "Ada wrote it."})
    with pytest.raises(DataError, match=r"^<input>:2: the line is empty; question answering "
                                        r"reads JSON lines with 'question' and 'context'; each "
                                        r"line is one input \(and one output\)"):
        build_task("question-answering").read_lines([qa_line, "  ", qa_line], "<input>")
    with pytest.raises(DataError, match=r"^<input>:1: not valid JSON \(.*\); multiple choice "
                                        r"reads JSON lines with 'question' and 'choices'\.$"):
        build_task("multiple-choice").read_lines(["{oops"], "<input>")


def test_predict_reads_files_and_stdin_as_strict_utf8_lines(classifier, tmp_path, capsys,
                                                             monkeypatch):
    source = tmp_path / "in.txt"
    source.write_bytes(b"Witty.\n" + LATIN1 + b"\n")
    assert refused(capsys, ["predict", "--model", classifier, source]) == (
        f"bertkit: error: {source}:2:4: not valid UTF-8 (byte 0xe9); convert the file to UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8).")
    source.write_bytes(b"Witty.\x0cand more\nDull.\n")  # a form feed does not end a line
    code, out, _ = run_cli(["predict", "--model", classifier, source], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    stdin = io.TextIOWrapper(io.BytesIO(b"Witty.\n" + LATIN1 + b"\n"), encoding="utf-8",
                             errors="replace")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert refused(capsys, ["predict", "--model", classifier]).startswith(
        "bertkit: error: standard input:2:4: not valid UTF-8 (byte 0xe9)")


# -- corpora ---------------------------------------------------------------------------------


def test_a_bad_byte_drops_its_line_and_keeps_the_document(tmp_path, caplog, wiki_sentences):
    first, second, third = wiki_sentences[:3]
    path = tmp_path / "corpus.txt"
    path.write_bytes(f"{first}\n".encode() + LATIN1 + f"\n{second}\n\n{third}\n".encode())
    corpus = Corpus(path, format="lines")
    assert list(corpus) == [[first, second], [third]]
    assert corpus.skipped == {Skip.NOT_UTF8: 1}
    assert corpus.skipped_named == [f"{path}:2: {Skip.NOT_UTF8}"]
    assert f"skipped {path}:2: line with bytes that are not UTF-8" in caplog.text


def test_a_truncated_gz_gives_the_lines_before_the_cut(tmp_path, caplog, wiki_leads):
    records = [{"text": r["extract"]} for r in wiki_leads[:300]]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(data)[:30_000])
    corpus = Corpus(path)
    documents = list(corpus)
    assert 10 < len(documents) < 300 and corpus.skipped == {Skip.DAMAGED_FILE: 1}
    assert " ".join(documents[0]) == " ".join(records[0]["text"].split())
    [named] = corpus.skipped_named
    assert named == f"{path}:{len(documents) + 1}: {Skip.DAMAGED_FILE}"
    assert "Compressed file ended before the end-of-stream marker" in caplog.text
    # Cut within the first few kilobytes: what came before the cut is read all the same.
    small = tmp_path / "small.txt.gz"
    small.write_bytes(gzip.compress(b"First sentence here.\nSecond one here.\nThird")[:-8])
    corpus = Corpus(small)
    assert list(corpus) == [["First sentence here.", "Second one here."]]
    assert corpus.skipped_named == [f"{small}:3: {Skip.DAMAGED_FILE}"]


def test_the_first_few_skips_are_named_and_the_rest_counted(tmp_path, caplog, capsys,
                                                           wiki_leads):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, lead in enumerate(wiki_leads[:30]):
        (folder / f"lead{i:02d}.txt").write_text(lead["extract"], encoding="utf-8")
    for i in range(NAMED_SKIPS + 3):
        (folder / f"zjunk{i}.bin").write_bytes(b"\x00\x01" * 100)
    code, _, err = run_cli(["data", "pretrain", folder, "--out", tmp_path / "data", "--workers",
                            1, "--dupe-factor", 1, "--no-progress"], capsys)
    assert code == 0
    named = [f"{folder / f'zjunk{i}.bin'}: {Skip.BINARY_FILE}" for i in range(NAMED_SKIPS)]
    assert f"first skipped: {'; '.join(named)}" in err
    assert f"{NAMED_SKIPS + 3} {Skip.BINARY_FILE}" in err
    assert "skipped 3 more input(s), counted by reason in the summary." in caplog.text


def test_vocab_train_on_unreadable_files_says_what_it_skipped(tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(range(256)))
    (folder / "b.txt").write_bytes(LATIN1 + b"\n")
    assert refused(capsys, ["vocab", "train", folder, "--out", tmp_path / "vocab",
                            "--vocab-size", 100]) == (
        f"bertkit: error: the corpus gave no text to train on: read 2 file(s); skipped: 1 "
        f"{Skip.BINARY_FILE}; 1 {Skip.NOT_UTF8} ({folder / 'a.bin'}: {Skip.BINARY_FILE}; "
        f"{folder / 'b.txt'}:1: {Skip.NOT_UTF8}).")


def test_a_text_field_no_record_has_is_an_error(tmp_path, capsys):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": i, "body": f"Text {i}. More."}
                                                   for i in range(400)])
    assert refused(capsys, ["data", "pretrain", path, "--out", tmp_path / "data", "--workers", 1,
                            "--no-progress"]) == (
        f"bertkit: error: no JSONL record has the text field 'text' (400 records read); "
        f"{path}:1, the first, has 'id', 'body': choose the field with --text-field "
        "(text_field=).")


# -- fill-mask -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, minilm_dir):
    """A seeded random transformers BertForMaskedLM of 64 positions, with the real vocabulary."""
    folder = tmp_path_factory.mktemp("mlm")
    transformers.set_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).eval().save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json",
                 "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


def test_fill_mask_warns_of_a_cut_and_refuses_to_cut_a_mask(mlm_dir, capsys, caplog):
    long = "Paris is the [MASK] of France. " + "It is a large city. " * 20  # 129 tokens
    code, out, _ = run_cli(["fill-mask", "--model", mlm_dir, "--device", "cpu", long], capsys)
    assert code == 0 and out.count("[MASK] 1:") == 1
    assert "'Paris is the [MASK] of France. It is a large city. It is ...' is 129 tokens long: " \
           "cut to the 64-token limit (its [MASK]s are all before the cut)." in caplog.text
    both = long + "The end is [MASK]."
    assert refused(capsys, ["fill-mask", "--model", mlm_dir, "--device", "cpu", both]) == (
        "bertkit: error: 'Paris is the [MASK] of France. It is a large city. It is ...' is 134 "
        "tokens long: 1 of its 2 [MASK]s lie beyond the 64-token limit; shorten the text before "
        "them.")
    with pytest.raises(ValueError, match=r"every \[MASK\] in .* lies beyond the 64-token limit"):
        FillMask(mlm_dir, device="cpu")("It is a large city. " * 20 + "[MASK].")


# -- pre-training data folders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tokenizer, wiki_leads):
    """Pre-training data made from 40 Wikipedia leads: a few shards."""
    tmp = tmp_path_factory.mktemp("data")
    corpus = tmp / "leads"
    corpus.mkdir()
    for i, lead in enumerate(wiki_leads[:40]):
        (corpus / f"{i:02d}.txt").write_text(lead["extract"], encoding="utf-8")
    create_pretraining_data(corpus, tmp / "data", tokenizer, PretrainingConfig(dupe_factor=1),
                            workers=1, shard_mb=0.01, progress=False)
    return tmp / "data"


@pytest.fixture
def damaged(data_dir, tmp_path):
    """A copy of the data to damage, and the command that rebuilds it."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    sources = " ".join(json.loads((copy / "manifest.json").read_text())["inputs"]["sources"])
    return copy, f"Rebuild it with `bertkit data pretrain {sources} --out {copy} --overwrite`"


def test_shards_missing_from_the_data_folder(damaged, tmp_path, capsys):
    data, rebuild = damaged
    shutil.rmtree(data / "train")
    assert refused(capsys, ["pretrain", "--model", "tiny", "--data", data, "--out",
                            tmp_path / "run", "--steps", 1]) == (
        f"bertkit: error: {data / 'train' / 'shard-00000.safetensors'} is missing: the data "
        f"folder is incomplete (copied without its shards?). {rebuild} (and the settings that "
        "made it).")


def test_a_shard_cut_short(damaged):
    data, rebuild = damaged
    shard = data / "train" / "shard-00001.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:size // 2])
    with pytest.raises(ValueError) as error:
        PretrainingDataset(data)
    assert str(error.value) == (f"{shard} is cut short: {size // 2:,} bytes where its header "
                                f"needs {size:,}. {rebuild} (and the settings that made it).")
    shard.write_bytes(b"\x10")
    with pytest.raises(ValueError, match=r"shard-00001.safetensors is not a readable shard"):
        PretrainingDataset(data)


def test_an_incomplete_or_damaged_manifest(damaged):
    data, rebuild = damaged
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "complete": False,
                                                    "status": "interrupted"}))
    with pytest.raises(ValueError) as error:
        PretrainingDataset(data)
    assert str(error.value) == (
        f"{data} is incomplete (interrupted): the `bertkit data pretrain` run that wrote it did "
        f"not finish. {rebuild} (and the settings that made it). (From Python, "
        "PretrainingDataset(..., allow_incomplete=True) reads the shards it did finish.)")
    del manifest["splits"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"manifest.json lacks splits: it is damaged or was not "
                                         rf"written by bertkit. {rebuild}"):
        PretrainingDataset(data)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--data", "rt-polarity", "--model", "tiny", "--batch-size", "0"],
     "--batch-size is 0; it must be at least 1"),
    (["finetune", "--data", "rt-polarity", "--model", "tiny", "--epochs", "0"],
     "--epochs is 0; it must be at least 1"),
    (["finetune", "--data", "rt-polarity", "--model", "tiny", "--lr=-1e-5"],
     "--lr is -1e-05; it must be above 0"),
    (["pretrain", "--data", "x", "--warmup", "-1"], "--warmup is -1.0; it must be at least 0"),
    (["pretrain", "--data", "x", "--optimizer", "sgd"], "is 'sgd'; choose one of adamw, lamb"),
    # `embed --max-length 0` was read as "the default" and silently ignored
    (["embed", "--input", "x", "--out", "-", "--max-length", "0"],
     "--max-length is 0; it must be at least 3"),
    (["embed", "--input", "x", "--out", "-", "--batch-tokens", "many"],
     "--batch-tokens is 'many'; give a whole number"),
    (["fill-mask", "--model", "m", "--top-k", "0", "A [MASK]."],
     "--top-k is 0; it must be at least 1"),
])
def test_numeric_flags_are_checked_where_they_are_parsed(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_gpu_asked_for_where_there_is_none(tmp_path, capsys, rt_rows):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    train = write_jsonl(tmp_path / "train.jsonl", rt_rows[:8])
    assert main(["finetune", "--task", "classification", "--train", str(train), *TINY,
                 "--device", "cuda", "--out", str(tmp_path / "run")]) == 1
    assert "PyTorch sees no CUDA GPU here" in capsys.readouterr().err


def test_plot_draws_a_run_and_names_a_folder_that_is_not_one(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["plot", str(run)]) == 1
    assert "has no metrics.jsonl" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n'
                                       '{"step": 2, "loss": 1.5, "lr": 0.1}\n')
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()


def test_vocab_train_keeps_a_data_folders_vocabulary_and_an_earlier_one(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A first sentence of text. A second one follows it.\n" * 20)
    data = tmp_path / "data"
    (data / "tokenizer").mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    assert main(["vocab", "train", str(corpus), "--out", str(data / "tokenizer")]) == 1
    assert "is the vocabulary of the pre-training data" in capsys.readouterr().err
    vocab = tmp_path / "vocab"
    assert main(["vocab", "train", str(corpus), "--out", str(vocab), "--vocab-size", "200"]) == 0
    before = (vocab / "vocab.txt").read_bytes()
    assert main(["vocab", "train", str(corpus), "--out", str(vocab)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (vocab / "vocab.txt").read_bytes() == before


# -- a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder, size_bytes):
    """A real file system of ``size_bytes`` (a tmpfs) mounted at ``folder``; yields a function
    that resizes it. Skips the test where mounting is not permitted (it needs root)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                                  str(folder)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no `mount` command here: the full-disk test mounts a small tmpfs")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (the full-disk test needs root): "
                    f"{mounted.stderr.strip()}")

    def resize(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    try:
        yield resize
    finally:
        if subprocess.run(["umount", str(folder)]).returncode:
            subprocess.run(["umount", "-l", str(folder)])


def snapshot(folder):
    """Every file's bytes; of a checkpoint's state, all but the seconds its run had spent (a
    time, not the same in two runs)."""
    return {p.relative_to(folder): timeless_state(p) if p.name == STATE_NAME else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def timeless_state(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state.pop("seconds_spent") > 0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def disk_bytes(path):
    """What a file, or a folder's files, take on a tmpfs: whole 4 KiB pages."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in paths)


@pytest.fixture(scope="module")
def small_vocab_data(tmp_path_factory, wiki_leads):
    """Pre-training data from 40 Wikipedia leads with a 1,000-token vocabulary, so that a tiny
    model's checkpoint is a few MB."""
    tmp = tmp_path_factory.mktemp("small-vocab")
    corpus = write_jsonl(tmp / "corpus.jsonl", [{"text": r["extract"]} for r in wiki_leads[:40]])
    vocab = train_vocab([corpus], vocab_size=1000, out_dir=tmp / "vocab")
    create_pretraining_data(Corpus(corpus), tmp / "data", vocab,
                            PretrainingConfig(max_seq_length=64, dupe_factor=1,
                                              validation_fraction=0.1), workers=1,
                            progress=False)
    return tmp / "data"


def pretrain_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "bertkit", "pretrain", "--model", "tiny", "--precision", "fp32",
         "--batch-size", "8", "--log-every", "1", "--eval-every", "1000", *map(str, args)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True)


FULL_DISK_RUN = ["--steps", 4, "--save-every", 2]  # checkpoints at steps 2 and 4


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory, small_vocab_data):
    """The full-disk run on a disk with room: what each of its steps and files must be."""
    run = tmp_path_factory.mktemp("healthy") / "run"
    done = pretrain_cli("--data", small_vocab_data, *FULL_DISK_RUN, "--out", run)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def step_losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def error_line(stderr: str) -> str:
    """The one line a failed command wrote about its failure (and that it wrote only one)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0] == stderr.strip().splitlines()[-1], stderr[-3000:]
    return lines[0]


def fill(disk):
    """Take every byte left on ``disk``."""
    with open(disk / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()


@pytest.mark.parametrize("runs_out_in", ["model.safetensors", "trainer_state.pt"])
def test_a_full_disk_stops_pretraining_in_one_line_and_keeps_the_last_checkpoint(
        tmp_path, small_vocab_data, healthy_run, runs_out_in):
    first = healthy_run / "checkpoints" / "step-0000002"
    checkpoint = disk_bytes(first)
    # Room for the first checkpoint (and the run's small files) plus the second's files up to
    # half of `runs_out_in`: the second checkpoint runs out of room while writing that file.
    written_before = ([p for p in first.iterdir() if p.name != STATE_NAME]
                      if runs_out_in == STATE_NAME else [first / "config.json"])
    room = sum(map(disk_bytes, written_before)) + disk_bytes(first / runs_out_in) // 2
    disk = tmp_path / "disk"
    with small_disk(disk, checkpoint + 64 * 1024 + room) as resize:
        run = disk / "run"
        failed = pretrain_cli("--data", small_vocab_data, *FULL_DISK_RUN, "--out", run)
        assert failed.returncode == 1, failed.stderr[-3000:]
        second = run / "checkpoints" / "step-0000004"
        assert re.fullmatch(
            rf"bertkit: error: could not write the checkpoint {re.escape(str(second))} \(.+\); "
            r"is the disk full\? The last complete checkpoint is kept\.",
            error_line(failed.stderr))
        kept = run / "checkpoints" / "step-0000002"
        assert snapshot(kept) == snapshot(first)  # complete, and what a healthy run writes
        assert [p.name for p in (run / "checkpoints").iterdir()] == [kept.name]  # no debris
        assert not (run / "model").exists()

        earlier = snapshot(run)
        fill(disk)  # --resume on a disk with no room at all: refused, nothing changed
        refused_resume = pretrain_cli("--out", run, "--resume")
        assert refused_resume.returncode == 1
        assert re.fullmatch(
            rf"bertkit: error: could not write {re.escape(str(run / 'pretrain_settings.json'))} "
            r"\(\[Errno 28\] No space left on device\); is the disk full\? Its earlier "
            r"version, if any, is kept\.", error_line(refused_resume.stderr))
        assert snapshot(run) == earlier

        (disk / "filler").unlink()
        resize(checkpoint * 4)  # room made: the run continues from the kept checkpoint
        resumed = pretrain_cli("--out", run, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert step_losses(run) == step_losses(healthy_run)  # bitwise, steps 1-4
        assert snapshot(kept) == snapshot(first)
        assert snapshot(run / "model") == snapshot(healthy_run / "model")


def test_a_full_disk_while_saving_the_best_finetuned_model_keeps_the_one_before(
        tmp_path, capsys, rt_rows):
    train = write_jsonl(tmp_path / "train.jsonl", rt_rows[:16])
    flags = ["finetune", "--task", "classification", *TINY, "--train", train]
    done, _, _ = run_cli([*flags, "--out", tmp_path / "whole"], capsys)
    assert done == 0
    best = disk_bytes(tmp_path / "whole" / "best")
    disk = tmp_path / "disk"
    # Without validation data every epoch is the best so far: epoch 1's best/ fits, epoch 2's
    # (written beside it, then swapped in) does not.
    with small_disk(disk, best * 3 // 2):
        out = disk / "run"
        code, _, err = run_cli([*flags, "--epochs", 2, "--out", out], capsys)
        assert code == 1, err
        assert re.fullmatch(
            rf"bertkit: error: could not write {re.escape(str(out / 'best'))} \(.+\); is the "
            r"disk full\? What it held before is kept\.", err.strip().splitlines()[-1])
        kept = snapshot(out / "best")
        assert {str(p) for p in kept} == {str(p) for p in snapshot(tmp_path / "whole" / "best")}
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no debris
        assert len(predict(out / "best", ["a fine film", "a dull one"], device="cpu")) == 2


def test_every_command_explains_itself_with_help(capsys):
    # A help text with a bare % once made `bertkit pretrain --help` die inside argparse.
    def commands(parser, path=()):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*path, name))

    paths = list(commands(build_parser()))
    assert ("pretrain",) in paths and ("data", "pretrain") in paths
    for path in paths:
        with pytest.raises(SystemExit) as stop:
            main([*path, "--help"])
        assert stop.value.code == 0, path
        assert "usage: bertkit" in capsys.readouterr().out, path


@pytest.mark.parametrize("name,content,message", [
    ("list.json", "[]", "settings are names with values (a mapping), got list"),
    ("broken.json", '{"epochs": 2,}', "broken.json:1:14: not valid JSON"),
    ("flag.json", '{"feature_based": "false"}', "feature_based is true or false, got 'false'"),
    ("rate.yaml", "lr: fast\n", "lr is a number, got 'fast'"),
    ("broken.yaml", "lr: [1e-4\n", "broken.yaml:2:1: not valid YAML"),
])
def test_a_faulty_settings_file_is_named_not_a_traceback(tmp_path, capsys, name, content,
                                                         message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "Fine.", "label": "a"}])
    assert message in refused(capsys, finetune_args(tmp_path, train, "--settings", path))


def test_yaml_numbers_written_as_text_are_numbers(tmp_path):
    """YAML reads `lr: 1e-4` as the text "1e-4"."""
    from bertkit.finetune import FinetuneSettings

    path = tmp_path / "s.yaml"
    path.write_text("lr: 1e-4\nepochs: '2'\n", encoding="utf-8")
    settings = FinetuneSettings.from_file(path, model="tiny", train="rt-polarity",
                                          out=str(tmp_path / "run"))
    assert settings.lr == 1e-4 and settings.epochs == 2


# -- embed -----------------------------------------------------------------------------------


def embed_args(model, source, out, *more) -> list:
    return ["embed", "--model", model, "--input", source, "--out", out, "--no-progress", *more]


def test_embed_refuses_folder_outputs_and_an_index_on_its_input_before_embedding(
        mlm_dir, tmp_path, capsys):
    """Found only at the final rename, a folder in the way cost the whole run and left the
    index of an .npy without the .npy; an index on the input's path replaced the input."""
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "v.npy").mkdir()
    assert refused(capsys, embed_args(mlm_dir, source, tmp_path / "v.npy")) == (
        f"bertkit: error: output {tmp_path / 'v.npy'} is a folder: give a file name for the "
        "vectors (e.g. vectors.npy).")
    assert not (tmp_path / "v.index.jsonl").exists()
    (tmp_path / "w.index.jsonl").mkdir()
    assert "w.index.jsonl is a folder" in refused(capsys, embed_args(mlm_dir, source,
                                                                     tmp_path / "w.npy"))
    assert not (tmp_path / "w.npy").exists()
    listed = tmp_path / "x.index.jsonl"
    listed.write_text("one\ntwo\n", encoding="utf-8")
    assert "would replace its input" in refused(capsys, embed_args(mlm_dir, listed,
                                                                   tmp_path / "x.npy"))
    assert listed.read_text(encoding="utf-8") == "one\ntwo\n" and not (tmp_path / "x.npy").exists()


def test_embed_names_a_folder_or_gzip_input_and_reads_a_spreadsheet_csv(mlm_dir, tmp_path,
                                                                        capsys):
    assert refused(capsys, embed_args(mlm_dir, tmp_path, tmp_path / "v.npy")) == (
        f"bertkit: error: input {tmp_path} is a folder: give one text file (one text per line), "
        "or - for standard input.")
    packed = tmp_path / "in.txt.gz"
    packed.write_bytes(gzip.compress(b"one\ntwo\n"))
    for policy in ("error", "replace"):  # replacing would embed the compressed bytes as text
        assert "in.txt.gz is gzip-compressed, not text: decompress it" in refused(
            capsys, embed_args(mlm_dir, packed, tmp_path / "v.npy", "--invalid-utf8", policy))
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n", encoding="utf-8")
    sheet = tmp_path / "sheet.csv"  # as spreadsheets save it: a byte-order mark, CRLF
    sheet.write_bytes("year,score\r\n2001,0.5\r\n2002,1.5\r\n".encode("utf-8-sig"))
    code, out, err = run_cli(embed_args(mlm_dir, source, "-", "--append-csv", sheet,
                                        "--append-columns", "year"), capsys)
    assert code == 0, err
    assert [json.loads(line)["vector"][-1] for line in out.splitlines()] == [2001, 2002]


def test_embed_append_columns_without_a_csv_is_refused(mlm_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("one\n", encoding="utf-8")
    assert "give that CSV (--append-csv) too" in refused(
        capsys, embed_args(mlm_dir, source, tmp_path / "v.npy", "--append-columns", "a,b"))
    assert not (tmp_path / "v.npy").exists()


def test_embedding_onto_a_full_disk_keeps_its_rows_for_resume(mlm_dir, tmp_path, capsys,
                                                              wiki_sentences):
    texts = [" ".join(text.split()) for text in wiki_sentences[:3000]]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    whole = tmp_path / "whole.npy"
    assert run_cli(embed_args(mlm_dir, source, whole), capsys)[0] == 0
    disk = tmp_path / "disk"
    with small_disk(disk, 256 * 1024) as resize:  # room for about a third of the vectors
        out = disk / "v.npy"
        error = refused(capsys, embed_args(mlm_dir, source, out))
        assert error.startswith(f"bertkit: error: could not write {out} (") and error.endswith(
            "is the disk full? The rows written so far are kept: make room and run the same "
            "command with --resume to go on.")
        assert not out.exists()
        resize(8 * 1024 * 1024)
        code, _, err = run_cli(embed_args(mlm_dir, source, out, "--resume"), capsys)
        assert code == 0, err
        kept = int(re.search(r"after the stopped run's ([\d,]+) lines", err)[1].replace(",", ""))
        assert 500 < kept < 2500, err
        np.testing.assert_allclose(np.load(out), np.load(whole), atol=1e-6)
        assert (disk / "v.index.jsonl").read_text() == (tmp_path / "whole.index.jsonl").read_text()
        assert sorted(p.name for p in disk.iterdir()) == ["v.index.jsonl", "v.npy"]


def test_an_onnx_export_onto_a_full_disk_keeps_the_file_there_before(mlm_dir, tmp_path):
    from bertkit.export import export_onnx
    from bertkit.files import DiskFull

    whole = export_onnx(mlm_dir, tmp_path / "whole.onnx")
    disk = tmp_path / "disk"
    with small_disk(disk, whole.stat().st_size // 2):
        before = disk / "encoder.onnx"
        before.write_bytes(b"the export of last week")
        with pytest.raises(DiskFull, match=f"could not write {before} .*is the disk full\\? "
                           "What was there before is kept."):
            export_onnx(mlm_dir, before)
        assert [p.name for p in disk.iterdir()] == ["encoder.onnx"]
        assert before.read_bytes() == b"the export of last week"


@pytest.mark.parametrize("argv", [["finetune", "--data", "rt-polarity", "--model", "tiny"],
                                  ["data", "pretrain", "wiki-leads", "--out", "x"],
                                  ["demo"]])
def test_commands_of_one_process_refuse_torchrun(argv, monkeypatch, capsys, tmp_path):
    """Under torchrun every process would run the whole job into the same folder: only
    `pretrain` shares its work between processes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert f"`bertkit {' '.join(argv[:2 if argv[0] == 'data' else 1])}` runs in one process" \
        in error and "under torchrun each of the 2 processes" in error
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_data_pretrain_workers_0_is_refused_where_it_is_parsed(capsys):
    """--workers 0 was read as "the default" and silently ran one worker per core."""
    with pytest.raises(SystemExit) as stopped:
        main(["data", "pretrain", "x", "--out", "y", "--workers", "0"])
    assert stopped.value.code == 2
    assert "--workers is 0; it must be at least 1" in capsys.readouterr().err


def test_vocab_train_out_a_file_is_refused_before_training(tmp_path, capsys):
    """A file as --out used to fail with "[Errno 17] File exists" once the corpus was trained on."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\n", encoding="utf-8")
    out = tmp_path / "vocab"
    out.write_text("mine\n", encoding="utf-8")
    assert refused(capsys, ["vocab", "train", corpus, "--out", out, "--vocab-size", 100]) == (
        f"bertkit: error: --out {out} is a file; give a folder for vocab.txt and its settings.")
    assert out.read_text(encoding="utf-8") == "mine\n"


@pytest.mark.parametrize("flag, value, message", [
    ("--min-frequency", -1, "min_frequency=-1 is negative; give 0 or more"),
    ("--limit-alphabet", 0, "limit_alphabet=0 leaves no characters to build words from"),
])
def test_vocab_train_counts_the_engine_cannot_take(flag, value, message, tmp_path, capsys):
    """A negative --min-frequency was an OverflowError traceback; --limit-alphabet 0 blamed the
    corpus ("the training text is empty")."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\n", encoding="utf-8")
    assert message in refused(capsys, ["vocab", "train", corpus, "--out", tmp_path / "vocab",
                                       "--vocab-size", 100, flag, value])
    assert not (tmp_path / "vocab").exists()


@pytest.mark.parametrize("device", ["bogus", "mps", "gpu"])
def test_a_device_bertkit_does_not_run_on_is_named(tmp_path, capsys, rt_rows, device):
    """torch.device("bogus") raised a RuntimeError (a traceback), "mps" failed deep inside."""
    train = write_jsonl(tmp_path / "train.jsonl", rt_rows[:8])
    assert main(["finetune", "--task", "classification", "--train", str(train), *TINY,
                 "--device", device, "--out", str(tmp_path / "run")]) == 1
    assert f"device '{device}': bertkit runs on cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.parametrize("length, cap, warned", [(512, 20, True), (512, 80, False),
                                                 (128, 20, False)])
def test_a_prediction_cap_that_holds_masking_below_its_rate_is_said(tmp_path, tokenizer, caplog,
                                                                    length, cap, warned):
    """Google's default cap of 20 predictions at 512 tokens masks 3.9%, not 15%."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"text": "One sentence here. Another one there."},
        {"text": "A second document. With two sentences."}])
    with caplog.at_level("WARNING", logger="bertkit"):
        create_pretraining_data(corpus, tmp_path / "data", tokenizer, PretrainingConfig(
            max_seq_length=length, max_predictions_per_seq=cap, dupe_factor=1,
            validation_fraction=0), workers=1, progress=False)
    said = "max_predictions_per_seq=20 masks at most 3.9% of a full 512-token example, not " \
           "masked_lm_prob's 15%: pass --max-predictions-per-seq 77"
    assert (said in caplog.text) == warned, caplog.text
