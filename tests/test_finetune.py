"""The fine-tuning loop, evaluate, predict and the CLI, with tiny models on small real samples.

These check the machinery (files written, best checkpoint kept, results reproducible, labels by
name, clear errors); the accuracy of real runs is measured by the commands in the README.
"""

import importlib
import io
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.cli import main
from bertkit.finetune import evaluate, finetune, load_model, predict
from bertkit.settings import SettingsError
from bertkit.tasks import DataError, build_task
from bertkit.tasks.datasets import resolve_data
from bertkit.training import read_metrics

TINY = dict(max_length=32, batch_size=8, progress=False)


def sample(name: str, split: str, n: int, tmp_path):
    """The first ``n`` records of a built-in split, as a file of the same format."""
    source = resolve_data(name, split)
    target = tmp_path / f"{name}-{split}{source.suffix}"
    if source.suffix == ".json":  # SQuAD: the whole (small) file
        shutil.copy(source, target)
    elif source.suffix == ".conll":
        sentences = source.read_text(encoding="utf-8").split("\n\n")[:n]
        target.write_text("\n\n".join(sentences) + "\n\n", encoding="utf-8")
    else:
        lines = source.read_text(encoding="utf-8").splitlines()[:n]
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    train = sample("rt-polarity", "train", 48, tmp)
    validation = sample("rt-polarity", "validation", 16, tmp)
    test = sample("rt-polarity", "test", 16, tmp)
    out = tmp / "run"
    results = finetune("classification", "tiny", train, validation, test, out, seeds=[1, 2],
                       epochs=2, lr=5e-4, **TINY)
    return results, out, test, validation


def test_a_run_writes_model_logs_plot_and_results(classification_run):
    results, out, _, _ = classification_run
    for seed in (1, 2):
        run = out / f"seed-{seed}"
        for name in ("best/config.json", "best/model.safetensors", "best/vocab.txt",
                     "best/task.json", "metrics.jsonl", "curves.png", "results.json"):
            assert (run / name).is_file(), name
        config = json.loads((run / "best" / "config.json").read_text())
        assert sorted(config["id2label"].values()) == ["fresh", "rotten"]
        records = read_metrics(run / "metrics.jsonl")
        assert [r["epoch"] for r in records if "validation_accuracy" in r] == [1, 2]
        assert any("loss" in r and "lr" in r for r in records)
    summary = results["summary"]["test"]["accuracy"]
    accuracies = [run["test"]["accuracy"] for run in results["runs"]]
    assert summary["mean"] == pytest.approx(sum(accuracies) / 2)
    assert summary["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)


def test_the_best_epoch_is_kept_and_evaluate_reproduces_the_results(classification_run):
    results, out, test, validation = classification_run
    run = results["runs"][0]
    best = max(run["history"], key=lambda r: r["validation_accuracy"])
    assert run["best_epoch"] == best["epoch"]
    again = evaluate(out / "seed-1", validation, precision=run["precision"], progress=False)
    assert again["accuracy"] == best["validation_accuracy"] == run["validation"]["accuracy"]
    again = evaluate(out / "seed-1", test, precision=run["precision"], progress=False)
    assert {k: again[k] for k in run["test"]} == run["test"]


def test_predict_gives_label_names_and_probabilities(classification_run):
    _, out, _, _ = classification_run
    [first, second] = predict(out / "seed-1" / "best", ["A gorgeous, witty film.", "Dull."])
    assert first["label"] in ("fresh", "rotten") and first["text"] == "A gorgeous, witty film."
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert set(second["probabilities"]) == {"fresh", "rotten"}


def test_predict_reads_a_task_file_whatever_its_suffix_case(classification_run, tmp_path):
    """.ndjson, .JSONL (and .tab, .TSV) are the task's formats, as `evaluate` reads them: not
    raw lines whose JSON would be classified as text."""
    _, out, test, _ = classification_run
    expected = predict(out / "seed-1" / "best", test)
    for name in ("test.ndjson", "TEST.JSONL"):
        shutil.copy(test, tmp_path / name)
        assert predict(out / "seed-1" / "best", tmp_path / name) == expected
    assert expected[0]["text"] == json.loads(test.read_text().splitlines()[0])["text"]


def test_predict_on_a_run_of_several_seeds_names_one_to_give(classification_run, capsys):
    _, out, test, _ = classification_run
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(test)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert f"holds a run of 2 seeds: give one of them, e.g. {out / 'seed-1'}" in line


def test_cli_predict_output_into_new_folders_or_onto_a_folder(classification_run, tmp_path,
                                                              capsys):
    """--output's missing folders are made; a folder as --output is refused before the model
    is even loaded (it failed with [Errno 21] after every input was predicted)."""
    _, out, _, _ = classification_run
    model = str(out / "seed-1" / "best")
    (tmp_path / "in.txt").write_text("A triumph.\n\nA mess.\n", encoding="utf-8")
    target = tmp_path / "new" / "folders" / "out.jsonl"
    assert main(["predict", "--model", model, str(tmp_path / "in.txt"), "--output",
                 str(target)]) == 0
    assert [json.loads(row)["text"] for row in target.read_text().splitlines()] == [
        "A triumph.", "", "A mess."]
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "no-model"), str(tmp_path / "in.txt"),
                 "--output", str(tmp_path)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert f"--output {tmp_path} is a folder; give a file name" in line


