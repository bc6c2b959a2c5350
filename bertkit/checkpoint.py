"""Checkpoints in the HuggingFace layout: ``config.json`` plus ``model.safetensors`` (or a legacy
``pytorch_model.bin``), read into any bertkit model and written so that transformers reads them.

`BertPreTrainedModel.from_pretrained` and ``save_pretrained`` call `load_pretrained` and
`save_pretrained` here; this module takes the model class or instance and never imports
`bertkit.model`.
"""

from __future__ import annotations

import difflib
import json
import logging
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from .config import BertConfig
from .sources import resolve_pretrained

if TYPE_CHECKING:
    from .model import BertPreTrainedModel

logger = logging.getLogger("bertkit")

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"  # beside the shards of a checkpoint split by max_shard_size
TRAINING_ARGS_NAME = "training_args.bin"  # what transformers.Trainer writes beside the weights
# The MLM decoder shares its weight with the word embeddings: stored once, tied again on load.
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

# Arguments of transformers' from_pretrained that are no config values: taken as config overrides
# they would be silently ignored (a bf16 request giving float32) and written into config.json.
TRANSFORMERS_LOADER_OPTIONS = frozenset({
    "dtype", "torch_dtype", "device_map", "revision", "cache_dir", "token", "local_files_only",
    "force_download", "trust_remote_code", "subfolder", "use_safetensors", "low_cpu_mem_usage",
    "quantization_config", "attn_implementation"})
# transformers' config switches for what forward returns; bertkit's forward takes them per call.
FORWARD_OPTIONS = frozenset({"output_hidden_states", "output_attentions", "return_dict"})

_SKIPPING_INIT = ContextVar("bertkit_skipping_init", default=False)


@contextmanager
def skipping_init() -> Iterator[None]:
    """Build models whose weights are about to be overwritten: meanwhile
    ``BertPreTrainedModel.init_weights`` does nothing, so the modules are allocated but not
    initialised (truncated-normal init of a 30k vocabulary takes seconds)."""
    token = _SKIPPING_INIT.set(True)
    try:
        yield
    finally:
        _SKIPPING_INIT.reset(token)


def init_skipped() -> bool:
    """Whether a `skipping_init` block is active here."""
    return _SKIPPING_INIT.get()


# --------------------------------------------------------------------------------------------
# Loading


def load_pretrained(model_class: type[BertPreTrainedModel], name_or_path, *,
                    ignore_mismatched_sizes: bool = False,
                    **config_overrides) -> BertPreTrainedModel:
    """``model_class.from_pretrained``: see its docstring."""
    loader_options = sorted(config_overrides.keys() & TRANSFORMERS_LOADER_OPTIONS)
    if loader_options:
        raise TypeError(
            f"from_pretrained got {', '.join(loader_options)}: transformers loading options, no "
            "config fields, which bertkit does not take (it reads a local folder into a float32 "
            "model on the CPU). Drop them; for another dtype or device, call "
            "model.to(torch.bfloat16) or model.to(device) after loading."
        )
    directory = resolve_pretrained(name_or_path)
    config = _read_config(directory, config_overrides)
    _check_vocab_file(directory, config)
    state = read_weights(directory)
    with skipping_init():
        model = model_class(config)
    new = _load_checkpoint_state(model, state, directory, ignore_mismatched_sizes)
    if new:
        model.init_weights(only=set(new))
    return model


def _read_config(directory: Path, overrides: dict) -> BertConfig:
    if not (directory / "config.json").is_file() and (directory / TRAINING_ARGS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} needs a config.json: it holds weights written by transformers' "
            "Trainer.save_model(), which saves only the state dict of a model that is not a "
            "transformers PreTrainedModel. Train the classes of bertkit.hf (e.g. "
            "bertkit.hf.BertForSequenceClassification, a PreTrainedModel) and save_model writes "
            "config.json too, or save this model with trainer.model.save_pretrained(folder)."
        )
    config = BertConfig.from_json_file(directory / "config.json")
    _check_override_names(overrides)
    if overrides:
        overrides = dict(overrides)
        num_labels = overrides.pop("num_labels", None)
        config = BertConfig.from_dict({**config.to_dict(), **overrides})
        if num_labels is not None and num_labels != config.num_labels:
            config = config.with_labels(num_labels)
    return config


