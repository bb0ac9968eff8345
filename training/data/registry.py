"""Dispatch a config's dataset sources to their readers, and choose the validation split."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..config import DatasetSource, ExperimentConfig
from . import Case

FORMATS = ("nci_isbi", "msd", "promise12", "prostatex", "pairs", "synthetic")


def read_source(src: DatasetSource) -> List[Case]:
    """All cases of one source, with the source's official split where it has one."""
    if src.format == "promise12":
        from .promise12 import read_promise12

        return read_promise12(src.path)
    if src.format == "prostatex":
        from .prostatex import read_prostatex

        return read_prostatex(src.path, src.reference)
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


def assign_fold(cases: List[Case], foldable: Set[str], folds: int, fold: int, seed: int) -> List[Case]:
    """Cross-validation: fold ``fold`` of ``folds`` becomes the validation cases, the rest train.

    The labelled train and validation cases named in ``foldable`` are ranked within each
    (source, group) by a seeded hash and dealt out to the folds in turn, the count running
    on from one group to the next: every fold mixes the centres, and fold sizes differ by at
    most one. Other cases (test, unlabelled, sources kept out of validation) are untouched.
    """

    def folded(c: Case) -> bool:
        return c.case_id in foldable and bool(c.label) and c.split in ("train", "validation")

    groups: Dict[Tuple[str, str], List[Case]] = defaultdict(list)
    for c in cases:
        if folded(c):
            groups[(c.source, c.group)].append(c)
    n = sum(len(g) for g in groups.values())
    if n < folds:
        raise ValueError(f"data.folds={folds} needs at least {folds} labelled cases to divide; there are {n}")
    chosen: Set[str] = set()
    dealt = 0
    for key in sorted(groups):
        for c in sorted(groups[key], key=lambda c: _rank(c.case_id, seed)):
            if dealt % folds == fold:
                chosen.add(c.case_id)
            dealt += 1
    return [replace(c, split="validation" if c.case_id in chosen else "train") if folded(c) else c for c in cases]


def read_all(
    sources: List[DatasetSource],
    per_group: int,
    seed: int,
    folds: int = 0,
    fold: int = 0,
    reader: Optional[Callable[[DatasetSource], List[Case]]] = None,
) -> List[Case]:
    """Read every source and assign validation; case ids must be unique across sources.

    With ``folds`` (cross-validation) the validation cases are fold ``fold`` of the cases
    of every source used for validation (:func:`assign_fold`) instead of ``per_group`` per centre.
    ``reader`` replaces :func:`read_source` (a data pack's cases, ``training/pack.py``).
    """
    out: List[Case] = []
    foldable: Set[str] = set()
    for src in sources:
        cases = (reader or read_source)(src)
        if src.weight != 1.0:
            cases = [replace(c, weight=float(src.weight)) for c in cases]
        if not src.use_for_validation:
            cases = [replace(c, split="train") if c.split == "validation" else c for c in cases]
        elif folds:
            if src.validation:
                raise ValueError(
                    f"data.folds: cross-validation chooses the validation cases itself, but the {src.format} "
                    f"source at {src.path} lists its own ({', '.join(src.validation[:3])}); remove that list"
                )
            foldable.update(c.case_id for c in cases)
        else:
            cases = assign_validation(cases, list(src.validation), per_group, seed)
        out.extend(cases)
    ids = [c.case_id for c in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"case ids repeat across sources: {dup[:5]}")
    if folds:
        out = assign_fold(out, foldable, folds, fold, seed)
    return out


def config_cases(cfg: ExperimentConfig, reader: Optional[Callable[[DatasetSource], List[Case]]] = None) -> List[Case]:
    """The cases of an experiment config, each with its split (validation, or the cross-validation fold).

    ``reader``: read each source with it instead (a data pack's cases, ``training/pack.py``).
    """
    d = cfg.data
    return read_all(d.sources, d.validation_per_group, cfg.train.seed, d.folds, d.fold, reader)
