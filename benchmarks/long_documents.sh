#!/usr/bin/env bash
# The README's long-document rows: linux-docs files classified by their top-level folder, cut at
# 128 and at 512 tokens against windows of 128 tokens 96 apart, each with the default recipe
# (all-minilm-l6-v2, lr 3e-5, batch 32, 3 epochs, seed 1) or the finetune options given after OUT,
# then scored on the extra test files. Run it alone: the minutes it prints are the whole runs.
#   benchmarks/long_documents.sh [OUT [FINETUNE OPTIONS...]]
#   benchmarks/long_documents.sh runs/long-10 --lr 5e-5 --batch-size 16 --epochs 10 --patience 3
set -euo pipefail
out=${1:-runs/long-documents}
shift || true
data=$out/data
.venv/bin/python benchmarks/task_data.py long-documents "$data" --per-class 40 --max-chars 4000 \
    --extra-test 60
for run in "cut128 --max-length 128" "cut512 --max-length 512" \
           "windows128 --max-length 128 --doc-stride 96"; do
    read -r name options <<< "$run"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the options are words
    .venv/bin/bertkit finetune --task classification --model all-minilm-l6-v2 --no-progress \
        --train "$data/train.jsonl" --validation "$data/validation.jsonl" \
        --test "$data/test.jsonl" --out "$out/$name" --overwrite $options "$@"
    minutes=$(awk "BEGIN {printf \"%.1f\", ($(date +%s) - $start) / 60}")
    echo "== $name: $minutes min; test-extra.jsonl:"
    .venv/bin/bertkit evaluate --model "$out/$name/best" --data "$data/test-extra.jsonl"
done
