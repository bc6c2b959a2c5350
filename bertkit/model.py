"""BERT (Devlin et al. 2018): the encoder, then its pre-training and fine-tuning heads.

Module and parameter names follow the HuggingFace layout (``embeddings.word_embeddings``,
``encoder.layer.0.attention.self.query``, ``cls.predictions``, ...), so a state dict moves between
bertkit and every tool of that ecosystem as it is. Shapes: B batch, T tokens, H hidden size,
A attention heads, C choices, V vocabulary. Checkpoint reading and writing live in
`bertkit.checkpoint`, the layers' speed-ups (fast CPU dropout, padding removal) in
`bertkit.speedups`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as checkpointed

from . import checkpoint
from .config import BertConfig
from .speedups import (
    Dropout,
    LinearCrossEntropy,
    Packing,
    dropout,
    fast_bf16_attention_kernel,
    linear,
    no_backward,
    softmax,
)

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}

logger = logging.getLogger("bertkit")


class Output(dict):
    """Named model outputs, read as ``out.logits`` or ``out["logits"]``.

    As in transformers' ``ModelOutput``, an output that is None (the loss, without labels) is no
    item: ``keys()``, iteration and `to_tuple` skip it (transformers.Trainer gathers every item
    as a prediction), and reading it as an attribute gives None.
    """

    def __init__(self, **values):
        super().__init__((k, v) for k, v in values.items() if v is not None)
        self.absent = frozenset(k for k, v in values.items() if v is None)
        self.names = tuple(values)  # every output this head gives, present or not, in order

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            if name in self.__dict__.get("absent", ()):
                return None
            raise AttributeError(name) from None

    def __getitem__(self, key):
        """``out["logits"]``, or ``out[0]`` as in transformers (its pipelines read outputs by
        position)."""
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        """The outputs in order, as ``return_dict=False`` gives them."""
        return tuple(self.values())


# --------------------------------------------------------------------------------------------
# The encoder


class BertEmbeddings(nn.Module):
    """Token + segment + position embeddings, then LayerNorm and dropout (paper, figure 2)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):  # [B, T], [B, T] -> [B, T, H]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, x, mask, output_attentions=False, packing=None, queries=None):
        # x [B, T, H], or [N, H] real tokens with their `packing`; mask [B, 1, 1, T], True where a
        # key may be attended to (None: no padding); queries [B, K]: the positions that query
        # (None: all), whose outputs come as [B, K, H]
        # The three projections as one matmul ([H, H] each, checkpoint names kept): one bigger
        # product and one weight gradient instead of three, a quarter of the attention ops.
        if hasattr(self, "qkv"):  # inference: the three joined once (`speedups.join_qkv`)
            qkv = self.qkv(x)
        else:
            projections = (self.query, self.key, self.value)
            if all(type(p) is nn.Linear for p in projections):
                qkv = linear(x, torch.cat([p.weight for p in projections]),
                             torch.cat([p.bias for p in projections]))  # [..., 3H]
            else:  # replaced by the user (LoRA adapters, torch's int8 quantization): as they are
                qkv = torch.cat([p(x) for p in projections], dim=-1)
        if packing is not None and packing.runs is not None and queries is None \
                and not output_attentions:
            # run by run of equally long texts on the packed rows (`Packing.runs`)
            context = qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3)  # [rows, H]
            for rows, length in packing.runs:
                part = self.attend(qkv[rows].view(-1, length, qkv.shape[1]), None)[0]
                context[rows].view(part.shape).copy_(part)
            context[packing.real:] = 0  # the rows that round the count up
            return context, None
        if packing is not None:
            qkv = packing.pad(qkv)
        context, probs = self.attend(qkv, mask, queries, output_attentions)
        context = context.to(qkv.dtype, memory_format=torch.contiguous_format).flatten(2)
        if queries is not None or packing is None:
            return context, probs
        return packing.unpad(context), probs

    def attend(self, qkv, mask, queries=None, output_attentions=False):
        """[B, T, 3H] joined projections -> context [B, Tq, A, H/A] (a view, in float32 where
        bf16 inference attends in float32), probabilities."""
        B, T = qkv.shape[:2]
        q, k, v = qkv.view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, A, T, H/A]
        if queries is not None:
            q = q.gather(2, queries[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
        Tq = q.shape[2]
        dropout_prob = self.dropout_prob if self.training else 0.0
        probs = None
        # Spelled out when the probabilities are wanted (the fused kernel hides them), and on CPU
        # when SDPA is slower: its dropout is the slow per-element kind (see `dropout`), below
        # ~64 tokens its per-head overhead outweighs the products (1.5x slower at 30 tokens in
        # fp32 on an AMD EPYC; 0.93x in bf16 embeddings on an Intel Xeon), and in bf16 its
        # kernel is fast only in some cases (`fast_bf16_attention_kernel`). A traced graph
        # (torch.compile, ONNX export) keeps SDPA: it cannot branch on a length.
        short_on_cpu = (q.device.type == "cpu" and not torch.compiler.is_compiling()
                        and T < 64)
        if output_attentions or short_on_cpu or (q.device.type == "cpu" and (
                dropout_prob or (q.dtype != torch.float32
                                 and not fast_bf16_attention_kernel(q)))):
            A, d = q.shape[1], q.shape[-1]
            if (short_on_cpu and q.dtype != torch.float32 and not output_attentions
                    and no_backward(qkv)):
                # Inference on short texts in bf16 attends in float32: MKL's products build no
                # kernel for each new shape (oneDNN's bf16 ones do, ~0.7 ms each, and each run
                # of texts brings new shapes), the scores need no casts around the softmax, and
                # the FLOPs are few. MiniLM's bf16 embeddings of new texts 1.04-1.06x on a Xeon.
                q, k, v = (t.to(torch.float32, memory_format=torch.contiguous_format)
                           for t in (q, k, v))
            # The scale and the padding mask go into the product (baddbmm's alpha and bias),
            # not into two more passes over the [B, A, T, T] scores.
            if mask is None:  # beta=0: the input is not read
                bias, beta = q.new_empty(1, 1, 1).expand(B * A, Tq, T), 0
            else:
                bias, beta = q.new_zeros(B, 1, 1, T), 1
                bias = bias.masked_fill_(~mask, torch.finfo(q.dtype).min)
                bias = bias.expand(B, A, 1, T).reshape(B * A, 1, T)
            scores = torch.baddbmm(bias, q.reshape(B * A, Tq, d),
                                   k.reshape(B * A, T, d).transpose(1, 2), beta=beta,
                                   alpha=d ** -0.5)
            if short_on_cpu and q.dtype != torch.float32:
                # PyTorch's CPU softmax is slow on short bf16 rows: in float32, then rounded,
                # it ran 5x faster at 30 tokens (the same from 64 on, slower from 128)
                probs = softmax(scores, torch.float32).to(q.dtype)
            else:
                probs = softmax(scores)
            probs = probs.view(B, A, Tq, T)
            context = dropout(probs, dropout_prob) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                     dropout_p=dropout_prob)
        return context.transpose(1, 2), probs


class BertResidualOutput(nn.Module):
    """Projection, dropout, residual add, then LayerNorm: the post-LN step after each sublayer."""

    def __init__(self, in_size: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # "self" is the name checkpoints use
        self.output = BertResidualOutput(config.hidden_size, config)

    def forward(self, x, mask, output_attentions=False, packing=None, queries=None):
        context, probs = self.self(x, mask, output_attentions, packing, queries)
        if queries is not None:  # the residual at the queried positions
            grid = x if packing is None else packing.pad(x)
            x = grid.gather(1, queries[..., None].expand(-1, -1, grid.shape[-1]))
        return self.output(context, x), probs


class BertIntermediate(nn.Module):
    """The feed-forward expansion to the intermediate size (4H) with the GELU activation."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.activation(self.dense(x))


class BertLayer(nn.Module):
    """One Transformer encoder block: self-attention then feed-forward, each with add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config.intermediate_size, config)

    def forward(self, x, mask, output_attentions=False, packing=None, queries=None):
        x, probs = self.attention(x, mask, output_attentions, packing, queries)
        return self.output(self.intermediate(x), x), probs


class BertEncoder(nn.Module):
    """The stack of layers. With `checkpointing` set (see
    `BertPreTrainedModel.gradient_checkpointing_enable`) a training step keeps only each chosen
    layer's input and runs the layer again during backward (`torch.utils.checkpoint`, which also
    replays the dropout masks): the same gradients for much less activation memory."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.checkpointing: dict | None = None  # every_n_layers, offload, checkpoint kwargs

    def forward(self, x, mask, output_attentions=False, packing=None, states_at=None):
        """The last layer's output, every layer's output (x first) and attention probabilities.

        ``states_at`` [B, K]: the last layer computes the states at these positions alone
        ([B, K, H]); its keys and values still come from every token, so they are unchanged.
        """
        hidden_states, attentions = [x], []
        saving = self.checkpointing is not None and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layer):
            last = i == len(self.layer) - 1
            args = (x, mask, output_attentions, packing, states_at if last else None)
            if saving and i % self.checkpointing["every_n_layers"] == 0:
                offload = (torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda)
                           if self.checkpointing["offload"] else nullcontext())
                with offload:
                    x, probs = checkpointed(layer, *args, **self.checkpointing["kwargs"])
            else:
                x, probs = layer(*args)
            hidden_states.append(x)
            attentions.append(probs)
        return x, hidden_states, attentions


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence-level representation that NSP and classifiers read."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):  # [B, T, H] -> [B, H]
        return torch.tanh(self.dense(hidden[:, 0]))


# --------------------------------------------------------------------------------------------
# Shared machinery: initialisation, and checkpoints through bertkit.checkpoint


class BertPreTrainedModel(nn.Module):
    """Initialisation, ``from_pretrained`` and ``save_pretrained``, shared by every model below.

    The class attributes and methods after ``init_weights`` are the protocol
    ``transformers.Trainer`` relies on for a model that is not one of its own.
    """

    # What Trainer reads: the input it counts tokens of, and whether forward takes its loss
    # arguments (num_items_in_batch). bertkit losses are means over one batch's labelled items, so
    # Trainer divides them by the gradient-accumulation steps itself, as bertkit's trainer does.
    main_input_name = "input_ids"
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    # Nothing of state_dict() is left out on saving (the MLM decoder shares the word embeddings
    # and is not in state_dict at all); Trainer reads this after loading a checkpoint.
    _keys_to_ignore_on_save = None

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config

    def init_weights(self, only: set[str] | None = None):
        """The paper's initialisation: truncated normal (std 0.02), zero biases, unit LayerNorm.

        ``only`` limits it to the modules owning those parameter names (the new head weights of a
        loaded checkpoint); inside ``checkpoint.skipping_init()``, where ``from_pretrained``
        builds a model, it does nothing, since the checkpoint overwrites the weights.
        """
        if checkpoint.init_skipped():
            return
        std = self.config.initializer_range
        for name, module in self.named_modules():
            if only is not None and not any(f"{name}.{p}".lstrip(".") in only
                                            for p, _ in module.named_parameters(recurse=False)):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, BertLMPredictionHead):
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, name_or_path, *, ignore_mismatched_sizes=False, **config_overrides):
        """Load a checkpoint folder in the HuggingFace layout (or a model name bertkit can fetch).

        Any config field can be overridden, e.g. ``num_labels=3`` or ``id2label={0: "neg", ...}``
        for a fresh task head. A bare ``BertModel`` checkpoint loads into every head model: the
        new head weights are initialised and listed in one log line. With
        ``ignore_mismatched_sizes=True`` a head whose shape differs from the checkpoint's (another
        number of labels) is re-initialised instead of raising.
        """
        return checkpoint.load_pretrained(cls, name_or_path,
                                          ignore_mismatched_sizes=ignore_mismatched_sizes,
                                          **config_overrides)

    def save_pretrained(self, directory, state_dict: dict | None = None,
                        safe_serialization: bool = True, is_main_process: bool = True,
                        **ignored) -> None:
        """Write ``config.json`` and ``model.safetensors`` the way HuggingFace does.

        The arguments transformers passes its own models' ``save_pretrained`` are accepted:
        ``state_dict`` (tensors to write instead of this model's, e.g. gathered from several
        processes), ``safe_serialization=False`` (a legacy ``pytorch_model.bin``) and
        ``is_main_process`` (False: write nothing). Others (sharding, pushing to the Hub) are
        ignored with a warning.
        """
        if ignored:
            logger.warning("save_pretrained ignores %s (bertkit writes one local file).",
                           ", ".join(sorted(ignored)))
        if is_main_process:
            checkpoint.save_pretrained(self, directory, state_dict=state_dict,
                                       safe_serialization=safe_serialization)

    # -- activation (gradient) checkpointing, as transformers' models offer it ----------------

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      every_n_layers: int = 1, offload: bool = False) -> None:
        """Recompute the encoder layers during backward instead of keeping their activations.

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint``
        (``use_reentrant`` defaults to False); ``every_n_layers`` checkpoints layers 0, n, 2n...;
        ``offload`` keeps the saved layer inputs in CPU memory. Only training steps are
        affected, and their gradients are those without checkpointing (dropout replayed).
        """
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}.")
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self._encoder().checkpointing = {"every_n_layers": every_n_layers,
                                         "offload": bool(offload), "kwargs": kwargs}

    def gradient_checkpointing_disable(self) -> None:
        self._encoder().checkpointing = None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._encoder().checkpointing is not None

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers 5's name for `gradient_checkpointing_enable` (what Trainer calls)."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers,
                                           offload)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.is_gradient_checkpointing

    def _encoder(self) -> BertEncoder:
        return self.bert.encoder if hasattr(self, "bert") else self.encoder

    def num_parameters(self, only_trainable: bool = False,
                       exclude_embeddings: bool = False) -> int:
        """Parameter count (Trainer estimates FLOPs from it), each shared tensor once."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))


