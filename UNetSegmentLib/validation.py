"""Checks that an input image is a 3D scan a prostate model can segment.

:func:`validate_image` raises :class:`InvalidImageError` (with a message a
user can act on) for images no model can segment, and returns warnings for
images it can segment but probably should not (a CT instead of an MR).
:func:`read_input` reads a file or DICOM folder and validates it in one step.

Thresholds (mm are physical, along the image's own voxel axes):

- voxel spacing: every axis within ``MIN_SPACING_MM`` (0.05) to ``MAX_SPACING_MM`` (20);
  zero or negative spacing is refused;
- size: at least ``MIN_SLICES`` (3) voxels along every axis, and the two
  in-plane axes (all but the axis with the largest spacing) each at least
  ``MIN_INPLANE_EXTENT_MM`` (30 mm, smaller than any prostate field of view);
- values: finite (no NaN or Inf) and not all equal;
- CT: DICOM Modality CT, or at least ``CT_AIR_FRACTION`` (5%) of the voxels at
  or below ``CT_AIR_HU`` (-900, air in Hounsfield units) -> warning only;
- not a scan but a segmentation: a ``.seg.nrrd`` (Segment metadata) or a labelmap
  written by this tool (``unetsegment_model`` metadata); an integer image with at
  most ``MAX_LABEL_VALUES`` (10) distinct values including 0 (a labelmap or mask);
  a float image within [0, 1] with at least ``PROBABILITY_BACKGROUND`` (70%; a T2 scan
  scaled to [0, 1] has at most 45% there in PROMISE12 and ProstateX) of its
  voxels below 0.01 and some above 0.5 (a probability map) -> refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .file_checks import DamagedFileError
from .io import ImageReadError, read_image, select_channel

log = logging.getLogger(__name__)

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_SLICES = 3
MIN_INPLANE_EXTENT_MM = 30.0
#: A scan covering less than this along its slice axis gets a warning (the gland may be cut off).
SHORT_COVERAGE_MM = 20.0
CT_AIR_HU = -900.0
CT_AIR_FRACTION = 0.05
#: Voxels sampled for the intensity statistics (CT check); keeps validation fast on large volumes.
SAMPLE_VOXELS = 2_000_000

MODALITY_TAG = "0008|0060"
#: metadata key this tool writes into its labelmaps (model id and version)
OWN_OUTPUT_TAG = "unetsegment_model"
MAX_LABEL_VALUES = 10
PROBABILITY_BACKGROUND = 0.70
_COMPLEX_TYPES = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


class InvalidImageError(Exception):
    """The image cannot be segmented (2D, 4D, empty, constant, NaN, absurd spacing, too small)."""


def validate_image(image: sitk.Image) -> List[str]:
    """Raise :class:`InvalidImageError` unless ``image`` is a plausible 3D scalar scan; return warnings.

    A DICOM Modality, if known, is read from the image's metadata key
    ``0008|0060`` (:func:`read_input` sets it for DICOM folders).
    """
    _check_own_output(image)
    _check_shape(image)
    spacing = np.array(image.GetSpacing(), dtype=float)
    _check_geometry(image, spacing)
    warnings: List[str] = []
    warnings += _check_size(np.array(image.GetSize(), dtype=int), spacing)
    warnings += _check_values(image)
    _check_not_a_segmentation(image)
    return warnings


def _check_shape(image: sitk.Image) -> None:
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if dim == 2:
        raise InvalidImageError("the image is 2D (a single slice); a 3D volume (a stack of slices) is needed")
    if dim == 4:
        raise InvalidImageError(
            f"the image is 4D ({image.GetSize()[3]} volumes); choose one volume with --channel N (0 = the first)"
        )
    if dim != 3:
        raise InvalidImageError(f"the image has {dim} dimensions; a 3D volume is needed")
    if image.GetPixelID() in _COMPLEX_TYPES:
        raise InvalidImageError("the image has complex values; a magnitude image is needed")
    if ncomp > 1:
        raise InvalidImageError(
            f"the image has {ncomp} components per voxel (colour or multi-channel); choose one with --channel N"
        )
    if min(image.GetSize()) == 0:
        raise InvalidImageError(f"the image is empty (size {'x'.join(map(str, image.GetSize()))} voxels)")


def _check_geometry(image: sitk.Image, spacing: np.ndarray) -> None:
    text = " x ".join(f"{s:g}" for s in spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidImageError(f"the voxel spacing {text} mm is zero, negative or not a number")
    if np.any(spacing < MIN_SPACING_MM):
        raise InvalidImageError(
            f"the voxel spacing {text} mm is below {MIN_SPACING_MM} mm; the spacing in the header is probably wrong (metres or a microscope image?)"
        )
    if np.any(spacing > MAX_SPACING_MM):
        raise InvalidImageError(
            f"the voxel spacing {text} mm is above {MAX_SPACING_MM:g} mm; the spacing in the header is probably wrong"
        )
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-3:
        raise InvalidImageError("the image orientation (direction cosines) in the header is degenerate")


def _check_size(size_xyz: np.ndarray, spacing_xyz: np.ndarray) -> List[str]:
    if np.any(size_xyz < MIN_SLICES):
        raise InvalidImageError(
            f"the image has only {int(size_xyz.min())} voxel(s) along one axis (size {'x'.join(map(str, size_xyz))}); "
            f"at least {MIN_SLICES} slices are needed to segment a prostate"
        )
    extent = size_xyz * spacing_xyz
    # the slice axis: largest spacing; with equal spacings, fewest voxels
    slice_axis = int(np.lexsort((size_xyz, -spacing_xyz))[0])
    inplane = [extent[i] for i in range(3) if i != slice_axis]
    if min(inplane) < MIN_INPLANE_EXTENT_MM:
        raise InvalidImageError(
            f"the image covers only {inplane[0]:.0f} x {inplane[1]:.0f} mm in-plane; at least {MIN_INPLANE_EXTENT_MM:.0f} mm "
            "are needed to contain a prostate"
        )
    if extent[slice_axis] < SHORT_COVERAGE_MM:
        return [f"the image covers only {extent[slice_axis]:.0f} mm across its slices; the prostate may be cut off"]
    return []


def _check_values(image: sitk.Image) -> List[str]:
    values = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, values.size // SAMPLE_VOXELS)
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            n = int(bad.sum())
            kinds = " and ".join(
                k for k, m in (("NaN", np.isnan(values[bad])), ("Inf", np.isinf(values[bad]))) if m.any()
            )
            raise InvalidImageError(f"the image has {n} voxel(s) with {kinds} values")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise InvalidImageError(f"the image is constant (every voxel is {lo:g}); it holds no anatomy")
    warnings = []
    modality = image.GetMetaData(MODALITY_TAG).strip().upper() if image.HasMetaDataKey(MODALITY_TAG) else ""
    if modality == "CT":
        warnings.append(
            "the image is a CT (DICOM Modality CT); the model was trained on MR (T2-weighted) and its result will be wrong"
        )
    elif lo <= CT_AIR_HU:
        sample = values[::step]
        air = float(np.count_nonzero(sample <= CT_AIR_HU)) / sample.size
        if air >= CT_AIR_FRACTION:
            warnings.append(
                f"{100 * air:.0f}% of the voxels are at or below {CT_AIR_HU:g} (air in Hounsfield units): this looks like a CT, "
                "but the model was trained on MR (T2-weighted) and its result will be wrong"
            )
    elif modality and modality != "MR":
        warnings.append(f"the image's DICOM Modality is {modality}; the model was trained on MR (T2-weighted)")
    return warnings


def _check_own_output(image: sitk.Image) -> None:
    """Refuse a segmentation file (this tool's labelmap or a Slicer .seg.nrrd), known by its metadata."""
    keys = set(image.GetMetaDataKeys())
    if OWN_OUTPUT_TAG in keys:
        raise InvalidImageError(
            f"this is a segmentation written by unetsegment ({image.GetMetaData(OWN_OUTPUT_TAG)}), not a T2 scan; "
            "give the scan it was made from"
        )
    if any(k.startswith("Segment0_") for k in keys):
        raise InvalidImageError("this is a Slicer segmentation (.seg.nrrd), not a T2 scan; give the scan itself")


def _check_not_a_segmentation(image: sitk.Image) -> None:
    """Refuse a labelmap, mask or probability map given as the image (known by its values)."""
    values = sitk.GetArrayViewFromImage(image).ravel()
    sample = values[:: max(1, values.size // SAMPLE_VOXELS)]
    if np.issubdtype(values.dtype, np.integer) or np.all(sample == np.round(sample)):
        distinct = np.unique(sample)
        if len(distinct) <= MAX_LABEL_VALUES and 0 in distinct:
            shown = ", ".join(f"{v:g}" for v in distinct)
            share = 100.0 * np.count_nonzero(sample) / sample.size
            raise InvalidImageError(
                f"the image holds only the values {shown} ({share:.1f}% of voxels non-zero): it is a labelmap or mask "
                "(a segmentation, perhaps this tool's own output), not a T2 scan"
            )
        return
    lo, hi = float(sample.min()), float(sample.max())
    if lo >= -0.01 and hi <= 1.01:  # a smoothed probability map may overshoot a little
        background = float(np.count_nonzero(sample < 0.01)) / sample.size
        if background >= PROBABILITY_BACKGROUND and hi > 0.5:
            raise InvalidImageError(
                f"the image's values lie in [0, 1] and {100 * background:.0f}% of them are below 0.01: it is a "
                "probability map (a segmentation's output), not a T2 scan"
            )


def dicom_modality(folder: Union[str, Path], max_files: int = 50) -> Optional[str]:
    """The DICOM Modality (0008,0060) of the first readable DICOM file under ``folder``, or None."""
    reader = sitk.ImageFileReader()
    tried = 0
    for f in sorted(Path(folder).rglob("*")):
        if not f.is_file():
            continue
        tried += 1
        if tried > max_files:
            break
        try:
            reader.SetFileName(str(f))
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        if reader.HasMetaDataKey(MODALITY_TAG):
            return reader.GetMetaData(MODALITY_TAG).strip()
    return None


def header_spacing(path: Union[str, Path]) -> Optional[Tuple[float, ...]]:
    """The voxel spacing a file's header declares, read without loading the voxels; None if unreadable.

    ITK refuses to load an image whose spacing is zero; this still reads it,
    so such a file is reported as an invalid image rather than an unreadable one.
    """
    reader = sitk.ImageFileReader()
    try:
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(float(s) for s in reader.GetSpacing())
    except RuntimeError:
        return None


def read_input(path: Union[str, Path], channel: Optional[int] = None) -> Tuple[sitk.Image, List[str]]:
    """Read an image file or DICOM folder and validate it: ``(image, warnings)``.

    Raises :class:`~UNetSegmentLib.io.ImageReadError` (missing, unreadable or damaged),
    :class:`InvalidImageError` (readable, but not a segmentable 3D scan; a broken
    DICOM series) or ``dicom.SeriesChoiceError`` (a folder whose series to use is not clear).
    """
    got = read_input_info(path, channel)
    return got.image, got.warnings


@dataclass
class InputRead:
    """A read and validated input; ``chosen`` says which DICOM series was read and why (None for a file)."""

    image: sitk.Image
    warnings: List[str]
    chosen: Optional[str] = None
    dicom: Optional[object] = None  #: ``dicom.DicomRead`` for a folder


def read_input_info(
    path: Union[str, Path],
    channel: Optional[int] = None,
    series: Optional[int] = None,
    series_uid: Optional[str] = None,
    resample_uneven: bool = False,
) -> InputRead:
    """As :func:`read_input`, with the DICOM series choice (``series`` number or ``series_uid``) and
    ``resample_uneven`` (accept gaps and uneven slice spacing by resampling, stated in the warnings)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"input not found: {p}")
    if p.is_dir():
        from .dicom import read_dicom

        got = read_dicom(p, number=series, uid=series_uid, allow_uneven=resample_uneven)
        image = got.image if channel is None else select_channel(got.image, channel)
        return InputRead(image, got.warnings + validate_image(image), got.choice.reason, got)
    if series is not None or series_uid is not None:
        raise ImageReadError(f"--series and --series-uid choose a series in a DICOM folder; {p} is a file")
    try:
        image = read_image(p, channel=channel)
    except DamagedFileError:
        raise
    except ImageReadError:
        spacing = header_spacing(p) if p.is_file() else None
        if spacing is not None and any(not s > 0 for s in spacing):
            text = " x ".join(f"{s:g}" for s in spacing)
            raise InvalidImageError(f"the voxel spacing {text} mm in the header of {p} is zero or negative") from None
        raise
    return InputRead(image, validate_image(image))
