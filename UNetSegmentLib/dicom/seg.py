"""DICOM Segmentation (SEG) objects written with highdicom, referencing the source series.

    headers = read_series_headers(folder, labelmap)   # pydicom headers, one per labelmap slice
    seg = build_segmentation(labelmap, headers, package.info)
    write_segmentation(seg, "result.dcm")

The labelmap must be on the grid SimpleITK read from the series (what ``Predictor.predict`` returns
for a DICOM folder). Slice ``k`` of the labelmap's numpy ``(z, y, x)`` array is matched to the source
instance whose ImagePositionPatient is the physical (LPS, mm) position of voxel index ``(0, 0, k)``,
so the SEG's frames reference exactly the instances they were computed from, whatever order the
files lie in. Rows and columns of a frame are the labelmap's ``y`` and ``x`` (DICOM row/column).

highdicom and pydicom are optional dependencies (extra ``dicom``); this module imports them at import
time, so import it only when a SEG is asked for.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from .. import __version__

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Largest distance (mm) between a labelmap slice and its source instance's position.
POSITION_TOLERANCE_MM = 0.05
#: Largest difference between the labelmap's axes and the instances' ImageOrientationPatient.
ORIENTATION_TOLERANCE = 1e-3
#: Added to the source SeriesNumber to number the SEG series (a PACS lists series by number).
SERIES_NUMBER_OFFSET = 1000


class DicomSegError(Exception):
    """The source series does not match the labelmap, or the SEG cannot be built."""


def _is_image_instance(ds: pydicom.Dataset) -> bool:
    return all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"))


def read_headers(folder: PathLike) -> Dict[str, List[pydicom.Dataset]]:
    """Every readable DICOM image header under ``folder`` (recursively), grouped by SeriesInstanceUID.

    Pixel data are not read. Files that are not DICOM, or DICOM without image geometry, are skipped.
    """
    series: Dict[str, List[pydicom.Dataset]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue
        if _is_image_instance(ds) and "SeriesInstanceUID" in ds:
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return series


def sort_along_normal(headers: Sequence[pydicom.Dataset]) -> List[pydicom.Dataset]:
    """Instances sorted by their position along the slice normal (row x column direction)."""
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(headers, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def match_instances(labelmap: sitk.Image, headers: Sequence[pydicom.Dataset]) -> List[pydicom.Dataset]:
    """The source instance of each labelmap slice, in labelmap ``z`` order; ``DicomSegError`` if any is missing.

    Checks that rows, columns and the in-plane axes agree, then pairs slice ``k`` with the instance at
    the LPS position of voxel ``(0, 0, k)`` (within :data:`POSITION_TOLERANCE_MM`).
    """
    nx, ny, nz = labelmap.GetSize()
    direction = np.asarray(labelmap.GetDirection(), dtype=float).reshape(3, 3)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in headers])
    chosen: List[pydicom.Dataset] = []
    for k in range(nz):
        point = np.asarray(labelmap.TransformIndexToPhysicalPoint((0, 0, k)), dtype=float)
        dist = np.linalg.norm(positions - point, axis=1)
        i = int(np.argmin(dist))
        if dist[i] > POSITION_TOLERANCE_MM:
            raise DicomSegError(f"no source instance at slice {k} of the labelmap (nearest {dist[i]:.2f} mm away)")
        ds = headers[i]
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise DicomSegError(f"instance {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, the labelmap {ny}x{nx}")
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if np.abs(iop[:3] - direction[:, 0]).max() > ORIENTATION_TOLERANCE or (
            np.abs(iop[3:] - direction[:, 1]).max() > ORIENTATION_TOLERANCE
        ):
            raise DicomSegError(f"instance {ds.SOPInstanceUID} is not oriented like the labelmap")
        chosen.append(ds)
    if len({ds.SOPInstanceUID for ds in chosen}) != nz:
        raise DicomSegError("two labelmap slices map to the same source instance")
    return chosen


def read_series_headers(folder: PathLike, labelmap: sitk.Image) -> List[pydicom.Dataset]:
    """The headers of the series under ``folder`` that ``labelmap`` lies on, one per labelmap slice.

    Of the series found, the ones with as many instances as the labelmap has slices are tried, largest
    first; the first whose instances match the labelmap's geometry (:func:`match_instances`) is used.
    """
    nz = labelmap.GetSize()[2]
    groups = read_headers(folder)
    if not groups:
        raise DicomSegError(f"no DICOM image series in {folder}")
    errors = []
    for uid, headers in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if len(headers) < nz:
            continue
        try:
            return match_instances(labelmap, sort_along_normal(headers))
        except DicomSegError as e:
            errors.append(f"{uid}: {e}")
    detail = "; ".join(errors) if errors else f"no series with {nz} instances"
    raise DicomSegError(f"the labelmap does not lie on a DICOM series in {folder} ({detail})")


def _code(d: Dict[str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=str(d["code"]), scheme_designator=str(d["scheme"]), meaning=str(d["meaning"]))


def segment_descriptions(info) -> List[hd.seg.SegmentDescription]:
    """One segment per model label, numbered 1..N in ``model.json`` order, with its SNOMED CT codes.

    ``info`` is a :class:`~UNetSegmentLib.model_package.ModelInfo`; the algorithm is identified by
    the model id (name) and version.
    """
    algorithm = hd.AlgorithmIdentificationSequence(
        name=info.id, family=codes.cid7162.ArtificialIntelligence, version=info.version, source="UNetSegment"
    )
    out = []
    for number, lab in enumerate(info.labels, start=1):
        term = lab.structure.to_dict()["terminology"]
        rgb = np.asarray(lab.structure.color, dtype=float) / 255.0
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=lab.structure.display_name,
                segmented_property_category=_code(term["category"]),
                segmented_property_type=_code(term["type"]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{info.id} {lab.structure.name}",
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    return out


def build_segmentation(
    labelmap: sitk.Image,
    source_headers: Sequence[pydicom.Dataset],
    info,
    series_number: Optional[int] = None,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``labelmap`` (uint8 label values of ``info.labels``) on ``source_headers``.

    ``source_headers``: one per labelmap slice, in labelmap ``z`` order (:func:`read_series_headers`).
    ``series_number`` defaults to the source's SeriesNumber + :data:`SERIES_NUMBER_OFFSET`. Empty
    frames are kept, so frame ``k`` is labelmap slice ``k`` for every segment.
    """
    array_zyx = sitk.GetArrayFromImage(labelmap)
    if len(source_headers) != array_zyx.shape[0]:
        raise DicomSegError(f"{len(source_headers)} source instances for {array_zyx.shape[0]} labelmap slices")
    segments = np.zeros(array_zyx.shape, dtype=np.uint8)
    for number, lab in enumerate(info.labels, start=1):
        segments[array_zyx == lab.value] = number
    first = source_headers[0]
    if series_number is None:
        series_number = int(first.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
    try:
        with warnings.catch_warnings():
            # the source's PatientName is copied as it is; highdicom warns about single-component names
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            return _segmentation(source_headers, segments, info, series_number, instance_number)
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomSegError(f"cannot build the DICOM SEG: {e}") from e


def _segmentation(source_headers, segments, info, series_number: int, instance_number: int) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=list(source_headers),
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(info),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=int(instance_number),
        manufacturer="UNetSegment",
        manufacturer_model_name=f"{info.id}"[:64],
        software_versions=f"unetsegment {__version__}; {info.id} {info.version}"[:64],
        device_serial_number=(info.weights_digest or "unknown")[:16],
        series_description=f"{info.name} ({info.version})"[:64],
        content_label="SEGMENTATION",
        content_description=f"{info.id} {info.version}"[:64],
        content_creator_name="UNetSegment^Automatic",
        omit_empty_frames=False,
    )


def write_segmentation(seg: hd.seg.Segmentation, path: PathLike) -> Path:
    """Save ``seg`` to ``path`` (any name; ``.dcm`` by convention), atomically via a temporary file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.partial")
    try:
        seg.save_as(str(tmp))
        tmp.replace(p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_dicom_seg(
    labelmap: sitk.Image, dicom_folder: PathLike, info, path: PathLike, series_number: Optional[int] = None
) -> Path:
    """Read the source headers under ``dicom_folder``, build the SEG of ``labelmap`` and write it to ``path``."""
    headers = read_series_headers(dicom_folder, labelmap)
    seg = build_segmentation(labelmap, headers, info, series_number=series_number)
    log.info("DICOM SEG with %d frames referencing series %s", len(headers), headers[0].SeriesInstanceUID)
    return write_segmentation(seg, path)
