"""Synthetic zonal cases: NIfTI pairs made by ``UNetSegmentLib.synthetic`` once, then read like any dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

from UNetSegmentLib.io import write_image
from UNetSegmentLib.synthetic import PZ_LABEL, TZ_LABEL, make_case

from . import Case

log = logging.getLogger(__name__)

LABEL_MAP = {PZ_LABEL: "peripheral_zone", TZ_LABEL: "transition_zone"}
GROUP = "synthetic"
#: every VALIDATION_EVERY-th case is a validation case (20 %)
VALIDATION_EVERY = 5


def case_seed(seed: int, index: int) -> int:
    """The generator seed of case ``index`` of a dataset made with ``seed``."""
    return seed * 1_000_003 + index


def generate_dataset(folder: str, num_cases: int, seed: int = 0) -> List[Case]:
    """Write ``num_cases`` synthetic cases into ``folder`` (once) and return them.

    Files are ``synthetic-s<seed>-<NNN>_image.nii.gz`` (int16) and
    ``..._label.nii.gz`` (uint8, 1 = PZ, 2 = TZ); existing pairs are kept, not
    rewritten. One case in five (the 5th, 10th, ...; at least one when there
    are two or more) is a validation case; group ``synthetic``.
    """
    if num_cases < 1:
        raise ValueError(f"a synthetic dataset needs num_cases >= 1, not {num_cases}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    cases: List[Case] = []
    made = 0
    for i in range(num_cases):
        case_id = f"synthetic-s{seed}-{i:03d}"
        image, label = root / f"{case_id}_image.nii.gz", root / f"{case_id}_label.nii.gz"
        if not (image.exists() and label.exists()):
            img, lab = make_case(case_seed(seed, i))
            write_image(lab, label)
            write_image(img, image)
            made += 1
        validation = (i + 1) % VALIDATION_EVERY == 0 or (
            num_cases < VALIDATION_EVERY and num_cases > 1 and i == num_cases - 1
        )
        split = "validation" if validation else "train"
        cases.append(Case(case_id, str(image), str(label), dict(LABEL_MAP), GROUP, split, "synthetic"))
    if made:
        log.info("wrote %d synthetic cases to %s (%d already there)", made, root, num_cases - made)
    return cases
