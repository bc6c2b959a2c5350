"""Pre-training data at two corpus sizes: throughput, and memory that does not grow with the corpus.

Runs `bertkit data pretrain` end to end, as a user would, with Google's defaults (max_seq_length
128, dupe_factor 10, ...) on

* the full built-in ``wiki-leads`` corpus (6.5 MB of text), and
* the Linux and Python documentation (32 MB), and a corpus of more than 100 MB: the same read
  several times,

and reports raw-text MB/s, CPU seconds per MB (which, unlike MB/s, does not depend on what else
the machine runs), and the peak memory of the whole process tree (the main process and its
workers), sampled from /proc: the sum of PSS (memory shared between processes counted once) and
of RSS, and the largest single process's peak RSS (getrusage). Google's create_pretraining_data.py
holds the whole corpus and every example in memory; here the peak should stay flat.

    .venv/bin/python benchmarks/bench_data.py            # about 7 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_data.py --repeat 1 --dupe-factor 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertkit.data import fetch_corpus


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux /proc)."""
    pids, index = [root], 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(child) for child in f.read().split()]
        except OSError:  # the process ended meanwhile
            continue
    return pids


def memory_kib(pid: int, field: str, file: str) -> int:
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(sources: list[str], out: Path, dupe_factor: int, workers: int | None) -> dict:
    """One `bertkit data pretrain` run, its memory sampled every 50 ms."""
    command = [sys.executable, "-m", "bertkit", "data", "pretrain", *sources, "--out", str(out),
               "--dupe-factor", str(dupe_factor), "--no-progress"]
    if workers:
        command += ["--workers", str(workers)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak_pss = peak_rss = peak_main = 0
    while process.poll() is None:
        tree = process_tree(process.pid)
        pss = [memory_kib(p, "Pss", "smaps_rollup") for p in tree]
        peak_pss, peak_main = max(peak_pss, sum(pss)), max(peak_main, pss[0])
        peak_rss = max(peak_rss, sum(memory_kib(p, "VmRSS", "status") for p in tree))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"bertkit data pretrain failed:\n{stderr}")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    output_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "text_mb": summary["text_mb"],
        "examples": sum(summary["examples"].values()),
        "tokens": summary["tokens"],
        "seconds_in_pipeline": summary["seconds"],
        "seconds_wall": round(wall, 1),
        "mb_per_second": summary["mb_per_second"],
        "mb_per_second_wall": round(summary["text_mb"] / wall, 3),
        # cores / cpu_seconds_per_mb: the MB/s that many idle cores would give.
        "cpu_seconds_per_mb": round(cpu / summary["text_mb"], 2),
        "peak_tree_pss_mb": round(peak_pss / 1024, 1),
        "peak_tree_rss_mb": round(peak_rss / 1024, 1),
        "peak_main_process_pss_mb": round(peak_main / 1024, 1),
        "output_mb": round(output_bytes / 1e6, 1),
        "workers": summary["workers"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4,
                        help="times the Linux + Python docs are read for the large corpus (4: "
                        "130 MB)")
    parser.add_argument("--dupe-factor", type=int, default=10, help="Google's default: 10")
    parser.add_argument("--workers", type=int, help="processes (default: one per core)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    for name in ("wiki-leads", "linux-docs", "python-docs"):
        fetch_corpus(name)  # downloads are not part of the timing

    # The same documentation once and `repeat` times: the same text at two sizes, so any growth
    # of memory would be the corpus size's doing, not the text's.
    docs = ["linux-docs", "python-docs"]
    cases = {"wiki-leads": ["wiki-leads"], "linux+python docs x1": docs,
             f"linux+python docs x{args.repeat}": docs * args.repeat}
    results = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        for name, sources in cases.items():
            results[name] = run(sources, scratch / "out", args.dupe_factor, args.workers)
            shutil.rmtree(scratch / "out")
            print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in results[name].items()),
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    largest_process_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print()
    names = list(results)
    large = results[names[-1]]
    for name in names[:-1]:
        small = results[name]
        print(f"{name} -> {names[-1]}: corpus {large['text_mb'] / small['text_mb']:.1f}x larger,"
              f" peak memory of the process tree (PSS) {small['peak_tree_pss_mb']:,} MB -> "
              f"{large['peak_tree_pss_mb']:,} MB "
              f"({large['peak_tree_pss_mb'] / small['peak_tree_pss_mb']:.2f}x)")
    print(f"largest single process {largest_process_mb:,.0f} MB; {os.cpu_count()} cores; "
          f"dupe_factor {args.dupe_factor}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
