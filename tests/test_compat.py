"""bertkit models among the tools users already have: transformers.Trainer, transformers'
pipelines and Auto* classes on folders bertkit saved, and sentence-transformers.

Real weights (all-MiniLM-L6-v2, with fresh seeded heads where a task needs one) and real text
(rt-polarity snippets, SQuAD questions) throughout; dropout is off wherever two libraries must
follow the same trajectory.
"""

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from sentence_transformers import SentenceTransformer
from transformers import Trainer, TrainingArguments

import bertkit
import bertkit.hf
from bertkit.cli import main
from bertkit.config import BertConfig
from bertkit.embeddings import Embedder
from bertkit.files import DiskFull
from bertkit.fill_mask import FillMask
from bertkit.finetune import save_finetuned
from bertkit.tasks import build_task
from bertkit.tasks.datasets import resolve_data

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SENTIMENT = {0: "rotten", 1: "fresh"}
ENTITIES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(autouse=True)
def quiet_transformers():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="module")
def snippets():
    """Real rt-polarity training rows: {"text", "label"} with label fresh/rotten."""
    path = resolve_data("rt-polarity", "train")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(200), f, strict=False)]


@pytest.fixture(scope="module")
def texts(snippets):
    return [row["text"] for row in snippets[:12]]


def spread_head(layer: torch.nn.Linear, seed: int) -> None:
    """Fresh head weights spread wide (seeded), so that predictions are well separated."""
    torch.manual_seed(seed)
    torch.nn.init.normal_(layer.weight, std=0.3)
    torch.nn.init.normal_(layer.bias, std=0.3)


# --- transformers.Trainer ---------------------------------------------------------------------