class UnreadStdin:
    """Standard input that a test must not read: a user at a terminal would be typing."""

    @property
    def buffer(self):
        raise AssertionError("standard input read before --model was checked")


def test_cli_predict_checks_the_model_folder_before_reading_stdin(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr("sys.stdin", UnreadStdin())
    assert main(["predict", "--model", str(tmp_path / "no-model"), "-"]) == 1
    assert "no-model: no such folder" in capsys.readouterr().err


def test_the_last_partial_window_of_an_epoch_is_logged(tmp_path):
    """48 examples, batch 8: 6 steps an epoch; logging every 4 steps also logs steps 5-6."""
    train = sample("rt-polarity", "train", 48, tmp_path)
    finetune("classification", "tiny", train, None, None, tmp_path / "run", epochs=2,
             log_every=4, **TINY)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == [4, 6, 8, 12]  # epoch 1: steps 1-4, 5-6; epoch 2: 7-8, 9-12


def test_a_max_length_past_the_models_positions_is_refused_before_training(tmp_path):
    train = sample("rt-polarity", "train", 16, tmp_path)
    with pytest.raises(SettingsError, match="--max-length 600 is longer than the 512 positions"):
        finetune("classification", "tiny", train, None, None, tmp_path / "run", epochs=1,
                 **{**TINY, "max_length": 600})
    assert not (tmp_path / "run" / "best").exists()


def test_a_signal_during_the_final_evaluation_keeps_the_finished_run(tmp_path, monkeypatch):
    """Ctrl-C while the last seed is scored on test comes after its training: the results are
    complete and said to be, and --resume would find nothing left to do."""
    finetune_module = importlib.import_module("bertkit.finetune")
    original = finetune_module.FinetuneRun.finish

    def interrupted(run):
        os.kill(os.getpid(), signal.SIGINT)  # caught by finetune's GracefulStop: a flag
        return original(run)

    monkeypatch.setattr(finetune_module.FinetuneRun, "finish", interrupted)
    train = sample("rt-polarity", "train", 32, tmp_path)
    test = sample("rt-polarity", "test", 16, tmp_path)
    results = finetune("classification", "tiny", train, test, test, tmp_path / "run",
                       epochs=1, **TINY)
    assert results["stopped"] is False and "test" in results
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stopped"] is False and saved["test"] == results["test"]
    assert finetune_module._finished(tmp_path / "run") is not None


@pytest.mark.parametrize("mode", ["fine-tuning", "feature-based"])
def test_a_seed_stopped_mid_epoch_resumes_at_that_step_as_if_never_stopped(tmp_path,
                                                                         monkeypatch, mode):
    """Ctrl-C at step 5 of 6 (epoch 2 of 2, between two log lines): the seed saves its state
    and --resume trains step 6 only, ending with the uninterrupted run's weights, history,
    log and scores bit for bit."""
    training = importlib.import_module("bertkit.training")
    finetune_module = importlib.import_module("bertkit.finetune")
    train = sample("rt-polarity", "train", 24, tmp_path)
    test = sample("rt-polarity", "test", 8, tmp_path)
    options = dict(epochs=2, log_every=2, **TINY)
    if mode == "feature-based":
        options.update(feature_based=True, feature_cache=str(tmp_path / "cache"))

    def run(out, **flags):
        return finetune("classification", "tiny", train, test, test, tmp_path / out, **options,
                        **flags)

    whole = run("whole")
    original, steps = training.Trainer.step, []

    def stopping(trainer, batches):
        steps.append(len(steps) + 1)
        if len(steps) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # caught by finetune's GracefulStop: a flag
        return original(trainer, batches)

    monkeypatch.setattr(training.Trainer, "step", stopping)
    stopped = run("run")
    assert stopped["stopped"] is True and stopped["step"] == 5
    assert (tmp_path / "run" / finetune_module.RESUME_FILE).is_file()
    steps.clear()
    resumed = run("run", resume=True)
    assert steps == [1]  # step 6 alone: none redone
    assert not (tmp_path / "run" / finetune_module.RESUME_FILE).exists()
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]

    def timeless(history):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in history]

    assert timeless(resumed["history"]) == timeless(whole["history"])
    logs = [[{k: v for k, v in r.items() if k not in ("time", "epoch_seconds")}
             for r in read_metrics(tmp_path / out / "metrics.jsonl")] for out in ("run", "whole")]
    assert logs[0] == logs[1]
    best = [(tmp_path / out / "best").glob("*.safetensors") for out in ("run", "whole")]
    weights = [{p.name: p.read_bytes() for p in found} for found in best]
    assert weights[0] and weights[0] == weights[1]


