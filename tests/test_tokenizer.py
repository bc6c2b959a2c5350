"""BertTokenizer against Google's reference on real text.

The reference (`legacy`, from conftest) is transformers' BertTokenizerLegacy with its departures
from Google's tokenization.py undone (conftest.GoogleReference).

Also: offsets and word ids against HuggingFace's Rust-backed BertTokenizer, the files it writes,
and every error message.
"""

import json
import random

import pytest
import torch
import transformers
from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, BertTokenizerLegacy

from bertkit.tokenizer import BertTokenizer

HARD_CASES = [
    "", " ", "   \t\n  ", "Hello, World!", "MiXeD CaSe and ALL CAPS",
    "Café, naïve, façade, jalapeño, Ångström, São Paulo, Øresund, Łódź, Straße, İstanbul",
    "e\u0301 n\u0303 A\u030a (combining marks) and \u0301 alone",
    "ΟΔΟΣ ΟΔΟΣ. Σ ΑΣ'Α Ελληνικά",
    "中文分词测试，日本語のテキスト、カタカナ。한국어 텍스트입니다. 𠀋𫠠𫠡 豈",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣ heart ❤️",
    "control\x00chars\x07bell\ttab\rreturn\x0bvt\x0cff\x85nel\x1fus",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj\u00adsoft-hyphen",
    "replacement \ufffd char, non\u00a0breaking\u202fspaces\u3000ideographic\u2028line\u2029para",
    "https://example.com/path?q=1&r=two#frag and user.name+tag@example.co.uk",
    "3.14159 1,000,000 -42 +7 1e-9 50% $100 €20 £5 ¥300 ２０２４年",
    "a" * 101, "b" * 100, "x" + "y" * 99 + " " + "é" * 101,
    "العربية لغة جميلة", "हिन्दी भाषा", "ภาษาไทยไม่มีช่องว่าง", "עברית", "Русский язык",
    "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≤ ∞, √2 ≈ 1.414, α→β ⇒ γ", "ℝ ℕ ℤ ℚ ℂ ℍ",
    "[CLS] typed [SEP] special [MASK] tokens [UNK] [PAD] and [mask] lower",
    "«quotes» “curly” ‘single’ — dash – en … ellipsis · middle",
    "lone surrogate \ud800 in text",
    "tabs\tand\nnewlines\r\nmixed  spaces",
    "ﬁ ligature, Ⅻ roman, ½ fraction, ① circled, ｆｕｌｌｗｉｄｔｈ",
    "Dives Akuru \U00011935\U00011930 \U00011938, Hanunoo \u1734",
]


@pytest.fixture(scope="module")
def hf_fast(minilm_dir):
    """HuggingFace's Rust-backed tokenizer: the reference for offsets and word ids."""
    return transformers.BertTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def sentences(wiki_sentences):
    return wiki_sentences[:10_000]


@pytest.fixture(scope="module")
def sentence_pairs(wiki_sentences):
    rng = random.Random(0)
    return [tuple(rng.sample(wiki_sentences, 2)) for _ in range(400)]


# -- parity with Google's tokenizer -----------------------------------------------------------


def test_ten_thousand_real_sentences_match_the_reference(uncased, legacy, sentences):
    ours = uncased(sentences)
    reference = legacy(sentences, return_token_type_ids=True)
    assert ours["input_ids"] == reference["input_ids"]
    assert ours["token_type_ids"] == reference["token_type_ids"]
    assert ours["attention_mask"] == reference["attention_mask"]