def features(tokenizer, rows, length=32):
    label2id = {v: k for k, v in SENTIMENT.items()}
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=length,
                        padding="max_length")
    return [{**{k: encoded[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")},
             "label": label2id[row["label"]]} for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, minilm_dir, tokenizer):
    """MiniLM with a fresh seeded sentiment head, dropout off, saved by bertkit."""
    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model = bertkit.BertForSequenceClassification.from_pretrained(minilm_dir, id2label=SENTIMENT,
                                                                  **NO_DROPOUT)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train(model, out, train_dataset, batch_size=8, accumulation=1, **options):
    """The README's snippet: a Trainer with default arguments but for size and logging."""
    args = TrainingArguments(output_dir=str(out), num_train_epochs=3,
                             per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, learning_rate=1e-4,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, **options)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, np.array(losses)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, classifier_dir, snippets, tokenizer):
    """The same Trainer run with bertkit's (as `PreTrainedModel`, the README's snippet) and
    transformers' classes from the same weights, and bertkit's plain class again with gradient
    accumulation (4 x 2 for 8) and activation checkpointing."""
    out = tmp_path_factory.mktemp("trainer")
    data = features(tokenizer, snippets[:24])
    ours = train(bertkit.hf.BertForSequenceClassification.from_pretrained(classifier_dir),
                 out / "ours", data)
    theirs = train(transformers.BertForSequenceClassification.from_pretrained(classifier_dir),
                   out / "theirs", data)
    accumulated = train(bertkit.BertForSequenceClassification.from_pretrained(classifier_dir),
                        out / "accumulated", data, batch_size=4, accumulation=2,
                        activation_checkpointing=True)
    return {"ours": ours, "theirs": theirs, "accumulated": accumulated, "out": out}


def test_trainer_snippet_trains_bertkit_as_transformers_bert(runs):
    (_, ours), (_, theirs) = runs["ours"], runs["theirs"]
    assert len(ours) == 9  # 24 examples, batches of 8, 3 epochs
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert ours[-3:].mean() < ours[:3].mean() - 0.05, ours  # it learns


def test_gradient_accumulation_and_checkpointing_give_the_same_steps(runs):
    (trainer, accumulated), (_, ours) = runs["accumulated"], runs["ours"]
    assert trainer.model.is_gradient_checkpointing  # Trainer switched it on
    # Two micro-batches of 4 are one step of 8: the loss Trainer logs is bertkit's own mean.
    np.testing.assert_allclose(accumulated, ours, atol=1e-5, rtol=0)


def test_trainer_evaluate_predict_and_save(runs, snippets, tokenizer, tmp_path):
    trainer = runs["ours"][0]
    model = trainer.model.eval()
    held_out = features(tokenizer, snippets[100:116])
    batch = {k: torch.tensor([f[k] for f in held_out])
             for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.tensor([f["label"] for f in held_out])
    with torch.no_grad():
        expected = model(**batch, labels=labels)
    metrics = trainer.evaluate(held_out)
    assert metrics["eval_loss"] == pytest.approx(expected.loss.item(), abs=1e-5)
    predicted = trainer.predict(held_out)
    np.testing.assert_allclose(predicted.predictions, expected.logits.numpy(), atol=1e-5)
    np.testing.assert_array_equal(predicted.label_ids, labels.numpy())

    # bertkit.hf's class is a PreTrainedModel: save_model writes config.json through bertkit's
    # save_pretrained, and the folder loads in both libraries with the trained model's logits.
    assert isinstance(model, transformers.PreTrainedModel)
    assert isinstance(model, bertkit.BertForSequenceClassification)
    trainer.save_model(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with torch.no_grad():
        a = bertkit.BertForSequenceClassification.from_pretrained(tmp_path).eval()(**batch)
        b = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)(**batch)
    torch.testing.assert_close(a.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.logits, expected.logits, atol=1e-5, rtol=0)
    assert transformers.AutoConfig.from_pretrained(tmp_path).id2label == SENTIMENT


def test_save_model_of_a_plain_bertkit_class_says_what_to_do(runs, tmp_path):
    """Of a module that is not a PreTrainedModel, save_model writes the state dict alone
    (HuggingFace names): bertkit names the two ways to a folder with config.json."""
    trainer = runs["accumulated"][0]
    assert not isinstance(trainer.model, transformers.PreTrainedModel)
    trainer.save_model(tmp_path)
    saved = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert saved.keys() == trainer.model.state_dict().keys()
    hint = r"Trainer.save_model\(\).*bertkit\.hf.*save_pretrained"
    with pytest.raises(FileNotFoundError, match=hint):
        bertkit.BertForSequenceClassification.from_pretrained(tmp_path)
    trainer.model.save_pretrained(tmp_path)
    bertkit.BertForSequenceClassification.from_pretrained(tmp_path)


def test_masked_lm_under_trainer_saves_and_resumes(tmp_path, minilm_dir, snippets):
    """The MLM decoder is tied to the word embeddings: Trainer's checkpoints (safetensors of the
    state dict) must hold the matrix once, and resuming must load them back."""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    data = [{"input_ids": ids} for ids in hf_tokenizer([r["text"] for r in snippets[:16]],
                                                       truncation=True, max_length=32)["input_ids"]]
    collator = transformers.DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=0.3,
                                                            seed=0)

    def run(steps, resume=None):
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps,
                                 per_device_train_batch_size=8, save_steps=1, report_to=[],
                                 use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=bertkit.hf.BertForMaskedLM(config), args=args,
                          train_dataset=data, data_collator=collator)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    run(1)
    trainer = run(2, resume=str(tmp_path / "checkpoint-1"))
    assert trainer.state.global_step == 2
    trainer.save_model(tmp_path / "final")
    state = safetensors.torch.load_file(tmp_path / "final" / "model.safetensors")
    fresh = bertkit.BertForMaskedLM(config)
    fresh.load_state_dict(state)  # strict: nothing missing, nothing extra
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(fresh.bert.embeddings.word_embeddings.weight,
                               trainer.model.bert.embeddings.word_embeddings.weight)
    batch = torch.tensor(data[0]["input_ids"])[None]
    with torch.no_grad():
        expected = trainer.model.eval()(batch).logits
        loaded = bertkit.BertForMaskedLM.from_pretrained(tmp_path / "final").eval()(batch)
        theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "final")(batch)
    torch.testing.assert_close(loaded.logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs.logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("every_n_layers", [1, 2])
def test_gradient_checkpointing_recomputes_layers_with_equal_gradients(every_n_layers):
    config = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=40)
    torch.manual_seed(0)
    model = bertkit.BertForSequenceClassification(config).train()  # dropout 0.1 on
    input_ids = torch.randint(1, 300, (3, 20))
    attention_mask = (torch.arange(20) < torch.tensor([[20], [11], [5]])).long()
    batch = dict(input_ids=input_ids * attention_mask, attention_mask=attention_mask,
                 labels=torch.tensor([0, 1, 1]), skip_padding=True)
    calls = [0] * config.num_hidden_layers
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))

    def gradients():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        model(**batch).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    assert calls == [1] * 4
    model.gradient_checkpointing_enable(every_n_layers=every_n_layers)
    calls[:] = [0] * 4
    checkpointed = gradients()
    assert calls == [2 if i % every_n_layers == 0 else 1 for i in range(4)]  # run again
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-7, rtol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_forward_protocol_trainer_relies_on():
    model = bertkit.BertForSequenceClassification(BertConfig(vocab_size=300, hidden_size=64,
                                                             num_hidden_layers=2,
                                                             num_attention_heads=4,
                                                             intermediate_size=128)).eval()
    assert transformers.utils.find_labels(type(model)) == ["labels"]
    assert model.main_input_name == "input_ids" and model.accepts_loss_kwargs is False
    with pytest.raises(TypeError, match="num_items_in_batch"):  # no catch-all **kwargs
        model(torch.tensor([[2, 3]]), num_items_in_batch=1)
    out = model(torch.tensor([[2, 3, 4]]))
    assert "loss" not in out and out.loss is None and list(out) == ["logits"]
    with pytest.raises(AttributeError):
        out.no_such_output  # noqa: B018
    loss, logits = model(torch.tensor([[2, 3, 4]]), labels=torch.tensor([1]), return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    assert json.loads(model.config.to_json_string())["num_hidden_layers"] == 2
    assert model.config.get_text_config() is model.config


# --- bertkit-saved folders in transformers' Auto classes and pipelines ------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_dir, tokenizer):
    """Folders bertkit wrote: MiniLM with fresh seeded heads for the four pipeline tasks, the
    fine-tuned ones with bertkit's task.json (so `bertkit.predict` gives bertkit's answers)."""
    folders = {}
    heads = [("classification", bertkit.BertForSequenceClassification, "classifier",
              dict(id2label=SENTIMENT)),
             ("token-classification", bertkit.BertForTokenClassification, "classifier",
              dict(id2label=dict(enumerate(ENTITIES)))),
             ("question-answering", bertkit.BertForQuestionAnswering, "qa_outputs", {})]
    for seed, (task_name, model_class, head, options) in enumerate(heads):
        model = model_class.from_pretrained(minilm_dir, **options).eval()
        spread_head(getattr(model, head), seed)
        task = build_task(task_name)
        task.use_labels(model.config.id2label)
        folders[task_name] = tmp_path_factory.mktemp(task_name)
        save_finetuned(folders[task_name], task, model, tokenizer)
    torch.manual_seed(3)
    mlm = bertkit.BertForMaskedLM.from_pretrained(minilm_dir)  # fresh, seeded cls.predictions
    folders["fill-mask"] = tmp_path_factory.mktemp("fill-mask")
    mlm.save_pretrained(folders["fill-mask"])
    tokenizer.save_pretrained(folders["fill-mask"])
    return folders


AUTO = [("classification", "AutoModelForSequenceClassification", ("logits",)),
        ("token-classification", "AutoModelForTokenClassification", ("logits",)),
        ("question-answering", "AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
        ("fill-mask", "AutoModelForMaskedLM", ("logits",))]


@pytest.mark.parametrize("task_name,auto,outputs", AUTO)
def test_auto_classes_give_bertkit_outputs(saved, texts, task_name, auto, outputs, tokenizer):
    folder = saved[task_name]
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ours_ids = tokenizer(texts, padding=True, return_tensors="pt")
    theirs_ids = theirs_tokenizer(texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours_ids[key], theirs_ids[key]), key
    ours = getattr(bertkit, auto.replace("AutoModel", "Bert")).from_pretrained(folder).eval()
    theirs = getattr(transformers, auto).from_pretrained(folder).eval()
    with torch.no_grad():
        a, b = ours(**ours_ids), theirs(**theirs_ids)
    mask = ours_ids["attention_mask"].bool()
    for key in outputs:
        x, y = (a[key], b[key]) if a[key].dim() == 2 and key == "logits" else (a[key][mask],
                                                                                b[key][mask])
        # bertkit's fp32 products may go through oneDNN (x86 CPUs but Intel's), transformers'
        # through MKL: the same sums in another order, a few ulps of the largest logit apart
        torch.testing.assert_close(x, y, atol=3e-6 * float(y.abs().max()), rtol=0, msg=key)


def test_text_classification_pipeline(saved, texts):
    folder = saved["classification"]
    ours = bertkit.predict(folder, texts)
    theirs = transformers.pipeline("text-classification", model=str(folder), device="cpu")(
        texts, top_k=None)
    for mine, scores in zip(ours, theirs, strict=True):
        found = {s["label"]: s["score"] for s in scores}
        assert found.keys() == mine["probabilities"].keys()
        for label, p in mine["probabilities"].items():
            assert found[label] == pytest.approx(p, abs=1e-5)
        assert max(found, key=found.get) == mine["label"]


def test_token_classification_pipeline(saved, texts):
    folder = saved["token-classification"]
    ours = bertkit.predict(folder, texts)
    theirs = transformers.pipeline("token-classification", model=str(folder), device="cpu",
                                   aggregation_strategy="first")(texts)
    found_any = 0
    for mine, groups in zip(ours, theirs, strict=True):
        expected = [(e["type"], e["start"], e["end"]) for e in mine["entities"]]
        assert [(g["entity_group"], g["start"], g["end"]) for g in groups] == expected
        found_any += len(expected)
    assert found_any > 5  # the spread head tags plenty


def squad_questions() -> list[dict]:
    squad = json.loads(resolve_data("squad-sample", "validation").read_text(encoding="utf-8"))
    return [{"question": qa["question"], "context": paragraph["context"]}
            for article in squad["data"] for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]]


def transformers_answers(folder, questions: list[dict]) -> list[tuple[str, int, int]]:
    """(answer, start, end) of each question by transformers' model and tokenizer of ``folder``.

    transformers 5 removed the question-answering pipeline: its span choice (the best start +
    end logit over passage spans of at most max_answer_len tokens, mapped to characters by the
    offsets) is spelled out here."""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    answers = []
    for question in questions:
        inputs = hf_tokenizer(question["question"], question["context"], truncation="only_second",
                              max_length=384, return_offsets_mapping=True, return_tensors="pt")
        offsets = inputs.pop("offset_mapping")[0]
        passage = torch.tensor([s == 1 for s in inputs.sequence_ids(0)])
        with torch.no_grad():
            out = model(**inputs)
        scores = out.start_logits[0][:, None] + out.end_logits[0][None, :]  # [start, end]
        allowed = passage[:, None] & passage[None, :] & torch.ones_like(scores).triu().tril(
            29).bool()  # end >= start, at most 30 tokens (bertkit's max_answer_length)
        start, end = divmod(int(scores.masked_fill(~allowed, -torch.inf).argmax()),
                            scores.shape[1])
        span = int(offsets[start][0]), int(offsets[end][1])
        answers.append((question["context"][span[0]:span[1]], *span))
    return answers


def test_question_answering_in_transformers(saved):
    folder = saved["question-answering"]
    questions = squad_questions()
    assert len(questions) >= 5
    ours = bertkit.predict(folder, [json.dumps(q) for q in questions])
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == transformers_answers(
        folder, questions)


def test_fill_mask_pipeline(saved, texts):
    folder = saved["fill-mask"]
    masked = []
    for text in texts[:8]:
        words = text.split()
        words[len(words) // 2] = "[MASK]"
        masked.append(" ".join(words))
    ours = FillMask(folder, device="cpu")(masked, top_k=5)
    theirs = transformers.pipeline("fill-mask", model=str(folder), device="cpu")(masked, top_k=5)
    for [mine], candidates in zip(ours, theirs, strict=True):
        assert [c["token"] for c in candidates] == [p.token_id for p in mine]
        np.testing.assert_allclose([c["score"] for c in candidates],
                                   [p.score for p in mine], atol=1e-5, rtol=0)


def test_pipelines_take_bertkit_hf_model_objects(saved, texts, minilm_dir):
    """Pipelines move outputs to the CPU turning any dict but transformers' ModelOutput into a
    plain one: feature-extraction then failed reading ``outputs[0]`` of a bertkit model."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    ours = transformers.pipeline("feature-extraction", device="cpu", tokenizer=tokenizer,
                                 model=bertkit.hf.BertModel.from_pretrained(minilm_dir).eval())
    theirs = transformers.pipeline("feature-extraction", model=str(minilm_dir), device="cpu")
    for text in texts[:4]:
        np.testing.assert_allclose(ours(text), theirs(text), atol=1e-5, rtol=0)
    for task, name, kwargs in [("fill-mask", "BertForMaskedLM", {"top_k": 3}),
                               ("text-classification", "BertForSequenceClassification",
                                {"top_k": None})]:
        folder = saved["fill-mask" if task == "fill-mask" else "classification"]
        model = getattr(bertkit.hf, name).from_pretrained(folder).eval()
        inputs = [f"{text.split()[0]} [MASK] {' '.join(text.split()[2:])}" for text in texts[:3]]
        ours = transformers.pipeline(task, model=model, tokenizer=str(folder), device="cpu")
        theirs = transformers.pipeline(task, model=str(folder), device="cpu")
        for mine, expected in zip(ours(inputs, **kwargs), theirs(inputs, **kwargs), strict=True):
            assert [c.get("token", c.get("label")) for c in mine] == [
                c.get("token", c.get("label")) for c in expected]
            np.testing.assert_allclose([c["score"] for c in mine],
                                       [c["score"] for c in expected], atol=1e-5, rtol=0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[101, 7592, 102]]))
    assert out.loss is None and out[0] is out.logits and list(out) == ["logits"]


def test_pipeline_truncates_where_the_finetuned_task_does(tmp_path, minilm_dir, tokenizer,
                                                          snippets):
    model = bertkit.BertForSequenceClassification.from_pretrained(minilm_dir,
                                                                  id2label=SENTIMENT).eval()
    spread_head(model.classifier, 0)
    task = build_task("classification", max_length=64)
    task.use_labels(model.config.id2label)
    save_finetuned(tmp_path, task, model, tokenizer)
    long_text = " ".join(row["text"] for row in snippets[:10])  # ~250 tokens
    [ours] = bertkit.predict(tmp_path, [long_text])
    theirs = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu")(
        long_text, top_k=None, truncation=True)
    found = {s["label"]: s["score"] for s in theirs}
    for label, p in ours["probabilities"].items():
        assert found[label] == pytest.approx(p, abs=1e-5)


# --- folders transformers saved, in bertkit predict ------------------------------------------


def transformers_folder(folder, minilm_dir, model_class: str, seed: int = 0, **config):
    """MiniLM under one of transformers' BERT heads (seeded, spread wide), written with its
    tokenizer by transformers' own save_pretrained: a folder with no task.json."""
    model = getattr(transformers, model_class).from_pretrained(minilm_dir, **config).eval()
    spread_head(model.qa_outputs if hasattr(model, "qa_outputs") else model.classifier, seed)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


SEQUENCE_HEADS = {  # config, and how the text-classification pipeline turns logits into scores
    "named labels": (dict(id2label=SENTIMENT), "softmax"),
    "unnamed labels": ({}, "softmax"),
    "multi-label": (dict(id2label={0: "sports", 1: "film", 2: "music"},
                         problem_type="multi_label_classification"), "sigmoid"),
    "regression": (dict(num_labels=1, problem_type="regression"), "none"),
    "one label, no problem_type": (dict(num_labels=1), "none"),  # trained as regression
}


@pytest.mark.parametrize("head", SEQUENCE_HEADS)
def test_predict_on_a_transformers_sequence_classifier_gives_its_pipelines_scores(
        head, tmp_path, minilm_dir, texts, snippets):
    """No task.json: the task is config.json's (problem_type), the labels its id2label, and
    texts are cut where the pipeline cuts them (the model's 512 positions, not bertkit's 128)."""
    config, function = SEQUENCE_HEADS[head]
    folder = transformers_folder(tmp_path, minilm_dir, "BertForSequenceClassification", **config)
    inputs = [*texts[:6], " ".join(row["text"] for row in snippets[:25])]  # the last ~600 tokens
    ours = bertkit.predict(folder, inputs)
    theirs = transformers.pipeline("text-classification", model=str(folder), device="cpu")(
        inputs, top_k=None, function_to_apply=function, truncation=True)
    for mine, scores in zip(ours, theirs, strict=True):
        found = {s["label"]: s["score"] for s in scores}
        if function == "none":
            assert mine["score"] == pytest.approx(found["LABEL_0"], abs=1e-5)
            continue
        assert mine["probabilities"] == pytest.approx(found, abs=1e-5)
        if function == "sigmoid":
            assert set(mine["labels"]) == {label for label, p in found.items() if p >= 0.5}
        else:
            assert mine["label"] == max(found, key=found.get)
    if head == "unnamed labels":
        assert set(ours[0]["probabilities"]) == {"LABEL_0", "LABEL_1"}


def test_predict_on_a_trainer_saved_token_classifier_gives_its_pipelines_entities(
        tmp_path, minilm_dir, texts):
    folder = transformers_folder(tmp_path / "model", minilm_dir, "BertForTokenClassification",
                                 seed=1, id2label=dict(enumerate(ENTITIES)))
    model = transformers.BertForTokenClassification.from_pretrained(folder)
    trainer = Trainer(model=model, processing_class=transformers.AutoTokenizer.from_pretrained(
        folder), args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[],
                                        use_cpu=True))
    trainer.save_model(str(tmp_path / "saved"))
    ours = bertkit.predict(tmp_path / "saved", texts)
    theirs = transformers.pipeline("token-classification", model=str(tmp_path / "saved"),
                                   device="cpu", aggregation_strategy="first")(texts)
    expected = [[(g["entity_group"], g["start"], g["end"]) for g in groups] for groups in theirs]
    assert [[(e["type"], e["start"], e["end"]) for e in mine["entities"]]
            for mine in ours] == expected
    assert sum(map(len, expected)) > 5


def test_predict_on_a_transformers_question_answerer_gives_its_answers(tmp_path, minilm_dir):
    folder = transformers_folder(tmp_path, minilm_dir, "BertForQuestionAnswering", seed=2)
    questions = squad_questions()
    ours = bertkit.predict(folder, [json.dumps(q) for q in questions])
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == transformers_answers(
        folder, questions)


def test_predict_on_a_transformers_multiple_choice_model_gives_its_probabilities(
        tmp_path, minilm_dir, texts):
    folder = transformers_folder(tmp_path, minilm_dir, "BertForMultipleChoice", seed=3)
    questions = [{"question": text, "choices": texts[i + 1:i + 4]}
                 for i, text in enumerate(texts[:6])]
    ours = bertkit.predict(folder, [json.dumps(q) for q in questions])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertForMultipleChoice.from_pretrained(folder).eval()
    for question, mine in zip(questions, ours, strict=True):
        inputs = hf_tokenizer([question["question"]] * 3, question["choices"], padding=True,
                              return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v[None] for k, v in inputs.items()}).logits[0]
        np.testing.assert_allclose(mine["probabilities"], logits.softmax(-1).numpy(), atol=1e-5)


