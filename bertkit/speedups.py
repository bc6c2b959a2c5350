"""The speed-ups the encoder layers use, kept apart so that `bertkit.model` reads as the paper.

Read `Dropout` as ``nn.Dropout`` (same distribution, a faster mask on CPU) and `Packing` as "the
same values, computed on real tokens only". Plain PyTorch, no compiled kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Packing:
    """Where the N real tokens of a padded [B, T] batch sit, to run layers on real tokens only.

    Every Linear, LayerNorm and GELU acts on each token alone, so they run on the packed [N, ...]
    rows and padding costs nothing there; only attention needs the [B, T] grid back. Both moves
    are index copies, so gradients flow through them.
    """

    def __init__(self, attention_mask):  # [B, T], 1 for real tokens
        self.shape = attention_mask.shape
        self.index = attention_mask.flatten().nonzero().squeeze(1)  # [N] positions in B * T

    def unpad(self, x):  # [B, T, ...] -> [N, ...]
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x):  # [N, ...] -> [B, T, ...], zeros at padding
        grid = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy(0, self.index, x)
        return grid.view(*self.shape, *x.shape[1:])


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (zero each element with probability p, scale the rest by 1/(1-p)).

    On CPU the keep-mask comes from 16 random bits per element, four to a 64-bit draw: PyTorch's
    CPU dropout draws every Bernoulli sample one by one on a single thread, which made dropout a
    fifth of a training step. The keep probability is exact to 1/65536.
    """
    if p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    words = torch.randint(-2**63, 2**63 - 1, (-(-x.numel() // 4),), dtype=torch.int64)
    bits = words.view(torch.int16)[:x.numel()].view(x.shape)  # uniform on [-32768, 32767]
    keep = bits < round((1 - p) * 65536) - 32768
    return x * (keep.to(x.dtype) * (1 / (1 - p)))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU mask of `dropout`."""

    def forward(self, x):
        return dropout(x, self.p) if self.training else x