# --------------------------------------------------------------------------------------------
# BertModel


class BertModel(BertPreTrainedModel):
    """The bare encoder: per-token states ``last_hidden_state`` [B, T, H] and ``pooler_output``."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                output_hidden_states=False, output_attentions=False, skip_padding=False,
                return_dict=None, states_at=None) -> Output | tuple:
        """``skip_padding=True`` computes real tokens only (see ``Packing``): the same values at
        real positions, zeros at padding positions instead of states nobody should read.

        ``states_at`` ([B, K] positions; what a head passes that reads only some states): the
        last layer computes the states at those positions alone, the same values for less work,
        and ``last_hidden_state`` is [B, K, H], the states there in that order
        (``pooler_output`` reads column 0: put position 0 first). Not with
        ``output_hidden_states`` or ``output_attentions``.

        Every head model takes these options too, after its own labels; ``return_dict=False``
        gives a tuple of the outputs instead of an `Output`, as in transformers.
        """
        self._check_inputs(input_ids, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # SDPA takes a boolean mask of the keys each query may see; without padding we pass none,
        # which lets it pick its fastest kernel. A graph traced for torch.compile or ONNX export
        # cannot branch on values, so it always keeps the mask.
        mask = packing = None
        tracing = torch.compiler.is_compiling()
        if attention_mask is not None and (tracing or not bool(attention_mask.all())):
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
            packing = Packing(attention_mask) if skip_padding else None
        if states_at is not None and (output_hidden_states or output_attentions
                                      or not len(self.encoder.layer)):
            raise ValueError("states_at computes the last layer at some positions only; it needs "
                             "a layer and cannot be combined with output_hidden_states or "
                             "output_attentions.")

        x = self.embeddings(input_ids, token_type_ids)
        if packing is not None:
            x = packing.unpad(x)
        x, hidden_states, attentions = self.encoder(x, mask, output_attentions, packing,
                                                    states_at)
        if packing is not None and states_at is None:  # back to the [B, T] grid of the callers
            x = packing.pad(x)
            if output_hidden_states:
                hidden_states = [packing.pad(h) for h in hidden_states]

        out = Output(last_hidden_state=x)
        if self.pooler is not None:
            out["pooler_output"] = self.pooler(x)
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden_states)  # embeddings, then each layer: L + 1
        if output_attentions:
            out["attentions"] = tuple(attentions)  # L x [B, A, T, T]
        return out.to_tuple() if return_dict is False else out

    def _check_inputs(self, input_ids, token_type_ids):
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must have shape [batch, tokens], got {tuple(input_ids.shape)}; for one "
                "text use input_ids[None] or the tokenizer with return_tensors='pt'."
            )
        length, limit = input_ids.shape[1], self.config.max_position_embeddings
        if length > limit:
            raise ValueError(
                f"sequence of {length} tokens is longer than max_position_embeddings ({limit}); "
                f"truncate it, e.g. tokenizer(..., truncation=True, max_length={limit})."
            )
        for name, ids, size in (("input_ids", input_ids, self.config.vocab_size),
                                ("token_type_ids", token_type_ids, self.config.type_vocab_size)):
            if (ids is not None and ids.numel() and not torch.compiler.is_compiling()
                    and (ids.min() < 0 or ids.max() >= size)):  # a traced graph sees no values
                bad = ids[(ids < 0) | (ids >= size)][0].item()
                raise ValueError(
                    f"{name} contains {bad}, outside [0, {size}) for this model; the tokenizer's "
                    "vocabulary (or the segment ids) does not match the model's config."
                )


# --------------------------------------------------------------------------------------------
# Head models: the encoder, then a head on its outputs


class BertHeadModel(BertPreTrainedModel):
    """``self.bert`` with a head on top: forward runs the encoder, then the subclass's
    ``head(out, labels)``, the paper's output layer and loss, which gives its named outputs.

    forward's parameters stay explicit, never ``**kwargs``: transformers.Trainer reads the inputs
    and label names it feeds from the signature. A head whose labels are named otherwise
    (pre-training's two, QA's span) declares its own forward with those names.
    """

    reads_cls_only = False  # a head on ``pooler_output`` alone

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False, skip_padding=False,
                return_dict=None) -> Output | tuple:
        out, labels = self._encode(input_ids, attention_mask, token_type_ids, labels,
                                   output_hidden_states, output_attentions, skip_padding)
        return self._head_output(out, return_dict, **self.head(out, labels))

    def _encode(self, input_ids, attention_mask, token_type_ids, labels, output_hidden_states,
                output_attentions, skip_padding) -> tuple[Output, torch.Tensor | None]:
        """The encoder's outputs, with its last layer computed only where the head reads (see
        `positions_read`), and the labels at those positions."""
        positions = None
        if not (output_hidden_states or output_attentions):
            positions, labels = self.positions_read(input_ids, labels)
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states,
                        output_attentions, skip_padding, states_at=positions)
        return out, labels

    def positions_read(self, input_ids, labels) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The positions whose final states the head reads ([B, K]; None: all) and its labels
        there. A sequence-level head reads the [CLS] state alone: the last layer then skips
        every other position, 1/7 of a 6-layer model's products, with the same logits, loss
        and gradients (`test_gradients_match_transformers`)."""
        if self.reads_cls_only:
            return input_ids.new_zeros(input_ids.shape[0], 1), labels
        return None, labels

    def _head_output(self, out: Output, return_dict: bool | None, **values) -> Output | tuple:
        """The head's outputs, then the encoder's states and attentions when asked for; a tuple
        of the ones that are not None with ``return_dict=False``."""
        extras = {k: out[k] for k in ("hidden_states", "attentions") if k in out}
        result = Output(**values, **extras)
        return result.to_tuple() if return_dict is False else result


