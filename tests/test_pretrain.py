"""Pre-training end to end on real Wikipedia text: it learns, resumes exactly, scales with DDP,
and its checkpoints are HuggingFace's."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers

from bertkit.data import Corpus, PretrainingConfig, PretrainingDataset, create_pretraining_data
from bertkit.data.shards import TOKENIZER_FOLDER
from bertkit.model import BertForPreTraining
from bertkit.pretrain import (
    BudgetSizer,
    Phases,
    PretrainRun,
    PretrainSettings,
    build_model,
    cooccurrence_vectors,
    load_examples,
    pretrain,
)
from bertkit.pretrain import held_out_metrics as evaluate
from bertkit.settings import SettingsError
from bertkit.tokenizer import BertTokenizer, train_vocab
from bertkit.training import WarmupLinearDecay, read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def build_data(leads, folder, documents, **settings):
    corpus = folder / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for record in leads[:documents]:
            f.write(json.dumps({"text": record["extract"]}) + "\n")
    tokenizer = train_vocab([corpus], vocab_size=1500, out_dir=folder / "vocab")
    config = PretrainingConfig(max_seq_length=64, **settings)
    create_pretraining_data(Corpus(corpus), folder / "data", tokenizer, config, workers=1,
                            progress=False)
    return folder / "data"


@pytest.fixture(scope="module")
def wiki_data(tmp_path_factory, wiki_leads):
    """A few hundred real leads as MLM + NSP examples of length 64 with their own vocab."""
    return build_data(wiki_leads, tmp_path_factory.mktemp("wiki"), 300, dupe_factor=2,
                      validation_fraction=0.05)


def run_cli(*args, wait=True):
    cmd = [sys.executable, "-m", "bertkit", "pretrain", "--precision", "fp32", "--model", "tiny",
           "--log-every", "1", "--eval-every", "1000", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def wait_for(path, process):
    """Wait until the running ``process`` has written ``path``."""
    deadline = time.time() + 300
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)


def step_losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def test_overfits_a_handful_of_examples(tmp_path, wiki_leads):
    data = build_data(wiki_leads, tmp_path, 12, dupe_factor=1, validation_fraction=0.0001)
    train = PretrainingDataset(data)
    assert 8 <= len(train) <= 40
    settings = PretrainSettings(data=str(data), out=str(tmp_path / "run"), model="tiny",
                                batch_size=len(train), steps=150, lr=3e-3, warmup=10,
                                dropout=0.0, precision="fp32", eval_every=1000, log_every=10)
    pretrain(settings)
    losses = step_losses(tmp_path / "run")
    assert losses[150] < 0.2 * losses[10]
    model = BertForPreTraining.from_pretrained(tmp_path / "run" / "model")
    metrics = evaluate(model, train, device=torch.device("cpu"), precision="fp32")
    assert metrics["val_mlm_accuracy"] > 0.9 and metrics["val_nsp_accuracy"] > 0.9


def test_same_loss_and_gradients_as_transformers_on_real_batches(tmp_path, wiki_data):
    run_cli("--data", wiki_data, "--out", tmp_path / "run", "--steps", 3, "--batch-size", 8)
    final = tmp_path / "run" / "model"
    ours = BertForPreTraining.from_pretrained(final)
    theirs = transformers.BertForPreTraining.from_pretrained(final)  # loads as is
    ours.eval(), theirs.eval()
    dataset = PretrainingDataset(wiki_data, split="validation")
    batch = dataset.collate([dataset[i] for i in range(min(8, len(dataset)))])
    a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)
    picked = batch["labels"] != -100
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits[picked], atol=1e-4,
                               rtol=0)
    a.loss.backward()
    b.loss.backward()
    reference = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        expected = reference[name].grad
        # key biases: zero gradient in exact arithmetic, rounding noise of ~1e-12 on both sides
        assert (param.grad - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-10, name


def test_resume_after_sigkill_repeats_the_uninterrupted_run_exactly(tmp_path, wiki_data):
    common = ["--data", wiki_data, "--steps", 12, "--batch-size", 8, "--save-every", 4]
    run_cli(*common, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    process = run_cli(*common, "--out", killed, wait=False)
    wait_for(killed / "checkpoints" / "step-0000004" / "trainer_state.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_cli(*common, "--out", killed, "--resume")
    whole, resumed = step_losses(tmp_path / "whole"), step_losses(killed)
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == whole  # bitwise: same data, masks, dropout and optimiser state


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, wiki_data):
    run = tmp_path / "run"
    process = run_cli("--data", wiki_data, "--out", run, "--steps", 100000, "--batch-size", 8,
                      "--save-every", 100000, wait=False)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() or len(step_losses(run)) < 2:
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]  # the shell's code for SIGINT
    assert "continue with --resume" in stderr
    saved = sorted((run / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and int(saved[0].name[5:]) >= 2


def run_two_ranks(*args, wait=True):
    """`bertkit pretrain` under torchrun, two processes (DDP over gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bertkit", "pretrain", "--precision", "fp32", "--model", "tiny",
           "--log-every", "1", "--eval-every", "1000", *map(str, args)]
    if not wait:  # in a session of its own, which `stop_group` ends whatever happened
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def stop_group(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def test_two_ranks_follow_the_single_process_trajectory(tmp_path, wiki_data):
    common = ["--data", wiki_data, "--steps", 6, "--batch-size", 8, "--dropout", 0.0,
              "--save-every", 6]
    run_cli(*common, "--accumulation", 2, "--out", tmp_path / "single")
    run_two_ranks(*common, "--out", tmp_path / "ddp")
    single, ddp = step_losses(tmp_path / "single"), step_losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, 7))
    for step in single:
        assert abs(single[step] - ddp[step]) <= 1e-5, (step, single[step], ddp[step])
    # rank 0 alone writes: one log record per step, one checkpoint
    records = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 6
    # the accuracies of the whole global batch, not of rank 0's half
    alone = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "loss" in r]
    for key in ("mlm_accuracy", "nsp_accuracy"):
        assert [r[key] for r in records] == [r[key] for r in alone]
    assert [p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()] == ["step-0000006"]


