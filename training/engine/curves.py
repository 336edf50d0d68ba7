"""Loss curves: the stage's loss CSV drawn as a PNG."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def read_loss_csv(path: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Read ``step, split, metric, value`` rows into ``(split, metric) -> [(step, value)]``."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            series[(row["split"], row["metric"])].append((int(row["step"]), float(row["value"])))
    return dict(series)


def plot_loss_curves(csv_path: Path, png_path: Path, *, title: str = "") -> Path | None:
    """Draw every loss series (train and validation) of a loss CSV into one PNG.

    Returns the PNG path, or ``None`` when the CSV has no rows yet.
    """
    if not csv_path.is_file():
        return None
    series = read_loss_csv(csv_path)
    losses = {key: points for key, points in series.items() if "loss" in key[1]}
    metrics = {
        key: points for key, points in series.items() if key[0] == "val" and key not in losses
    }
    if not losses and not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if metrics else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for (split, metric), points in sorted(losses.items()):
        steps, values = zip(*points, strict=True)
        axes[0][0].plot(
            steps, values, label=f"{split} {metric}", marker="." if split == "val" else None
        )
    axes[0][0].set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    axes[0][0].set_title(f"{title} loss" if title else "loss")
    axes[0][0].legend(fontsize="small")
    if metrics:
        for (_, metric), points in sorted(metrics.items()):
            steps, values = zip(*points, strict=True)
            axes[0][1].plot(steps, values, marker="o", label=metric)
        axes[0][1].set_xlabel("step")
        axes[0][1].set_title("validation")
        axes[0][1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(png_path, dpi=80)
    plt.close(figure)
    return png_path


__all__ = ["plot_loss_curves", "read_loss_csv"]
