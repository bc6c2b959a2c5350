"""Peak memory of a pre-training step, and the largest batch that fits in a memory budget.

For each preset and sequence length, with and without gradient checkpointing, a fresh process
builds `BertForPreTraining` (bertkit's, or transformers' with the same weights), runs two full
training steps on real Wikipedia rows (15% masked, NSP labels; AdamW, gradient clipping, as
`bench_pretrain.py` does) and reports its peak resident memory (``ru_maxrss``). Memory grows
linearly with the batch (the activations kept for backward), so two batch sizes give the fixed
part (weights, gradients, AdamW's two moments, the runtime) and the part per sequence, hence
the largest batch that fits in ``--budget-gib`` (24 GiB, this machine's memory). One process per
point, so no point inherits another's allocations. fp32 on the CPU; the counts are the same
tensors a GPU would hold.

    .venv/bin/python benchmarks/bench_memory.py                  # base and large, 128 and 512
    .venv/bin/python benchmarks/bench_memory.py --presets base --lengths 128 --systems bertkit
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

GIB = 2**30


def child(system: str, preset: str, length: int, batch: int, checkpointing: bool) -> None:
    """Two training steps in this process; prints its peak resident memory in bytes."""
    import torch
    import transformers
    from bench_pretrain import real_batches, reference_config, train_steps

    from bertkit import BertConfig, BertForPreTraining
    from bertkit.training import build_optimizer

    torch.manual_seed(0)
    batches = real_batches(2, batch, length)
    config = BertConfig.from_preset(preset)
    model = (BertForPreTraining(config) if system == "bertkit"
             else transformers.BertForPreTraining(reference_config(config)))
    if checkpointing:
        model.gradient_checkpointing_enable()
    train_steps(model, build_optimizer(model, lr=1e-4), "fp32", batches, torch.device("cpu"))
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def peak(system: str, preset: str, length: int, batch: int, checkpointing: bool) -> int:
    command = [sys.executable, __file__, "--child", system, preset, str(length), str(batch),
               str(int(checkpointing))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="base,large")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--systems", default="bertkit,transformers")
    parser.add_argument("--batches", default="4,8", help="the two batch sizes measured (1 and 2 "
                        "are too close for the allocator's noise)")
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        system, preset, length, batch, checkpointing = args.child
        child(system, preset, int(length), int(batch), checkpointing == "1")
        return
    small, large = (int(b) for b in args.batches.split(","))
    print(f"peak resident memory of two fp32 training steps, batches {small} and {large}; the "
          f"largest batch in {args.budget_gib:g} GiB extrapolated linearly", flush=True)
    print(f"{'preset':7} {'length':>6} {'system':12} {'checkpointing':>13} {'fixed GiB':>9} "
          f"{'GiB a sequence':>14} {'largest batch':>13}")
    rows = []
    for preset in args.presets.split(","):
        for length in (int(n) for n in args.lengths.split(",")):
            for system in args.systems.split(","):
                for checkpointing in (False, True):
                    low, high = (peak(system, preset, length, b, checkpointing)
                                 for b in (small, large))
                    per_sequence = (high - low) / (large - small)
                    fixed = low - small * per_sequence
                    fits = int((args.budget_gib * GIB - fixed) // per_sequence)
                    rows.append(dict(preset=preset, length=length, system=system,
                                     checkpointing=checkpointing, peak_bytes={small: low,
                                                                              large: high},
                                     fixed_bytes=fixed, bytes_per_sequence=per_sequence,
                                     largest_batch=fits))
                    switch = "on" if checkpointing else "off"
                    print(f"{preset:7} {length:6} {system:12} {switch:>13} {fixed / GIB:9.2f} "
                          f"{per_sequence / GIB:14.3f} {fits:13,}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