def _check_override_names(overrides: dict) -> None:
    """A name that is no config field would be kept in config.json and change nothing: a typo
    (``hidden_dropout=0.2``) or a forward argument would pass silently. transformers refuses
    them too (its model's ``__init__`` gets them)."""
    fields = BertConfig.field_names() | {"num_labels", "label2id", "position_embedding_type"}
    unknown = sorted(overrides.keys() - fields)
    if not unknown:
        return
    name = unknown[0]
    if name in FORWARD_OPTIONS:
        advice = (f"It is an argument of the forward call: model(**inputs, {name}=True). Drop "
                  "it here.")
    else:
        close = difflib.get_close_matches(name, sorted(fields), n=1)
        advice = (f"Did you mean {close[0]}? " if close else "") + (
            f"The config fields are {', '.join(sorted(fields - {'label2id'}))}.")
    raise TypeError(f"from_pretrained got {', '.join(unknown)}: no BertConfig field. {advice}")


def _check_vocab_file(directory: Path, config: BertConfig) -> None:
    vocab = directory / "vocab.txt"
    if vocab.is_file():
        size = sum(1 for _ in vocab.open(encoding="utf-8", errors="replace"))
        if size > config.vocab_size:
            raise ValueError(
                f"{vocab} has {size} entries but config.json says vocab_size "
                f"{config.vocab_size}: ids from {config.vocab_size} on would fall outside the "
                "embedding table. Use the vocab the model was trained with, or fix vocab_size."
            )


def read_weights(directory) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder: its model.safetensors, else its pytorch_model.bin,
    either one whole or in the shards a ``.index.json`` beside them lists (transformers'
    ``save_pretrained`` splits checkpoints larger than ``max_shard_size``); transformers' order."""
    directory = Path(directory)
    for name, read_file in ((WEIGHTS_NAME, load_file),
                            (LEGACY_WEIGHTS_NAME, _read_pickled_weights)):
        if (directory / name).is_file():
            return read_file(directory / name)
        if (directory / f"{name}{INDEX_SUFFIX}").is_file():
            return _read_sharded(directory / f"{name}{INDEX_SUFFIX}", read_file)
    present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise FileNotFoundError(
        f"{directory} has no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}, whole or as shards with an "
        f"{INDEX_SUFFIX} index (it holds: {present})."
    )


def _read_sharded(index: Path, read_shard) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{index} is no shard index ({type(error).__name__}: {error}): it must be JSON with a "
            '"weight_map" from tensor names to shard files, as transformers writes it.'
        ) from None
    state = {}
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            raise FileNotFoundError(
                f"{index} lists the shard {shard}, which {index.parent} lacks: copy every file "
                "of the checkpoint folder."
            )
        state.update(read_shard(path))
    return state


def _read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    try:  # weights_only: a pickled checkpoint may carry code; never run it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f" (e.g. {found[1]})" if found else ""
        safe = path.with_name(WEIGHTS_NAME)
        raise ValueError(
            f"bertkit refused to load {path}: besides tensors it holds Python objects{what}, "
            "and unpickling those could run code. Only if you trust the file, convert it once "
            "to safetensors, which holds tensors alone:\n"
            "    import torch, safetensors.torch\n"
            f"    state = torch.load({str(path)!r}, weights_only=False)\n"
            f"    safetensors.torch.save_file({{k: v.clone() for k, v in state.items()}}, "
            f"{str(safe)!r})"
        ) from None


def _normalise_key(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma/beta."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _load_checkpoint_state(model: BertPreTrainedModel, state: dict, source: Path,
                           ignore_mismatched_sizes: bool) -> list[str]:
    """Load ``state`` into ``model``; returns the names of the weights left to initialise.

    The encoder proper (embeddings, layers) must match exactly; the pooler and the heads may be
    new, left out, or (with ``ignore_mismatched_sizes``) of another shape.
    """
    is_head_model = hasattr(model, "bert")
    state = _align_keys(state, is_head_model)
    expected = {k: v for k, v in model.state_dict().items() if k not in TIED_KEYS}
    body = ("bert.embeddings.", "bert.encoder.") if is_head_model else ("embeddings.", "encoder.")
    mismatched = _drop_mismatched(state, expected, body, source, ignore_mismatched_sizes)
    missing = sorted(expected.keys() - state.keys())
    unused = sorted(state.keys() - expected.keys())
    _check_encoder_complete(missing, unused, body, source)
    model.load_state_dict(state, strict=False)
    new = [k for k in missing if k not in mismatched] + mismatched
    _report(model, source, new, unused)
    return new


