"""Documents longer than the model's window: overlapping windows (``doc_stride``) for
classification, pairs, regression and tagging, checked against the windows run by hand.

The long texts are real: files of the Python documentation (``fetch_corpus("python-docs")``) and
Wall Street Journal sentences joined into one long "document".
"""

import json

import numpy as np
import pytest
import torch

from bertkit.data import fetch_corpus
from bertkit.finetune import evaluate, finetune, predict, run_model
from bertkit.model import BertForSequenceClassification
from bertkit.tasks import build_task
from bertkit.tasks.base import window_counts
from bertkit.tasks.classification import TextExample
from bertkit.tasks.datasets import resolve_data
from bertkit.tasks.tagging import TagExample

MAX_LENGTH, STRIDE = 64, 40


@pytest.fixture(scope="module")
def documents():
    """The first 1,500 characters (~300 tokens) of three real documentation files, and a short
    text."""
    folder = fetch_corpus("python-docs", quiet=True) / "tutorial"
    texts = [(folder / f"{name}.rst.txt").read_text(encoding="utf-8")[:1500]
             for name in ("appendix", "appetite", "interpreter")]
    return [*texts, "The Python tutorial, in one sentence."]


@pytest.fixture(scope="module")
def classifier(minilm_dir):
    torch.manual_seed(0)  # the fresh head
    return BertForSequenceClassification.from_pretrained(
        minilm_dir, id2label={0: "library", 1: "tutorial", 2: "howto"}).eval()


def windows_by_hand(tokenizer, text: str, pair: str | None = None):
    """[CLS] window [SEP] (pair [SEP]): windows of the text's tokens starting STRIDE apart,
    the last one ending at the text's end."""
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    tail = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(pair)) if pair else []
    room = MAX_LENGTH - 2 - (len(tail) + 1 if tail else 0)
    windows, start = [], 0
    while True:
        window = ids[start:start + room]
        windows.append(([101, *window, 102, *tail, *([102] if tail else [])],
                        [0] * (len(window) + 2) + [1] * (len(tail) + 1 if tail else 0)))
        if start + room >= len(ids):
            return windows
        start += STRIDE


def logits_by_hand(model, windows) -> np.ndarray:
    """Each window through the model on its own (no padding, no batching)."""
    rows = []
    with torch.no_grad():
        for ids, types in windows:
            rows.append(model(torch.tensor([ids]), token_type_ids=torch.tensor([types]))
                        ["logits"][0].double().numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def by_hand(documents, classifier, tokenizer):
    """Each document's windows, and their logits from the classifier one window at a time."""
    windows = [windows_by_hand(tokenizer, text) for text in documents]
    return windows, [logits_by_hand(classifier, w) for w in windows]


def through_the_task(task, model, tokenizer, examples, id2label):
    features = task.encode(examples, tokenizer)
    outputs = run_model(model, task, features, batch_size=16)
    return features, task.decode(examples, features, outputs, id2label)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_a_long_document_is_scored_as_the_combination_of_its_windows(
        pooling, documents, classifier, tokenizer, by_hand):
    task = build_task("classification", max_length=MAX_LENGTH, doc_stride=STRIDE,
                      window_pooling=pooling)
    examples = [TextExample(text) for text in documents]
    id2label = classifier.config.id2label
    features, predictions = through_the_task(task, classifier, tokenizer, examples, id2label)
    assert window_counts(features)["multi_window_documents"] == 3
    for index, prediction in enumerate(predictions):
        windows, logits = by_hand[0][index], by_hand[1][index]
        assert [(f["input_ids"], f["token_type_ids"]) for f in features
                if f["example"] == index] == windows
        combined = logits.mean(0) if pooling == "mean" else logits.max(0)
        expected = torch.tensor(combined).softmax(-1).numpy()
        got = [prediction["probabilities"][id2label[j]] for j in range(3)]
        np.testing.assert_allclose(got, expected, atol=2e-5)
        assert prediction["label"] == id2label[int(expected.argmax())]
    # the short document is one window, encoded as without windows
    assert features[-1]["input_ids"] == tokenizer(documents[-1])["input_ids"]


def test_pairs_window_the_first_text_and_repeat_the_second(documents, classifier, tokenizer):
    task = build_task("pair-classification", max_length=MAX_LENGTH, doc_stride=STRIDE)
    question = "How do I run a script?"
    examples = [TextExample(documents[2], question)]
    features, [prediction] = through_the_task(task, classifier, tokenizer, examples,
                                              classifier.config.id2label)
    windows = windows_by_hand(tokenizer, documents[2], question)
    assert len(windows) > 5
    assert [(f["input_ids"], f["token_type_ids"]) for f in features] == windows
    expected = torch.tensor(logits_by_hand(classifier, windows).mean(0)).softmax(-1).numpy()
    np.testing.assert_allclose(list(prediction["probabilities"].values()), expected, atol=2e-5)


def test_regression_averages_its_windows_scores(documents, minilm_dir, tokenizer):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=1).eval()
    task = build_task("regression", max_length=MAX_LENGTH, doc_stride=STRIDE)
    _, [prediction] = through_the_task(task, model, tokenizer, [TextExample(documents[1])],
                                       {0: "score"})
    by_hand = logits_by_hand(model, windows_by_hand(tokenizer, documents[1]))
    assert prediction["score"] == pytest.approx(float(by_hand.mean()), abs=2e-5)


