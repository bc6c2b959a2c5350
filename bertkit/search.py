"""The paper's model selection: fine-tune at every point of a small grid, keep the best on dev.

Section 4.1 of the paper: batch 16/32, learning rate 5e-5/3e-5/2e-5, 2/3/4 epochs, "selected the
best fine-tuning learning rate on the Dev set"; and because fine-tuning is unstable on small data
sets, several random restarts with the best on dev kept. Every point is a full run with its own
schedule; test is scored once, for the chosen point only. Finished points are kept in
``OUT/points/``, so a stopped search continues where it was.
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
import time
from dataclasses import replace
from pathlib import Path

from . import files
from .finetune import (
    GRID,
    FinetuneSettings,
    _finished,
    _format,
    _print,
    _read,
    evaluate,
    final_folder,
    new_run,
)
from .report import plot_bars
from .training import GracefulStop

PAPER_GRID = {"lr": [5e-5, 3e-5, 2e-5], "batch_size": [16, 32], "epochs": [2, 3, 4]}
TABLE_COLUMNS = ("point", "lr", "batch_size", "epochs", "seed", "score", "best_epoch", "seconds")


def grid_points(settings: FinetuneSettings) -> list[dict]:
    """Every (lr, batch_size, epochs) of the grid: a list given in the settings, or the paper's
    values where the setting is left at its default (a single other value fixes it)."""
    defaults = FinetuneSettings.__dataclass_fields__
    axes = []
    for name in GRID:
        value = getattr(settings, name)
        if isinstance(value, list):
            axes.append(value)
        else:
            axes.append(PAPER_GRID[name] if value == defaults[name].default else [value])
    return [dict(zip(GRID, values, strict=True)) for values in itertools.product(*axes)]


def point_name(point: dict, seed: int) -> str:
    return f"lr{point['lr']:g}-batch{point['batch_size']}-epochs{point['epochs']}-seed{seed}"


def point_settings(settings: FinetuneSettings, point: dict, seed: int,
                   out: Path) -> FinetuneSettings:
    """One grid point's run: its values, one seed, no test split (test is scored once, for the
    chosen point); ``data`` is dropped too, or it would give the point its test split back."""
    return replace(settings, **point, search=False, data=None, test=None, seeds=[seed],
                   out=str(out))


def search(settings: FinetuneSettings, work: Path, stop: GracefulStop) -> dict:
    """Run the grid (resuming finished points) and return the search's results."""
    _check_test(settings)
    started = time.time()
    metric, rows, skipped = None, [], 0
    seeds = [settings.seeds[0] + restart for restart in range(settings.restarts)]
    for point, seed in itertools.product(grid_points(settings), seeds):
        folder = work / "points" / point_name(point, seed)
        result = _finished(folder)
        if result is None:
            if settings.budget_minutes and time.time() - started > settings.budget_minutes * 60:
                skipped += 1
                continue
            final = final_folder(settings, work, folder)
            result = new_run(point_settings(settings, point, seed, final), seed, folder,
                             final).run(stop)
            if stop.requested:
                break
        metric = result["metric"]
        rows.append({"point": point_name(point, seed), **point, "seed": seed,
                     "score": result["validation"][metric], "best_epoch": result["best_epoch"],
                     "seconds": result["seconds"]})
        _write_table(work, rows, metric)
    results = {"search": rows, "metric": metric, "points_skipped_for_budget": skipped,
               "seconds": round(time.time() - started, 1)}
    if stop.requested or not rows:
        return results
    return {**results, **_choose(settings, work, rows, metric)}


def _check_test(settings: FinetuneSettings) -> None:
    """The test split, scored only after the whole grid, read and its labels checked first: a
    faulty line or a label training never saw is found before the grid runs, not after."""
    if settings.test is None:
        return
    task = settings.build_task()
    test = _read(task, settings.test, "test", settings.max_eval_examples)
    names = task.label_names(_read(task, settings.train, "train", settings.max_train_examples))
    if names:
        task.check_labels(test, {name: i for i, name in enumerate(names)})


def _choose(settings: FinetuneSettings, work: Path, rows: list[dict], metric: str) -> dict:
    """The best point on validation, copied to ``work/best`` and scored on test once."""
    chosen = max(rows, key=lambda row: row["score"])
    with files.atomic_path(work / "best") as staging:
        shutil.copytree(work / "points" / chosen["point"] / "best", staging)
    _print(f"chosen on validation: {chosen['point']} ({metric} {chosen['score']:.4f})")
    results = {"chosen": chosen, "validation": {metric: chosen["score"]}}
    if settings.test is not None:
        test = evaluate(work / "best", settings.test, split="test",
                        batch_size=settings.eval_batch_size, device=settings.device,
                        precision=settings.precision, max_examples=settings.max_eval_examples,
                        progress=settings.progress)
        _print(f"chosen point on test: {_format(test)}")
        results["test"] = test
    return results


def _write_table(work: Path, rows: list[dict], metric: str) -> None:
    """search.json, search.csv and search.png (validation score per point), as points finish."""
    files.write_json(work / "search.json", {"metric": metric, "points": rows})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(work / "search.csv", table.getvalue())
    plot_bars({row["point"].replace("-seed", "\nseed"): row["score"] for row in rows},
              work / "search.png", title="validation score per point",
              ylabel=f"validation {metric}")
