"""bertkit's model against transformers' BERT: real weights, every head, both directions."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
import transformers

import bertkit.model as bk
from bertkit.config import BertConfig

HEADS = [
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMultipleChoice",
]
SMALL = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=40)


def hf_config(**overrides):
    return transformers.BertConfig(**{**SMALL, **overrides})


def random_batch(name, vocab_size=SMALL["vocab_size"], num_labels=2, seed=0):
    """Inputs with padding (one row at full length, others shorter) and labels for every head."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([20, 13, 7, 16])
    shape = (4, 3, 20) if name == "BertForMultipleChoice" else (4, 20)
    input_ids = torch.randint(1, vocab_size, shape, generator=g)
    attention_mask = (torch.arange(20) < lengths.view(4, *[1] * (len(shape) - 1))).long()
    attention_mask = attention_mask.expand(shape).contiguous()
    input_ids = input_ids * attention_mask
    token_type_ids = (torch.arange(20) >= 6).long().expand(shape) * attention_mask
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    if name in ("BertForPreTraining", "BertForMaskedLM"):
        labels = torch.full((4, 20), -100)
        picked = torch.rand((4, 20), generator=g) < 0.3
        labels[picked & attention_mask.bool()] = input_ids[picked & attention_mask.bool()]
        batch["labels"] = labels
    if name == "BertForPreTraining":
        batch["next_sentence_label"] = torch.randint(0, 2, (4,), generator=g)
    if name in ("BertForNextSentencePrediction", "BertForMultipleChoice"):
        batch["labels"] = torch.randint(0, 2 if name.endswith("Prediction") else 3, (4,),
                                        generator=g)
    if name == "BertForSequenceClassification":
        batch["labels"] = (torch.randn(4, generator=g) if num_labels == 1
                           else torch.randint(0, num_labels, (4,), generator=g))
    if name == "BertForTokenClassification":
        batch["labels"] = torch.randint(0, num_labels, (4, 20), generator=g).masked_fill(
            attention_mask == 0, -100)
    if name == "BertForQuestionAnswering":
        batch["start_positions"] = torch.tensor([3, 5, 1, 25])  # 25: outside, ignored
        batch["end_positions"] = torch.tensor([4, 9, 2, 30])
    return batch


def compare(ours, theirs, mask=None, atol=1e-5, labels=None):
    """Every output the reference gives (logits, loss, states) matches to ``atol``.

    With MLM ``labels``, bertkit decodes only the predicted positions: compare those rows.
    """
    for key, expected in theirs.items():
        if labels is not None and key in ("prediction_logits", "logits"):
            expected = expected[labels != -100]
        if expected is None or key not in ours:
            continue
        if isinstance(expected, tuple):
            for a, b in zip(ours[key], expected, strict=True):
                torch.testing.assert_close(a, b, atol=atol, rtol=0)
            continue
        actual = ours[key]
        if mask is not None and key == "last_hidden_state":
            actual, expected = actual[mask], expected[mask]
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=key)


# --- real weights -------------------------------------------------------------------------