# --------------------------------------------------------------------------------------------
# Pre-training heads: masked LM and next sentence prediction


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.activation(self.dense(x)))


class TiedDecoder(nn.Module):
    """The MLM output projection, whose weight *is* the word-embedding matrix (weight tying).

    It refers to the embedding module without owning it, so the matrix is one parameter, stored
    once in ``state_dict()``: safetensors refuses a state dict holding a tensor twice, which is
    what transformers.Trainer saves for a model that is not its own.
    """

    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        object.__setattr__(self, "word_embeddings", word_embeddings)  # not a submodule

    @property
    def weight(self) -> nn.Parameter:
        return self.word_embeddings.weight

    def forward(self, x):  # [..., H] -> [..., V]
        return F.linear(x, self.weight)


class BertLMPredictionHead(nn.Module):
    """Masked-LM decoder: transform, then the word-embedding matrix (tied) plus an output bias."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = TiedDecoder(word_embeddings)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):  # [..., H] -> [..., V]
        return self.decoder(self.transform(x)) + self.bias


class BertPreTrainingHeads(nn.Module):
    """The ``cls`` module: MLM predictions and/or the NSP classifier (0 = IsNext, 1 = random)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding | None, nsp: bool):
        super().__init__()
        if word_embeddings is not None:
            self.predictions = BertLMPredictionHead(config, word_embeddings)
        if nsp:
            self.seq_relationship = nn.Linear(config.hidden_size, 2)


