"""Pre-training step speed: bertkit vs transformers.BertForPreTraining, side by side, with MFU.

Same config (default: the `mini` preset with the bert-base-uncased vocab), same batch (32 x 128
real Wikipedia tokens, 15% masked, NSP labels), dropout 0.1, the same AdamW settings, gradient
clipping at 1.0; the runs (bertkit and transformers, each in fp32 and under the same bf16
autocast) alternate in one process so machine noise hits all alike. Before and after timing, the
machine's matmul peak is measured in this run (`benchmarks/peak.py`: fp32 and bf16, 1024² and
2048², best of 3, torch's thread count; the higher of the two is used), and every row gets its
model FLOPs utilisation against the peak of its precision (training = 3x forward matmul FLOPs;
the MLM decoder counted on masked positions only, and the last layer's queries, output and
feed-forward at [CLS] and the masked positions only: what the losses need).

    .venv/bin/python benchmarks/bench_pretrain.py                                 # mini 32 x 128
    .venv/bin/python benchmarks/bench_pretrain.py --preset base --batch-size 8 --rounds 3 --steps 3
    .venv/bin/python benchmarks/bench_pretrain.py --rounds 0 --profile            # op breakdown
    .venv/bin/python benchmarks/bench_pretrain.py --device cuda --preset base     # a GPU

`--precisions auto` (the default) runs fp32, and bf16 where the CPU has AVX512-BF16/AMX (or on a
GPU); on a CPU without them bf16 is emulated ~100x slower than fp32, so it is left out unless
asked for (`--precisions fp32,bf16`). `--profile [fp32|bf16]` (default: the last precision run)
then profiles `--profile-steps` of bertkit's steps at the chosen preset and precision with
torch.profiler and prints the time per phase (forward, backward, clipping, optimiser) and the
top ops by self CPU time; `--rounds 0` skips the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import transformers
from peak import measure_peaks, parse_precisions, synchronize, training_flops

import bertkit
from bertkit.device import autocast, keep_freed_memory
from bertkit.model import BertForPreTraining
from bertkit.tokenizer import BertTokenizer
from bertkit.training import build_optimizer

PHASES = ("forward", "backward", "clip_grad_norm", "optimizer.step", "zero_grad")


def real_batches(count, batch_size, length, seed=0):
    """Wikipedia leads packed into [CLS] A [SEP] B [SEP] rows, 15% of tokens masked (80/10/10)."""
    minilm = bertkit.fetch("all-minilm-l6-v2", quiet=True)
    tokenizer = BertTokenizer.from_pretrained(minilm)
    records = json.loads(bertkit.fetch("wiki-leads", quiet=True).read_text())
    texts = [records[t]["extract"] for t in sorted(records)]
    g = torch.Generator().manual_seed(seed)
    half = (length - 3) // 2
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [x for x in ids if len(x) >= length - half - 3]
    if len(ids) < count * batch_size * 2:
        raise SystemExit(f"only {len(ids)} leads have {length - half - 3}+ tokens; "
                         f"{count} x {batch_size} rows need {count * batch_size * 2}")
    batches = []
    for b in range(count):
        rows = ids[b * batch_size * 2:(b + 1) * batch_size * 2]
        input_ids = torch.tensor([[tokenizer.cls_token_id] + a[:half] + [tokenizer.sep_token_id]
                                  + c[:length - half - 3] + [tokenizer.sep_token_id]
                                  for a, c in zip(rows[::2], rows[1::2], strict=True)])
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[:, half + 2:] = 1
        special = (input_ids == tokenizer.cls_token_id) | (input_ids == tokenizer.sep_token_id)
        picked = (torch.rand(input_ids.shape, generator=g) < 0.15) & ~special
        labels = torch.where(picked, input_ids, -100)
        roll = torch.rand(input_ids.shape, generator=g)
        masked = input_ids.masked_fill(picked & (roll < 0.8), tokenizer.mask_token_id)
        random_ids = torch.randint(0, tokenizer.vocab_size, input_ids.shape, generator=g)
        masked = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
        batches.append(dict(input_ids=masked, token_type_ids=token_type_ids,
                            attention_mask=torch.ones_like(input_ids), labels=labels,
                            next_sentence_label=torch.randint(0, 2, (batch_size,), generator=g)))
    return batches


def reference_config(config: bertkit.BertConfig) -> transformers.BertConfig:
    return transformers.BertConfig(**{
        k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                        "num_attention_heads", "intermediate_size",
                                        "hidden_dropout_prob", "attention_probs_dropout_prob")})


def paired_models(preset: str, dropout: float = 0.1):
    """bertkit's config of ``preset``, transformers' BertForPreTraining of it (seed 0) and
    bertkit's with the same weights."""
    torch.manual_seed(0)
    config = bertkit.BertConfig.from_preset(preset, hidden_dropout_prob=dropout,
                                            attention_probs_dropout_prob=dropout)
    reference = transformers.BertForPreTraining(reference_config(config))
    ours = BertForPreTraining(config)
    ours.load_state_dict(reference.state_dict(), strict=False)
    return config, reference, ours


