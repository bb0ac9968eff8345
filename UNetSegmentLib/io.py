"""Reading and writing images with SimpleITK: NRRD, NIfTI, MetaImage and DICOM series."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import SimpleITK as sitk

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Extensions :func:`write_image` accepts, longest first.
WRITE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha")


class ImageReadError(Exception):
    """An input image is missing or cannot be read."""


def read_image(path: PathLike, channel: Optional[int] = None) -> sitk.Image:
    """Read an image file or a DICOM series folder.

    A folder is read as the DICOM series with the most files in it.
    ``channel`` selects one component of a multi-component image or one volume
    of a 4D image (Decathlon T2+ADC); the result is then 3D scalar.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"input not found: {p}")
    try:
        if p.is_dir():
            image = _read_dicom_folder(p)
        else:
            image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        reason = next((line for line in first if "ERROR" in line or "Exception" in line), first[-1] if first else "")
        raise ImageReadError(f"cannot read {p} as an image ({reason.strip()[:200]})") from None
    if channel is not None:
        image = select_channel(image, channel)
    return image


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        # DICOM series are often one folder deeper (patient/study/series)
        subdirs = [d for d in sorted(folder.rglob("*")) if d.is_dir()]
        for d in subdirs:
            if reader.GetGDCMSeriesIDs(str(d)):
                log.info("reading the DICOM series in %s", d)
                return _read_dicom_folder(d)
        raise ImageReadError(f"no DICOM series in folder {folder}")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest (%d files)", folder, len(series), len(files))
    reader.SetFileNames(files)
    return reader.Execute()


def select_channel(image: sitk.Image, channel: int) -> sitk.Image:
    """One channel of a vector image, or one volume (last axis) of a 4D image."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        n = image.GetNumberOfComponentsPerPixel()
        if not 0 <= channel < n:
            raise ImageReadError(f"channel {channel} does not exist (image has {n})")
        return sitk.VectorIndexSelectionCast(image, channel)
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        if not 0 <= channel < size[3]:
            raise ImageReadError(f"channel {channel} does not exist (4D image has {size[3]} volumes)")
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, channel])
    if channel != 0:
        raise ImageReadError(f"channel {channel} requested from a single-channel image")
    return image


def output_extension(path: PathLike) -> str:
    """The recognised extension of an output path, or raise ``ValueError``."""
    name = str(path).lower()
    for ext in WRITE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise ValueError(f"output {path} must end in one of {', '.join(WRITE_EXTENSIONS)}")


def write_image(image: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write atomically: to a temporary name beside ``path``, then rename (no partial files)."""
    p = Path(path)
    ext = output_extension(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name[: -len(ext)]}.partial{ext}")
    try:
        sitk.WriteImage(image, str(tmp), compress)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
