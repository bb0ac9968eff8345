"""Which dataset a folder holds, from its layout as distributed: PROMISE12, MSD Task05, NCI-ISBI (TCIA), ProstateX or pairs.

:func:`detect_format` looks (not deeper than the layouts need) for

- MSD: ``dataset.json`` or ``imagesTr/``, in the folder or in ``Task05_Prostate/`` below it;
- PROMISE12: ``TrainingData_Part1..3`` / ``TestData`` folders, ``CaseNN.mhd`` files,
  or ``CaseNN_image`` / ``CaseNN_label`` pairs;
- NCI-ISBI: ``Training`` / ``Leaderboard`` / ``Test`` folders of ``<patient>.nrrd``
  labels, or ``Prostate3T-*`` / ``ProstateDx-*`` patient folders (TCIA);
- ProstateX (as ../shared/data keeps it): patient folders with ``t2w.nii.gz`` and ``labels/``;
- pairs: ``*_image.<ext>`` with ``*_label.<ext>``;
- image: one image file, or a folder of DICOM files.

It returns the format's name for :func:`training.data.registry.read_source`
and a sentence that says what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

from .msd import TASK, task_folder
from .nci_isbi import LABEL_RE, PATIENT_RE, SPLIT_RE
from .promise12 import distribution_parts

_CASE_MHD = re.compile(r"^Case\d\d(_segmentation)?\.mhd$", re.IGNORECASE)
_CASE_PAIR = re.compile(r"^Case\d\d_(image|label)\.", re.IGNORECASE)
_IMAGE_EXT = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Detected:
    """A dataset format (``msd``, ``promise12``, ``nci_isbi``, ``pairs`` or ``image``) and what gave it away."""

    format: str
    found: str


def _children(root: Path, depth: int = 3) -> List[Path]:
    out, level = [], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                entries = sorted(d.iterdir())
            except OSError:
                continue
            out += entries
            nxt += [e for e in entries if e.is_dir()]
        level = nxt
    return out


def detect_format(path: str) -> Detected:
    """The format of the dataset at ``path``; ``ValueError`` naming what was looked for when none fits."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    if root.is_file():
        return Detected("image", f"one image file ({root.name})")
    task = task_folder(root)
    if (task / "dataset.json").exists() or (task / "imagesTr").is_dir():
        n = len([p for p in (task / "imagesTr").glob("*.nii*") if not p.name.startswith(".")])
        where = f" in {TASK}/" if task != root else ""
        return Detected("msd", f"Medical Segmentation Decathlon {task.name}{where}: dataset.json, {n} training images")
    parts = distribution_parts(root)
    if parts:
        return Detected("promise12", f"PROMISE12 as downloaded: {', '.join(p.name for p in parts)}")
    files = [p.name for p in root.iterdir() if p.is_file()]
    if any(_CASE_MHD.match(f) for f in files):
        n = sum(1 for f in files if _CASE_MHD.match(f) and "_segmentation" not in f.lower())
        return Detected("promise12", f"PROMISE12 challenge layout: {n} CaseNN.mhd images")
    if any(_CASE_PAIR.match(f) for f in files):
        return Detected("promise12", "PROMISE12 cases as CaseNN_image / CaseNN_label pairs")
    from .prostatex import _image

    with_t2 = [root] if _image(root) else [p for p in sorted(root.iterdir()) if p.is_dir() and _image(p)]
    if with_t2 and any((p / "labels").is_dir() for p in with_t2):
        return Detected("prostatex", f"ProstateX patients with PI-CAI reference labels: {len(with_t2)} t2w images")
    below = _children(root)
    labels = [p for p in below if p.is_file() and LABEL_RE.match(p.name) and SPLIT_RE.search(p.parent.name.lower())]
    patients = [p for p in below if p.is_dir() and PATIENT_RE.match(p.name)]
    if labels or patients:
        splits = sorted({p.parent.name for p in labels})
        return Detected(
            "nci_isbi",
            f"NCI-ISBI 2013 (TCIA): {len(patients)} patient DICOM folders, labels in {', '.join(splits) or 'no label folder'}",
        )
    if any(f.lower().endswith(tuple(f"_image{e}" for e in _IMAGE_EXT)) for f in files):
        return Detected("pairs", "a folder of *_image / *_label pairs")
    if any(p.is_file() and p.suffix.lower() in ("", ".dcm", ".ima") for p in below[:200]):
        return Detected("image", "a folder of DICOM files (one series is read)")
    raise ValueError(
        f"cannot tell the dataset format of {path}: no dataset.json/imagesTr (MSD), TrainingData_Part*/TestData or "
        "CaseNN.mhd (PROMISE12), Training/Leaderboard/Test label folders or Prostate3T/ProstateDx patients (NCI-ISBI), "
        "t2w + labels/ patient folders (ProstateX), or *_image files (pairs); give --format"
    )
