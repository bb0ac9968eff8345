"""Anatomy checks of a predicted mask against its reference, without SimpleITK (the trainer's validation uses them)."""

from __future__ import annotations

from typing import Dict

import numpy as np


def anatomy_checks(pred_zyx: np.ndarray, ref_zyx: np.ndarray) -> Dict[str, float]:
    """Connected components of the prediction and its coverage of the reference, slice by slice.

    ``components``: 26-connected components of ``pred_zyx``; ``ref_slices``: slices
    along axis 0 (z, the image's slice axis) holding reference voxels;
    ``slices_missed``: how many of those have no predicted voxel on the reference.
    Floats, so they summarise like the other metrics.
    """
    from scipy import ndimage

    pred = np.asarray(pred_zyx, dtype=bool)
    ref = np.asarray(ref_zyx, dtype=bool)
    _, n = ndimage.label(pred, structure=np.ones((3, 3, 3), dtype=bool))
    labelled = ref.any(axis=(1, 2))
    hit = (pred & ref).any(axis=(1, 2))
    return {
        "components": float(n),
        "ref_slices": float(labelled.sum()),
        "slices_missed": float((labelled & ~hit).sum()),
    }
