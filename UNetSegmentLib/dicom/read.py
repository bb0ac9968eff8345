"""Read one checked DICOM series as a SimpleITK image on the grid its headers define.

Headers come from the index (pydicom); pixels from SimpleITK (GDCM, which
decodes JPEG, JPEG-LS, JPEG 2000 and RLE), one list of files in slice order.
The image's geometry is set from the slice plan (not from GDCM's guess): i
along the row direction, j along the column direction, k along the slice
normal (``row x column``) in ascending position; origin = ImagePositionPatient
of the first slice in that order, all in LPS mm, which is ITK's frame.
:func:`series_instances` returns the same order, for writers that reference
the source instances (DICOM SEG): entry ``k`` is the slice at image index k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..io import ImageReadError
from .choice import Choice, choose_series
from .index import DicomIndex, Series, index_folder
from .integrity import SlicePlan, check_dicom_file, check_transfer_syntaxes, slice_plan

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
MODALITY_TAG = "0008|0060"


@dataclass(frozen=True)
class InstanceRef:
    """One slice of a read series: the file, its SOP instance and (multi-frame) its 1-based frame number."""

    path: Path
    sop_instance_uid: str
    frame_number: Optional[int]
    position_mm: float


@dataclass
class DicomRead:
    """A series read from a folder: the image, which series and why, and what the user must be told."""

    image: sitk.Image
    index: DicomIndex
    choice: Choice
    plan: SlicePlan
    warnings: List[str] = field(default_factory=list)

    @property
    def series(self) -> Series:
        return self.choice.series

    def instances(self) -> List[InstanceRef]:
        """The read series' instances in the image's slice order (see :func:`series_instances`)."""
        return series_instances(self.series, allow_uneven=bool(self.plan.uneven))


def series_instances(series: Series, allow_uneven: bool = False) -> List[InstanceRef]:
    """The instances of ``series`` in the image's slice order (k = 0 first), as :func:`read_series` stacks them.

    With ``allow_uneven`` (a resampled series) the entries are the source slices
    in ascending position; the image's slices then lie between them.
    """
    plan = slice_plan(series, allow_uneven=allow_uneven)
    return [
        InstanceRef(f.path, f.sop_instance_uid, None if f.frame is None else f.frame + 1, float(p))
        for f, p in zip(plan.frames, plan.positions_mm)
    ]


def series_datasets(series: Series, allow_uneven: bool = False) -> list:
    """The pydicom datasets (headers only) of :func:`series_instances`' files, in the same order (one per file)."""
    import pydicom

    seen, out = set(), []
    for ref in series_instances(series, allow_uneven):
        if ref.path not in seen:
            seen.add(ref.path)
            out.append(pydicom.dcmread(str(ref.path), stop_before_pixels=True))
    return out