def test_a_head_for_other_labels_needs_reinit(classification_run):
    _, out, _, _ = classification_run
    task = build_task("classification")
    checkpoint = out / "seed-1" / "best"
    with pytest.raises(ValueError, match=r"head for labels.*--reinit-head"):
        load_model(task, checkpoint, ["neg", "neu", "pos"], 30522)
    fresh = load_model(task, checkpoint, ["neg", "neu", "pos"], 30522, reinit_head=True)
    assert fresh.classifier.out_features == 3 and fresh.config.num_labels == 3
    # The same labels in another order keep the trained head and its own order.
    saved = json.loads((checkpoint / "config.json").read_text())["id2label"]
    kept = load_model(task, checkpoint, ["rotten", "fresh"], 30522)
    assert kept.config.id2label == {int(k): v for k, v in saved.items()}


def test_a_kept_head_trains_with_the_new_tasks_loss(classification_run, tmp_path):
    """A multi-label checkpoint whose labels are the data's keeps its head for single-label
    classification, but not its BCE loss (nor the reverse, nor for regression)."""
    _, out, test, _ = classification_run
    multi_label = tmp_path / "multi-label"
    load_model(build_task("multi-label"), out / "seed-1" / "best", ["fresh", "rotten"],
               30522).save_pretrained(multi_label)
    shutil.copy(out / "seed-1" / "best" / "vocab.txt", multi_label)
    single = load_model(build_task("classification"), multi_label, ["fresh", "rotten"], 30522)
    assert single.config.problem_type is None
    inputs = dict(input_ids=torch.tensor([[101, 2307, 102]]), labels=torch.tensor([1]))
    with torch.no_grad():
        output = single.eval()(**inputs)
    assert output.loss == pytest.approx(
        torch.nn.functional.cross_entropy(output.logits.float(), inputs["labels"]).item())
    assert load_model(build_task("multi-label"), out / "seed-1" / "best", ["fresh", "rotten"],
                      30522).config.problem_type == "multi_label_classification"
    assert load_model(build_task("regression"), multi_label, ["score"], 30522,
                      reinit_head=True).config.problem_type == "regression"

    finetune("classification", multi_label, test, None, None, tmp_path / "run", epochs=1,
             **TINY)
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert "problem_type" not in saved and sorted(saved["id2label"].values()) == ["fresh",
                                                                                 "rotten"]


