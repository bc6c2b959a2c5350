"""Embeddings, feature strategies, fill-mask and `bertkit embed` against transformers' BERT.

Real weights (all-MiniLM-L6-v2) and real sentences (Wikipedia leads) wherever a model is needed;
fill-mask, which needs an MLM head no offline checkpoint has, runs on a seeded random
transformers BertForMaskedLM with the real vocabulary.
"""

import copy
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch
import transformers

from bertkit import speedups
from bertkit.cli import main
from bertkit.embed_files import embed_file
from bertkit.embeddings import STRATEGIES, Embedder, length_sorted_batches
from bertkit.export import export_onnx
from bertkit.fill_mask import FillMask
from bertkit.model import ACTIVATIONS, BertForMaskedLM, BertModel
from bertkit.speedups import PackedLinear, Packing, can_pack_linears, join_qkv, pack_linears
from bertkit.tokenizer import BertTokenizer

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "tokenizer.json",
                   "special_tokens_map.json")


@pytest.fixture(scope="module")
def hf(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    return tokenizer, transformers.BertModel.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="module")
def sentences(wiki_sentences):
    """1,000 real sentences spread over the corpus, with its 20 longest among them."""
    longest = sorted(wiki_sentences, key=len)[-20:]
    return wiki_sentences[::len(wiki_sentences) // 980][:980] + longest


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, minilm_dir):
    """A seeded random transformers BertForMaskedLM with the real vocabulary; its weights are
    spread wide enough that the top-k tokens are well separated."""
    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, initializer_range=0.3)
    transformers.BertForMaskedLM(config).eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def exact(minilm_dir):
    """bertkit's default Embedder: mean pooling + L2, exact fp32."""
    return Embedder(minilm_dir)


@pytest.fixture(scope="module")
def minilm(exact):
    """all-MiniLM-L6-v2's encoder, loaded once: Embedders given it share its weights."""
    return dict(model=exact.model, tokenizer=exact.tokenizer)


@pytest.fixture(scope="module")
def few(sentences, hf):
    """Ten real sentences and the reference's outputs for them, with offsets."""
    texts = sentences[5:1000:100]
    return texts, *reference_states(hf, texts, return_offsets_mapping=True)


def reference_states(hf, texts, **options):
    """transformers' tokenizer + BertModel on ``texts``: (batch, outputs)."""
    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt", **options)
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.inference_mode():
        return batch, model(**inputs, output_hidden_states=True)


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- parity with the reference --------------------------------------------------------------


def test_mean_pooling_reproduces_the_sentence_transformers_recipe(exact, hf, sentences):
    ours = exact.encode(sentences)
    expected = np.zeros_like(ours)
    # The reference runs in batches of similar length only to take less time: padding does not
    # change its mean-pooled vectors.
    order = np.argsort([len(s) for s in sentences])
    for start in range(0, len(sentences), 50):
        rows = order[start:start + 50]
        batch, out = reference_states(hf, [sentences[i] for i in rows])
        mask = batch["attention_mask"][..., None].float()
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
        expected[rows] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    assert ours.shape == (1000, 384) and ours.dtype == np.float32
    assert cosines(ours, expected).min() >= 0.99999
    assert np.abs(ours - expected).max() <= 1e-5


def test_per_token_vectors_align_with_tokens_and_offsets(minilm, hf, few):
    texts, batch, out = few
    ours = Embedder(**minilm, pooling="tokens", normalize=False).encode_tokens(texts)
    tokenizer = hf[0]
    for i, (text, row) in enumerate(zip(texts, ours, strict=True)):
        n = int(batch["attention_mask"][i].sum())
        inner = slice(1, n - 1)  # the reference's tokens without [CLS] and [SEP]
        assert row.tokens == tokenizer.convert_ids_to_tokens(batch["input_ids"][i, inner])
        assert row.offsets == [tuple(o) for o in batch["offset_mapping"][i, inner].tolist()]
        np.testing.assert_allclose(row.vectors, out.last_hidden_state[i, inner], atol=1e-5)
        for token, (start, end) in zip(row.tokens, row.offsets, strict=True):
            if text[start:end].isascii():  # accents are stripped from tokens, so skip those
                assert token.removeprefix("##") == text[start:end].lower()


DEFINITIONS = {  # each strategy written out from the reference's hidden states (L + 1 of them)
    "last": lambda hs: hs[-1],
    "second_to_last": lambda hs: hs[-2],
    "sum_last_four": lambda hs: hs[-4] + hs[-3] + hs[-2] + hs[-1],
    "concat_last_four": lambda hs: torch.cat([hs[-4], hs[-3], hs[-2], hs[-1]], dim=-1),
    "sum_all": lambda hs: sum(hs[1:]),
    "embeddings": lambda hs: hs[0],
}