def test_minilm_real_weights_match_transformers(minilm_dir, wiki_sentences):
    ours = bk.BertModel.from_pretrained(minilm_dir).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    sentences = wiki_sentences[::150][:240]  # spread over the corpus, short and long mixed
    assert len(sentences) >= 200
    for start in range(0, len(sentences), 16):
        batch = tokenizer(sentences[start:start + 16], padding=True, truncation=True,
                          max_length=128, return_tensors="pt", return_token_type_ids=True)
        assert batch["attention_mask"].float().mean() < 1  # padding is really exercised
        with torch.no_grad():
            a = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            b = theirs(**batch)
        mask = batch["attention_mask"].bool()
        compare(a, b, mask)
        pooled = [(o.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                  for o in (a, b)]
        torch.testing.assert_close(pooled[0], pooled[1], atol=1e-5, rtol=0)


def test_all_hidden_states_and_attentions_match(minilm_dir):
    ours = bk.BertModel.from_pretrained(minilm_dir).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(["The cat sat on the mat.", "Paris is the capital and most populous city "
                       "of France."], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
        b = theirs(**batch, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == 7 and len(a.attentions) == 6
    mask = batch["attention_mask"].bool()
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(x[mask], y[mask], atol=1e-5, rtol=0)
    for x, y in zip(a.attentions, b.attentions, strict=True):  # rows of real query tokens
        torch.testing.assert_close(x.transpose(1, 2)[mask], y.transpose(1, 2)[mask],
                                   atol=1e-5, rtol=0)


# --- every head, both directions ----------------------------------------------------------


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
@pytest.mark.parametrize("name", HEADS)
def test_transformers_checkpoint_loads_with_identical_outputs(tmp_path, name, hidden_act):
    torch.manual_seed(0)
    reference = getattr(transformers, name)(hf_config(hidden_act=hidden_act)).eval()
    reference.save_pretrained(tmp_path)
    ours = getattr(bk, name).from_pretrained(tmp_path).eval()
    batch = random_batch(name)
    mlm_labels = batch.get("labels") if name in ("BertForPreTraining", "BertForMaskedLM") else None
    with torch.no_grad():
        compare(ours(**batch), reference(**batch), batch["attention_mask"].bool(),
                labels=mlm_labels)
        if mlm_labels is not None:  # without labels: logits at every position, as the reference
            del batch["labels"]
            compare(ours(**batch), reference(**batch), batch["attention_mask"].bool())


@pytest.mark.parametrize("name", HEADS)
def test_bertkit_checkpoint_loads_into_transformers(tmp_path, name):
    torch.manual_seed(1)
    ours = getattr(bk, name)(BertConfig(**SMALL)).eval()
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, name).from_pretrained(tmp_path).eval()
    batch = random_batch(name)
    mlm_labels = batch.get("labels") if name in ("BertForPreTraining", "BertForMaskedLM") else None
    with torch.no_grad():
        compare(ours(**batch), theirs(**batch), batch["attention_mask"].bool(), labels=mlm_labels)
    if name in ("BertForPreTraining", "BertForMaskedLM"):  # HF ties the decoder as we do
        assert (theirs.cls.predictions.decoder.weight.data_ptr()
                == theirs.bert.embeddings.word_embeddings.weight.data_ptr())


@pytest.mark.parametrize("num_labels,problem_type", [(1, None), (3, None),
                                                      (3, "multi_label_classification")])
def test_sequence_classification_losses(tmp_path, num_labels, problem_type):
    torch.manual_seed(2)
    reference = transformers.BertForSequenceClassification(
        hf_config(num_labels=num_labels, problem_type=problem_type)).eval()
    reference.save_pretrained(tmp_path)
    ours = bk.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = random_batch("BertForSequenceClassification", num_labels=num_labels)
    if problem_type:
        batch["labels"] = (torch.rand(4, num_labels) > 0.5).float()
    with torch.no_grad():
        a, b = ours(**batch), reference(**batch)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)


def test_bf16_regression_loss_keeps_float32_targets(tmp_path):
    """Under bf16 autocast the scores are not rounded to bf16 (4.3 would become 4.3125)."""
    torch.manual_seed(2)
    transformers.BertForSequenceClassification(hf_config(num_labels=1)).save_pretrained(tmp_path)
    ours = bk.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = random_batch("BertForSequenceClassification", num_labels=1)
    batch["labels"] = torch.tensor([4.3, 0.7, 2.45, 3.9])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(**batch)
    assert out.logits.dtype == torch.bfloat16
    expected = F.mse_loss(out.logits.float().squeeze(-1), batch["labels"])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,skip_padding", [
    ("BertForPreTraining", False), ("BertForMaskedLM", True),
    ("BertForSequenceClassification", False), ("BertForSequenceClassification", True),
    ("BertForMultipleChoice", True)])