def tiny_bert(**config):
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, **config)


def headless(folder, minilm_dir):
    transformers.BertModel(tiny_bert()).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)


def head_named_but_not_saved(folder, minilm_dir):
    headless(folder, minilm_dir)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def without_tokenizer(folder, minilm_dir):
    transformers.BertForSequenceClassification(tiny_bert()).save_pretrained(folder)


def other_architecture(name):
    def write(folder, minilm_dir):
        config = getattr(transformers, f"{name}Config")(
            hidden_size=32, dim=32, num_hidden_layers=1, n_layers=1, num_attention_heads=2,
            n_heads=2, intermediate_size=64, hidden_dim=64)
        getattr(transformers, f"{name}ForSequenceClassification")(config).save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return write


def plain_bertkit_model_under_trainer(folder, minilm_dir):
    model = bertkit.BertForSequenceClassification(BertConfig.from_preset("tiny", vocab_size=64))
    Trainer(model=model, args=TrainingArguments(output_dir=str(folder / "out"), report_to=[],
                                                use_cpu=True)).save_model(str(folder))


UNUSABLE = {  # folder writer, words of the one line predict answers with
    "bare BertModel": (headless, "no fine-tuned task head"),
    "sentence-transformers": (None, "bertkit embed"),
    "head in config.json, not in the weights": (head_named_but_not_saved, "hold no classifier"),
    "no tokenizer files": (without_tokenizer, "has no tokenizer"),
    "RoBERTa": (other_architecture("Roberta"), "bertkit runs BERT only"),
    "DistilBERT": (other_architecture("DistilBert"), "bertkit runs BERT only"),
    "Trainer.save_model of a plain bertkit class": (plain_bertkit_model_under_trainer,
                                                    "trainer.model.save_pretrained"),
}


