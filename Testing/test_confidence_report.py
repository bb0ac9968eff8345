"""training/confidence_report.py: the statistics and the degraded inputs behind docs/uncertainty.md."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_image

from training.confidence_report import degrade, dice, flagged_split, summarize


def test_flagged_split_and_rank_correlation():
    rows = [
        {"case": "a", "dice": 0.9, "confidence": 0.95, "uncertain_fraction": 0.2},
        {"case": "b", "dice": 0.8, "confidence": 0.91, "uncertain_fraction": 0.4},
        {"case": "c", "dice": 0.5, "confidence": 0.80, "uncertain_fraction": 0.9},
    ]
    split = flagged_split(rows, 0.9)
    assert split == {"threshold": 0.9, "n_flagged": 1, "dice_flagged_mean": 0.5, "dice_unflagged_mean": 0.85}
    s = summarize(rows, [0.9])
    assert s["spearman_confidence_vs_dice"]["rho"] == 1.0
    assert s["spearman_uncertain_fraction_vs_dice"]["rho"] == 1.0  # sign flipped: more uncertain, lower Dice
    assert flagged_split(rows, 0.5)["dice_flagged_mean"] is None


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == 0.5 and dice(a, a) == 1.0 and dice(a & False, b & False) == 1.0


@pytest.mark.parametrize("how", ["noise", "coarse"])
def test_degraded_images_stay_on_the_grid_and_differ(how):
    image = synthetic_image(size_xyz=(60, 60, 8))
    out = degrade(image, how)
    assert out.GetSize() == image.GetSize() and np.allclose(out.GetSpacing(), image.GetSpacing())
    a, b = sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(out).astype(float)
    assert np.abs(a - b).mean() > 5
    assert degrade(image, "none") is image
