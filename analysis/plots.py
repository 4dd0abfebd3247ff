"""PNG plots for analysis.report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every function writes one PNG and returns its path, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from train.common.data.sst import LABEL_NAMES as SST5_NAMES

DPI = 100


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _finite(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(x, (int, float))
             and isinstance(y, (int, float)) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_lines(path, title: str, xlabel: str, ylabel: str, lines: dict, *, markers: dict | None = None,
               logy: bool = False) -> Path | None:
    """``lines``: {label: (xs, ys)} drawn as lines; ``markers``: {label: (xs, ys)} drawn as points.

    Steps and epochs are integers: the x axis gets integer ticks.
    """
    markers = markers or {}
    drawn = 0
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in lines.items():
        xs, ys = _finite(xs, ys)
        if xs:
            ax.plot(xs, ys, label=label, linewidth=1.2, marker="." if len(xs) < 30 else None)
            drawn += 1
    for label, (xs, ys) in markers.items():
        xs, ys = _finite(xs, ys)
        if xs:
            ax.plot(xs, ys, label=label, linestyle="--", marker="o")
            drawn += 1
    if not drawn:
        return None
    if logy and all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_bars(path, title: str, values: dict, ylabel: str, *, note: str | None = None,
              color: str = "tab:blue") -> Path | None:
    """One bar per key of ``values`` (None values skipped), each annotated with its value."""
    items = [(k, float(v)) for k, v in values.items()
             if isinstance(v, (int, float)) and math.isfinite(float(v))]
    if not items:
        return None
    fig = _figure(max(4.0, 1.0 + 0.9 * len(items)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    labels, heights = zip(*items, strict=True)
    bars = ax.bar(range(len(items)), heights, color=color)
    ax.set_xticks(range(len(items)))
    tilt = len(items) > 4
    ax.set_xticklabels(labels, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    for bar, h in zip(bars, heights, strict=True):
        ax.annotate(f"{h:.2f}", (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom",
                    fontsize="small")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(max(heights) * 1.15, 1e-9))
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize="small", style="italic")
    return _save(fig, path)


def class_tick_labels(labels, n: int, label_names=None) -> list[str]:
    """Axis labels for n classes: ``label_names`` when it has n entries; else ``labels``, where SST-5's class ids
    0..4 (ints or digit strings, the ``labels`` of a classification run's metrics) become "id name"; else 0..n-1
    (as SST-5 names when n is 5)."""
    if label_names is not None and len(label_names) == n:
        return [str(name) for name in label_names]
    labels = list(labels) if labels and len(labels) == n else list(range(n))
    if [str(label) for label in labels] == [str(i) for i in range(len(SST5_NAMES))]:
        return [f"{i} {name}" for i, name in enumerate(SST5_NAMES)]
    return [str(label) for label in labels]


def plot_confusion(path, matrix, labels: list, title: str, *, label_names: list[str] | None = None) -> Path | None:
    """Rows (gold) normalised to sum 1 for the colours; each cell annotated with its raw count.

    Classes are named as ``class_tick_labels`` says: SST-5's ids 0..4 get their names."""
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.size == 0 or counts.shape[0] != counts.shape[1]:
        return None
    n = counts.shape[0]
    labels = class_tick_labels(labels, n, label_names)
    row_sums = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = max(4.0, 0.8 * n + 2.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of gold row")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(counts[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center",
                    fontsize="x-small", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    return _save(fig, path)


def plot_param_change(path, diff: dict, title: str, encoder_types: tuple[str, ...]) -> Path | None:
    """Heatmap of relative change (layer x module type) for the encoder, plus per-layer bars."""
    cells = {(r["layer"], r["module_type"]): r.get("relative_change")
             for r in diff.get("by_layer_module", [])}
    layers = [r["group"] for r in diff.get("by_layer", []) if r["group"].startswith("encoder.layer.")]
    types = [t for t in encoder_types if any((rec, t) in cells for rec in layers)]
    per_layer = [(r["group"], r.get("relative_change")) for r in diff.get("by_layer", [])]
    if not per_layer:
        return None
    fig = _figure(11.0, max(4.0, 0.4 * len(layers) + 2.0))
    if layers and types:
        ax = fig.add_subplot(1, 2, 1)
        grid = np.array([[cells.get((rec, t)) if cells.get((rec, t)) is not None else np.nan
                          for t in types] for rec in layers], dtype=float)
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax, label="||dW|| / ||W_before||")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize="x-small",
                            color="white")
        ax.set_xticks(range(len(types)))
        ax.set_xticklabels(types, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([rec.replace("encoder.layer.", "layer ") for rec in layers], fontsize="small")
        ax.set_title("encoder: relative change")
        bar_ax = fig.add_subplot(1, 2, 2)
    else:
        bar_ax = fig.add_subplot(1, 1, 1)
    names = [g.replace("encoder.layer.", "layer ") for g, _ in per_layer]
    values = [v if isinstance(v, (int, float)) else np.nan for _, v in per_layer]
    bar_ax.barh(range(len(names)), values, color="tab:orange")
    bar_ax.set_yticks(range(len(names)))
    bar_ax.set_yticklabels(names, fontsize="small")
    bar_ax.invert_yaxis()
    bar_ax.set_xlabel("||dW|| / ||W_before|| (per layer)")
    bar_ax.set_title("per layer")
    bar_ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