@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_cases_match_the_reference(uncased, legacy, text):
    assert uncased.tokenize(text) == legacy.tokenize(text)
    assert uncased.encode(text) == legacy.encode(text)


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_truncated_pairs_match_the_reference(uncased, legacy, sentence_pairs, strategy):
    compared = 0
    for index, (a, b) in enumerate(sentence_pairs):
        max_length = 12 + index % 40  # small enough that most pairs are cut
        too_long = (len(legacy.tokenize(a)) + len(legacy.tokenize(b)) + 3) - max_length
        cut = {"only_first": legacy.tokenize(a), "only_second": legacy.tokenize(b)}.get(strategy)
        if cut is not None and too_long > 0 and len(cut) <= too_long:
            # The reference silently returns too long an input here; we refuse.
            with pytest.raises(ValueError, match=f"truncation='{strategy}' cannot fit"):
                uncased(a, b, truncation=strategy, max_length=max_length)
            continue
        ours = uncased(a, b, truncation=strategy, max_length=max_length)
        reference = legacy(a, b, truncation=strategy, max_length=max_length,
                           return_token_type_ids=True)
        assert ours["input_ids"] == reference["input_ids"], (a, b, max_length)
        assert ours["token_type_ids"] == reference["token_type_ids"]
        compared += 1
    assert compared > 100


@pytest.mark.parametrize("padding", [True, "max_length"])
def test_padded_batches_match_the_reference(uncased, legacy, sentence_pairs, padding):
    firsts, seconds = [a for a, _ in sentence_pairs], [b for _, b in sentence_pairs]
    ours = uncased(firsts, seconds, truncation=True, padding=padding, max_length=48)
    reference = legacy(firsts, seconds, truncation=True, padding=padding, max_length=48,
                       return_token_type_ids=True)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert ours[key] == reference[key], key
    singles = uncased(firsts[:50], padding=padding, truncation=True, max_length=20)
    assert singles == {key: values for key, values in legacy(
        firsts[:50], padding=padding, truncation=True, max_length=20,
        return_token_type_ids=True).items()}


def test_decode_matches_the_reference(uncased, legacy, sentences):
    for text in sentences[:300] + HARD_CASES:
        ids = legacy.encode(text)
        assert uncased.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True
                              ) == legacy.decode(ids, skip_special_tokens=True)
        assert uncased.decode(ids, clean_up_tokenization_spaces=True) == legacy.decode(ids)


def test_decode_defaults_match_transformers(uncased, hf_fast, sentences):
    # transformers 5 keeps special tokens and the spaces around "'" unless asked ("china ' s").
    ids = [uncased(text)["input_ids"] for text in sentences[:2000]]
    assert any("' s" in hf_fast.decode(row) for row in ids)
    for row in ids:
        assert uncased.decode(row) == hf_fast.decode(row)
        assert uncased.decode(row, skip_special_tokens=True) == hf_fast.decode(
            row, skip_special_tokens=True)
    padded = uncased(sentences[:3], padding=True, return_tensors="pt")["input_ids"]
    assert uncased.decode(padded) == uncased.batch_decode(padded) == hf_fast.batch_decode(padded)
    assert uncased.decode(7592) == hf_fast.decode(7592) == "hello"
    assert len(uncased) == len(hf_fast) == uncased.vocab_size


def test_decode_cleanup_follows_the_folder(uncased, tmp_path):
    uncased.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["clean_up_tokenization_spaces"] = True  # as transformers 4 wrote it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    ids = uncased("China's")["input_ids"]
    cleaning = BertTokenizer.from_pretrained(tmp_path)
    assert cleaning.decode(ids, skip_special_tokens=True) == "china's"
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path)).decode(
        ids, skip_special_tokens=True) == "china's"
    cleaning.save_pretrained(tmp_path / "saved")
    assert BertTokenizer.from_pretrained(tmp_path / "saved").clean_up_tokenization_spaces
    assert uncased.decode(ids, skip_special_tokens=True) == "china ' s"


def test_the_backend_gives_the_same_ids_with_special_tokens(uncased, sentence_pairs):
    # Data pipelines call the Rust tokenizer directly for speed.
    firsts, seconds = [a for a, _ in sentence_pairs], [b for _, b in sentence_pairs]
    encodings = uncased.backend.encode_batch(list(zip(firsts, seconds, strict=True)))
    ours = uncased(firsts, seconds)
    assert [e.ids for e in encodings] == ours["input_ids"]
    assert [e.type_ids for e in encodings] == ours["token_type_ids"]
    assert [e.ids for e in uncased.backend.encode_batch(firsts)] == uncased(firsts)["input_ids"]


# -- offsets, word ids, sequence ids ---------------------------------------------------------


