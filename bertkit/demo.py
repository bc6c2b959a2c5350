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
import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

from . import files
from .config import PRESETS
from .settings import Settings, option

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
# With its default recipe the demo's pre-training reaches ~35% held-out masked-token accuracy
# in this many steps (36.0% and 35.1% at step 1,050 of 1,400-step runs, two seeds, README "The
# demo's recipe"); a slower CPU makes fewer in the budget and stops on the way up, so the report
# says what budget it needs.
RECIPE_STEPS = 1100
RECIPE_FIELDS = ("corpus", "vocab_size", "preset", "dupe_factor", "max_seq_length",
                 "masked_lm_prob", "pretrain_masked_lm_prob", "validation_fraction",
                 "pretrain_batch_size", "pretrain_lr", "pretrain_mlm_bias_prior",
                 "pretrain_sinusoidal_positions", "pretrain_cooccurrence_embeddings",
                 "pretrain_mimetic_attention",
                 "pretrain_beta2", "pretrain_warmup", "pretrain_dropout")
MIN_PRETRAIN_MINUTES = 0.25
HELD_OUT_SHOWN = 4


@dataclass
class DemoSettings(Settings):
    """The demo's whole recipe; saved in the run folder, so the report and --resume see it."""

    out: str | None = option(None, "run folder (default runs/demo-DATE-TIME)")
    budget_minutes: float = option(17.0, "wall time for the whole job (default 17, so that with "
                                   "setting up .venv `make run` ends within 20); pre-training "
                                   "gets what the other stages leave", above=0, flag="--budget",
                                   metavar="MINUTES")
    corpus: str = option("wiki-leads", "a built-in corpus name or files bertkit.data.Corpus "
                         "reads")
    vocab_size: int = option(8192, "WordPiece vocabulary size", at_least=100)
    preset: str = option("mini", "the model size pre-trained and fine-tuned",
                         choices=tuple(PRESETS))
    dupe_factor: int = option(5, "times each document is made into examples", at_least=1)
    # Length 64 (Google's phase 1 uses 128): twice the optimiser steps in the same time, which is
    # what a short run on a CPU is short of (18% held-out masked-token accuracy after 8.6 minutes
    # at 64, against 15% at 128 after 9.6).
    max_seq_length: int = option(64, "tokens per pre-training example", at_least=16)
    masked_lm_prob: float = option(0.15, "share of tokens predicted in the held-out examples "
                                   "the report scores (the paper's)", above=0, at_most=1)
    # More predictions a step for the same encoder work: 35% of the tokens learn faster in a
    # short run than the paper's 15% (Wettig et al. 2023; README, "The demo's recipe"), scored
    # on held-out examples masked at masked_lm_prob, from the same held-out documents.
    pretrain_masked_lm_prob: float = option(0.35, "share of tokens predicted in the training "
                                            "examples", above=0, at_most=1)
    validation_fraction: float = option(0.05, "share of documents held out", above=0, at_most=0.5)
    # The paper's AdamW but with RoBERTa's beta2 and no dropout, which leave the MLM plateau
    # ~1,500 steps sooner in a run this short (README, "The demo's recipe"); fine-tuning puts
    # the paper's dropout back.
    # Batch 64: at the mini size a step of 32 is half overhead, and 64 runs ~1.45x the tokens a
    # second for about the same learning per token. 1.4e-3 stalled on the plateau in the older
    # recipe (zero MLM bias, random positions); in this one it beats 1e-3 (README, "The demo's
    # recipe").
    pretrain_batch_size: int = option(64, "pre-training examples per step", at_least=1)
    pretrain_lr: float = option(1.4e-3, "pre-training peak learning rate", above=0)
    pretrain_mlm_bias_prior: bool = option(True, "start the MLM output bias at the tokens' log "
                                           "frequencies (bertkit pretrain --mlm-bias-prior)")
    pretrain_sinusoidal_positions: bool = option(True, "start the position embeddings at the "
                                                 "Transformer's sinusoids (bertkit pretrain "
                                                 "--sinusoidal-positions)")
    pretrain_cooccurrence_embeddings: bool = option(True, "start the word embeddings at the "
                                                    "corpus's co-occurrence word vectors "
                                                    "(bertkit pretrain "
                                                    "--cooccurrence-embeddings)")
    pretrain_mimetic_attention: bool = option(True, "start the attention layers at mimetic "
                                              "weights (bertkit pretrain --mimetic-attention)")
    pretrain_beta2: float = option(0.98, "pre-training Adam beta2", at_least=0, at_most=1)
    pretrain_warmup: float = option(0.06, "pre-training warm-up share", at_least=0, at_most=1)
    pretrain_dropout: float = option(0.0, "pre-training dropout", at_least=0, at_most=1)
    pretrain_eval_every: int = option(500, "steps between held-out evaluations", at_least=1)
    pretrain_eval_examples: int = option(4096, "held-out examples per evaluation", at_least=1)
    # Pre-trained vs random init on few labels, where pre-training shows (on all 10,202 a
    # random mini catches up with a 10-minute pre-training); MiniLM on all of them, as a user would.
    finetune_examples: int | None = option(2000, "rt-polarity training examples for the "
                                           "pre-trained and the random mini (all-MiniLM-L6-v2 "
                                           "trains on all 10,202)", at_least=1, metavar="N")
    finetune_epochs: int = option(3, "epochs for the two minis", at_least=1)
    finetune_lr: float = option(1e-4, "fine-tuning learning rate of the two minis", above=0)
    finetune_dropout: float = option(0.1, "fine-tuning dropout (the paper's), whatever "
                                     "pre-training used", at_least=0, at_most=1)
    minilm_examples: int | None = option(None, "MiniLM's training examples (default all)",
                                         at_least=1, metavar="N")
    minilm_epochs: int = option(2, "MiniLM's epochs", at_least=1)
    minilm_lr: float = option(5e-5, "MiniLM's fine-tuning learning rate", above=0)
    eval_examples: int | None = option(None, "validation/test examples (default: all)",
                                       at_least=1, metavar="N")
    # Fine-tuning the new checkpoint costs what the random-init one took; this keeps a margin.
    finetune_reserve: float = option(1.2, "time kept for the last fine-tuning, as a multiple of "
                                     "the random-init one's", at_least=1)
    seed: int = option(12345, "random seed")