def test_a_pretrain_run_folder_loads_and_random_init_keeps_only_its_shape(classification_run,
                                                                          tmp_path):
    _, out, _, _ = classification_run
    run = tmp_path / "pretrain-run"
    shutil.copytree(out / "seed-1" / "best", run / "model")  # `bertkit pretrain` keeps it there
    task = build_task("classification")
    trained = load_model(task, run, ["fresh", "rotten"], 30522)
    fresh = load_model(task, run, ["fresh", "rotten"], 30522, random_init=True)
    assert fresh.config.to_dict() == trained.config.to_dict()
    weights = "bert.encoder.layer.0.attention.self.query.weight"
    assert not trained.state_dict()[weights].equal(fresh.state_dict()[weights])


def test_dropout_replaces_the_checkpoints_and_leaves_the_weights(classification_run):
    _, out, _, _ = classification_run
    task = build_task("classification")
    checkpoint = out / "seed-1" / "best"
    saved = load_model(task, checkpoint, ["fresh", "rotten"], 30522)
    changed = load_model(task, checkpoint, ["fresh", "rotten"], 30522, dropout=0.0)
    assert saved.config.hidden_dropout_prob == 0.1
    assert changed.config.hidden_dropout_prob == changed.config.attention_probs_dropout_prob == 0
    assert all(t.equal(changed.state_dict()[k]) for k, t in saved.state_dict().items())
    changed.train()
    batch = torch.randint(1000, 2000, (2, 12))
    assert changed(batch).logits.equal(changed(batch).logits)  # no dropout left in training
    assert load_model(task, "tiny", ["a", "b"], 30522, dropout=0.3).config.hidden_dropout_prob \
        == 0.3


def test_unseen_validation_labels_stop_the_run_before_training(tmp_path):
    train = sample("rt-polarity", "train", 8, tmp_path)
    validation = tmp_path / "validation.jsonl"
    validation.write_text(json.dumps({"text": "fine", "label": "fresh"}) + "\n"
                          + json.dumps({"text": "meh", "label": "mixed"}) + "\n")
    with pytest.raises(DataError, match=r"validation.jsonl:2: label 'mixed'"):
        finetune("classification", "tiny", train, validation, out=tmp_path / "run", **TINY)
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("task, data, n, options", [
    ("regression", "vader-movies", 24, {}),
    ("pair-classification", "snli", 24, {}),
    ("token-classification", "wsj-pos", 12, {}),
    ("token-classification", "wnut16", 24, {}),
    ("question-answering", "squad-sample", 5, {"max_length": 96, "doc_stride": 32,
                                               "max_query_length": 32}),
    ("multiple-choice", "wiki-mc", 16, {}),
])
def test_every_task_family_trains_evaluates_and_predicts(task, data, n, options, tmp_path):
    path = sample(data, "train", n, tmp_path)
    settings = {**TINY, **options}
    results = finetune(task, "tiny", path, path, None, tmp_path / "run", epochs=1, **settings)
    model_task = build_task(task)
    if task == "token-classification":
        model_task.use_labels({0: "O", 1: "B-x"} if data == "wnut16" else {0: "NN"})
    assert set(results["validation"]) == set(model_task.metrics)
    predictions = predict(tmp_path / "run", path)
    assert len(predictions) == len(build_task(task, **options).read(path))
    first = predictions[0]
    if task == "question-answering":
        context = build_task(task).read(path)[0].context
        assert first["answer"] == context[first["start"]:first["end"]]
    elif task == "token-classification":
        assert len(first["tags"]) == len(first["words"])
        assert ("entities" in first) == (data == "wnut16")
        assert 0 < results["validation_baselines"]["most_frequent_tag_accuracy"] <= 1
    elif task == "regression":
        assert isinstance(first["score"], float)
    elif task == "multiple-choice":
        assert first["choice"] in first["choices"]
    else:
        assert first["label"] in ("entailment", "neutral", "contradiction")