def _check_files(index: DicomIndex, series: Series) -> None:
    bad = index.unreadable_in(series.folders)
    if bad:
        names = ", ".join(p.name for p, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        path, why = bad[0]
        raise ImageReadError(
            f"{series.label()} cannot be read whole: {path} {why} ({len(bad)} damaged file(s) in its folder: {names})"
        )
    check_transfer_syntaxes(series)
    for f in series.files:
        check_dicom_file(f)


def _pixels_single_frame(plan: SlicePlan) -> np.ndarray:
    """(k, j, i) array of the slices in plan order (GDCM applies RescaleSlope/Intercept)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f.path) for f in plan.frames])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(
            f"the slices of {plan.frames[0].path.parent} cannot be decoded ({_last_line(e)})"
        ) from None
    return sitk.GetArrayFromImage(image)


def _pixels_multi_frame(plan: SlicePlan) -> np.ndarray:
    """(k, j, i) array of a multi-frame file's frames in plan order, rescaled per frame (Pixel Value Transformation).

    Stored values come from pydicom where it can decode them (uncompressed, RLE),
    so each frame's own rescale is applied once; otherwise from GDCM, which applies
    one rescale to all frames: a file whose frames differ in rescale is then refused.
    """
    import pydicom

    files = sorted({f.path for f in plan.frames})
    if len(files) != 1:
        raise ImageReadError(f"a multi-frame series in {len(files)} files is not supported ({files[0].parent})")
    path = files[0]
    ds = pydicom.dcmread(str(path))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    order = [f.frame for f in plan.frames]
    transforms = _frame_rescales(ds, n)
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001 - no pydicom decoder for this compression: GDCM decodes and rescales
        stored = None
    if stored is not None:
        volume = stored[None] if stored.ndim == 2 else stored
        if volume.shape[0] != n:
            raise ImageReadError(f"{path} decodes to {volume.shape[0]} frames but its header declares {n}")
        volume = volume[order]
        if any(t != (1.0, 0.0) for t in transforms):
            volume = np.stack([volume[k] * transforms[i][0] + transforms[i][1] for k, i in enumerate(order)])
            volume = volume.astype(np.float32)
        return volume
    if len(set(transforms)) > 1:
        raise ImageReadError(
            f"{path}: its frames have different rescale slopes/intercepts and its compression "
            f"({ds.file_meta.get('TransferSyntaxUID', '?')}) is decoded by GDCM, which applies only one; convert it "
            "to uncompressed DICOM"
        )
    try:
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise ImageReadError(f"cannot read {path}: its pixel data does not decode ({_last_line(e)})") from None
    volume = volume[None] if volume.ndim == 2 else volume
    if volume.shape[0] != n:
        raise ImageReadError(f"{path} decodes to {volume.shape[0]} frames but its header declares {n}")
    return volume[order]


def _frame_rescales(ds, n: int) -> List[tuple]:
    """``(slope, intercept)`` of each frame: per-frame, else shared Pixel Value Transformation, else top level."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    top = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    out = []
    for i in range(n):
        item = per[i] if i < len(per) else None
        value = top
        for src in (item, shared):
            if src is not None and src.get("PixelValueTransformationSequence"):
                pvt = src.PixelValueTransformationSequence[0]
                value = (float(pvt.get("RescaleSlope", 1) or 1), float(pvt.get("RescaleIntercept", 0) or 0))
                break
        out.append(value)
    return out


def _resample_uniform(array: np.ndarray, positions: np.ndarray, spacing: float) -> np.ndarray:
    """Linear interpolation of (k, j, i) slices at ``positions`` (mm) onto a uniform grid from the first."""
    n = int(round((positions[-1] - positions[0]) / spacing)) + 1
    targets = positions[0] + spacing * np.arange(n)
    out = np.empty((n,) + array.shape[1:], dtype=np.float32)
    for k, t in enumerate(targets):
        hi = int(np.clip(np.searchsorted(positions, t), 1, len(positions) - 1))
        lo = hi - 1
        w = float(np.clip((t - positions[lo]) / (positions[hi] - positions[lo]), 0.0, 1.0))
        out[k] = (1 - w) * array[lo] + w * array[hi]
    return out


def read_series(index: DicomIndex, series: Series, allow_uneven: bool = False) -> DicomRead:
    """Check and read ``series``; raise ``ImageReadError`` (exit 3) or ``SeriesIntegrityError`` (exit 4)."""
    _check_files(index, series)  # a damaged file first: it is the cause of any gap it leaves
    plan = slice_plan(series, allow_uneven=allow_uneven)
    array = _pixels_multi_frame(plan) if series.multi_frame else _pixels_single_frame(plan)
    if array.shape[0] != len(plan.frames) or array.shape[1:] != (plan.frames[0].rows, plan.frames[0].columns):
        raise ImageReadError(
            f"{series.label()} decodes to {array.shape[::-1]} voxels, but its headers declare "
            f"{plan.frames[0].columns}x{plan.frames[0].rows}x{len(plan.frames)}"
        )
    warnings = []
    if plan.uneven:
        array = _resample_uniform(array, plan.positions_mm, plan.spacing_mm)
        warnings.append(
            f"{series.label()}: {plan.uneven}; resampled onto a uniform {plan.spacing_mm:.2f} mm slice spacing by "
            f"linear interpolation ({len(plan.frames)} slices -> {array.shape[0]}), as --resample-uneven asked"
        )
    image = sitk.GetImageFromArray(array)
    first = plan.frames[0].position_lps
    image.SetOrigin([float(v) for v in first])
    image.SetSpacing((*plan.pixel_spacing_xy, plan.spacing_mm if len(plan.frames) > 1 else 1.0))
    image.SetDirection([float(v) for v in plan.direction_lps.ravel()])
    if series.modality:
        image.SetMetaData(MODALITY_TAG, series.modality)
    choice = Choice(series, series.label())
    return DicomRead(image, index, choice, plan, warnings)


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def _same_stack(a: Series, b: Series) -> bool:
    """Whether two series' slices could be mistaken for one stack: same orientation and slice size."""
    fa, fb = a.frames[0], b.frames[0]
    if (fa.rows, fa.columns) != (fb.rows, fb.columns) or fa.orientation is None or fb.orientation is None:
        return False
    return bool(np.max(np.abs(np.subtract(fa.orientation, fb.orientation))) <= 1e-3)


def check_folder_not_mixed(index: DicomIndex, s: Series) -> None:
    """Raise ``SeriesIntegrityError`` if another series of the same orientation and slice size shares a folder
    with ``s`` (mixed SeriesInstanceUIDs whose slices could be mistaken for each other)."""
    from .integrity import SeriesIntegrityError

    others = [o for o in index.series if o is not s and set(o.folders) & set(s.folders) and _same_stack(o, s)]
    if others:
        raise SeriesIntegrityError(
            f"{s.label()} shares its folder {s.folders[0]} with {len(others)} other series of the same "
            f"orientation and size (mixed SeriesInstanceUIDs: {', '.join(o.label() for o in others[:3])}); "
            f"their slices could be mistaken for each other: confirm with --series {s.number} or --series-uid {s.uid}"
        )


def read_dicom(
    folder: PathLike,
    number: Optional[int] = None,
    uid: Optional[str] = None,
    allow_uneven: bool = False,
    index: Optional[DicomIndex] = None,
) -> DicomRead:
    """Index ``folder``, choose the series (``--series``/``--series-uid`` or the axial T2) and read it.

    Raises ``dicom.choice.SeriesChoiceError`` when the choice is not clear,
    ``ImageReadError`` for unreadable or damaged files and ``SeriesIntegrityError``
    for a series with missing, duplicated or unevenly spaced slices. When the
    chosen series shares a folder with another series of the same orientation and
    slice size and was chosen automatically, it is refused as mixed (their slices
    could be mistaken for each other); ``--series``/``--series-uid`` confirm it.
    """
    idx = index or index_folder(folder)
    choice = choose_series(idx, number=number, uid=uid)
    s = choice.series
    if number is None and uid is None:
        check_folder_not_mixed(idx, s)
    result = read_series(idx, s, allow_uneven=allow_uneven)
    result.choice = choice
    if choice.warning:
        result.warnings.insert(0, choice.warning)
    return result
