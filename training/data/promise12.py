"""PROMISE12 (MICCAI 2012): whole-gland labels, four centres.

Reads the challenge's own layout (``Case00.mhd`` with ``Case00_segmentation.mhd``)
and the NIfTI pairs of ../shared/data (``Case00_image.nii.gz`` with
``Case00_label.nii.gz``). Label 1 is the whole gland. The centre comes from the
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


def read_promise12(folder: str) -> List[Case]:
    """All cases of a PROMISE12 folder in either layout, grouped by centre."""
    root = Path(folder)
    if any(root.glob("Case*_segmentation.mhd")):
        cases = read_pairs(folder, LABEL_MAP, image_suffix="", label_suffix="_segmentation", source="promise12")
        cases = [c for c in cases if not c.case_id.endswith("_segmentation")]
    else:
        cases = read_pairs(folder, LABEL_MAP, source="promise12")
    return [Case(c.case_id, c.image, c.label, c.label_map, centre(c.case_id), c.split, "promise12") for c in cases]
