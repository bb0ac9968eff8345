"""Any folder of image/label pairs: ``<id><image_suffix>.<ext>`` with ``<id><label_suffix>.<ext>``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

from . import Case

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _split_ext(name: str) -> tuple:
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return name, ""


def read_pairs(
    folder: str,
    label_map: Dict[int, str],
    image_suffix: str = "_image",
    label_suffix: str = "_label",
    source: str = "pairs",
) -> List[Case]:
    """Pair every ``*<image_suffix>.<ext>`` in ``folder`` with its label; unpaired images are test cases."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    if not label_map:
        raise ValueError("a folder of pairs needs a label_map, e.g. {1: prostate}")
    cases = []
    for f in sorted(root.iterdir()):
        stem, ext = _split_ext(f.name)
        if not ext or not stem.endswith(image_suffix):
            continue
        case_id = stem[: len(stem) - len(image_suffix)] if image_suffix else stem
        label = root / f"{case_id}{label_suffix}{ext}"
        if not label.exists():
            matches = [p for p in root.iterdir() if _split_ext(p.name)[0] == f"{case_id}{label_suffix}"]
            label = matches[0] if matches else None
        cases.append(
            Case(
                case_id,
                str(f),
                str(label) if label else None,
                dict(label_map),
                split="train" if label else "test",
                source=source,
            )
        )
    if not cases:
        raise ValueError(f"no images named *{image_suffix}.<ext> in {folder}")
    return cases


def case_number(case_id: str) -> int:
    """The first integer in a case id (``Case07`` -> 7); -1 if none."""
    m = re.search(r"\d+", case_id)
    return int(m.group()) if m else -1
