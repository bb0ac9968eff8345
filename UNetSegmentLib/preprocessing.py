"""The one preprocessing that training and inference share.

``preprocess_image`` takes a SimpleITK image on any grid and returns a
float32 array on the model grid plus a :class:`ModelGrid` that knows how to
bring labels back. ``preprocess_label`` puts a training label on the same
grid. Steps, in order:

1. reorient by axis permutation and flips only (``sitk.DICOMOrient``), so an
   oblique acquisition stays oblique and no slice is interpolated across;
2. resample to the model spacing (linear for images, nearest for labels);
3. normalise intensities (z-score after percentile clipping, over the body).

Arrays are numpy ``(z, y, x)``; SimpleITK sizes and spacings are ``(x, y, z)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

try:
    import SimpleITK as sitk
except ImportError as e:  # a GPU machine training from a data pack (training/pack.py) has no SimpleITK
    _NO_SITK = str(e)

    class _MissingSimpleITK:
        """Stands in for SimpleITK: PreprocessingSpec and the array helpers work, the rest says what is missing."""

        def __getattr__(self, name: str):
            raise ImportError(f"SimpleITK is needed for this ({_NO_SITK}): python -m pip install SimpleITK")

    sitk = _MissingSimpleITK()  # type: ignore[assignment]

NORMALIZATIONS = ("zscore", "none")


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a model wants its input.

    ``spacing_xyz_mm``: voxel size of the model grid in ITK order (x, y, z), mm.
    ``orientation``: DICOM orientation code the axes are permuted/flipped to
    (``"LPS"``: i points to patient left, j posterior, k superior).
    ``clip_percentiles``: intensities are clipped to these percentiles of the
    foreground before the z-score.
    """

    spacing_xyz_mm: Tuple[float, float, float] = (1.0, 1.0, 3.0)
    orientation: str = "LPS"
    normalization: str = "zscore"
    clip_percentiles: Tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if len(self.spacing_xyz_mm) != 3 or min(self.spacing_xyz_mm) <= 0:
            raise ValueError(f"spacing_xyz_mm must be three positive numbers, not {self.spacing_xyz_mm}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        if len(self.orientation) != 3:
            raise ValueError(f"orientation must be a 3-letter code like 'LPS', not {self.orientation!r}")
        object.__setattr__(self, "spacing_xyz_mm", tuple(float(s) for s in self.spacing_xyz_mm))
        object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))

    @property
    def spacing_zyx_mm(self) -> Tuple[float, float, float]:
        x, y, z = self.spacing_xyz_mm
        return (z, y, x)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "spacing_xyz_mm": list(self.spacing_xyz_mm),
            "orientation": self.orientation,
            "normalization": {"method": self.normalization, "clip_percentiles": list(self.clip_percentiles)},
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> PreprocessingSpec:
        norm = d.get("normalization", {})
        if isinstance(norm, str):
            norm = {"method": norm}
        return cls(
            spacing_xyz_mm=tuple(d["spacing_xyz_mm"]),  # type: ignore[arg-type]
            orientation=str(d.get("orientation", "LPS")),
            normalization=str(norm.get("method", "zscore")),
            clip_percentiles=tuple(norm.get("clip_percentiles", (0.5, 99.5))),  # type: ignore[arg-type]
        )


