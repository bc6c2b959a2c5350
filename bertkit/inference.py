"""Feature-based use of BERT: sentence embeddings out of a pre-trained encoder."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import BertModel
from .tokenizer import BertTokenizer

POOLINGS = ("mean", "cls", "max")


def pool(hidden, attention_mask, pooling: str):
    """[B, T, H] token states -> [B, H], over the real (non-padding) tokens only."""
    mask = attention_mask.bool()[..., None]  # [B, T, 1]
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if pooling == "max":
        return hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(1)
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")


class Embedder:
    """Texts in, one vector per text out; mean pooling + L2 is the sentence-transformers recipe.

    Texts are encoded in batches sorted by length, so little compute goes to padding; the result
    comes back in input order.
    """

    def __init__(self, model="all-minilm-l6-v2", *, pooling="mean", normalize=True,
                 batch_size=32, max_length=None, device=None):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        self.tokenizer = BertTokenizer.from_pretrained(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = BertModel.from_pretrained(model).eval().to(self.device)
        self.pooling, self.normalize, self.batch_size = pooling, normalize, batch_size
        self.max_length = max_length or self.model.config.max_position_embeddings

    @torch.inference_mode()
    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[N, H] float32 embeddings of ``texts``."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state
            vectors = pool(hidden, batch["attention_mask"], self.pooling)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[rows] = vectors.float().cpu().numpy()
        return out
