"""The main job: raw Wikipedia text to a pre-trained BERT, fill-mask, classifiers, report.

Stages, each recorded in ``demo_state.json`` once done so ``--resume`` skips it:

1. ``vocab``               train a WordPiece vocabulary on the wiki-leads corpus
2. ``data``                build masked-LM + next-sentence examples (Google's recipe, length 64)
3. ``finetune-minilm``     rt-polarity on the real all-MiniLM-L6-v2 (the reference)
4. ``finetune-random``     rt-polarity on a ``mini`` BERT from random initialisation
5. ``pretrain``            pre-train a ``mini`` BERT with MLM + NSP for the time the budget leaves
6. ``fill-mask``           the new model fills in [MASK] in common contexts and held-out sentences
7. ``finetune-pretrained`` rt-polarity on the new checkpoint, as the random-init mini was
then ``report``: results table, plots and ``report.html`` in the run folder.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

STATE_NAME = "demo_state.json"
SETTINGS_NAME = "demo_settings.json"
# Contexts frequent in the Wikipedia leads (the phrase with the answer occurs there 8 to 183
# times, "capital of" most), each with the words that fill it sensibly; "the cat sat on the" is
# the classic example, rare in an encyclopedia.
FILL_MASK_TEMPLATES = {
    "paris is the capital of [MASK].": {"france"},
    "the earth orbits the [MASK].": {"sun"},
    "he fought in world war [MASK].": {"ii", "i"},
    "she is an american [MASK] and songwriter.": {"singer", "actress", "actor", "musician",
                                                   "rapper", "composer", "producer",
                                                   "guitarist", "pianist"},
    "the atlantic [MASK] separates europe from america.": {"ocean"},
    "carbon [MASK] is a greenhouse gas.": {"dioxide", "monoxide"},
    "he won the nobel [MASK] in physics.": {"prize"},
    "the sun is one star of the milky [MASK].": {"way"},
    "the cat sat on the [MASK].": {"floor", "ground", "mat", "table", "bed", "chair", "roof"},
}
CLASSIFIER_STAGES = ("finetune-pretrained", "finetune-random", "finetune-minilm")
FILL_MASK_AND_REPORT_SECONDS = 20
MIN_PRETRAIN_MINUTES = 0.25
HELD_OUT_SHOWN = 4


@dataclass
class DemoSettings:
    out: str
    budget_minutes: float = 17.0  # the whole job; pre-training gets what the rest leaves
    corpus: str = "wiki-leads"  # a built-in corpus name or files bertkit.data.Corpus reads
    vocab_size: int = 8192
    preset: str = "mini"
    dupe_factor: int = 5
    # Length 64 (Google's phase 1 uses 128): twice the optimiser steps in the same time, which is
    # what a short run on a CPU is short of (18% held-out masked-token accuracy after 8.6 minutes
    # at 64, against 15% at 128 after 9.6).
    max_seq_length: int = 64
    # The paper's AdamW but with RoBERTa's beta2 and no dropout, which leave the MLM plateau
    # ~1,500 steps sooner in a run this short (README, "The demo's recipe"); fine-tuning puts
    # the paper's dropout back.
    pretrain_lr: float = 7e-4
    pretrain_beta2: float = 0.98
    pretrain_dropout: float = 0.0
    # Pre-trained vs random init on few labels, where pre-training shows (on all 10,202 a
    # random mini catches up with a 10-minute pre-training); MiniLM on all of them, as a user would.
    finetune_examples: int | None = 2000  # rt-polarity training examples for the two minis
    finetune_epochs: int = 3
    minilm_examples: int | None = None  # None: all 10,202
    minilm_epochs: int = 2
    eval_examples: int | None = None  # None: the whole validation and test splits
    seed: int = 12345


def _stage(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


class DemoState:
    """Finished stages and their results, saved after each stage."""

    def __init__(self, run: Path):
        self.path = run / STATE_NAME
        self.stages: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def classifiers(self, settings: DemoSettings) -> dict[str, str]:
        """Fine-tuning stage -> its label in the report."""
        return dict(zip(CLASSIFIER_STAGES, (f"pre-trained here ({settings.preset})",
                                            f"random init ({settings.preset})",
                                            "all-MiniLM-L6-v2"), strict=True))

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def record(self, stage: str, result: dict) -> None:
        self.stages[stage] = result
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.stages, indent=2) + "\n")
        temporary.replace(self.path)


def latest_run(root: Path = Path("runs")) -> Path | None:
    runs = sorted(p for p in root.glob("demo-*") if (p / STATE_NAME).is_file())
    return runs[-1] if runs else None


def run(settings: DemoSettings | None = None, resume: bool = False) -> Path:
    """Run (or resume) the demo; returns the run folder."""
    settings = settings or DemoSettings(out=f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(settings.out)
    if resume and not (run_dir / STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume: {run_dir} holds no demo run to continue.")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue that run, or "
                              "choose another --out.")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_settings = run_dir / SETTINGS_NAME
    if resume and saved_settings.is_file():  # a resumed run keeps its budget, sizes and seed
        settings = DemoSettings(**{**json.loads(saved_settings.read_text()), "out": str(run_dir)})
    else:
        saved_settings.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    state = DemoState(run_dir)
    started = time.time() - state.stages.get("elapsed", {}).get("seconds", 0)
    deadline = started + settings.budget_minutes * 60
    print(f"bertkit demo: {run_dir} (budget {settings.budget_minutes:g} min"
          f"{', resuming' if resume else ''})")

    def record(stage: str, result: dict) -> None:
        state.stages["elapsed"] = {"seconds": time.time() - started}
        state.record(stage, result)

    if not state.done("vocab"):
        _stage("1/7 WordPiece vocabulary from the Wikipedia leads")
        from .data import train_vocab_on_corpus

        stage_start = time.time()
        tokenizer = train_vocab_on_corpus(settings.corpus, run_dir / "vocab",
                                          vocab_size=settings.vocab_size)
        print(f"{tokenizer.vocab_size} entries -> {run_dir / 'vocab' / 'vocab.txt'}")
        record("vocab", {"vocab_size": tokenizer.vocab_size, "seconds": time.time() - stage_start})

    if not state.done("data"):
        _stage("2/7 pre-training examples (masked LM + next sentence)")
        from .data import PretrainingConfig, create_pretraining_data, format_summary

        stage_start = time.time()
        shutil.rmtree(run_dir / "data", ignore_errors=True)
        manifest = create_pretraining_data(
            settings.corpus, run_dir / "data", run_dir / "vocab",
            PretrainingConfig(max_seq_length=settings.max_seq_length,
                              max_predictions_per_seq=math.ceil(0.15 * settings.max_seq_length),
                              dupe_factor=settings.dupe_factor, validation_fraction=0.05,
                              seed=settings.seed))
        print(format_summary(manifest))
        record("data", {"seconds": time.time() - stage_start, "summary": manifest["summary"]})

    # The two classifiers that need no pre-training come first: pre-training then gets exactly
    # the time left, less what fine-tuning its own checkpoint takes, which is known by then (the
    # random-init mini is the same network on the same data).
    labels = state.classifiers(settings)
    for number, stage in ((3, "finetune-minilm"), (4, "finetune-random")):
        if not state.done(stage):
            _stage(f"{number}/7 fine-tuning on rt-polarity: {labels[stage]}")
            record(stage, _finetune(run_dir, settings, stage))

    if not state.done("pretrain"):
        _stage("5/7 pre-training a mini BERT (MLM + NSP)")
        from .pretrain import PretrainSettings, pretrain

        stage_start = time.time()
        reserve = 1.2 * state.stages["finetune-random"]["seconds"] + FILL_MASK_AND_REPORT_SECONDS
        minutes = max(MIN_PRETRAIN_MINUTES, (deadline - time.time() - reserve) / 60)
        pretrain_resume = (run_dir / "pretrain" / "checkpoints").is_dir()
        result = pretrain(PretrainSettings(
            data=str(run_dir / "data"), out=str(run_dir / "pretrain"), model=settings.preset,
            batch_size=32, lr=settings.pretrain_lr, beta2=settings.pretrain_beta2,
            dropout=settings.pretrain_dropout, warmup=0.06, budget_minutes=minutes, eval_every=500,
            eval_examples=4096, save_every=500, log_every=10, seed=settings.seed),
            resume=pretrain_resume)
        if result["stopped"]:
            raise KeyboardInterrupt
        record("pretrain", {**result, "seconds": time.time() - stage_start})

    if not state.done("fill-mask"):
        _stage("6/7 fill-mask with the new model")
        record("fill-mask", _fill_mask(run_dir))

    if not state.done("finetune-pretrained"):
        _stage(f"7/7 fine-tuning on rt-polarity: {labels['finetune-pretrained']}")
        record("finetune-pretrained", _finetune(run_dir, settings, "finetune-pretrained"))

    _stage("report")
    report = write_report(run_dir, settings, state)
    record("report", {"path": str(report)})
    print(f"\nEverything is in {run_dir}: report {report}")
    return run_dir


def _finetune(run_dir: Path, settings: DemoSettings, stage: str) -> dict:
    """One of the three rt-polarity classifiers; raises KeyboardInterrupt if it was stopped."""
    from .finetune import finetune

    model = {"finetune-pretrained": str(run_dir / "pretrain" / "model"),
             "finetune-random": settings.preset,
             "finetune-minilm": "all-minilm-l6-v2"}[stage]
    tokenizer = str(run_dir / "vocab") if stage == "finetune-random" else None
    stage_start = time.time()
    out = run_dir / stage
    shutil.rmtree(out, ignore_errors=True)
    minilm = stage == "finetune-minilm"
    result = finetune("classification", model, "rt-polarity", "rt-polarity:validation",
                      "rt-polarity:test", out, tokenizer=tokenizer, lr=5e-5 if minilm else 1e-4,
                      epochs=settings.minilm_epochs if minilm else settings.finetune_epochs,
                      max_train_examples=(settings.minilm_examples if minilm
                                          else settings.finetune_examples),
                      max_eval_examples=settings.eval_examples, seeds=settings.seed,
                      dropout=0.1)  # the paper's, whatever pre-training used
    if result.get("stopped"):
        raise KeyboardInterrupt
    return {"test_accuracy": result["test"]["accuracy"],
            "validation_accuracy": result["validation"]["accuracy"],
            "seconds": time.time() - stage_start, "out": str(out)}


def _fill_mask(run_dir: Path) -> dict:
    """Predictions for common contexts and for masked tokens of held-out examples."""
    from .data import PretrainingDataset
    from .inference import FillMask

    fill = FillMask(run_dir / "pretrain" / "model")
    tokenizer = fill.tokenizer
    templates = []
    texts = list(FILL_MASK_TEMPLATES)
    for text, predictions in zip(texts, fill(texts, top_k=5), strict=True):
        guesses = [(p.token, round(p.score, 3)) for p in predictions[0]]
        sensible = FILL_MASK_TEMPLATES[text]
        templates.append({"text": text, "top5": guesses, "sensible": sorted(sensible),
                          "top1_sensible": guesses[0][0] in sensible,
                          "top5_sensible": any(token in sensible for token, _ in guesses)})
        print(f"  {text:52} " + ", ".join(f"{t} ({s:.2f})" for t, s in guesses)
              + ("  ✓" if templates[-1]["top5_sensible"] else ""))
    first, top5 = _sensible_counts(templates)
    print(f"  a sensible word first for {first} of {len(templates)} contexts, in the top 5 for "
          f"{top5}")
    held_out = []
    validation = PretrainingDataset(run_dir / "data", split="validation")
    for index in range(len(validation)):
        if len(held_out) == HELD_OUT_SHOWN:
            break
        example = validation.arrays(index)
        if example["next_sentence_label"]:  # a random second segment: text that does not read on
            continue
        ids = example["input_ids"].copy()
        ids[example["positions"]] = example["labels"]  # restore the text, then hide one word
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist()) + ["[SEP]"]
        whole_words = [int(p) for p in example["positions"] if tokens[p][0].isalpha()
                       and not tokens[p + 1].startswith("##")]
        if not whole_words:
            continue
        position = whole_words[0]
        truth = int(ids[position])
        ids[position] = tokenizer.mask_token_id
        text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
        text = text.replace("[CLS] ", "").replace(" [SEP]", "").replace("[SEP] ", " ")
        guesses = fill(text, top_k=5)[0]
        answer = tokenizer.convert_ids_to_tokens(truth)
        held_out.append({"text": text, "answer": answer,
                         "top5": [(p.token, round(p.score, 3)) for p in guesses]})
        print(f"  held out: {_around_mask(text)}\n    answer {answer!r}; model: "
              + ", ".join(f"{p.token} ({p.score:.2f})" for p in guesses))
    return {"templates": templates, "held_out": held_out}


def _sensible_counts(templates: list[dict]) -> tuple[int, int]:
    """How many fill-mask contexts have a sensible word first, and in the top 5."""
    return (sum(t["top1_sensible"] for t in templates),
            sum(t["top5_sensible"] for t in templates))


def _around_mask(text: str, width: int = 75) -> str:
    """The words within ``width`` characters of [MASK], for a one-line display."""
    at = text.index("[MASK]")
    start, end = max(0, at - width), min(len(text), at + len("[MASK]") + width)
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")


def _image(path: Path) -> str:
    if not path.is_file():
        return "<p>(no plot)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def write_report(run_dir: Path, settings: DemoSettings, state: DemoState) -> Path:
    """A results table on screen, a bar chart, and a self-contained report.html."""
    from .report import plot_bars

    stages = state.stages
    pre = stages["pretrain"]
    rows = [("held-out masked-token accuracy", f"{pre['val_mlm_accuracy']:.1%} (always the most "
             f"frequent token: {pre['most_frequent_token_accuracy']:.1%})"),
            ("held-out next-sentence accuracy", f"{pre.get('val_nsp_accuracy', 0):.1%}"),
            ("pre-training steps", f"{pre['steps']} ({pre['seconds'] / 60:.1f} min, "
                                   f"{pre['tokens_per_second']:.0f} tokens/s)")]
    accuracies = {}
    classifiers = state.classifiers(settings)
    for stage, label in classifiers.items():
        result = stages[stage]
        accuracies[label] = result["test_accuracy"]
        rows.append((f"rt-polarity test accuracy, {label}",
                     f"{result['test_accuracy']:.1%} ({result['seconds'] / 60:.1f} min)"))
    templates = stages["fill-mask"]["templates"]
    first, top5 = _sensible_counts(templates)
    rows.insert(2, ("fill-mask contexts with a sensible word first / in the top 5",
                    f"{first} / {top5} of {len(templates)}"))
    rows.append(("total time", f"{stages['elapsed']['seconds'] / 60:.1f} min"))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    plot_bars(accuracies, run_dir / "classifiers.png", title="rt-polarity test accuracy",
              ylabel="accuracy")

    def guesses(top5, sensible):
        return ", ".join(f"<b>{escape(w)}</b> ({s:.2f})" if w in sensible
                         else f"{escape(w)} ({s:.2f})" for w, s in top5)

    fill_rows = "".join(
        f"<tr><td>{escape(t['text'])}</td><td>{', '.join(t['sensible'])}</td>"
        f"<td>{guesses(t['top5'], t['sensible'])}</td></tr>" for t in templates)
    held_rows = "".join(
        f"<tr><td>{escape(h['text'])}</td><td>{escape(h['answer'])}</td>"
        f"<td>{guesses(h['top5'], {h['answer']})}</td></tr>"
        for h in stages["fill-mask"]["held_out"])
    table = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows)
    corpus = ("the 10,033 Wikipedia lead sections (wiki-leads)" if settings.corpus == "wiki-leads"
              else settings.corpus)
    html = f"""<!doctype html><meta charset="utf-8"><title>bertkit demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:4px 8px}}table{{border-collapse:collapse}}</style>
