"""The feature-based approach (bertkit.features) and numbers beside the text, on the real
all-MiniLM-L6-v2 and small samples of the built-in data sets: the encoder stays frozen, the
cached features are Embedder's, a second run computes none, the BiLSTM tagger and the numbers
learn, bad numbers are named by file:line:field, and predict/evaluate reproduce the run.
"""

import csv
import io
import json
import random
import shutil

import numpy as np
import pytest
import torch

from bertkit import features as fx
from bertkit.checkpoint import read_weights
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.embeddings import Embedder
from bertkit.finetune import FinetuneSettings, evaluate, finetune, predict
from bertkit.model import BertModel
from bertkit.settings import SettingsError
from bertkit.tasks import DataError, build_task
from bertkit.tasks.datasets import resolve_data
from bertkit.training import GracefulStop

MODEL = "all-minilm-l6-v2"
QUIET = dict(progress=False, batch_size=16, max_length=64)


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """A feature cache of this module's own (the weights stay in the shared $BERTKIT_CACHE)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fx, "cache_dir", lambda: root)
        yield root / "features"


def sample(name: str, split: str, n: int, folder, offset: int = 0):
    """Records ``offset``..``offset + n`` of a built-in split, as a file of the same format."""
    source = resolve_data(name, split)
    target = folder / f"{name}-{split}-{offset}{source.suffix}"
    if source.suffix == ".json":
        shutil.copy(source, target)
    elif source.suffix == ".conll":
        sentences = source.read_text(encoding="utf-8").split("\n\n")[offset:offset + n]
        target.write_text("\n\n".join(sentences) + "\n\n", encoding="utf-8")
    else:
        lines = source.read_text(encoding="utf-8").splitlines()[offset:offset + n]
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def rt_run(tmp_path_factory):
    """One feature-based run, with the encoder's weights copied before and kept after it."""
    tmp = tmp_path_factory.mktemp("rt")
    train, validation, test = (sample("rt-polarity", split, n, tmp)
                               for split, n in (("train", 160), ("validation", 40), ("test", 60)))
    settings = FinetuneSettings(task="classification", model=MODEL, train=train,
                                validation=validation, test=test, out=tmp / "run",
                                feature_based=True, layers="sum_last_four", epochs=3, **QUIET)
    computed = fx.COMPUTED["sequences"]
    run = fx.FeatureRun(settings, 1, tmp / "run")
    computed = fx.COMPUTED["sequences"] - computed
    before = {k: v.clone() for k, v in run.encoder.state_dict().items()}
    with GracefulStop() as stop:
        results = run.run(stop)
    weights = (before, run.encoder.state_dict(), [p.requires_grad for p in
                                                  run.encoder.parameters()])
    return results, tmp, computed, weights


def store_of(results, split: str) -> fx.FeatureStore:
    record = next(r for r in results["feature_based"]["features"] if r["split"] == split)
    return fx.FeatureStore(fx.cache_dir() / "features" / record["key"])


def test_the_encoder_is_frozen_and_its_weights_bitwise_unchanged(rt_run, minilm_dir,
                                                                 tokenizer):
    results, tmp, _, (before, after, requires_grad) = rt_run
    assert not any(requires_grad)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    original = read_weights(minilm_dir)
    assert all(torch.equal(after[k], original[k]) for k in after)
    view = fx.FeatureEncoder(BertModel.from_pretrained(minilm_dir), tokenizer,
                             fx.FeatureSpec("sum_last_four"), "sequence").encoder
    info = results["feature_based"]
    assert fx.weights_sha256(view) == info["encoder"]["sha256"] == info["encoder_sha256_after"]
    options = json.loads((tmp / "run" / "best" / "task.json").read_text())
    assert options["mode"] == "feature-based" and options["features"]["layers"] == "sum_last_four"
    assert options["task_model"]["body"] == "linear"
    assert options["encoder"]["path"] == str(minilm_dir.resolve())  # referenced, not copied
    assert not (tmp / "run" / "best" / "encoder").exists()