@pytest.mark.parametrize("layers,combine,definition,deepest", [
    *[(name, "sum", DEFINITIONS[name], {"second_to_last": 5, "embeddings": 0}.get(name, 6))
      for name in STRATEGIES],
    (3, "sum", lambda hs: hs[3], 3),
    (-6, "sum", lambda hs: hs[1], 1),
    ([1, 5], "mean", lambda hs: (hs[1] + hs[5]) / 2, 5),
    ([0, 6], "concat", lambda hs: torch.cat([hs[0], hs[6]], dim=-1), 6),
])
def test_feature_strategies_match_the_hidden_states_they_are_defined_from(
        minilm, few, layers, combine, definition, deepest):
    texts, batch, out = few
    embedder = Embedder(**minilm, layers=layers, combine=combine, pooling="tokens",
                        normalize=False)
    expected = definition(out.hidden_states)
    for i, row in enumerate(embedder.encode_tokens(texts)):
        n = int(batch["attention_mask"][i].sum())
        np.testing.assert_allclose(row.vectors, expected[i, 1:n - 1], atol=5e-5)
    assert embedder.dim == expected.shape[-1]
    # layers above the deepest chosen one are not run; the shared model is left as it was
    assert len(embedder.model.encoder.layer) == deepest
    assert len(minilm["model"].encoder.layer) == 6


@pytest.mark.parametrize("layers,pooling", [("concat_last_four", "cls"),
                                            ("concat_last_four", "max"), ("last", "cls"),
                                            ("second_to_last", "cls")])
def test_pooling_of_a_strategy(minilm, few, layers, pooling):
    """Also [CLS] pooling of one layer, which that layer computes for [CLS] alone."""
    texts, batch, out = few
    ours = Embedder(**minilm, layers=layers, pooling=pooling).encode(texts)
    features = DEFINITIONS[layers](out.hidden_states)
    mask = batch["attention_mask"].bool()[..., None]
    pooled = (features[:, 0] if pooling == "cls"
              else features.masked_fill(~mask, -torch.inf).amax(1))
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


# --- fast paths against the exact one -------------------------------------------------------


def test_exact_fast_paths_change_nothing(exact, sentences, monkeypatch):
    """Sorting by length, skipping padding (attention on the grid, or text length by text
    length) and the batch size leave the vectors as they are."""
    texts = sentences[::20]
    settings = ("sort_by_length", "skip_padding", "batch_tokens")
    defaults = {name: getattr(exact, name) for name in settings}
    plain_options = {"sort_by_length": False, "skip_padding": False, "batch_tokens": 4096}
    try:
        for name, value in plain_options.items():  # batches in input order, padded
            setattr(exact, name, value)
        plain = exact.encode(texts)
        for options in ({"sort_by_length": True}, {"skip_padding": True},
                        {"sort_by_length": True, "skip_padding": True, "batch_tokens": 1000},
                        {"sort_by_length": True, "skip_padding": True, "runs": 0}):
            for name, value in (plain_options | options).items():
                if name == "runs":  # every batch text length by text length
                    monkeypatch.setattr(speedups, "MIN_RUN_TOKENS", value)
                else:
                    setattr(exact, name, value)
            np.testing.assert_allclose(exact.encode(texts), plain, atol=2e-6, err_msg=str(options))
    finally:
        for name, value in defaults.items():
            setattr(exact, name, value)