@pytest.mark.parametrize("case", UNUSABLE)
def test_predict_refuses_a_folder_it_cannot_answer_from_in_one_line(case, tmp_path, minilm_dir,
                                                                    capsys):
    write, words = UNUSABLE[case]
    folder = minilm_dir if write is None else tmp_path
    if write is not None:
        write(folder, minilm_dir)
    (tmp_path / "in.txt").write_text("A gorgeous, witty film.\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(folder), str(tmp_path / "in.txt")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("bertkit: error: ") and words in line, line


# --- sentence-transformers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def st_texts(snippets):
    """Real snippets, texts over 256 tokens (snippets joined), and an empty one."""
    joined = [" ".join(row["text"] for row in snippets[start:start + 12])
              for start in (40, 60, 80)]
    return [row["text"] for row in snippets[:20]] + joined + [""]


@pytest.fixture(scope="module")
def reference(minilm_dir, st_texts):
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model, model.encode(st_texts, batch_size=16)


def cosines(a, b):
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def test_embedder_follows_the_sentence_transformers_folder(minilm_dir, st_texts, reference,
                                                           tokenizer, caplog):
    model, expected = reference
    assert model.max_seq_length == 256
    assert max(len(ids) for ids in tokenizer(st_texts)["input_ids"]) > 300
    embedder = Embedder(minilm_dir)
    assert (embedder.max_length, embedder.pooling, embedder.normalize) == (256, "mean", True)
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        ours = embedder.encode(st_texts)
    assert "3 of 24 texts are longer than 256 tokens" in caplog.text
    assert cosines(ours[:-1], expected[:-1]).min() >= 0.99999
    # An empty text: zero by default (nothing to embed); sentence-transformers' unit vector of
    # [CLS] [SEP] with empty="model".
    assert not ours[-1].any() and np.linalg.norm(expected[-1]) == pytest.approx(1, abs=1e-5)
    as_model = Embedder(minilm_dir, empty="model").encode([""])
    assert cosines(as_model, expected[-1:])[0] >= 0.99999
    # Arguments given win over the folder's.
    longer = Embedder(minilm_dir, max_length=512, normalize=False).encode(st_texts[-4:-1])
    assert cosines(longer, expected[-4:-1]).max() < 0.999
    assert np.abs(np.linalg.norm(longer, axis=1) - 1).min() > 0.2


@pytest.mark.parametrize("options", [{}, dict(layers="second_to_last", pooling="cls",
                                              normalize=False, max_length=128)])
def test_embedder_writes_a_sentence_transformers_folder(tmp_path, minilm_dir, st_texts, options):
    embedder = Embedder(minilm_dir, **options)
    embedder.save_sentence_transformers(tmp_path)
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert loaded.max_seq_length == embedder.max_length
    ours = embedder.encode(st_texts[:-1])
    np.testing.assert_allclose(loaded.encode(st_texts[:-1], batch_size=16), ours, atol=1e-5,
                               rtol=0)
    again = Embedder(tmp_path)
    assert (again.max_length, again.pooling, again.normalize) == (
        embedder.max_length, embedder.pooling, embedder.normalize)
    np.testing.assert_allclose(again.encode(st_texts[:-1]), ours, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory, minilm_dir):
    """A seeded random 2-layer transformers BertModel with 1024 positions and the real
    vocabulary: quick to save and load."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=1024)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    return folder


def test_an_interrupted_sentence_transformers_save_leaves_no_partial_folder(
        tmp_path, tiny_encoder_dir, monkeypatch):
    """A save stopped part-way (Ctrl-C, a full disk) while a JSON file of the layout is written,
    after the weights and tokenizer are: the earlier folder at the path is kept byte for byte,
    and a new path gets nothing that would load as a plain encoder."""
    def contents(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    good = tmp_path / "good"
    Embedder(tiny_encoder_dir, max_length=256).save_sentence_transformers(good)
    before = contents(good)
    shorter = Embedder(tiny_encoder_dir, max_length=128)
    write_text = Path.write_text

    def failing_write_text(path, text, *args, **kwargs):
        if path.name == "modules.json":
            raise failure
        return write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    failure = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        shorter.save_sentence_transformers(good)
    assert contents(good) == before
    failure = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFull, match="new.*is the disk full"):
        shorter.save_sentence_transformers(tmp_path / "new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]  # no new or staging folder
    assert Embedder(good).max_length == 256


def test_embedder_reads_the_layout_sentence_transformers_writes_now(tmp_path, reference,
                                                                     st_texts):
    """sentence-transformers 5+ saves ``pooling_mode`` and keeps max_seq_length in
    tokenizer_config.json's model_max_length."""
    model, expected = reference
    model.save(str(tmp_path))
    embedder = Embedder(tmp_path)
    assert (embedder.max_length, embedder.pooling, embedder.normalize) == (256, "mean", True)
    assert cosines(embedder.encode(st_texts[:-1]), expected[:-1]).min() >= 0.99999


def test_a_folder_stating_no_length_cuts_at_the_models_positions(tmp_path, tiny_encoder_dir,
                                                                 snippets):
    """No max_seq_length and no tokenizer model_max_length: sentence-transformers cuts at the
    model's positions, 1024 here, not at 512."""
    folder = tmp_path / "st"
    Embedder(tiny_encoder_dir).save_sentence_transformers(folder)
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        stated = json.loads((folder / name).read_text())
        del stated[key]
        (folder / name).write_text(json.dumps(stated))
    long_texts = [" ".join(row["text"] for row in snippets[:count]) for count in (25, 60)]
    embedder = Embedder(folder)
    lengths = [len(ids) for ids in embedder.tokenizer(long_texts)["input_ids"]]
    assert 512 < lengths[0] < 1024 < lengths[1]
    reference = SentenceTransformer(str(folder), device="cpu")
    assert embedder.max_length == reference.max_seq_length == 1024
    np.testing.assert_allclose(embedder.encode(long_texts), reference.encode(long_texts),
                               atol=1e-5, rtol=0)


def test_token_offsets_of_a_lower_casing_folder_point_into_the_text_given(
        tmp_path, tiny_encoder_dir, minilm_dir):
    """sentence_bert_config.json's do_lower_case: 'İ' lower-cases to two characters, and the
    offsets still point into the text given, where transformers' tokenizer points."""
    Embedder(tiny_encoder_dir).save_sentence_transformers(tmp_path)
    config_file = tmp_path / "sentence_bert_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "do_lower_case": True}))
    text = "İstanbul İzmir x, aİb ΣΑΣ"
    ours = Embedder(tmp_path, pooling="tokens").encode_tokens([text])[0]
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_dir)(
        text, return_offsets_mapping=True)
    assert ours.tokens[:5] == ["istanbul", "i", "##z", "##mir", "x"]
    assert ours.offsets == [tuple(span) for span in theirs["offset_mapping"][1:-1]]


