"""The speed-ups the encoder layers use, kept apart so that `bertkit.model` reads as the paper.

Read `Dropout` as ``nn.Dropout`` (same distribution, a faster mask on CPU), `Packing` as "the
same values, computed on real tokens only", `linear` as ``F.linear``, `softmax` as
``torch.softmax``, and `PackedLinear` as ``nn.Linear`` (and its activation) for CPU inference;
`KeptEmbeddingGradients` gives training the word embeddings' usual dense gradient without a new
[V, H] tensor each step. Plain PyTorch, no compiled kernels.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CPU_ROWS_MULTIPLE = 64
# Fewer real tokens a run than this on average (unsorted batches): pad for attention instead.
MIN_RUN_TOKENS = 128


class Packing:
    """Where the N real tokens of a padded [B, T] batch sit, to run layers on real tokens only.

    Every Linear, LayerNorm and GELU acts on each token alone, so they run on the packed [N, ...]
    rows and padding costs nothing there; only attention needs the [B, T] grid back, or runs on
    the packed rows text length by text length (`runs`). The moves are index copies, so
    gradients flow through them.

    On a CPU the rows are rounded up to a multiple of `CPU_ROWS_MULTIPLE` with copies of the
    first token, which no real token reads: oneDNN builds its kernels anew for each number of
    rows, and each batch of new texts brings a new N (MiniLM's bf16 embeddings of unseen texts
    ran 1.4x slower than of texts seen before, on a Xeon with AMX).
    """

    def __init__(self, attention_mask):  # [B, T], 1 for real tokens
        self.shape = attention_mask.shape
        real = attention_mask.flatten().nonzero().squeeze(1)  # [N] positions in B * T
        self.real = real.shape[0]
        extra = -self.real % CPU_ROWS_MULTIPLE if attention_mask.device.type == "cpu" else 0
        self.index = torch.cat([real, real[:1].expand(extra if self.real else 0)])
        self.runs = _equal_length_runs(attention_mask)

    def unpad(self, x):  # [B, T, ...] -> [rows, ...]
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x):  # [rows, ...] -> [B, T, ...], zeros at padding
        n = self.real
        grid = x.new_zeros(self.shape.numel(), *x.shape[1:]).index_copy(0, self.index[:n], x[:n])
        return grid.view(*self.shape, *x.shape[1:])


def _equal_length_runs(attention_mask) -> list[tuple[slice, int]] | None:
    """The packed rows as runs of texts of one length: (the run's rows of [N, ...], its length).

    A run's rows are its texts one after the other, a [texts, length, ...] view, so attention
    can run run by run on the packed rows, with no padding and no mask: no copies back to the
    grid, and no products over padding. Length-sorted batches have a few runs each (a short
    text's [CLS] ... [SEP] is 20-60 tokens). None where padding is not at the end of each row,
    where runs are short (unsorted batches: a run per text; `MIN_RUN_TOKENS`), and in a traced
    graph, which cannot branch on values."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    lengths = attention_mask.sum(1)
    prefix = torch.arange(attention_mask.shape[1], device=lengths.device) < lengths[:, None]
    if not torch.equal(prefix, attention_mask.bool()):
        return None
    run_lengths, counts = (t.tolist() for t in torch.unique_consecutive(lengths,
                                                                        return_counts=True))
    if int(lengths.sum()) < MIN_RUN_TOKENS * len(run_lengths):
        return None
    runs, start = [], 0
    for length, count in zip(run_lengths, counts, strict=True):
        if length:  # a row without real tokens has no rows to attend over
            runs.append((slice(start, start + count * length), length))
        start += count * length
    return runs


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (zero each element with probability p, scale the rest by 1/(1-p)).

    On CPU the keep-mask comes from 16 random bits per element, four to a 64-bit word: PyTorch's
    CPU dropout draws every Bernoulli sample one by one on a single thread, which made dropout a
    fifth of a training step. The words come from numpy's SFC64, seeded by one draw of torch's
    generator (so ``torch.manual_seed``, checkpointed RNG states and gradient checkpointing's
    replay see the same masks): 2-3x faster than ``torch.randint``'s Mersenne Twister. The keep
    probability is exact to 1/65536. numpy compares the bits and writes the mask itself, as the
    bit patterns of 0 and of 1/(1-p) in x's dtype, where torch's comparison and its cast of a
    bool mask were slower: a [16, 33, 384] bf16 call 416 -> 305 µs on a Xeon (~100 of them the
    random bits), the same masks and outputs.
    """
    if p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    seed = int(torch.randint(2**62, ()))
    bits = np.random.SFC64(seed).random_raw(-(-x.numel() // 4)).view(np.int16)[:x.numel()]
    kept = _kept_value_bits(x.dtype, p)
    mask = np.multiply(np.less(bits, round((1 - p) * 65536) - 32768), kept, dtype=kept.dtype)
    return x * torch.from_numpy(mask).view(x.dtype).view(x.shape)


@functools.cache
def _kept_value_bits(dtype: torch.dtype, p: float) -> np.ndarray:
    """1/(1-p) in ``dtype`` (rounded as ``torch.ones(dtype) * (1 / (1 - p))`` rounds it), as an
    integer of the same width: a bool mask times it is the mask's bit pattern."""
    value = torch.ones((), dtype=dtype) * (1 / (1 - p))
    return value.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]).numpy()


