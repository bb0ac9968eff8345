"""NCI-ISBI 2013 "Automated Segmentation of Prostate Structures" as distributed by TCIA.

Layout read (any depth below the dataset folder, names case-insensitive):

- DICOM: one folder per patient, ``Prostate3T-01-0001`` (3 T, Prostate-3T
  collection) or ``ProstateDx-01-0001`` (1.5 T, PROSTATE-DIAGNOSIS), with
  study/series subfolders of ``.dcm`` files, as the TCIA downloader writes them.
- Labels: one NRRD per patient in folders ``Training``, ``Leaderboard`` and
  ``Test``, named ``<patient>.nrrd`` or ``<patient>_truth.nrrd``.

Split: the challenge's own, by patient: Training -> train, Leaderboard ->
validation, Test -> test. Group: the scanner, ``3T`` or ``1.5T``. Patients
with DICOM but no label file are not part of the challenge and are skipped.

Labels: two structures, the central gland (CG) and the peripheral zone (PZ).
The project calls the central gland ``transition_zone`` (it is the TZ plus the
central zone and anterior stroma, as in the MSD and ProstateX zonal labels).
Which file value is which is decided per case by anatomy, not trusted from
any one description of the data: the PZ wraps the central gland posteriorly
and laterally, so its centroid lies posterior to the CG's, i.e. at a larger
LPS y. :func:`check_zone_labels` assigns the values (1, 2) by that rule and logs
the decision. When the rule cannot decide (a value absent, or centroids less
than ``MIN_SEPARATION_MM`` apart in y) the default mapping
``DEFAULT_LABEL_MAP`` = {1: central gland, 2: peripheral zone} is used; it is
the convention this challenge's label files are usually described with, but
we could not check it against the organisers' own text, hence the rule. A
per-case override (argument ``overrides`` or a ``label_overrides.json`` in the
dataset folder: ``{"ProstateDx-01-0006": {"1": "peripheral_zone", "2":
"central_gland"}}``) wins over both.

Geometry: label NRRDs may lie on a grid slightly different from their DICOM
series; preprocessing resamples labels in physical space, so the reader only
checks that the labelled voxels fall inside the series' volume, and reports
grid differences. A case whose labelled voxels lie mostly outside every series
of its patient is reported and left out.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentLib.labels import structure

from . import Case

log = logging.getLogger(__name__)

PATIENT_RE = re.compile(r"^(prostate3t|prostatedx)-\d{2}-\d{4}$", re.IGNORECASE)
LABEL_RE = re.compile(r"^((?:prostate3t|prostatedx)-\d{2}-\d{4})(?:_truth)?\.nrrd$", re.IGNORECASE)
SPLIT_RE = re.compile(r"(?:^|[^a-z])(training|leaderboard|test)(?:[^a-z]|$)")
SPLITS = {"training": "train", "leaderboard": "validation", "test": "test"}
GROUPS = {"prostate3t": "3T", "prostatedx": "1.5T"}

#: file value -> structure used when anatomy cannot decide (1 = central gland, 2 = PZ)
DEFAULT_LABEL_MAP: Dict[int, str] = {1: "transition_zone", 2: "peripheral_zone"}
#: the PZ's centroid must lie at least this far posterior (LPS y, mm) of the CG's for the rule to decide
MIN_SEPARATION_MM = 2.0
#: a label whose voxels lie less than this fraction inside its series is left out
MIN_OVERLAP = 0.5
OVERRIDES_FILE = "label_overrides.json"


@dataclass(frozen=True)
class SeriesGeometry:
    """The voxel grid of one DICOM series, from its headers (ITK conventions).

    ``size_xyz`` and ``spacing_xyz`` (mm) are ITK order (columns, rows,
    slices); ``origin_lps`` is the centre of the first voxel of the first slice
    along the slice normal; ``direction`` is 3x3 with the LPS unit vectors of
    the i, j, k axes as columns.
    """

    folder: Path
    series_uid: str
    size_xyz: Tuple[int, int, int]
    spacing_xyz: Tuple[float, float, float]
    origin_lps: Tuple[float, float, float]
    direction: Tuple[Tuple[float, ...], ...]
    description: str = ""

    def fraction_inside(self, points_lps: np.ndarray) -> float:
        """Fraction of ``(n, 3)`` LPS points (mm) inside the series' volume (voxel edges included)."""
        if len(points_lps) == 0:
            return 0.0
        m = np.asarray(self.direction) @ np.diag(self.spacing_xyz)
        idx = np.linalg.solve(m, (points_lps - np.asarray(self.origin_lps)).T).T
        size = np.asarray(self.size_xyz, dtype=float)
        inside = np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)
        return float(inside.mean())


