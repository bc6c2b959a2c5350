#!/usr/bin/env bash
# The CUDA path in one run (well under 10 minutes on one GPU): run from the repository root with
# the project's .venv, on a machine with a CUDA GPU and a CUDA build of torch 2.13.
#   1. `base` pre-training steps, bf16 autocast (flash SDPA where it applies), against
#      transformers on the same GPU: tokens/s and MFU against the GPU's measured matmul rate;
#   2. a one-process `torchrun` DDP pre-training run on real text (NCCL);
#   3. bf16 inference on the GPU against fp32 on the CPU (cosine of the sentence vectors).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"

echo "== 1. pre-training step, base 32 x 128, bf16 and fp32, against transformers"
"$PY" benchmarks/bench_pretrain.py --device cuda --preset base --batch-size 32 --length 128 \
    --rounds 3 --steps 10

echo "== 2. torchrun, 1 process, DDP over NCCL: pre-training on real Wikipedia text"
"$PY" -m bertkit data pretrain wiki-leads --out "$OUT/data" --max-seq-length 128 --dupe-factor 1 \
    --no-progress
"$PY" -m torch.distributed.run --nproc_per_node=1 -m bertkit pretrain --data "$OUT/data" \
    --model base --steps 50 --batch-size 32 --precision bf16 --out "$OUT/ddp" --log-every 10 \
    --eval-every 50

echo "== 3. bf16 inference on the GPU against fp32 on the CPU"
"$PY" - <<'PYTHON'
import json
import time

import numpy as np

import bertkit
from bertkit.embeddings import Embedder

records = json.loads(bertkit.fetch("wiki-leads", quiet=True).read_text())
texts = [records[key]["extract"] for key in sorted(records)][:3000]
cpu = Embedder(device="cpu").encode(texts[:500])
gpu = Embedder(device="cuda", precision="bf16")
gpu.encode(texts[:64])  # warm-up
started = time.perf_counter()
vectors = gpu.encode(texts)
seconds = time.perf_counter() - started
cosine = (cpu * vectors[:500]).sum(1)
print(f"GPU bf16: {len(texts) / seconds:.0f} texts/s; cosine to CPU fp32: "
      f"mean {cosine.mean():.5f}, min {cosine.min():.5f}")
assert np.min(cosine) > 0.99
PYTHON
echo "gpu_check: done ($OUT)"