def softmax(scores: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.softmax(scores, -1, dtype=dtype)``. On a CPU, rows shorter than one vector
    register (the attention of short texts) take max, exp and sum over the whole tensor:
    PyTorch's kernel vectorises along a row, and with AVX-512 (16 floats) it ran rows of 6-15
    elements 5-7x slower than these three passes (fp32 and bf16, on an Intel Xeon)."""
    if scores.device.type == "cpu" and scores.shape[-1] < _cpu_vector_floats():
        x = scores.to(dtype or scores.dtype)
        exp = (x - x.amax(-1, keepdim=True)).exp()
        return exp / exp.sum(-1, keepdim=True)
    return torch.softmax(scores, -1, dtype=dtype)


@functools.cache
def _cpu_vector_floats() -> int:
    """float32 lanes of the vectors PyTorch's CPU kernels use (0 where not known)."""
    return {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability(), 0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the fast CPU mask of `dropout`."""

    def forward(self, x):
        return dropout(x, self.p) if self.training else x


def linear(x, weight, bias=None):
    """``F.linear``; in fp32 on an x86 CPU other than Intel's through oneDNN (`OneDNNLinear`)."""
    if (x.dtype == weight.dtype == torch.float32 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not torch.is_autocast_enabled(x.device.type)
            and can_pack_linears(x.device) and not intel_cpu()):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDNNLinear(torch.autograd.Function):
    """``F.linear`` in fp32 on an x86 CPU, forward and input gradient through oneDNN with the
    weight as it is: PyTorch sends fp32 products to MKL, which on a 2-core AMD EPYC ran them
    1.1-1.4x slower (the joined query/key/value 1.4x; the weight gradient is as fast in both
    and stays with MKL). On Intel's CPUs MKL is as fast or faster (a 2-core Xeon: the joined
    query/key/value's input gradient 5-20% faster at MiniLM's sizes, a MiniLM fine-tuning epoch
    in fp32 1.05x, the `mini` pre-training step the same), so `linear` keeps it there. bf16
    products go through autocast as before."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # [..., in], [out, in], [out] -> [..., out]
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable  # oneDNN's op has no derivative of its own
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1]).contiguous()
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = _onednn_linear(grad_rows, weight.t()).view(*grad.shape[:-1], -1)
        if need_weight:
            grad_weight = grad_rows.t() @ rows
        if need_bias and ctx.has_bias:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``labels``, with its gradients
    computed in the forward pass, a block of rows at a time.

    The masked LM's vocabulary logits ([N, V], N ~ 600 predicted tokens, V ~ 30,000) are the
    largest tensor of a small model's step, and in PyTorch's separate ops (matmul, bias add, cast,
    log-softmax, then each one's backward) they travel through memory about ten times; on a CPU
    that took more time than all the encoder's matmuls. Here the logits are turned, a block of
    rows at a time, into the loss and into their gradient (softmax minus one-hot), and the
    gradient is kept in the matmul precision for the two gradient matmuls of ``backward``. The
    same numbers as ``F.cross_entropy(F.linear(x, weight, bias), labels)`` (transformers'
    decoder) under the same autocast, to rounding. Returns (loss, logits): the logits (with the
    bias, in the matmul's precision: half the memory of float32 in bf16) carry no gradient.
    """

    @staticmethod
    def block_rows(vocab: int, product_in_loop: bool = True) -> int:
        """Rows of a block: about 2^22 logits where the loop makes each block's product (137 rows
        for V = 30,522, 512 for the demo's 8,192), 2^20 where oneDNN made all logits before.
        The float32 passes leave the cache either way, and bigger blocks ran MKL's products
        faster: on a 2-core AMD EPYC (598 rows) 2^22 ran this op 1.15x (fp32) and 1.06x (bf16)
        as fast as 2^20 at 30,522 words. Without products, on a Xeon with AMX, 2^20 ran it
        1.13x as fast as 2^22 in bf16 (the same in fp32)."""
        return max(32, (2**22 if product_in_loop else 2**20) // vocab)

    @staticmethod
    def forward(ctx, x, weight, bias, labels):
        device = x.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else x.dtype)
        with torch.autocast(device, enabled=False):
            x, weight_t = x.to(dtype), weight.to(dtype).t()
            n, vocab = x.shape[0], weight_t.shape[1]
            # fp16 keeps it in float32 until the loss scale is known (backward): unscaled,
            # softmax's small probabilities would be fp16 subnormals or zero
            grad_logits = x.new_empty(n, vocab, dtype=torch.float32 if dtype == torch.float16
                                      else dtype)
            grad_bias = x.new_zeros(vocab, dtype=torch.float32)
            # oneDNN's product, with the bias added as it writes, ran 2.1x as fast as MKL's in
            # fp32 on an AMD EPYC (MKL's reached ~40% of the fp32 peak against the transposed
            # weight); in bf16 MKL's was the faster one there, oneDNN's on a Xeon with AMX (this
            # op 1.19x). oneDNN writes a new tensor, so it makes all rows' logits at once: a
            # block's copy into the logits cost more than reading them back (fp32 1.05x).
            # torch.compile lowers oneDNN's product only for frozen weights.
            onednn = (can_pack_linears(x.device) and not torch.compiler.is_compiling() and (
                dtype == torch.float32 or dtype == torch.bfloat16 and cpu_has_amx()))
            bias_mm = bias.to(dtype)
            size = min(n, LinearCrossEntropy.block_rows(vocab, product_in_loop=not onednn))
            if onednn:
                logits = _onednn_linear(x, weight_t.t(), bias_mm)
            else:
                logits = x.new_empty(n, vocab)
            if dtype != torch.float32:
                probabilities = x.new_empty(size, vocab, dtype=torch.float32)
            total = x.new_zeros((), dtype=torch.float32)
            for start in range(0, n, size):
                rows = slice(start, start + size)
                targets = labels[rows]
                k = targets.shape[0]
                if not onednn:  # the logits with the bias, rounded as nn.Linear's
                    torch.addmm(bias_mm, x[rows], weight_t, out=logits[rows])
                z = (logits[rows] if dtype == torch.float32  # float32 from here on
                     else probabilities[:k].copy_(logits[rows]))
                top, z_target = z.amax(1, keepdim=True), z.gather(1, targets[:, None])
                # PyTorch's softmax kernel: its exp ran ~4x as fast as exp_ on a 2-core AMD EPYC.
                # In float32 it writes the gradient's rows itself; in bf16 they are its rounding,
                # and on a CPU it writes over the float32 copy (its kernel reads each row before
                # writing it), so the block's passes touch half the memory: the op 1.04-1.08x on
                # a Xeon.
                out = (grad_logits[rows] if grad_logits.dtype == torch.float32
                       else z if device == "cpu" else torch.empty_like(z))
                p = torch.ops.aten._softmax.out(z, 1, False, out=out)
                # log-sum-exp = top - log(the top's probability), which is >= 1/V: no underflow
                total += (top - p.amax(1, keepdim=True).log() - z_target).sum()
                p[torch.arange(k, device=p.device), targets] -= 1
                grad_bias += p.sum(0)
                if p.dtype != grad_logits.dtype:
                    grad_logits[rows] = p
        ctx.save_for_backward(x, weight_t, grad_logits, grad_bias)
        ctx.mark_non_differentiable(logits)
        ctx.set_materialize_grads(False)  # no [N, V] of zeros for the logits' gradient
        return total / n, logits

    @staticmethod
    def backward(ctx, grad_loss, _):
        x, weight_t, grad_logits, grad_bias = ctx.saved_tensors
        scale = grad_loss / x.shape[0]
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        with torch.autocast(x.device.type, enabled=False):
            product_scale = scale
            if grad_logits.dtype != x.dtype:  # fp16: scaled first, then rounded
                grad_logits, product_scale = (grad_logits * scale).to(x.dtype), 1.0
            grad_x = (grad_logits @ weight_t.t()) * product_scale if need_x else None
            # scaled on the [N, H] side, not over the [V, H] product
            grad_weight = grad_logits.t() @ (x * product_scale) if need_weight else None
        return grad_x, grad_weight, grad_bias * scale if need_bias else None, None


class KeptEmbeddingGradients:
    """The word embeddings' gradient, added into one kept [V, H] tensor instead of a new one
    each step (on CPU, in one process, where the matrix is not tied to an output layer).

    A fine-tuning batch touches a few hundred of the vocabulary's ~30,000 rows, but PyTorch's
    embedding backward fills a new zero [V, H] tensor every step (47 MB for MiniLM's 30,522 x
    384), and on a CPU its fresh pages cost ~6% of a MiniLM fine-tuning step. Here the lookups
    of a step's forward and backward (`sparse_lookups`) give a sparse gradient (rows and values),
    and `densify` adds it into the kept tensor, whose rows of the previous step it zeroes first:
    the optimiser, clipping and checkpoints see the same dense gradient as before.
    """

    def __init__(self, model: nn.Module, device: torch.device, world_size: int):
        self.embeddings = []
        self.kept = {}  # embedding -> (its kept gradient, the rows the last step wrote, values)
        if device.type != "cpu" or world_size > 1:  # a GPU fills fast; DDP wants dense buckets
            return
        modules = dict(model.named_modules())
        for name, embedding in modules.items():
            if not (name.endswith("word_embeddings") and isinstance(embedding, nn.Embedding)
                    and embedding.weight.requires_grad and not embedding.sparse):
                continue
            tied = any(getattr(m, "weight", None) is embedding.weight
                       for m in modules.values() if m is not embedding)  # an MLM decoder
            if not tied:
                self.embeddings.append(embedding)

    @contextlib.contextmanager
    def sparse_lookups(self):
        for embedding in self.embeddings:
            embedding.sparse = True
        try:
            yield
        finally:  # the model stays as it was for everything else (transformers.Trainer, ...)
            for embedding in self.embeddings:
                embedding.sparse = False

    def densify(self) -> None:
        for embedding in self.embeddings:
            weight = embedding.weight
            if weight.grad is None or not weight.grad.is_sparse:
                continue
            grad = weight.grad.coalesce()  # duplicate rows summed
            rows, values = grad.indices()[0], grad.values()
            if embedding in self.kept:
                kept, last_rows, _ = self.kept[embedding]
                kept.index_fill_(0, last_rows, 0)
            else:
                kept = torch.zeros_like(weight)
            weight.grad = kept.index_copy_(0, rows, values)
            self.kept[embedding] = kept, rows, values

    def norm_parts(self, parameters) -> list[torch.Tensor]:
        """The gradients of ``parameters``, a kept one as its rows of this step: the same norm
        without reading the whole [V, H] tensor (1% of a MiniLM fine-tuning step)."""
        rows_of = {id(kept): values for kept, _, values in self.kept.values()}
        return [rows_of.get(id(p.grad), p.grad) for p in parameters]


class NormsAsWritten:
    """Each gradient's 2-norm taken by a hook as backward writes the gradient, while it is still
    in the cache, instead of by a pass over all of them from memory afterwards: a MiniLM
    fine-tuning step 1.010-1.014x on a Xeon, the same norms bit for bit. On a CPU in one process
    only (a GPU norms them all in one kernel; DDP averages the gradients after the hooks);
    ``skip``: parameters whose gradient is not final when written (the kept word embeddings)."""

    def __init__(self, model: nn.Module, device: torch.device, world_size: int, skip=()):
        skipped = set(skip)
        self.parameters = [p for p in model.parameters() if p.requires_grad and p not in skipped
                           ] if device.type == "cpu" and world_size == 1 else []
        self.norms = {}

    @contextlib.contextmanager
    def taken(self):
        """Around the backward that writes the step's final gradients."""
        self.norms = {}
        hooks = [p.register_post_accumulate_grad_hook(self._take) for p in self.parameters]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _take(self, parameter):
        self.norms[parameter] = torch.linalg.vector_norm(parameter.grad)

    def total(self, parameters, gradients) -> torch.Tensor:
        """``torch.nn.utils.get_total_norm(gradients)``, from the norms taken where there are."""
        return torch.linalg.vector_norm(torch.stack([
            self.norms[p] if p in self.norms else torch.linalg.vector_norm(g)
            for p, g in zip(parameters, gradients, strict=True)]))


def join_qkv(model):
    """``model`` (a BertModel for inference, whose modules are its own) with one [3H, H] Linear
    ``qkv`` in each attention in place of query, key and value: one product instead of three,
    and for int8 one quantization of the input (the same numbers: int8 weights are quantized per
    output row, an input per batch)."""
    for layer in model.encoder.layer:
        attention = layer.attention.self
        parts = (attention.query, attention.key, attention.value)
        joined = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts),
                           device=parts[0].weight.device, dtype=parts[0].weight.dtype)
        joined.weight.data = torch.cat([p.weight.data for p in parts])
        joined.bias.data = torch.cat([p.bias.data for p in parts])
        del attention.query, attention.key, attention.value
        attention.qkv = joined
    return model


