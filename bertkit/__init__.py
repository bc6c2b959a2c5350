"""bertkit: BERT (Devlin et al. 2018) in readable PyTorch, with HuggingFace-compatible checkpoints.

The names mirror the ones users know: ``BertTokenizer``, ``BertConfig``, ``BertModel``,
``BertFor*``, ``from_pretrained`` and ``save_pretrained``.
"""

from .config import BertConfig
from .data import Corpus, PretrainingConfig, PretrainingDataset, create_pretraining_data
from .embed_files import EmbedStopped, embed_file
from .embeddings import Embedder
from .export import export_onnx
from .fill_mask import FillMask
from .finetune import finetune, load_finetuned, predict
from .model import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .sources import fetch
from .tokenizer import BertTokenizer, train_vocab
from .version import __version__

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForMultipleChoice",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertTokenizer",
    "Corpus",
    "EmbedStopped",
    "Embedder",
    "FillMask",
    "PretrainingConfig",
    "PretrainingDataset",
    "create_pretraining_data",
    "embed_file",
    "export_onnx",
    "fetch",
    "finetune",
    "load_finetuned",
    "predict",
    "train_vocab",
    "__version__",
]
