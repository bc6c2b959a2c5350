"""Sentence embeddings: bertkit's `Embedder` against what users pick instead, side by side.

One process, the systems alternating round after round so every one sees the same machine load;
each round has texts of its own (the same for every system), as a user embeds a text once:
oneDNN builds its kernels for each new shape it meets (~20 ms a bf16 product with AMX), so
texts repeated round after round would hide what meeting new batch shapes costs. Each side does
its own tokenizing. The peers:

- ``st-fp32``: sentence-transformers ``SentenceTransformer(folder).encode`` (batch 32; it sorts
  by length itself), fp32;
- ``st-bf16``: the same model cast with ``model.to(torch.bfloat16)`` (bf16 weights and
  activations, as bertkit's ``precision="bf16"``);
- ``ort-fp32``: ONNX Runtime on bertkit's exported graph (`bertkit.export.export_onnx`) after
  ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads,
  hidden_size)`` (its transformer fusions; the session's graph optimisations all on), run on
  bertkit's tokenizer and length-sorted batches;
- ``ort-int8``: that optimised graph through ``onnxruntime.quantization.quantize_dynamic``
  (dynamic int8, QInt8 weights);
- ``ort-fused-fp32``, ``ort-fused-int8``: the same two from transformers' BertModel (eager
  attention) exported by torch's TorchScript exporter (``dynamo=False``, opset 17), the graph
  whose attention the optimiser fuses into one ``Attention`` op (it finds no attention pattern in
  the dynamo export): ONNX Runtime at its best;
- opt-in: ``ort-plain`` (the export without the optimiser), ``hf`` (transformers' BertModel,
  batches of 32 in input order, what a transformers user writes);

and bertkit's modes: ``fp32`` (exact, the default), ``bf16``, ``int8``, opt-in ``compile``,
``bf16+compile``. For each: texts/s, tokens/s (real tokens, special tokens included), MFU (model
matmul FLOPs of the real tokens, `benchmarks/peak.py`, against the best peak measured in this
run before and after the rounds: fp32 and int8 rows against the fp32 peak, bf16 rows against the
bf16 peak), the speed ratio to
sentence-transformers fp32 (median of the per-round ratios), and the cosine of each text's
vector to bertkit fp32's (mean and min). Two inputs: ``short`` real snippets (sentences of
Wikipedia leads) and ``long`` documents (the Linux kernel's documentation, markup underlines
dropped, each cut to a random 256-512 tokens). Every system truncates at ``--max-length`` (512).

``--systems auto`` (the default) leaves out the bf16 rows on a CPU without native bf16
(AVX512-BF16/AMX): there it is emulated ~100x slower than fp32 and the run would take hours.

    .venv/bin/python benchmarks/bench_inference.py                       # all-MiniLM-L6-v2
    .venv/bin/python benchmarks/bench_inference.py --inputs short --sentences 3000 --rounds 3
    .venv/bin/python benchmarks/bench_inference.py --systems st-fp32,fp32,bf16,int8,ort-fp32
    .venv/bin/python benchmarks/bench_inference.py --preset base --sentences 1000 --documents 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from peak import fast_precisions, forward_flops, measure_peaks

from bertkit.config import BertConfig
from bertkit.data.corpora import fetch_corpus
from bertkit.embeddings import Embedder, length_sorted_batches, padded
from bertkit.export import export_onnx
from bertkit.model import BertModel
from bertkit.sources import fetch
from bertkit.tokenizer import BertTokenizer

MODEL = "all-minilm-l6-v2"
PEERS = ("st-fp32", "st-bf16", "ort-fp32", "ort-int8", "ort-fused-fp32", "ort-fused-int8",
         "ort-plain", "hf")
MODES = {"fp32": {}, "bf16": {"precision": "bf16"}, "int8": {"quantize": "int8"},
         "compile": {"compile": True}, "bf16+compile": {"precision": "bf16", "compile": True}}
DEFAULT = ("st-fp32", "st-bf16", "ort-fp32", "ort-int8", "ort-fused-fp32", "ort-fused-int8",
           "fp32", "bf16", "int8")
PRECISION = {"st-fp32": "fp32", "st-bf16": "bf16", "ort-fp32": "fp32", "ort-int8": "int8",
             "ort-fused-fp32": "fp32", "ort-fused-int8": "int8",
             "ort-plain": "fp32", "hf": "fp32", "fp32": "fp32", "bf16": "bf16", "int8": "int8",
             "compile": "fp32", "bf16+compile": "bf16"}
# Issue 17's bars (Done when, 2), on the short snippets.
GOALS = {"fp32 vs st": 1.7, "bf16 vs st": 2.0, "bf16 min cosine": 0.999}


# --------------------------------------------------------------------------------------------
# Inputs


def wiki_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences drawn at random from all Wikipedia lead sections."""
    records = json.loads(fetch("wiki-leads", quiet=True).read_text(encoding="utf-8"))
    sentences = [s for title in sorted(records)
                 for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", records[title]["extract"]) if s]
    return random.Random(seed).sample(sentences, count)


UNDERLINE = re.compile(r"^\s*([=\-~^*#+`:.'\"_])\1{2,}\s*$")  # reStructuredText heading rules


def long_documents(count: int, tokenizer, corpus: str = "linux-docs", low: int = 256,
                   high: int = 512, seed: int = 0) -> list[str]:
    """``count`` documents of ``corpus`` (a random sample), heading underlines dropped and
    whitespace collapsed, each cut at a word-piece boundary to a random ``low``..``high``
    tokens ([CLS] and [SEP] included)."""
    folder = fetch_corpus(corpus, quiet=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and (p.name.endswith(".rst.gz") or p.name.endswith(".rst.txt")))
    rng = random.Random(seed)
    rng.shuffle(files)
    documents = []
    for path in files:
        raw = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz"
               else path.read_bytes()).decode("utf-8", errors="replace")
        lines = [line for line in raw.splitlines() if not UNDERLINE.match(line)]
        text = " ".join(" ".join(lines).split())[:8000]  # 8,000 characters cover 512 tokens
        target = rng.randint(low, high) - 2
        offsets = tokenizer(text, add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) < target:
            continue
        documents.append(text[:offsets[target - 1][1]])
        if len(documents) == count:
            return documents
    raise SystemExit(f"{corpus} has only {len(documents)} documents of {low}+ tokens: ask for "
                     "fewer (--documents a round times --rounds)")