def _cross_entropy(logits, labels):
    """Mean cross-entropy over the positions whose label is not -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


def _masked_lm(predictions: BertLMPredictionHead, hidden, labels):
    """(logits, loss) of the masked LM.

    Without labels: logits for every position, [B, T, V]. With labels, the decoder runs only on
    the predicted positions (labels != -100): logits are [N, V] in row-major order of those
    positions, the loss is the same mean cross-entropy, and the vocabulary projection, most of a
    small model's step, shrinks to the ~15% of tokens that are predicted. With gradients on, the
    projection and the loss run as one (`LinearCrossEntropy`), and those logits carry no gradient
    of their own: the loss's is computed with them.
    """
    if labels is None:
        return predictions(hidden), None
    picked = labels != -100
    if torch.is_grad_enabled():  # training: the same loss and gradients with far less traffic
        x = predictions.transform(hidden[picked])  # [N, H]
        loss, logits = LinearCrossEntropy.apply(x, predictions.decoder.weight, predictions.bias,
                                                labels[picked])
        return logits, loss
    logits = predictions(hidden[picked])  # [N, V]
    return logits, F.cross_entropy(logits, labels[picked])


def _cls_and_predicted(input_ids, labels):
    """The positions the pre-training heads read: [CLS] (NSP's pooler), then each sequence's
    predicted positions (labels != -100) in order, padded with position 0: [B, 1 + most
    predicted]; and the labels there, -100 at [CLS] and at the padding. The masked LM then sees
    the same rows in the same order. Every position (None) without labels, and in a traced
    graph, whose shapes cannot follow the labels."""
    if labels is None or torch.compiler.is_compiling():
        return None, labels
    predicted = labels != -100
    most = int(predicted.sum(1).max())
    # each row's predicted positions first, in their order (a stable sort of 1s before 0s)
    order = predicted.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices
    order = order[:, :most]
    kept = predicted.gather(1, order)
    cls = torch.zeros_like(input_ids[:, :1])
    positions = torch.cat([cls, order.masked_fill(~kept, 0)], dim=1)
    labels = torch.cat([cls - 100, labels.gather(1, order).masked_fill(~kept, -100)], dim=1)
    return positions, labels


class BertForPreTraining(BertHeadModel):
    """The paper's pre-training model: loss = mean MLM cross-entropy + mean NSP cross-entropy.

    Given ``labels``, ``prediction_logits`` cover only the predicted positions (see _masked_lm).
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings, nsp=True)
        self.init_weights()

    def head(self, out: Output, labels, next_sentence_label) -> dict:
        prediction_logits, mlm_loss = _masked_lm(self.cls.predictions, out.last_hidden_state,
                                                 labels)
        seq_relationship_logits = self.cls.seq_relationship(out.pooler_output)  # [B, 2]
        nsp_loss = None
        if next_sentence_label is not None:
            nsp_loss = _cross_entropy(seq_relationship_logits, next_sentence_label)
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        return dict(loss=sum(losses) if losses else None, mlm_loss=mlm_loss, nsp_loss=nsp_loss,
                    prediction_logits=prediction_logits,
                    seq_relationship_logits=seq_relationship_logits)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, output_hidden_states=False, output_attentions=False,
                skip_padding=False, return_dict=None) -> Output | tuple:
        out, labels = self._encode(input_ids, attention_mask, token_type_ids, labels,
                                   output_hidden_states, output_attentions, skip_padding)
        return self._head_output(out, return_dict, **self.head(out, labels, next_sentence_label))

    def positions_read(self, input_ids, labels):
        return _cls_and_predicted(input_ids, labels)