def test_offsets_point_at_the_text_of_each_token(uncased, sentences):
    normalize = BasicTokenizer(do_lower_case=True)
    out = uncased(sentences[:2000], return_offsets_mapping=True)
    checked = 0
    for text, ids, offsets in zip(sentences, out["input_ids"], out["offset_mapping"],
                                  strict=False):
        for token, (start, end) in zip(uncased.convert_ids_to_tokens(ids), offsets, strict=True):
            if token in (uncased.cls_token, uncased.sep_token, uncased.unk_token):
                continue
            assert "".join(normalize.tokenize(text[start:end])) == token.removeprefix("##")
            checked += 1
    assert checked > 50_000


def test_offsets_and_word_ids_match_huggingface(uncased, hf_fast, sentence_pairs):
    firsts, seconds = [a for a, _ in sentence_pairs], [b for _, b in sentence_pairs]
    # No pair truncation: HuggingFace's Rust longest_first cuts the first text on ties, Google's
    # the second.
    for pair, max_length in ((None, 40), (seconds, None)):
        truncation = max_length is not None
        ours = uncased(firsts, pair, return_offsets_mapping=True, return_word_ids=True,
                       truncation=truncation, max_length=max_length, padding=True)
        theirs = hf_fast(firsts, pair, return_offsets_mapping=True, truncation=truncation,
                         max_length=max_length, padding=True)
        assert ours["input_ids"] == theirs["input_ids"]
        assert ours["offset_mapping"] == [[tuple(o) for o in row]
                                          for row in theirs["offset_mapping"]]
        assert ours["word_ids"] == [theirs.word_ids(i) for i in range(len(firsts))]
        assert ours["sequence_ids"] == [theirs.sequence_ids(i) for i in range(len(firsts))]


def test_offsets_index_the_original_string(uncased):
    text = "Ça\u00a0marche: ÉCOLE 😀 中文 naïve"
    out = uncased(text, return_offsets_mapping=True)
    pieces = [text[start:end] for start, end in out["offset_mapping"][1:-1]]
    assert pieces == ["Ça", "marche", ":", "ÉCOLE", "😀", "中", "文", "naïve"]


def test_offsets_after_a_letter_that_lower_cases_to_two(uncased, hf_fast):
    """'İ' lower-cases to 'i' and a combining dot: offsets after it still index the text."""
    texts = ["İstanbul İzmir x", "aİb İİx"]
    ours = uncased(texts, return_offsets_mapping=True)
    theirs = hf_fast(texts, return_offsets_mapping=True)
    assert ours["offset_mapping"] == [[tuple(o) for o in row] for row in theirs["offset_mapping"]]
    assert [texts[0][start:end] for start, end in ours["offset_mapping"][0][1:-1]] == [
        "İstanbul", "İ", "z", "mir", "x"]


# -- the call's shapes and options -------------------------------------------------------------


def test_single_text_and_batch_shapes(uncased):
    single = uncased("Hello world")
    assert single["input_ids"][0] == uncased.cls_token_id == 101
    assert single["input_ids"][-1] == uncased.sep_token_id == 102
    assert uncased(["Hello world"])["input_ids"] == [single["input_ids"]]
    tensors = uncased("Hello world", return_tensors="pt")
    assert tensors["input_ids"].shape == (1, 4) and tensors["input_ids"].dtype == torch.long
    batch = uncased(["a", "b c d"], ["e f", "g"], padding=True, return_tensors="pt",
                    return_offsets_mapping=True)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 7)
    assert batch["offset_mapping"].shape == (2, 7, 2)
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]
    assert uncased([], return_tensors="pt")["input_ids"].shape == (0, 0)


def test_truncation_without_max_length_uses_model_max_length(uncased):
    long_text = "word " * 600
    assert len(uncased(long_text, truncation=True)["input_ids"]) == uncased.model_max_length
    assert len(uncased(long_text)["input_ids"]) == 602
    padded = uncased("short", padding="max_length", max_length=8)
    assert padded["input_ids"][3:] == [uncased.pad_token_id] * 5


