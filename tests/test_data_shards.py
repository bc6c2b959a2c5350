"""Stored examples: the Dataset and its batches, rank reads, resuming, honest manifests on
interruption, dynamic masking, single-segment examples, and the command line."""

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bertkit import BertConfig, BertForPreTraining
from bertkit.cli import main
from bertkit.data import (
    Corpus,
    PretrainingConfig,
    PretrainingDataset,
    PretrainingSampler,
    create_pretraining_data,
    example_stream,
    fetch_corpus,
    micro_batches,
    read_manifest,
)
from bertkit.data.shards import sha256_of


@pytest.fixture(scope="module")
def tutorial():
    """The Python tutorial: 16 real documents, 290 kB."""
    return fetch_corpus("python-docs", quiet=True) / "tutorial"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tokenizer, tutorial):
    """Several shards of real examples."""
    out = tmp_path_factory.mktemp("sharded") / "data"
    create_pretraining_data(tutorial, out, tokenizer, PretrainingConfig(dupe_factor=4),
                            workers=1, shard_mb=0.1, progress=False)
    return out


def test_batches_are_padded_long_tensors_a_model_trains_on(sharded, tokenizer):
    dataset = PretrainingDataset(sharded)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=dataset.collate,
                                         sampler=PretrainingSampler(dataset, seed=1))
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels",
                          "next_sentence_label"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["next_sentence_label"].shape == (8,)
    width = batch["input_ids"].shape[1]
    lengths = batch["attention_mask"].sum(1)
    assert width == lengths.max()
    for row, length in enumerate(lengths.tolist()):
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == -100).all()
        assert (batch["token_type_ids"][row, length:] == 0).all()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    out = BertForPreTraining(config)(**batch)
    assert torch.isfinite(out["loss"]) and out["loss"] > 5  # MLM over 30k tokens + NSP
    out["loss"].backward()


def test_masked_labels_and_the_most_frequent_token_baseline(sharded, tokenizer):
    from bertkit.pretrain import most_frequent_token_accuracy

    dataset = PretrainingDataset(sharded)
    assert len(dataset.shards) > 1
    by_item = torch.cat([dataset[i]["labels"] for i in range(len(dataset))])
    labels = dataset.masked_labels()
    assert np.array_equal(labels, by_item[by_item != -100].numpy())
    tokens, counts = np.unique(labels, return_counts=True)
    most_frequent = tokens[counts.argmax()]
    share = counts.max() / len(labels)
    assert most_frequent_token_accuracy(dataset, dataset) == pytest.approx(share)
    assert tokenizer.convert_ids_to_tokens(int(most_frequent)) in {".", "the", ","}
    assert 0.02 < share < 0.2  # a few percent in real English text


def test_shards_are_standard_safetensors(sharded):
    dataset = PretrainingDataset(sharded)
    first = 0
    for record, mapped in zip(dataset.manifest["splits"]["train"]["shards"], dataset.shards,
                              strict=True):
        loaded = load_file(sharded / record["file"])  # the safetensors library's own reader
        assert loaded.keys() == mapped.keys()
        for key in loaded:
            np.testing.assert_array_equal(loaded[key], mapped[key])
        assert len(loaded["offsets"]) - 1 == record["examples"]
        assert loaded["offsets"][-1] == len(loaded["input_ids"]) == record["tokens"]
        assert loaded["masked_offsets"][-1] == len(loaded["masked_labels"])
        example = dataset.arrays(first)
        np.testing.assert_array_equal(example["input_ids"],
                                      loaded["input_ids"][:loaded["offsets"][1]])
        first += record["examples"]
    assert dataset.manifest["splits"]["train"]["examples"] == len(dataset) == first


def test_a_shard_swapped_for_another_is_named_on_reading(sharded, tmp_path):
    """Two valid shards exchanged (a bad copy, a mix of two builds): their counts no longer
    match what the manifest recorded."""
    copy = tmp_path / "data"
    shutil.copytree(sharded, copy)
    first, second = sorted((copy / "train").iterdir())[:2]
    first.rename(tmp_path / "parked")
    second.rename(first)
    (tmp_path / "parked").rename(second)
    with pytest.raises(ValueError, match=rf"{first.name} holds .* examples .* where "
                                         r"manifest.json records .*: it is not the shard"):
        PretrainingDataset(copy)