def test_gradients_match_transformers(tmp_path, name, skip_padding):
    """Every parameter's gradient, where the last layer computes only the states the head reads
    (checked on its feed-forward's rows): [CLS] alone for the pooled heads, [CLS] and each
    sequence's predicted positions for the masked LM."""
    torch.manual_seed(3)
    reference = getattr(transformers, name)(hf_config())
    reference.save_pretrained(tmp_path)
    ours = getattr(bk, name).from_pretrained(tmp_path)
    ours.eval(), reference.eval()  # no dropout: both sides see the same function
    batch = random_batch(name)
    rows = []
    ours.bert.encoder.layer[-1].intermediate.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[:-1]))
    ours(**batch, skip_padding=skip_padding).loss.backward()
    reference(**batch).loss.backward()
    if "labels" in batch and batch["labels"].shape == batch["input_ids"].shape:  # masked LM
        assert rows == [(4, 1 + int((batch["labels"] != -100).sum(1).max()))]
    else:
        assert rows == [(batch["input_ids"].shape[:-1].numel(), 1)]
    theirs = dict(reference.named_parameters())
    checked = 0
    for param_name, param in ours.named_parameters():
        expected = theirs[param_name].grad
        # The key biases' gradient and that of the multiple-choice classifier's bias are zero in
        # exact arithmetic (softmax ignores a shift shared by all keys, or all choices): both
        # sides hold rounding noise there (up to 3e-8 on an Intel Xeon), hence the floor.
        scale = expected.abs().max().clamp_min(1e-3)
        assert (param.grad - expected).abs().max() / scale <= 1e-4, param_name
        checked += 1
    assert checked == len(theirs)


def test_training_keeps_decoder_tied_to_embeddings():
    model = bk.BertForPreTraining(BertConfig(**SMALL))
    # the padding row starts at zero (as the reference initialises it), the rest does not
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert embeddings[0].abs().sum() == 0 and embeddings[1:].abs().sum(1).min() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**random_batch("BertForPreTraining")).loss.backward()
    optimizer.step()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


# --- checkpoint variants ------------------------------------------------------------------


def test_legacy_pickle_with_gamma_beta_and_position_ids(tmp_path):
    torch.manual_seed(4)
    reference = transformers.BertForMaskedLM(hf_config()).eval()
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                          "LayerNorm.beta")
        state[key] = value
    state["bert.embeddings.position_ids"] = torch.arange(40)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    reference.config.save_pretrained(tmp_path)
    ours = bk.BertForMaskedLM.from_pretrained(tmp_path).eval()
    batch = random_batch("BertForMaskedLM")
    with torch.no_grad():
        compare(ours(**batch), reference(**batch), labels=batch["labels"])


def test_legacy_pickle_carrying_code_is_refused_without_running_it(tmp_path, capsys):
    class Payload:  # what a malicious pytorch_model.bin holds: a call made while unpickling
        def __reduce__(self):
            return print, ("payload ran",)

    BertConfig(**SMALL).save(tmp_path)
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(300, 64), "x": Payload()},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"(?s)bertkit refused to load .*pytorch_model\.bin.*"
                                         r"could run code.*Only if you trust the file.*"
                                         r"safetensors\.torch\.save_file"):
        bk.BertModel.from_pretrained(tmp_path)
    assert "payload ran" not in capsys.readouterr().out
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)  # the payload is real
    assert "payload ran" in capsys.readouterr().out


