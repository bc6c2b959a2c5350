"""Fill-mask: what a pre-trained masked-LM head predicts for each [MASK] in a text."""

from __future__ import annotations

import itertools
import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WEIGHTS_NAME, read_weights
from .device import choose_device
from .embeddings import as_texts, checked_max_length
from .model import BertForMaskedLM
from .sources import resolve_pretrained
from .tokenizer import BertTokenizer

logger = logging.getLogger("bertkit")


@dataclass
class Prediction:
    token: str
    token_id: int
    score: float  # softmax probability over the vocabulary


class FillMask:
    """The masked-LM head's top-k tokens, with probabilities, for each [MASK] in a text.

    Needs a checkpoint with the MLM head (`BertForMaskedLM` or `BertForPreTraining` weights:
    ``cls.predictions.*``). Only the masked positions go through the head.
    """

    def __init__(self, model, *, device=None, max_length=None):
        directory = resolve_pretrained(model)
        if "predictions.transform.dense.weight" not in {k.removeprefix("cls.") for k in
                                                        _checkpoint_keys(directory)}:
            raise ValueError(
                f"{model} has no masked-LM head (no cls.predictions.* weights in its "
                "checkpoint), so it cannot fill in [MASK]: use a checkpoint saved from "
                "BertForMaskedLM or BertForPreTraining, such as one bertkit pre-training wrote."
            )
        self.device = choose_device(device)
        self.tokenizer = BertTokenizer.from_pretrained(directory)
        self.model = BertForMaskedLM.from_pretrained(directory).eval().to(self.device)
        positions = self.model.config.max_position_embeddings
        # [CLS] [MASK] [SEP] is the shortest text there is something to predict in.
        self.max_length = checked_max_length(
            max_length if max_length is not None else positions, positions)

    @torch.inference_mode()
    def __call__(self, texts: str | Sequence[str],
                 top_k: int = 5) -> list[list[Prediction]] | list[list[list[Prediction]]]:
        """For a str: one list of ``top_k`` predictions per [MASK], left to right. For a list of
        str: one such list per text."""
        single = isinstance(texts, str)
        texts = list(as_texts(texts))
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
        if not texts:
            return []
        mask_id = self.tokenizer.mask_token_id
        whole = self.tokenizer(texts)["input_ids"]
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                               return_tensors="pt")
        for text, ids, row in zip(texts, whole, batch["input_ids"], strict=True):
            self._check_masks(text, int((row == mask_id).sum()), ids.count(mask_id), len(ids))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model.bert(**batch, skip_padding=True).last_hidden_state
        where = batch["input_ids"] == mask_id  # [B, T]
        probs = self.model.cls.predictions(hidden[where]).float().softmax(-1)  # [masks, V]
        scores, token_ids = probs.topk(min(int(top_k), probs.shape[-1]), dim=-1)
        predictions = [[Prediction(self.tokenizer.convert_ids_to_tokens(i), i, s)
                        for i, s in zip(ids.tolist(), row.tolist(), strict=True)]
                       for ids, row in zip(token_ids, scores, strict=True)]
        per_text = where.sum(1).tolist()
        ends = itertools.accumulate(per_text)
        grouped = [predictions[end - n:end] for end, n in zip(ends, per_text, strict=True)]
        return grouped[0] if single else grouped

    def _check_masks(self, text: str, found: int, masks: int, length: int) -> None:
        """Refuse a text whose [MASK]s were all, or partly, cut by truncation; warn when only
        text after the last one was cut."""
        mask = self.tokenizer.mask_token
        if found and found < masks:
            raise ValueError(f"{_shorten(text)!r} is {length} tokens long: {masks - found} of its "
                             f"{masks} {mask}s lie beyond the {self.max_length}-token limit; "
                             f"shorten the text before them.")
        if found:
            if length > self.max_length:
                logger.warning("%r is %d tokens long: cut to the %d-token limit (its %ss are all "
                               "before the cut).", _shorten(text), length, self.max_length, mask)
            return
        if mask in text:
            raise ValueError(f"every {mask} in {_shorten(text)!r} lies beyond the "
                             f"{self.max_length}-token limit; shorten the text before it.")
        hint = (f" (it is case-sensitive: write {mask}, not {mask.lower()})"
                if mask.lower() in text.lower() else "")
        raise ValueError(f"no {mask} in {_shorten(text)!r}{hint}: put {mask} where a word "
                         f"should be predicted, e.g. 'Paris is the {mask} of France.'")


def _checkpoint_keys(directory: Path) -> set[str]:
    """Tensor names of a checkpoint, from the safetensors header alone when there is one."""
    if (directory / WEIGHTS_NAME).is_file():
        from safetensors import safe_open

        with safe_open(directory / WEIGHTS_NAME, framework="pt") as weights:
            return set(weights.keys())
    return set(read_weights(directory))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
