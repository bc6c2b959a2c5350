"""ONNX export of the encoder, for serving it elsewhere."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from . import files
from .embeddings import _encoder_view
from .model import BertModel


class _ExportedEncoder(torch.nn.Module):
    """The encoder with plain tensor inputs and one output, as ONNX runtimes expect."""

    def __init__(self, model: BertModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids).last_hidden_state


def export_onnx(model, path: str | Path) -> Path:
    """Write the encoder of ``model`` (a folder, a model name, or a loaded model) as ONNX for
    serving elsewhere: inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (int64 [batch, tokens], both dynamic), output
    ``last_hidden_state`` (float32 [batch, tokens, H]). Needs the ``onnx`` extra
    (onnx, onnxscript; onnxruntime to run it). The file appears only when whole: a failed
    export (a full disk raises `bertkit.files.DiskFull`) leaves what was at ``path``."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail early with a clear hint)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx extra: pip install 'bertkit[onnx]' "
                           "(onnx, onnxscript, onnxruntime).") from None
    if isinstance(model, torch.nn.Module):
        loaded = getattr(model, "bert", model)  # a head model exports its encoder
    else:
        loaded = BertModel.from_pretrained(model)
    # A view: exporting leaves the caller's model where it is (device, dtype, mode).
    encoder = _encoder_view(loaded, loaded.config.num_hidden_layers).float().cpu()
    limit = encoder.config.max_position_embeddings
    input_ids = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 4]])  # any ids: only shapes are traced
    mask = (input_ids != 0).long()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", max=limit)}
    path = Path(path)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    # The exporter's progress notes and its remarks on ops BERT does not use are not for users.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                _ExportedEncoder(encoder), (input_ids, mask, torch.zeros_like(input_ids)),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"], dynamic_shapes=(dims, dims, dims),
                dynamo=True)
        finally:
            exporter_log.setLevel(level)
    path.parent.mkdir(parents=True, exist_ok=True)  # as other commands make their --out's
    # Saved in a folder beside it under its own name (a model over 2 GB names the data file
    # saved with it), then moved into place, the graph last: an interrupted or failed export
    # leaves what was at ``path`` before.
    staging = files.staging_path(path)
    files.remove(staging)
    staging.mkdir()
    try:
        with files.reporting_full_disk(path, "What was there before is kept."):
            program.save(str(staging / path.name))
        for written in sorted(staging.iterdir(), key=lambda file: file.name == path.name):
            os.replace(written, path.parent / written.name)
    finally:
        files.remove(staging)
    return path