@pytest.mark.parametrize("array, value, message", [
    ("input_ids", 60_000, r"example 2: \d+ tokens with ids from \d+ to 60000 \(at most 128 "
                          r"tokens, ids below 30522\); the shard is damaged"),
    ("offsets", 10**6, r"example 2: 0 tokens"),
    ("masked_positions", 500, r"example 2: masked positions or original ids out of range"),
])
def test_a_damaged_shard_is_named_on_reading_not_fed_to_the_model(sharded, tmp_path, array,
                                                                  value, message):
    """Flipped bytes in a shard whose counts still match: ids past the vocabulary reached the
    embedding as an IndexError; offsets past the data made empty or garbage examples."""
    copy = tmp_path / "data"
    shutil.copytree(sharded, copy)
    shard = sorted((copy / "train").iterdir())[0]
    header_length = int.from_bytes(shard.read_bytes()[:8], "little")
    info = json.loads(shard.read_bytes()[8:8 + header_length])[array]
    dtype = np.dtype({"U16": "<u2", "I32": "<i4", "I64": "<i8", "U32": "<u4", "U8": "u1",
                      "I16": "<i2"}[info["dtype"]])
    mapped = np.memmap(shard, dtype=dtype, mode="r+", offset=8 + header_length
                       + info["data_offsets"][0], shape=(3 if array == "offsets" else 2 * 128,))
    index = 2 if array == "offsets" else (
        PretrainingDataset(sharded).shards[0]["masked_offsets"][2] if array == "masked_positions"
        else int(PretrainingDataset(sharded).shards[0]["offsets"][2]) + 1)
    mapped[index] = value
    mapped.flush()
    dataset = PretrainingDataset(copy)
    dataset[0]  # the examples before read as before
    with pytest.raises(ValueError, match=message + ".*bertkit data pretrain"):
        dataset[2]


