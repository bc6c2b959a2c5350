"""The shared training machinery: optimiser groups, schedule, LAMB, steps, checkpoints, stops."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from bertkit.config import BertConfig
from bertkit.device import choose_device, resolve_precision
from bertkit.model import BertForPreTraining, BertForSequenceClassification
from bertkit.training import (
    Checkpoints,
    GracefulStop,
    Lamb,
    NonFiniteLoss,
    Trainer,
    build_optimizer,
    parameter_groups,
    read_metrics,
    truncate_metrics,
    warmup_linear_decay,
)

TINY = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32)


def tiny_classifier(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        **TINY, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def batch(seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return dict(input_ids=torch.randint(1, 200, (size, 12), generator=g),
                attention_mask=torch.ones(size, 12, dtype=torch.long),
                labels=torch.randint(0, 2, (size,), generator=g))


def test_no_weight_decay_on_biases_and_layernorm():
    model = tiny_classifier()
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)]
               for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_warmup_then_linear_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_linear_decay(optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([(12 - s) / 8 for s in range(4, 12)])


def test_accumulated_micro_batches_equal_one_large_batch():
    """Two halves with accumulation give the same update as the whole batch at once."""
    whole, halves = tiny_classifier(dropout=0.0), tiny_classifier(dropout=0.0)
    updates = []
    for model, parts in ((whole, [batch(size=8)]),
                         (halves, [{k: v[:4] for k, v in batch(size=8).items()},
                                   {k: v[4:] for k, v in batch(size=8).items()}])):
        optimizer = build_optimizer(model, lr=1e-3)
        trainer = Trainer(model, optimizer, warmup_linear_decay(optimizer, 1, 10),
                          device=torch.device("cpu"))
        trainer.step(parts)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(updates[0], updates[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # the gradients clipped / left alone
def test_clipping_inside_the_fused_optimizer_is_clip_grad_norm(max_norm):
    """Trainer's clipping (the fused AdamW dividing by the norm as it reads the gradients)
    gives the parameters of torch's clip_grad_norm_ then the step, over several steps."""
    models = tiny_classifier(dropout=0.0), tiny_classifier(dropout=0.0)
    optimizers = [build_optimizer(m, lr=1e-2) for m in models]
    assert all(o.defaults["fused"] for o in optimizers)
    trainer = Trainer(models[0], optimizers[0], torch.optim.lr_scheduler.ConstantLR(
        optimizers[0], factor=1.0), device=torch.device("cpu"), max_grad_norm=max_norm)
    norms = []
    for seed in range(4):
        trainer.step([batch(seed)])
        models[1](**batch(seed))["loss"].backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(models[1].parameters(), max_norm)))
        optimizers[1].step()
        optimizers[1].zero_grad(set_to_none=True)
        assert not hasattr(optimizers[0], "grad_scale")
    assert (max(norms) < max_norm) == (max_norm > 1)
    for ours, reference in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_gradient_norms_taken_as_written_are_torchs_bit_for_bit():
    """The norms the Trainer's hooks take as backward writes each gradient (on CPU, for the last
    of two micro-batches) give exactly torch's total norm of the finished gradients."""
    model = tiny_classifier(dropout=0.0)
    optimizer = build_optimizer(model, lr=1e-2)
    trainer = Trainer(model, optimizer, torch.optim.lr_scheduler.ConstantLR(
        optimizer, factor=1.0), device=torch.device("cpu"), max_grad_norm=0.05)
    norms, totals = trainer.gradient_norms, []

    def checked(parameters, gradients):
        ours = type(norms).total(norms, parameters, gradients)
        assert torch.equal(ours, torch.nn.utils.get_total_norm(gradients))
        # every gradient's norm came from a hook but the kept word embeddings'
        assert set(norms.norms) == set(parameters) - {model.bert.embeddings.word_embeddings.weight}
        totals.append(ours)
        return ours

    norms.total = checked
    for seed in range(3):
        trainer.step([{k: v[:4] for k, v in batch(seed).items()},
                      {k: v[4:] for k, v in batch(seed).items()}])
    assert len(totals) == 3 and all(total > 0.05 for total in totals)


