"""Render the extension's icons and its screenshot mock-up: ``python Resources/render_images.py``.

The screenshot is a mock-up, not a capture of Slicer: a synthetic T2 case
(``UNetSegmentLib.synthetic``) with its zonal labels as the overlay, beside a
drawing of the module's panel. It says so in the image.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ORANGE = (216 / 255, 160 / 255, 102 / 255)


def synthetic_case():
    from UNetSegmentLib.synthetic import make_case

    image, label = make_case(seed=3, size_xyz=(160, 160, 24), zones=False, gland_ml=45.0)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    label_zyx = sitk.GetArrayFromImage(label)
    return sitk.GetArrayFromImage(image).astype(float), label_zyx, float((label_zyx == 1).sum()) * voxel_ml


def overlay(ax, slice_yx: np.ndarray, label_yx: np.ndarray, aspect: float = 1.0) -> None:
    lo, hi = np.percentile(slice_yx, (1, 99.5))
    ax.imshow(slice_yx, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="bilinear")
    rgba = np.zeros(label_yx.shape + (4,))
    rgba[label_yx == 1] = (*ORANGE, 0.45)
    ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    ax.contour(label_yx > 0, levels=[0.5], colors=[ORANGE], linewidths=1.2)
    ax.set_axis_off()


def render_icon(path: Path, array_zyx: np.ndarray, label_zyx: np.ndarray) -> None:
    k = int(np.argmax((label_zyx > 0).sum(axis=(1, 2))))
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    overlay(ax, array_zyx[k, 30:130, 30:130], label_zyx[k, 30:130, 30:130])
    ax.text(
        0.5, 0.06, "UNet", color="white", ha="center", va="bottom", fontsize=13, weight="bold", transform=ax.transAxes
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_screenshot(path: Path, array_zyx: np.ndarray, label_zyx: np.ndarray, gland_ml: float) -> None:
    fig = plt.figure(figsize=(12, 6.4), dpi=100, facecolor=(0.93, 0.93, 0.93))
    panel = fig.add_axes((0.01, 0.02, 0.30, 0.96))
    panel.set_xlim(0, 1)
    panel.set_ylim(0, 1)
    panel.set_axis_off()
    rows = [
        ("Inputs", True),
        ("T2 volume:   MRProstate", False),
        ("Segmentation:   Create new segmentation", False),
        ("Model", True),
        ("Prostate whole gland (T2w MRI) (1.0.0)", False),
        ("Device:   Automatic (GPU if available)", False),
        ("Quality:   Standard", False),
        ("[x] Show 3D", False),
    ]
    y = 0.96
    for text, header in rows:
        panel.text(
            0.03, y, ("v  " if header else "     ") + text, fontsize=10, weight="bold" if header else "normal", va="top"
        )
        y -= 0.05
    panel.add_patch(
        FancyBboxPatch((0.03, y - 0.07), 0.94, 0.06, boxstyle="round,pad=0.005", fc=(0.85, 0.88, 0.95), ec="gray")
    )
    panel.text(0.5, y - 0.04, "Segment Prostate", ha="center", va="center", fontsize=12, weight="bold")
    y -= 0.11
    panel.text(0.03, y, "Done in 38 s on cpu.", fontsize=9, va="top")
    y -= 0.06
    panel.text(0.03, y, "v  Results", fontsize=10, weight="bold", va="top")
    for name, ml in (("Structure", "Volume (mL)"), ("Prostate", f"{gland_ml:.1f}")):
        y -= 0.045
        panel.text(0.08, y, name, fontsize=9, va="top")
        panel.text(0.70, y, ml, fontsize=9, va="top")
    for text in (">  Log", ">  Advanced"):
        y -= 0.06
        panel.text(0.03, y, text, fontsize=10, weight="bold", va="top")

    k = int(np.argmax((label_zyx > 0).sum(axis=(1, 2))))
    j = int(np.argmax((label_zyx > 0).sum(axis=(0, 2))))
    i = int(np.argmax((label_zyx > 0).sum(axis=(0, 1))))
    views = [
        ((0.33, 0.30, 0.33, 0.66), array_zyx[k], label_zyx[k], 1.0, "Axial"),
        ((0.67, 0.30, 0.32, 0.66), array_zyx[:, :, i][::-1], label_zyx[:, :, i][::-1], 3.0 / 0.6, "Sagittal"),
        ((0.33, 0.02, 0.66, 0.26), array_zyx[:, j][::-1], label_zyx[:, j][::-1], 3.0 / 0.6, "Coronal"),
    ]
    for rect, img, lab, aspect, title in views:
        ax = fig.add_axes(rect, facecolor="black")
        overlay(ax, img, lab, aspect)
        ax.set_title(title, fontsize=9, loc="left")
    fig.text(
        0.995,
        0.005,
        "Mock-up rendered from synthetic data (not a Slicer screen capture)",
        ha="right",
        va="bottom",
        fontsize=8,
        style="italic",
    )
    fig.savefig(path, dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    array_zyx, label_zyx, gland_ml = synthetic_case()
    render_icon(REPO / "Resources" / "UNetSegment.png", array_zyx, label_zyx)
    render_icon(REPO / "UNetSegment" / "Resources" / "Icons" / "UNetSegment.png", array_zyx, label_zyx)
    render_screenshot(REPO / "Resources" / "Screenshot01.png", array_zyx, label_zyx, gland_ml)


if __name__ == "__main__":
    main()