def test_without_special_tokens(uncased, legacy, hf_fast):
    text, pair = "The quick brown fox", "jumps over the lazy dog"
    out = uncased(text, pair, add_special_tokens=False, truncation=True, max_length=6,
                  return_word_ids=True)
    reference = legacy(text, pair, add_special_tokens=False, truncation=True, max_length=6)
    assert out["input_ids"] == reference["input_ids"]
    assert None not in out["word_ids"]
    # The segments keep their type ids, as in HuggingFace's Rust tokenizer (the legacy one gives
    # all zeros here).
    assert out["token_type_ids"] == hf_fast(text, pair, add_special_tokens=False, truncation=True,
                                            max_length=6)["token_type_ids"] == [0, 0, 0, 1, 1, 1]


def test_vocabulary_and_special_tokens(uncased, legacy):
    assert uncased.vocab_size == len(uncased.vocab) == legacy.vocab_size == 30522
    assert (uncased.pad_token_id, uncased.unk_token_id, uncased.cls_token_id,
            uncased.sep_token_id, uncased.mask_token_id) == (0, 100, 101, 102, 103)
    assert sorted(uncased.all_special_ids) == sorted(legacy.all_special_ids)
    assert uncased.do_lower_case and uncased.model_max_length == 512
    tokens = uncased.tokenize("Unaffable tokenization")
    assert uncased.convert_tokens_to_ids(tokens) == legacy.convert_tokens_to_ids(tokens)
    assert uncased.convert_ids_to_tokens(uncased.convert_tokens_to_ids(tokens)) == tokens
    assert uncased.convert_tokens_to_ids("not-a-token") == uncased.unk_token_id
    assert uncased.convert_ids_to_tokens(103) == "[MASK]"


# -- the call's options, as transformers 5 takes them -------------------------------------------


def _fields(encoding):
    return {key: value.tolist() if hasattr(value, "tolist") else value
            for key, value in encoding.items()}


def test_a_max_length_alone_truncates_as_in_transformers(uncased, hf_fast, sentence_pairs):
    firsts, seconds = map(list, zip(*sentence_pairs[:200], strict=True))
    # 25: an even budget for pairs, where bertkit and transformers cut the same (see README).
    for args in ((firsts,), (firsts, seconds)):
        ours = uncased(*args, max_length=25)
        assert ours == hf_fast(*args, max_length=25).data
        assert max(map(len, ours["input_ids"])) == 25
        # Padding to max_length, or truncation=False, does not truncate, in both.
        for options in ({"truncation": False}, {"padding": "max_length"}):
            assert _fields(uncased(*args, max_length=25, **options)) == _fields(
                hf_fast(*args, max_length=25, **options))
    assert uncased.encode(firsts[0], max_length=5) == hf_fast.encode(firsts[0], max_length=5)


def test_a_batch_of_pairs_as_tuples(uncased, hf_fast, sentence_pairs):
    pairs = sentence_pairs[:50]
    firsts, seconds = map(list, zip(*pairs, strict=True))
    assert uncased(pairs) == uncased(firsts, seconds) == hf_fast(pairs).data
    assert uncased([list(pair) for pair in pairs], truncation=True, max_length=21) == hf_fast(
        [list(pair) for pair in pairs], truncation=True, max_length=21).data


@pytest.mark.parametrize("paired", [False, True])
def test_words_given_split_match_transformers(uncased, hf_fast, sentence_pairs, paired):
    words = [[a.split(), b.split()] for a, b in sentence_pairs[:100]]
    args = ([a for a, _ in words], [b for _, b in words]) if paired else ([a for a, _ in words],)
    options = {"is_split_into_words": True, "return_offsets_mapping": True, "padding": True}
    ours, theirs = uncased(*args, **options), hf_fast(*args, **options)
    assert {k: v for k, v in ours.items() if k != "sequence_ids"} == theirs.data
    for i in range(len(words)):
        assert ours.word_ids(i) == theirs.word_ids(i)
        assert ours.sequence_ids(i) == theirs.sequence_ids(i)
    single = uncased(["Hello", "world!"], is_split_into_words=True)
    assert single == hf_fast(["Hello", "world!"], is_split_into_words=True).data
    assert single.word_ids() == [None, 0, 1, 1, None]


