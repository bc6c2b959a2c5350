"""The main job end to end at a tiny budget, and its resume after Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bertkit.demo import STATE_NAME, DemoSettings, run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, wiki_leads):
    path = tmp_path_factory.mktemp("corpus") / "leads.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for record in wiki_leads[:150]:
            f.write(json.dumps({"text": record["extract"]}) + "\n")
    return path


def tiny(out, corpus, budget):
    return DemoSettings(out=str(out), budget_minutes=budget, corpus=str(corpus), vocab_size=800,
                        preset="tiny", dupe_factor=1, finetune_examples=48, finetune_epochs=1,
                        minilm_examples=48, eval_examples=48)


def test_ctrl_c_then_resume_finishes_every_stage_without_redoing_any(tmp_path, corpus):
    """One run covers the whole job: it is interrupted during pre-training, then resumed."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        from bertkit.demo import DemoSettings, run
        settings = DemoSettings(out={str(out)!r}, budget_minutes=0.8, corpus={str(corpus)!r},
                                vocab_size=800, preset="tiny", dupe_factor=1,
                                finetune_examples=48, finetune_epochs=1, minilm_examples=48,
                                eval_examples=48)
        try:
            run(settings)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and '"loss"' in log.read_text()):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    before = json.loads((out / STATE_NAME).read_text())
    assert set(before) >= {"vocab", "data", "finetune-minilm", "finetune-random"}
    assert "pretrain" not in before
    shard = next((out / "data" / "train").iterdir())
    shard_time = shard.stat().st_mtime_ns
    saved = sorted((out / "pretrain" / "checkpoints").glob("step-*"))
    assert saved, "the interrupted pre-training saved no checkpoint"

    run(tiny(out, corpus, budget=5), resume=True)  # the run keeps the budget it started with
    after = json.loads((out / STATE_NAME).read_text())
    for stage in ("vocab", "data", "finetune-minilm", "finetune-random"):
        assert after[stage] == before[stage], stage  # not redone
    assert shard.stat().st_mtime_ns == shard_time  # the examples were not rebuilt
    assert after["pretrain"]["steps"] > int(saved[-1].name[5:])  # continued past the stop
    # the minutes of the report: pre-training's own over both sessions, as its steps are
    interrupted = before["interrupted"]["pretrain"]
    assert interrupted > 0 and after["pretrain"]["seconds"] > interrupted
    assert after["elapsed"]["seconds"] > before["elapsed"]["seconds"] + after["pretrain"][
        "seconds"] - interrupted
    for stage in ("fill-mask", "finetune-pretrained", "finetune-random", "finetune-minilm",
                  "report"):
        assert stage in after, stage
    assert 0 <= after["pretrain"]["val_mlm_accuracy"] <= 1
    assert 0 <= after["pretrain"]["most_frequent_token_accuracy"] <= 1
    for template in after["fill-mask"]["templates"]:
        assert len(template["top5"]) == 5
        assert template["top5_sensible"] == any(w in template["sensible"]
                                                for w, _ in template["top5"])
    for stage in ("finetune-pretrained", "finetune-random", "finetune-minilm"):
        assert 0 <= after[stage]["test_accuracy"] <= 1
    assert json.loads((out / "demo_settings.json").read_text())["budget_minutes"] == 0.8
    pretrain_settings = json.loads((out / "pretrain" / "pretrain_settings.json").read_text())
    assert pretrain_settings["budget_minutes"] <= 0.8
    # trained on examples masked at 35%, scored on the held-out documents masked at the paper's
    # 15%
    assert pretrain_settings["data"] == str(out / "data-train")
    assert pretrain_settings["validation_data"] == str(out / "data")
    for folder, rate in (("data-train", 0.35), ("data", 0.15)):
        manifest = json.loads((out / folder / "manifest.json").read_text())
        assert manifest["settings"]["masked_lm_prob"] == rate
    html = (out / "report.html").read_text()
    assert "always the most frequent token" in html and "sensible word first" in html
    assert html.count("data:image/png;base64") >= 3  # curves, bar chart, fine-tuning curves
    for path in ("pretrain/model/model.safetensors", "pretrain/model/vocab.txt",
                 "pretrain/metrics.jsonl", "classifiers.png"):
        assert (out / path).is_file(), path


def test_sigterm_during_fine_tuning_exits_143_and_resume_goes_on_with_that_stage(tmp_path,
                                                                               corpus):
    out = tmp_path / "run"
    flags = ["--out", str(out), "--budget", "0.6", "--corpus", str(corpus), "--vocab-size",
             "800", "--preset", "tiny", "--dupe-factor", "1", "--finetune-examples", "48",
             "--finetune-epochs", "1", "--minilm-examples", "200", "--eval-examples", "48"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bertkit", "demo"]
    process = subprocess.Popen([*command, *flags], env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    log = out / "finetune-minilm" / "metrics.jsonl"
    deadline = time.time() + 300
    while not log.is_file():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what a scheduler sends
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]  # the shell's code for SIGTERM
    assert f"bertkit demo --resume --out {out}" in stderr
    before = json.loads((out / STATE_NAME).read_text())
    assert "finetune-minilm" not in before and {"vocab", "data"} <= set(before)
    assert (out / "finetune-minilm" / "stopped.pt").is_file()

    resumed = subprocess.run([*command, "--resume", "--out", f"{out}/"], env=env, text=True,
                             capture_output=True)  # the same folder, spelled with a slash
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming in epoch" in resumed.stderr, resumed.stderr[:3000]
    after = json.loads((out / STATE_NAME).read_text())
    assert after["vocab"] == before["vocab"] and after["data"] == before["data"]
    # The interrupted stage went on where it stopped: the result of a run never stopped.
    again = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from bertkit.demo import DemoSettings, _finetune
        settings = DemoSettings.from_file({str(out / 'demo_settings.json')!r})
        print(_finetune(Path({str(tmp_path)!r}), settings, "finetune-minilm")["test_accuracy"])
    """)], env=env, text=True, capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert float(again.stdout.split()[-1]) == after["finetune-minilm"]["test_accuracy"]


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_demo_says_when_it_will_train_in_fp32(monkeypatch, capsys, native_bf16):
    from bertkit import demo, device

    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    demo._note_a_slow_machine()
    said = capsys.readouterr().out
    assert ("trains in fp32" in said) is not native_bf16


def test_a_machine_too_slow_for_the_recipe_is_told_the_budget_it_needs(tmp_path):
    """800 steps in 10 minutes after 5 minutes of other stages: the recipe's 1,100 steps take
    13.75 minutes there, so the whole job needs a budget of 19 minutes."""
    from bertkit.demo import RECIPE_STEPS, DemoState, _budget_advice

    state = DemoState(tmp_path)
    state.stages = {"pretrain": {"steps": 800, "seconds": 600.0},
                    "elapsed": {"seconds": 900.0}}
    assert RECIPE_STEPS == 1100
    assert "`bertkit demo --budget 19`" in _budget_advice(DemoSettings(), state)
    assert _budget_advice(DemoSettings(preset="tiny"), state) == ""  # another recipe: no claim
    state.stages["pretrain"]["steps"] = RECIPE_STEPS  # enough steps: nothing to say
    assert _budget_advice(DemoSettings(), state) == ""
