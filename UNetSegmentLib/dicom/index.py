"""An index of the DICOM series under a folder, from headers only (pydicom, ``stop_before_pixels``).

A folder may hold anything a PACS export or a CD holds: one series, or a tree
of patients / studies / series, flat or nested, with or without a DICOMDIR.
:func:`index_folder` reads every file's header once and groups the image
instances by SeriesInstanceUID. When the folder has a ``DICOMDIR`` the files
it lists are the ones indexed (a CD's other files are left alone).

Files that are not DICOM are skipped when their extension says so (``.txt``,
``.xml``, ``.jpg`` ...); a file that should be DICOM (``.dcm``, ``.ima`` or no
extension) but cannot be read, including an empty one, is kept in
``DicomIndex.unreadable`` so that the series sharing its folder can be failed
by name (:mod:`UNetSegmentLib.dicom.read`).

Geometry is DICOM's patient frame, LPS, in mm: ``position_lps`` is
ImagePositionPatient (centre of the first voxel of a slice or frame),
``orientation`` ImageOrientationPatient (row direction, then column direction).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import ImageReadError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Extensions of files that are never DICOM images (skipped without a word).
NOT_DICOM_EXTENSIONS = {
    ".txt", ".xml", ".json", ".html", ".htm", ".pdf", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".db", ".ini",
    ".md", ".csv", ".nrrd", ".nhdr", ".nii", ".gz", ".mha", ".mhd", ".raw", ".zip", ".exe", ".inf", ".log",
    ".js", ".css", ".xsl", ".py", ".sh", ".bat", ".iso", ".dll", ".mat", ".npz", ".npy", ".seg",
}  # fmt: skip
#: File names of the DICOM media format that are not images.
NOT_IMAGE_NAMES = {"dicomdir", "lockfile", "version", "autorun"}
#: SOP classes that hold no image to segment (reports, presentation states, segmentations, RT, waveforms ...).
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, SEG (.66.4)
    "1.2.840.10008.5.1.4.1.1.481.",  # RT
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA
)
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass(frozen=True)
class Frame:
    """One 2D slice of a series: a single-frame file, or frame ``frame`` (0-based) of a multi-frame file."""

    path: Path
    frame: Optional[int]
    sop_instance_uid: str
    instance_number: Optional[int]
    position_lps: Optional[Tuple[float, float, float]]
    orientation: Optional[Tuple[float, ...]]
    rows: int
    columns: int
    pixel_spacing: Optional[Tuple[float, float]]


@dataclass
class Series:
    """The headers that describe one series, and its frames (in file order; see ``integrity`` for slice order)."""

    uid: str
    study_uid: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    series_number: Optional[int] = None
    description: str = ""
    protocol: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    image_type: Tuple[str, ...] = ()
    scanning_sequence: str = ""
    sequence_name: str = ""
    echo_time_ms: Optional[float] = None
    repetition_time_ms: Optional[float] = None
    b_value: Optional[float] = None
    contrast_agent: str = ""
    transfer_syntaxes: Tuple[str, ...] = ()
    frames: List[Frame] = field(default_factory=list)
    files: List[Path] = field(default_factory=list)
    number: int = 0  #: 1-based position in the index's listing (``--series N``)

    @property
    def folders(self) -> List[Path]:
        return sorted({f.parent for f in self.files})

    @property
    def multi_frame(self) -> bool:
        return any(f.frame is not None for f in self.frames)

    @property
    def normal(self) -> Optional[np.ndarray]:
        """Unit slice normal (LPS) = row direction x column direction of the first frame, or None."""
        o = next((f.orientation for f in self.frames if f.orientation), None)
        if o is None:
            return None
        n = np.cross(np.asarray(o[:3], float), np.asarray(o[3:], float))
        norm = float(np.linalg.norm(n))
        return n / norm if norm > 1e-6 else None

    @property
    def plane(self) -> str:
        """``axial``, ``coronal`` or ``sagittal`` (the patient axis closest to the slice normal), or ``unknown``."""
        n = self.normal
        if n is None:
            return "unknown"
        return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(n)))]

    @property
    def tilt_deg(self) -> Optional[float]:
        """Angle (degrees) between the slice normal and its closest patient axis."""
        n = self.normal
        if n is None:
            return None
        return float(np.degrees(np.arccos(min(1.0, float(np.max(np.abs(n)))))))

    @property
    def orientation_text(self) -> str:
        tilt = self.tilt_deg
        if tilt is None:
            return "unknown orientation"
        orientations = {tuple(np.round(f.orientation, 3)) for f in self.frames if f.orientation}
        text = self.plane if tilt < 1 else f"{self.plane} (tilted {tilt:.0f} deg)"
        return text if len(orientations) <= 1 else f"mixed ({len(orientations)} orientations)"

    @property
    def size_text(self) -> str:
        sizes = {(f.columns, f.rows) for f in self.frames}
        if len(sizes) != 1:
            return "mixed sizes"
        c, r = next(iter(sizes))
        return f"{c}x{r}"

    def label(self) -> str:
        """``series 3 'T2 TSE TRA'`` (the number is the listing's, the text the SeriesDescription)."""
        name = self.description or self.protocol or "(no description)"
        return f"series {self.number} '{name}'"


@dataclass
class DicomIndex:
    """The image series under ``root``, in a stable order (patient, study, series number, UID)."""

    root: Path
    series: List[Series]
    unreadable: List[Tuple[Path, str]] = field(default_factory=list)
    via_dicomdir: bool = False

    def studies(self) -> Dict[Tuple[str, str], List[Series]]:
        """The series grouped by ``(patient id, study instance uid)``, in listing order."""
        out: Dict[Tuple[str, str], List[Series]] = {}
        for s in self.series:
            out.setdefault((s.patient_id, s.study_uid), []).append(s)
        return out

    def unreadable_in(self, folders: Sequence[Path]) -> List[Tuple[Path, str]]:
        """Unreadable files that lie in one of ``folders`` (a damaged slice of a series there)."""
        wanted = set(folders)
        return [(p, why) for p, why in self.unreadable if p.parent in wanted]


class NoDicomError(ImageReadError):
    """A folder holds no readable DICOM image."""


def _float(value) -> Optional[float]:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _vec(value, n: int) -> Optional[Tuple[float, ...]]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _candidate_files(root: Path) -> List[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() in NOT_DICOM_EXTENSIONS:
                continue
            if name.lower() in NOT_IMAGE_NAMES:
                continue
            files.append(Path(dirpath) / name)
    return files


def _find_case_insensitive(root: Path, parts: Sequence[str]) -> Path:
    p = root
    for part in parts:
        exact = p / part
        if exact.exists() or not p.is_dir():
            p = exact
            continue
        match = next((c for c in p.iterdir() if c.name.lower() == part.lower()), None)
        p = match if match is not None else exact
    return p


def dicomdir_files(dicomdir: Path) -> List[Path]:
    """The image files a DICOMDIR references (ReferencedFileID), resolved beside it (case-insensitively)."""
    import pydicom

    ds = pydicom.dcmread(str(dicomdir), force=True)
    out = []
    for rec in ds.get("DirectoryRecordSequence", []):
        ref = rec.get("ReferencedFileID")
        if ref is None:
            continue
        parts = [str(ref)] if isinstance(ref, str) else [str(v) for v in ref]
        out.append(_find_case_insensitive(dicomdir.parent, parts))
    return out


def _frames(ds, path: Path) -> List[Frame]:
    """The frames of one image file with their geometry (per-frame functional groups for enhanced objects)."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    sop = _text(ds.get("SOPInstanceUID"))
    number = _int(ds.get("InstanceNumber"))
    if "PerFrameFunctionalGroupsSequence" not in ds and n_frames == 1:
        return [
            Frame(
                path,
                None,
                sop,
                number,
                _vec(ds.get("ImagePositionPatient"), 3),
                _vec(ds.get("ImageOrientationPatient"), 6),
                rows,
                cols,
                _vec(ds.get("PixelSpacing"), 2),
            )
        ]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])

    def group(item, name):
        for source in (item, shared):
            if source is not None and name in source and len(source.get(name)):
                return source.get(name)[0]
        return None

    frames = []
    for i in range(n_frames):
        item = per_frame[i] if i < len(per_frame) else None
        pos = group(item, "PlanePositionSequence")
        ori = group(item, "PlaneOrientationSequence")
        meas = group(item, "PixelMeasuresSequence")
        frames.append(
            Frame(
                path,
                i,
                sop,
                number,
                _vec(pos.get("ImagePositionPatient"), 3)
                if pos is not None
                else _vec(ds.get("ImagePositionPatient"), 3),
                _vec(ori.get("ImageOrientationPatient"), 6)
                if ori is not None
                else _vec(ds.get("ImageOrientationPatient"), 6),
                rows,
                cols,
                _vec(meas.get("PixelSpacing"), 2) if meas is not None else _vec(ds.get("PixelSpacing"), 2),
            )
        )
    return frames


def _mr_attributes(ds) -> Dict[str, object]:
    """Sequence attributes, from the top level or, for enhanced MR, the functional groups."""
    out = {
        "scanning_sequence": _text(ds.get("ScanningSequence")),
        "sequence_name": _text(ds.get("SequenceName")) or _text(ds.get("PulseSequenceName")),
        "echo_time_ms": _float(ds.get("EchoTime")),
        "repetition_time_ms": _float(ds.get("RepetitionTime")),
        "b_value": _float(ds.get("DiffusionBValue")),
    }
    if "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        first = (ds.get("PerFrameFunctionalGroupsSequence") or [None])[0]
        for item in (shared, first):
            if item is None:
                continue
            timing = item.get("MRTimingAndRelatedParametersSequence")
            if timing and out["repetition_time_ms"] is None:
                out["repetition_time_ms"] = _float(timing[0].get("RepetitionTime"))
            echo = item.get("MREchoSequence")
            if echo and out["echo_time_ms"] is None:
                out["echo_time_ms"] = _float(echo[0].get("EffectiveEchoTime"))
            diff = item.get("MRDiffusionSequence")
            if diff and out["b_value"] is None:
                out["b_value"] = _float(diff[0].get("DiffusionBValue"))
    if out["b_value"] is None and "DiffusionBValue" not in ds:
        # Siemens private tag (0019,100C) B_value, when the file carries it unnamed
        b = ds.get((0x0019, 0x100C))
        if b is not None:
            try:
                out["b_value"] = float(b.value if not isinstance(b.value, bytes) else b.value.decode().strip("\0 "))
            except (TypeError, ValueError, UnicodeDecodeError):
                pass
    return out


def _read_header(path: Path):
    """``(dataset, None)`` or ``(None, reason)``: the header of ``path`` without its pixel data."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if size == 0:
        return None, "is empty (0 bytes)"
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True), None
    except InvalidDicomError:
        if path.suffix.lower() not in ("", ".dcm", ".ima", ".dicom") or _looks_like_text(path):
            return None, None  # not DICOM, and not named as if it were (or a README without extension)
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            if "SOPClassUID" in ds and "SeriesInstanceUID" in ds:
                return ds, None
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on garbage
            return None, f"is not a readable DICOM file ({type(e).__name__})"
        return None, "is not a DICOM file"
    except Exception as e:  # noqa: BLE001 - truncated headers raise struct/EOF/value errors
        return None, f"is not a readable DICOM file ({type(e).__name__}: {str(e)[:80]})"


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _is_image(ds) -> bool:
    sop = _text(ds.get("SOPClassUID"))
    if any(sop.startswith(p) for p in NON_IMAGE_SOP_PREFIXES):
        return False
    return "Rows" in ds and "Columns" in ds and "SeriesInstanceUID" in ds


def index_folder(folder: PathLike, files: Optional[Sequence[Path]] = None) -> DicomIndex:
    """Index the image series under ``folder`` (headers only). Raises :class:`NoDicomError` if there are none.

    ``files``: index only these files (default: the DICOMDIR's files if ``folder``
    has one, else every file under ``folder``).
    """
    root = Path(folder)
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise ImageReadError(
            f"{root} is a folder; reading DICOM needs pydicom: pip install pydicom (or unetsegment[dicom])"
        ) from None
    via_dicomdir = False
    unreadable: List[Tuple[Path, str]] = []
    if files is None:
        dicomdir = next((p for p in (root / "DICOMDIR", root / "dicomdir") if p.is_file()), None)
        if dicomdir is not None:
            try:
                files = dicomdir_files(dicomdir)
                via_dicomdir = bool(files)
                log.info("following %s: %d files", dicomdir, len(files))
            except Exception as e:  # noqa: BLE001 - a damaged DICOMDIR: fall back to the files themselves
                log.warning("the DICOMDIR %s cannot be read (%s); reading the files under %s", dicomdir, e, root)
                files = None
        if not files:
            files = _candidate_files(root)
    by_uid: Dict[str, Series] = {}
    for path in files:
        if not path.is_file():
            unreadable.append((path, "is listed in the DICOMDIR but missing"))
            continue
        ds, reason = _read_header(path)
        if ds is None:
            if reason:
                unreadable.append((path, reason))
            continue
        if not _is_image(ds):
            continue
        uid = _text(ds.get("SeriesInstanceUID"))
        s = by_uid.get(uid)
        if s is None:
            s = by_uid[uid] = Series(
                uid=uid,
                study_uid=_text(ds.get("StudyInstanceUID")),
                patient_id=_text(ds.get("PatientID")),
                study_date=_text(ds.get("StudyDate")),
                study_description=_text(ds.get("StudyDescription")),
                series_number=_int(ds.get("SeriesNumber")),
                description=_text(ds.get("SeriesDescription")),
                protocol=_text(ds.get("ProtocolName")),
                modality=_text(ds.get("Modality")).upper(),
                sop_class_uid=_text(ds.get("SOPClassUID")),
                image_type=tuple(v.upper() for v in _text(ds.get("ImageType")).split("\\") if v),
                contrast_agent=_text(ds.get("ContrastBolusAgent")),
                **_mr_attributes(ds),
            )
        s.files.append(path)
        s.frames.extend(_frames(ds, path))
        ts = _text(getattr(ds, "file_meta", {}).get("TransferSyntaxUID")) if hasattr(ds, "file_meta") else ""
        if ts and ts not in s.transfer_syntaxes:
            s.transfer_syntaxes = s.transfer_syntaxes + (ts,)
    series = sorted(
        by_uid.values(),
        key=lambda s: (
            s.patient_id,
            s.study_date,
            s.study_uid,
            s.series_number if s.series_number is not None else 1 << 30,
            s.uid,
        ),
    )
    for i, s in enumerate(series, start=1):
        s.number = i
    if not series:
        detail = (
            f"; {len(unreadable)} file(s) could not be read, e.g. {unreadable[0][0]} {unreadable[0][1]}"
            if unreadable
            else ""
        )
        raise NoDicomError(f"no DICOM images in {root}{detail}")
    return DicomIndex(root, series, unreadable, via_dicomdir)