@pytest.mark.parametrize(("strategy", "max_length", "stride"), [
    (True, 16, 0), (True, 16, 5), ("only_second", 40, 8), ("only_first", 40, 3)])
def test_overflowing_windows_match_transformers(uncased, hf_fast, sentence_pairs, strategy,
                                                max_length, stride):
    firsts, seconds = map(list, zip(*sentence_pairs[:100], strict=True))
    args = (firsts,) if strategy is True else (firsts, seconds)
    options = {"truncation": strategy, "max_length": max_length, "stride": stride,
               "return_overflowing_tokens": True, "return_offsets_mapping": True,
               "padding": True, "return_tensors": "pt"}
    try:
        theirs = hf_fast(*args, **options)
    except Exception:  # noqa: BLE001 - transformers' "Truncation error" for a too short side
        with pytest.raises(ValueError, match="cannot fit max_length"):
            uncased(*args, **options)
        return
    ours = uncased(*args, **options)
    assert len(theirs["input_ids"]) > len(firsts)  # windows were made
    assert set(ours) - {"sequence_ids"} == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    for i in range(len(theirs["input_ids"])):
        assert ours.word_ids(i) == theirs.word_ids(i)
    one = uncased(firsts[0], truncation=True, max_length=8, return_overflowing_tokens=True)
    assert one == hf_fast(firsts[0], truncation=True, max_length=8,
                          return_overflowing_tokens=True).data


def test_return_options_match_transformers(uncased, hf_fast, sentence_pairs):
    firsts, seconds = map(list, zip(*sentence_pairs[:100], strict=True))
    firsts[0] = "typed [MASK] and [SEP] stay text"
    for options in (
            {"padding": True, "pad_to_multiple_of": 8},
            {"padding": "max_length", "max_length": 50, "pad_to_multiple_of": 16},
            {"padding": True, "max_length": 49, "pad_to_multiple_of": 7, "truncation": True},
            {"padding": True, "return_special_tokens_mask": True, "return_length": True},
            {"return_special_tokens_mask": True, "add_special_tokens": False},
            {"return_attention_mask": False, "return_token_type_ids": False},
            {"padding": True, "return_tensors": "np", "return_special_tokens_mask": True}):
        ours, theirs = uncased(firsts, seconds, **options), hf_fast(firsts, seconds, **options)
        assert _fields(ours) == _fields(theirs), options
        assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}


def test_the_result_is_used_as_transformers_batch_encoding(uncased):
    batch = uncased(["a b", "c"], padding=True, return_tensors="pt")
    moved = batch.to("cpu")
    assert isinstance(moved, dict) and torch.equal(moved.input_ids, batch["input_ids"])
    assert batch.sequence_ids(1) == [None, 0, None, None]
    assert batch.word_ids(1) == [None, 0, None, None]
    with pytest.raises(AttributeError, match="no field 'offset_mapping'"):
        getattr(batch, "offset_mapping")  # noqa: B009 - the attribute access under test


# -- files -------------------------------------------------------------------------------------


def test_save_and_load_round_trip(uncased, sentences, tmp_path):
    uncased.save_pretrained(tmp_path / "saved")
    reloaded = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.vocab == uncased.vocab
    assert (reloaded.do_lower_case, reloaded.model_max_length) == (True, 512)
    assert reloaded(sentences[:500]) == uncased(sentences[:500])


def test_huggingface_loads_what_we_save(uncased, sentences, tmp_path):
    uncased.save_pretrained(tmp_path)
    ours = uncased(sentences[:1000], sentences[1000:2000])
    for hf in (transformers.BertTokenizer.from_pretrained(str(tmp_path)),
               transformers.AutoTokenizer.from_pretrained(str(tmp_path)),
               BertTokenizerLegacy.from_pretrained(str(tmp_path))):
        theirs = hf(sentences[:1000], sentences[1000:2000])
        assert theirs["input_ids"] == ours["input_ids"], type(hf)
        assert theirs["token_type_ids"] == ours["token_type_ids"], type(hf)


def test_explicit_do_lower_case_overrides_the_config(minilm_dir):
    cased = BertTokenizer.from_pretrained(minilm_dir, do_lower_case=False)
    assert not cased.do_lower_case
    assert cased.tokenize("Hello") == ["[UNK]"]  # the uncased vocab has no "Hello"