class BertForMaskedLM(BertHeadModel):
    """Masked LM alone; given ``labels``, ``logits`` cover only the predicted positions."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings, nsp=False)
        self.init_weights()

    def head(self, out: Output, labels) -> dict:
        logits, loss = _masked_lm(self.cls.predictions, out.last_hidden_state, labels)
        return dict(loss=loss, logits=logits)

    def positions_read(self, input_ids, labels):
        return _cls_and_predicted(input_ids, labels)


class BertForNextSentencePrediction(BertHeadModel):
    reads_cls_only = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.cls = BertPreTrainingHeads(config, None, nsp=True)
        self.init_weights()

    def head(self, out: Output, labels) -> dict:
        logits = self.cls.seq_relationship(out.pooler_output)  # [B, 2]
        loss = _cross_entropy(logits, labels) if labels is not None else None
        return dict(loss=loss, logits=logits)


# --------------------------------------------------------------------------------------------
# Fine-tuning heads: one fresh output layer on top, every weight trained


class BertForSequenceClassification(BertHeadModel):
    """Classification (or, with one label, regression) from the pooled [CLS] vector."""

    reads_cls_only = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def head(self, out: Output, labels) -> dict:
        logits = self.classifier(self.dropout(out.pooler_output))  # [B, num_labels]
        loss = None
        if labels is not None:
            problem = self.config.problem_type or (
                "regression" if self.config.num_labels == 1
                else "single_label_classification" if not labels.is_floating_point()
                else "multi_label_classification")
            # in float32: bf16 would round the targets (an STS-B score of 4.3 by up to 0.016)
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze().float(), labels.squeeze().float())
            elif problem == "single_label_classification":
                loss = _cross_entropy(logits, labels)
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return dict(loss=loss, logits=logits)


class BertForTokenClassification(BertHeadModel):
    """A label for every token (NER, POS) from its final hidden state."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def head(self, out: Output, labels) -> dict:
        logits = self.classifier(self.dropout(out.last_hidden_state))  # [B, T, num_labels]
        loss = _cross_entropy(logits, labels) if labels is not None else None
        return dict(loss=loss, logits=logits)