@dataclass(frozen=True)
class ZoneCheck:
    """How a label file's values were mapped to structures, and why.

    ``decision`` is ``anatomy``, ``default`` or ``override``; ``pz_posterior_mm``
    is the PZ centroid's LPS y minus the CG centroid's under the chosen map
    (positive = anatomically plausible), ``None`` when a value is absent.
    """

    label_map: Dict[int, str]
    decision: str
    pz_posterior_mm: Optional[float]
    reason: str


@dataclass(frozen=True)
class NciIsbiEntry:
    """One labelled patient: its files, the chosen series and the checks made on them."""

    patient_id: str
    split: str
    group: str
    label_path: Path
    series: Optional[SeriesGeometry]
    zones: ZoneCheck
    overlap: float
    grid_note: str

    def to_case(self) -> Case:
        image = str(self.series.folder) if self.series is not None else ""
        return Case(
            self.patient_id, image, str(self.label_path), dict(self.zones.label_map), self.group, self.split, "nci_isbi"
        )


def _normalise_map(label_map: Mapping) -> Dict[int, str]:
    return {int(v): structure(str(n)).name for v, n in label_map.items()}


def check_zone_labels(
    label: sitk.Image,
    default: Optional[Mapping[int, str]] = None,
    min_separation_mm: float = MIN_SEPARATION_MM,
) -> ZoneCheck:
    """Assign label values 1 and 2 to central gland and peripheral zone by anatomy.

    Centroids are physical (LPS, mm), so the rule holds whatever the file's
    axis order or orientation. The value whose centroid is posterior (larger y)
    by at least ``min_separation_mm`` is the PZ; otherwise ``default`` applies.
    """
    default_map = _normalise_map(default if default is not None else DEFAULT_LABEL_MAP)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else label)
    present = set(stats.GetLabels())
    extra = sorted(present - {1, 2})
    if extra:
        log.warning("label values %s are neither 1 nor 2 and are ignored", extra)
    if not {1, 2} <= present:
        return ZoneCheck(default_map, "default", None, f"values present {sorted(present)}: anatomy cannot decide")
    y1, y2 = stats.GetCentroid(1)[1], stats.GetCentroid(2)[1]
    if abs(y1 - y2) < min_separation_mm:
        sep = (y1 - y2) if default_map.get(1) == "peripheral_zone" else (y2 - y1)
        return ZoneCheck(default_map, "default", sep, f"centroids only {abs(y1 - y2):.1f} mm apart in y")
    pz, cg = (1, 2) if y1 > y2 else (2, 1)
    chosen = dict(sorted({cg: "transition_zone", pz: "peripheral_zone"}.items()))
    agrees = chosen == {v: n for v, n in default_map.items() if v in (1, 2)}
    reason = f"value {pz} lies {abs(y1 - y2):.1f} mm posterior of value {cg}" + ("" if agrees else " (default swapped)")
    return ZoneCheck(chosen, "anatomy", abs(y1 - y2), reason)


