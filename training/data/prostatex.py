"""ProstateX patients with PI-CAI's public reference labels, as ../shared/data keeps them.

One folder per patient (``ProstateX-0000/``), or that folder itself::

    ProstateX-0000/t2w.nii.gz                               the axial T2 (NIfTI, NRRD or MetaImage)
    ProstateX-0000/labels/wholegland_AI_Guerbet23.nii.gz    whole gland = 1
    ProstateX-0000/labels/zonal_pz1_tz2_AI_Yuan23.nii.gz    peripheral zone = 1, transition zone = 2

Each patient is one case of centre ``ProstateX`` (Radboud, 3 T, no endorectal coil). Its
reference is the label named by ``reference`` (a file stem under ``labels/``); by default
``wholegland_AI_Guerbet23`` (the reference of the project's ProstateX target), else the first
whole-gland label in name order, else the first zonal one. A patient without
labels is a test case. The labels are AI-made (PI-CAI, CC BY-NC 4.0): train and check
with them, and say so in a model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from . import Case

IMAGE_NAMES = ("t2w.nii.gz", "t2w.nii", "t2w.nrrd", "t2w.mha", "t2w.mhd")
WHOLE_GLAND = {1: "prostate"}
ZONAL = {1: "peripheral_zone", 2: "transition_zone"}
CENTRE = "ProstateX"


def label_map_of(stem: str) -> Dict[int, str]:
    """The label values of a reference file, from its name (``wholegland_*`` or ``zonal_pz1_tz2_*``)."""
    if stem.startswith("wholegland"):
        return dict(WHOLE_GLAND)
    if stem.startswith("zonal_pz1_tz2"):
        return dict(ZONAL)
    raise ValueError(f"reference {stem!r}: not a wholegland_* or zonal_pz1_tz2_* label; its values are unknown")


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return ""


def _image(folder: Path) -> Optional[Path]:
    for n in IMAGE_NAMES:
        if (folder / n).is_file():
            return folder / n
    return None


def _references(folder: Path) -> Dict[str, Path]:
    labels = folder / "labels"
    if not labels.is_dir():
        return {}
    return {_stem(p): p for p in sorted(labels.iterdir()) if p.is_file() and _stem(p)}


DEFAULT_REFERENCE = "wholegland_AI_Guerbet23"


def _default(refs: Dict[str, Path]) -> Optional[str]:
    if DEFAULT_REFERENCE in refs:
        return DEFAULT_REFERENCE
    for prefix in ("wholegland", "zonal_pz1_tz2"):
        for stem in sorted(refs):
            if stem.startswith(prefix):
                return stem
    return None


def read_prostatex(folder: str, reference: str = "") -> List[Case]:
    """The patients under ``folder`` (or the patient folder itself), each with its chosen reference."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    patients = [root] if _image(root) else [p for p in sorted(root.iterdir()) if p.is_dir() and _image(p)]
    if not patients:
        raise ValueError(f"no ProstateX patient folders (with {IMAGE_NAMES[0]}) in {folder}")
    cases = []
    for p in patients:
        refs = _references(p)
        stem = reference or _default(refs)
        if reference and refs and reference not in refs:
            have = ", ".join(sorted(refs)) or "none"
            raise ValueError(f"{p.name}: no reference label {reference!r} under labels/ (there: {have})")
        label = refs.get(stem) if stem else None
        cases.append(
            Case(
                p.name,
                str(_image(p)),
                str(label) if label else None,
                label_map_of(stem) if label else dict(WHOLE_GLAND),
                CENTRE,
                "train" if label else "test",
                "prostatex",
            )
        )
    return cases