@pytest.mark.parametrize("lengths", [(12, 7, 3), (12, 12, 7, 7, 7, 3)], ids=["grid", "runs"])
def test_skip_padding_keeps_real_tokens_and_gradients(tiny_mlm_dir, monkeypatch, lengths):
    """The packed paths inside BertModel, attention back on the padded grid (a text per length)
    and text length by text length (`Packing.runs`): same states at real tokens, zeros at
    padding, and the same gradients (they serve training too)."""
    monkeypatch.setattr(speedups, "MIN_RUN_TOKENS", 10)  # tokens a run: grid 7.3, runs 16
    model = BertModel.from_pretrained(tiny_mlm_dir)
    model.eval()  # no dropout: both paths compute the same function
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 5000, (len(lengths), 12), generator=g)
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    runs = Packing(mask).runs
    assert (runs is None) == (len(set(lengths)) == len(lengths))
    # not the squares' sum: after the last LayerNorm it is nearly constant, its gradient noise
    direction = torch.randn(model.config.hidden_size, generator=g)
    outputs = {}
    for skip in (False, True):
        model.zero_grad()
        out = model(input_ids, mask, skip_padding=skip, output_hidden_states=True)
        (out.last_hidden_state * mask[..., None] * direction).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outputs[skip] = out, grads
    (padded, padded_grads), (packed, packed_grads) = outputs[False], outputs[True]
    real = mask.bool()
    for a, b in zip(packed.hidden_states, padded.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
    assert packed.last_hidden_state[~real].abs().max() == 0
    torch.testing.assert_close(packed.pooler_output, padded.pooler_output, atol=1e-5, rtol=0)
    assert packed_grads.keys() == padded_grads.keys()
    # the keys' bias has no true gradient (it moves every score of a query alike): rounding only
    floor = 1e-3 * max(g.abs().max() for g in padded_grads.values())
    for name, grad in packed_grads.items():
        scale = padded_grads[name].abs().max().clamp_min(floor)
        assert (grad - padded_grads[name]).abs().max() / scale <= 1e-4, name


@pytest.mark.parametrize("padded", [True, False])
def test_batches_bound_tokens_and_sort_by_length(padded):
    lengths = [5, 30, 7, 7, 2, 600, 12, 3, 3, 4]
    batches = length_sorted_batches(lengths, batch_tokens=24, padded=padded)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows, following in zip(batches, [*batches[1:], []], strict=True):
        counted = [lengths[i] for i in rows]
        tokens = len(rows) * max(counted) if padded else sum(counted)
        assert tokens <= 24 or len(rows) == 1
        if len(following):  # full: the next row would not have fitted
            more = counted + [lengths[following[0]]]
            assert (len(more) * max(more) if padded else sum(more)) > 24
    flat = [lengths[i] for rows in batches for i in rows]
    assert flat == sorted(lengths)


@pytest.mark.skipif(not can_pack_linears(torch.device("cpu")), reason="no oneDNN in this torch")
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_linear_is_the_linear_and_its_activation(activation, dtype, tolerance):
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 1536).to(dtype)
    x = torch.randn(3, 37, 384, dtype=dtype)
    expected = linear(x)
    if activation:
        expected = ACTIVATIONS[activation](expected)
    residual = torch.randn(3, 37, 1536, dtype=dtype)
    with torch.inference_mode():
        packed = PackedLinear(linear, activation)(x)
        added = PackedLinear(linear)(x, residual)
    assert packed.shape == expected.shape and packed.dtype == dtype
    torch.testing.assert_close(packed, expected.detach(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(added, (linear(x) + residual).detach(), atol=tolerance,
                               rtol=tolerance)


@pytest.mark.skipif(not can_pack_linears(torch.device("cpu")), reason="no oneDNN in this torch")
def test_the_packed_encoder_gives_the_encoders_states(minilm, sentences):
    """What `Embedder` runs on a CPU (joined query/key/value, oneDNN products, GELU inside the
    product) against the plain encoder, padding and all."""
    model, tokenizer = minilm["model"], minilm["tokenizer"]
    batch = tokenizer(sentences[:16], padding=True, return_tensors="pt")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    packed = pack_linears(copy.deepcopy(model), 2048)
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.encoder.modules())
    with torch.inference_mode():
        expected = model(**inputs, output_hidden_states=True).hidden_states
        ours = packed(**inputs, output_hidden_states=True).hidden_states
    real = inputs["attention_mask"].bool()  # what padding positions hold is nobody's business
    for layer, (a, b) in enumerate(zip(ours, expected, strict=True)):
        torch.testing.assert_close(a[real], b[real], atol=2e-5, rtol=1e-5, msg=f"layer {layer}")


def test_int8_joined_query_key_value_change_nothing(minilm, sentences):
    """int8 quantizes query, key and value as one Linear: weights per output row, the input once
    a batch, so the numbers are those of the three quantized apart."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model, tokenizer = minilm["model"], minilm["tokenizer"]
    batch = tokenizer(sentences[:8], padding=True, return_tensors="pt")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    layer = model.encoder.layer[0].attention.self
    x = model.embeddings(inputs["input_ids"], torch.zeros_like(inputs["input_ids"]))
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        qconfig = {torch.nn.Linear: per_channel_dynamic_qconfig}
        apart = quantize_dynamic(copy.deepcopy(layer), qconfig)
        joined = quantize_dynamic(join_qkv(copy.deepcopy(model)).encoder.layer[0].attention.self,
                                  qconfig)
        with torch.inference_mode():
            three = torch.cat([apart.query(x), apart.key(x), apart.value(x)], dim=-1)
            one = joined.qkv(x)
    finally:
        torch.backends.quantized.engine = engine
    torch.testing.assert_close(one, three, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("options,floor", [({"precision": "bf16"}, 0.999),
                                           ({"quantize": "int8"}, 0.97)])
def test_opt_in_modes_stay_close_to_fp32(minilm, exact, sentences, options, floor):
    """bf16 is the fast mode for embeddings; int8 dynamic quantization costs more (about 0.98
    mean cosine on all-MiniLM-L6-v2) and is documented as such."""
    texts = sentences[::8]
    fast = Embedder(**minilm, **options).encode(texts)
    assert fast.dtype == np.float32
    assert cosines(fast, exact.encode(texts)).mean() >= floor


def test_a_loaded_head_model_embeds_with_its_encoder(tiny_mlm_dir, sentences):
    head = BertForMaskedLM.from_pretrained(tiny_mlm_dir)
    tokenizer = BertTokenizer.from_pretrained(tiny_mlm_dir)
    texts = sentences[:10]
    np.testing.assert_array_equal(Embedder(head, tokenizer=tokenizer).encode(texts),
                                  Embedder(tiny_mlm_dir).encode(texts))
    with pytest.raises(ValueError, match="given with its tokenizer="):
        Embedder(head)


def test_compiled_encoder_matches_eager(tiny_mlm_dir, sentences):
    texts = sentences[:40]
    eager = Embedder(tiny_mlm_dir, layers=[1, 2]).encode(texts)
    compiled = Embedder(tiny_mlm_dir, layers=[1, 2], compile=True).encode(texts)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_onnx_export_matches_the_encoder(tiny_mlm_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(tiny_mlm_dir, tmp_path / "new" / "encoder.onnx")  # its folder is made
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = BertModel.from_pretrained(tiny_mlm_dir).eval()
    g = torch.Generator().manual_seed(1)
    for batch, length in ((3, 17), (1, 200)):  # shapes other than the traced example
        input_ids = torch.randint(1000, 5000, (batch, length), generator=g)
        mask = torch.ones_like(input_ids)
        mask[0, length // 2:] = 0
        types = (torch.arange(length) > length // 3).long().expand(batch, length).contiguous()
        (hidden,) = session.run(None, {"input_ids": input_ids.numpy(),
                                       "attention_mask": mask.numpy(),
                                       "token_type_ids": types.numpy()})
        with torch.inference_mode():
            expected = model(input_ids, mask, types).last_hidden_state
        real = mask.bool().numpy()
        np.testing.assert_allclose(hidden[real], expected.numpy()[real], atol=1e-5)


# --- fill-mask ------------------------------------------------------------------------------


MASKED = ["Paris is the [MASK] of France.", "The [MASK] sat on the mat.",
          "Water boils at one hundred degrees [MASK]."]


def test_fill_mask_matches_the_transformers_pipeline(tiny_mlm_dir):
    pipeline = transformers.pipeline("fill-mask", model=str(tiny_mlm_dir), top_k=5,
                                     device="cpu")
    fill = FillMask(tiny_mlm_dir, device="cpu")
    for text, ours in zip(MASKED, fill(MASKED), strict=True):
        theirs = pipeline(text)
        (predictions,) = ours  # one mask
        assert [p.token_id for p in predictions] == [t["token"] for t in theirs]
        assert [p.token for p in predictions] == [t["token_str"].replace(" ", "")
                                                  for t in theirs]
        np.testing.assert_allclose([p.score for p in predictions],
                                   [t["score"] for t in theirs], atol=1e-6)


def test_fill_mask_with_several_masks_matches_the_logits(tiny_mlm_dir):
    text = "The [MASK] of the [MASK] is a [MASK] city."
    fill = FillMask(tiny_mlm_dir, device="cpu")
    predictions = fill(text, top_k=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_mlm_dir)
    model = transformers.BertForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    batch = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**batch).logits[0].softmax(-1)
    where = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero().squeeze(1)
    assert len(predictions) == len(where) == 3
    for position, ours in zip(where, predictions, strict=True):
        scores, ids = probs[position].topk(3)
        assert [p.token_id for p in ours] == ids.tolist()
        np.testing.assert_allclose([p.score for p in ours], scores.numpy(), atol=1e-6)


def test_fill_mask_refuses_a_model_without_the_head_and_text_without_mask(minilm_dir,
                                                                          tiny_mlm_dir):
    with pytest.raises(ValueError, match="no masked-LM head"):
        FillMask(minilm_dir)
    fill = FillMask(tiny_mlm_dir, device="cpu")
    with pytest.raises(ValueError, match=r"no \[MASK\] in 'Paris is the capital'"):
        fill("Paris is the capital")
    with pytest.raises(ValueError, match="case-sensitive"):
        fill("Paris is the [mask] of France.")
    with pytest.raises(ValueError, match="beyond the 8-token limit"):
        FillMask(tiny_mlm_dir, device="cpu", max_length=8)("one two three four five six [MASK]")


# --- bad input, streaming, files ------------------------------------------------------------


def test_empty_and_overlong_texts(minilm, hf, sentences, caplog):
    long_text = " ".join(sentences[:20])
    embedder = Embedder(**minilm, max_length=16)
    with caplog.at_level("WARNING", logger="bertkit"):
        vectors = embedder.encode(["", "   \t", long_text, "\x00\x07"])
    assert not vectors[[0, 1, 3]].any()  # no tokens: the zero vector
    assert "3 of 4 texts are empty" in caplog.text
    assert "1 of 4 texts are longer than 16 tokens and were truncated" in caplog.text
    tokenizer, model = hf
    batch = tokenizer([long_text], truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        mean = model(**batch).last_hidden_state.mean(1)
    np.testing.assert_allclose(vectors[2], torch.nn.functional.normalize(mean, dim=-1)[0],
                               atol=1e-5)


def test_bad_arguments_are_explained(minilm_dir, tiny_mlm_dir):
    cases = [
        (dict(pooling="avg"), "unknown pooling 'avg'"),
        (dict(layers="sum_last_three"), "unknown layer strategy"),
        (dict(layers=7), r"this model has 6 layers, so use 0 \(the embedding output\) to 6"),
        (dict(layers=[1, 2], combine="product"), "unknown combine"),
        (dict(layers=[]), "non-empty sequence"),
        (dict(precision="fp8"), "unknown precision"),
        (dict(quantize="int4"), "unknown quantize"),
        (dict(quantize="int8", precision="bf16"), "use it with precision='fp32'"),
        (dict(max_length=1000), "between 3 and the model's 512 positions"),
        (dict(batch_tokens=0), "batch_tokens must be a positive int"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            Embedder(minilm_dir, **options)
    with pytest.raises(ValueError, match="use encode_tokens"):
        Embedder(tiny_mlm_dir, pooling="tokens").encode(["a text"])
    with pytest.raises(ValueError, match="pooling='tokens'"):
        Embedder(tiny_mlm_dir).encode_tokens(["a text"])
    with pytest.raises(TypeError, match="decode bytes first"):
        Embedder(tiny_mlm_dir).encode([b"bytes"])


def repeated(items, count):
    """``count`` items, going round ``items`` as often as needed."""
    return itertools.islice(itertools.cycle(items), count)


def test_stream_reads_its_input_lazily(tiny_mlm_dir, sentences):
    pulled = 0

    def lines():
        nonlocal pulled
        for sentence in repeated(sentences, 10_000):
            pulled += 1
            yield sentence

    stream = Embedder(tiny_mlm_dir).stream(lines(), chunk_size=64)
    first = next(stream)
    assert first.index == 0 and pulled == 64
    rest = [item.index for item in itertools.islice(stream, 99)]
    assert rest == list(range(1, 100)) and pulled == 128
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        next(Embedder(tiny_mlm_dir).stream(lines(), chunk_size=0))  # not an empty stream


def test_embed_file_memory_stays_flat(tiny_mlm_dir, sentences, tmp_path):
    """Python-side peak memory while embedding 200 vs 2,000 lines: the same (streamed)."""
    embedder = Embedder(tiny_mlm_dir)
    peaks = []
    for count in (200, 2_000):
        source = tmp_path / f"lines-{count}.txt"
        # every chunk of 100 lines the same, so a chunk's own peak cannot vary with the count
        lines = (" ".join(sentence.split()) for sentence in repeated(sentences[:100], count))
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tracemalloc.start()
        summary = embed_file(embedder, source, tmp_path / f"out-{count}.npy", chunk_size=100,
                             progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert summary.written == count
        assert np.load(tmp_path / f"out-{count}.npy", mmap_mode="r").shape == (count, 32)
    assert peaks[1] < 1.3 * peaks[0], peaks


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_embed_command_npy_with_index_empty_lines_and_csv(tiny_mlm_dir, tmp_path, capsys):
    texts = ["Hello, my dog is cute", "", "Paris is the capital of France.", "  ", "Fin."]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    extra = tmp_path / "extra.csv"
    extra.write_text("year,score,name\n2001,0.5,a\n2002,,b\n2003,1.5,c\n2004,2,d\n2005,3,e\n")
    out = tmp_path / "vectors.npy"
    code, _, err = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                            "--out", str(out), "--empty", "skip", "--append-csv", str(extra),
                            "--append-columns", "score,year", "--no-progress"], capsys)
    assert code == 0, err
    assert "embedded 3 of 5 lines" in err and "2 empty lines were skipped" in err
    vectors = np.load(out)
    index = [json.loads(line) for line in out.with_suffix(".index.jsonl").read_text().split("\n")
             if line]
    assert [row["line"] for row in index] == [0, 2, 4]
    expected = Embedder(tiny_mlm_dir).encode([texts[0], texts[2], texts[4]])
    np.testing.assert_allclose(vectors[:, :32], expected, atol=1e-6)
    np.testing.assert_array_equal(vectors[:, 32:], [[0.5, 2001], [1.5, 2003], [3, 2005]])
    assert not list(tmp_path.glob("*.partial"))

    code, _, err = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                            "--out", str(out), "--max-length", "6", "--no-progress"], capsys)
    assert code == 0 and "2 empty lines got zero vectors" in err
    assert "2 lines longer than 6 tokens were truncated" in err  # "Hello, ..." and "Paris ..."
    assert np.load(out).shape == (5, 32) and not np.load(out)[[1, 3]].any()


def test_embed_command_tokens_as_npy_and_jsonl(tiny_mlm_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Café au lait.\nA second line\n", encoding="utf-8")
    out = tmp_path / "tokens.npy"
    code, _, err = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                            "--out", str(out), "--pooling", "tokens", "--layers",
                            "second-to-last", "--no-progress"], capsys)
    assert code == 0, err
    vectors = np.load(out)
    index = [json.loads(line) for line in out.with_suffix(".index.jsonl").read_text().split("\n")
             if line]
    expected = Embedder(tiny_mlm_dir, layers="second_to_last", pooling="tokens").encode_tokens(
        ["Café au lait.", "A second line"])
    assert [row["tokens"] for row in index] == [e.tokens for e in expected]
    assert [row["offsets"] for row in index] == [[list(o) for o in e.offsets] for e in expected]
    assert [row["first_row"] for row in index] == [0, len(expected[0].tokens)]
    np.testing.assert_allclose(vectors, np.concatenate([e.vectors for e in expected]),
                               atol=1e-6)
    code, out_text, _ = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                                 "--out", "-", "--pooling", "tokens", "--layers=0,-1",
                                 "--combine", "concat", "--no-progress"], capsys)
    records = [json.loads(line) for line in out_text.splitlines()]
    assert code == 0 and [r["line"] for r in records] == [0, 1]
    expected = Embedder(tiny_mlm_dir, layers=[0, 2], combine="concat",
                        pooling="tokens").encode_tokens(["A second line"])
    np.testing.assert_allclose(records[1]["vectors"], expected[0].vectors, atol=1e-6)


def test_embed_command_bad_input_is_explained(tiny_mlm_dir, tmp_path, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes("fine\nna\u00efve caf\u00e9\n".encode("latin-1"))
    out = tmp_path / "v.npy"
    code, _, err = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                            "--out", str(out), "--no-progress"], capsys)
    assert code == 1 and "line 2: not valid UTF-8 (byte 0xef at column 3)" in err
    assert "--invalid-utf8 replace" in err and not out.exists()
    assert not list(tmp_path.glob("*.partial"))
    code, _, err = run_cli(["embed", "--model", str(tiny_mlm_dir), "--input", str(source),
                            "--out", str(out), "--invalid-utf8", "replace", "--no-progress"],
                           capsys)
    assert code == 0 and "1 lines had invalid UTF-8" in err and np.load(out).shape == (2, 32)

    good = tmp_path / "in.txt"
    good.write_text("one\ntwo\nthree\n", encoding="utf-8")
    long_csv = tmp_path / "extra.csv"
    long_csv.write_text("a\n1\n2\n3\n4\n")
    word_csv = tmp_path / "words.csv"
    word_csv.write_text("a,b\n1,x\n2,y\n3,z\n")
    base = ["embed", "--model", str(tiny_mlm_dir), "--input", str(good), "--no-progress"]
    cases = [
        (["--out", str(tmp_path / "v.txt")], "must end in .npy or .jsonl"),
        (["--out", str(out), "--input", str(tmp_path / "missing.txt")], "missing.txt not found"),
        (["--out", str(out), "--append-csv", str(long_csv)], "has 4 data rows but the input has "
                                                               "3 lines"),
        (["--out", str(out), "--append-csv", str(word_csv)], "data row 1, column 'b': 'x' is "
                                                               "not a number"),
        (["--out", str(out), "--append-csv", str(word_csv), "--append-columns", "c"],
         "has no column 'c'; its columns are a, b"),
        (["--out", str(out), "--layers", "third"], "unknown layer strategy 'third'"),
        (["--out", str(out), "--pooling", "tokens", "--append-csv", str(long_csv)],
         "do not fit pooling='tokens'"),
    ]
    for extra_args, message in cases:
        code, _, err = run_cli(base + extra_args, capsys)
        assert code == 1 and message in err, (extra_args, err)


# --- a stopped `bertkit embed` goes on where it stopped ---------------------------------------


def stopping_after(monkeypatch, results: int) -> None:
    """`Embedder.stream` raising Ctrl-C's KeyboardInterrupt after ``results`` texts."""
    stream = Embedder.stream

    def stopping(self, texts, **options):
        for count, result in enumerate(stream(self, texts, **options)):
            if count == results:
                raise KeyboardInterrupt
            yield result
    monkeypatch.setattr(Embedder, "stream", stopping)


def one_line(texts):
    return [" ".join(text.split()) for text in texts]


def partial(path):
    return path.with_name(f".{path.name}.partial")


def read_index(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_stopped_embedding_goes_on_where_it_stopped(tiny_mlm_dir, sentences, tmp_path,
                                                      monkeypatch):
    texts = [" ".join(text.split()) if i % 7 else "" for i, text in enumerate(sentences[:60])]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    extra = tmp_path / "extra.csv"
    extra.write_text("n\n" + "".join(f"{i}\n" for i in range(60)))
    embedder = Embedder(tiny_mlm_dir)
    options = dict(empty="skip", append_csv=extra, chunk_size=16, progress=False)
    whole = embed_file(embedder, source, tmp_path / "whole.npy", **options)
    out = tmp_path / "v.npy"
    stopping_after(monkeypatch, 37)
    with pytest.raises(KeyboardInterrupt, match="stopped after line 37; the vectors so far are "
                       "kept in .*--resume"):
        embed_file(embedder, source, out, **options)
    monkeypatch.undo()
    assert not out.exists() and partial(out).exists()
    written = read_index(partial(out.with_suffix(".index.jsonl")))
    assert [r["line"] for r in written] == [i for i in range(37) if i % 7]
    # as a SIGKILL mid-write leaves it: the last row's vector unwritten and a record cut
    with partial(out).open("r+b") as vectors:
        vectors.truncate(vectors.seek(0, 2) - 4 * (32 + 1))
    with partial(out.with_suffix(".index.jsonl")).open("a") as index:
        index.write('{"line": 3')

    with pytest.raises(ValueError, match="a stopped run left the first rows of .*v.npy in "
                       ".*add --resume to go on"):
        embed_file(embedder, source, out, **options)
    for changed, message in [(dict(empty="zero"), "had empty 'skip', this one has 'zero'"),
                             (dict(append_csv=None), "had append_csv '.*extra.csv', this one "
                              "has None")]:
        with pytest.raises(ValueError, match=message):
            embed_file(embedder, source, out, **{**options, **changed}, resume=True)
    with pytest.raises(ValueError, match="had pooling 'mean', this one has 'max'"):
        embed_file(Embedder(tiny_mlm_dir, pooling="max"), source, out, **options, resume=True)

    summary = embed_file(embedder, source, out, **options, resume=True)
    assert summary.resumed_at == written[-2]["line"] + 1 == 35 and summary.kept == 30
    assert "after the stopped run's 35 lines (30 vectors kept" in str(summary)
    assert read_index(out.with_suffix(".index.jsonl")) == read_index(
        tmp_path / "whole.index.jsonl")
    np.testing.assert_allclose(np.load(out), np.load(tmp_path / "whole.npy"), atol=1e-6)
    assert summary.written + summary.kept == whole.written
    assert not list(tmp_path.glob(".*partial*"))

    source.write_text("\n".join(texts[:50]) + "\n", encoding="utf-8")  # the input changes
    stopping_after(monkeypatch, 20)
    with pytest.raises(KeyboardInterrupt):
        embed_file(embedder, source, out, **options)
    monkeypatch.undo()
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="had input_bytes"):
        embed_file(embedder, source, out, **options, resume=True)


def token_records(out):
    """Per-token output as JSON-lines records, read from .jsonl or from .npy + its index."""
    if out.suffix == ".jsonl":
        return read_index(out)
    vectors = np.load(out)
    return [{**r, "vectors": vectors[r["first_row"]:r["first_row"] + len(r["tokens"])]}
            for r in read_index(out.with_suffix(".index.jsonl"))]


@pytest.mark.parametrize("name", ["tokens.jsonl", "tokens.npy"])
def test_stopped_per_token_lines_go_on_and_standard_streams_cannot_resume(
        tiny_mlm_dir, sentences, tmp_path, monkeypatch, name):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(one_line(sentences[:30])) + "\n", encoding="utf-8")
    embedder = Embedder(tiny_mlm_dir, pooling="tokens", layers=[0, 2], combine="concat")
    out = tmp_path / name
    summary = embed_file(embedder, source, out, chunk_size=8, progress=False, resume=True)
    assert summary.resumed_at == 0  # nothing stopped: --resume starts at the first line
    whole = token_records(out)
    stopping_after(monkeypatch, 11)
    with pytest.raises(KeyboardInterrupt, match="stopped after line 11"):
        embed_file(embedder, source, out, chunk_size=8, progress=False)
    monkeypatch.undo()
    # the finished output stays until the new one is whole
    assert [r["tokens"] for r in token_records(out)] == [r["tokens"] for r in whole]
    summary = embed_file(embedder, source, out, chunk_size=8, progress=False, resume=True)
    resumed = token_records(out)
    assert summary.resumed_at == 11 and [r["line"] for r in resumed] == list(range(30))
    assert [r["tokens"] for r in resumed] == [r["tokens"] for r in whole]
    assert [r.get("first_row") for r in resumed] == [r.get("first_row") for r in whole]
    np.testing.assert_allclose(np.concatenate([r["vectors"] for r in resumed]),
                               np.concatenate([r["vectors"] for r in whole]), atol=1e-6)
    with pytest.raises(ValueError, match="needs a file as --input and as --out, not -"):
        embed_file(embedder, source, "-", progress=False, resume=True)


