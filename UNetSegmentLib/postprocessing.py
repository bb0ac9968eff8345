"""Post-processing of a labelmap on the model grid: one component per structure, no holes."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .morphology import fill_holes, largest_component

__all__ = ["largest_component", "postprocess_labels"]


def postprocess_labels(labels_zyx: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Keep the largest connected component of each label and fill its enclosed holes.

    Holes are filled in 3D and slice by slice (an open-ended tube in z is still
    filled in each slice). Filling only claims voxels that were background, so
    one structure (the transition zone inside the peripheral zone's ring, say)
    is never overwritten by another's holes. Background enclosed by several
    structures goes to the innermost (smallest filled) one: a hole inside the
    transition zone is transition zone, not the peripheral zone around it.
    """
    filled = {}
    for v in values:
        mask = largest_component(labels_zyx == v)
        if not mask.any():
            continue
        mask = fill_holes(mask)
        for z in range(mask.shape[0]):
            if mask[z].any():
                mask[z] = fill_holes(mask[z])
        filled[v] = mask
    out = np.zeros_like(labels_zyx)
    for v in sorted(filled, key=lambda v: np.count_nonzero(filled[v])):
        out[filled[v] & (out == 0) & ((labels_zyx == v) | (labels_zyx == 0))] = v
    return out