# ``config.hidden_act`` -> oneDNN's post-op and its algorithm
FUSED_ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"),
                     "gelu_pytorch_tanh": ("gelu", "tanh"), "relu": ("relu", "")}


def can_pack_linears(device: torch.device) -> bool:
    """On x86 CPUs, where PyTorch's oneDNN is the measured one (ARM builds route it elsewhere)."""
    return device.type == "cpu" and _x86_onednn()


@functools.cache  # asked on every fp32 product
def _x86_onednn() -> bool:
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def fast_bf16_attention_kernel(x: torch.Tensor) -> bool:
    """Whether SDPA's fused CPU kernel beats attention spelled out in bf16 for the queries
    ``x``: in inference on CPUs with AMX (Intel Xeon from Sapphire Rapids on). On a 2-core Xeon
    it ran bf16 attention 4x as fast at 128 tokens, bf16 embeddings of 256-512-token documents
    1.28x; its backward was 2.5-4x slower there, and without AMX (an AMD EPYC with AVX512-BF16)
    its forward 2-4x slower than the spelled-out products."""
    return no_backward(x) and cpu_has_amx()


def no_backward(x: torch.Tensor) -> bool:
    """Whether nothing computed from ``x`` will be differentiated (inference)."""
    return not (torch.is_grad_enabled() and x.requires_grad)


