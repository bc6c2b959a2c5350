"""Plots: training curves from a run's JSONL metrics log, bars, confusion matrices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib's pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png_path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    _pyplot().close(fig)
    return png_path


def read_metrics(log_path: str | Path) -> list[dict]:
    """The records of a JSONL metrics log (none if there is no log yet). A faulty last line
    without its newline was cut by a crash while being written (a resumed run redoes its step)
    and is left out; any other faulty line is an error naming it."""
    text = Path(log_path).read_text(encoding="utf-8") if Path(log_path).is_file() else ""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):
                    break
                raise ValueError(f"{log_path}:{number} is not a JSON record ({error}): remove "
                                 "or repair that line.") from None
    return records


def plot_metrics(log_path: str | Path, png_path: str | Path, panels: dict[str, list[str]],
                 x: str = "step", title: str | None = None) -> Path | None:
    """One panel per entry of ``panels`` (panel title -> metric names), curves against ``x``.

    Records missing a metric are skipped for that curve, so training and validation rows can share
    one log; a panel none of whose metrics was logged is left out. Returns the PNG path, or None
    when the log holds nothing to draw yet.
    """
    plt = _pyplot()

    records = read_metrics(log_path)
    curves = {metric: [(r[x], r[metric]) for r in records if x in r and metric in r]
              for metrics in panels.values() for metric in metrics}
    panels = {panel: metrics for panel, metrics in panels.items()
              if any(curves[metric] for metric in metrics)}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, metrics) in zip(axes[0], panels.items(), strict=True):
        for metric in metrics:
            points = curves[metric]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=metric, marker="o" if len(points) < 30 else None)
        ax.set_title(panel)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, png_path)


def plot_bars(values: dict[str, float], png_path: str | Path, title: str, ylabel: str) -> Path:
    """A labelled bar per entry, its value written on top."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(1.8 + 1.9 * len(values), 3.6))
    bars = ax.bar(list(values), list(values.values()), color="#4878a8")
    ax.bar_label(bars, labels=[f"{v:.1%}" if v <= 1 else f"{v:.3g}" for v in values.values()])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, max(values.values()) * 1.1))
    return _save(fig, png_path)


def plot_confusion(matrix: list[list[int]], labels: list[str], png_path: str | Path,
                   title: str | None = None) -> Path:
    """A confusion matrix: rows the gold class, columns the predicted one, each cell its count,
    shaded by the share of its row (the class's recall on the diagonal)."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = 2.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the gold class")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, png_path)