def train_steps(model, optimizer, precision, batches, device, phases=False) -> float:
    """Seconds for one optimiser step per batch (with ``phases``: each phase labelled for the
    profiler)."""

    def phase(name):
        return torch.profiler.record_function(f"## {name}") if phases else nullcontext()

    model.train()
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        with phase("forward"), autocast(device, precision):
            loss = model(**batch).loss
        with phase("backward"):
            loss.backward()
        with phase("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with phase("optimizer.step"):
            optimizer.step()
        with phase("zero_grad"):
            optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def profile(model, optimizer, precision, batches, device, steps, rows) -> None:
    """Phase times and the top ops by self CPU time of bertkit's step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    chosen = [batches[i % len(batches)] for i in range(steps)]
    train_steps(model, optimizer, precision, chosen[:1], device)  # warm
    with torch_profile(activities=activities) as prof:
        seconds = train_steps(model, optimizer, precision, chosen, device, phases=True)
    averages = prof.key_averages()
    print(f"\n== profile: bertkit {precision}, {steps} steps, {seconds / steps * 1e3:.1f} ms a "
          "step under the profiler")
    total = sum(e.cpu_time_total for e in averages if e.key.startswith("## "))
    for name in PHASES:
        event = next((e for e in averages if e.key == f"## {name}"), None)
        if event is not None:
            print(f"  {name:16} {event.cpu_time_total / 1e3 / steps:9.1f} ms a step "
                  f"{100 * event.cpu_time_total / max(total, 1):5.1f}%")
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden and attention dropout (the demo pre-trains with 0)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds (0: no comparison, e.g. only --profile)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--precisions", default="auto",
                        help="auto (default: fp32, and bf16 where the hardware has it natively), "
                        "or a list such as fp32,bf16")
    parser.add_argument("--profile", nargs="?", const="auto",
                        choices=("auto", "fp32", "bf16", "fp16"),
                        help="then profile bertkit's step in this precision (auto: the last of "
                        "--precisions)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    device = torch.device(args.device)
    # As bertkit's training does (`training.Trainer`); process-wide, so transformers' rows get
    # it too and the ratios understate what a bertkit run gains over a transformers one.
    keep_freed_memory(device)
    precisions = parse_precisions(args.precisions, device)
    skipped = " (bf16 left out: no native bf16 here; --precisions fp32,bf16 forces it)" if (
        args.precisions == "auto" and "bf16" not in precisions) else ""

    print(f"preset {args.preset}, batch {args.batch_size} x {args.length}, {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; precisions "
          f"{','.join(precisions)}{skipped}", flush=True)
    peaks = measure_peaks(device, precisions=precisions)
    print(peaks.line(), flush=True)

    config, reference, ours = paired_models(args.preset, args.dropout)
    reference.to(device), ours.to(device)
    batches = [{k: v.to(device) for k, v in batch.items()}
               for batch in real_batches(args.steps, args.batch_size, args.length)]
    tokens = args.batch_size * args.length
    predicted = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    read = 1 + predicted / args.batch_size  # [CLS] and the masked positions of a sequence
    flops = training_flops(config, [args.length] * args.batch_size, predicted=round(predicted),
                           pooled=args.batch_size, read=[read] * args.batch_size)
    print(f"{sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, "
          f"{predicted:.0f} masked positions a batch, {flops / 1e9:.1f} model GFLOP a step "
          f"(dropout {config.hidden_dropout_prob}, attention impl. of transformers: "
          f"{reference.config._attn_implementation})", flush=True)

    # One AdamW per model (the same groups and settings); fp32 and bf16 steps share it.
    optimizers = {"transformers": build_optimizer(reference, lr=1e-4),
                  "bertkit": build_optimizer(ours, lr=1e-4)}
    runs = {f"{name} {precision}": (model, optimizers[name], precision)
            for name, model in (("transformers", reference), ("bertkit", ours))
            for precision in precisions}
    if args.rounds > 0:
        for spec in runs.values():  # warm-up: allocator, kernels, optimizer state
            train_steps(*spec, batches[:2], device)
        speeds = {name: [] for name in runs}
        for round_number in range(args.rounds):
            for name, spec in runs.items():
                speeds[name].append(len(batches) * tokens / train_steps(*spec, batches, device))
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{name} {s[-1]:,.0f}" for name, s in speeds.items()) + " tokens/s", flush=True)

        peaks = peaks.best(measure_peaks(device, precisions=precisions))  # again, after
        print(peaks.line())
        print(f"\n{'':18} {'tokens/s':>9} {'steps/s':>8} {'x tf ' + precisions[0]:>10} "
              f"{'x tf same precision':>20} {'MFU':>6}  of the measured peak")
        base = statistics.median(speeds[f"transformers {precisions[0]}"])
        for name, values in speeds.items():
            median = statistics.median(values)
            precision = name.split()[-1]
            same = statistics.median(speeds["transformers " + precision])
            mfu = peaks.mfu(median / tokens * flops, precision)
            print(f"{name:18} {median:9,.0f} {median / tokens:8.2f} {median / base:10.2f} "
                  f"{median / same:20.2f} {100 * mfu:5.1f}%  {precision} "
                  f"{peaks[precision] / 1e9:,.0f} GFLOP/s", flush=True)

    if args.profile:
        chosen = precisions[-1] if args.profile == "auto" else args.profile
        profile(ours, optimizers["bertkit"], chosen, batches, device, args.profile_steps,
                args.profile_rows)


if __name__ == "__main__":
    main()
