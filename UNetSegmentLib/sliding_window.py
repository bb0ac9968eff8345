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
from typing import Callable, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F

BLEND_MODES = ("gaussian", "constant")
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


def blending_weights(
    patch: Sequence[int], mode: str = "gaussian", device: torch.device | str = "cpu", dtype=torch.float32
) -> torch.Tensor:
    """Per-voxel weight of a window's output: a separable Gaussian (peak 1) or ones."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, not {mode!r}")
    if mode == "constant":
        return torch.ones(tuple(patch), device=device, dtype=dtype)
    weights = torch.ones((), dtype=torch.float32, device=device)
    for p in patch:
        offset = torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2.0
        sigma = SIGMA_SCALE * p
        profile = torch.exp(-(offset**2) / (2.0 * sigma**2))
        weights = weights.unsqueeze(-1) * profile
    floor = max(float(weights.min()), MIN_WEIGHT)
    return weights.clamp(min=floor).to(dtype)


def sliding_window(
    x: torch.Tensor,
    patch: Sequence[int],
    network: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    mode: str = "gaussian",
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Run ``network`` over ``x`` (``(1, C, *spatial)``) window by window; returns the blended output.

    ``network`` maps a ``(1, C, *patch)`` window to ``(1, K, *patch)`` (float32); the result is
    ``(1, K, *spatial)`` float32 on ``x``'s device. Windows are run one at a time, in C order.
    """
    if x.dim() != len(patch) + 2 or x.shape[0] != 1:
        raise ValueError(f"expected a (1, C, {len(patch)} spatial axes) tensor, got shape {tuple(x.shape)}")
    spatial = list(x.shape[2:])
    patch = [int(p) for p in patch]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch, before)]
    if any(before) or any(after):
        pads: List[int] = []
        for b, a in zip(reversed(before), reversed(after)):  # F.pad takes the last axis first
            pads += [b, a]
        x = F.pad(x, pads, mode="constant", value=pad_value)
    padded = list(x.shape[2:])

    weights = blending_weights(patch, mode, device=x.device)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=x.device)
    tiles = list(windows(padded, patch, overlap))
    for tile in tiles:
        weight_sum[tile] += weights

    out: torch.Tensor | None = None
    for tile in tiles:
        y = network(x[(slice(None), slice(None)) + tile])
        if out is None:
            out = torch.zeros([1, y.shape[1]] + padded, dtype=torch.float32, device=x.device)
        out[(slice(None), slice(None)) + tile] += y.to(torch.float32) * weights
    assert out is not None
    out /= weight_sum
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return out[(slice(None), slice(None)) + crop]