def read_series_geometries(folder: Path) -> List[SeriesGeometry]:
    """Every DICOM series below ``folder``, from headers only (no pixel data is read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices: Dict[str, list] = defaultdict(list)
    tags = [
        "SeriesInstanceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "Rows",
        "Columns",
        "SeriesDescription",
        "SliceThickness",
    ]
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            continue
        slices[str(ds.get("SeriesInstanceUID", f.parent))].append((f, ds))
    out = []
    for uid, items in slices.items():
        ds0 = items[0][1]
        iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
        row, col = iop[:3], iop[3:]
        normal = np.cross(row, col)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
        order = np.argsort(positions @ normal)
        positions = positions[order]
        along = positions @ normal
        if len(items) > 1:
            dz = float(np.median(np.diff(along)))
        else:
            dz = float(ds0.get("SliceThickness", 1.0) or 1.0)
        folders = {items[i][0].parent for i in order}
        if len(folders) > 1:
            log.warning(
                "DICOM series %s is spread over %d folders; using %s", uid, len(folders), items[order[0]][0].parent
            )
        ps = [float(v) for v in ds0.PixelSpacing]  # (row spacing = y, column spacing = x)
        out.append(
            SeriesGeometry(
                folder=items[order[0]][0].parent,
                series_uid=uid,
                size_xyz=(int(ds0.Columns), int(ds0.Rows), len(items)),
                spacing_xyz=(ps[1], ps[0], max(abs(dz), 1e-3)),
                origin_lps=tuple(float(v) for v in positions[0]),
                direction=tuple(tuple(float(v) for v in r) for r in np.stack([row, col, normal], axis=1)),
                description=str(ds0.get("SeriesDescription", "")),
            )
        )
    return out


def _label_points(label: sitk.Image, max_points: int = 5000) -> np.ndarray:
    """LPS coordinates (mm) of up to ``max_points`` labelled voxels, ``(n, 3)``."""
    arr = sitk.GetArrayViewFromImage(label)
    idx_zyx = np.argwhere(arr > 0)
    if len(idx_zyx) > max_points:
        idx_zyx = idx_zyx[:: int(np.ceil(len(idx_zyx) / max_points))]
    idx_xyz = idx_zyx[:, ::-1].astype(float)
    m = np.asarray(label.GetDirection()).reshape(3, 3) @ np.diag(label.GetSpacing())
    return idx_xyz @ m.T + np.asarray(label.GetOrigin())


def _grid_note(label: sitk.Image, series: SeriesGeometry) -> str:
    """'' when the label lies on the series' grid, else a short description of the difference."""
    notes = []
    if tuple(label.GetSize()) != tuple(series.size_xyz):
        notes.append(f"size {label.GetSize()} vs {series.size_xyz}")
    if not np.allclose(label.GetSpacing(), series.spacing_xyz, rtol=1e-3, atol=1e-3):
        notes.append(
            f"spacing {np.round(label.GetSpacing(), 3).tolist()} vs {np.round(series.spacing_xyz, 3).tolist()}"
        )
    offset = float(np.linalg.norm(np.asarray(label.GetOrigin()) - np.asarray(series.origin_lps)))
    if offset > 0.1:
        notes.append(f"origin {offset:.1f} mm apart")
    if not np.allclose(np.asarray(label.GetDirection()).reshape(3, 3), np.asarray(series.direction), atol=1e-3):
        notes.append("direction differs")
    return "; ".join(notes)


def _find_labels(root: Path) -> Dict[str, Tuple[Path, str]]:
    """patient id -> (label file, split) for every label NRRD in a Training/Leaderboard/Test folder."""
    found: Dict[str, Tuple[Path, str]] = {}
    for f in sorted(root.rglob("*.nrrd")):
        m = LABEL_RE.match(f.name)
        if not m:
            continue
        split = None
        for parent in f.relative_to(root).parents:
            s = SPLIT_RE.search(parent.name.lower())
            if s:
                split = SPLITS[s.group(1)]
                break
        if split is None:
            log.warning("label %s is not in a Training, Leaderboard or Test folder; skipped", f)
            continue
        pid = _canonical_id(m.group(1))
        if pid in found:
            raise ValueError(f"two label files for {pid}: {found[pid][0]} and {f}")
        found[pid] = (f, split)
    return found


def _canonical_id(pid: str) -> str:
    prefix, rest = pid.split("-", 1)
    return ("Prostate3T" if prefix.lower() == "prostate3t" else "ProstateDx") + "-" + rest


def _find_patients(root: Path) -> Dict[str, Path]:
    """patient id -> DICOM patient folder (the outermost folder named like a patient)."""
    found: Dict[str, Path] = {}
    for d in sorted(root.rglob("*")):
        if d.is_dir() and PATIENT_RE.match(d.name):
            pid = _canonical_id(d.name)
            if pid in found and found[pid] in d.parents:
                continue
            if pid in found:
                log.warning("two DICOM folders for %s: %s and %s; using the first", pid, found[pid], d)
                continue
            found[pid] = d
    return found


def _read_overrides(root: Path, overrides: Optional[Mapping[str, Mapping]]) -> Dict[str, Dict[int, str]]:
    merged: Dict[str, Dict[int, str]] = {}
    file = root / OVERRIDES_FILE
    if file.exists():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        merged.update({_canonical_id(k): _normalise_map(v) for k, v in data.items()})
    for k, v in (overrides or {}).items():
        merged[_canonical_id(k)] = _normalise_map(v)
    return merged


