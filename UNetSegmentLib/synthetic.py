"""Synthetic prostate T2-weighted MRI with zonal labels, for demos and tests.

:func:`make_case` paints an axial pelvis in an *anatomy frame* (millimetres,
LPS axes: x to the patient's left, y posterior, z superior, origin at the
gland's centre) and samples it on an axial image grid whose direction is the
identity: index i runs to the left, j posterior (anterior is the top row, as
in a real axial T2 series), k superior. A random pose (small rotation and
shift) maps the anatomy frame into the scanner's LPS frame.

What is painted, in order: the body (pelvic fat, T2-bright) in air, muscles
(obturator internus, levator ani, gluteus; dark), bones (pubic symphysis,
femoral heads, ischial tuberosities; dark cortex, fatty marrow), the rectum
(dark wall, gas or mucus), the bladder above the gland (bright urine), the
seminal vesicles, and the gland: a tapered ellipsoid of 20-80 mL with a
transition zone (TZ, dark and nodular) inside, the anterior fibromuscular
stroma (dark, counted as TZ as in "central gland" labels) and a peripheral
zone (PZ, bright) horseshoe wrapping it posteriorly and laterally, behind a
dark capsule. Each slice averages three sub-slices across its thickness
(partial volume of thick slices); a smooth bias field, tissue texture and
Rician noise follow.

Only numpy (SimpleITK wraps the result): one 160 x 160 x 24 case takes about 0.2 s of CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

#: label values of zonal cases; a whole-gland case has 1 = prostate
PZ_LABEL, TZ_LABEL, GLAND_LABEL = 1, 2, 1

#: sub-slices averaged across each slice's thickness
SUB_SLICES = 3
#: the tapered, posteriorly flattened gland fills this fraction of its ellipsoid (measured)
SHAPE_VOLUME_FACTOR = 0.935

# relative T2 signal of tissues (pelvic fat = 1) and the strength of their texture
AIR = (0.015, 0.0)
FAT = (1.0, 0.035)
MUSCLE = (0.2, 0.10)
CORTEX = (0.04, 0.0)
MARROW = (0.72, 0.10)
RECTAL_WALL = (0.24, 0.08)
URINE = (1.25, 0.02)
BLADDER_WALL = (0.22, 0.05)
SEMINAL_FLUID = (1.05, 0.12)
PZ_SIGNAL = (0.55, 0.15)
TZ_SIGNAL = (0.27, 0.38)
STROMA = (0.16, 0.08)
CAPSULE = (0.14, 0.0)
URETHRA = (0.55, 0.0)


@dataclass(frozen=True)
class _Pose:
    """The anatomy frame in scanner LPS: ``p_lps = rotation @ q + centre`` (mm)."""

    rotation: np.ndarray
    centre: np.ndarray


class _Canvas:
    """Sub-slice sampling grid and the intensity / texture / label volumes painted on it.

    ``signal`` is numpy ``(k_sub, j, i)``: ``SUB_SLICES`` sub-slices per output
    slice along k; ``texture`` and ``label`` are ``(k, j, i)`` on the output grid. ``to_anatomy`` maps a continuous ITK index ``(i, j, k)`` to
    the anatomy frame: ``q = matrix @ index + offset``.
    """

    def __init__(self, size_xyz: Sequence[int], spacing_xyz: Sequence[float], origin: np.ndarray, pose: _Pose) -> None:
        self.nx, self.ny, self.nz = (int(s) for s in size_xyz)
        spacing = np.asarray(spacing_xyz, dtype=float)
        # index -> LPS: origin + diag(spacing) @ index (identity direction); LPS -> anatomy: R^T (p - c)
        self.matrix = (pose.rotation.T @ np.diag(spacing)).astype(np.float64)
        self.offset = pose.rotation.T @ (origin - pose.centre)
        self.inverse = np.linalg.inv(self.matrix)
        offsets = (np.arange(SUB_SLICES) - (SUB_SLICES - 1) / 2) / SUB_SLICES
        self.k_sub = (np.arange(self.nz)[:, None] + offsets[None, :]).ravel().astype(np.float32)
        shape = (self.nz * SUB_SLICES, self.ny, self.nx)
        self.signal = np.empty(shape, dtype=np.float32)
        self.texture = np.zeros((self.nz, self.ny, self.nx), dtype=np.float32)
        self.label = np.zeros((self.nz, self.ny, self.nx), dtype=np.uint8)

    def region(
        self, lo: Sequence[float], hi: Sequence[float]
    ) -> Optional[Tuple[Tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]]:
        """Slices of the sampling grid covering an anatomy-frame box, and q (x, y, z) there (broadcast views)."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = (self.inverse @ (corners - self.offset).T).T
        i0, j0, k0 = np.floor(idx.min(0)).astype(int) - 1
        i1, j1, k1 = np.ceil(idx.max(0)).astype(int) + 2
        i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
        i1, j1, k1 = min(i1, self.nx), min(j1, self.ny), min(k1, self.nz)
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            return None
        sl = (slice(k0 * SUB_SLICES, k1 * SUB_SLICES), slice(j0, j1), slice(i0, i1))
        i = np.arange(i0, i1, dtype=np.float32)[None, None, :]
        j = np.arange(j0, j1, dtype=np.float32)[None, :, None]
        k = self.k_sub[sl[0]][:, None, None]
        m, o = self.matrix.astype(np.float32), self.offset.astype(np.float32)
        q = [m[a, 0] * i + m[a, 1] * j + m[a, 2] * k + o[a] for a in range(3)]
        return sl, q[0], q[1], q[2]

    def paint(self, sl: Tuple[slice, ...], weight: np.ndarray, tissue: Tuple[float, float]) -> None:
        """Blend a tissue into the region by a membership ``weight`` in [0, 1]."""
        value, texture = tissue
        s = self.signal[sl]
        s += weight * (value - s)
        # texture strength only at each slice's centre: it is applied after slice averaging
        mid = weight[SUB_SLICES // 2 :: SUB_SLICES]
        k0 = sl[0].start // SUB_SLICES
        t = self.texture[(slice(k0, k0 + mid.shape[0]),) + tuple(sl[1:])]
        t += mid * (texture - t)


def _ramp(r2: np.ndarray, scale_mm: float, width_mm: float = 0.8) -> np.ndarray:
    """Membership of an implicit shape with normalised radius² ``r2`` (1 on the surface): 1 inside, 0 outside.

    The distance to the surface is approximated by ``(sqrt(r2) - 1) * scale_mm``;
    the transition is ``width_mm`` wide (partial volume).
    """
    d = (np.sqrt(r2) - 1.0) * (scale_mm / width_mm)
    return np.clip(0.5 - d, 0.0, 1.0)


def _rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation matrix about x, then y, then z (degrees)."""
    ax, ay, az = (math.radians(a) for a in (rx_deg, ry_deg, rz_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(canvas: _Canvas, centre: Sequence[float], axes: Sequence[float], tissue, z_range=None) -> None:
    """Paint an axis-aligned ellipsoid (anatomy frame, mm); ``axes[2] = inf`` makes a cylinder along z."""
    cx, cy, cz = centre
    ax, ay, az = axes
    zlo, zhi = z_range if z_range is not None else (cz - az, cz + az)
    reg = canvas.region((cx - ax, cy - ay, max(zlo, -400.0)), (cx + ax, cy + ay, min(zhi, 400.0)))
    if reg is None:
        return
    sl, qx, qy, qz = reg
    r2 = ((qx - cx) / ax) ** 2 + ((qy - cy) / ay) ** 2
    if math.isfinite(az):
        r2 = r2 + ((qz - cz) / az) ** 2
    w = _ramp(r2, min(ax, ay, az))
    if z_range is not None:
        w = w * np.clip((qz - zlo) / 3.0, 0, 1) * np.clip((zhi - qz) / 3.0, 0, 1)
    canvas.paint(sl, w, tissue)


def _ring(canvas: _Canvas, centre, axes, thickness: float, wall, inner, z_range=None) -> None:
    """A walled structure: ``wall`` tissue, then ``inner`` tissue ``thickness`` mm inside it."""
    _ellipsoid(canvas, centre, axes, wall, z_range)
    inner_axes = [a - thickness for a in axes]
    inner_range = None if z_range is None else (z_range[0] + thickness, z_range[1] - thickness)
    _ellipsoid(canvas, centre, inner_axes, inner, inner_range)


def _sling(canvas: _Canvas, centre, axes, z_range) -> None:
    """Levator ani: a thin muscular U behind and beside the rectum (``centre``, ``axes``: the rectum's)."""
    cx, cy, _ = centre
    ax, ay = axes[0] + 7, axes[1] + 7
    reg = canvas.region((cx - ax, cy - ay, z_range[0]), (cx + ax, cy + ay, z_range[1]))
    if reg is None:
        return
    sl, qx, qy, qz = reg
    r = np.sqrt(((qx - cx) / ax) ** 2 + ((qy - cy) / ay) ** 2)
    band = np.clip(1.5 - np.abs(r - 1) * min(ax, ay) / 1.2, 0, 1)  # about 3 mm thick
    behind = np.clip((qy - cy + 0.3 * ay) / 3.0, 0, 1)
    ends = np.clip((qz - z_range[0]) / 3.0, 0, 1) * np.clip((z_range[1] - qz) / 3.0, 0, 1)
    canvas.paint(sl, band * behind * ends, MUSCLE)


def _paint_pelvis(canvas: _Canvas, rng: np.random.Generator, gland_axes: Sequence[float]) -> None:
    """Body, muscles, bones, rectum, bladder and seminal vesicles around a gland with semi-axes ``gland_axes``."""
    a, b, c = gland_axes
    inf = math.inf
    canvas.signal.fill(AIR[0])
    _ellipsoid(canvas, (0, 5 + rng.uniform(-5, 5), 0), (rng.uniform(160, 190), rng.uniform(110, 130), inf), FAT)
    # muscles: gluteus maximus (posterolateral), obturator internus (lateral)
    for side in (-1, 1):
        _ellipsoid(canvas, (side * 70, 85, 0), (45, 35, inf), MUSCLE)
        _ellipsoid(canvas, (side * (a + 24), 4, 0), (11, 38, inf), MUSCLE)
    # bones: femoral heads, ischial tuberosities (inferior), pubic symphysis (anterior)
    for side in (-1, 1):
        _ring(canvas, (side * (a + 62), 0, 0), (24, 24, inf), 2.5, CORTEX, MARROW, (-40, 60))
        _ring(canvas, (side * (a + 38), 42, 0), (12, 17, inf), 2.0, CORTEX, MARROW, (-80, -5))
        _ring(canvas, (side * 9, -(b + 22), 0), (8, 12, inf), 1.8, CORTEX, MARROW, (-35, c + 15))
    # rectum: wall and lumen (gas is dark, mucus intermediate)
    lumen = (0.03, 0.0) if rng.random() < 0.5 else (0.45, 0.25)
    rect = (rng.uniform(-4, 4), b + rng.uniform(11, 15), 0)
    rect_axes = (rng.uniform(15, 20), rng.uniform(10, 13), inf)
    _sling(canvas, rect, rect_axes, (-2.5 * c, 0.3 * c))
    _ring(canvas, rect, rect_axes, 3.5, RECTAL_WALL, lumen)
    # bladder above the base, seminal vesicles posterior-superior
    bl = (rng.uniform(30, 45), rng.uniform(25, 35), rng.uniform(22, 32))
    _ring(canvas, (0, -0.2 * b, c + 0.85 * bl[2] + 2), bl, 3.0, BLADDER_WALL, URINE)
    for side in (-1, 1):
        _ring(canvas, (side * 14, 0.75 * b, c + 6), (14, 5, 7), 1.2, BLADDER_WALL, SEMINAL_FLUID)


def _paint_gland(canvas: _Canvas, axes: Sequence[float], tz_scale: float, zones: bool) -> None:
    """The gland (PZ, TZ, anterior stroma, capsule, urethra) and its label at each slice's centre."""
    a, b, c = axes
    reg = canvas.region((-1.3 * a, -1.2 * b, -1.1 * c), (1.3 * a, 1.2 * b, 1.1 * c))
    if reg is None:
        return
    sl, qx, qy, qz = reg
    w = np.clip(qz / c, -1, 1)
    u = qx / (a * (1 + 0.15 * w))  # wider at the base, narrower at the apex
    v = qy / b
    v = np.where(v > 0, v * 1.15, v)  # posterior surface flattened by the rectum
    gland = _ramp(u * u + v * v + (qz / c) ** 2, min(a, b, c))
    # transition zone: anterior-superior ellipsoid; anterior stroma: the gland's front
    tzc = (0.0, -0.18 * b, 0.22 * c)
    tza = (0.6 * a * tz_scale, 0.55 * b * tz_scale, 0.68 * c * tz_scale)
    tz_r2 = ((qx - tzc[0]) / tza[0]) ** 2 + ((qy - tzc[1]) / tza[1]) ** 2 + ((qz - tzc[2]) / tza[2]) ** 2
    tz = _ramp(tz_r2, min(tza)) * gland
    # anterior fibromuscular stroma: a band in front of the TZ that thins out laterally
    front = -(0.5 + 0.45 * np.minimum(u * u, 1.0)) * b
    stroma = np.clip((front - qy) / 1.5, 0, 1) * gland
    central = np.maximum(tz, stroma)
    canvas.paint(sl, gland, PZ_SIGNAL)
    canvas.paint(sl, tz, TZ_SIGNAL)
    canvas.paint(sl, stroma * (1 - tz), STROMA)
    rim = np.clip(4 * gland * (1 - gland), 0, 1)
    canvas.paint(sl, rim, CAPSULE)
    urethra = _ramp(((qx / 2.5) ** 2 + ((qy + 0.12 * b) / 2.5) ** 2), 2.5) * gland
    canvas.paint(sl, urethra, URETHRA)
    # labels at the centre sub-slice of each output slice
    mid = slice(SUB_SLICES // 2, None, SUB_SLICES)
    inside = gland[mid] >= 0.5
    lab = np.zeros(inside.shape, dtype=np.uint8)
    if zones:
        lab[inside] = PZ_LABEL
        lab[inside & (central[mid] >= 0.5)] = TZ_LABEL
    else:
        lab[inside] = GLAND_LABEL
    k0 = sl[0].start // SUB_SLICES
    canvas.label[k0 : k0 + lab.shape[0], sl[1], sl[2]] = lab


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of linear interpolation from ``n_in`` evenly spread samples to ``n_out``."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    w = np.zeros((n_out, n_in), dtype=np.float32)
    w[np.arange(n_out), lo] = 1 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _smooth_field(rng: np.random.Generator, shape_zyx: Tuple[int, int, int], cell_px: int) -> np.ndarray:
    """Unit-variance random texture, correlated over about ``cell_px`` pixels in-plane (numpy z, y, x)."""
    nz, ny, nx = shape_zyx
    ly, lx = max(2, ny // cell_px + 2), max(2, nx // cell_px + 2)
    low = rng.standard_normal((nz, ly, lx)).astype(np.float32)
    up = _interpolation_matrix(ny, ly) @ low @ _interpolation_matrix(nx, lx).T
    return up / max(float(up.std()), 1e-6)


def _bias_field(rng: np.random.Generator, size_xyz: Sequence[int]) -> np.ndarray:
    """Smooth multiplicative coil sensitivity (numpy z, y, x), about 0.7-1.3."""
    nx, ny, nz = size_xyz
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    c = rng.uniform(-1, 1, 6) * np.array([0.15, 0.15, 0.08, 0.12, 0.12, 0.06])
    log_b = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * x * y
    return np.exp(log_b).astype(np.float32)


def make_case(
    seed: int = 0,
    spacing_xyz: Sequence[float] = (0.6, 0.6, 3.0),
    size_xyz: Sequence[int] = (160, 160, 24),
    zones: bool = True,
    gland_ml: Optional[float] = None,
) -> Tuple[sitk.Image, sitk.Image]:
    """One synthetic axial T2-weighted prostate MRI and its labelmap.

    ``spacing_xyz`` (mm) and ``size_xyz`` (voxels) are ITK order (x, y, z);
    the default grid covers 96 x 96 x 72 mm. ``gland_ml`` is the gland's
    volume (default: uniform in 20-80 mL); the labelled volume matches it within
    a few per cent when the voxels are small against the gland. Returns ``(image, label)`` on the same grid, LPS
    with identity direction (anterior = small j): ``image`` int16, ``label``
    uint8 with 1 = peripheral zone, 2 = transition zone (``zones=True``) or
    1 = whole gland (``zones=False``). Deterministic for a seed.
    """
    if len(spacing_xyz) != 3 or len(size_xyz) != 3 or min(spacing_xyz) <= 0 or min(size_xyz) < 1:
        raise ValueError(f"spacing_xyz and size_xyz need three positive values, not {spacing_xyz}, {size_xyz}")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_xyz, dtype=float)
    size = np.asarray(size_xyz, dtype=int)
    volume_ml = float(gland_ml) if gland_ml is not None else rng.uniform(20.0, 80.0)
    ratios = np.array([1.15, 0.8, 1.0]) * rng.uniform(0.92, 1.08, 3)
    ellipsoid_ml = volume_ml / SHAPE_VOLUME_FACTOR
    scale = (ellipsoid_ml * 1000.0 / (4.0 / 3.0 * math.pi * float(np.prod(ratios)))) ** (1.0 / 3.0)
    axes = ratios * scale  # semi-axes (x, y, z) mm
    tz_scale = rng.uniform(0.75, 1.1)
    # pose: the gland's centre in scanner LPS, a small rotation, and a shift from the FOV centre
    rotation = _rotation(rng.uniform(-10, 10), rng.uniform(-4, 4), rng.uniform(-8, 8))
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-10, 30), rng.uniform(-60, 0)])
    half_fov = size * spacing / 2
    room = np.maximum(half_fov - axes * 1.1, 0)
    shift = rng.uniform(-1, 1, 3) * np.minimum([8.0, 8.0, 5.0], room)
    fov_centre = centre - shift
    origin = fov_centre - spacing * (size - 1) / 2
    canvas = _Canvas(size, spacing, origin, _Pose(rotation, centre))
    _paint_pelvis(canvas, rng, axes)
    _paint_gland(canvas, axes, tz_scale, zones)
    nz, ny, nx = canvas.label.shape
    signal = canvas.signal.reshape(nz, SUB_SLICES, ny, nx).mean(1)
    texture_amp = canvas.texture
    cell = max(2, int(round(3.0 / spacing[0])))
    signal *= 1 + texture_amp * _smooth_field(rng, (nz, ny, nx), cell)
    signal *= _bias_field(rng, size)
    sigma = rng.uniform(0.015, 0.035)
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32)
    signal = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)  # magnitude of complex noise: Rician
    gain = rng.uniform(350.0, 900.0)
    array = np.clip(np.rint(signal * gain), 0, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    label = sitk.GetImageFromArray(canvas.label)
    for img in (image, label):
        img.SetSpacing([float(s) for s in spacing])
        img.SetOrigin([float(o) for o in origin])
    log.debug("synthetic case seed %d: gland %.1f mL, semi-axes %s mm", seed, volume_ml, np.round(axes, 1))
    return image, label