def test_ctrl_c_and_sigterm_on_the_command_line_keep_the_rows(tiny_mlm_dir, sentences,
                                                              tmp_path):
    source = tmp_path / "in.txt"
    lines = one_line(sentences)
    source.write_text("\n".join(lines * 60) + "\n", encoding="utf-8")  # 60,000 lines
    out = tmp_path / "v.npy"
    command = [sys.executable, "-m", "bertkit", "embed", "--model", str(tiny_mlm_dir),
               "--input", str(source), "--out", str(out), "--no-progress"]
    index = partial(out.with_suffix(".index.jsonl"))
    for flags, signum, code in [([], signal.SIGINT, 130), (["--resume"], signal.SIGTERM, 143)]:
        before = index.stat().st_size if index.exists() else 0
        # SIGINT as a terminal sends it: a background job (`make test &`) starts with it ignored
        process = subprocess.Popen(command + flags, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and (
                not index.exists() or index.stat().st_size <= before):
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == code, stderr
        assert "bertkit embed: stopped after line" in stderr and "--resume to go on" in stderr
        assert not out.exists() and 0 < len(read_index(index)) < 60_000
    code = main(command[3:] + ["--resume"])
    assert code == 0
    vectors = np.load(out)
    assert [r["line"] for r in read_index(out.with_suffix(".index.jsonl"))] == list(
        range(60_000))
    np.testing.assert_allclose(vectors[:1000], Embedder(tiny_mlm_dir).encode(lines),
                               atol=1e-6)
    np.testing.assert_allclose(vectors[59_000:], vectors[:1000], atol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))