def test_kept_word_embedding_gradients_are_the_dense_ones():
    """On CPU the Trainer adds the word embeddings' sparse gradient into one kept tensor. Over
    steps whose batches touch other rows, with two micro-batches each and the gradient clipped
    (its norm from the rows of the step), the parameters follow plain autograd's dense
    gradient; outside a step the lookups are dense again (for anything else that trains the
    model), and an MLM decoder's tied matrix is left to autograd."""
    models = tiny_classifier(dropout=0.0), tiny_classifier(dropout=0.0)
    optimizers = [build_optimizer(m, lr=1e-2) for m in models]
    trainer = Trainer(models[0], optimizers[0], torch.optim.lr_scheduler.ConstantLR(
        optimizers[0], factor=1.0), device=torch.device("cpu"), max_grad_norm=0.05)
    word_embeddings = models[0].bert.embeddings.word_embeddings
    assert trainer.embedding_gradients.embeddings == [word_embeddings]
    for seed in range(4):
        halves = [{k: v[:4] for k, v in batch(seed).items()},
                  {k: v[4:] for k, v in batch(seed).items()}]
        trainer.step(halves)
        assert not word_embeddings.sparse
        for half in halves:
            (models[1](**half)["loss"] / 2).backward()
        norm = torch.nn.utils.clip_grad_norm_(models[1].parameters(), 0.05)
        assert norm > 0.05  # clipped: the norm counts
        optimizers[1].step()
        optimizers[1].zero_grad(set_to_none=True)
    for ours, reference in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    kept, _, _ = trainer.embedding_gradients.kept[word_embeddings]
    assert kept.abs().sum(1).count_nonzero() == len(set(batch(3)["input_ids"].flatten().tolist()))

    pretraining = BertForPreTraining(BertConfig(**TINY))
    optimizer = build_optimizer(pretraining)
    assert not Trainer(pretraining, optimizer, warmup_linear_decay(optimizer, 1, 10),
                       device=torch.device("cpu")).embedding_gradients.embeddings


def test_lamb_step_is_adam_rescaled_by_the_trust_ratio():
    weight = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    weight.grad = torch.tensor([0.5, 0.25])
    Lamb([weight], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01).step()
    # First step: m_hat = g, v_hat = g^2, so Adam's direction is g/|g| (+ decay), trust |w|/|u|.
    update = torch.tensor([1.0, 1.0]) / (1 + 1e-6 / torch.tensor([0.5, 0.25])) \
        + 0.01 * torch.tensor([3.0, -4.0])
    expected = torch.tensor([3.0, -4.0]) - 0.1 * (5.0 / update.norm()) * update
    torch.testing.assert_close(weight.detach(), expected)


