"""Sliding-window inference over a volume larger than the network's patch.

The volume is covered by patch-sized windows whose starts step by
``int(patch * (1 - overlap))`` along each axis, the last window of an axis
being pulled back to end at the border. Each window's output is weighted by a
Gaussian centred on the window (windows are least reliable at their edges) and
the weighted outputs are averaged voxel by voxel. An axis shorter than the
patch is padded on both sides (half before, half after) with ``pad_value`` and
the padding is cropped from the result.

The tiling and the weights are those of MONAI's ``sliding_window_inference``
with ``mode="gaussian"``, ``sigma_scale=0.125`` and constant padding, which the
default model was evaluated with; ``Testing/test_sliding_window.py`` checks
that both give the same output. Having it here keeps MONAI, whose import takes
about two seconds, out of the segmentation path.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

BLEND_MODES = ("gaussian", "constant")
PAD_MODES = ("constant", "edge")
#: Gaussian sigma as a fraction of the patch size along each axis.
SIGMA_SCALE = 0.125
#: Smallest blending weight, so that voxels covered only by window edges still count.
MIN_WEIGHT = 1e-3


def window_starts(size: int, patch: int, overlap: float) -> List[int]:
    """Start indices of the windows along one axis of ``size`` voxels (``size >= patch``)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), not {overlap}")
    if size <= patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    n = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(n)]


def window_count(shape_zyx: Sequence[int], patch_zyx: Sequence[int], overlap: float) -> int:
    """Number of windows over ``shape_zyx`` (axes shorter than the patch count as one window)."""
    n = 1
    for size, patch in zip(shape_zyx, patch_zyx):
        n *= len(window_starts(max(size, patch), patch, overlap))
    return n


def windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> Iterator[Tuple[slice, ...]]:
    """The windows over ``shape`` (each axis at least the patch), as tuples of slices, C order."""
    per_axis = [window_starts(s, p, overlap) for s, p in zip(shape, patch)]

    def rec(axis: int, prefix: Tuple[slice, ...]) -> Iterator[Tuple[slice, ...]]:
        if axis == len(per_axis):
            yield prefix
            return
        for start in per_axis[axis]:
            yield from rec(axis + 1, prefix + (slice(start, start + patch[axis]),))

    return rec(0, ())


def blending_weights(patch: Sequence[int], mode: str = "gaussian") -> np.ndarray:
    """Per-voxel float32 weight of a window's output: a separable Gaussian (peak 1) or ones."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, not {mode!r}")
    if mode == "constant":
        return np.ones(tuple(patch), dtype=np.float32)
    weights = np.ones((), dtype=np.float32)
    for p in patch:
        offset = np.arange(p, dtype=np.float32) - np.float32((p - 1) / 2.0)
        sigma = np.float32(SIGMA_SCALE * p)
        profile = np.exp(-(offset**2) / (np.float32(2.0) * sigma**2)).astype(np.float32)
        weights = weights[..., None] * profile
    floor = max(float(weights.min()), MIN_WEIGHT)
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


def sliding_window(
    x: np.ndarray,
    patch: Sequence[int],
    network: Callable[[np.ndarray], np.ndarray],
    overlap: float = 0.5,
    mode: str = "gaussian",
    pad_value: float = 0.0,
    on_window: Optional[Callable[[int, int], None]] = None,
    pad_mode: str = "constant",
) -> np.ndarray:
    """Run ``network`` over ``x`` (``(1, C, *spatial)``) window by window; returns the blended output.

    ``network`` maps a ``(1, C, *patch)`` float32 window to ``(1, K, *patch)`` float32; the
    result is ``(1, K, *spatial)`` float32. Windows are run one at a time, in C order;
    ``on_window(done, total)`` is called after each. A single window covering the whole
    (padded) input is returned as the network gave it: dividing by its own weights is exact.
    Axes shorter than the patch are padded with ``pad_value`` (``pad_mode="constant"``, as
    MONAI) or by repeating the edge voxels (``"edge"``: no artificial dark slab above the
    top slice or below the bottom one).
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, not {pad_mode!r}")
    if x.ndim != len(patch) + 2 or x.shape[0] != 1:
        raise ValueError(f"expected a (1, C, {len(patch)} spatial axes) array, got shape {tuple(x.shape)}")
    spatial = list(x.shape[2:])
    patch = [int(p) for p in patch]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch, before)]
    if any(before) or any(after):
        pads = [(0, 0), (0, 0)] + list(zip(before, after))
        if pad_mode == "edge":
            x = np.pad(x, pads, mode="edge")
        else:
            x = np.pad(x, pads, mode="constant", constant_values=np.float32(pad_value))
    padded = list(x.shape[2:])
    crop = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(before, spatial))
    tiles = list(windows(padded, patch, overlap))

    if len(tiles) == 1:
        out = np.asarray(network(np.ascontiguousarray(x)), dtype=np.float32)
        if on_window is not None:
            on_window(1, 1)
        return out[crop]

    weights = blending_weights(patch, mode)
    weight_sum = np.zeros(padded, dtype=np.float32)
    for tile in tiles:
        weight_sum[tile] += weights

    out_acc: Optional[np.ndarray] = None
    for i, tile in enumerate(tiles):
        y = np.asarray(network(np.ascontiguousarray(x[(slice(None), slice(None)) + tile])), dtype=np.float32)
        if out_acc is None:
            out_acc = np.zeros([1, y.shape[1]] + padded, dtype=np.float32)
        out_acc[(slice(None), slice(None)) + tile] += y * weights
        if on_window is not None:
            on_window(i + 1, len(tiles))
    assert out_acc is not None
    out_acc /= weight_sum
    return out_acc[crop]