def test_fill_mask_command(minilm_dir, tiny_mlm_dir, capsys):
    code, out, _ = run_cli(["fill-mask", "--model", str(tiny_mlm_dir), "--device", "cpu",
                            "--top-k", "2", "The [MASK] sat on the [MASK]."], capsys)
    expected = FillMask(tiny_mlm_dir, device="cpu")("The [MASK] sat on the [MASK].", top_k=2)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "The [MASK] sat on the [MASK]." and len(lines) == 3
    assert lines[1].startswith(f"  [MASK] 1: {expected[0][0].token} ")
    code, out, _ = run_cli(["fill-mask", "--model", str(tiny_mlm_dir), "--device", "cpu",
                            "--json", "A [MASK]."], capsys)
    assert code == 0 and len(json.loads(out)["masks"][0]) == 5
    code, _, err = run_cli(["fill-mask", "--model", str(minilm_dir), "A [MASK]."], capsys)
    assert code == 1 and "no masked-LM head" in err
    code, _, err = run_cli(["fill-mask", "--model", str(tiny_mlm_dir), "No mask."], capsys)
    assert code == 1 and "no [MASK] in 'No mask.'" in err



# --- what users pass by mistake -------------------------------------------------------------


def test_a_str_is_one_text_and_other_inputs_are_explained(tiny_mlm_dir):
    embedder = Embedder(tiny_mlm_dir)
    streamed = list(embedder.stream("one whole text"))  # not one text per character
    assert len(streamed) == 1
    np.testing.assert_array_equal(streamed[0].value, embedder.encode(["one whole text"])[0])
    for texts, message in [(None, "a str or an iterable of str, got NoneType"),
                           (7, "got int"), (b"bytes", "decode them first")]:
        with pytest.raises(TypeError, match=message):
            embedder.encode(texts)
        with pytest.raises(TypeError, match=message):
            list(embedder.stream(texts))
        with pytest.raises(TypeError, match=message):
            FillMask(tiny_mlm_dir, device="cpu")(texts)
    with pytest.raises(ValueError, match="chunk_size must be at least 1 and an int, got 2.5"):
        list(embedder.stream(["a text"], chunk_size=2.5))


