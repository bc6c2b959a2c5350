"""bertkit's models as transformers ``PreTrainedModel`` instances, for ``transformers.Trainer``.

Trainer's ``save_model`` (and every checkpoint it writes) calls the model's ``save_pretrained``
only when the model is a ``PreTrainedModel``; of any other module it writes the bare state dict,
with no config.json. The classes here are bertkit's own, the same layers, forward, checkpoints and
outputs, that are also ``PreTrainedModel`` instances, so the folders Trainer writes load in
bertkit and in transformers::

    from bertkit.hf import BertForSequenceClassification

They live apart from `bertkit.model` because transformers is no dependency of bertkit and
importing its model base costs seconds.
"""

from torch import nn

try:
    from transformers import PreTrainedModel
except ImportError as error:
    raise ImportError("bertkit.hf needs transformers: pip install transformers") from error

from . import model


class TransformersModel(PreTrainedModel):
    """Sits under bertkit's `BertPreTrainedModel` in the method order, so bertkit's methods and
    config win; ``PreTrainedModel.__init__`` is skipped because it wants transformers' own config
    class and sets up machinery (generation, tensor parallelism) a BERT encoder has no use for."""

    def __init__(self):
        nn.Module.__init__(self)


def _pretrained_model(bertkit_class: type) -> type:
    name = bertkit_class.__name__
    return type(name, (bertkit_class, TransformersModel),
                {"__module__": __name__, "__qualname__": name, "__doc__": bertkit_class.__doc__})


BertModel = _pretrained_model(model.BertModel)
BertForPreTraining = _pretrained_model(model.BertForPreTraining)
BertForMaskedLM = _pretrained_model(model.BertForMaskedLM)
BertForNextSentencePrediction = _pretrained_model(model.BertForNextSentencePrediction)
BertForSequenceClassification = _pretrained_model(model.BertForSequenceClassification)
BertForTokenClassification = _pretrained_model(model.BertForTokenClassification)
BertForQuestionAnswering = _pretrained_model(model.BertForQuestionAnswering)
BertForMultipleChoice = _pretrained_model(model.BertForMultipleChoice)