@functools.cache
def intel_cpu() -> bool:
    """Whether the CPU is Intel's, where MKL (PyTorch's fp32 products) takes its fastest paths;
    on other x86 CPUs it takes slower ones."""
    try:
        described = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: Windows names the vendor here
        described = platform.processor()
    return "GenuineIntel" in described


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX (Intel's matrix units: Xeon from Sapphire Rapids on)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent: assume none
    return bool(probe and probe())


def _onednn_linear(rows, weight, bias=None):  # [N, in], [out, in] (any strides) -> [N, out]
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


class PackedLinear(nn.Module):
    """``linear`` (then ``activation``, one of `FUSED_ACTIVATIONS`) for inference on a CPU,
    through oneDNN with the weight reordered once into its blocked layout and the activation
    applied as the product is written (the ops inductor's CPU backend uses). In fp32 PyTorch's
    ``F.linear`` goes to MKL, which ran 1.12x slower than this on an AMD EPYC (1.03x in bf16)."""

    def __init__(self, linear: nn.Linear, activation: str | None = None,
                 batch_tokens: int = 2048):
        super().__init__()
        self.out_features = linear.out_features
        self.post_op, self.algorithm = FUSED_ACTIVATIONS[activation] if activation else ("none",
                                                                                          "")
        weight = linear.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight,
                                                                              batch_tokens),
                             persistent=False)
        self.register_buffer("bias", linear.bias.detach(), persistent=False)

    def forward(self, x, residual=None):  # [..., in] (+ [..., out]) -> [..., out]
        rows = x.reshape(-1, x.shape[-1])
        if residual is None:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, self.post_op,
                                                     [], self.algorithm)
        else:  # the residual added as the product is written, not in a pass of its own
            out = torch.ops.mkldnn._linear_pointwise.binary(
                rows, residual.reshape(rows.shape[0], -1), self.weight, self.bias, "add")
        return out.view(*x.shape[:-1], self.out_features)