def _note_a_slow_machine() -> None:
    """Say up front when training will run in fp32: the README's results come from bf16."""
    from .device import choose_device, resolve_precision

    if resolve_precision("auto", choose_device()) == "fp32":
        print("note: no GPU here and no native bf16 on this CPU (AVX512-BF16 or AMX), so every "
              "stage trains in fp32, several times slower than the README's measured run (5.7x "
              "fewer pre-training tokens a second on an AVX2-only CPU). Pre-training gets fewer "
              "steps in this budget and reaches less; --budget 60 gives it more time.")


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
        files.write_json(self.path, self.stages)


def latest_run(root: Path = Path("runs")) -> Path | None:
    runs = sorted(p for p in root.glob("demo-*") if (p / STATE_NAME).is_file())
    return runs[-1] if runs else None


def run(settings: DemoSettings | None = None, resume: bool = False) -> Path:
    """Run (or resume) the demo; returns the run folder. A resumed run keeps the settings it
    was started with (its budget, sizes and seed)."""
    settings = settings or DemoSettings()
    run_dir = Path(settings.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    saved_settings = run_dir / SETTINGS_NAME
    if resume and not (run_dir / STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume: {run_dir} holds no demo run to continue.")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue that run, or "
                              "choose another --out.")
    if resume and saved_settings.is_file():
        settings = DemoSettings.from_file(saved_settings, out=str(run_dir))
    else:
        settings = DemoSettings.from_dict(asdict(settings), out=str(run_dir))
        settings.save(saved_settings)
    demo = Demo(settings, run_dir)
    print(f"bertkit demo: {run_dir} (budget {settings.budget_minutes:g} min"
          f"{', resuming' if resume else ''})")
    _note_a_slow_machine()
    labels = demo.state.classifiers(settings)
    demo.stage("vocab", "1/7 WordPiece vocabulary from the Wikipedia leads", demo.vocabulary)
    demo.stage("data", "2/7 pre-training examples (masked LM + next sentence)", demo.examples)
    # The two classifiers that need no pre-training come first: pre-training then gets exactly
    # the time left, less what fine-tuning its own checkpoint takes, which is known by then (the
    # random-init mini is the same network on the same data).
    for number, stage in ((3, "finetune-minilm"), (4, "finetune-random")):
        demo.stage(stage, f"{number}/7 fine-tuning on rt-polarity: {labels[stage]}",
                   lambda stage=stage: _finetune(run_dir, settings, stage), goes_on=True)
    demo.stage("pretrain", "5/7 pre-training a mini BERT (MLM + NSP)", demo.pretraining,
               goes_on=True)
    demo.stage("fill-mask", "6/7 fill-mask with the new model", lambda: _fill_mask(run_dir))
    demo.stage("finetune-pretrained",
               f"7/7 fine-tuning on rt-polarity: {labels['finetune-pretrained']}",
               lambda: _finetune(run_dir, settings, "finetune-pretrained"), goes_on=True)
    _stage("report")
    report = write_report(run_dir, settings, demo.state)
    demo.record("report", {"path": str(report)})
    print(f"\nEverything is in {run_dir}: report {report}")
    return run_dir


class Demo:
    """The stages of one demo run and the clock they share."""

    def __init__(self, settings: DemoSettings, run_dir: Path):
        self.settings, self.run_dir = settings, run_dir
        self.state = DemoState(run_dir)
        self.started = time.time() - self.state.stages.get("elapsed", {}).get("seconds", 0)
        self.deadline = self.started + settings.budget_minutes * 60

    def record(self, stage: str, result: dict) -> None:
        self.state.stages["elapsed"] = {"seconds": time.time() - self.started}
        self.state.record(stage, result)

    def stage(self, name: str, title: str, work, goes_on: bool = False) -> None:
        """Run ``work`` for a stage not done yet and record its result and time. The time a
        stopped stage spent is recorded too: the total counts it, and a stage that ``goes_on``
        where it stopped (pre-training, fine-tuning) counts it in its own time (its steps are
        all sessions' steps). Such a stage stops on a signal itself, after saving; one that
        came too late to stop it (a fine-tuning run's final scoring) stops the demo after it."""
        if self.state.done(name):
            return
        from .training import GracefulStop, Stopped

        _stage(title)
        stage_start = time.time()
        spent = self.state.stages.get("interrupted", {})
        try:
            with GracefulStop() if goes_on else contextlib.nullcontext() as stop:
                result = work()
        except KeyboardInterrupt:
            self.record("interrupted", {**spent, name: spent.get(name, 0)
                                        + time.time() - stage_start})
            raise
        earlier = spent.get(name, 0) if goes_on else 0  # the others start afresh
        self.record(name, {**result, "seconds": earlier + time.time() - stage_start})
        if stop is not None and stop.requested:
            raise Stopped(stop.exit_code)

    def vocabulary(self) -> dict:
        from .data import train_vocab_on_corpus

        tokenizer = train_vocab_on_corpus(self.settings.corpus, self.run_dir / "vocab",
                                          vocab_size=self.settings.vocab_size)
        print(f"{tokenizer.vocab_size} entries -> {self.run_dir / 'vocab' / 'vocab.txt'}")
        return {"vocab_size": tokenizer.vocab_size}

    def examples(self) -> dict:
        """The training examples, and held-out ones masked at the paper's rate when training
        masks at another (same seed: the same documents held out)."""
        from .data import PretrainingConfig, create_pretraining_data, format_summary

        s = self.settings
        summaries = {}  # folder -> its manifest's summary
        for folder, rate in self._data_folders().items():
            shutil.rmtree(self.run_dir / folder, ignore_errors=True)
            manifest = create_pretraining_data(
                s.corpus, self.run_dir / folder, self.run_dir / "vocab",
                PretrainingConfig(max_seq_length=s.max_seq_length, masked_lm_prob=rate,
                                  max_predictions_per_seq=math.ceil(rate * s.max_seq_length),
                                  dupe_factor=s.dupe_factor,
                                  validation_fraction=s.validation_fraction, seed=s.seed))
            print(f"{folder} ({rate:.0%} of the tokens predicted):\n{format_summary(manifest)}")
            summaries[folder] = manifest["summary"]
        return {"summary": summaries}

    def _data_folders(self) -> dict[str, float]:
        """Folder -> masking rate: "data" is scored (the paper's rate), "data-train" trains."""
        s = self.settings
        if s.pretrain_masked_lm_prob == s.masked_lm_prob:
            return {"data": s.masked_lm_prob}
        return {"data": s.masked_lm_prob, "data-train": s.pretrain_masked_lm_prob}

    def pretraining(self) -> dict:
        """Pre-train for the time the budget leaves; raises `Stopped` if stopped."""
        from .pretrain import SETTINGS_NAME as PRETRAIN_SETTINGS
        from .pretrain import PretrainSettings, pretrain
        from .training import Stopped

        s, out = self.settings, self.run_dir / "pretrain"
        resume = (out / "checkpoints").is_dir() and (out / PRETRAIN_SETTINGS).is_file()
        if resume:  # an interrupted pre-training keeps the settings (and budget) it began with
            settings = PretrainSettings.from_file(out / PRETRAIN_SETTINGS)
        else:
            reserve = (s.finetune_reserve * self.state.stages["finetune-random"]["seconds"]
                       + FILL_MASK_AND_REPORT_SECONDS)
            minutes = max(MIN_PRETRAIN_MINUTES, (self.deadline - time.time() - reserve) / 60)
            shutil.rmtree(out, ignore_errors=True)
            settings = PretrainSettings(
                data=str(self.run_dir / list(self._data_folders())[-1]),
                validation_data=str(self.run_dir / "data"), out=str(out), model=s.preset,
                batch_size=s.pretrain_batch_size, lr=s.pretrain_lr, beta2=s.pretrain_beta2,
                dropout=s.pretrain_dropout, warmup=s.pretrain_warmup, budget_minutes=minutes,
                mlm_bias_prior=s.pretrain_mlm_bias_prior,
                sinusoidal_positions=s.pretrain_sinusoidal_positions,
                cooccurrence_embeddings=s.pretrain_cooccurrence_embeddings,
                mimetic_attention=s.pretrain_mimetic_attention,
                eval_every=s.pretrain_eval_every, eval_examples=s.pretrain_eval_examples,
                save_every=s.pretrain_eval_every, log_every=10, seed=s.seed)
        result = pretrain(settings, resume=resume)
        if result["stopped"]:
            raise Stopped(result["exit_code"])
        return result


def _finetune(run_dir: Path, settings: DemoSettings, stage: str) -> dict:
    """One of the three rt-polarity classifiers; raises `Stopped` if it was stopped. A stage
    stopped before goes on from where it stopped."""
    from .finetune import SETTINGS_FILE, finetune
    from .training import Stopped

    model = {"finetune-pretrained": str(run_dir / "pretrain" / "model"),
             "finetune-random": settings.preset,
             "finetune-minilm": "all-minilm-l6-v2"}[stage]
    tokenizer = str(run_dir / "vocab") if stage == "finetune-random" else None
    out = run_dir / stage
    resume = (out / SETTINGS_FILE).is_file()
    if not resume:  # stopped before its run began
        shutil.rmtree(out, ignore_errors=True)
    minilm = stage == "finetune-minilm"
    result = finetune("classification", model, "rt-polarity", "rt-polarity:validation",
                      "rt-polarity:test", out, tokenizer=tokenizer,
                      lr=settings.minilm_lr if minilm else settings.finetune_lr,
                      epochs=settings.minilm_epochs if minilm else settings.finetune_epochs,
                      max_train_examples=(settings.minilm_examples if minilm
                                          else settings.finetune_examples),
                      max_eval_examples=settings.eval_examples, seeds=settings.seed,
                      dropout=settings.finetune_dropout, resume=resume)
    if result["stopped"]:
        raise Stopped(result["exit_code"])
    return {"test_accuracy": result["test"]["accuracy"],
            "validation_accuracy": result["validation"]["accuracy"], "out": str(out)}


def _fill_mask(run_dir: Path) -> dict:
    """Predictions for common contexts and for masked tokens of held-out examples."""
    from .data import PretrainingDataset
    from .fill_mask import FillMask

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

    rows = _results_table(settings, state)
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    accuracies = {label: state.stages[stage]["test_accuracy"]
                  for stage, label in state.classifiers(settings).items()}
    plot_bars(accuracies, run_dir / "classifiers.png", title="rt-polarity test accuracy",
              ylabel="accuracy")
    path = run_dir / "report.html"
    path.write_text(_report_html(run_dir, settings, state, rows), encoding="utf-8")
    return path


def _results_table(settings: DemoSettings, state: DemoState) -> list[tuple[str, str]]:
    """The results table: (what, value) rows."""
    stages = state.stages
    pre = stages["pretrain"]
    templates = stages["fill-mask"]["templates"]
    first, top5 = _sensible_counts(templates)
    rows = [("held-out masked-token accuracy", f"{pre['val_mlm_accuracy']:.1%} (always the most "
             f"frequent token: {pre['most_frequent_token_accuracy']:.1%})"),
            ("held-out next-sentence accuracy", f"{pre.get('val_nsp_accuracy', 0):.1%}"),
            ("fill-mask contexts with a sensible word first / in the top 5",
             f"{first} / {top5} of {len(templates)}"),
            ("pre-training steps", f"{pre['steps']} ({pre['seconds'] / 60:.1f} min, "
                                   f"{pre['tokens_per_second']:.0f} tokens/s)"
                                   + _budget_advice(settings, state))]
    for stage, label in state.classifiers(settings).items():
        result = stages[stage]
        rows.append((f"rt-polarity test accuracy, {label}",
                     f"{result['test_accuracy']:.1%} ({result['seconds'] / 60:.1f} min)"))
    rows.append(("total time", f"{stages['elapsed']['seconds'] / 60:.1f} min"))
    return rows


def _budget_advice(settings: DemoSettings, state: DemoState) -> str:
    """When the default recipe made too few steps for its results: the budget that gives them
    at the speed this machine showed."""
    pre = state.stages["pretrain"]
    default = DemoSettings()
    if (not pre["steps"] or pre["steps"] >= 0.9 * RECIPE_STEPS
            or any(getattr(settings, f) != getattr(default, f) for f in RECIPE_FIELDS)):
        return ""
    other_stages = state.stages["elapsed"]["seconds"] - pre["seconds"]
    budget = math.ceil((other_stages + RECIPE_STEPS * pre["seconds"] / pre["steps"]) / 60)
    return (f"; the recipe's ~35% needs ~{RECIPE_STEPS:,}: `bertkit demo --budget {budget}` "
            "gives them on this machine")


def _report_html(run_dir: Path, settings: DemoSettings, state: DemoState,
                 rows: list[tuple[str, str]]) -> str:
    """report.html: what was run, the results table, the fill-mask predictions, the plots."""
    stages = state.stages
    table = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows)
    corpus = ("the 10,033 Wikipedia lead sections (wiki-leads)" if settings.corpus == "wiki-leads"
              else settings.corpus)
    fill_rows, held_rows = _fill_mask_rows(stages["fill-mask"])
    return f"""<!doctype html><meta charset="utf-8"><title>bertkit demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:4px 8px}}table{{border-collapse:collapse}}</style>
<h1>bertkit demo</h1>
<p>A {settings.preset} BERT pre-trained from scratch with masked LM + next sentence prediction
(batch {settings.pretrain_batch_size}, AdamW {settings.pretrain_lr:g}, β2
{settings.pretrain_beta2:g}, dropout {settings.pretrain_dropout:g}, length
{settings.max_seq_length}) on {escape(corpus)}
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
         for stage, label in state.classifiers(settings).items())}
"""


def _fill_mask_rows(fill_mask: dict) -> tuple[str, str]:
    """HTML table rows of the fill-mask stage: the common contexts, the held-out sentences."""

    def guesses(top5, sensible):
        return ", ".join(f"<b>{escape(w)}</b> ({s:.2f})" if w in sensible
                         else f"{escape(w)} ({s:.2f})" for w, s in top5)

    contexts = "".join(
        f"<tr><td>{escape(t['text'])}</td><td>{', '.join(t['sensible'])}</td>"
        f"<td>{guesses(t['top5'], t['sensible'])}</td></tr>" for t in fill_mask["templates"])
    held_out = "".join(
        f"<tr><td>{escape(h['text'])}</td><td>{escape(h['answer'])}</td>"
        f"<td>{guesses(h['top5'], {h['answer']})}</td></tr>" for h in fill_mask["held_out"])
    return contexts, held_out


def _curves(folder: Path) -> Path:
    found = sorted(folder.rglob("*.png"))
    return found[0] if found else folder / "missing.png"