def test_cli_finetune_evaluate_predict(tmp_path, monkeypatch, capsys):
    train = sample("rt-polarity", "train", 16, tmp_path)
    out = tmp_path / "cli-run"
    code = main(["finetune", "--task", "classification", "--model", "tiny", "--train",
                 str(train), "--validation", str(train), "--out", str(out), "--epochs", "1",
                 "--max-length", "32", "--batch-size", "8", "--no-progress"])
    assert code == 0 and (out / "best" / "task.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(train)]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 16
    monkeypatch.setattr("sys.stdin", io.StringIO("A triumph.\nA mess.\n"))
    assert main(["predict", "--model", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["A triumph.", "A mess."]
    assert main(["finetune", "--task", "classification", "--model", "tiny", "--train",
                 str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    shutil.rmtree(out)


def test_cli_predict_leaves_words_cut_off_by_max_length_untagged(tmp_path, monkeypatch, capsys,
                                                                caplog):
    """`bertkit predict` on a tagger: the words past --max-length were never seen, so their tags
    are null, not O, and the warning counts them and names --doc-stride."""
    train = sample("wnut16", "train", 8, tmp_path)
    out = tmp_path / "tagger"
    finetune("token-classification", "tiny", train, None, None, out, epochs=1, **TINY)
    line = "From Green Newsfeed : AHFA extends deadline for Sage Award to Nov . 5 " * 3
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\nA short line .\n"))
    capsys.readouterr()
    caplog.clear()
    assert main(["predict", "--model", str(out)]) == 0
    long, short = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    seen = long["tags"].index(None)
    assert 0 < seen < 30 and long["tags"][seen:] == [None] * (42 - seen)
    assert None not in short["tags"] and len(short["tags"]) == 4
    assert f"{42 - seen} word(s) of 1 sentence(s)" in caplog.text
    assert "--doc-stride (e.g. 16)" in caplog.text


def run_finetune_cli(*args, wait=True):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bertkit", "finetune", "--task", "classification", "--model",
           "tiny", "--max-length", "32", "--batch-size", "8", "--lr", "5e-4", "--log-every", "1",
           "--no-progress", "--precision", "fp32", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if wait:
        process.communicate(timeout=600)
    return process


def test_ctrl_c_stops_every_seed_and_resume_finishes_as_an_uninterrupted_run(tmp_path):
    import signal
    import time

    train = sample("rt-polarity", "train", 400, tmp_path)
    test = sample("rt-polarity", "test", 40, tmp_path)
    common = ["--train", train, "--validation", test, "--test", test, "--seeds", "1,2",
              "--epochs", 2]
    whole = run_finetune_cli(*common, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr.read()[-2000:]
    out = tmp_path / "stopped"
    process = run_finetune_cli(*common, "--out", out, wait=False)
    deadline = time.time() + 300
    while not (out / "seed-2" / "metrics.jsonl").is_file():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"--resume --out {out}" in stderr
    stopped = json.loads((out / "results.json").read_text())
    assert stopped["stopped"] is True and len(stopped["runs"]) == 2
    assert stopped["runs"][1]["stopped"] is True  # not averaged as if finished
    assert "test" not in stopped["runs"][1]
    first_seed = (out / "seed-1" / "results.json").stat().st_mtime_ns

    resumed = run_finetune_cli("--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr.read()[-2000:]
    assert (out / "seed-1" / "results.json").stat().st_mtime_ns == first_seed  # not redone
    finished = json.loads((out / "results.json").read_text())
    expected = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert finished["stopped"] is False
    assert finished["summary"] == expected["summary"]
    def timeless(run):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in run["history"]]

    for got, want in zip(finished["runs"], expected["runs"], strict=True):
        assert got["test"] == want["test"] and timeless(got) == timeless(want)


def test_an_earlier_run_is_kept_until_a_rerun_succeeds(tmp_path, capsys):
    train = sample("rt-polarity", "train", 16, tmp_path)
    out = tmp_path / "run"
    flags = ["finetune", "--task", "classification", "--model", "tiny", "--train", str(train),
             "--validation", str(train), "--out", str(out), "--epochs", "1", "--max-length",
             "32", "--batch-size", "8", "--no-progress"]
    assert main(flags) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(flags) == 1  # no --overwrite: refused, nothing touched
    assert "holds an earlier fine-tuning run: pass --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine", "tag": "fresh"}) + "\n")
    assert main([*flags, "--overwrite", "--train", str(bad)]) == 1  # fails after starting
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    assert main([*flags, "--overwrite", "--epochs", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2
    assert not list(tmp_path.glob(".run*"))  # the staging folder was swapped in
    assert results["out"] == str(out)  # where the run is, not the folder it was written in
    assert [p for p in out.rglob("*") if p.is_file() and b".run.new" in p.read_bytes()] == []
    assert re.search(r"^bertkit: epoch 2, step 4, \d+\.\d s, validation_accuracy 0\.\d{4}, ",
                     capsys.readouterr().err, re.MULTILINE)  # the epoch said once


def test_resume_refuses_a_changed_setting(tmp_path, capsys):
    train = sample("rt-polarity", "train", 16, tmp_path)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", "tiny", "--train",
                 str(train), "--out", str(out), "--epochs", "1", "--max-length", "32",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--resume", "--out", str(out), "--lr", "1e-3"]) == 1
    assert "--lr 0.001 (the run has 3e-05)" in capsys.readouterr().err
    changed = tmp_path / "more.json"
    changed.write_text('{"epochs": 10}')  # a settings file may not change the run either
    assert main(["finetune", "--resume", "--out", str(out), "--settings", str(changed)]) == 1
    assert "--epochs 10 (the run has 1)" in capsys.readouterr().err
    # the same folder spelled otherwise, and the progress bar, are not changes
    assert main(["finetune", "--resume", "--out", f"{out}/", "--no-progress", "--epochs",
                 "1", "--train", os.path.relpath(train)]) == 0


def test_search_keeps_the_best_point_on_validation_and_scores_test_once(tmp_path, monkeypatch):
    import bertkit.search as search_module
    from bertkit.finetune import evaluate as real_evaluate

    train = sample("rt-polarity", "train", 24, tmp_path)
    validation = sample("rt-polarity", "validation", 16, tmp_path)
    test = sample("rt-polarity", "test", 16, tmp_path)
    tested = []

    def counting_evaluate(model_dir, data, **options):
        tested.append((Path(model_dir), data))
        return real_evaluate(model_dir, data, **options)

    monkeypatch.setattr(search_module, "evaluate", counting_evaluate)
    out = tmp_path / "search"
    results = finetune("classification", "tiny", train, validation, test, out, search=True,
                       lr=[5e-4, 1e-6], epochs=[1, 2], **TINY)
    rows = results["search"]
    assert [(r["lr"], r["epochs"]) for r in rows] == [(5e-4, 1), (5e-4, 2), (1e-6, 1), (1e-6, 2)]
    best = max(rows, key=lambda r: r["score"])
    assert results["chosen"] == best
    for row in rows:  # each point's score is its own best epoch on validation
        point = json.loads((out / "points" / row["point"] / "results.json").read_text())
        assert row["score"] == point["validation"]["accuracy"] and "test" not in point
    assert tested == [(out / "best", str(test))]  # test: once, for the chosen point
    chosen = json.loads((out / "points" / best["point"] / "best" / "config.json").read_text())
    assert json.loads((out / "best" / "config.json").read_text()) == chosen
    assert results["test"] == evaluate(out, test, progress=False)
    for name in ("search.json", "search.csv", "search.png"):
        assert (out / name).is_file()

    # An interrupted search continues without redoing finished points.
    stamps = {r["point"]: (out / "points" / r["point"] / "results.json").stat().st_mtime_ns
              for r in rows}
    shutil.rmtree(out / "points" / rows[-1]["point"])
    again = finetune(resume=True, task="classification", model="tiny", train=train,
                     validation=validation, test=test, out=out, search=True, lr=[5e-4, 1e-6],
                     epochs=[1, 2], **TINY)
    assert [r["point"] for r in again["search"]] == [r["point"] for r in rows]
    for row in rows[:-1]:
        assert (out / "points" / row["point"] / "results.json").stat().st_mtime_ns == \
            stamps[row["point"]]


def test_patience_stops_where_the_validation_history_says(tmp_path):
    train = sample("rt-polarity", "train", 24, tmp_path)
    validation = sample("rt-polarity", "validation", 16, tmp_path)
    # lr 0: the model never changes, so no epoch after the first is better.
    results = finetune("classification", "tiny", train, validation, None, tmp_path / "run",
                       epochs=6, lr=1e-12, patience=2, **TINY)
    scores = [r["validation_accuracy"] for r in results["history"]]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert len(scores) == best + 1 + 2  # stopped two epochs after the last improvement
    assert results["best_epoch"] == best + 1


def test_class_weights_change_the_loss_exactly_as_by_hand(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    from bertkit.finetune import WeightedLoss, class_weights

    labels = [0, 0, 0, 1, 2, 2]
    balanced = class_weights("balanced", labels, {"a": 0, "b": 1, "c": 2})
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    np.testing.assert_allclose(balanced.numpy(), expected, rtol=1e-6)
    given = tmp_path / "weights.json"
    given.write_text(json.dumps({"c": 3.0, "a": 1.0, "b": 0.5}))
    assert class_weights(str(given), labels, {"a": 0, "b": 1, "c": 2}).tolist() == [1, 0.5, 3]

    model = load_model(build_task("classification"), "tiny", ["a", "b", "c"], 30522).eval()
    batch = {"input_ids": torch.randint(1000, 2000, (6, 10)),
             "labels": torch.tensor(labels)}
    loss = WeightedLoss(model, balanced)(**batch)["loss"]
    logits = model(batch["input_ids"]).logits
    per_example = -logits.log_softmax(-1)[torch.arange(6), batch["labels"]]
    w = balanced[batch["labels"]]
    torch.testing.assert_close(loss, (w * per_example).sum() / w.sum())
    assert not torch.isclose(loss, per_example.mean())  # the weights changed it


def test_a_weighted_run_trains_and_saves_the_plain_model(tmp_path):
    train = sample("rt-polarity", "train", 24, tmp_path)
    out = tmp_path / "run"
    finetune("classification", "tiny", train, train, None, out, epochs=1,
             class_weights="balanced", **TINY)
    assert predict(out, ["Fine."])[0]["label"] in ("fresh", "rotten")


def test_class_weights_for_a_regression_task_are_a_settings_error(tmp_path):
    train = sample("vader-movies", "train", 24, tmp_path)
    with pytest.raises(SettingsError, match="weighs the classes of a classification task"):
        finetune("regression", "tiny", train, None, None, tmp_path / "run", epochs=1,
                 class_weights="balanced", **TINY)


def test_a_search_checks_its_test_file_before_running_the_grid(tmp_path):
    train = sample("rt-polarity", "train", 24, tmp_path)
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "Fine.", "label": "fresh"}\n{"text": "Meh.", "label": "meh"}\n')
    with pytest.raises(DataError, match="meh"):
        finetune("classification", "tiny", train, train, test, tmp_path / "run", search=True,
                 epochs=1, **TINY)
    assert not (tmp_path / "run" / "points").exists()  # no grid point ran


def test_a_search_point_on_built_in_data_has_no_test_split(tmp_path):
    # A built-in data set gives every split; a grid point must not get test back from it.
    from bertkit.finetune import FinetuneSettings
    from bertkit.search import point_settings

    settings = FinetuneSettings(data="rt-polarity", model="tiny", out=str(tmp_path), search=True)
    assert settings.test == "rt-polarity"
    point = point_settings(settings, {"lr": 5e-5, "batch_size": 16, "epochs": 2}, 1, tmp_path)
    assert point.test is None and not point.search
    assert (point.train, point.validation, point.task) == ("rt-polarity", "rt-polarity",
                                                          settings.task)


def test_plot_draws_a_fine_tuning_run_as_fine_tuning_does(classification_run, tmp_path, capsys):
    """Its validation curves, not pre-training's layout (3 panels, one of them empty) over the
    curves.png the run wrote; a folder of seeds names the runs inside it."""
    from matplotlib.image import imread

    _, out, _, _ = classification_run
    run = tmp_path / "seed-1"
    shutil.copytree(out / "seed-1", run)
    assert main(["plot", str(run)]) == 0
    assert imread(run / "curves.png").shape == imread(out / "seed-1" / "curves.png").shape
    assert main(["plot", str(out)]) == 1
    assert f"it holds the runs {out}/seed-1, {out}/seed-2: plot one of them" in \
        capsys.readouterr().err


def test_plot_leaves_out_a_last_line_cut_by_a_crash_and_names_a_faulty_one(classification_run,
                                                                         tmp_path, capsys):
    _, out, _, _ = classification_run
    lines = (out / "seed-1" / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "curves.png").is_file()
    (tmp_path / "metrics.jsonl").write_text(lines[0][:20] + "\n" + "".join(lines[1:]))
    assert main(["plot", str(tmp_path)]) == 1
    assert f"{tmp_path}/metrics.jsonl:1 is not a JSON record" in capsys.readouterr().err


def test_a_diverging_run_says_what_to_change_and_search_takes_one_seed(tmp_path, capsys):
    """The trainer's own advice (checkpoints, skip_nonfinite) is pre-training's: fine-tuning
    names the seed, the epoch and its learning rate. --search with two seeds used the first
    alone, silently; and the summary of one finished seed has no spread (std null, not 0)."""
    train = sample("rt-polarity", "train", 16, tmp_path)
    flags = ["finetune", "--task", "classification", "--model", "tiny", "--train", str(train),
             "--epochs", "1", "--max-length", "32", "--no-progress"]
    assert main([*flags, "--out", str(tmp_path / "nan"), "--lr", "1e30", "--batch-size", "2",
                 "--warmup", "0"]) == 1
    error = capsys.readouterr().err
    assert "the loss became NaN or infinite in epoch 1 of seed 1" in error
    assert "lower the learning rate (this run's: 1e+30)" in error and "checkpoint" not in error
    assert main([*flags, "--out", str(tmp_path / "grid"), "--validation", str(train),
                 "--search", "--seeds", "5,9"]) == 1
    assert "give one (e.g. --seeds 5 --restarts 2), not 2" in capsys.readouterr().err
    summary = importlib.import_module("bertkit.finetune").summarise(
        [{"test": {"accuracy": 0.5}}, {"seed": 2, "stopped": True}])
    assert summary == {"test": {"accuracy": {"mean": 0.5, "std": None}}}
