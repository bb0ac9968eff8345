"""PNG figures for the benchmark report: box plots, learning curves, slice overlays.

Matplotlib runs headless (Agg). Arrays are numpy ``(z, y, x)``; spacings
passed here are ITK ``(x, y, z)`` in mm, as ``sitk.Image.GetSpacing()`` gives.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def box_plot(
    groups: Dict[str, Sequence[float]], ylabel: str, title: str, path: Path, ylim: Optional[Tuple[float, float]] = None
) -> Path:
    """One box (with the individual cases as dots) per group; NaN values are left out and counted in the label."""
    plt = _pyplot()
    names = list(groups)
    data, labels = [], []
    for n in names:
        a = np.asarray(groups[n], dtype=float)
        finite = a[np.isfinite(a)]
        data.append(finite)
        missing = a.size - finite.size
        labels.append(f"{n}\n(n={finite.size}" + (f", {missing} undefined)" if missing else ")"))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 1.5), 4.0))
    ax.boxplot([d if d.size else [math.nan] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=10, alpha=0.7, color="tab:blue", zorder=3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_log(path: Path) -> Dict[str, List[Tuple[int, float]]]:
    """A run's ``log.csv`` (rows ``epoch,key,value``) as ``{key: [(epoch, value), ...]}``."""
    out: Dict[str, List[Tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                out.setdefault(row["key"], []).append((int(row["epoch"]), float(row["value"])))
            except (KeyError, ValueError):
                continue
    return out


def chain_logs(
    logs: Sequence[Dict[str, List[Tuple[int, float]]]],
) -> Tuple[Dict[str, List[Tuple[int, float]]], List[int]]:
    """Logs of consecutive schedules (a run, then a fine-tuning from its weights, ...) as one log.

    Each log's epochs are shifted to follow the previous log's last epoch; returns the joined log
    and the epochs after which a new schedule starts.
    """
    joined: Dict[str, List[Tuple[int, float]]] = {}
    starts: List[int] = []
    offset = 0
    for i, one in enumerate(logs):
        if i:
            starts.append(offset)
        for key, points in one.items():
            joined.setdefault(key, []).extend((e + offset, v) for e, v in points)
        offset += max((e for points in one.values() for e, _ in points), default=0)
    return joined, starts


def learning_curve(log: Dict[str, List[Tuple[int, float]]], path: Path, schedule_starts: Sequence[int] = ()) -> Path:
    """Training loss and validation Dice against epoch, side by side; a dashed line where a new schedule starts."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax in (a1, a2):
        for start in schedule_starts:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
    if "train_loss" in log:
        e, v = zip(*log["train_loss"])
        a1.plot(e, v, color="tab:red")
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss (each run's own)")
    a1.grid(alpha=0.3)
    for key in sorted(k for k in log if k.startswith("val_dice")):
        e, v = zip(*log[key])
        a2.plot(e, v, marker="o", ms=3, label=key[len("val_") :])
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation Dice (model grid)")
    a2.set_ylim(0, 1)
    a2.grid(alpha=0.3)
    if a2.lines:
        a2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mid_slice(ref_zyx: np.ndarray, pred_zyx: np.ndarray) -> int:
    """Index along axis 0 (the acquisition's slice axis) at the middle of the reference (else the prediction)."""
    for m in (ref_zyx > 0, pred_zyx > 0):
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        if zs.size:
            return int((zs[0] + zs[-1]) // 2)
    return ref_zyx.shape[0] // 2


def overlay(
    image_zyx: np.ndarray,
    ref_zyx: np.ndarray,
    pred_zyx: np.ndarray,
    spacing_xyz_mm: Sequence[float],
    title: str,
    path: Path,
    margin_mm: float = 25.0,
) -> Path:
    """The mid-gland slice with the reference (green, solid) and prediction (magenta, dashed) outlines.

    Each labelmap's outline (all its labels together) is drawn thick; where it
    has several labels (zones), their borders are drawn thin.

    The view is cropped to the two masks plus ``margin_mm``; pixels keep their
    true aspect ratio (in-plane spacing).
    """
    plt = _pyplot()
    k = mid_slice(ref_zyx, pred_zyx)
    img, ref, pred = image_zyx[k].astype(float), ref_zyx[k], pred_zyx[k]
    sx, sy = float(spacing_xyz_mm[0]), float(spacing_xyz_mm[1])
    union = (ref > 0) | (pred > 0)
    if union.any():
        ys, xs = np.nonzero(union)
        my, mx = int(margin_mm / sy), int(margin_mm / sx)
        y0, y1 = max(ys.min() - my, 0), min(ys.max() + my + 1, img.shape[0])
        x0, x1 = max(xs.min() - mx, 0), min(xs.max() + mx + 1, img.shape[1])
        img, ref, pred = img[y0:y1, x0:x1], ref[y0:y1, x0:x1], pred[y0:y1, x0:x1]
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0, 1)
    fig, ax = plt.subplots(figsize=(4.2, 4.2 * img.shape[0] * sy / max(img.shape[1] * sx, 1e-6) + 0.4))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=sy / sx, interpolation="nearest")
    h, w = img.shape
    for mask, color, style in ((ref, "lime", "solid"), (pred, "magenta", "dashed")):
        values = np.unique(mask[mask > 0])
        # the outline of all labels (the gland), thick; borders between labels (zones), thin
        parts = [(mask > 0, 1.4)] + ([(mask == v, 0.6) for v in values] if len(values) > 1 else [])
        for m, width in parts:
            # padded by one pixel so a mask touching the border still gets a closed outline
            padded = np.pad(m.astype(float), 1)
            ax.contour(
                np.arange(-1, w + 1),
                np.arange(-1, h + 1),
                padded,
                levels=[0.5],
                colors=color,
                linewidths=width,
                linestyles=style,
            )
    ax.set_title(f"{title}\nslice {k}: reference green, prediction magenta (dashed)", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