def test_bare_encoder_checkpoint_loads_under_a_head_and_reports_it(minilm_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        model = bk.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    assert model.classifier.out_features == 3
    report = [r.getMessage() for r in caplog.records]
    assert len(report) == 1 and "initialised new weights classifier" in report[0]
    encoder = bk.BertModel.from_pretrained(minilm_dir)
    torch.testing.assert_close(model.bert.encoder.layer[5].output.dense.weight,
                               encoder.encoder.layer[5].output.dense.weight)
    # Only the new head is initialised (the paper's truncated normal), nothing loaded is touched.
    weight = model.classifier.weight
    assert weight.abs().max() <= 2 * model.config.initializer_range
    assert abs(weight.std().item() - 0.88 * model.config.initializer_range) < 0.003
    assert torch.count_nonzero(model.classifier.bias) == 0
    pretraining = bk.BertForPreTraining.from_pretrained(minilm_dir)
    transform = pretraining.cls.predictions.transform
    assert torch.all(transform.LayerNorm.weight == 1) and torch.all(transform.dense.bias == 0)
    torch.testing.assert_close(pretraining.cls.predictions.decoder.weight,
                               encoder.embeddings.word_embeddings.weight)


def test_head_checkpoint_loads_into_bare_model(tmp_path):
    torch.manual_seed(5)
    reference = transformers.BertForPreTraining(hf_config()).eval()
    reference.save_pretrained(tmp_path)
    ours = bk.BertModel.from_pretrained(tmp_path).eval()
    batch = random_batch("BertModel")
    with torch.no_grad():
        compare(ours(**batch), reference.bert(**batch), batch["attention_mask"].bool())


def test_config_round_trip_keeps_unknown_keys(tmp_path, minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    config.save(tmp_path)
    original = json.loads((minilm_dir / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in original.items():
        if key not in ("id2label", "label2id"):
            assert saved[key] == value, key
    assert transformers.BertConfig.from_pretrained(tmp_path).hidden_size == 384


@pytest.mark.parametrize("preset,layers,hidden", [("tiny", 2, 128), ("mini", 4, 256),
                                                  ("small", 4, 512), ("medium", 8, 512),
                                                  ("base", 12, 768), ("large", 24, 1024)])
def test_presets_match_the_reference_parameter_count(preset, layers, hidden):
    config = BertConfig.from_preset(preset)
    reference = transformers.BertConfig(num_hidden_layers=layers, hidden_size=hidden,
                                        num_attention_heads=hidden // 64,
                                        intermediate_size=4 * hidden)
    with torch.device("meta"):
        ours = sum(p.numel() for p in bk.BertModel(config).parameters())
        theirs = sum(p.numel() for p in transformers.BertModel(reference).parameters())
    assert ours == theirs
    if preset == "base":
        assert 109e6 < ours < 111e6  # the paper's 110M


# --- bad input: clear messages ------------------------------------------------------------


def test_missing_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        bk.BertModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="needs a config.json"):
        bk.BertModel.from_pretrained(tmp_path)
    BertConfig(**SMALL).save(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors or pytorch_model.bin"):
        bk.BertModel.from_pretrained(tmp_path)


def test_config_that_does_not_match_weights_names_the_tensor(tmp_path):
    bk.BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 256
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"intermediate.dense.bias has shape \(128,\) in the "
                                         r"checkpoint but \(256,\)"):
        bk.BertModel.from_pretrained(tmp_path)
    config["intermediate_size"], config["num_hidden_layers"] = 128, 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="encoder tensors missing.*num_hidden_layers"):
        bk.BertModel.from_pretrained(tmp_path)


def test_vocab_larger_than_config_is_refused(tmp_path):
    bk.BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(f"w{i}" for i in range(301)) + "\n")
    with pytest.raises(ValueError, match="vocab.txt has 301 entries but config.json says "
                                         "vocab_size 300"):
        bk.BertModel.from_pretrained(tmp_path)


def test_head_with_other_label_count(tmp_path):
    bk.BertForSequenceClassification(BertConfig(**SMALL).with_labels(2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier.bias.*ignore_mismatched_sizes=True"):
        bk.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    model = bk.BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5,
                                                             ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 5


def test_bad_inputs_to_forward():
    model = bk.BertModel(BertConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match="input_ids contains 300, outside \\[0, 300\\)"):
        model(torch.tensor([[2, 300]]))
    with pytest.raises(ValueError, match="token_type_ids contains 2"):
        model(torch.tensor([[2, 3]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="longer than max_position_embeddings \\(40\\).*truncat"):
        model(torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\[batch, tokens\\]"):
        model(torch.tensor([2, 3]))


def test_bad_config_values():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported"):
        BertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        BertConfig.from_preset("huge")


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_cpu_dropout_has_dropout_statistics(p, dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 4, 128, 128, dtype=dtype, requires_grad=True)
    y = bk.dropout(x, p)
    dropped = y == 0
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    # bit for bit torch's own arithmetic on that mask (the kept value rounded to the dtype)
    assert torch.equal(y, x * ((~dropped).to(dtype) * (1 / (1 - p))))
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
    # Every slot of the 64-bit draw (and every row) drops at the same rate: no structure.
    per_slot = dropped.reshape(-1, 4).float().mean(0)
    assert torch.all((per_slot - p).abs() < 4 * (p * (1 - p) * 4 / n) ** 0.5)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).to(dtype) / (1 - p))
    assert bk.dropout(x, 0.0) is x


@pytest.mark.parametrize("length", [5, 15, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_softmax_is_torch_softmax(length, dtype, monkeypatch):
    """`speedups.softmax` (max, exp and sum below 16 keys on an AVX-512 CPU) against
    torch.softmax in float32: the probabilities (padding-masked keys included) and the gradient
    of the scores."""
    from bertkit import speedups

    monkeypatch.setattr(speedups, "_cpu_vector_floats", lambda: 16)  # whatever this CPU has
    torch.manual_seed(0)
    scores0 = (torch.randn(24, 7, length) * 4).to(dtype)
    scores0[:5, :, -2:] = torch.finfo(dtype).min  # masked keys, as the attention bias gives
    upstream = torch.randn(24, 7, length)
    results = []
    for function in (speedups.softmax, lambda x, dtype: torch.softmax(x, -1, dtype=dtype)):
        scores = scores0.clone().requires_grad_()
        probs = function(scores, torch.float32)
        probs.backward(upstream)
        results.append((probs.detach(), scores.grad.float()))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert (results[0][0][:5, :, -2:] == 0).all()


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_attention_takes_the_fused_kernel_in_inference_with_amx(minilm_dir, wiki_sentences,
                                                                      amx, monkeypatch):
    """bf16 attention from 64 tokens on a CPU: SDPA's kernel in inference where the CPU has AMX
    (`speedups.fast_bf16_attention_kernel`), spelled out without AMX and in training; both agree
    with transformers' fp32 states to bf16's rounding."""
    from bertkit import speedups

    monkeypatch.setattr(speedups, "cpu_has_amx", lambda: amx)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    ours = bk.BertModel.from_pretrained(minilm_dir).eval()
    theirs = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer([" ".join(wiki_sentences[i:i + 4]) for i in range(0, 24, 4)],
                      padding=True, truncation=True, max_length=96, return_tensors="pt")
    assert batch["input_ids"].shape[1] >= 64 and batch["attention_mask"].float().mean() < 1
    with torch.no_grad():
        expected = theirs(**batch).last_hidden_state
        calls.clear()  # transformers' own
        with torch.autocast("cpu", torch.bfloat16):
            states = ours(**batch).last_hidden_state.float()
    assert len(calls) == (ours.config.num_hidden_layers if amx else 0)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(states[mask], expected[mask], atol=0.04, rtol=0)

    calls.clear()  # training: spelled out whatever the CPU
    with torch.autocast("cpu", torch.bfloat16):
        ours(**batch).last_hidden_state.float().sum().backward()
    assert not calls


def test_onednn_linear_is_f_linear():
    """`speedups.OneDNNLinear` (fp32 products through oneDNN, taken by `speedups.linear` on x86
    CPUs other than Intel's) against F.linear: outputs and the gradients of a non-contiguous
    input, the weight and the bias."""
    from bertkit import speedups

    if not speedups.can_pack_linears(torch.device("cpu")):
        pytest.skip("oneDNN's linear is used on x86 CPUs only")
    torch.manual_seed(0)
    x0 = torch.randn(2, 96, 7).transpose(1, 2)  # [2, 7, 96], not contiguous
    w0, b0, upstream = torch.randn(48, 96), torch.randn(48), torch.randn(2, 7, 48)
    results, backward_ops = [], []
    for function in (speedups.OneDNNLinear.apply, torch.nn.functional.linear, speedups.linear):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = function(x, w, b)
        y.backward(upstream)
        results.append((y.detach(), x.grad, w.grad, b.grad))
        backward_ops.append(type(y.grad_fn).__name__)
    assert backward_ops[0] == "OneDNNLinearBackward" != backward_ops[1]
    assert backward_ops[2] == backward_ops[1 if speedups.intel_cpu() else 0]
    for ours in (results[0], results[2]):
        for got, reference in zip(ours, results[1], strict=True):
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("onednn", [True, False])
def test_fused_masked_lm_loss_equals_the_separate_ops(precision, onednn, monkeypatch):
    """`LinearCrossEntropy` (the MLM decoder and loss in one, used in training) against
    F.linear (with the bias, as transformers' decoder) + F.cross_entropy under the same
    autocast: the loss, the logits and the gradients of the hidden states, the tied embedding
    matrix and the bias, over a number of rows that is no multiple of its block size; with
    oneDNN's product made before the blocks (x86; bf16 where the CPU has AMX, patched on here)
    and with MKL's product in each block (elsewhere)."""
    from bertkit import speedups
    from bertkit.speedups import LinearCrossEntropy

    if onednn and not speedups.can_pack_linears(torch.device("cpu")):
        pytest.skip("oneDNN's linear is used on x86 CPUs only")
    if not onednn:
        monkeypatch.setattr(speedups, "can_pack_linears", lambda device: False)
    monkeypatch.setattr(speedups, "cpu_has_amx", lambda: True)
    torch.manual_seed(0)
    vocab = 1000
    rows = 3 * LinearCrossEntropy.block_rows(vocab, product_in_loop=not onednn) + 5
    x0, w0, b0 = torch.randn(rows, 64), torch.randn(vocab, 64) * 0.2, torch.randn(vocab) * 0.1
    labels = torch.randint(0, vocab, (rows,))
    results = []
    for fused in (False, True):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            if fused:
                loss, logits = LinearCrossEntropy.apply(x, w, b, labels)
            else:
                logits = torch.nn.functional.linear(x, w, b)
                loss = torch.nn.functional.cross_entropy(logits, labels)
        (2.5 * loss).backward()  # an upstream gradient other than 1
        results.append((loss.detach(), logits.detach().float(), x.grad, w.grad, b.grad))
    tolerance = dict(atol=1e-6, rtol=1e-5) if precision == "fp32" else dict(atol=2e-3, rtol=2e-2)
    for name, ours, reference in zip(("loss", "logits", "x.grad", "weight.grad", "bias.grad"),
                                     results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, **tolerance, msg=name)
    assert not logits.requires_grad

    frozen = w0.clone()  # no gradient asked for the matrix: none computed
    x = x0.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        loss = LinearCrossEntropy.apply(x, frozen, b0, labels)[0]
    (2.5 * loss).backward()
    torch.testing.assert_close(x.grad, results[1][2], atol=0, rtol=0)
    assert frozen.grad is None


def test_fused_masked_lm_loss_under_fp16_keeps_small_probabilities_gradients():
    """Under fp16 autocast and a loss scale (GradScaler's 65,536), the decoder's gradient is as
    close to float64's as the separate ops' (which scale the logits' gradient in float32 before
    rounding it to fp16): the gradient of softmax's small probabilities, unscaled, would be fp16
    subnormals or zero (every word's row of the tied matrix gets one)."""
    from bertkit.speedups import LinearCrossEntropy

    torch.manual_seed(0)
    rows, vocab, hidden, scale = 64, 30522, 32, 65536.0
    x0, w0 = torch.randn(rows, hidden), torch.randn(vocab, hidden) * 0.8
    b0, labels = torch.randn(vocab) * 0.1, torch.randint(0, vocab, (rows,))

    def weight_gradient(kind):
        x, w, b = (t.clone().double() if kind == "float64" else t.clone() for t in (x0, w0, b0))
        w.requires_grad_()
        with torch.autocast("cpu", torch.float16, enabled=kind != "float64"):
            loss = (LinearCrossEntropy.apply(x, w, b, labels)[0] if kind == "fused" else
                    torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w, b),
                                                      labels))
        (loss * scale).backward()
        return w.grad.double() / scale

    truth = weight_gradient("float64")
    errors = {kind: ((weight_gradient(kind) - truth).norm(dim=1) / truth.norm(dim=1))
              for kind in ("separate", "fused")}
    assert errors["fused"].median() <= 1.1 * errors["separate"].median()
    assert errors["fused"].max() <= 2 * errors["separate"].max()