def test_cached_features_are_embedders_and_a_second_run_computes_none(rt_run, minilm_dir,
                                                                      feature_cache):
    results, tmp, computed, _ = rt_run
    assert computed == 160 + 40 + 60
    texts = [json.loads(line)["text"] for line in
             (tmp / "rt-polarity-train-0.jsonl").read_text().splitlines()]
    store = store_of(results, "train")
    assert isinstance(store.array, np.memmap)
    expected = Embedder(minilm_dir, layers="sum_last_four", pooling="mean",
                        normalize=False).encode(texts)
    assert np.abs(np.asarray(store.array) - expected).max() <= 1e-6
    files = {p: p.stat().st_mtime_ns for p in feature_cache.rglob("*.npy")}
    before = fx.COMPUTED["sequences"]
    again = finetune("classification", MODEL, tmp / "rt-polarity-train-0.jsonl",
                     tmp / "rt-polarity-validation-0.jsonl", tmp / "rt-polarity-test-0.jsonl",
                     tmp / "again", feature_based=True, layers="sum_last_four", epochs=2,
                     seeds=[2, 3], task_model="mlp", task_lr=3e-3, **QUIET)
    assert fx.COMPUTED["sequences"] == before  # nothing encoded: every split read from cache
    assert {p: p.stat().st_mtime_ns for p in feature_cache.rglob("*.npy")} == files
    for run in again["runs"]:
        assert [r["cache"] for r in run["feature_based"]["features"]] == ["hit"] * 3
        assert run["feature_based"]["task_model"]["body"] == "mlp"


def test_every_strategy_equals_embedder_pooled_and_per_token(minilm_dir, tokenizer, tmp_path):
    task = build_task("classification")
    examples = task.read(sample("rt-polarity", "test", 16, tmp_path))
    ids, types, _ = fx.sequences_of(task.encode(examples, tokenizer))
    encoder = BertModel.from_pretrained(minilm_dir)
    texts = [e.text for e in examples]
    for layers, combine in (("embeddings", "sum"), ("second_to_last", "sum"),
                            ("concat_last_four", "sum"), ("sum_all", "sum"), ("-1,-3", "mean")):
        for kind, pooling in (("sequence", "mean"), ("token", "tokens")):
            folder = tmp_path / f"{layers}-{kind}"
            folder.mkdir()
            fx.FeatureEncoder(encoder, tokenizer, fx.FeatureSpec(layers, combine),
                              kind).write(folder, ids, types)
            store = fx.FeatureStore(folder)
            embedder = Embedder(encoder, tokenizer=tokenizer, layers=fx.layer_choice(layers),
                                combine=combine, pooling=pooling, normalize=False)
            if kind == "sequence":
                assert np.abs(np.asarray(store.array) - embedder.encode(texts)).max() <= 1e-6
                continue
            for i, tokens in enumerate(embedder.encode_tokens(texts)):
                rows = np.asarray(store.array[store.offsets[i] + 1:store.offsets[i + 1] - 1])
                assert np.abs(rows - tokens.vectors).max() <= 1e-6, (layers, i)