def test_sentence_transformers_recipes_embedder_cannot_follow(tmp_path, minilm_dir):
    embedder = Embedder(minilm_dir)
    embedder.save_sentence_transformers(tmp_path)
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"word_embedding_dimension": 384,
                                   "pooling_mode": "weightedmean"}))
    with pytest.raises(ValueError, match="pooling weightedmean, which Embedder does not apply"):
        Embedder(tmp_path)
    assert Embedder(tmp_path, pooling="mean").pooling == "mean"  # chosen: the encoder alone
    with pytest.raises(ValueError, match="one layer's vectors"):
        Embedder(minilm_dir, layers="sum_last_four").save_sentence_transformers(tmp_path / "x")


# --- tools that replace the model's Linear layers ---------------------------------------------


def test_torch_dynamic_int8_quantization_of_the_model_as_of_transformers(minilm_dir, texts,
                                                                          tokenizer):
    """``torch.ao.quantization.quantize_dynamic(model, {nn.Linear})``, the usual int8 recipe
    for a BERT on a CPU, quantizes bertkit's query/key/value too (they are not joined then) and
    gives transformers' outputs under the same recipe. One text at a time: an input is
    quantized over its whole batch, and transformers' includes the padding, bertkit's not.
    Where the two exact models' last-bit differences land an activation on the other side of
    an int8 step, that step spreads through the layers: most texts agree to 1e-5, each one well
    within int8's own error."""
    from torch.ao.quantization import quantize_dynamic

    models = [quantize_dynamic(library.BertModel.from_pretrained(minilm_dir).eval(),
                               {torch.nn.Linear}, dtype=torch.qint8)
              for library in (bertkit, transformers)]
    assert type(models[0].encoder.layer[0].attention.self.query) is not torch.nn.Linear
    exact = bertkit.BertModel.from_pretrained(minilm_dir).eval()
    agreeing = 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer([text], return_tensors="pt")
            ours, theirs = (model(**ids).last_hidden_state for model in models)
            int8_error = (theirs - exact(**ids).last_hidden_state).abs().mean()
            assert int8_error > 1e-2  # int8 ran
            assert (ours - theirs).abs().mean() < int8_error / 4
            agreeing += bool((ours - theirs).abs().max() < 1e-5)
    assert agreeing >= 0.75 * len(texts)