def test_lamb_learns():
    model = tiny_classifier(dropout=0.0)
    optimizer = Lamb(parameter_groups(model, 0.01), lr=0.05)
    trainer = Trainer(model, optimizer, warmup_linear_decay(optimizer, 1, 100),
                      device=torch.device("cpu"))
    losses = [trainer.step([batch()])[1] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_nonfinite_loss_stops_or_skips():
    model = tiny_classifier()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    optimizer = build_optimizer(model)
    trainer = Trainer(model, optimizer, warmup_linear_decay(optimizer, 1, 10),
                      device=torch.device("cpu"))
    with pytest.raises(NonFiniteLoss, match="loss became nan at step 1.*last good checkpoint"):
        trainer.step([batch()])
    trainer.skip_nonfinite = True
    trainer.step([batch()])
    assert trainer.skipped_steps == 1


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    model = tiny_classifier()
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step in (10, 20, 30):
        checkpoints.save(step, model, None, {"note": step})
    assert [p.name for p in checkpoints.all()] == ["step-0000020", "step-0000030"]
    checkpoints.save(10_000_000, model, None, {"note": 0})  # past 7 digits: still the latest
    assert [p.name for p in checkpoints.all()] == ["step-0000030", "step-10000000"]
    shutil.rmtree(checkpoints.latest())
    (tmp_path / ".tmp-step-0000040").mkdir()  # a save that died midway is never "latest"
    (tmp_path / "step-0000050").mkdir()  # nor is a folder without its trainer state
    assert checkpoints.latest().name == "step-0000030"
    state = Checkpoints.load_state(checkpoints.latest())
    assert state["step"] == 30 and state["note"] == 30
    reloaded = BertForSequenceClassification.from_pretrained(checkpoints.latest())
    torch.testing.assert_close(reloaded.classifier.weight, model.classifier.weight)


def test_graceful_stop_turns_a_signal_into_a_flag():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_nested_graceful_stops_share_one_request_and_a_second_signal_still_interrupts():
    """A demo stage (outer) around a fine-tuning run (inner): a signal the inner block got too
    late to act on stops the outer one; one the outer got first stops the inner one at once;
    a second Ctrl-C in either is the default KeyboardInterrupt."""
    with GracefulStop() as outer:
        with GracefulStop() as inner:
            os.kill(os.getpid(), signal.SIGINT)
            assert inner.requested and not outer.requested
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert outer.requested and outer.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # after the inner block too
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    with GracefulStop() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        with GracefulStop() as inner:
            assert inner.requested and inner.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert GracefulStop._active == []


PAGE_FAULTS_OF_A_STEP = """
import resource, sys, torch
from bertkit import BertConfig
from bertkit.device import keep_freed_memory
from bertkit.model import BertForPreTraining
if sys.argv[1] == "keep":
    keep_freed_memory(torch.device("cpu"))
else:  # glibc's default threshold, pinned: glibc raises it by itself at a random step, or never
    import ctypes
    from bertkit.device import M_MMAP_THRESHOLD
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
torch.manual_seed(0)
model = BertForPreTraining(BertConfig.from_preset("mini", vocab_size=1000))
ids = torch.randint(5, 1000, (32, 64))
def step():
    model(ids, labels=ids, next_sentence_label=torch.zeros(32, dtype=torch.long)).loss.backward()
for _ in range(3):
    step()
faults = []
for _ in range(7):  # the median step: the heap may still grow once in a while, then holds
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[3])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_cpu_step_reuses_the_memory_the_last_one_freed():
    """glibc maps a step's activations afresh each step (until it happens to free a mapped
    block large enough to raise its own threshold); bertkit's processes keep them."""
    faults = {how: float(subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_A_STEP, how],
                                        capture_output=True, text=True, check=True).stdout)
              for how in ("glibc", "keep")}
    assert faults["glibc"] > 5000  # 4 KiB pages: tens of MB a step
    assert faults["keep"] < faults["glibc"] / 10


def test_a_bare_cuda_device_is_this_ranks_gpu(monkeypatch):
    """`--device cuda` under torchrun: each rank on its own GPU (LOCAL_RANK), not all on GPU 0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert choose_device("cuda") == torch.device("cuda", 1)
    assert choose_device(None) == torch.device("cuda", 1)
    assert choose_device("cuda:0") == torch.device("cuda", 0)
    assert choose_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        choose_device("cuda")


@pytest.mark.parametrize("capability,precision", [((7, 0), "fp16"), ((8, 0), "bf16"),
                                                   ((9, 0), "bf16")])
def test_auto_precision_on_a_gpu_is_bf16_only_where_it_is_native(monkeypatch, capability,
                                                                  precision):
    """A V100 or T4 only emulates bf16 (torch.cuda.is_bf16_supported() says yes): fp16 there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == precision


def test_a_resumed_run_drops_a_log_line_a_crash_cut_and_the_steps_it_redoes(tmp_path):
    """SIGKILL while a record is written leaves half a line: resuming from the checkpoint of
    step 2 keeps steps 1-2 and drops the rest (it would have stopped on a JSON error)."""
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.4}'
                   '\n{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(log)] == [1, 2, 3]
    truncate_metrics(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')  # damage inside: named, not skipped
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON record"):
        read_metrics(log)