def test_ranks_read_disjoint_parts_and_resume_exactly(sharded):
    dataset = PretrainingDataset(sharded)
    assert len(dataset.shards) >= 3
    for world_size in (1, 3):
        parts = [list(PretrainingSampler(dataset, rank=r, world_size=world_size, seed=5))
                 for r in range(world_size)]
        assert all(len(part) == len(dataset) // world_size for part in parts)
        union = [i for part in parts for i in part]
        assert len(set(union)) == len(union)  # disjoint
        assert set(union) <= set(range(len(dataset)))
    every = list(PretrainingSampler(dataset, seed=5))
    assert sorted(every) == list(range(len(dataset)))
    assert every != sorted(every)  # shuffled
    rank1 = list(PretrainingSampler(dataset, rank=1, world_size=3, seed=5))
    for start in (0, 1, 17, len(rank1) - 1, len(rank1)):
        resumed = PretrainingSampler(dataset, rank=1, world_size=3, seed=5, start=start)
        assert list(resumed) == rank1[start:] and len(resumed) == len(rank1) - start
    next_epoch = PretrainingSampler(dataset, seed=5)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != every and sorted(next_epoch) == sorted(every)
    ordered = list(PretrainingSampler(dataset, rank=2, world_size=3, shuffle=False))
    assert ordered == list(range(2, len(dataset) // 3 * 3, 3))


def test_the_example_stream_runs_the_sampler_pass_after_pass_from_any_position(sharded):
    dataset = PretrainingDataset(sharded)
    size = len(dataset)
    whole = list(itertools.islice(example_stream(dataset, seed=5), 3 * size))
    passes = [whole[i * size:(i + 1) * size] for i in range(3)]
    for number, order in enumerate(passes):
        sampler = PretrainingSampler(dataset, seed=5)
        sampler.set_epoch(number)
        assert order == list(sampler)
        assert sorted(order) == list(range(size))  # each pass a permutation
    assert passes[0] != passes[1] != passes[2] != passes[0]
    for start in (0, 1, 17, size - 1, size, size + 3, 2 * size - 2):
        resumed = list(itertools.islice(example_stream(dataset, seed=5, start=start), size))
        assert resumed == whole[start:start + size]
    assert whole != list(itertools.islice(example_stream(dataset, seed=6), 3 * size))


def test_micro_batches_on_ranks_follow_one_process_with_more_accumulation():
    batch = np.arange(100, 124)
    one = micro_batches(batch, rank=0, world_size=1, accumulation=2)
    two = [part for rank in (0, 1) for part in micro_batches(batch, rank, 2, accumulation=1)]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate(one), batch)
    np.testing.assert_array_equal(np.concatenate(two), batch)
    four = [micro_batches(batch, rank, 2, accumulation=2) for rank in (0, 1)]
    assert [len(part) for parts in four for part in parts] == [6] * 4
    np.testing.assert_array_equal(np.concatenate([p for parts in four for p in parts]), batch)
    with pytest.raises(ValueError, match="rank"):
        micro_batches(batch, rank=2, world_size=2, accumulation=1)


class InterruptedCorpus(Corpus):
    """A real corpus whose reading is interrupted (as Ctrl-C would) after some documents."""

    def __iter__(self):
        for count, document in enumerate(super().__iter__()):
            if count == 5000:  # more than two chunks of text
                raise KeyboardInterrupt
            yield document


def test_an_interrupted_run_leaves_intact_shards_and_an_honest_manifest(tmp_path, tokenizer):
    out = tmp_path / "out"
    corpus = InterruptedCorpus("wiki-leads")
    with pytest.raises(KeyboardInterrupt):
        create_pretraining_data(corpus, out, tokenizer, PretrainingConfig(dupe_factor=2),
                                workers=1, shard_mb=0.5, progress=False)
    manifest = read_manifest(out)
    assert manifest["complete"] is False and manifest["status"] == "interrupted"
    assert manifest["summary"] is None
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.part"))
    with pytest.raises(ValueError, match="incomplete"):
        PretrainingDataset(out)
    listed = manifest["splits"]["train"]["shards"]
    assert len(listed) >= 2
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert written == sorted(s["file"] for split in manifest["splits"].values()
                             for s in split["shards"])
    for shard in listed:
        assert sha256_of(out / shard["file"]) == shard["sha256"]
    partial = PretrainingDataset(out, allow_incomplete=True)
    partial.verify()
    assert len(partial) == sum(s["examples"] for s in listed)
    assert partial[len(partial) - 1]["input_ids"][0] == tokenizer.cls_token_id


def test_ctrl_c_on_the_command_line_leaves_an_honest_manifest(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bertkit", "data", "pretrain", "linux-docs", "--out",
               str(out), "--shard-mb", "0.2", "--dupe-factor", "10", "--no-progress"]
    # The first shard lands after a fifth or so of the ten passes (3 of 18 s here), so the
    # Ctrl-C after it lands mid-run (one pass could finish first on a busy machine)
    # SIGINT as a terminal leaves it: a shell's background job (`make test &`) starts with it
    # ignored, and a Python started so never raises KeyboardInterrupt.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if read_manifest(out)["splits"]["train"]["shards"]:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    manifest = read_manifest(out)
    assert manifest["complete"] is False and manifest["status"] == "interrupted"
    shards = manifest["splits"]["train"]["shards"]
    assert shards and all(sha256_of(out / s["file"]) == s["sha256"] for s in shards)


def test_dynamic_masking_draws_fresh_reproducible_masks_each_epoch(tmp_path, tokenizer,
                                                                   tutorial):
    out = tmp_path / "dynamic"
    create_pretraining_data(tutorial, out, tokenizer,
                            PretrainingConfig(dupe_factor=1, dynamic_masking=True),
                            workers=1, progress=False)
    dataset = PretrainingDataset(out)
    first = [dataset[i] for i in range(300)]
    reopened = PretrainingDataset(out)
    again = [reopened[i] for i in range(300)]
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(300)]
    same = [torch.equal(a["labels"], b["labels"]) for a, b in zip(first, again, strict=True)]
    changed = [not torch.equal(a["labels"], b["labels"])
               for a, b in zip(first, second, strict=True)]
    assert all(same) and np.mean(changed) > 0.95
    predicted = sum(int((e["labels"] != -100).sum()) for e in first)
    maskable = sum(len(e["input_ids"]) - 3 for e in first)
    assert abs(predicted / maskable - 0.15) < 0.01
    for a, b in zip(first, second, strict=True):  # the same text under both masks
        original_a = torch.where(a["labels"] != -100, a["labels"], a["input_ids"])
        original_b = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        assert torch.equal(original_a, original_b)


def test_without_nsp_examples_are_single_segments(tmp_path, tokenizer, tutorial):
    out = tmp_path / "single"
    create_pretraining_data(tutorial, out, tokenizer,
                            PretrainingConfig(dupe_factor=1, next_sentence=False),
                            workers=1, progress=False)
    dataset = PretrainingDataset(out)
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        assert "next_sentence_label" not in item
        assert item["token_type_ids"].eq(0).all()
        assert item["input_ids"][0] == tokenizer.cls_token_id
        assert item["input_ids"][-1] == tokenizer.sep_token_id
        assert (item["input_ids"] == tokenizer.sep_token_id).sum() == 1
        lengths.append(len(item["input_ids"]))
    assert max(lengths) == 128 and np.mean(np.array(lengths) == 128) > 0.7
    assert set(dataset.collate([dataset[0], dataset[1]])) == {
        "input_ids", "token_type_ids", "attention_mask", "labels"}


def test_output_folder_is_never_clobbered(tmp_path, tokenizer, tutorial):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        create_pretraining_data(tutorial, foreign, tokenizer, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class FailingCorpus(Corpus):
    """A real corpus whose reading fails after a few documents."""

    def __iter__(self):
        for count, document in enumerate(super().__iter__()):
            if count == 3:
                raise RuntimeError("disk gone")
            yield document


def test_overwrite_keeps_the_old_data_until_the_new_is_complete(tmp_path, sharded, tokenizer,
                                                                 tutorial, minilm_dir,
                                                                 wiki_leads, capsys):
    old = tmp_path / "data"
    shutil.copytree(sharded, old)
    before = _digests(old)
    assert "manifest.json" in before and sum(k.endswith(".safetensors") for k in before) >= 3
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    lonely = tmp_path / "lonely.txt"  # documents of one sentence: no sentence pair to make
    lonely.write_text("".join(f"Sentence number {i} stands alone.\n\n" for i in range(50)))
    with pytest.raises(ValueError, match=r"no training examples: read 1 file\(s\) and 0 doc"):
        create_pretraining_data(empty, old, tokenizer, overwrite=True, progress=False)
    with pytest.raises(ValueError, match=r"50 document\(s\), 0 of them usable.*50 document of"):
        create_pretraining_data(Corpus(lonely, format="lines"), old, tokenizer, overwrite=True,
                                workers=1, progress=False)
    with pytest.raises(RuntimeError, match="disk gone"):
        create_pretraining_data(FailingCorpus(tutorial), old, tokenizer, overwrite=True,
                                workers=1, progress=False)
    assert main(["data", "pretrain", str(empty), "--vocab", str(minilm_dir),
                 "--out", str(old), "--overwrite", "--no-progress"]) == 1
    assert "no training examples" in capsys.readouterr().err
    assert _digests(old) == before  # byte for byte, every file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty.txt", "lonely.txt"]

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": r["extract"]}) + "\n" for r in wiki_leads[:60]))
    manifest = create_pretraining_data(good, old, tokenizer, PretrainingConfig(dupe_factor=1),
                                       overwrite=True, workers=1, progress=False)
    assert manifest["complete"] and read_manifest(old) == manifest
    assert manifest["inputs"]["sources"] == [str(good)]
    PretrainingDataset(old).verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty.txt", "good.jsonl",
                                                           "lonely.txt"]


def test_a_run_that_makes_no_examples_fails_and_says_so(tmp_path, tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no training examples.*skipped: 1 empty file"):
        create_pretraining_data(empty, out, tokenizer, progress=False)
    manifest = read_manifest(out)
    assert manifest["complete"] is False
    assert manifest["status"].startswith("failed: ValueError: the input made no training")


def test_overwrite_never_takes_other_files_with_it(tmp_path, sharded, tokenizer, tutorial):
    old = tmp_path / "data"
    shutil.copytree(sharded, old)
    (old / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="also notes.txt"):
        create_pretraining_data(tutorial, old, tokenizer, overwrite=True, progress=False)
    assert (old / "notes.txt").read_text() == "keep me"


def test_command_line_fetch_vocab_train_and_pretrain(tmp_path, capsys, tutorial):
    assert main(["data", "fetch", "python-docs"]) == 0
    assert capsys.readouterr().out.strip() == str(fetch_corpus("python-docs"))

    vocab = tmp_path / "vocab"
    assert main(["vocab", "train", str(tutorial), "--out", str(vocab),
                 "--vocab-size", "2000"]) == 0
    assert capsys.readouterr().out.strip() == str(vocab / "vocab.txt")
    tokens = (vocab / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "python" in tokens and len(tokens) - 1 <= 2000

    out = tmp_path / "data"
    assert main(["data", "pretrain", str(tutorial), "--vocab", str(vocab), "--out", str(out),
                 "--max-seq-length", "64", "--dupe-factor", "2", "--whole-word-mask",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "documents:" in captured.err and "examples:" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["max_seq_length"] == 64
    assert manifest["settings"]["whole_word_mask"] is True
    assert manifest["tokenizer"]["vocab_sha256"] == sha256_of(vocab / "vocab.txt")
    dataset = PretrainingDataset(out)
    assert max(len(dataset[i]["input_ids"]) for i in range(len(dataset))) == 64
    assert dataset.manifest["token_dtype"] == "uint16"

    assert main(["data", "pretrain", str(tutorial), "--out", str(out)]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "pretrain", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "x")]) == 1
    assert "matches no file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
