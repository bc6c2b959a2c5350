"""Task families: reading, encoding, decoding and scoring, checked exactly on small real samples.

Metric values are computed by hand (and against sklearn/seqeval where they exist); label
alignment, QA windows and span mapping are checked token by token.
"""

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.finetune import load_model
from bertkit.tasks import DataError, build_task
from bertkit.tasks.base import length_multiple
from bertkit.tasks.classification import classification_metrics, regression_metrics
from bertkit.tasks.datasets import BUILTINS, builtin_splits, derived_questions, resolve_data
from bertkit.tasks.qa import (
    is_max_context,
    normalize_answer,
    passage_windows,
    squad_metrics,
    token_f1,
)
from bertkit.tasks.tagging import (
    TagExample,
    bio_entities,
    first_subtoken_labels,
    most_frequent_tag_accuracy,
)


@pytest.fixture(scope="module")
def rt_rows():
    """The first 12 snippets of the saved rt-polarity training split."""
    lines = resolve_data("rt-polarity", "train").read_text(encoding="utf-8").splitlines()[:12]
    return [json.loads(line) for line in lines]


# -- classification, pairs, regression ------------------------------------------------------


def test_the_same_rows_read_alike_from_jsonl_csv_and_tsv(tmp_path, rt_rows):
    import csv

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rt_rows))
    for name, delimiter in (("a.csv", ","), ("a.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["label", "text"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rt_rows)
    task = build_task("classification")
    read = {name: [(e.text, e.label) for e in task.read(tmp_path / name)]
            for name in ("a.jsonl", "a.csv", "a.tsv")}
    assert read["a.jsonl"] == read["a.csv"] == read["a.tsv"]
    assert read["a.jsonl"] == [(r["text"], r["label"]) for r in rt_rows]


def test_bad_rows_are_named_by_file_and_line(tmp_path, rt_rows):
    task = build_task("classification")
    path = tmp_path / "bad.jsonl"
    rows = [dict(rt_rows[0]), {"review": rt_rows[1]["text"], "label": "fresh"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl:2: no text field 'text'.*'review'"):
        task.read(path)
    path.write_text(json.dumps({"text": "  ", "label": "fresh"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'text' is empty"):
        task.read(path)
    path.write_text(json.dumps({"text": "good", "label": "fresh"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        task.read(path)
    path.write_text(json.dumps({"text": "good", "label": "meh"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: label 'meh' does not occur"):
        task.check_labels(task.read(path), {"fresh": 0, "rotten": 1})
    regression = build_task("regression")
    path.write_text(json.dumps({"text": "good", "label": "high"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: regression label 'high' is not a number"):
        regression.read(path)
    path.write_text('{"text": "good", "label": 1%s}\n' % ("0" * 400))  # float() overflows
    with pytest.raises(DataError, match=r"bad.jsonl:1: regression label 10+\.\.\.0+ is not finite"):
        regression.read(path)
    path.write_text('{"text": "good", "label": "fresh"}\n{"text": "x", "label": 1%s}\n'
                    % ("0" * 5000))  # past the digits Python converts (4300)
    with pytest.raises(DataError, match=r"bad.jsonl:2: a number of more than 4300 digits"):
        task.read(path)


def test_pairs_are_packed_with_segment_ids_and_truncated_with_a_warning(tokenizer, caplog):
    task = build_task("pair-classification", max_length=16)
    snli = task.read(resolve_data("snli", "test"))[:2]
    features = task.encode(snli, tokenizer, {"contradiction": 0, "entailment": 1, "neutral": 2})
    first = features[0]
    a = tokenizer.tokenize(snli[0].text)
    b = tokenizer.tokenize(snli[0].text_pair)
    assert len(a) + len(b) + 3 > 16  # long enough to need truncation
    tokens = tokenizer.convert_ids_to_tokens(first["input_ids"])
    assert len(tokens) == 16 and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    sep = tokens.index("[SEP]")
    assert first["token_type_ids"] == [0] * (sep + 1) + [1] * (15 - sep)
    # Google's rule: the longer segment loses tokens from its end until the pair fits.
    kept_a, kept_b = tokens[1:sep], tokens[sep + 1:-1]
    assert kept_a == a[: len(kept_a)] and kept_b == b[: len(kept_b)]
    assert first["labels"] == {"contradiction": 0, "entailment": 1, "neutral": 2}[snli[0].label]
    assert "truncated" in caplog.text and "test.jsonl:1" in caplog.text


def test_classification_metrics_by_hand_and_against_sklearn():
    gold = ["a", "a", "b", "b", "b"]
    predicted = ["a", "b", "b", "b", "a"]
    metrics = classification_metrics(gold, predicted)
    # a: precision 1/2, recall 1/2; b: precision 2/3, recall 2/3.
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # MCC with b positive: TP 2, TN 1, FP 1, FN 1 -> (2*1 - 1*1) / sqrt(3*3*2*2)
    assert metrics["mcc"] == pytest.approx(1 / 6)


def test_regression_metrics_by_hand():
    metrics = regression_metrics([1, 2, 3, 4], [1, 3, 2, 4])
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): covariance 4, variances 5
    assert metrics["pearson"] == pytest.approx(0.8)
    assert metrics["spearman"] == pytest.approx(0.8)  # the values are their own ranks
    assert metrics["mse"] == pytest.approx(0.5)


def test_per_class_report_and_confusion_matrix_equal_sklearns_on_real_predictions():
    """wiki-topics validation (11 topics) predicted by a tf-idf logistic regression trained on
    1,500 training leads: a real, imperfect classifier."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import classification_report, confusion_matrix

    task = build_task("classification")
    train = task.read(resolve_data("wiki-topics", "train"))[:1500]
    examples = task.read(resolve_data("wiki-topics", "validation"))
    vectorizer = TfidfVectorizer(min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=300).fit(vectorizer.fit_transform([e.text for e in train]),
                                                 [e.label for e in train])
    guessed = model.predict(vectorizer.transform([e.text for e in examples]))
    labels = task.label_names(train)[::-1]  # the model's order, whatever it is
    task.use_labels(dict(enumerate(labels)))
    gold = [e.label for e in examples]
    report = task.report(examples, [{"label": g} for g in guessed])
    assert report["confusion"]["labels"] == labels == list(report["per_class"])
    assert report["confusion"]["matrix"] == confusion_matrix(gold, guessed, labels=labels).tolist()
    table = classification_report(gold, guessed, labels=labels, output_dict=True, zero_division=0)
    assert 0.3 < table["accuracy"] < 0.95
    for name in labels:
        assert report["per_class"][name] == pytest.approx({
            "precision": table[name]["precision"], "recall": table[name]["recall"],
            "f1": table[name]["f1-score"], "support": table[name]["support"]})
    assert build_task("regression").report(examples, []) is None


def test_classification_decodes_probabilities_to_label_names():
    task = build_task("classification")
    outputs = [{"logits": np.array([0.0, np.log(3.0)])}, {"logits": np.array([2.0, 0.0])}]
    predictions = task.decode([None, None], [None, None], outputs, {0: "fresh", 1: "rotten"})
    assert predictions[0]["label"] == "rotten"
    assert predictions[0]["probabilities"] == {"fresh": 0.25, "rotten": 0.75}
    assert predictions[1]["label"] == "fresh"


# -- token classification --------------------------------------------------------------------


def test_first_subtoken_carries_the_label_and_the_rest_get_minus_100(tokenizer):
    task = build_task("token-classification", max_length=16)
    examples = task.read(resolve_data("wnut16", "train"))
    label2id = {t: i for i, t in enumerate(task.label_names(examples))}
    example = next(e for e in examples if e.words[:3] == ["From", "Green", "Newsfeed"])
    feature = task.encode([example], tokenizer, label2id)[0]
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert tokens == ["[CLS]", "from", "green", "news", "##fe", "##ed", ":", "ah", "##fa",
                      "extends", "deadline", "for", "sage", "award", "to", "[SEP]"]
    o, other, i_other = label2id["O"], label2id["B-other"], label2id["I-other"]
    assert feature["labels"] == [-100, o, o, o, -100, -100, o, other, -100, o, o, o, other,
                                 i_other, o, -100]


def test_a_word_the_normaliser_erases_still_gets_a_token(tokenizer):
    task = build_task("token-classification")
    example = TagExample(["Empire", "\u200b", "State"], ["B-facility", "O", "I-facility"])
    label2id = {"B-facility": 0, "I-facility": 1, "O": 2}
    feature = task.encode([example], tokenizer, label2id)[0]
    assert tokenizer.convert_ids_to_tokens(feature["input_ids"]) == [
        "[CLS]", "empire", "[UNK]", "state", "[SEP]"]
    assert feature["labels"] == [-100, 0, 2, 1, -100]


def test_first_subtoken_labels_directly():
    assert first_subtoken_labels([None, 0, 0, 1, 2, 2, 2, None], ["O", "B-x", "I-x"],
                                 {"O": 0, "B-x": 1, "I-x": 2}) == [-100, 0, -100, 1, 2, -100,
                                                                    -100, -100]


def test_batches_are_padded_to_a_multiple_of_8_which_changes_no_output(tokenizer, minilm_dir):
    """Real wnut16 sentences in batches of 8 by length: each batch is padded to a multiple of
    8 tokens (at most max_length) as bf16 asks, to its longest as fp32 asks, per-token labels
    with -100, and every token's logits in the batch are those of its sentence run alone,
    unpadded."""
    assert (length_multiple("bf16"), length_multiple("fp16"), length_multiple("fp32")) == (8, 8, 1)
    task = build_task("token-classification", max_length=44)
    examples = task.read(resolve_data("wnut16", "train"))[:48]
    label2id = {t: i for i, t in enumerate(task.label_names(examples))}
    features = sorted(task.encode(examples, tokenizer, label2id),
                      key=lambda f: len(f["input_ids"]))  # batched by length, as training does
    model = load_model(task, minilm_dir, list(label2id), tokenizer.vocab_size).eval()
    widths = set()
    for start in range(0, len(features), 8):
        chunk = features[start:start + 8]
        longest = max(len(f["input_ids"]) for f in chunk)
        assert task.collate(chunk, length_multiple("fp32"))["input_ids"].shape[1] == longest
        batch = task.collate(chunk, length_multiple("bf16"))
        width = batch["input_ids"].shape[1]
        assert width == min(-(-longest // 8) * 8, 44) and width >= longest
        widths.add(width)
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, feature in enumerate(chunk):
            n = len(feature["input_ids"])
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
            assert batch["labels"][row].tolist() == feature["labels"] + [-100] * (width - n)
            with torch.no_grad():
                alone = model(torch.tensor([feature["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[row, :n], alone, atol=2e-5, rtol=1e-4)
    assert 44 in widths and len(widths) > 1  # the cap and the rounding both met


@pytest.mark.parametrize("task, name, text, message", [
    ("token-classification", "bad.conll", "Empire\tB-facility\nState\n",
     r"bad.conll:2: expected 'word<TAB>tag'"),
    # a JSON null was reported as a missing field, beside a list of fields that names it
    ("multi-label", "train.jsonl", '{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": '
     'null}\n', r"train.jsonl:2: field 'labels' is null")])
def test_malformed_records_are_named(tmp_path, task, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        build_task(task).read(path)


def test_decoding_takes_each_words_first_subtoken(tokenizer):
    task = build_task("token-classification")
    example = TagExample(["Newsfeed", "AHFA"], ["O", "B-other"])
    feature = task.encode([example], tokenizer, {"O": 0, "B-other": 1})[0]
    # tokens: [CLS] news ##fe ##ed ah ##fa [SEP]; later sub-tokens say the opposite
    logits = np.array([[0, 0], [5, 0], [0, 5], [0, 5], [0, 5], [5, 0], [0, 0]], float)
    prediction = task.decode([example], [feature], [{"logits": logits}], {0: "O", 1: "B-other"})
    assert prediction == [{"tags": ["O", "B-other"]}]
    record = task.to_json(example, prediction[0])
    assert record["entities"] == [{"type": "other", "text": "AHFA", "start": 9, "end": 13}]


def test_words_cut_off_by_truncation_get_no_tag_and_score_as_untagged(tokenizer, caplog):
    """A real wnut16 tweet cut at 12 tokens: its last 8 words (the entity "Sage Award" among
    them) are never seen. Even a model right on every word it sees leaves them untagged, not a
    confident O: entity recall 1/2 and word accuracy 7/15, not the free O's 13/15."""
    task = build_task("token-classification", max_length=12)
    example = next(e for e in task.read(resolve_data("wnut16", "train"))
                   if e.words[:3] == ["From", "Green", "Newsfeed"])
    label2id = {t: i for i, t in enumerate(sorted(set(example.tags)))}
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        [feature] = task.encode([example], tokenizer, label2id)
    assert (f"8 word(s) of 1 sentence(s) longer than max_length=12 tokens are cut off (e.g. "
            f"{example.where})") in caplog.text and "--doc-stride (e.g. 6)" in caplog.text
    right_where_seen = np.array([np.eye(len(label2id))[label] * 5 if label >= 0
                                 else np.zeros(len(label2id)) for label in feature["labels"]])
    [prediction] = task.decode([example], [feature], [{"logits": right_where_seen}],
                               {i: t for t, i in label2id.items()})
    assert prediction["tags"] == example.tags[:7] + [None] * 8
    assert task.score([example], [prediction]) == {
        "f1": pytest.approx(2 / 3), "precision": 1.0, "recall": 0.5,
        "accuracy": pytest.approx(7 / 15)}
    record = task.to_json(example, prediction)
    assert record["tags"][-1] is None and json.loads(json.dumps(record))["tags"][-1] is None
    assert [e["text"] for e in record["entities"]] == ["AHFA"]


def test_raw_text_is_split_into_words_with_character_spans(tokenizer):
    task = build_task("token-classification")
    [example] = task.read_lines(["Empire State Building = ESB."], "<stdin>", tokenizer)
    assert example.words == ["Empire", "State", "Building", "=", "ESB", "."]
    assert [example.text[s:e] for s, e in example.spans] == example.words


def test_bio_entities_follow_seqeval_on_real_tags():
    from seqeval.metrics.sequence_labeling import get_entities

    task = build_task("token-classification")
    for example in task.read(resolve_data("wnut16", "validation")):
        assert bio_entities(example.tags) == get_entities(example.tags)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-per", "I-per", "B-loc", "I-loc"]), max_size=12))
def test_bio_entities_follow_seqeval_on_any_sequence(tags):
    from seqeval.metrics.sequence_labeling import get_entities

    assert bio_entities(tags) == get_entities(tags)


def test_entity_scores_by_hand():
    task = build_task("token-classification")
    task.use_labels({0: "O", 1: "B-per", 2: "I-per", 3: "B-loc"})
    examples = [TagExample(["a", "b", "c", "d"], ["B-per", "I-per", "O", "B-loc"])]
    metrics = task.score(examples, [{"tags": ["B-per", "I-per", "O", "O"]}])
    # one of two gold entities found, no false one: P 1, R 1/2, F1 2/3; words right 3 of 4
    assert metrics == pytest.approx({"f1": 2 / 3, "precision": 1.0, "recall": 0.5,
                                     "accuracy": 0.75})
    task.use_labels({0: "NN", 1: "VB"})
    assert task.metrics == ("accuracy",)


def test_most_frequent_tag_baseline_by_hand():
    train = [TagExample(["can", "can", "fish"], ["MD", "MD", "NN"]),
             TagExample(["can", "fish"], ["VB", "NN"])]
    test = [TagExample(["can", "fish", "swim"], ["VB", "NN", "VB"])]
    # can -> MD (2 of 3), fish -> NN, unseen "swim" -> the commonest tag overall (MD, 3 of 5)
    assert most_frequent_tag_accuracy(train, test) == pytest.approx(1 / 3)


# -- question answering ------------------------------------------------------------------------


def test_passage_windows_follow_googles_doc_stride_loop():
    assert passage_windows(10, 4, 2) == [(0, 4), (2, 4), (4, 4), (6, 4)]
    assert passage_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert passage_windows(3, 4, 2) == [(0, 3)]


def test_max_context_prefers_the_window_where_the_token_is_central():
    windows = [(0, 4), (2, 4), (4, 4)]
    # token 3: min(3, 0)=0 in the first, min(1, 2)=1 in the second, not in the third
    assert [is_max_context(windows, w, 3) for w in windows] == [False, True, False]
    # token 5: (2,4) gives min(3, 0) = 0, (4,4) gives min(1, 2) = 1
    assert [is_max_context(windows, w, 5) for w in windows] == [False, False, True]


@pytest.fixture(scope="module")
def squad_examples():
    return build_task("question-answering").read(resolve_data("squad-sample", "test"))


def test_answers_map_to_tokens_in_every_window_that_holds_them(tokenizer, squad_examples):
    task = build_task("question-answering", max_length=64, doc_stride=16, max_query_length=24)
    features = task.encode(squad_examples, tokenizer)
    assert len(features) > 3 * len(squad_examples)  # long passages: several windows each
    held = 0
    for feature in features:
        example = squad_examples[feature["example"]]
        start, end = feature["start_positions"], feature["end_positions"]
        assert len(feature["input_ids"]) <= 64
        if start == 0:
            assert end == 0
            continue
        held += 1
        first = feature["passage_start"]
        char_start = feature["offsets"][start - first][0]
        char_end = feature["offsets"][end - first][1]
        assert normalize_answer(example.context[char_start:char_end]) == normalize_answer(
            example.answers[0]["text"])
        assert feature["token_type_ids"][start] == feature["token_type_ids"][end] == 1
    assert held >= len(squad_examples)


def test_stitching_picks_the_best_span_where_it_has_most_context(tokenizer, squad_examples):
    task = build_task("question-answering", max_length=64, doc_stride=16, max_query_length=24)
    example = squad_examples[0]
    features = task.encode([example], tokenizer)
    holding = [f for f in features if f["start_positions"]]
    chosen = next(f for f in holding if f["max_context"][f["start_positions"] - f["passage_start"]])
    outputs = []
    for feature in features:
        n = len(feature["input_ids"])
        starts, ends = np.zeros(n), np.zeros(n)
        if feature is chosen:
            starts[feature["start_positions"]] = ends[feature["end_positions"]] = 5.0
        elif feature in holding:  # the same span scored higher where it is not max-context
            starts[feature["start_positions"]] = ends[feature["end_positions"]] = 9.0
        starts[feature["passage_start"] - 1] = 50.0  # [SEP]: outside the passage, never chosen
        outputs.append({"start_logits": starts, "end_logits": ends})
    [answer] = task.decode([example], features, outputs)
    assert answer["answer"] == example.answers[0]["text"] == "Saint Bernadette Soubirous"
    assert (answer["start"], answer["end"]) == (515, 541) and answer["score"] == 10.0


def test_null_answer_wins_by_the_threshold_for_squad_v2(tokenizer, squad_examples):
    example = squad_examples[0]
    for threshold, expected in ((1.0, ""), (3.0, "Saint Bernadette Soubirous")):
        task = build_task("question-answering", allow_null=True, null_threshold=threshold)
        [feature] = task.encode([example], tokenizer)
        n = len(feature["input_ids"])
        starts, ends = np.zeros(n), np.zeros(n)
        starts[feature["start_positions"]] = ends[feature["end_positions"]] = 1.0
        starts[0] = ends[0] = 2.0  # null score 4 vs span score 2: a difference of 2
        [answer] = task.decode([example], [feature], [{"start_logits": starts,
                                                       "end_logits": ends}])
        assert answer["answer"] == expected


def test_squad_answers_that_do_not_match_the_context_are_named(tmp_path):
    data = {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\] \(id q1\)"
                                        r": answer 'France' is not at offset 3"):
        build_task("question-answering").read(path)


def test_huggingface_datasets_answer_layout_reads_as_squads(tmp_path, squad_examples):
    """`datasets`' SQuAD rows keep answers as {"text": [...], "answer_start": [...]}."""
    path = tmp_path / "squad.JSONL"
    rows = [{"id": e.id, "question": e.question, "context": e.context,
             "answers": {"text": [a["text"] for a in e.answers],
                         "answer_start": [a["answer_start"] for a in e.answers]}}
            for e in squad_examples]
    rows.append({"id": "none", "question": "Who?", "context": "Nobody is here.",
                 "answers": {"text": [], "answer_start": []}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = build_task("question-answering").read(path)
    assert [(e.id, e.answers, e.is_impossible) for e in read[:-1]] == [
        (e.id, e.answers, e.is_impossible) for e in squad_examples]
    assert read[-1].is_impossible and read[-1].answers == []
    rows[0]["answers"] = {"text": ["x"], "answer_start": []}
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError, match="equally long 'text' and 'answer_start' lists"):
        build_task("question-answering").read(path)


def test_squad_metrics_by_hand():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert token_f1("a cat sat", "the cat sat down") == pytest.approx(0.8)  # P 1, R 2/3
    metrics = squad_metrics([["Denver Broncos", "The Broncos"], ["1858"], []],
                            ["the Broncos", "in 1858", ""])
    # EM: 1 (matches the second gold), 0, 1 (no answer, empty prediction); F1: 1, 2/3, 1
    assert metrics["exact_match"] == pytest.approx(200 / 3)
    assert metrics["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)


# -- multiple choice -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mc_examples():
    task = build_task("multiple-choice")
    return task, task.read(resolve_data("wiki-mc", "validation"))[:3]


def test_each_choice_is_a_pair_and_batches_are_batch_by_choice_by_token(tokenizer, mc_examples):
    task, examples = mc_examples
    features = task.encode(examples, tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(features[0]["input_ids"][2])
    expected = ["[CLS]", *tokenizer.tokenize(examples[0].question), "[SEP]",
                *tokenizer.tokenize(examples[0].choices[2]), "[SEP]"]
    assert tokens == expected
    batch = task.collate(features)
    assert batch["input_ids"].shape[:2] == (3, 4)
    assert batch["labels"].tolist() == [e.label for e in examples]
    assert batch["attention_mask"].sum(-1).tolist() == [[len(r) for r in f["input_ids"]]
                                                         for f in features]


def test_multiple_choice_decoding_and_accuracy(mc_examples):
    task, examples = mc_examples
    outputs = [{"logits": np.eye(4)[e.label] * 3} for e in examples]
    outputs[0] = {"logits": np.eye(4)[(examples[0].label + 1) % 4] * 3}
    predictions = task.decode(examples, None, outputs)
    assert predictions[1]["choice"] == examples[1].choices[examples[1].label]
    assert task.score(examples, predictions) == {"accuracy": pytest.approx(2 / 3)}


def test_multiple_choice_labels_may_be_choice_text_and_must_be_valid(tmp_path):
    task = build_task("multiple-choice")
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "label": "y"}) + "\n")
    assert task.read(path)[0].label == 1
    path.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "label": 2}) + "\n")
    with pytest.raises(DataError, match=r"mc.jsonl:1: label 2 is neither"):
        task.read(path)
    path.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "label": 0}) + "\n"
                    + json.dumps({"question": "q", "choices": ["x", "y", "z"], "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"mc.jsonl:2: 3 choices"):
        task.read(path)


def test_a_multiple_choice_label_that_is_both_a_choice_and_another_index_is_refused(tmp_path):
    """With numbers for choices, "2" may be the text of one choice and the index of another:
    refused with file:line; a JSON number is always an index, a string naming one choice either
    way (or only one way) is read."""
    task = build_task("multiple-choice")
    path = tmp_path / "mc.jsonl"
    rows = [{"question": "Legs of a bird?", "choices": ["4", "2", "1"], "label": 1},
            {"question": "1 + 0?", "choices": ["0", "1", "2"], "label": "1"},
            {"question": "3 + 3?", "choices": ["3", "9", "6"], "label": "6"},
            {"question": "3 - 1?", "choices": ["four", "two", "one"], "label": "1"},
            {"question": "Legs of a bird?", "choices": ["4", "2", "1"], "label": "2"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"mc.jsonl:5: label '2' is both the text of choice 1 "
                                        r"and the index of choice 2 \('1'\); give .* JSON number"):
        task.read(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:4]))
    assert [e.label for e in task.read(path)] == [1, 1, 2, 1]


# -- built-in data sets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rt-polarity", "wnut16", "wiki-qa"])
def test_builtin_splits_are_disjoint_and_fixed(name):
    task = build_task(BUILTINS[name].task)
    paths = builtin_splits(name)
    keys = {}
    for split, path in paths.items():
        examples = task.read(path)
        keys[split] = {getattr(e, "text", None) or " ".join(getattr(e, "words", [])) or e.id
                       for e in examples}
        assert examples, split
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert builtin_splits(name) == paths


def test_derived_questions_have_real_answer_spans(wiki_leads):
    record = next(r for r in wiki_leads if r["title"] == "Action figure")
    [question] = [q for q in derived_questions(record) if q["id"].endswith("year")]
    assert question["question"].startswith("The term was coined by Hasbro in what year to ")
    answer = question["answers"][0]
    assert record["extract"][answer["answer_start"]:][:4] == answer["text"] == "1964"


def test_truncation_warning_names_the_record(tokenizer, caplog):
    task = build_task("classification", max_length=8)
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        features = task.encode(task.read(resolve_data("rt-polarity", "test"))[:3], tokenizer,
                               {"fresh": 0, "rotten": 1})
    assert all(len(f["input_ids"]) <= 8 for f in features)
    assert "test.jsonl:1" in caplog.text


# -- users' messy task files: each read right, or refused naming file:line -----------------------


def test_class_labels_differing_only_in_surrounding_spaces_are_one_class(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\ngood film,pos \nfine film,pos\nbad film, neg\n")
    task = build_task("classification")
    examples = task.read(path)
    assert [e.label for e in examples] == ["pos", "pos", "neg"]
    assert task.label_names(examples) == ["neg", "pos"]


def test_a_header_that_names_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label,label\ngood,pos,old\nbad,neg,old\n")
    with pytest.raises(DataError, match=r"train.csv:1: the header names column\(s\) 'label' "
                                        "more than once"):
        build_task("classification").read(path)


def test_a_semicolon_separated_excel_csv_is_refused_naming_its_separator(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbftext;label\r\ngood;pos\r\nbad;neg\r\n")
    with pytest.raises(DataError, match=r"train.csv:1: the header 'text;label' is one column: "
                                        r"the file seems separated by ';'"):
        build_task("classification").read(path)


def test_a_conll_word_with_a_no_break_space_stays_whole(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("costs O\n10\u00a0000 B-MONEY\neuros I-MONEY\n")
    [example] = build_task("token-classification").read(path)
    assert example.words == ["costs", "10\u00a0000", "euros"]
    assert example.tags == ["O", "B-MONEY", "I-MONEY"]


def squad_file(path, qa: dict, paragraphs=None):
    paragraphs = paragraphs if paragraphs is not None else [
        {"context": "Paris is in France.", "qas": [qa]}]
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return path


def test_squad_is_impossible_given_as_text_is_refused_not_read_as_true(tmp_path):
    qa = {"id": "q1", "question": "Where?", "is_impossible": "false",
          "answers": [{"text": "France", "answer_start": 12}]}
    with pytest.raises(DataError, match=r"qas\[0\] \(id q1\): is_impossible is \"false\"; "
                                        "write true or false"):
        build_task("question-answering").read(squad_file(tmp_path / "q.json", qa))
    qa["is_impossible"] = None  # null, as some exports write it: answerable
    [example] = build_task("question-answering").read(squad_file(tmp_path / "q.json", qa))
    assert not example.is_impossible and example.answers[0]["text"] == "France"


@pytest.mark.parametrize("paragraphs, message", [
    ({"context": "x"}, r"data\[0\]: 'paragraphs' should be a list, got dict"),
    (["x"], r"data\[0\].paragraphs\[0\]: should be a JSON object, got str"),
    ([{"context": "x", "qas": [None]}],
     r"data\[0\].paragraphs\[0\].qas\[0\]: a question should be a JSON object, got NoneType"),
])
def test_a_squad_file_of_the_wrong_shape_is_refused_naming_the_place(tmp_path, paragraphs,
                                                                     message):
    path = squad_file(tmp_path / "q.json", {}, paragraphs)
    with pytest.raises(DataError, match="q.json: " + message):
        build_task("question-answering").read(path)