def test_a_known_model_name_loads_its_tokenizer(minilm_dir):
    assert BertTokenizer.from_pretrained("all-minilm-l6-v2").vocab == BertTokenizer.from_pretrained(
        minilm_dir).vocab


def test_model_max_length_comes_from_the_config(minilm_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    assert BertTokenizer.from_pretrained(tmp_path).model_max_length == 128
    (tmp_path / "tokenizer_config.json").unlink()
    assert BertTokenizer.from_pretrained(tmp_path).model_max_length == 512


# -- errors --------------------------------------------------------------------------------------


def write_vocab(folder, tokens, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_missing_folder_or_vocab(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*not a tokenizer folder"):
        BertTokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt not found"):
        BertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        BertTokenizer(tmp_path / "missing.txt")


def test_files_that_are_not_vocabularies(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        BertTokenizer(tmp_path / "empty.txt")
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="model.bin is not a vocabulary: it is binary"):
        BertTokenizer(tmp_path / "model.bin")
    write_vocab(tmp_path / "no_mask", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"])
    with pytest.raises(ValueError, match=r"vocab.txt lacks the special tokens \[MASK\]"):
        BertTokenizer.from_pretrained(tmp_path / "no_mask")
    write_vocab(tmp_path / "twice", [*SPECIALS, "hello", "world", "hello"])
    with pytest.raises(ValueError, match=r"'hello' appears twice \(lines 6 and 8\)"):
        BertTokenizer.from_pretrained(tmp_path / "twice")
    write_vocab(tmp_path / "bad_json", [*SPECIALS, "a"])
    (tmp_path / "bad_json" / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path / "bad_json")


def test_cased_config_with_an_uncased_vocab(minilm_dir, tmp_path):
    folder = write_vocab(tmp_path, (minilm_dir / "vocab.txt").read_text().splitlines(),
                         config={"do_lower_case": False})
    with pytest.raises(ValueError, match="uncased vocabulary.*pass do_lower_case=True"):
        BertTokenizer.from_pretrained(folder)
    assert BertTokenizer.from_pretrained(folder, do_lower_case=True).do_lower_case
    assert not BertTokenizer.from_pretrained(folder, do_lower_case=False).do_lower_case


def test_a_cased_vocab_alone_is_read_lower_cased_with_a_warning(minilm_dir, tmp_path, caplog):
    """Google's cased download is a vocab.txt with nothing saying it is cased: read lower-cased
    (Google's and transformers' default) its capitalised entries are dead, and the user is told."""
    entries = (minilm_dir / "vocab.txt").read_text().splitlines()
    cased = write_vocab(tmp_path / "cased", [*entries, "Paris", "London"])
    with caplog.at_level("WARNING", logger="bertkit"):
        assert BertTokenizer.from_pretrained(cased).do_lower_case
    assert "2 of its entries have upper-case letters" in caplog.text
    assert "pass do_lower_case=False" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bertkit"):
        BertTokenizer.from_pretrained(write_vocab(tmp_path / "uncased", entries))
        BertTokenizer.from_pretrained(cased, do_lower_case=False)
    assert caplog.text == ""


@pytest.mark.parametrize("setting", [{"strip_accents": False}, {"tokenize_chinese_chars": False},
                                     {"do_basic_tokenize": False}])
def test_configs_asking_for_other_text_rules(tmp_path, setting):
    write_vocab(tmp_path, SPECIALS, config=setting)
    key, value = next(iter(setting.items()))
    with pytest.raises(ValueError, match=f"sets {key}={value}, which bertkit does not support"):
        BertTokenizer.from_pretrained(tmp_path)


def test_bad_call_arguments(uncased):
    with pytest.raises(TypeError, match="text must be a str or a list of str, got NoneType"):
        uncased(None)
    with pytest.raises(TypeError, match=r"got bytes \(decode bytes first"):
        uncased(b"bytes")
    with pytest.raises(TypeError, match=r"text\[1\] must be a str .* got int"):
        uncased(["ok", 3])
    with pytest.raises(TypeError, match="text_pair must be a str"):
        uncased("ok", 3.5)
    with pytest.raises(TypeError, match="text must be a str"):
        uncased.tokenize(None)
    with pytest.raises(ValueError, match="unknown truncation 'shortest'.*'only_second'"):
        uncased("a", truncation="shortest")
    with pytest.raises(ValueError, match="unknown padding 'left'.*'longest', 'max_length'"):
        uncased("a", padding="left")
    with pytest.raises(ValueError, match="text is a batch of 2 but text_pair is a batch of 1"):
        uncased(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="text is a single str but text_pair is a batch of 1"):
        uncased("a", ["c"])
    with pytest.raises(ValueError, match="'only_second' needs a text_pair"):
        uncased("a", truncation="only_second")
    with pytest.raises(ValueError, match="'only_first' cannot fit max_length=6: 3 tokens must go "
                                         "but the first text has only 1"):
        uncased("a", "b c d e f", truncation="only_first", max_length=6)
    with pytest.raises(ValueError, match="max_length=2 is shorter than the special tokens"):
        uncased("a", "b", truncation=True, max_length=2)
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        uncased("a", truncation=True, max_length=0)
    with pytest.raises(ValueError, match="return_tensors='tf' is not supported; use 'pt'"):
        uncased("a", return_tensors="tf")
    with pytest.raises(TypeError, match="does not take padding_side=: pad on the right"):
        uncased(["a", "b c"], padding=True, padding_side="left")
    with pytest.raises(TypeError, match="unexpected argument return_tokens=; see help"):
        uncased("a", return_tokens=True)
    with pytest.raises(ValueError, match="pad_to_multiple_of needs padding=True"):
        uncased(["a", "b c"], pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="max_length=10 is not a multiple of pad_to_multiple_of=8"):
        uncased(["a", "b c"], padding=True, truncation=True, max_length=10, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="stride only applies with return_overflowing_tokens"):
        uncased("a b c", truncation=True, max_length=3, stride=1)
    with pytest.raises(ValueError, match="return_overflowing_tokens=True needs truncation"):
        uncased("a b c", return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="with text pairs needs truncation='only_first' or"):
        uncased("a b", "c d", truncation=True, max_length=4, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="stride=2 must be smaller than the 2 tokens of text"):
        uncased("a b c", truncation=True, max_length=4, return_overflowing_tokens=True, stride=2)
    with pytest.raises(TypeError, match=r"text\[1\] must be a list of words like text\[0\]"):
        uncased([["a"], "b"], is_split_into_words=True)
    with pytest.raises(TypeError, match=r"token ids must be ints, got \[101\]"):
        uncased.decode([[101], 102])
    with pytest.raises(ValueError, match="cannot form a tensor; pass padding=True"):
        uncased(["a", "b c"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"token ids \[30522\] are outside this vocabulary"):
        uncased.decode([101, 30522])


def test_text_rules_are_evaluated_once_then_read_from_the_cache(tmp_path, monkeypatch, uncased,
                                                                 minilm_dir):
    from bertkit import tokenizer as module

    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path))
    module._google_text_rules.cache_clear()
    try:
        evaluated = module._google_text_rules()
        (saved,) = (tmp_path / "text-rules").glob("unicode-*-tokenizers-*.json")
        with monkeypatch.context() as patch:
            patch.setattr(module, "_evaluate_text_rules", lambda: pytest.fail("evaluated again"))
            module._google_text_rules.cache_clear()
            assert module._google_text_rules() == evaluated
            text = "Ünïcode ΣΊΣΥΦΟΣ \u00adsoft\u200bhyphen 東京 ﬁne"
            fresh = BertTokenizer.from_pretrained(minilm_dir)
            assert fresh(text)["input_ids"] == uncased(text)["input_ids"]
        saved.write_text('{"dropped": "[a]"}', encoding="utf-8")  # not a whole rule set
        module._google_text_rules.cache_clear()
        assert module._google_text_rules() == evaluated
        assert json.loads(saved.read_text(encoding="utf-8"))["alone"] == evaluated.alone
    finally:
        module._google_text_rules.cache_clear()
