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

import dataclasses
import functools

from torch import nn

try:
    from transformers import PreTrainedModel
    from transformers.utils import ModelOutput
except ImportError as error:
    raise ImportError("bertkit.hf needs transformers: pip install transformers") from error

from . import model


class TransformersModel(PreTrainedModel):
    """Sits under bertkit's `BertPreTrainedModel` in the method order, so bertkit's methods and
    config win; ``PreTrainedModel.__init__`` is skipped because it wants transformers' own config
    class and sets up machinery (generation, tensor parallelism) a BERT encoder has no use for."""

    def __init__(self):
        nn.Module.__init__(self)


@functools.cache
def _output_class(names: tuple[str, ...]) -> type:
    """A transformers ``ModelOutput`` dataclass with these fields. Pipelines move a model's
    outputs to the CPU keeping a ``ModelOutput`` as one but turning any other dict, bertkit's
    `Output` too, into a plain dict, which then cannot be read by position (the
    feature-extraction pipeline reads ``outputs[0]``)."""
    return dataclasses.make_dataclass("BertOutput", [(name, object, None) for name in names],
                                      bases=(ModelOutput,), namespace={"__module__": __name__})


def _pretrained_model(bertkit_class: type) -> type:
    name = bertkit_class.__name__

    @functools.wraps(bertkit_class.forward)  # its signature: Trainer keeps the columns it names
    def forward(self, *args, **kwargs):
        out = bertkit_class.forward(self, *args, **kwargs)
        if not isinstance(out, model.Output):  # return_dict=False: a tuple
            return out
        return _output_class(out.names)(**{name: getattr(out, name) for name in out.names})
    return type(name, (bertkit_class, TransformersModel),
                {"__module__": __name__, "__qualname__": name, "__doc__": bertkit_class.__doc__,
                 "forward": forward})


BertModel = _pretrained_model(model.BertModel)
BertForPreTraining = _pretrained_model(model.BertForPreTraining)
BertForMaskedLM = _pretrained_model(model.BertForMaskedLM)
BertForNextSentencePrediction = _pretrained_model(model.BertForNextSentencePrediction)
BertForSequenceClassification = _pretrained_model(model.BertForSequenceClassification)
BertForTokenClassification = _pretrained_model(model.BertForTokenClassification)
BertForQuestionAnswering = _pretrained_model(model.BertForQuestionAnswering)
BertForMultipleChoice = _pretrained_model(model.BertForMultipleChoice)