@pytest.fixture
def one_thread():
    """An LSTM's many small steps run far faster on one thread when other work shares the
    cores (thread hand-offs wait for time slices)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_bilstm_tagger_learns_real_tags(tmp_path, one_thread):
    train = sample("wsj-pos", "train", 160, tmp_path)
    validation = sample("wsj-pos", "validation", 50, tmp_path)
    results = finetune("token-classification", MODEL, train, validation, validation,
                       tmp_path / "pos", feature_based=True, layers="sum_all", epochs=8,
                       task_hidden=64, **QUIET)
    assert results["feature_based"]["task_model"]["body"] == "bilstm"
    accuracy = results["test"]["accuracy"]
    baseline = results["test_baselines"]["most_frequent_tag_accuracy"]
    assert accuracy >= baseline + 0.08, (accuracy, baseline)
    predictions = predict(tmp_path / "pos", ["The company said it expects higher profits ."])
    assert predictions[0]["tags"][:2] == ["DT", "NN"]


def age_files(folder, n_train=800, n_eval=100):
    """Real rt-polarity snippets whose label depends only on a generated ``age`` column: over
    40 (46-60) or not (20-35)."""
    rows = [json.loads(line) for line in
            resolve_data("rt-polarity", "train").read_text().splitlines()[:n_train + 2 * n_eval]]
    rng = random.Random(0)
    paths = []
    for name, part in (("train", rows[:n_train]), ("validation", rows[n_train:n_train + n_eval]),
                       ("test", rows[n_train + n_eval:])):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "age", "label"])
            for row in part:
                age = rng.choice([*range(20, 36), *range(46, 61)])
                writer.writerow([row["text"], age, "over-40" if age > 40 else "40-or-under"])
        paths.append(path)
    return paths


def test_a_label_carried_by_a_number_is_learned_only_with_feature_fields(tmp_path):
    train, validation, test = age_files(tmp_path)
    # The embedding layer's features: real text vectors, and cheap to compute.
    common = dict(feature_based=True, layers="embeddings", epochs=10,
                  **{**QUIET, "batch_size": 32})
    with_age = finetune("classification", MODEL, train, validation, test, tmp_path / "age",
                        feature_fields=["age"], **common)
    without = finetune("classification", MODEL, train, validation, test, tmp_path / "text",
                       **common)
    assert with_age["test"]["accuracy"] >= 0.95
    assert without["test"]["accuracy"] <= 0.65
    options = json.loads((tmp_path / "age" / "best" / "task.json").read_text())
    assert options["feature_fields"] == ["age"] and 35 < options["feature_mean"][0] < 45
    again = evaluate(tmp_path / "age", test, progress=False)
    assert {k: again[k] for k in with_age["test"]} == with_age["test"]
    predictions = predict(tmp_path / "age", test)
    gold = [row["label"] for row in csv.DictReader(open(test, encoding="utf-8"))]
    accuracy = np.mean([p["label"] == g for p, g in zip(predictions, gold, strict=True)])
    assert accuracy == again["accuracy"] and "age" in predictions[0]
    with pytest.raises(DataError, match="also reads the numeric fields age"):
        predict(tmp_path / "age", ["A film."])


def test_numbers_in_fine_tuning_mode_train_save_and_predict(tmp_path):
    train, validation, test = age_files(tmp_path, n_train=96, n_eval=24)
    results = finetune("classification", "tiny", train, validation, test, tmp_path / "ft",
                       feature_fields="age", epochs=2, lr=5e-4, progress=False, batch_size=16,
                       max_length=32, precision="fp32")
    assert results["test"]["accuracy"] >= 0.9  # the numbers' weights learn fast enough
    config = json.loads((tmp_path / "ft" / "best" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassificationWithNumbers"]
    again = evaluate(tmp_path / "ft", test, progress=False, precision="fp32")
    assert {k: again[k] for k in results["test"]} == results["test"]
    assert len(predict(tmp_path / "ft", test)) == 24
    for age in (20, 60):
        (tmp_path / f"{age}.jsonl").write_text(json.dumps({"text": "A film.", "age": age}) + "\n")
    young, old = (predict(tmp_path / "ft", tmp_path / f"{age}.jsonl")[0] for age in (20, 60))
    assert young["age"] == 20 and old["age"] == 60
    assert young["probabilities"] != old["probabilities"]  # the number reaches the output


@pytest.mark.parametrize("cell, message", [
    ("abc", r"train.csv:3:age: 'abc' is not a number"),
    ("", r"train.csv:3:age: the value is missing"),
    ("nan", r"train.csv:3:age: 'nan' is not a finite number"),
    ("-inf", r"train.csv:3:age: '-inf' is not a finite number"),
])
def test_a_bad_number_in_a_csv_names_file_line_and_field(cell, message, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(f"text,age,label\nfine,41,a\nbad,{cell},b\n", encoding="utf-8")
    task = fx.WithNumbers(build_task("classification"), ["age"])
    with pytest.raises(DataError, match=message):
        task.read(path)


def test_a_bad_number_in_jsonl_stops_the_run_before_it_starts(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": "fine", "age": 41, "label": "a"}, {"text": "no age", "label": "b"},
            {"text": "flag", "age": True, "label": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2:age: the value is missing \(fields: "):
        finetune("classification", MODEL, path, out=tmp_path / "run", feature_based=True,
                 feature_fields=["age"], **QUIET)
    assert not (tmp_path / "run" / "best").exists()
    path.write_text("\n".join(json.dumps(r) for r in rows[::2]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2:age: True is not a number"):
        fx.WithNumbers(build_task("classification"), ["age"]).read(path)


def age_rows(path, ages, extra=None):
    """A classification JSONL file of one text whose rows differ only in ``age`` (a JSON
    number, written as given) and the label it carries."""
    lines = [f'{{"text": "A film.", "age": {age}, "label": "{"old" if i % 2 else "young"}"'
             + (f", {extra}" if extra else "") + "}" for i, age in enumerate(ages)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_json_integer_past_the_float_range_is_refused_with_file_line_and_field(tmp_path):
    path = age_rows(tmp_path / "train.jsonl", [41, "1" + "0" * 400])  # float() overflows
    task = fx.WithNumbers(build_task("classification"), ["age"])
    with pytest.raises(DataError, match=r"train.jsonl:2:age: 10+\.\.\.0+ is not a finite number"):
        task.read(path)


@pytest.mark.parametrize("ages", [
    ["1e200", "-1e200", "3e199", "-2e200"],  # squares past the float range
    ["1.7e308", "1.5e308", "1.6e308", "1.1e308"],  # a sum past it
])
def test_statistics_of_numbers_near_the_float_range_stay_finite(ages, tmp_path, tokenizer):
    task = fx.WithNumbers(build_task("classification"), ["age"])
    examples = task.read(age_rows(tmp_path / "train.jsonl", ages))
    task.prepare(examples)
    json.dumps(task.options(), allow_nan=False)  # task.json stays standard JSON
    numbers = np.array([f["numbers"] for f in task.encode(examples, tokenizer)])
    assert np.isfinite(numbers).all()
    np.testing.assert_allclose([numbers.mean(), numbers.std()], [0, 1], atol=1e-9)


def test_a_column_with_one_value_is_centred_not_scaled_and_named_in_a_warning(tmp_path,
                                                                              tokenizer, caplog):
    # 0.1 has no exact binary value: the std of 41 copies is 1.4e-17, not 0.
    task = fx.WithNumbers(build_task("classification"), ["age", "rate"])
    train = task.read(age_rows(tmp_path / "train.jsonl", range(20, 61), '"rate": 0.1'))
    with caplog.at_level("WARNING", logger="bertkit"):
        task.prepare(train)
    assert "--feature-fields rate: 0.1 in every training row" in caplog.text
    assert task.mean[1] == 0.1 and task.std[1] == 1.0
    later = task.read(age_rows(tmp_path / "later.jsonl", [40], '"rate": 0.3'))
    assert task.encode(later, tokenizer)[0]["numbers"] == [0.0, pytest.approx(0.2)]


def test_a_number_too_far_from_training_is_refused_not_predicted_as_nan(tmp_path):
    train = age_rows(tmp_path / "train.jsonl", range(20, 44))
    far = age_rows(tmp_path / "far.jsonl", [30, 1e300])
    common = dict(feature_fields="age", epochs=1, progress=False, batch_size=8, max_length=16,
                  precision="fp32")
    message = r"far.jsonl:2:age: 1e\+300 is 1\.44e\+299 standard deviations from the training mean"
    with pytest.raises(DataError, match=message):  # a validation split: before training
        finetune("classification", "tiny", train, far, out=tmp_path / "early", **common)
    assert not (tmp_path / "early" / "best").exists()
    finetune("classification", "tiny", train, out=tmp_path / "run", **common)
    with pytest.raises(DataError, match=message):
        predict(tmp_path / "run", far)
    with pytest.raises(DataError, match=message):
        evaluate(tmp_path / "run", far, progress=False)
    # Read by name, with the training statistics: order and other fields change nothing.
    (tmp_path / "shuffled.jsonl").write_text('{"age": 30, "id": 7, "text": "A film."}\n')
    assert (predict(tmp_path / "run", tmp_path / "shuffled.jsonl")[0]["probabilities"]
            == predict(tmp_path / "run", far.with_name("train.jsonl"))[10]["probabilities"])


@pytest.mark.parametrize("options, message", [
    (dict(layers="last"), "--layers: options of the feature-based approach"),
    (dict(feature_based=True, layers="top"), "--layers 'top': choose one of"),
    (dict(feature_based=True, task_model="bilstm"), "bilstm runs over tokens"),
    (dict(feature_based=True, search=True, validation="rt-polarity"), "--search varies"),
    (dict(feature_based=True, task="token-classification", feature_fields=["age"]),
     "--feature-fields adds numbers to classification"),
    (dict(feature_fields=["age", "label"]), "--feature-fields names 'label', the label field"),
    (dict(feature_cache="features"), "--feature-cache: options of the feature-based approach"),
    (dict(feature_cache_gb=2.0), "--feature-cache-gb: options of the feature-based approach"),
    (dict(feature_based=True, task_hidden=64),
     "--task-hidden sizes an mlp or bilstm task model, but this run's is the classification "
     "default, linear: add --task-model mlp"),
    (dict(feature_based=True, task="token-classification", task_model="linear", task_hidden=64),
     "--task-hidden sizes an mlp or bilstm task model, but this run's is --task-model linear"),
    (dict(feature_based=True, layers="sum_last_four", combine="mean"),
     "--combine mean applies to a list of --layers indices; --layers sum_last_four is a "
     "strategy with its own"),
    (dict(feature_based=True, combine="concat"), r"--layers last \(the default\) is a strategy"),
    (dict(feature_based=True, layers="weighted", combine="sum"),
     "--layers weighted learns its own mix"),
    (dict(feature_based=True, lr=1e-4), "--lr 0.0001 is fine-tuning's learning rate; .* "
     "give --task-lr 0.0001 instead"),
])
def test_settings_that_cannot_apply_are_refused(options, message, tmp_path):
    # A few examples: should a refusal be lost, the run it lets through costs seconds.
    options = {"task": "classification", "max_train_examples": 8, "epochs": 1, **options}
    with pytest.raises(SettingsError, match=message):
        finetune(model=MODEL, train="rt-polarity", out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options", [
    dict(feature_based=True, task_model="mlp", task_hidden=64),
    dict(feature_based=True, task="token-classification", task_hidden=64),  # the BiLSTM's
    dict(feature_based=True, task="token-classification", task_model="mlp", task_hidden=64),
    dict(feature_based=True, layers="-4,-1", combine="mean"),
    dict(feature_based=True, feature_cache="features", feature_cache_gb=2.0, task_lr=1e-2),
    dict(feature_based=True, lr=3e-5),  # fine-tuning's default, as every saved run records
    dict(lr=1e-4),
])
def test_settings_that_apply_are_accepted(options):
    options = {"task": "classification", **options}
    FinetuneSettings(model=MODEL, train="rt-polarity", **options)


def test_the_cache_evicts_least_recently_used_entries_and_refuses_oversized_ones(tmp_path):
    cache = fx.FeatureCache(limit_gb=2.5e-6, root=tmp_path)  # 2,500 bytes

    def write(folder):
        np.save(folder / fx.FEATURES_FILE, np.zeros((200,), np.float32))  # 928 bytes

    for key in ("a", "b"):
        cache.store(key, {}, 800, write)
    cache.in_use.clear()
    cache.fetch("a")  # now b is the least recently used
    cache.in_use.clear()
    cache.store("c", {}, 800, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]
    assert cache.summary()["entries"] == 2
    with pytest.raises(ValueError, match="raise --feature-cache-gb"):
        cache.store("d", {}, 10_000, write)


def test_cli_weighted_layers_for_multiple_choice_and_qa(tmp_path, monkeypatch, capsys):
    train = sample("wiki-mc", "train", 48, tmp_path)
    out = tmp_path / "mc"
    code = main(["finetune", "--task", "multiple-choice", "--model", MODEL, "--train",
                 str(train), "--validation", str(train), "--out", str(out), "--epochs", "2",
                 "--feature-based", "--layers", "weighted", "--max-length", "64",
                 "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    weights = results["feature_based"]["layer_weights"]
    assert len(weights) == 7 and sum(weights) == pytest.approx(1, abs=1e-3)
    capsys.readouterr()
    record = json.loads(train.read_text().splitlines()[0])
    stdin = io.TextIOWrapper(io.BytesIO(json.dumps(record).encode() + b"\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["predict", "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["choice"] in record["choices"]
    squad = sample("squad-sample", "train", 5, tmp_path)
    finetune("question-answering", MODEL, squad, squad, out=tmp_path / "qa", feature_based=True,
             epochs=2, max_length=96, doc_stride=32, max_query_length=32, progress=False)
    context = build_task("question-answering").read(squad)[0].context
    first = predict(tmp_path / "qa", squad)[0]
    assert first["answer"] == context[first["start"]:first["end"]]


def test_a_random_init_encoder_is_saved_beside_the_task_model(tmp_path):
    train = sample("rt-polarity", "train", 40, tmp_path)
    results = finetune("classification", "tiny", train, train, out=tmp_path / "run", epochs=2,
                       feature_based=True, **QUIET)
    best = tmp_path / "run" / "best"
    assert (best / "encoder" / "model.safetensors").is_file()
    assert json.loads((best / "task.json").read_text())["encoder"]["path"] is None
    again = evaluate(tmp_path / "run", train, progress=False)
    assert again["accuracy"] == results["validation"]["accuracy"]
    saved = json.loads((tmp_path / "run" / "finetune_settings.json").read_text())
    assert saved["lr"] == 3e-5  # fine-tuning's default, recorded: resuming is not refused
    assert main(["finetune", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    # the same weights under another config would compute other features: refused by name
    config = json.loads((best / "encoder" / "config.json").read_text())
    config["layer_norm_eps"] = 1e-3
    (best / "encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"another config .* layer_norm_eps 1e-12 -> 0\.001"):
        evaluate(tmp_path / "run", train, progress=False)


def test_the_same_weights_under_another_config_do_not_read_each_others_features(tmp_path,
                                                                               minilm_dir):
    """The cache key holds the encoder's config as well as its weights: another hidden_act or
    layer_norm_eps computes other features, a copy of the checkpoint reads them back."""
    torch.manual_seed(0)
    BertModel(BertConfig.from_preset("tiny")).save_pretrained(tmp_path / "gelu")
    for name, change in (("copy", {}), ("relu", {"hidden_act": "relu"}),
                         ("eps", {"layer_norm_eps": 1e-3})):
        shutil.copytree(tmp_path / "gelu", tmp_path / name)
        config = tmp_path / name / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    train = sample("rt-polarity", "train", 24, tmp_path)

    def features_of(encoder: str) -> tuple[str, np.ndarray]:
        results = finetune("classification", str(tmp_path / encoder), train,
                           out=tmp_path / "runs" / encoder, tokenizer=str(minilm_dir),
                           feature_based=True, feature_cache=str(tmp_path / "cache"), epochs=1,
                           **QUIET)
        record = results["feature_based"]["features"][0]
        return record["cache"], np.asarray(fx.FeatureStore(tmp_path / "cache" /
                                                           record["key"]).array)

    cache, first = features_of("gelu")
    assert cache == "miss"
    cache, copied = features_of("copy")
    assert cache == "hit" and np.array_equal(copied, first)
    for name in ("relu", "eps"):
        cache, other = features_of(name)
        assert cache == "miss" and not np.allclose(other, first), name
