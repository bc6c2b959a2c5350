"""Multi-label classification: reading label sets, refusing unseen labels, the tuned threshold
and the metrics held to scikit-learn's, on real data.

The data is the built-in ``wiki-tags`` set, derived from real labels: each Wikipedia lead is
labelled with its topic (Wikipedia's vital-article topic) plus each of eight words (american,
french, city, capital, country, species, chemical, language) found in the article's short
description, both written by Wikipedia editors. Real probabilities for the metric checks come
from scikit-learn's one-vs-rest logistic regression on tf-idf features of 1,500 training leads.
"""

import csv
import json

import numpy as np
import pytest
import torch

from bertkit.finetune import evaluate, finetune, load_model, predict
from bertkit.tasks import DataError, build_task
from bertkit.tasks.datasets import resolve_data
from bertkit.tasks.multilabel import THRESHOLDS


@pytest.fixture(scope="module")
def task():
    return build_task("multi-label")


@pytest.fixture(scope="module")
def wiki_tags(task):
    return {split: task.read(resolve_data("wiki-tags", split)) for split in ("train", "validation")}


@pytest.fixture(scope="module")
def predicted(wiki_tags, task):
    """(labels, validation predictions in the task's format) from a tf-idf logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    train = wiki_tags["train"][:1500]
    labels = task.label_names(wiki_tags["train"])
    vectorizer = TfidfVectorizer(min_df=2, sublinear_tf=True)
    x = vectorizer.fit_transform([e.text for e in train])
    y = np.array([[name in e.label for name in labels] for e in train], dtype=int)
    model = OneVsRestClassifier(LogisticRegression(C=10, max_iter=500)).fit(x, y)
    probabilities = model.predict_proba(vectorizer.transform(
        [e.text for e in wiki_tags["validation"]]))
    return labels, [{"labels": [n for n, p in zip(labels, row, strict=True) if p >= 0.5],
                     "probabilities": dict(zip(labels, map(float, row), strict=True))}
                    for row in probabilities]


def gold_matrix(examples, labels):
    return np.array([[name in e.label for name in labels] for e in examples], dtype=int)


def test_lists_and_separated_columns_read_alike(tmp_path, task):
    every = [json.loads(line) for line in
             resolve_data("wiki-tags", "train").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in every if len(r["labels"]) > 1][:10] + every[:10]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, delimiter in (("a.csv", ","), ("a.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["text", "labels"])
            writer.writerows([r["text"], "|".join(r["labels"])] for r in rows)
    semicolon = tmp_path / "b.csv"
    with open(semicolon, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "labels"],
                                 *([r["text"], " ; ".join(r["labels"])] for r in rows)])
    read = [[(e.text, e.label) for e in reader.read(tmp_path / name)]
            for reader, name in ((task, "a.jsonl"), (task, "a.csv"), (task, "a.tsv"),
                                 (build_task("multi-label", label_separator=";"), "b.csv"))]
    assert read[0] == read[1] == read[2] == read[3]
    assert read[0] == [(r["text"], tuple(sorted(r["labels"]))) for r in rows]


def test_unseen_and_malformed_labels_are_named_by_file_and_line(tmp_path, task):
    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps({"text": "Paris is a city.", "labels": ["Geography", "city"]})
                    + "\n" + json.dumps({"text": "A mystery.", "labels": ["city", "Cryptids"]})
                    + "\n")
    with pytest.raises(DataError, match=r"validation.jsonl:2: label 'Cryptids' does not occur "
                                        r"in the training labels"):
        task.check_labels(task.read(path), {"Geography": 0, "city": 1})
    path.write_text(json.dumps({"text": "x", "labels": "Geography||city"}) + "\n")
    with pytest.raises(DataError, match=r"validation.jsonl:1: labels 'Geography\|\|city' hold "
                                        "an empty name"):
        task.read(path)
    path.write_text(json.dumps({"text": "x", "labels": {"Geography": 1}}) + "\n")
    with pytest.raises(DataError, match=r"validation.jsonl:1: labels .* are neither a JSON list"):
        task.read(path)


def test_an_unseen_validation_label_stops_the_run_before_training(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "labels": ls}) + "\n" for t, ls in (
        ("Paris is the capital of France.", ["Geography", "capital"]),
        ("Marie Curie was a chemist.", ["People"]))))
    validation = tmp_path / "validation.jsonl"
    validation.write_text(json.dumps({"text": "Oslo.", "labels": ["capital"]}) + "\n"
                          + json.dumps({"text": "Jazz.", "labels": "Arts|People"}) + "\n")
    with pytest.raises(DataError, match=r"validation.jsonl:2: label 'Arts' does not occur"):
        finetune("multi-label", "tiny", train, validation, out=tmp_path / "run",
                 max_length=32, progress=False)
    assert not (tmp_path / "run" / "best").exists()


def test_metrics_and_per_label_report_equal_sklearns(wiki_tags, predicted, task):
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    labels, predictions = predicted
    task.use_labels(dict(enumerate(labels)))
    examples = wiki_tags["validation"]
    gold, guessed = gold_matrix(examples, labels), np.array(
        [[name in p["labels"] for name in labels] for p in predictions], dtype=int)
    assert 0 < guessed.sum() < gold.sum()  # a real, imperfect predictor
    metrics = task.score(examples, predictions)
    assert metrics == pytest.approx({
        "micro_f1": f1_score(gold, guessed, average="micro", zero_division=0),
        "macro_f1": f1_score(gold, guessed, average="macro", zero_division=0),
        "subset_accuracy": accuracy_score(gold, guessed)})
    table = classification_report(gold, guessed, target_names=labels, output_dict=True,
                                  zero_division=0)
    report = task.report(examples, predictions)["per_class"]
    assert list(report) == labels
    for name in labels:
        assert report[name] == pytest.approx({
            "precision": table[name]["precision"], "recall": table[name]["recall"],
            "f1": table[name]["f1-score"], "support": table[name]["support"]})


def test_the_tuned_threshold_is_the_best_micro_f1_of_the_grid(wiki_tags, predicted):
    from sklearn.metrics import f1_score

    labels, predictions = predicted
    task = build_task("multi-label")
    examples = wiki_tags["validation"]
    gold = gold_matrix(examples, labels)
    probabilities = np.array([[p["probabilities"][n] for n in labels] for p in predictions])
    by_sklearn = {t: f1_score(gold, probabilities >= t, average="micro") for t in THRESHOLDS}
    tuned = task.tune(examples, predictions)
    assert tuned == {"threshold": max(by_sklearn, key=by_sklearn.get)}
    assert tuned["threshold"] != 0.5 and by_sklearn[tuned["threshold"]] > by_sklearn[0.5]
    # decoding applies it: a label is predicted when its probability reaches the threshold
    logits = np.log(probabilities) - np.log1p(-probabilities)
    decoded = task.decode(examples, [None] * len(examples), [{"logits": row} for row in logits],
                          dict(enumerate(labels)))
    assert [d["labels"] for d in decoded] == [
        [n for n, p in zip(labels, row, strict=True) if p >= tuned["threshold"] - 1e-6]
        for row in probabilities]
    assert build_task("multi-label", **task.options()).threshold == tuned["threshold"]


def test_decode_decides_on_the_probabilities_it_shows():
    """A probability of 0.3499996 is shown as 0.35; at threshold 0.35 it is chosen, as
    `decide_again` and `tune` (which read the shown probabilities) choose it."""
    task = build_task("multi-label")
    task.threshold = 0.35
    logit = float(np.log(0.3499996 / (1 - 0.3499996)))
    [decoded] = task.decode([None], [None], [{"logits": np.array([logit, 3.0])}],
                            {0: "a", 1: "b"})
    assert decoded["probabilities"]["a"] == 0.35
    assert decoded["labels"] == ["a", "b"] == task.decide_again([decoded])[0]["labels"]


def test_a_run_trains_with_bce_tunes_the_threshold_and_predicts_label_sets(tmp_path):
    rows = {split: resolve_data("wiki-tags", split).read_text(encoding="utf-8").splitlines()
            for split in ("train", "validation")}
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("\n".join(rows["train"][:64]) + "\n")
    seen = {n for line in rows["train"][:64] for n in json.loads(line)["labels"]}
    validation.write_text("\n".join([line for line in rows["validation"]
                                     if set(json.loads(line)["labels"]) <= seen][:24]) + "\n")
    task = build_task("multi-label")
    labels = task.label_names(task.read(train))
    model = load_model(task, "tiny", labels, 30522)
    assert model.config.problem_type == "multi_label_classification"
    batch = task.collate(task.encode(task.read(train)[:4], _tokenizer(), model.config.label2id))
    out = model(**batch)
    assert out["loss"].item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        out["logits"], batch["labels"]).item())

    results = finetune("multi-label", "tiny", train, validation, validation, tmp_path / "run",
                       epochs=2, batch_size=16, max_length=64, lr=1e-3, progress=False)
    threshold = results["tuned"]["threshold"]
    assert threshold in THRESHOLDS
    # Every epoch was scored at the threshold tuned on it; the best one's is the one kept.
    best = results["history"][results["best_epoch"] - 1]
    assert all(r["threshold"] in THRESHOLDS for r in results["history"])
    assert best["threshold"] == threshold
    assert best["validation_micro_f1"] == pytest.approx(results["validation"]["micro_f1"])
    saved = json.loads((tmp_path / "run" / "best" / "task.json").read_text())
    assert saved["threshold"] == threshold and saved["task"] == "multi-label"
    assert set(results["test"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    assert set(results["test_per_class"]) == set(labels)
    assert evaluate(tmp_path / "run", validation, progress=False)["micro_f1"] == pytest.approx(
        results["test"]["micro_f1"])
    [first, *_] = predict(tmp_path / "run", ["Paris is the capital and largest city of France."])
    assert set(first) == {"text", "labels", "probabilities"} and set(first["probabilities"]) \
        == set(labels)
    assert first["labels"] == [n for n, p in first["probabilities"].items() if p >= threshold]


def _tokenizer():
    from bertkit.tokenizer import BertTokenizer

    return BertTokenizer.from_pretrained("all-minilm-l6-v2")


def test_feature_based_multi_label_learns_real_topics_far_above_the_most_frequent_label(
        tmp_path):
    rows = {split: resolve_data("wiki-tags", split).read_text(encoding="utf-8").splitlines()
            for split in ("train", "validation")}
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("\n".join(rows["train"][:400]) + "\n")
    seen = {n for line in rows["train"][:400] for n in json.loads(line)["labels"]}
    kept = [line for line in rows["validation"] if set(json.loads(line)["labels"]) <= seen][:120]
    validation.write_text("\n".join(kept) + "\n")
    results = finetune("multi-label", "all-minilm-l6-v2", train, validation, validation,
                       tmp_path / "run", feature_based=True, epochs=15, batch_size=32,
                       feature_cache=tmp_path / "cache", progress=False)

    # The baseline: every lead gets the training split's most frequent label.
    task = build_task("multi-label")
    examples = task.read(validation)
    frequent = max(seen, key=lambda n: sum(n in json.loads(line)["labels"] for line in
                                           rows["train"][:400]))
    gold = [set(e.label) for e in examples]
    hits = sum(frequent in g for g in gold)
    baseline = 2 * hits / (len(gold) + sum(map(len, gold)))
    assert results["test"]["micro_f1"] > 2 * baseline
    assert results["feature_based"]["task_model"]["problem_type"] == "multi_label_classification"
    [first] = predict(tmp_path / "run", [examples[0].text])
    assert first["labels"] == [n for n, p in first["probabilities"].items()
                               if p >= results["tuned"]["threshold"]]


def test_a_new_head_starts_at_the_label_priors_and_a_kept_head_keeps_its_own(tmp_path, wiki_tags,
                                                                             task):
    examples = wiki_tags["train"][:300]
    names = task.label_names(examples)
    bias = task.output_bias(examples, names)
    shares = np.array([(sum(n in e.label for e in examples) + 0.5) / (len(examples) + 1)
                       for n in names])
    np.testing.assert_allclose(torch.sigmoid(torch.tensor(bias)).numpy(), shares, rtol=1e-6)

    model = load_model(task, "all-minilm-l6-v2", names, 30522, output_bias=bias).eval()
    torch.testing.assert_close(model.classifier.bias, torch.tensor(bias))
    # On real leads the untrained head's probabilities are the label frequencies, not 0.5.
    tokenizer = _tokenizer()
    batch = task.collate(task.encode(examples[:64], tokenizer, model.config.label2id))
    with torch.no_grad():
        probabilities = model(batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"]).logits.sigmoid().mean(0).numpy()
    np.testing.assert_allclose(probabilities, shares, atol=0.05)

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    kept = load_model(task, tmp_path, names, 30522, output_bias=[0.0] * len(names))
    torch.testing.assert_close(kept.classifier.bias, torch.tensor(bias))
    fresh = load_model(task, tmp_path, names, 30522, reinit_head=True, output_bias=bias[::-1])
    torch.testing.assert_close(fresh.classifier.bias, torch.tensor(bias[::-1]))