def test_layer_combine_and_length_choices_are_checked(tiny_mlm_dir):
    cases = [
        (dict(combine="bogus"), "unknown combine 'bogus'"),  # checked with a strategy too
        (dict(layers="sum_all", combine="concat"),
         r"layers='sum_all' combines its layers by 'sum', not 'concat'; to concat them, list "
         r"them: layers=\[1, 2\], combine='concat'"),
        (dict(layers=2.0), "layers must be a strategy name, an int or a non-empty sequence"),
        (dict(layers=None), "layers must be a strategy name"),
        (dict(max_length=0), "max_length must be an int between 3 and the model's 512 positions"),
        (dict(max_length=10.5), "got 10.5"),
        (dict(normalize="no"), "normalize must be True, False or None .*got 'no'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            Embedder(tiny_mlm_dir, **options)
    texts = ["a text", "another, longer text"]
    by_int = Embedder(tiny_mlm_dir, layers=[1, 2], combine="concat").encode(texts)
    by_numpy = Embedder(tiny_mlm_dir, layers=np.array([1, 2]), combine="concat").encode(texts)
    np.testing.assert_array_equal(by_numpy, by_int)
    np.testing.assert_array_equal(Embedder(tiny_mlm_dir, layers=np.int64(1)).encode(texts),
                                  Embedder(tiny_mlm_dir, layers=1).encode(texts))


def test_fill_mask_edge_arguments(tiny_mlm_dir):
    fill = FillMask(tiny_mlm_dir, device="cpu")
    assert fill([]) == []
    vocabulary = len(fill.tokenizer.vocab)
    assert [len(p) for p in fill("A [MASK] and a [MASK].", top_k=10 * vocabulary)] == [
        vocabulary, vocabulary]
    with pytest.raises(ValueError, match="top_k must be a positive int, got True"):
        fill("A [MASK].", top_k=True)
    for max_length in (0, 2, 513):
        with pytest.raises(ValueError, match=f"max_length must be an int between 3 and the "
                                             f"model's 512 positions, got {max_length}"):
            FillMask(tiny_mlm_dir, device="cpu", max_length=max_length)