class PackedResidualOutput(nn.Module):
    """`bertkit.model.BertResidualOutput` for inference: LayerNorm(dense(x) + residual) with the
    dense a `PackedLinear` that adds the residual itself."""

    def __init__(self, output: nn.Module, batch_tokens: int):
        super().__init__()
        self.dense = PackedLinear(output.dense, batch_tokens=batch_tokens)
        self.LayerNorm = output.LayerNorm

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x, residual))


def pack_linears(model, batch_tokens: int):
    """``model`` (a BertModel for CPU inference, whose modules are its own) with every encoder
    Linear a `PackedLinear`, query, key and value joined (`join_qkv`), and the feed-forward
    activation and the residual adds inside their products. The packed weights are a copy: the
    encoder's weights are held twice (e.g. +1.2 GB for bert-large in fp32)."""
    activation = model.config.hidden_act
    for layer in join_qkv(model).encoder.layer:
        attention = layer.attention
        attention.self.qkv = PackedLinear(attention.self.qkv, batch_tokens=batch_tokens)
        attention.output = PackedResidualOutput(attention.output, batch_tokens)
        layer.intermediate = PackedLinear(layer.intermediate.dense, activation, batch_tokens)
        layer.output = PackedResidualOutput(layer.output, batch_tokens)
    return model