@dataclass
class ModelGrid:
    """The model grid of one input, and the way back to the input's grid.

    ``reference`` is an empty image with the model grid's geometry;
    ``input_reference`` one with the original input's geometry.
    """

    reference: sitk.Image
    input_reference: sitk.Image

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        x, y, z = self.reference.GetSize()
        return (z, y, x)

    def to_image(self, array_zyx: np.ndarray) -> sitk.Image:
        """Wrap a ``(z, y, x)`` array on the model grid as a SimpleITK image."""
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise ValueError(f"array shape {array_zyx.shape} is not the model grid {self.shape_zyx}")
        img = sitk.GetImageFromArray(array_zyx)
        img.CopyInformation(self.reference)
        return img

    def labels_to_input(self, labels_zyx: np.ndarray, values: Sequence[int]) -> sitk.Image:
        """Bring a uint8 labelmap from the model grid back onto the input grid.

        Each label is resampled as a smooth indicator (linear) and a voxel
        takes the label with the highest indicator above 0.5, so boundaries
        are not blocky; only one float map at input resolution exists at a time.
        """
        src = self.to_image(labels_zyx.astype(np.uint8))
        ref = self.input_reference
        x, y, z = ref.GetSize()
        best = np.full((z, y, x), 0.5, dtype=np.float32)
        out = np.zeros((z, y, x), dtype=np.uint8)
        for v in values:
            indicator = sitk.Cast(sitk.BinaryThreshold(src, int(v), int(v), 1, 0), sitk.sitkFloat32)
            # keep the resampled image alive: a numpy view of a temporary image reads freed memory
            resampled = sitk.Resample(indicator, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            res = sitk.GetArrayViewFromImage(resampled)
            better = res > best
            out[better] = v
            best[better] = res[better]
        _keep_largest_components(out, values)
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(ref)
        return img


def _keep_largest_components(labels_zyx: np.ndarray, values: Sequence[int]) -> None:
    """In place: each label keeps only its largest 26-connected component.

    One connected structure on the model grid can come apart on a finer input grid where a
    bridge one model voxel thin falls below the 0.5 threshold; the fragments are dropped so
    that every structure is one piece on the grid the user sees too.
    """
    from .morphology import largest_component

    for v in values:
        mask = labels_zyx == v
        if mask.any():
            labels_zyx[mask & ~largest_component(mask)] = 0


def _empty_like(img: sitk.Image) -> sitk.Image:
    ref = sitk.Image(list(img.GetSize()), sitk.sitkUInt8)
    ref.CopyInformation(img)
    return ref


def model_grid(image: sitk.Image, spec: PreprocessingSpec) -> ModelGrid:
    """The model grid for ``image``: reoriented, then ``spec.spacing_xyz_mm`` over the same extent."""
    oriented = sitk.DICOMOrient(_empty_like(image), spec.orientation)
    in_size = np.array(oriented.GetSize(), dtype=float)
    in_spacing = np.array(oriented.GetSpacing(), dtype=float)
    out_spacing = np.array(spec.spacing_xyz_mm, dtype=float)
    extent = in_size * in_spacing
    out_size = np.maximum(1, np.round(extent / out_spacing)).astype(int)
    # keep the physical centre: origin is the centre of the first voxel
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    first_corner = np.array(oriented.GetOrigin()) - direction @ (in_spacing / 2)
    origin = first_corner + direction @ (out_spacing / 2)
    origin = origin + direction @ ((extent - out_size * out_spacing) / 2)
    ref = sitk.Image([int(s) for s in out_size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in out_spacing])
    ref.SetDirection(oriented.GetDirection())
    ref.SetOrigin([float(o) for o in origin])
    return ModelGrid(reference=ref, input_reference=_empty_like(image))


def normalize(array: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """Clip to foreground percentiles and z-score; ``(z, y, x)`` float32 in and out.

    The foreground is the voxels above the volume's 10th percentile (air and
    padding excluded), so the statistics describe tissue, not background.
    """
    a = array.astype(np.float32, copy=False)
    if spec.normalization == "none":
        return a
    sample = a[:: max(1, a.shape[0] // 32 or 1)]
    thr = np.percentile(sample, 10)
    fg = sample[sample > thr]
    if fg.size < 100:
        fg = sample.ravel()
    lo, hi = np.percentile(fg, spec.clip_percentiles)
    fg = np.clip(fg, lo, hi)
    mean, std = float(fg.mean()), float(fg.std())
    out = (np.clip(a, lo, hi) - mean) / max(std, 1e-6)
    return out.astype(np.float32, copy=False)


def preprocess_image(image: sitk.Image, spec: PreprocessingSpec) -> Tuple[np.ndarray, ModelGrid]:
    """Image on any grid -> ``(z, y, x)`` float32 normalised array on the model grid, and the grid."""
    grid = model_grid(image, spec)
    img = sitk.Cast(image, sitk.sitkFloat32)
    resampled = sitk.Resample(img, grid.reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(resampled)
    return normalize(array, spec), grid


def preprocess_label(label: sitk.Image, grid: ModelGrid) -> np.ndarray:
    """A training labelmap onto the model grid (nearest neighbour); ``(z, y, x)`` uint8."""
    res = sitk.Resample(sitk.Cast(label, sitk.sitkUInt8), grid.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(res)


def crop_or_pad(
    array: np.ndarray, size_zyx: Sequence[int], center_zyx: Optional[Sequence[int]] = None, value: float = 0.0
) -> np.ndarray:
    """Crop or pad the last three axes of ``array`` to ``size_zyx`` around ``center_zyx`` (default: middle)."""
    shape = array.shape[-3:]
    center = [s // 2 for s in shape] if center_zyx is None else list(center_zyx)
    out = np.full(array.shape[:-3] + tuple(size_zyx), value, dtype=array.dtype)
    src, dst = [], []
    for n, s, c in zip(shape, size_zyx, center):
        start = int(c) - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out
