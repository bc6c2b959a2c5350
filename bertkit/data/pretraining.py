"""Masked-LM + next-sentence examples from tokenised documents, with Google's semantics.

These are the steps of Google's ``create_pretraining_data.py`` as pure functions over numpy arrays,
so tests can hit each one: a document (a list of tokenised sentences) becomes examples
``[CLS] A [SEP] B [SEP]`` whose segments are whole sentences, B being the true continuation half
of the time and a stretch of another document otherwise; pairs are truncated at random ends; then
15% of the tokens are chosen for prediction, 80% of those become [MASK], 10% a random token and
10% stay as they are. Every random choice comes from the numpy ``Generator`` passed in, so a seed
fixes the output.

Deliberate differences from Google's code, each for a reason stated where it is made:
- NSP is 50/50 whatever the document lengths: Google makes a pair random whenever a single
  sentence was gathered, 62% of pairs on short documents (see `create_examples_from_document`);
- the short target length is drawn for every example, not once per document (the paper: "10% of
  the time"), so long documents are not all-short or all-long;
- the share to mask is 15% of the maskable tokens (Google counts [CLS] and [SEP] too);
- a random replacement is never a special token ([CLS], [SEP], [PAD], [MASK], [UNK]);
- a random next segment always comes from another document (Google gives up after 10 draws);
- whole-word masking never joins the first piece of segment B to the last word of A.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100  # the label of positions that are not predicted (PyTorch's default)


@dataclass(frozen=True)
class PretrainingConfig:
    """How examples are made. The defaults are Google's, plus a 1% validation split."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    dupe_factor: int = 10  # each document is made into examples this many times, masked afresh
    short_seq_prob: float = 0.1
    next_sentence: bool = True  # False: single-segment examples without an NSP label
    whole_word_mask: bool = False
    dynamic_masking: bool = False  # True: store unmasked, draw masks at load time every epoch
    validation_fraction: float = 0.01  # share of documents held out, with all their examples
    seed: int = 12345

    def __post_init__(self):
        problems = []
        if not 5 <= self.max_seq_length <= 65535:
            problems.append(f"max_seq_length must be in [5, 65535] ([CLS] A [SEP] B [SEP] needs "
                            f"5), got {self.max_seq_length}")
        if self.max_predictions_per_seq < 1:
            problems.append(f"max_predictions_per_seq must be >= 1, got "
                            f"{self.max_predictions_per_seq}")
        if not 0 < self.masked_lm_prob <= 1:
            problems.append(f"masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if self.dupe_factor < 1:
            problems.append(f"dupe_factor must be >= 1, got {self.dupe_factor}")
        if not 0 <= self.short_seq_prob <= 1:
            problems.append(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got "
                            f"{self.validation_fraction}")
        if problems:
            raise ValueError("invalid pre-training settings: " + "; ".join(problems) + ".")

    @property
    def max_num_tokens(self) -> int:
        """Room for segment tokens once [CLS] and the [SEP]s are in."""
        return self.max_seq_length - (3 if self.next_sentence else 2)


@dataclass(frozen=True)
class Vocabulary:
    """What masking needs to know about a WordPiece vocabulary, as arrays indexed by token id."""

    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    random_ids: np.ndarray  # the ids a random replacement is drawn from: every non-special token
    is_continuation: np.ndarray  # bool per id: a "##" piece that continues the previous word

    @classmethod
    def from_tokens(cls, tokens: Sequence[str], special_tokens: dict[str, str]) -> Vocabulary:
        """``tokens`` in id order; ``special_tokens`` maps cls/sep/mask/pad/unk to their text."""
        ids = {token: i for i, token in enumerate(tokens)}
        special_ids = [ids[special_tokens[role]] for role in ("cls", "sep", "mask", "pad", "unk")]
        return cls(
            cls_id=special_ids[0], sep_id=special_ids[1], mask_id=special_ids[2],
            pad_id=special_ids[3],
            random_ids=np.setdiff1d(np.arange(len(tokens)), special_ids),
            is_continuation=np.array([t.startswith("##") for t in tokens], dtype=bool),
        )

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        return cls.from_tokens(
            sorted(tokenizer.vocab, key=tokenizer.vocab.get),
            {"cls": tokenizer.cls_token, "sep": tokenizer.sep_token,
             "mask": tokenizer.mask_token, "pad": tokenizer.pad_token,
             "unk": tokenizer.unk_token},
        )

    @property
    def size(self) -> int:
        return len(self.is_continuation)


@dataclass
class Example:
    """One unmasked example, as built from a document."""

    tokens: np.ndarray  # [CLS] A [SEP] B [SEP] (or [CLS] A [SEP] without NSP), original ids
    segment_a_length: int  # len([CLS] A [SEP]): these positions get token type 0, the rest 1
    is_random_next: bool
    target_length: int  # segment tokens aimed for (short with probability short_seq_prob)


def truncate_seq_pair(tokens_a: np.ndarray, tokens_b: np.ndarray, max_num_tokens: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Google's ``truncate_seq_pair``, in closed form.

    Google removes one token at a time from the longer segment (B when both are as long) until the
    pair fits, each from the front or the back by a coin flip. How many each segment loses follows
    from the lengths alone; its front/back split is then one binomial draw, with the same
    distribution as the coin flips, and slicing replaces the token-by-token loop, which is
    quadratic for a very long sentence.
    """
    len_a, len_b = len(tokens_a), len(tokens_b)
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return tokens_a, tokens_b
    gap = abs(len_a - len_b)
    if excess <= gap:
        cut_a, cut_b = (excess, 0) if len_a > len_b else (0, excess)
    else:
        # The longer one is cut down to the shorter; then they alternate, B first.
        rest = excess - gap
        cut_a = (gap if len_a > len_b else 0) + rest // 2
        cut_b = (gap if len_b > len_a else 0) + rest - rest // 2
    front_a, front_b = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
    return (tokens_a[front_a:len_a - (cut_a - front_a)],
            tokens_b[front_b:len_b - (cut_b - front_b)])


def draw_target_length(max_num_tokens: int, short_seq_prob: float,
                       rng: np.random.Generator) -> int:
    """Usually the full length; with probability ``short_seq_prob`` a uniform one in [2, max].

    Short examples reduce the mismatch between pre-training and fine-tuning on short inputs.
    """
    if rng.random() < short_seq_prob:
        return int(rng.integers(2, max_num_tokens, endpoint=True))
    return max_num_tokens


def create_examples_from_document(documents: Sequence[Sequence[np.ndarray]], document_index: int,
                                  config: PretrainingConfig, vocab: Vocabulary,
                                  rng: np.random.Generator) -> list[Example]:
    """The unmasked examples of ``documents[document_index]`` (Google's algorithm).

    Sentences are gathered until they reach the target length (or the document ends); a random
    number of them form A. Half the time B is a stretch of another document of ``documents`` and
    the unused sentences go back to the pool; otherwise B is the rest of the gathered sentences.
    Without NSP, all gathered sentences form the one segment. Every sentence must hold at least
    one token; with NSP a document needs two sentences and ``documents`` two documents.
    """
    document = documents[document_index]
    if config.next_sentence and (len(document) < 2 or len(documents) < 2):
        raise ValueError("next-sentence pairs need documents of at least two sentences, and at "
                         "least two documents to draw a random next segment from.")
    max_num_tokens = config.max_num_tokens
    examples: list[Example] = []
    target_length = draw_target_length(max_num_tokens, config.short_seq_prob, rng)
    chunk: list[np.ndarray] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        # With NSP a pair needs two sentences, so a chunk that reached its length with a single
        # (long) sentence takes the next one too. Google closes it and makes B random, as it
        # must for a lone sentence; on documents of a few sentences that makes 62% of the
        # pairs random (measured on the Wikipedia leads) instead of the paper's 50%.
        long_enough = chunk_length >= target_length and (len(chunk) >= 2
                                                         or not config.next_sentence)
        if i == len(document) - 1 or long_enough:
            if config.next_sentence:
                tokens_a, tokens_b, is_random_next, unused = _pair_from_chunk(
                    chunk, document, i, documents, document_index, target_length, rng)
                i -= unused
            else:
                tokens_a, tokens_b, is_random_next = np.concatenate(chunk), chunk[0][:0], False
            tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            examples.append(_framed(tokens_a, tokens_b, is_random_next, target_length, vocab))
            chunk, chunk_length = [], 0
            target_length = draw_target_length(max_num_tokens, config.short_seq_prob, rng)
        i += 1
    return examples


def _pair_from_chunk(chunk: list[np.ndarray], document: Sequence[np.ndarray], last: int,
                     documents: Sequence[Sequence[np.ndarray]], document_index: int,
                     target_length: int, rng: np.random.Generator):
    """(A, B, is_random_next, sentences of the chunk left unused) for the chunk of sentences of
    ``document`` that ends with sentence ``last``."""
    is_random_next = bool(rng.random() < 0.5)
    if len(chunk) == 1 and not is_random_next:
        # A lone sentence ends the document: its true predecessor becomes A, so that this pair
        # too is IsNext half the time (Google makes every such pair random).
        chunk = [document[last - 1], chunk[0]]
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
    tokens_a = np.concatenate(chunk[:a_end])
    if not is_random_next:
        return tokens_a, np.concatenate(chunk[a_end:]), False, 0
    other = int(rng.integers(len(documents) - 1))
    other += other >= document_index  # uniform over the other documents
    random_document = documents[other]
    start = int(rng.integers(len(random_document)))
    target_b_length = target_length - len(tokens_a)
    end, length = start, 0
    while end < len(random_document) and (end == start or length < target_b_length):
        length += len(random_document[end])
        end += 1
    return tokens_a, np.concatenate(random_document[start:end]), True, len(chunk) - a_end


def _framed(tokens_a: np.ndarray, tokens_b: np.ndarray, is_random_next: bool,
            target_length: int, vocab: Vocabulary) -> Example:
    cls, sep = np.array([vocab.cls_id]), np.array([vocab.sep_id])
    parts = [cls, tokens_a, sep] + ([tokens_b, sep] if len(tokens_b) else [])
    return Example(np.concatenate(parts).astype(np.int64), len(tokens_a) + 2, is_random_next,
                   target_length)


def mask_tokens(tokens: np.ndarray, vocab: Vocabulary, rng: np.random.Generator, *,
                masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20,
                whole_word_mask: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Google's ``create_masked_lm_predictions``: (input ids, predicted positions, their labels).

    ``round(masked_lm_prob × maskable tokens)`` positions are chosen (at least 1, at most
    ``max_predictions_per_seq``) among all but [CLS] and [SEP]; with whole-word masking a word's
    pieces are chosen together, and a word that would overshoot the count is passed over. Of the
    chosen tokens 80% become [MASK], 10% a random token and 10% stay, as the paper says.
    Positions come back in ascending order.
    """
    maskable = np.flatnonzero((tokens != vocab.cls_id) & (tokens != vocab.sep_id))
    if len(maskable) == 0:
        return tokens.copy(), maskable, tokens[maskable]
    # Half up, as Python 2's round (Google's code) did.
    num_to_predict = min(max_predictions_per_seq,
                         max(1, int(len(maskable) * masked_lm_prob + 0.5)))
    if whole_word_mask:
        # A "##" piece joins the word before it, unless a [SEP] stands between them.
        continues = vocab.is_continuation[tokens[maskable]]
        continues[1:] &= np.diff(maskable) == 1
        continues[0] = False
        word_of = np.cumsum(~continues) - 1
        word_starts = np.flatnonzero(~continues)
        word_lengths = np.diff(np.append(word_starts, len(maskable)))
        chosen_words, count = [], 0
        for word in rng.permutation(len(word_starts)):
            if count >= num_to_predict:
                break
            if count + word_lengths[word] <= num_to_predict:
                chosen_words.append(word)
                count += word_lengths[word]
        positions = maskable[np.isin(word_of, chosen_words)]
    else:
        positions = np.sort(maskable[rng.permutation(len(maskable))[:num_to_predict]])
    labels = tokens[positions]
    input_ids = tokens.copy()
    action = rng.random(len(positions))
    input_ids[positions[action < 0.8]] = vocab.mask_id
    randomised = positions[action >= 0.9]
    input_ids[randomised] = vocab.random_ids[rng.integers(len(vocab.random_ids),
                                                          size=len(randomised))]
    return input_ids, positions, labels
