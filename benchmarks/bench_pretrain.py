"""Pre-training step speed: bertkit vs transformers.BertForPreTraining, side by side.

Same config (default: the `mini` preset with the bert-base-uncased vocab), same batch (32 x 128
real Wikipedia tokens with 15% masked and NSP labels), same AdamW settings; the two alternate in
one process so machine noise hits both alike. Prints tokens/s and the ratio to HF fp32, for
bertkit in fp32 and with bf16 autocast, plus model FLOPs utilisation against a measured matmul peak.

    .venv/bin/python benchmarks/bench_pretrain.py [--preset mini] [--rounds 5] [--steps 5]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers

import bertkit
from bertkit.device import autocast
from bertkit.model import BertForPreTraining
from bertkit.tokenizer import BertTokenizer
from bertkit.training import build_optimizer


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype, device: torch.device, size=2048, repeats=10) -> float:
    """Measured FLOP/s of a large square matmul: the machine's practical ceiling."""
    size = size * 4 if device.type == "cuda" else size
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def step_flops(config, batch_size, length, predicted):
    """Model FLOPs of one training step (forward + backward = 3x forward matmul FLOPs)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    tokens = batch_size * length
    encoder = layers * (2 * tokens * (4 * h * h + 2 * h * inter) + 4 * batch_size * length**2 * h)
    decoder = 2 * predicted * (h * h + h * config.vocab_size)
    return 3 * (encoder + decoder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    config = bertkit.BertConfig.from_preset(args.preset)
    reference_config = transformers.BertConfig(**{
        k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                        "num_attention_heads", "intermediate_size")})
    reference = transformers.BertForPreTraining(reference_config)
    ours = BertForPreTraining(config)
    ours.load_state_dict(reference.state_dict(), strict=False)
    reference.to(device), ours.to(device)
    batches = [{k: v.to(device) for k, v in batch.items()}
               for batch in real_batches(args.steps, args.batch_size, args.length)]
    tokens = args.batch_size * args.length

    def reference_optimizer():
        return build_optimizer(reference, lr=1e-4)  # the same AdamW groups and settings

    runs = {
        "transformers fp32": (reference, reference_optimizer(), "fp32"),
        "transformers bf16": (reference, reference_optimizer(), "bf16"),
        "bertkit fp32": (ours, build_optimizer(ours, lr=1e-4), "fp32"),
        "bertkit bf16": (ours, build_optimizer(ours, lr=1e-4), "bf16"),
    }
    def run(model, optimizer, precision):
        model.train()
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            with autocast(device, precision):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return len(batches) * tokens / (time.perf_counter() - start)

    for spec in runs.values():  # warm-up: allocator, kernels, optimizer state
        run(*spec)
    speeds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, spec in runs.items():
            speeds[name].append(run(*spec))

    base = statistics.median(speeds["transformers fp32"])
    predicted = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    flops = step_flops(config, args.batch_size, args.length, predicted)
    peaks = {"fp32": matmul_peak(torch.float32, device),
             "bf16": matmul_peak(torch.bfloat16, device)}
    print(f"preset {args.preset}, batch {args.batch_size} x {args.length}, {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    for name, values in speeds.items():
        median = statistics.median(values)
        precision = name.split()[-1]
        mfu = median / tokens * flops / peaks[precision]
        print(f"{name:18} {median:9.0f} tokens/s   x{median / base:5.2f} vs transformers fp32"
              f"   x{median / statistics.median(speeds['transformers ' + precision]):5.2f} vs "
              f"transformers {precision}"
              f"   MFU {100 * mfu:5.1f}% of measured {precision} peak")


if __name__ == "__main__":
    main()