class BertForQuestionAnswering(BertHeadModel):
    """Extractive QA: a start vector and an end vector dotted with every token's final state."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def head(self, out: Output, start_positions, end_positions) -> dict:
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).unbind(dim=-1)  # [B, T]
        loss = None
        if start_positions is not None and end_positions is not None:
            # An answer outside this window (clamped to T) is ignored, as in the reference.
            length = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, length)
            end = end_positions.reshape(-1).clamp(0, length)
            loss = (F.cross_entropy(start_logits, start, ignore_index=length)
                    + F.cross_entropy(end_logits, end, ignore_index=length)) / 2
        return dict(loss=loss, start_logits=start_logits.contiguous(),
                    end_logits=end_logits.contiguous())

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_hidden_states=False, output_attentions=False,
                skip_padding=False, return_dict=None) -> Output | tuple:
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states,
                        output_attentions, skip_padding)
        return self._head_output(out, return_dict, **self.head(out, start_positions,
                                                               end_positions))


class BertForMultipleChoice(BertHeadModel):
    """One score per (context, choice) pair from its pooled vector; softmax across choices."""

    reads_cls_only = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=False, output_attentions=False, skip_padding=False,
                return_dict=None) -> Output | tuple:
        batch, choices, length = input_ids.shape  # [B, C, T]: each pair is encoded on its own

        def flat(t):
            return None if t is None else t.reshape(batch * choices, length)

        out, _ = self._encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), None,
                              output_hidden_states, output_attentions, skip_padding)
        return self._head_output(out, return_dict, **self.head(out, labels, choices))

    def head(self, out: Output, labels, choices: int) -> dict:
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, choices)  # [B, C]
        loss = _cross_entropy(logits, labels) if labels is not None else None
        return dict(loss=loss, logits=logits)


def _classifier_dropout(config: BertConfig) -> float:
    if config.classifier_dropout is not None:
        return config.classifier_dropout
    return config.hidden_dropout_prob