def _align_keys(state: dict, is_head_model: bool) -> dict:
    """Checkpoint names as the model names them: gamma/beta renamed, buffers and tied copies
    dropped, the ``bert.`` prefix added or removed when a bare encoder meets a head model."""
    state = {_normalise_key(k): v for k, v in state.items()
             if not k.endswith("position_ids") and k not in TIED_KEYS}
    has_prefix = any(k.startswith("bert.") for k in state)
    if is_head_model and not has_prefix:  # a bare BertModel checkpoint under a head model
        return {f"bert.{k}": v for k, v in state.items()}
    if not is_head_model and has_prefix:  # a head checkpoint under a bare BertModel
        return {k.removeprefix("bert."): v for k, v in state.items()}
    return state


def _drop_mismatched(state: dict, expected: dict, body: tuple[str, ...], source: Path,
                     ignore_mismatched_sizes: bool) -> list[str]:
    """Remove (and return) the head tensors whose shape differs; raise for any other."""
    mismatched = []
    for key in sorted(state.keys() & expected.keys()):
        if state[key].shape != expected[key].shape:
            in_body = key.startswith(body)
            if in_body or not ignore_mismatched_sizes:
                hint = ("config.json does not match these weights" if in_body
                        else "pass ignore_mismatched_sizes=True to re-initialise this head")
                raise ValueError(
                    f"{source}: tensor {key} has shape {tuple(state[key].shape)} in the "
                    f"checkpoint but {tuple(expected[key].shape)} in the model built from "
                    f"config.json; {hint}."
                )
            mismatched.append(key)
    for key in mismatched:
        del state[key]
    return mismatched


def _check_encoder_complete(missing: list[str], unused: list[str], body: tuple[str, ...],
                            source: Path) -> None:
    body_missing = [k for k in missing if k.startswith(body)]
    body_unused = [k for k in unused if k.startswith(body)]
    if body_missing or body_unused:
        raise ValueError(
            f"{source}: the weights do not match config.json ("
            f"{len(body_missing)} encoder tensors missing, e.g. {body_missing[:3]}; "
            f"{len(body_unused)} unexpected, e.g. {body_unused[:3]}). Check num_hidden_layers, "
            "hidden_size and the other sizes in config.json."
        )


def _report(model: BertPreTrainedModel, source: Path, new: list[str], unused: list[str]) -> None:
    """One warning line naming the weights initialised fresh and those ignored."""
    report = []
    if new:
        report.append(f"initialised new weights {_summarise(new)} (train them before use)")
    if unused:
        report.append(f"ignored checkpoint weights {_summarise(unused)}")
    if report:
        logger.warning("%s from %s: %s", type(model).__name__, source, "; ".join(report))


def _summarise(keys: list[str]) -> str:
    """``cls.predictions.*`` for whole modules, to keep the report on one line."""
    groups = sorted({".".join(k.split(".")[:2]) if k.count(".") > 1 else k for k in keys})
    return ", ".join(f"{g}*" if g not in keys else g for g in groups)


# --------------------------------------------------------------------------------------------
# Saving


def save_pretrained(model: BertPreTrainedModel, directory, *, state_dict: dict | None = None,
                    safe_serialization: bool = True) -> None:
    """``model.save_pretrained``: ``config.json`` and ``model.safetensors`` (or, without
    ``safe_serialization``, ``pytorch_model.bin``) as HuggingFace does; ``state_dict`` replaces
    the model's own tensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The decoder shares its weight with the word embeddings: one copy is stored, and loaders
    # (ours and HuggingFace's) tie them again.
    state = {k: v.detach().contiguous().cpu()
             for k, v in (model.state_dict() if state_dict is None else state_dict).items()
             if k not in TIED_KEYS}
    model.config.architectures = [type(model).__name__]
    _state_saved_dtype(model.config, state)
    model.config.save(directory)
    stale = LEGACY_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    # Loaders prefer safetensors, whole then sharded: never leave a stale one of either.
    for name in (stale, f"{stale}{INDEX_SUFFIX}"):
        (directory / name).unlink(missing_ok=True)
    if safe_serialization:
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    else:
        torch.save(state, directory / LEGACY_WEIGHTS_NAME)


def _state_saved_dtype(config: BertConfig, state: dict) -> None:
    """Make a dtype that config.json states (transformers 5 writes ``dtype``, 4 ``torch_dtype``)
    the one of the weights written: transformers loads them in it. bertkit builds float32 models,
    so a bf16 checkpoint's stale "bfloat16" would round the re-saved (fine-tuned) weights."""
    floating = {str(v.dtype).removeprefix("torch.") for v in state.values()
                if v.is_floating_point()}
    for key in ("dtype", "torch_dtype"):
        if key in config.extra:
            if len(floating) == 1:
                [config.extra[key]] = floating
            else:
                del config.extra[key]  # none or mixed: transformers then reads the weights