def test_peft_lora_on_query_and_value_as_on_transformers(minilm_dir, texts, tokenizer):
    """PEFT's LoRA adapters on query and value (its usual targets for BERT) act in bertkit's
    attention as in transformers': same adapter weights, same outputs and adapter gradients."""
    import peft
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    mask = ids["attention_mask"].bool()
    config = dict(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0,
                  init_lora_weights=False)  # random B: the adapters change the outputs
    models = []
    for library in (bertkit, transformers):
        torch.manual_seed(0)
        models.append(peft.get_peft_model(library.BertModel.from_pretrained(minilm_dir,
                                                                            **NO_DROPOUT),
                                          peft.LoraConfig(**config)))
    ours, theirs = models
    adapters = {k: v for k, v in theirs.state_dict().items() if "lora_" in k}
    assert adapters and not ours.load_state_dict(adapters, strict=False).unexpected_keys
    results = []
    for model in (ours, theirs):
        model.train()  # no dropout anywhere: lora_dropout 0 and NO_DROPOUT
        hidden = model(**ids).last_hidden_state[mask]
        hidden.square().mean().backward()
        results.append((hidden.detach(), {k: p.grad for k, p in model.named_parameters()
                                          if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        plain = bertkit.BertModel.from_pretrained(minilm_dir).eval()(**ids).last_hidden_state
    assert (results[0][0] - plain[mask]).abs().max() > 1e-2  # the adapters were applied


# --- checkpoint folders as transformers writes them --------------------------------------------


def tiny_transformers_model(model_class=transformers.BertModel, dtype=torch.float32):
    """A seeded random 2-layer transformers model with a 200-word vocabulary, in eval mode."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    return model_class(config).to(dtype).eval()


TINY_IDS = torch.tensor([[2, 17, 45, 199, 3, 88, 1], [2, 150, 9, 3, 0, 0, 0]])


def test_sharded_transformers_checkpoint_loads_in_bertkit(tmp_path):
    """save_pretrained(max_shard_size=...) splits the weights over files listed in
    model.safetensors.index.json: bertkit reads them all, and names a missing shard."""
    reference = tiny_transformers_model()
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        expected = reference(TINY_IDS).last_hidden_state
        ours = bertkit.BertModel.from_pretrained(tmp_path).eval()(TINY_IDS).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=f"lists the shard {shards[-1].name}.*copy every"):
        bertkit.BertModel.from_pretrained(tmp_path)


def test_saving_over_a_sharded_checkpoint_leaves_no_index_that_shadows_it(tmp_path):
    tiny_transformers_model().save_pretrained(tmp_path, max_shard_size="20KB")
    torch.manual_seed(1)
    ours = bertkit.BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64)).eval()
    ours.save_pretrained(tmp_path, safe_serialization=False)  # pytorch_model.bin
    with torch.no_grad():
        expected = ours(TINY_IDS).last_hidden_state
        loaded = bertkit.BertModel.from_pretrained(tmp_path).eval()(TINY_IDS).last_hidden_state
    torch.testing.assert_close(loaded, expected, atol=0, rtol=0)


def test_resaved_bf16_checkpoint_states_the_dtype_of_its_weights(tmp_path):
    """bertkit builds float32 models: re-saved, a bf16 checkpoint's weights are float32, and
    config.json must say so, or transformers (dtype "auto") loads them rounded to bf16."""
    tiny_transformers_model(dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    ours = bertkit.BertModel.from_pretrained(tmp_path / "bf16").eval()
    ours.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["dtype"] == "float32"
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "resaved").eval()
    assert theirs.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(theirs(TINY_IDS).last_hidden_state,
                                   ours(TINY_IDS).last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", [dict(torch_dtype=torch.bfloat16), dict(dtype="bfloat16"),
                                    dict(device_map="cpu")])
def test_transformers_loading_options_are_refused_not_ignored(tmp_path, option):
    """Taken as config overrides they gave a float32 model and landed in config.json (a torch
    dtype there made save_pretrained fail later)."""
    tiny_transformers_model().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=f"got {next(iter(option))}: transformers loading "
                                        r"options.*model\.to\("):
        bertkit.hf.BertForSequenceClassification.from_pretrained(tmp_path, **option)


@pytest.mark.parametrize("option, message", [
    (dict(hidden_dropout=0.2), r"got hidden_dropout: no BertConfig field\. Did you mean "
                               r"hidden_dropout_prob\? The config fields are "),
    (dict(output_hidden_states=True), r"It is an argument of the forward call: "
                                      r"model\(\*\*inputs, output_hidden_states=True\)"),
    (dict(attn_implementation="eager"), "transformers loading options")])
def test_from_pretrained_refuses_names_that_are_no_config_field(tmp_path, option, message):
    """They were kept in config.extra and changed nothing: a typo's dropout stayed 0.1, hidden
    states asked for this way never came. transformers raises on them too."""
    tiny_transformers_model().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=message):
        bertkit.BertModel.from_pretrained(tmp_path, **option)
    if "hidden_dropout" in option:  # transformers' BertModel refuses it as well
        with pytest.raises(TypeError):
            transformers.BertModel.from_pretrained(tmp_path, **option)
    loaded = bertkit.BertForSequenceClassification.from_pretrained(
        tmp_path, hidden_dropout_prob=0.2, num_labels=3, position_embedding_type="absolute")
    assert loaded.config.hidden_dropout_prob == 0.2 and loaded.config.num_labels == 3


def test_outputs_read_by_position_as_transformers_outputs(minilm_dir, texts, tokenizer):
    """``model(**inputs)[0]`` (the tutorials' last hidden state) and slices: the outputs in
    transformers' order, items that are None left out as transformers leaves them out."""
    ids = tokenizer(texts[:4], padding=True, return_tensors="pt")
    ours = bertkit.BertModel.from_pretrained(minilm_dir).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        a, b = ours(**ids), theirs(**ids)
    assert len(a[:]) == len(b.to_tuple()) == 2
    for mine, reference in zip(a[:], b.to_tuple(), strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    assert a[0] is a["last_hidden_state"] and a[-1] is a.pooler_output
    with pytest.raises(KeyError):
        a["loss"]
