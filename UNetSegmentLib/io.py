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
    """Read an image file or a DICOM folder.

    A file is first checked whole against its header (:mod:`.file_checks`: a
    truncated or corrupted NRRD, NIfTI, MetaImage or DICOM file raises
    ``ImageReadError``, never a partly read image). A folder is indexed and its
    axial T2 series chosen and checked (:func:`UNetSegmentLib.dicom.read_dicom`;
    refuses ambiguous choices and broken series). ``channel`` selects one
    component of a multi-component image or one volume of a 4D image
    (Decathlon T2+ADC); the result is then 3D scalar.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"input not found: {p}")
    if p.is_dir():
        from .dicom import read_dicom

        image = read_dicom(p).image
    else:
        image = _read_file(p)
    if channel is not None:
        image = select_channel(image, channel)
    return image


def _read_file(p: Path) -> sitk.Image:
    from .file_checks import check_image_file

    try:
        check_image_file(p)
        if _is_dicom_file(p):
            from .dicom.integrity import check_dicom_file

            check_dicom_file(p)
        return sitk.ReadImage(str(p))
    except PermissionError as e:
        raise ImageReadError(f"cannot read {p} ({e.strerror})") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read {p}: it is a folder") from None
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        reason = next((line for line in lines if "ERROR" in line or "Exception" in line), lines[-1] if lines else "")
        raise ImageReadError(f"cannot read {p} as an image ({reason.strip()[:200]})") from None


def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


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