<h1>bertkit demo</h1>
<p>A {settings.preset} BERT pre-trained from scratch with masked LM + next sentence prediction
(AdamW {settings.pretrain_lr:g}, β2 {settings.pretrain_beta2:g}, dropout
{settings.pretrain_dropout:g}, length {settings.max_seq_length}) on {escape(corpus)}
(vocabulary of {stages['vocab']['vocab_size']} WordPieces trained on the same text), then
fine-tuned on {settings.finetune_examples or "all"} Rotten Tomatoes snippets
({settings.finetune_epochs} epochs) next to the same model from random initialisation (few labels
are where pre-training shows), and the real all-MiniLM-L6-v2 fine-tuned on
{settings.minilm_examples or "all"} of them ({settings.minilm_epochs} epochs).
Settings: <code>{json.dumps(asdict(settings))}</code></p>
<h2>Results</h2><table>{table}</table>
<h2>Pre-training curves</h2>{_image(run_dir / "pretrain" / "curves.png")}
<h2>Fill-mask</h2><table><tr><th>text</th><th>sensible</th><th>top 5 (sensible in bold)</th></tr>
{fill_rows}</table>
<h3>Held-out sentences</h3>
<table><tr><th>text</th><th>answer</th><th>top 5</th></tr>{held_rows}</table>
<h2>Classifiers</h2>{_image(run_dir / "classifiers.png")}
{"".join(f"<h3>{label}</h3>" + _image(_curves(run_dir / stage))
         for stage, label in classifiers.items())}
"""
    path = run_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _curves(folder: Path) -> Path:
    found = sorted(folder.rglob("*.png"))
    return found[0] if found else folder / "missing.png"


def main_interrupted(run_dir: Path) -> None:
    print(f"\nbertkit demo: interrupted; continue with `bertkit demo --resume --out {run_dir}`",
          file=sys.stderr)
