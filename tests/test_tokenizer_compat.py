"""Where bertkit follows Google's tokenization.py rather than transformers, and tokenizer folders
exchanged with transformers 5 (`tokenizer.json`, no `vocab.txt`) in both directions.

Expected outputs are worked out by Google's algorithm (tokenization.py, run_classifier.py) on the
bert-base-uncased vocabulary; `legacy` (conftest.GoogleReference) must agree, and so must
transformers' own tokenizer wherever it agrees with Google.
"""

import json
import random

import pytest
import transformers
from tokenizers import Tokenizer

from bertkit.tokenizer import BertTokenizer, train_vocab

CLS, SEP, HELLO, WORLD, GOOD, A = 101, 102, 7592, 2088, 2204, 1037


@pytest.fixture(scope="module")
def transformers_fast(minilm_dir):
    """transformers 5's BertTokenizer (Rust-backed) on the same folder."""
    return transformers.BertTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def sentences(wiki_sentences):
    return wiki_sentences[:3000]


@pytest.fixture(scope="module")
def pairs(wiki_sentences):
    rng = random.Random(1)
    return [tuple(rng.sample(wiki_sentences, 2)) for _ in range(400)]


def fields(encoding):
    return {key: encoding[key] for key in ("input_ids", "token_type_ids", "attention_mask")}


# -- Google's semantics where transformers departs ---------------------------------------------


@pytest.mark.parametrize("second", ["", " ", "\u200e", "\x00\x07 \t"])
def test_a_second_text_without_tokens_is_no_second_segment(uncased, legacy, second):
    # run_classifier.py: tokens_b = tokenize(text_b) if text_b, and only `if tokens_b` does B,
    # with its [SEP], join the input; a lone text is truncated to max_length - 2.
    expected = {"input_ids": [CLS, HELLO, SEP], "token_type_ids": [0, 0, 0],
                "attention_mask": [1, 1, 1]}
    assert uncased("hello", second) == expected
    assert fields(legacy("hello", second, return_token_type_ids=True)) == expected
    assert uncased("a " * 10, second, truncation=True, max_length=6)["input_ids"] == (
        [CLS] + [A] * 4 + [SEP])
    out = uncased("hello", second, return_offsets_mapping=True, return_word_ids=True)
    assert out["sequence_ids"] == [None, 0, None] and out["word_ids"] == [None, 0, None]


def test_transformers_agrees_for_an_empty_string(uncased, transformers_fast):
    assert uncased("hello", "")["input_ids"] == transformers_fast("hello", "")["input_ids"]


def test_a_batch_mixes_pairs_and_pairs_without_a_second_segment(uncased, legacy):
    out = uncased(["hello", "hello"], ["", "world"], padding=True)
    assert out["input_ids"] == [[CLS, HELLO, SEP, 0, 0], [CLS, HELLO, SEP, WORLD, SEP]]
    assert out["token_type_ids"] == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert out == fields(legacy(["hello", "hello"], ["", "world"], padding=True,
                                return_token_type_ids=True))


@pytest.mark.parametrize(("max_length", "expected"), [
    (3, [CLS, SEP]),  # _truncate_seq_pair to 0 tokens: both texts go
    (4, [CLS, HELLO, SEP]),  # to 1 token: "good" goes on the tie, then "day"; B is empty
    (5, [CLS, HELLO, SEP, GOOD, SEP]),
])
def test_truncation_that_empties_the_second_text_drops_its_sep(uncased, legacy, max_length,
                                                               expected):
    out = uncased("hello world", "good day", truncation=True, max_length=max_length,
                  return_offsets_mapping=True)
    assert out["input_ids"] == expected
    assert out["token_type_ids"] == [0] * min(len(expected), 3) + [1] * (len(expected) - 3)
    if len(expected) == 3:
        assert out["offset_mapping"] == [(0, 0), (0, 5), (0, 0)]
    reference = legacy("hello world", "good day", truncation=True, max_length=max_length,
                       return_token_type_ids=True)
    assert fields(out) == fields(reference)


