"""Medical Segmentation Decathlon, Task05_Prostate.

Layout: ``dataset.json``, ``imagesTr/prostate_XX.nii.gz`` (4D: T2 and ADC),
``labelsTr/prostate_XX.nii.gz`` and ``imagesTs/`` (no labels). The labels are
mapped from ``dataset.json``'s ``labels`` table by name (``PZ`` ->
peripheral_zone, ``TZ`` -> transition_zone; 1 = PZ, 2 = TZ in the release);
the image channel is the one ``modality`` calls T2 (0 in the release). Split:
``training`` -> train, ``test`` -> test, as the challenge gives it. All cases
come from Radboud University Medical Center (group ``Radboud``).

The release's archive also holds macOS ``._*`` resource files beside the
images; they are not images and are ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from UNetSegmentLib.labels import structure

from . import Case

log = logging.getLogger(__name__)

#: the release's label table, used when dataset.json has none
DEFAULT_LABELS = {"1": "PZ", "2": "TZ"}
GROUP = "Radboud"


def label_map_from_json(labels: Dict[str, str]) -> Dict[int, str]:
    """``{"0": "background", "1": "PZ", "2": "TZ"}`` -> ``{1: "peripheral_zone", 2: "transition_zone"}``."""
    out = {}
    for value, name in labels.items():
        if int(value) == 0 or str(name).strip().lower() == "background":
            continue
        try:
            out[int(value)] = structure(str(name)).name
        except KeyError:
            raise ValueError(f"dataset.json label {value}={name!r} is not a known prostate structure") from None
    return out


def t2_channel(modality: Optional[Dict[str, str]]) -> int:
    """Index of the T2 volume in the 4D images (``{"0": "T2", "1": "ADC"}`` -> 0)."""
    for key, name in (modality or {}).items():
        if str(name).strip().upper().startswith("T2"):
            return int(key)
    return 0


def _case_id(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _resolve(root: Path, rel: str) -> Path:
    return (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)


def _from_json(meta: dict) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    train = [(e["image"], e.get("label")) for e in meta.get("training", [])]
    test = [e if isinstance(e, str) else e["image"] for e in meta.get("test", [])]
    return train, test


def _from_folders(root: Path) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    def images(sub: str) -> List[Path]:
        return sorted(p for p in (root / sub).glob("*.nii*") if not p.name.startswith("."))

    train = [(str(p), str(root / "labelsTr" / p.name)) for p in images("imagesTr")]
    return train, [str(p) for p in images("imagesTs")]


TASK = "Task05_Prostate"


def task_folder(root: Path) -> Path:
    """``root`` itself, or its ``Task05_Prostate`` sub-folder when ``root`` is where the archive was unpacked."""
    if (root / "dataset.json").exists() or (root / "imagesTr").is_dir():
        return root
    inner = root / TASK
    return inner if inner.is_dir() else root


def read_msd(folder: str) -> List[Case]:
    """All cases of a Task05_Prostate folder (or the folder it was unpacked in): training with labels, test without."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    root = task_folder(root)
    meta_file = root / "dataset.json"
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
        train, test = _from_json(meta)
    else:
        log.warning("%s has no dataset.json; reading imagesTr/labelsTr/imagesTs with the release's labels", root)
        meta = {}
        train, test = _from_folders(root)
    label_map = label_map_from_json(meta.get("labels") or DEFAULT_LABELS)
    channel = t2_channel(meta.get("modality"))
    cases: List[Case] = []
    for image, label in train:
        img, lab = _resolve(root, image), _resolve(root, label) if label else None
        if not img.exists() or lab is None or not lab.exists():
            log.warning("MSD training case %s: image or label missing; skipped", _case_id(image))
            continue
        cases.append(Case(_case_id(image), str(img), str(lab), dict(label_map), GROUP, "train", "msd", channel))
    for image in test:
        img = _resolve(root, image)
        if not img.exists():
            log.warning("MSD test image %s missing; skipped", img)
            continue
        cases.append(Case(_case_id(image), str(img), None, dict(label_map), GROUP, "test", "msd", channel))
    if not cases:
        raise ValueError(f"no MSD cases found in {folder}")
    return cases