def scan_nci_isbi(
    folder: str,
    overrides: Optional[Mapping[str, Mapping]] = None,
    min_overlap: float = MIN_OVERLAP,
) -> List[NciIsbiEntry]:
    """Every labelled patient with the checks made on it (zone mapping, series choice, geometry).

    Entries whose label lies outside its series (overlap < ``min_overlap``) or
    that have no DICOM are returned with ``series`` possibly ``None`` and
    ``overlap`` below the limit; :func:`read_nci_isbi` leaves them out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    labels = _find_labels(root)
    if not labels:
        raise ValueError(f"no NCI-ISBI label files (<patient>.nrrd in Training/Leaderboard/Test) in {folder}")
    patients = _find_patients(root)
    unlabelled = sorted(set(patients) - set(labels))
    if unlabelled:
        log.info("%d DICOM patients have no challenge label and are skipped (e.g. %s)", len(unlabelled), unlabelled[0])
    fixed = _read_overrides(root, overrides)
    entries = []
    for pid, (label_path, split) in sorted(labels.items()):
        label = sitk.ReadImage(str(label_path))
        if pid in fixed:
            zones = ZoneCheck(fixed[pid], "override", None, "per-case override")
        else:
            zones = check_zone_labels(label)
        level = logging.WARNING if "swapped" in zones.reason or zones.decision == "default" else logging.INFO
        log.log(level, "%s: %s by %s (%s)", pid, _describe(zones.label_map), zones.decision, zones.reason)
        group = GROUPS[pid.split("-")[0].lower()]
        if pid not in patients:
            log.warning("%s: label %s has no DICOM folder; left out", pid, label_path)
            entries.append(NciIsbiEntry(pid, split, group, label_path, None, zones, 0.0, "no DICOM"))
            continue
        points = _label_points(label)
        candidates = read_series_geometries(patients[pid])
        if not candidates:
            log.warning("%s: no DICOM series in %s; left out", pid, patients[pid])
            entries.append(NciIsbiEntry(pid, split, group, label_path, None, zones, 0.0, "no DICOM series"))
            continue
        scored = [(s.fraction_inside(points), _grid_note(label, s) == "", s.size_xyz[2], s) for s in candidates]
        overlap, _, _, series = max(scored, key=lambda t: t[:3])
        note = _grid_note(label, series)
        if overlap < min_overlap:
            log.warning(
                "%s: only %.0f %% of the labelled voxels lie inside series %s; left out",
                pid,
                100 * overlap,
                series.folder,
            )
        elif note:
            log.info("%s: label grid differs from the DICOM series (%s); resampled in physical space", pid, note)
        if len(candidates) > 1:
            log.info("%s: %d series; chose %s (%s)", pid, len(candidates), series.folder, series.description)
            sharing = [s for s in candidates if s.folder == series.folder]
            if len(sharing) > 1 and max(s.size_xyz[2] for s in sharing) > series.size_xyz[2]:
                log.warning(
                    "%s: folder %s holds a larger series than the labelled one; the image reader takes the largest",
                    pid,
                    series.folder,
                )
        entries.append(NciIsbiEntry(pid, split, group, label_path, series, zones, overlap, note))
    return entries


def _describe(label_map: Mapping[int, str]) -> str:
    return ", ".join(f"{v}={n}" for v, n in sorted(label_map.items()))


def read_nci_isbi(
    folder: str,
    overrides: Optional[Mapping[str, Mapping]] = None,
    min_overlap: float = MIN_OVERLAP,
) -> List[Case]:
    """The challenge's labelled cases with their official split; see the module docstring.

    ``overrides`` maps patient ids to a label map (value -> structure name or
    alias, e.g. ``{1: "pz", 2: "central_gland"}``) that replaces the
    anatomical decision for that case.
    """
    entries = scan_nci_isbi(folder, overrides, min_overlap)
    cases = [e.to_case() for e in entries if e.series is not None and e.overlap >= min_overlap]
    if not cases:
        raise ValueError(f"no usable NCI-ISBI case in {folder} (labels without matching DICOM series)")
    dropped = len(entries) - len(cases)
    if dropped:
        log.warning("%d of %d NCI-ISBI cases left out (see warnings above)", dropped, len(entries))
    return cases
