"""BertConfig: the model's hyper-parameters, read from and written to HuggingFace config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

# (layers, hidden) of the paper's sizes and Turc et al.'s smaller official BERTs; heads = H/64 and
# intermediate = 4H throughout.
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" = exact erf GELU; "gelu_new" = Google's tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    # Task heads: label names make predictions readable; problem_type picks the sequence loss.
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str | None = None
    architectures: list[str] | None = None
    # Keys of config.json that bertkit does not use, kept so a load/save round trip loses nothing.
    extra: dict = field(default_factory=dict, repr=False)

    # Read by transformers.Trainer: outputs that are not predictions (besides the loss).
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["mlm_loss", "nsp_loss"]
    use_return_dict: ClassVar[bool] = True  # models return an Output unless return_dict=False

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}: each head must get hidden_size / heads dimensions."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}."
            )
        embedding_type = self.extra.get("position_embedding_type", "absolute")
        if embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type {embedding_type!r} is not BERT's: bertkit implements the "
                "paper's learned absolute position embeddings only."
            )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    def with_labels(self, labels: list[str] | int) -> BertConfig:
        """A copy with the given label names (or that many generic ``LABEL_i`` names)."""
        names = [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else labels
        return replace(self, id2label=dict(enumerate(names)), extra=dict(self.extra))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BertConfig:
        """A named size (tiny, mini, small, medium, base, large), any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        layers, hidden = PRESETS[name]
        sizes = dict(num_hidden_layers=layers, hidden_size=hidden,
                     num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
        return cls(**{**sizes, **overrides})

    @classmethod
    def field_names(cls) -> set[str]:
        """The config.json keys bertkit reads (every other one is kept in ``extra``)."""
        return {f.name for f in fields(cls)} - {"extra"}

    @classmethod
    def from_dict(cls, values: dict) -> BertConfig:
        known = cls.field_names()
        config = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known and k != "label2id"}
        if "id2label" not in config and "num_labels" in values:
            config["id2label"] = {i: f"LABEL_{i}" for i in range(values["num_labels"])}
        extra.pop("num_labels", None)
        return cls(**config, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a checkpoint folder needs a config.json.")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from error
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path} describes a {model_type!r} model, not a BERT.")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        values = asdict(self)
        extra = values.pop("extra")
        values["id2label"] = {str(i): label for i, label in self.id2label.items()}
        values["label2id"] = self.label2id
        return {"model_type": "bert", **extra, **{k: v for k, v in values.items() if v is not None}}

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json's text (transformers' name; ``use_diff`` is accepted and ignored)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def get_text_config(self, *args, **kwargs) -> BertConfig:
        """transformers' accessor for a multi-modal config's text part: BERT is all text."""
        return self

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(self.to_json_string(), encoding="utf-8")
