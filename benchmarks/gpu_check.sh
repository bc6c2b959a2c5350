#!/usr/bin/env bash
# The CUDA path in one run (well under 10 minutes on one GPU): run from the repository root with
# the project's .venv, on a machine with a CUDA GPU and a CUDA build of torch 2.13.
#   1. `base` pre-training steps, bf16 autocast (flash SDPA where it applies), against
#      transformers on the same GPU: tokens/s and MFU against the GPU's measured matmul rate;
#   2. a `torchrun` pre-training run on real text, one process per GPU (NPROC): DDP over NCCL
#      where there are two or more (bertkit runs a one-process job without DDP);
#   3. bf16 inference on the GPU against fp32 on the CPU (cosine of the sentence vectors).
# `DEVICE=cpu SMOKE=1 benchmarks/gpu_check.sh` runs the same steps at toy sizes on a CPU (two
# processes, DDP over gloo): the test suite does, so the script works the day a GPU is at hand.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda}
if [[ -n "${SMOKE:-}" ]]; then
    PRESET=tiny BATCH=4 BENCH_STEPS=1 ROUNDS=1 DDP_STEPS=2 TEXTS=200
else
    PRESET=base BATCH=32 BENCH_STEPS=10 ROUNDS=3 DDP_STEPS=50 TEXTS=3000
fi
if [[ "$DEVICE" == cuda* ]]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
    NPROC=${NPROC:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
else
    NPROC=${NPROC:-2}
fi

echo "== 1. pre-training step, $PRESET $BATCH x 128, bf16 and fp32, against transformers"
"$PY" benchmarks/bench_pretrain.py --device "$DEVICE" --preset "$PRESET" --batch-size "$BATCH" \
    --length 128 --rounds "$ROUNDS" --steps "$BENCH_STEPS"

DDP_BATCH=$(( (BATCH + NPROC - 1) / NPROC * NPROC ))  # the global batch splits evenly
echo "== 2. torchrun, $NPROC process(es): pre-training on real Wikipedia text"
"$PY" -m bertkit data pretrain wiki-leads --out "$OUT/data" --max-seq-length 128 --dupe-factor 1 \
    --no-progress
"$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m bertkit pretrain \
    --data "$OUT/data" --model "$PRESET" --steps "$DDP_STEPS" --batch-size "$DDP_BATCH" --precision bf16 \
    --device "$DEVICE" --out "$OUT/ddp" --log-every 10 --eval-every "$DDP_STEPS"

echo "== 3. bf16 inference on $DEVICE against fp32 on the CPU"
DEVICE=$DEVICE TEXTS=$TEXTS "$PY" - <<'PYTHON'
import json
import os
import time

import numpy as np

import bertkit
from bertkit.embeddings import Embedder

records = json.loads(bertkit.fetch("wiki-leads", quiet=True).read_text())
texts = [records[key]["extract"] for key in sorted(records)][:int(os.environ["TEXTS"])]
cpu = Embedder(device="cpu").encode(texts[:500])
fast = Embedder(device=os.environ["DEVICE"], precision="bf16")
fast.encode(texts[:64])  # warm-up
started = time.perf_counter()
vectors = fast.encode(texts)
seconds = time.perf_counter() - started
cosine = (cpu * vectors[:500]).sum(1)
print(f"{os.environ['DEVICE']} bf16: {len(texts) / seconds:.0f} texts/s; cosine to CPU fp32: "
      f"mean {cosine.mean():.5f}, min {cosine.min():.5f}")
assert np.min(cosine) > 0.99
PYTHON
echo "gpu_check: done ($OUT)"