def test_without_a_stride_long_documents_are_truncated_as_before(documents, tokenizer):
    for stride in (None, 0):
        task = build_task("classification", max_length=MAX_LENGTH, doc_stride=stride)
        features = task.encode([TextExample(documents[0])], tokenizer)
        assert len(features) == 1 and len(features[0]["input_ids"]) == MAX_LENGTH
    with pytest.raises(ValueError, match="doc_stride 0"):
        build_task("question-answering", doc_stride=0)


# -- tagging: each word from the window where it has the most context --------------------------


@pytest.fixture(scope="module")
def long_sentence():
    """Six real WSJ sentences as one tagged sequence of ~150 words (~190 tokens)."""
    sentences = build_task("token-classification").read(resolve_data("wsj-pos", "train"))[:6]
    return TagExample([w for s in sentences for w in s.words],
                      [t for s in sentences for t in s.tags])


def most_context_window(windows, token):
    """By hand: the window where ``token`` has the most tokens on its shorter side (then the
    longer window, then the first)."""
    best = None
    for k, (start, length) in enumerate(windows):
        if start <= token < start + length:
            score = (min(token - start, start + length - 1 - token), length)
            if best is None or score > best[0]:
                best = (score, k)
    return best[1]


def test_tagging_takes_each_word_from_its_most_context_window(long_sentence, tokenizer):
    task = build_task("token-classification", max_length=24, doc_stride=8)
    tags = sorted(set(long_sentence.tags))
    label2id = {t: i for i, t in enumerate(tags)}
    features = task.encode([long_sentence], tokenizer, label2id)
    encoding = tokenizer.backend.encode(long_sentence.words, is_pretokenized=True,
                                        add_special_tokens=False)
    word_ids = encoding.word_ids
    windows, start = [], 0
    for feature in features:  # consecutive slices of the tokens, 22 apart at most, 8 apart
        length = len(feature["input_ids"]) - 2
        assert feature["input_ids"] == [101, *encoding.ids[start:start + length], 102]
        windows.append((start, length))
        start += 8
    assert windows[-1][0] + windows[-1][1] == len(encoding.ids) and len(windows) > 15
    # training: only a word's first sub-token carries its tag, in every window that holds it
    for feature, (start, length) in zip(features, windows, strict=True):
        for position, token in enumerate(range(start, start + length), 1):
            first = token == 0 or word_ids[token - 1] != word_ids[token]
            tag = label2id[long_sentence.tags[word_ids[token]]] if first else -100
            assert feature["labels"][position] == tag
    # decoding: window k's logits vote for tag k (mod the tag count) at every position
    outputs = []
    for k, feature in enumerate(features):
        logits = np.zeros((len(feature["input_ids"]), len(tags)))
        logits[:, k % len(tags)] = 1.0
        outputs.append({"logits": logits})
    [prediction] = task.decode([long_sentence], features, outputs, dict(enumerate(tags)))
    firsts = {}
    for token, word in enumerate(word_ids):
        firsts.setdefault(word, token)
    expected = [tags[most_context_window(windows, firsts[w]) % len(tags)]
                for w in range(len(long_sentence.words))]
    assert prediction["tags"] == expected


# -- end to end: finetune, evaluate and predict with windows --------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_windowed_run_reports_windows_and_predict_and_evaluate_window_alike(tmp_path):
    folder = fetch_corpus("python-docs", quiet=True)
    rows = [{"text": path.read_text(encoding="utf-8")[:1500], "label": section}
            for section in ("tutorial", "howto") for path in sorted(
                (folder / section).glob("*.rst.txt"))[:6]]
    data = write_jsonl(tmp_path / "docs.jsonl", rows)
    results = finetune("classification", "tiny", data, data, data, tmp_path / "run", epochs=1,
                       batch_size=16, max_length=48, doc_stride=32, window_pooling="max",
                       progress=False)
    windows = results["windows"]["test"]
    assert windows["documents"] == 12 and windows["multi_window_documents"] == 12
    assert results["windows"]["train"] == windows and windows["windows"] > 60
    saved = json.loads((tmp_path / "run" / "best" / "task.json").read_text())
    assert (saved["doc_stride"], saved["window_pooling"]) == (32, "max")
    metrics = evaluate(tmp_path / "run", data, progress=False)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert len(predict(tmp_path / "run", data)) == 12
    # the per-class report and the confusion matrix come with every classification run
    assert set(results["test_per_class"]) == {"howto", "tutorial"}
    assert sum(map(sum, results["test_confusion"]["matrix"])) == 12
    assert (tmp_path / "run" / "confusion-test.png").is_file()


def test_a_windowed_tagger_trains_and_tags_every_word(tmp_path, long_sentence):
    lines = "".join(f"{w}\t{t}\n" for w, t in zip(long_sentence.words, long_sentence.tags,
                                                    strict=True))
    data = tmp_path / "long.conll"
    data.write_text(lines + "\n" + lines + "\n", encoding="utf-8")
    results = finetune("token-classification", "tiny", data, data, None, tmp_path / "run",
                       epochs=1, batch_size=16, max_length=32, doc_stride=16, progress=False)
    assert results["windows"]["train"]["multi_window_documents"] == 2
    [first, _] = predict(tmp_path / "run", data)
    assert len(first["tags"]) == len(long_sentence.words)
