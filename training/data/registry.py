"""Dispatch a config's dataset sources to their readers, and choose the validation split."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import replace
from typing import Dict, List

from ..config import DatasetSource
from . import Case

FORMATS = ("nci_isbi", "msd", "promise12", "pairs", "synthetic")


def read_source(src: DatasetSource) -> List[Case]:
    """All cases of one source, with the source's official split where it has one."""
    if src.format == "promise12":
        from .promise12 import read_promise12

        return read_promise12(src.path)
    if src.format == "pairs":
        from .pairs import read_pairs

        return read_pairs(src.path, src.label_map, src.image_suffix, src.label_suffix)
    if src.format == "nci_isbi":
        from .nci_isbi import read_nci_isbi

        return read_nci_isbi(src.path)
    if src.format == "msd":
        from .msd import read_msd

        return read_msd(src.path)
    if src.format == "synthetic":
        from .synthetic import generate_dataset

        return generate_dataset(src.path, src.num_cases, src.seed)
    raise ValueError(f"unknown dataset format {src.format!r}; known: {', '.join(FORMATS)}")


def _rank(case_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{case_id}".encode()).hexdigest()


def assign_validation(cases: List[Case], ids: List[str], per_group: int, seed: int) -> List[Case]:
    """Mark validation cases: the listed ``ids``, else ``per_group`` cases of each group (centre).

    Choice by group is deterministic for a seed. Cases already in ``validation``
    or ``test`` (an official split) keep it.
    """
    known = {c.case_id for c in cases}
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValueError(f"validation cases not found in the data: {missing}")
    chosen = set(ids)
    if not ids and per_group > 0:
        groups: Dict[str, List[Case]] = defaultdict(list)
        for c in cases:
            if c.split == "train" and c.label:
                groups[c.group].append(c)
        for g in sorted(groups):
            ranked = sorted(groups[g], key=lambda c: _rank(c.case_id, seed))
            chosen.update(c.case_id for c in ranked[:per_group])
    return [replace(c, split="validation") if c.case_id in chosen and c.split == "train" else c for c in cases]


def read_all(sources: List[DatasetSource], per_group: int, seed: int) -> List[Case]:
    """Read every source and assign validation; case ids must be unique across sources."""
    out: List[Case] = []
    for src in sources:
        cases = read_source(src)
        if src.use_for_validation:
            cases = assign_validation(cases, list(src.validation), per_group, seed)
        else:
            cases = [replace(c, split="train") if c.split == "validation" else c for c in cases]
        out.extend(cases)
    ids = [c.case_id for c in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"case ids repeat across sources: {dup[:5]}")
    return out