def model_folder(preset: str | None, scratch: Path) -> Path:
    """all-MiniLM-L6-v2, or a preset with random weights and the same (bert-base) vocabulary."""
    minilm = fetch(MODEL, quiet=True)
    if preset is None:
        return minilm
    torch.manual_seed(0)
    BertModel(BertConfig.from_preset(preset)).save_pretrained(scratch)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json",
                 "special_tokens_map.json"):
        shutil.copy(minilm / name, scratch / name)
    return scratch


# --------------------------------------------------------------------------------------------
# The systems: each has encode(texts) -> float32 [N, H]


class SentenceTransformers:
    """``SentenceTransformer(folder).encode``, fp32 or cast to bf16."""

    def __init__(self, folder: Path, bf16: bool, max_length: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu")
        self.model.max_seq_length = max_length
        if bf16:
            self.model.to(torch.bfloat16)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=32, show_progress_bar=False,
                                    convert_to_tensor=True)
        return vectors.float().cpu().numpy()


class HuggingFace:
    """What a transformers user writes: tokenizer + BertModel, batches of 32 in input order."""

    def __init__(self, folder: Path, max_length: int):
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.BertModel.from_pretrained(folder).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), 32):
            batch = self.tokenizer(texts[start:start + 32], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            mean = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(vectors).numpy()


class _HfEncoder(torch.nn.Module):
    """transformers' BertModel with three tensor inputs and one output, for the exporter."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def torchscript_export(folder: Path, path: Path) -> Path:
    """transformers' BertModel (eager attention) through torch's TorchScript ONNX exporter."""
    import warnings

    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2000, 102, 0]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_HfEncoder(model), (ids, (ids != 0).long(), torch.zeros_like(ids)),
                          str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"}
                                        for n in [*names, "last_hidden_state"]},
                          opset_version=17, dynamo=False)
    return path


def optimised_and_int8(source: Path, config, wanted: set[str], fp32: str, int8: str,
                       graphs: dict) -> None:
    """onnxruntime's transformer optimiser on ``source``, then its dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    optimised = optimize_model(str(source), model_type="bert",
                               num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    fused = {k: v for k, v in optimised.get_fused_operator_statistics().items() if v}
    print(f"  onnxruntime transformer optimiser on {source.name} fused: {fused or 'nothing'}")
    graphs[fp32] = source.with_name(source.stem + "-optimised.onnx")
    optimised.save_model_to_file(str(graphs[fp32]))
    if int8 in wanted:
        graphs[int8] = source.with_name(source.stem + "-optimised-int8.onnx")
        import onnx

        # Types behind the fused ops (Attention, com.microsoft) are unknown to shape inference.
        quantize_dynamic(graphs[fp32], graphs[int8], weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def onnx_graphs(folder: Path, scratch: Path, wanted: set[str]) -> dict[str, Path]:
    """The exported encoders, their transformer-optimised forms and those forms' dynamic int8."""
    config = BertConfig.from_json_file(folder / "config.json")
    graphs = {"ort-plain": export_onnx(folder, scratch / "encoder.onnx")}
    if wanted & {"ort-fp32", "ort-int8"}:
        optimised_and_int8(graphs["ort-plain"], config, wanted, "ort-fp32", "ort-int8", graphs)
    if wanted & {"ort-fused-fp32", "ort-fused-int8"}:
        try:
            source = torchscript_export(folder, scratch / "transformers.onnx")
        except Exception as error:  # the TorchScript exporter is deprecated in torch
            print(f"  TorchScript export failed ({type(error).__name__}: {error}); no ort-fused")
        else:
            optimised_and_int8(source, config, wanted, "ort-fused-fp32", "ort-fused-int8",
                               graphs)
    return graphs


class OnnxRuntime:
    """An ONNX graph of the encoder in onnxruntime (CPU, graph optimisations all on, torch's
    thread count), on bertkit's tokenizer and length-sorted batches, mean-pooled and
    normalised."""

    def __init__(self, graph: Path, folder: Path, max_length: int, batch_tokens: int | None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(graph), options,
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = BertTokenizer.from_pretrained(folder)
        self.width = BertConfig.from_json_file(folder / "config.json").hidden_size
        self.max_length = max_length
        # its fastest padded batch here: on a 2-core Xeon 512 tokens ran short snippets 1.04x
        # as fast as 1024, 1.09x as fast as 2048 (fp32, fused graph; 8192 0.83x of 2048)
        self.batch_tokens = batch_tokens or 512

    def encode(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        for rows in length_sorted_batches([len(row) for row in ids], self.batch_tokens):
            input_ids, mask = padded([ids[i] for i in rows])
            mask = mask.numpy()
            hidden = self.session.run(None, {"input_ids": input_ids.numpy(),
                                             "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(mask)})[0]
            mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[rows] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        return out


def build_systems(folder: Path, scratch: Path, names: list[str], batch_tokens: int | None,
                  max_length: int, warmup_texts: list[str]) -> dict:
    graphs = onnx_graphs(folder, scratch, set(names)) if any(
        n.startswith("ort-") for n in names) else {}
    systems = {}
    for name in names:
        if name.startswith("ort-") and name not in graphs:
            continue
        started = time.perf_counter()
        if name.startswith("st-"):
            systems[name] = SentenceTransformers(folder, name == "st-bf16", max_length)
        elif name.startswith("ort-"):
            systems[name] = OnnxRuntime(graphs[name], folder, max_length, batch_tokens)
        elif name == "hf":
            systems[name] = HuggingFace(folder, max_length)
        else:
            systems[name] = Embedder(folder, batch_tokens=batch_tokens, max_length=max_length,
                                     **MODES[name])
        systems[name].encode(warmup_texts)  # compilation and first-call costs, not timed
        print(f"  set up {label(name)}: {time.perf_counter() - started:.1f} s", flush=True)
    return systems


def label(name: str) -> str:
    if name in MODES:
        return f"bertkit {name}"
    return {"st-fp32": "sentence-transformers fp32", "st-bf16": "sentence-transformers bf16",
            "ort-fp32": "onnxruntime fp32 (optimised)", "ort-int8": "onnxruntime int8 (dynamic)",
            "ort-fused-fp32": "onnxruntime fp32 (fused attn.)",
            "ort-fused-int8": "onnxruntime int8 (fused attn.)",
            "ort-plain": "onnxruntime fp32 (plain)", "hf": "transformers BertModel"}[name]


# --------------------------------------------------------------------------------------------
# Measuring


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norms, 1e-12)


def measure(systems: dict, rounds: list[list[str]]) -> tuple[dict, dict]:
    """Seconds of each system in each round, and every system's vectors of the last round."""
    seconds = {name: [] for name in systems}
    vectors = {}
    for round_number, texts in enumerate(rounds):
        for name, system in systems.items():
            started = time.perf_counter()
            vectors[name] = system.encode(texts)
            seconds[name].append(time.perf_counter() - started)
        print(f"  round {round_number + 1}: " + ", ".join(
            f"{name} {s[-1]:.1f} s" for name, s in seconds.items()), flush=True)
    return seconds, vectors


def report(input_name: str, rounds: list[list[int]], config, seconds: dict, vectors: dict,
           peaks) -> dict:
    """The table of one input (``rounds``: each round's token counts); returns its rows."""
    lengths = [n for part in rounds for n in part]
    texts, tokens = len(rounds[0]), statistics.mean(sum(part) for part in rounds)
    flops = statistics.mean(forward_flops(config, part) for part in rounds)
    reference = "fp32" if "fp32" in vectors else next(iter(vectors))
    base = "st-fp32" if "st-fp32" in seconds else next(iter(seconds))
    print(f"\n{input_name}: {tokens:,.0f} tokens a round ({np.mean(lengths):.1f} a text on "
          f"average, min {min(lengths)}, max {max(lengths)}), {flops / 1e9:,.0f} model GFLOP "
          "a pass")
    print(f"{'system':30} {'median s':>8} {'texts/s':>8} {'tokens/s':>9} {'MFU':>6} "
          f"{'x ' + base:>16}  cosine to bertkit {reference}: mean, min")
    rows = {}
    for name in seconds:
        median = statistics.median(seconds[name])
        ratios = [b / s for b, s in zip(seconds[base], seconds[name], strict=True)]
        ratio = statistics.median(ratios)
        precision = PRECISION[name]
        mfu = peaks.mfu(flops / median, precision)
        cos = cosine(vectors[name], vectors[reference])
        rows[name] = {"seconds": seconds[name], "texts_per_s": texts / median,
                      "tokens_per_s": tokens / median, "mfu": mfu, "precision": precision,
                      "x_base": ratio, "cosine_mean": float(cos.mean()),
                      "cosine_min": float(cos.min())}
        spread = f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        accuracy = (f"{cos.mean():.6f}, {cos.min():.6f}" if name != reference else
                    "reference")
        if name == reference and "st-fp32" in vectors:
            diff = np.abs(unit(vectors[name]) - unit(vectors["st-fp32"])).max()
            accuracy += f" (max |diff| to sentence-transformers fp32, unit vectors: {diff:.1e})"
        peak_name = "bf16" if precision == "bf16" else "fp32"
        print(f"{label(name):30} {median:8.2f} {texts / median:8.0f} "
              f"{tokens / median:9,.0f} {100 * mfu:5.1f}% {spread:>16}  {accuracy}"
              + ("" if peak_name == "bf16" or precision == "fp32" else "  (MFU vs fp32 peak)"))
    return rows


def verdicts(rows: dict) -> None:
    """Issue 17's bars (Done when, 2) on the short snippets, where the rows are there."""

    def ratio(a, b):  # a's speed over b's, median of per-round ratios
        return statistics.median(sb / sa for sa, sb in zip(rows[a]["seconds"],
                                                            rows[b]["seconds"], strict=True))

    def said(met):
        return "met" if met else "NOT met"

    print()
    if {"fp32", "st-fp32"} <= rows.keys():
        r = ratio("fp32", "st-fp32")
        print(f"bertkit fp32 {r:.2f}x sentence-transformers fp32 (goal >= {GOALS['fp32 vs st']}):"
              f" {said(r >= GOALS['fp32 vs st'])}")
    for peer in ("ort-fp32", "ort-fused-fp32"):
        if {"fp32", peer} <= rows.keys():
            r = ratio("fp32", peer)
            print(f"bertkit fp32 {r:.2f}x {label(peer)} (goal >= 1): {said(r >= 1)}")
    if {"bf16", "st-bf16"} <= rows.keys():
        r, low = ratio("bf16", "st-bf16"), rows["bf16"]["cosine_min"]
        print(f"bertkit bf16 {r:.2f}x sentence-transformers bf16, min cosine {low:.5f} (goal >= "
              f"{GOALS['bf16 vs st']}x and >= {GOALS['bf16 min cosine']}): "
              f"{said(r >= GOALS['bf16 vs st'] and low >= GOALS['bf16 min cosine'])}")
    ours = [n for n in rows if n in MODES]
    for peer in ("ort-int8", "ort-fused-int8"):
        if ours and peer in rows:
            fastest = max(ours, key=lambda n: rows[n]["texts_per_s"])
            r = ratio(fastest, peer)
            mine, theirs = rows[fastest]["cosine_min"], rows[peer]["cosine_min"]
            print(f"fastest bertkit mode: {fastest}, {r:.2f}x {label(peer)}, min cosine "
                  f"{mine:.4f} vs {theirs:.4f} (goal >= 1x at >= its min cosine): "
                  f"{said(r >= 1 and mine >= theirs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="short,long", help="short, long or both (default)")
    parser.add_argument("--sentences", type=int, default=3000,
                        help="short snippets a round (3000)")
    parser.add_argument("--documents", type=int, default=200, help="long documents a round (200)")
    parser.add_argument("--corpus", default="linux-docs",
                        help="where the long documents come from: linux-docs or python-docs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds, each on texts of its own (3)")
    parser.add_argument("--preset", help="random weights of this size (e.g. base) instead of "
                        "all-MiniLM-L6-v2's")
    parser.add_argument("--systems", default="auto",
                        help="comma-separated: peers " + ", ".join(PEERS) + "; bertkit modes "
                        + ", ".join(MODES) + ". auto: " + ",".join(DEFAULT)
                        + " (bf16 ones only with native bf16)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="every system truncates here (512)")
    parser.add_argument("--batch-tokens", type=int,
                        help="bertkit's (and onnxruntime's) tokens per batch (default: "
                        "the Embedder's; ONNX Runtime 512 padded ones, its fastest)")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()  # sentence-transformers' weight loading

    if args.systems == "auto":
        names = [n for n in DEFAULT if "bf16" not in n or "bf16" in fast_precisions("cpu")]
    else:
        names = args.systems.split(",")
    unknown = [n for n in names if n not in PEERS and n not in MODES]
    if unknown:
        parser.error(f"unknown system(s) {unknown}")
    wanted = args.inputs.split(",")
    print(f"model {args.preset or MODEL}; {torch.get_num_threads()} threads; systems "
          f"{','.join(names)}; inputs {','.join(wanted)}; max length {args.max_length}"
          + ("" if "bf16" in fast_precisions("cpu") else
             "; no native bf16 on this CPU (auto leaves the bf16 rows out)"), flush=True)
    precisions = ["fp32"] + (["bf16"] if any(PRECISION[n] == "bf16" for n in names) else [])
    peaks = measure_peaks("cpu", precisions=precisions)
    print(peaks.line(), flush=True)

    short = wiki_sentences(args.sentences * args.rounds + 64)  # 64 to warm up on
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(args.preset, Path(scratch))
        config = BertConfig.from_json_file(folder / "config.json")
        tokenizer = BertTokenizer.from_pretrained(folder)
        inputs, warmup = {}, short[-64:]
        if "short" in wanted:
            inputs["short"] = (f"short: {args.sentences} Wikipedia sentences a round", short)
        if "long" in wanted:
            documents = long_documents(args.documents * args.rounds + 4, tokenizer, args.corpus)
            inputs["long"] = (f"long: {args.documents} {args.corpus} documents a round, cut to "
                              "256-512 tokens", documents)
            warmup += documents[-4:]
        systems = build_systems(folder, Path(scratch), names, args.batch_tokens,
                                args.max_length, warmup)
        measured = {}
        for key, (title, texts) in inputs.items():
            print(f"\n== {title}", flush=True)
            size = args.sentences if key == "short" else args.documents
            rounds = [texts[i * size:(i + 1) * size] for i in range(args.rounds)]
            lengths = [[len(ids) for ids in tokenizer(part, truncation=True,
                                                      max_length=args.max_length)["input_ids"]]
                       for part in rounds]
            measured[key] = (title, lengths, *measure(systems, rounds))
    peaks = peaks.best(measure_peaks("cpu", precisions=precisions))  # again, after the rounds
    print(f"\n{peaks.line()}")
    for key, (title, lengths, seconds, vectors) in measured.items():
        results[key] = report(title, lengths, config, seconds, vectors, peaks)
    if "short" in results:
        verdicts(results["short"])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"settings": vars(args), "peaks": peaks.rates,
                                   "threads": peaks.threads, "results": results},
                                  indent=2) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