def test_two_ranks_resume_exactly_each_with_its_own_dropout_masks(tmp_path, wiki_data):
    """A DDP run resumed from its step-2 checkpoint repeats the uninterrupted run bit for bit:
    each rank gets its own random states back (rank 0's everywhere would give rank 1 other
    dropout masks). Without NSP, whose pooler and classifier then get no gradient."""
    run_two_ranks("--data", wiki_data, "--steps", 4, "--batch-size", 8, "--save-every", 2,
                  "--no-nsp", "--out", tmp_path)
    whole = step_losses(tmp_path)
    assert sorted(whole) == [1, 2, 3, 4]
    shutil.rmtree(tmp_path / "checkpoints" / "step-0000004")  # back to step 2
    done = run_two_ranks("--resume", "--out", tmp_path)
    assert "random state" not in done.stderr
    assert step_losses(tmp_path) == whole


def worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process for ``rank`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path,
                                                                             wiki_data):
    """Ctrl-C reaches the ranks at different moments; SIGTERM to rank 1 alone is the extreme
    case. All ranks stop after the same step and rank 0 saves (with every rank's random
    states), instead of rank 0 waiting in the all-reduce of a step rank 1 never starts."""
    process = run_two_ranks("--data", wiki_data, "--out", tmp_path, "--steps", 100000,
                            "--batch-size", 8, "--save-every", 100000, wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or len(step_losses(tmp_path)) < 2:
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    os.kill(worker_of_rank(process.pid, 1), signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        stop_group(process)
    assert process.returncode != 0  # torchrun passes on the ranks' codes for a stop
    saved = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert len(saved) == 1, stderr[-3000:]
    assert max(step_losses(tmp_path)) == int(saved[0].name[5:])
    assert stderr.count("continue with --resume") == 1  # rank 0 reports for all
    state = torch.load(saved[0] / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2


def same_vocab_data(phase1, folder, **settings):
    """Examples of the corpus and vocabulary of ``phase1`` (from `build_data`) with other
    settings: a phase-2 folder."""
    tokenizer = BertTokenizer.from_pretrained(phase1 / TOKENIZER_FOLDER)
    create_pretraining_data(Corpus(phase1.parent / "corpus.jsonl"), folder, tokenizer,
                            PretrainingConfig(**settings), workers=1, progress=False)
    return folder


def test_phase_two_takes_the_last_tenth_of_the_steps_and_resumes_where_it_began(tmp_path,
                                                                                  wiki_data):
    """The paper's 128-then-512 schedule (here 64 then 128): the last 10% of the steps read
    --phase2-data; a checkpoint keeps where phase 2 began (a budget's sizings move it)."""
    long = same_vocab_data(wiki_data, tmp_path / "long", max_seq_length=128)
    settings = PretrainSettings(data=str(wiki_data), phase2_data=str(long),
                                out=str(tmp_path / "run"), model="tiny", steps=10, batch_size=4,
                                precision="fp32", eval_every=1000, log_every=1, save_every=5)
    train, _, phase2, _ = load_examples(settings)
    phases = Phases(settings, train, phase2, total_steps=10)
    read = [phases.batch_indices(step)[0] for step in range(10)]
    assert all(d is train for d in read[:9]) and read[9] is phase2
    assert max(len(phase2.arrays(i)["input_ids"]) for i in range(50)) > 64
    pretrain(settings)
    assert sorted(step_losses(tmp_path / "run")) == list(range(1, 11))
    last = tmp_path / "run" / "checkpoints" / "step-0000010"
    assert torch.load(last / "trainer_state.pt", weights_only=True)["phase2_start"] == 9
    shutil.rmtree(last)
    state_file = tmp_path / "run" / "checkpoints" / "step-0000005" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "phase2_start": 7}, state_file)  # as a budget's sizing may leave it
    assert PretrainRun(settings, resume=True).phases.phase2_start == 7


def test_phases_must_agree_on_next_sentence_prediction(tmp_path, wiki_data):
    without = same_vocab_data(wiki_data, tmp_path / "mlm", max_seq_length=128,
                              next_sentence=False)
    settings = PretrainSettings(data=str(wiki_data), phase2_data=str(without),
                                out=str(tmp_path / "run"), model="tiny", steps=2)
    with pytest.raises(ValueError, match="has next-sentence labels and .* has none"):
        load_examples(settings)


def test_data_without_nsp_labels_trains_the_masked_lm_alone(tmp_path, wiki_data):
    """--nsp is the default, but examples built with --no-nsp have no labels for it: the pooler
    and the NSP classifier are frozen, as with --no-nsp (DDP would wait for their gradients)."""
    mlm_only = same_vocab_data(wiki_data, tmp_path / "mlm", max_seq_length=64,
                               next_sentence=False)
    run = PretrainRun(PretrainSettings(data=str(mlm_only), out=str(tmp_path / "run"),
                                       model="tiny", steps=2, batch_size=4, precision="fp32"),
                      resume=False)
    assert not run.nsp
    frozen = [*run.model.bert.pooler.parameters(), *run.model.cls.seq_relationship.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    run.train_step()
    assert all(p.grad is None for p in frozen)


def test_dynamic_masking_draws_new_masks_every_pass_even_within_a_batch(tmp_path, wiki_data):
    """A global batch that crosses into the next pass masks its later examples as that pass's."""
    data = same_vocab_data(wiki_data, tmp_path / "dynamic", max_seq_length=64,
                           dynamic_masking=True)
    train = PretrainingDataset(data)
    batch = 7
    assert len(train) % batch  # batches cross the passes' boundaries
    phases = Phases(PretrainSettings(data=str(data), batch_size=batch), train, None, 10**6)
    rows = np.concatenate([phases.batch_indices(step)[1]
                           for step in range(-(-2 * len(train) // batch))])[:2 * len(train)]
    for number in (0, 1):  # each pass reads every example once, labelled with that pass
        assert sorted(rows[rows[:, 1] == number, 0]) == list(range(len(train)))
    masks = {(int(i), int(n)): train.example(int(i), int(n))["labels"] for i, n in rows}
    changed = [not torch.equal(masks[i, 0], masks[i, 1]) for i in range(len(train))]
    assert sum(changed) >= 0.95 * len(train)


def test_refuses_to_overwrite_a_run_or_resume_nothing(tmp_path, wiki_data):
    settings = PretrainSettings(data=str(wiki_data), out=str(tmp_path / "run"), model="tiny",
                                steps=1, batch_size=4, precision="fp32")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint to resume from"):
        pretrain(settings, resume=True)
    pretrain(settings)
    with pytest.raises(FileExistsError, match="pass --resume"):
        pretrain(settings)


def test_resume_with_no_other_flag_continues_with_the_runs_own_settings(tmp_path, wiki_data):
    # Settings away from the CLI defaults: a resume that fell back to them would differ.
    common = ["--data", wiki_data, "--steps", 10, "--batch-size", 4, "--lr", "1e-3",
              "--save-every", 2]
    run_cli(*common, "--out", tmp_path / "whole")
    run = tmp_path / "stopped"
    process = run_cli(*common, "--out", run, wait=False)
    wait_for(run / "checkpoints" / "step-0000002" / "trainer_state.pt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    settings = (run / "pretrain_settings.json").read_bytes()
    resumed = subprocess.run([sys.executable, "-m", "bertkit", "pretrain", "--resume", "--out",
                              str(run)], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_losses(run) == step_losses(tmp_path / "whole")
    assert (run / "pretrain_settings.json").read_bytes() == settings
    changed = subprocess.run([sys.executable, "-m", "bertkit", "pretrain", "--resume", "--out",
                              str(run), "--batch-size", "32"], env=ENV, capture_output=True,
                             text=True)
    assert changed.returncode == 1
    assert "--batch-size 32 (the run has 4)" in changed.stderr


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, wiki_data):
    common = ["--data", wiki_data, "--steps", 3, "--batch-size", 8]
    run_cli(*common, "--out", tmp_path / "plain")
    run_cli(*common, "--out", tmp_path / "checkpointed", "--gradient-checkpointing")
    plain, checkpointed = step_losses(tmp_path / "plain"), step_losses(tmp_path / "checkpointed")
    assert sorted(plain) == [1, 2, 3]
    for step, loss in plain.items():  # dropout on: the recomputation replays its masks
        assert abs(loss - checkpointed[step]) <= 1e-5, (step, loss, checkpointed[step])


def test_compiled_model_gives_the_same_steps(tmp_path, wiki_data):
    """`--compile` (torch.compile of the model) trains as the eager model does. The fused loss
    then makes its logits with PyTorch's product: inductor lowers oneDNN's only for frozen
    weights, and failed on it (an x86 CPU)."""
    common = ["--data", wiki_data, "--steps", 3, "--batch-size", 8, "--dropout", 0]
    run_cli(*common, "--out", tmp_path / "eager")
    run_cli(*common, "--out", tmp_path / "compiled", "--compile")
    eager, compiled = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert sorted(eager) == [1, 2, 3]
    for step, loss in eager.items():
        assert abs(loss - compiled[step]) <= 1e-4, (step, loss, compiled[step])


def test_mlm_bias_prior_starts_the_model_at_the_token_frequencies(wiki_data):
    """Before any step, a model built with --mlm-bias-prior predicts held-out masked tokens as
    well as the smoothed unigram distribution of the training predictions does; the paper's
    zero bias predicts them uniformly (loss log V)."""
    settings = PretrainSettings(data=str(wiki_data), model="tiny", dropout=0.0)
    train, validation, _, tokenizer = load_examples(settings)
    vocab_size = tokenizer.vocab_size
    counts = np.bincount(train.masked_labels(), minlength=vocab_size) + 1.0
    unigram_loss = -np.log(counts / counts.sum())[validation.masked_labels()].mean()
    losses = {}
    for prior in (True, False):
        torch.manual_seed(0)
        model = build_model(replace(settings, mlm_bias_prior=prior), tokenizer, train)
        losses[prior] = evaluate(model, validation, device=torch.device("cpu"),
                                 precision="fp32")["val_mlm_loss"]
    assert unigram_loss < math.log(vocab_size) - 0.5  # the frequencies carry real information
    assert abs(losses[True] - unigram_loss) < 0.1, (losses, unigram_loss)
    assert abs(losses[False] - math.log(vocab_size)) < 0.1, (losses, math.log(vocab_size))


def test_sinusoidal_positions_tell_offsets_apart_from_the_start(wiki_data):
    """With --sinusoidal-positions a new model's position embeddings are Vaswani et al.'s
    encodings at 3x the paper's std: the similarity of two positions depends only on their
    offset; the paper's random ones (std 0.02) have no such structure. Both stay learned."""
    settings = PretrainSettings(data=str(wiki_data), model="tiny", dropout=0.0)
    train, _, _, tokenizer = load_examples(settings)
    for sinusoidal in (True, False):
        model = build_model(replace(settings, sinusoidal_positions=sinusoidal), tokenizer, train)
        positions = model.bert.embeddings.position_embeddings.weight
        similarity = (positions @ positions.T).detach()
        shift_invariant = torch.allclose(similarity[:-7, :-7], similarity[7:, 7:], atol=1e-6)
        assert shift_invariant == sinusoidal
        assert positions.requires_grad
        std = positions.std().item()
        assert abs(std - 0.06) < 1e-4 if sinusoidal else 0.017 < std < 0.0201  # truncated: 0.0176
        first_pair = positions[:, :2].detach() / positions[0, 1].item()  # column 1 at 0: cos 0
        index = torch.arange(len(positions)).float()
        expected = torch.stack([index.sin(), index.cos()], dim=1)  # Vaswani's lowest wavelength
        assert torch.allclose(first_pair, expected, atol=1e-4) == sinusoidal


def test_cooccurrence_embeddings_start_words_at_the_texts_word_vectors(wiki_data):
    """--cooccurrence-embeddings: the training text with its masks undone gives positive-PMI word
    vectors as good as a dense computation's exact SVD (the same singular values, a subspace as
    close to the matrix); a new model's word embeddings start at them (std 0.06; tokens the text
    lacks, like [MASK], keep their random start), at the paper's random ones without the
    option."""
    settings = PretrainSettings(data=str(wiki_data), model="tiny", dropout=0.0)
    train, _, _, tokenizer = load_examples(settings)
    ids = train.token_ids()
    start = sum(len(train.arrays(i)["input_ids"]) for i in range(3))
    example = train.arrays(3)
    original = example["input_ids"].copy()
    original[example["positions"]] = example["labels"]
    np.testing.assert_array_equal(ids[start:start + len(original)], original)
    assert len(ids) == sum(len(train.arrays(i)["input_ids"]) for i in range(len(train)))
    np.testing.assert_array_equal(train.token_ids(limit=100), ids[:100])
    assert tokenizer.mask_token_id not in ids and tokenizer.mask_token_id in example["input_ids"]

    size, width = tokenizer.vocab_size, 32
    counts = np.zeros((size, size))
    for distance in (1, 2):
        np.add.at(counts, (ids[:-distance], ids[distance:]), 1 / distance)
        np.add.at(counts, (ids[distance:], ids[:-distance]), 1 / distance)
    contexts = counts.sum(0) ** 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * contexts.sum() / np.outer(counts.sum(1), contexts))
    ppmi = np.where(counts > 0, np.maximum(pmi, 0), 0)
    exact = np.linalg.svd(ppmi, compute_uv=False)
    vectors = cooccurrence_vectors(ids, size, width).double().numpy()  # U * sqrt(S)
    singular_values = (vectors ** 2).sum(0)
    np.testing.assert_allclose(singular_values, exact[:width], rtol=0.01)
    directions = vectors / np.sqrt(singular_values)
    # float32 vectors: their dot products are off by a few 1e-7 (one run in many passed 1e-6)
    np.testing.assert_allclose(directions.T @ directions, np.eye(width), atol=1e-5)
    # PMI's spectrum is flat near the cut, so the kept directions are judged by what they keep
    # of the matrix (Eckart-Young: no rank-32 subspace leaves less out than the exact one)
    left_out = np.linalg.norm(ppmi - directions @ (directions.T @ ppmi)) ** 2
    assert left_out <= 1.01 * (exact[width:] ** 2).sum()
    absent = np.bincount(ids, minlength=size) == 0
    assert absent[tokenizer.mask_token_id] and not vectors[absent].any()

    models = {}
    for option in (True, False):
        torch.manual_seed(0)
        models[option] = build_model(replace(settings, cooccurrence_embeddings=option),
                                     tokenizer, train).bert.embeddings.word_embeddings.weight
    words, random = models[True].detach().numpy(), models[False].detach().numpy()
    assert models[True].requires_grad
    vectors = cooccurrence_vectors(ids, size, words.shape[1]).numpy()[~absent]
    np.testing.assert_allclose(words[~absent], vectors * 0.06 / vectors.std(), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(words[absent], random[absent])
    assert not np.allclose(words[~absent], random[~absent])


def test_budget_sizing_follows_a_machine_that_slows_down(monkeypatch):
    """A 100-second budget on a machine whose steps take 0.1 s for the first 300 steps, then
    0.2 s (another job took a core): sized at step 10 and every 300 steps at the recent pace,
    the run ends within its budget, and within a few steps of using it all. A run resumed after
    being sized keeps its length."""
    import bertkit.pretrain as pretrain_module

    clock = [5.0]  # set-up took 5 s of the budget
    monkeypatch.setattr(pretrain_module.time, "perf_counter", lambda: clock[0])
    sizer = BudgetSizer(100 / 60, first_step=0, sizings_done=0, started=0.0)
    step, total, totals = 0, 1_000_000, []
    while step < total:
        clock[0] += 0.1 if step < 300 else 0.2
        step += 1
        new = sizer.new_total(step, total)
        if new is not None:
            total = new
            totals.append((step, new))
    assert totals[0] == (10, 10 + int((100 - 6) / 0.1))  # 950 steps at the first pace
    assert [s for s, _ in totals] == [10, 300, 600]
    assert 100 - 3 * 0.2 < clock[0] <= 100
    resumed = BudgetSizer(100 / 60, first_step=600, sizings_done=3, started=clock[0])
    assert all(resumed.new_total(s, 2_000) is None for s in range(600, 1_500))


def test_a_budget_run_warms_up_from_its_first_sizing(tmp_path, wiki_data, monkeypatch):
    """A run given minutes trains at lr 0 while it measures its pace; its warm-up starts at the
    first sizing, so from there it follows the schedule of a run given that length from the
    start (until a later sizing changes the length)."""
    monkeypatch.setattr(BudgetSizer, "EVERY", 10**9)  # no later sizing
    settings = PretrainSettings(data=str(wiki_data), out=str(tmp_path / "run"), model="tiny",
                                budget_minutes=0.15, batch_size=8, warmup=0.1, lr=1e-3,
                                precision="fp32", eval_every=10_000, log_every=1)
    result = pretrain(settings)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if "lr" in r}  # a step's record holds the lr of the step after it
    first = BudgetSizer.FIRST  # logged before the sizing after it
    assert all(lrs[step] == 0 for step in range(1, first + 1))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sized = WarmupLinearDecay(optimizer, 0.1, result["steps"] - first)  # the length from there
    for step in range(first + 1, result["steps"]):
        optimizer.step()
        sized.step()
        assert lrs[step] == pytest.approx(sized.get_last_lr()[0], rel=1e-6)


def test_a_budget_run_stopped_before_its_first_sizing_resumes_with_what_is_left(
        tmp_path, wiki_data, monkeypatch):
    """A 10-minute run whose first two steps took all 10 minutes (bertkit.pretrain's clock is
    moved on) is stopped by Ctrl-C before it could size itself. Resumed, it measures its pace,
    finds no time left and plans to end after the step that sized it, instead of taking the
    whole budget again (thousands of steps)."""
    import bertkit.pretrain as pretrain_module

    budget_seconds, moved_on = 600, [0.0]
    monkeypatch.setattr(pretrain_module, "time", SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + moved_on[0]))
    train_step = PretrainRun.train_step

    def slow_steps_then_ctrl_c(run):
        record = train_step(run)
        if run.step == 2:
            moved_on[0] += budget_seconds
            os.kill(os.getpid(), signal.SIGINT)
        return record

    settings = PretrainSettings(data=str(wiki_data), out=str(tmp_path / "run"), model="tiny",
                                budget_minutes=budget_seconds / 60, batch_size=8,
                                precision="fp32", eval_every=10_000, log_every=1)
    monkeypatch.setattr(PretrainRun, "train_step", slow_steps_then_ctrl_c)
    assert pretrain(settings)["stopped"]
    monkeypatch.setattr(PretrainRun, "train_step", train_step)
    resumed = PretrainRun(settings, resume=True)
    for _ in range(BudgetSizer.FIRST):
        resumed.train_step()
        resumed.size_to_budget()
    assert resumed.budget.done == 1
    assert resumed.total_steps == resumed.step + 1 == 2 + BudgetSizer.FIRST + 1


def test_mimetic_attention_starts_tokens_attending_near_themselves(wiki_data):
    """--mimetic-attention: each layer starts with W_q = W_k and W_o = -W_v^T at std
    0.64 / sqrt(width) (tiny: 0.057); on real examples a new model's first layer then gives a
    token's neighbourhood (itself and the tokens beside it) several times the attention that
    random weights give, which spread it evenly. Without the option the weights are the paper's
    random ones."""
    settings = PretrainSettings(data=str(wiki_data), model="tiny", dropout=0.0,
                                sinusoidal_positions=True)
    train, _, _, tokenizer = load_examples(settings)
    batch = train.collate([train[i] for i in range(16)])
    near = {}
    for option in (True, False):
        torch.manual_seed(0)
        model = build_model(replace(settings, mimetic_attention=option), tokenizer, train)
        for layer in model.bert.encoder.layer:
            query, key = layer.attention.self.query.weight, layer.attention.self.key.weight
            value = layer.attention.self.value.weight
            output = layer.attention.output.dense.weight
            assert torch.equal(query, key) == option
            assert torch.equal(output, -value.T) == option
            if option:
                assert abs(query.std().item() - 0.64 / 128 ** 0.5) < 0.002
                assert abs(value.std().item() - 0.64 / 128 ** 0.5) < 0.002
        with torch.no_grad():
            probs = model.bert(batch["input_ids"], batch["attention_mask"],
                               batch["token_type_ids"], output_attentions=True).attentions[0]
        offsets = torch.arange(probs.shape[-1])
        band = (offsets[:, None] - offsets[None, :]).abs() <= 1  # [T, T]
        real = batch["attention_mask"].bool()  # the queries of real tokens
        near[option] = probs.masked_fill(~band, 0).sum(-1).transpose(1, 2)[real].mean().item()
    length = batch["attention_mask"].sum(1).float().mean().item()
    assert near[False] < 5 / length  # ~3 of the row's tokens at ~1 / length each
    assert near[True] > 3 * near[False]


def test_validation_data_evaluates_another_folders_held_out_documents(tmp_path, wiki_data):
    """Training examples masked at 25% evaluated on the 15% folder's validation split: the same
    held-out documents (the split follows the seed, not the masking); a folder of another seed
    is refused, since its validation documents may be training documents here."""
    def rebuild(folder, **settings):  # wiki_data's corpus and vocabulary, other settings
        config = PretrainingConfig(max_seq_length=64, dupe_factor=2, validation_fraction=0.05,
                                   **settings)
        create_pretraining_data(Corpus(wiki_data.parent / "corpus.jsonl"), tmp_path / folder,
                                wiki_data / "tokenizer", config, workers=1, progress=False)
        return tmp_path / folder

    masked_more = rebuild("more", masked_lm_prob=0.25, max_predictions_per_seq=16)
    settings = PretrainSettings(data=str(masked_more), validation_data=str(wiki_data))
    train, validation, _, _ = load_examples(settings)
    theirs = PretrainingDataset(wiki_data, split="validation")
    own = PretrainingDataset(masked_more, split="validation")
    assert len(validation) == len(theirs) == len(own) > 0  # the same held-out documents
    np.testing.assert_array_equal(validation.masked_labels(), theirs.masked_labels())
    assert len(own.masked_labels()) > 1.4 * len(theirs.masked_labels())  # 25% against 15%
    other_seed = rebuild("seed", seed=7)
    with pytest.raises(ValueError, match="not built from the same documents"):
        load_examples(replace(settings, validation_data=str(other_seed)))


# -- continued (domain-adaptive) pre-training from a checkpoint folder ----------------------------


def real_leads_data(folder, wiki_leads, tokenizer, **settings):
    """Examples of 30 real leads made with ``tokenizer`` (default length 64)."""
    folder.mkdir(exist_ok=True)
    corpus = folder / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for record in wiki_leads[:30]:
            f.write(json.dumps({"text": record["extract"]}) + "\n")
    config = PretrainingConfig(**{"max_seq_length": 64, "dupe_factor": 1,
                                  "validation_fraction": 0.1, **settings})
    create_pretraining_data(Corpus(corpus), folder / "data", tokenizer, config, workers=1,
                            progress=False)
    return folder / "data"


@pytest.fixture(scope="module")
def uncased_data(tmp_path_factory, wiki_leads, tokenizer):
    """Examples made with all-MiniLM-L6-v2's bert-base-uncased vocabulary."""
    return real_leads_data(tmp_path_factory.mktemp("uncased"), wiki_leads, tokenizer)


def tiny_checkpoint(folder, architecture, tokenizer=None, **config):
    """A small transformers ``architecture`` checkpoint, saved with ``tokenizer``'s files."""
    vocab_size = tokenizer.vocab_size if tokenizer else 30522
    config = transformers.BertConfig(**{
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
        **config})
    torch.manual_seed(0)
    getattr(transformers, architecture)(config).save_pretrained(folder)
    if tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


def test_continued_pretraining_keeps_the_heads_and_saves_what_transformers_loads(
        tmp_path, uncased_data, tokenizer, caplog):
    """From a BertForMaskedLM checkpoint: its MLM head is loaded (the NSP head and pooler are
    new, and said so); the result loads in transformers' BertForPreTraining and
    BertForMaskedLM with bertkit's outputs."""
    checkpoint = tiny_checkpoint(tmp_path / "mlm", "BertForMaskedLM", tokenizer)
    settings = PretrainSettings(data=str(uncased_data), out=str(tmp_path / "run"),
                                model=str(checkpoint), steps=2, batch_size=4, precision="fp32")
    with caplog.at_level("WARNING", logger="bertkit"):
        loaded = PretrainRun(settings, resume=False).model
    assert "initialised new weights bert.pooler*, cls.seq_relationship*" in caplog.text
    reference = dict(transformers.BertForMaskedLM.from_pretrained(checkpoint).named_parameters())
    for name, param in loaded.named_parameters():
        if name in reference:
            torch.testing.assert_close(param, reference[name], atol=0, rtol=0, msg=name)
    assert "cls.predictions.transform.dense.weight" in reference

    pretrain(replace(settings, out=str(tmp_path / "trained")))
    final = tmp_path / "trained" / "model"
    ours = BertForPreTraining.from_pretrained(final).eval()
    theirs = transformers.BertForPreTraining.from_pretrained(final).eval()
    masked_lm = transformers.BertForMaskedLM.from_pretrained(final).eval()
    dataset = PretrainingDataset(uncased_data, split="validation")
    batch = dataset.collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
        c = masked_lm(**{k: v for k, v in batch.items() if k != "next_sentence_label"})
    picked = batch["labels"] != -100
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits[picked], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.prediction_logits, c.logits[picked], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-5,
                               rtol=0)


def test_continued_pretraining_refuses_examples_of_another_vocabulary(
        tmp_path, wiki_leads, uncased_data, wiki_data, tokenizer):
    """Token ids that mean other tokens than the checkpoint's would train it on garbage: other
    tokens, the same tokens in another order, another casing, a checkpoint (folder or bertkit's
    name for one) whose vocabulary cannot be checked, and data rebuilt before a resume."""
    def refused(model, data, match):
        settings = PretrainSettings(data=str(data), out=str(tmp_path / "run"), model=str(model),
                                    steps=1, batch_size=4, precision="fp32")
        with pytest.raises(ValueError, match=match):
            PretrainRun(settings, resume=False)

    checkpoint = tiny_checkpoint(tmp_path / "uncased", "BertForPreTraining", tokenizer)
    refused(checkpoint, wiki_data, "30,522 tokens, the examples' 1,500")
    refused("all-minilm-l6-v2", wiki_data, "30,522 tokens, the examples' 1,500")

    swapped = tiny_checkpoint(tmp_path / "swapped", "BertForPreTraining", tokenizer)
    tokens = (swapped / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens[2000], tokens[2001] = tokens[2001], tokens[2000]
    (swapped / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    (swapped / "tokenizer.json").unlink()
    refused(swapped, uncased_data, f"id 2000 is '{tokens[2000]}' there but '{tokens[2001]}'")

    cased = train_vocab(wiki_data.parent / "corpus.jsonl", vocab_size=1500, lowercase=False)
    lowered = real_leads_data(tmp_path / "lowered", wiki_leads,
                              BertTokenizer(cased.vocab, do_lower_case=True))
    checkpoint_cased = tiny_checkpoint(tmp_path / "cased", "BertForPreTraining", cased)
    refused(checkpoint_cased, lowered, "cased .* lower-cased")

    bare = tiny_checkpoint(tmp_path / "bare", "BertForPreTraining")  # config and weights alone
    refused(bare, uncased_data, "no vocab.txt or tokenizer.json")

    data = tmp_path / "data"
    shutil.copytree(uncased_data, data)
    settings = PretrainSettings(data=str(data), out=str(tmp_path / "resumed"),
                                model=str(checkpoint), steps=2, batch_size=4, save_every=1,
                                precision="fp32")
    pretrain(settings)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-0000002")
    shutil.rmtree(data)
    shutil.copytree(wiki_data, data)  # rebuilt in place with another vocabulary
    with pytest.raises(ValueError, match="step-0000001 .* 30,522 tokens, .* rebuilt"):
        PretrainRun(settings, resume=True)


def test_resume_refuses_data_rebuilt_in_place_with_other_examples(tmp_path, wiki_data):
    """Same vocabulary, other examples: the vocabulary check passes, and the run went on from a
    position among examples it never counted."""
    data = tmp_path / "data"
    shutil.copytree(wiki_data, data)
    settings = PretrainSettings(data=str(data), out=str(tmp_path / "run"), model="tiny",
                                steps=2, batch_size=4, save_every=1, precision="fp32")
    pretrain(settings)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000002")
    PretrainRun(settings, resume=True)  # the same examples: goes on
    shutil.rmtree(data)
    tokenizer = BertTokenizer.from_pretrained(wiki_data / TOKENIZER_FOLDER)
    create_pretraining_data(Corpus(wiki_data.parent / "corpus.jsonl"), data, tokenizer,
                            PretrainingConfig(max_seq_length=64, dupe_factor=1,
                                              validation_fraction=0.05), workers=1,
                            progress=False)  # the same corpus and vocabulary, other examples
    with pytest.raises(SettingsError, match=f"--data {data} holds other examples than when "
                                            r"the run started \(rebuilt in place\?\)"):
        PretrainRun(settings, resume=True)


def test_continued_pretraining_refuses_examples_longer_than_the_checkpoints_positions(
        tmp_path, wiki_leads, uncased_data, tokenizer):
    """Examples past max_position_embeddings would fail at the first step that holds one,
    perhaps hours in (phase 2 starts at 90%): refused before training, saying what to do."""
    checkpoint = tiny_checkpoint(tmp_path / "short", "BertForPreTraining", tokenizer,
                                 max_position_embeddings=48)
    settings = PretrainSettings(data=str(uncased_data), out=str(tmp_path / "run"),
                                model=str(checkpoint), steps=1, batch_size=4, precision="fp32")
    with pytest.raises(ValueError, match="examples of up to 64 tokens .* 48 positions.*"
                                         "--max-seq-length 48"):
        PretrainRun(settings, resume=False)
    long = real_leads_data(tmp_path / "long", wiki_leads, tokenizer, max_seq_length=128)
    fits = tiny_checkpoint(tmp_path / "fits", "BertForPreTraining", tokenizer)  # 64 positions
    with pytest.raises(ValueError, match=f"{long} .* up to 128 tokens .* 64 positions"):
        PretrainRun(replace(settings, model=str(fits), phase2_data=str(long)), resume=False)


def test_continued_pretraining_refuses_options_for_a_new_models_weights(tmp_path, uncased_data,
                                                                        tokenizer):
    """--sinusoidal-positions and the like choose a preset's starting weights: with a checkpoint
    they would change nothing while the run's settings say they were used."""
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint", "BertForPreTraining", tokenizer)
    settings = PretrainSettings(data=str(uncased_data), out=str(tmp_path / "run"),
                                model=str(checkpoint), sinusoidal_positions=True,
                                mlm_bias_prior=True, steps=1, batch_size=4, precision="fp32")
    with pytest.raises(SettingsError, match="--mlm-bias-prior, --sinusoidal-positions set a "
                                            "new model's starting weights.* leave them out"):
        PretrainRun(settings, resume=False)


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_steps_on_a_cpu(tmp_path):
    """benchmarks/gpu_check.sh at toy sizes on the CPU (DDP over gloo in two processes): the
    script has to work the first time a GPU is at hand."""
    env = {**ENV, "OMP_NUM_THREADS": "2", "DEVICE": "cpu", "SMOKE": "1", "OUT": str(tmp_path),
           "PY": sys.executable}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "bertkit bf16" in done.stdout and "x tf same precision" in done.stdout
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    losses = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "loss" in r]
    assert losses and all(math.isfinite(r["loss"]) for r in losses)
    assert "cpu bf16:" in done.stdout and "gpu_check: done" in done.stdout
