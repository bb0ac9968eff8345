"""Per-voxel uncertainty and a per-case confidence from the averaged softmax of a prediction.

Inputs are ``probabilities``: numpy float32 ``(K, z, y, x)`` on the model grid, the softmax averaged over
the test-time passes, channel 0 background and channel ``v`` the label value ``v``.

- :func:`entropy_zyx`: the entropy of the averaged softmax at each voxel divided by ``log K``, so 0 is a
  certain voxel and 1 a voxel where every class is equally likely. It counts both the disagreement
  between the flipped passes and the uncertainty within each.
- :func:`uncertainty_image`: that map resampled (linear) onto the input grid, as a float32 image to lay
  over the T2.
- :func:`case_confidence`: the soft Dice between the foreground probability and the hard segmentation,
  ``2 * sum(p * m) / (sum(p) + sum(m))`` on the model grid: the Dice the model expects of its own mask.
  A mask the model is sure of, with a sharp probability edge, gets close to 1; a mask drawn where the
  probability hovers about 0.5, or an empty one, gets less. ``docs/uncertainty.md`` reports how well it
  predicts the Dice against the reference on the held-out cases.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

#: Decimals the uncertainty map keeps.
MAP_DECIMALS = 3


def _check(probabilities: np.ndarray) -> None:
    if probabilities.ndim != 4 or probabilities.shape[0] < 2:
        raise ValueError(f"probabilities must be (K, z, y, x) with K >= 2, not {probabilities.shape}")


def entropy_zyx(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy ``-sum_k p_k log p_k / log K`` per voxel: ``(z, y, x)`` float32 in [0, 1]."""
    _check(probabilities)
    p = np.clip(probabilities.astype(np.float32, copy=False), 1e-7, 1.0)
    h = -(p * np.log(p)).sum(axis=0) / np.float32(np.log(probabilities.shape[0]))
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def uncertainty_image(probabilities: np.ndarray, grid) -> sitk.Image:
    """The normalised entropy as a float32 image on the input grid (``grid``: ``preprocessing.ModelGrid``).

    Voxels of the input grid outside the model grid get 0. Values are rounded to :data:`MAP_DECIMALS`
    decimals, so the certain background is exactly 0 and the file compresses (a tenth of the size).
    """
    model_grid_image = grid.to_image(entropy_zyx(probabilities))
    resampled = sitk.Resample(
        model_grid_image, grid.input_reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    out = sitk.GetImageFromArray(np.round(sitk.GetArrayViewFromImage(resampled), MAP_DECIMALS).astype(np.float32))
    out.CopyInformation(resampled)
    return out


def case_confidence(probabilities: np.ndarray, labels_zyx: Optional[np.ndarray] = None) -> float:
    """Soft Dice of the foreground probability ``1 - p_background`` against the hard foreground mask.

    ``labels_zyx``: the final (post-processed) labels on the model grid; default the argmax. In 0..1;
    0 when nothing is segmented.
    """
    _check(probabilities)
    p = 1.0 - probabilities[0].astype(np.float64)
    mask = (probabilities.argmax(0) != 0) if labels_zyx is None else (labels_zyx != 0)
    denom = p.sum() + mask.sum()
    if mask.sum() == 0 or denom <= 0:
        return 0.0
    return float(2.0 * p[mask].sum() / denom)