@pytest.mark.parametrize("length", [101, 150, 200])
def test_words_of_up_to_200_characters_are_split_into_pieces(uncased, legacy, length):
    # Google's WordpieceTokenizer has max_input_chars_per_word=200 (transformers: 100). Greedy
    # longest match on this vocabulary: "aaa", then "##aa" as long as two are left.
    expected = ["aaa"] + ["##aa"] * ((length - 3) // 2) + ["##a"] * ((length - 3) % 2)
    assert uncased.tokenize("a" * length) == expected == legacy.tokenize("a" * length)
    # Accents are stripped before the length is counted against the limit.
    assert uncased.tokenize("á" * length) == expected


def test_longer_words_become_one_unknown_token(uncased, legacy, transformers_fast):
    for text in ("a" * 201, "x" + "y" * 250):
        assert uncased.tokenize(text) == ["[UNK]"] == legacy.tokenize(text)
        assert transformers_fast.tokenize(text) == ["[UNK]"]
    assert uncased.tokenize("a" * 100) == transformers_fast.tokenize("a" * 100)


def test_private_use_unassigned_and_surrogate_code_points_are_kept(uncased, legacy):
    # Google's _clean_text drops NUL, U+FFFD and Cc/Cf only. What it keeps here is in no
    # vocabulary, so its word becomes [UNK] instead of vanishing.
    text = "x \ue000 y a\U000f0000b \u0378 z \ud800 \uffff"
    expected = ["x", "[UNK]", "y", "[UNK]", "[UNK]", "z", "[UNK]", "[UNK]"]
    assert uncased.tokenize(text) == expected == legacy.tokenize(text)
    assert uncased.encode(text) == legacy.encode(text)
    out = uncased(text, return_offsets_mapping=True)
    assert [text[start:end] for start, end in out["offset_mapping"][1:-1]] == [
        "x", "\ue000", "y", "a\U000f0000b", "\u0378", "z", "\ud800", "\uffff"]


def test_control_and_format_characters_are_still_dropped(uncased, legacy, transformers_fast):
    text = "he\u200bllo\x07 wor\u00adld\x00 \ufffd\u2060"
    assert uncased.tokenize(text) == ["hello", "world"] == legacy.tokenize(text)
    assert transformers_fast.tokenize(text) == ["hello", "world"]


def test_final_sigma_and_newer_punctuation_follow_python_as_google_does(uncased, legacy):
    # Python's str.lower: a word-final capital sigma is "ς" (transformers' Rust tokenizer: "σ").
    assert uncased.tokenize("ΟΔΟΣ ΣΑΣ") == ["ο", "##δ", "##ος", "σ", "##α", "##ς"]
    # U+2E5D OBLIQUE HYPHEN (Unicode 14, category Pd) is punctuation for Python's tables.
    assert uncased.tokenize("x\u2e5dy") == ["x", "[UNK]", "y"]
    for text in ("ΟΔΟΣ ΣΑΣ", "x\u2e5dy"):
        assert uncased.tokenize(text) == legacy.tokenize(text)


def test_unicode_16_capitals_unknown_to_python_are_not_lowercased(google_reference, tmp_path):
    # U+A7CB is unassigned for this Python's tables, so Google keeps it as it is; the engine's
    # newer tables would lowercase it to U+0264 "ɤ", which this vocabulary holds.
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u0264", "x"]
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    ours = BertTokenizer(tmp_path / "vocab.txt")
    google = google_reference(vocab_file=str(tmp_path / "vocab.txt"))
    for text in ("\ua7cb", "\u0264 \ua7cb x", "x\ua7cb"):
        assert ours.tokenize(text) == google.tokenize(text)
    assert ours.tokenize("\u0264 \ua7cb x") == ["\u0264", "[UNK]", "x"]


# -- folders written by transformers 5 and sentence-transformers ------------------------------


def saved_by_transformers(source, folder):
    transformers.BertTokenizerFast.from_pretrained(str(source)).save_pretrained(str(folder))
    (folder / "vocab.txt").unlink(missing_ok=True)
    return folder


def test_a_folder_saved_by_transformers_5_loads_with_the_same_ids(minilm_dir, uncased, legacy,
                                                                  sentences, pairs, tmp_path):
    folder = saved_by_transformers(minilm_dir, tmp_path)
    assert (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").exists()
    loaded = BertTokenizer.from_pretrained(folder)
    assert loaded.vocab == uncased.vocab
    assert (loaded.do_lower_case, loaded.model_max_length) == (True, 512)
    assert loaded(sentences) == uncased(sentences)
    assert loaded(sentences[:500])["input_ids"] == legacy(sentences[:500])["input_ids"]
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    assert (loaded(firsts, seconds, truncation=True, max_length=40)
            == uncased(firsts, seconds, truncation=True, max_length=40))


def test_a_sentence_transformers_folder_without_vocab_txt_loads(minilm_dir, uncased, sentences,
                                                               tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((minilm_dir / name).read_bytes())
    loaded = BertTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab == uncased.vocab and loaded(sentences) == uncased(sentences)


# -- folders bertkit writes, read by transformers 5 -------------------------------------------


def test_transformers_5_loads_a_bertkit_folder_with_the_same_ids(uncased, legacy, sentences,
                                                                 pairs, tmp_path):
    written = uncased.save_pretrained(tmp_path)
    assert [path.name for path in written] == ["vocab.txt", "tokenizer_config.json",
                                               "tokenizer.json"]
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.is_fast and auto.model_max_length == 512
    assert auto(sentences)["input_ids"] == uncased(sentences)["input_ids"]
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    assert fields(auto(firsts, seconds)) == fields(uncased(firsts, seconds))
    agreed = 0
    for index, (a, b) in enumerate(pairs):
        max_length = 16 + index % 48
        ours = uncased(a, b, truncation=True, max_length=max_length)
        theirs = fields(auto(a, b, truncation=True, max_length=max_length))
        if ours == theirs:
            agreed += 1
            continue
        # The one difference: when both texts are cut to an odd budget and the first is no
        # longer, Google leaves the extra token to the first, transformers' Rust engine to the
        # second.
        len_a, len_b, budget = len(uncased.tokenize(a)), len(uncased.tokenize(b)), max_length - 3
        assert budget % 2 == 1 and len_a <= len_b and 2 * len_a > budget, (a, b, max_length)
        assert ours == fields(legacy(a, b, truncation=True, max_length=max_length,
                                     return_token_type_ids=True))
    assert agreed > len(pairs) // 2


def test_the_tokenizer_json_alone_gives_the_same_ids(uncased, sentences, pairs, tmp_path):
    # As tools that read tokenizer.json themselves (text-embeddings-inference, ...) load it.
    uncased.save_pretrained(tmp_path)
    engine = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [e.ids for e in engine.encode_batch(sentences)] == uncased(sentences)["input_ids"]
    assert [e.type_ids for e in engine.encode_batch(pairs)] == uncased(
        [a for a, _ in pairs], [b for _, b in pairs])["token_type_ids"]
    assert engine.model.max_input_chars_per_word == 200


def test_transformers_5_ignores_the_word_limit_a_bertkit_folder_states(uncased, tmp_path):
    """As the README says: the tokenizer.json states Google's 200, transformers 5's BertTokenizer
    keeps its 100 (a 150-character word is [UNK]), and setting the limit on the loaded tokenizer
    makes the two agree. Should transformers start to follow the file, the README's note and the
    table's row change."""
    uncased.save_pretrained(tmp_path)
    word = "abcdefghij" * 15
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(auto, transformers.BertTokenizer) and auto.do_lower_case
    assert auto.tokenize(word) == ["[UNK]"] != uncased.tokenize(word)
    auto.backend_tokenizer.model.max_input_chars_per_word = 200
    assert auto(word)["input_ids"] == uncased(word)["input_ids"]


def test_the_config_tells_transformers_the_casing_and_the_max_length(wiki_sentences, tmp_path):
    cased = train_vocab(texts=wiki_sentences[:3000], vocab_size=3000, lowercase=False)
    cased.model_max_length = 128
    cased.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["do_lower_case"], config["model_max_length"]) == (False, 128)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (auto.do_lower_case, auto.model_max_length) == (False, 128)
    texts = wiki_sentences[3000:4000]
    assert auto(texts)["input_ids"] == cased(texts)["input_ids"]
    long_text = " ".join(texts[:40])
    assert len(cased(long_text, truncation=True)["input_ids"]) == 128
    assert (auto(long_text, truncation=True)["input_ids"]
            == cased(long_text, truncation=True)["input_ids"])
    for folder_files in ("all", "without vocab.txt"):
        if folder_files == "without vocab.txt":
            (tmp_path / "vocab.txt").unlink()
        reloaded = BertTokenizer.from_pretrained(tmp_path)
        assert (reloaded.do_lower_case, reloaded.model_max_length) == (False, 128)
        assert reloaded(texts) == cased(texts)


# -- what a tokenizer.json may ask for ----------------------------------------------------------


def json_folder(minilm_dir, folder, edit=None, config=None):
    """A folder with MiniLM's tokenizer.json, edited, and no vocab.txt."""
    data = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if edit is not None:
        edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def setting(path, value):
    """An edit setting the dotted `path` of the JSON to `value`."""
    *parents, key = path.split(".")

    def edit(data):
        for parent in parents:
            data = data[parent]
        data[key] = value
    return edit


def without_vocab_entry(token):
    def edit(data):
        del data["model"]["vocab"][token]
    return edit


def renaming_vocab_entry(token, new_name):
    def edit(data):
        data["model"]["vocab"][new_name] = data["model"]["vocab"].pop(token)
    return edit


def adding_token(content):
    def edit(data):
        data["added_tokens"].append({"id": 30522, "content": content, "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False,
                                     "special": True})
    return edit


ROBERTA = {"type": "RobertaProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101],
           "trim_offsets": True, "add_prefix_space": False}


@pytest.mark.parametrize(("edit", "message"), [
    (setting("model.type", "BPE"), r'sets model\.type="BPE", which bertkit cannot honour: it '
                                   r'reads BERT WordPiece tokenizers only \(model\.type must be '
                                   r'"WordPiece"\)'),
    (setting("model.unk_token", "<unk>"), r'model\.unk_token="<unk>".*must be "\[UNK\]"'),
    (setting("model.continuing_subword_prefix", "@@"),
     r'model\.continuing_subword_prefix="@@".*must be "##"'),
    (setting("model.max_input_chars_per_word", 50),
     r"model\.max_input_chars_per_word=50.*must be 200, Google's limit, or 100"),
    (setting("normalizer", {"type": "NFKC"}), r'normalizer\.type="NFKC".*"BertNormalizer"'),
    (setting("normalizer", None), r"normalizer\.type=null.*must be \"BertNormalizer\""),
    (setting("normalizer.clean_text", False), r"normalizer\.clean_text=false.*must be true"),
    (setting("normalizer.handle_chinese_chars", False),
     r"normalizer\.handle_chinese_chars=false.*must be true"),
    (setting("normalizer.strip_accents", False),
     r"normalizer\.strip_accents=false.*must be null or the same as lowercase \(true\)"),
    (setting("normalizer.lowercase", "yes"), r'normalizer\.lowercase="yes".*true or false'),
    (setting("pre_tokenizer", {"type": "Whitespace"}),
     r'pre_tokenizer\.type="Whitespace".*must be "BertPreTokenizer"'),
    (setting("post_processor", ROBERTA),
     r"sets a post_processor \(RobertaProcessing\) that does not frame texts as BERT's "
     r"\[CLS\] A \[SEP\] B \[SEP\]"),
    (setting("post_processor.single", []), r"post_processor \(TemplateProcessing\)"),
    (adding_token("[NEW]"), r'sets added_tokens with "\[NEW\]" \(id 30522\), which bertkit '
                            r"cannot honour: it keeps only BERT's \[PAD\] \[UNK\] \[CLS\]"),
    (without_vocab_entry("the"), r"tokenizer\.json \(model\.vocab\) is not a valid vocabulary: "
                                 r"its ids must be 0\.\.N-1"),
    (renaming_vocab_entry("[MASK]", "<mask>"), r"lacks the special tokens \[MASK\]"),
])
def test_tokenizer_json_settings_bertkit_cannot_honour(minilm_dir, tmp_path, edit, message):
    folder = json_folder(minilm_dir, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        BertTokenizer.from_pretrained(folder)
    assert str(folder / "tokenizer.json") in str(error.value)


@pytest.mark.parametrize("edit", [
    setting("post_processor", None),
    setting("post_processor", {"type": "BertProcessing", "sep": ["[SEP]", 102],
                               "cls": ["[CLS]", 101]}),
    setting("model.max_input_chars_per_word", 200),
    setting("normalizer.strip_accents", True),
    setting("added_tokens", []),
    setting("truncation", None),
], ids=["no post-processor", "BertProcessing", "Google's limit", "strip accents",
        "no added tokens", "no truncation"])
def test_tokenizer_json_variants_of_berts_rules_load(minilm_dir, uncased, sentences, tmp_path,
                                                     edit):
    loaded = BertTokenizer.from_pretrained(json_folder(minilm_dir, tmp_path, edit))
    assert loaded(sentences[:300]) == uncased(sentences[:300])


def test_casing_from_tokenizer_json_and_the_config(minilm_dir, tmp_path):
    folder = json_folder(minilm_dir, tmp_path / "conflict", config={"do_lower_case": False})
    with pytest.raises(ValueError, match=r"tokenizer_config\.json says do_lower_case=false but "
                                         r".*tokenizer\.json sets normalizer\.lowercase=true; "
                                         r"make the two agree, or pass do_lower_case="):
        BertTokenizer.from_pretrained(folder)
    assert BertTokenizer.from_pretrained(folder, do_lower_case=True).do_lower_case
    cased_json = json_folder(minilm_dir, tmp_path / "cased",
                             setting("normalizer.lowercase", False))
    with pytest.raises(ValueError, match=r"tokenizer\.json sets normalizer\.lowercase=false, but "
                                         r".*tokenizer\.json holds an uncased vocabulary"):
        BertTokenizer.from_pretrained(cased_json)
    assert not BertTokenizer.from_pretrained(cased_json, do_lower_case=False).do_lower_case


def test_model_max_length_from_the_config(minilm_dir, tmp_path):
    huge = json_folder(minilm_dir, tmp_path / "huge",
                       config={"model_max_length": 1000000000000000019884624838656})
    assert BertTokenizer.from_pretrained(huge).model_max_length == 512  # transformers' "unknown"
    assert BertTokenizer.from_pretrained(
        json_folder(minilm_dir, tmp_path / "256", config={"model_max_length": 256})
    ).model_max_length == 256
    bad = json_folder(minilm_dir, tmp_path / "bad", config={"model_max_length": "long"})
    with pytest.raises(ValueError, match="sets model_max_length='long'; it must be a positive"):
        BertTokenizer.from_pretrained(bad)


def test_a_folder_with_neither_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt not found, nor tokenizer\.json"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"tokenizer\.json is not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)


def test_a_vocabulary_given_as_a_mapping(uncased):
    assert BertTokenizer(uncased.vocab).vocab == uncased.vocab
    with pytest.raises(ValueError, match="the vocabulary given is not a valid vocabulary"):
        BertTokenizer({"[PAD]": 0, "[UNK]": 2})
