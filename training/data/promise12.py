"""PROMISE12 (MICCAI 2012): whole-gland labels, four centres.

Reads the challenge's own layout (``Case00.mhd`` with ``Case00_segmentation.mhd``)
and the NIfTI pairs of ../shared/data (``Case00_image.nii.gz`` with
``Case00_label.nii.gz``). The root of the download as unpacked is read too:
``TrainingData_Part1``, ``TrainingData_Part2``, ``TrainingData_Part3`` (the 50
training cases with labels) and ``TestData`` (30 cases without labels, whose
numbers repeat the training ones: they become ``TestCase00`` ..., split ``test``,
centre unknown). Label 1 is the whole gland. The centre comes from the
case number (training set): BIDMC 0-12, UCL 1 and 26-37 (and 1 is UCL),
RUNMC 13-25, HK 38-49.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from . import Case
from .pairs import case_number, read_pairs

LABEL_MAP = {1: "prostate"}


def centre(case_id: str) -> str:
    """PROMISE12 training-set centre of a case id like ``Case07``."""
    n = case_number(case_id)
    if n == 1 or 26 <= n <= 37:
        return "UCL"
    if 0 <= n <= 12:
        return "BIDMC"
    if 13 <= n <= 25:
        return "RUNMC"
    if 38 <= n <= 49:
        return "HK"
    return ""


#: sub-folders of the challenge's download, as its zips unpack
TRAINING_PARTS = ("TrainingData_Part1", "TrainingData_Part2", "TrainingData_Part3")
TEST_PART = "TestData"


def distribution_parts(root: Path) -> List[Path]:
    """The challenge download's part folders present under ``root`` (names matched case-insensitively)."""
    if not root.is_dir():
        return []
    wanted = {n.lower() for n in TRAINING_PARTS + (TEST_PART,)}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in wanted)


def read_promise12(folder: str) -> List[Case]:
    """All cases of a PROMISE12 folder in either layout, or of the download's root, grouped by centre."""
    root = Path(folder)
    parts = distribution_parts(root)
    if parts:
        cases: List[Case] = []
        for part in parts:
            if part.name.lower() == TEST_PART.lower():
                for image in sorted(part.glob("Case*.mhd")):
                    if image.stem.endswith("_segmentation"):
                        continue
                    cases.append(Case(f"Test{image.stem}", str(image), None, dict(LABEL_MAP), "", "test", "promise12"))
            else:
                cases += read_promise12(str(part))
        if not cases:
            raise ValueError(f"no PROMISE12 cases in the parts {', '.join(p.name for p in parts)} of {folder}")
        return cases
    if any(root.glob("Case*_segmentation.mhd")):
        cases = read_pairs(folder, LABEL_MAP, image_suffix="", label_suffix="_segmentation", source="promise12")
        cases = [c for c in cases if not c.case_id.endswith("_segmentation")]
    else:
        cases = read_pairs(folder, LABEL_MAP, source="promise12")
    return [Case(c.case_id, c.image, c.label, c.label_map, centre(c.case_id), c.split, "promise12") for c in cases]
