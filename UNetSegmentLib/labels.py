"""The project's label table: structures, colours and their SNOMED CT codes.

Zonal models output peripheral zone and transition zone; whole-gland models
output prostate. The whole gland is the union of the zones, which is how
training mixes cases that only have one kind of label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple


@dataclass(frozen=True)
class Structure:
    """A segmented anatomical structure and its DICOM/Slicer terminology.

    ``color`` is RGB in 0-255. ``snomed_code`` is a SNOMED CT concept
    (scheme ``SCT``) for the anatomic structure, used as the segment's
    "type" in Slicer's terminology (category: Anatomical structure).
    """

    name: str
    display_name: str
    color: Tuple[int, int, int]
    snomed_code: str
    snomed_meaning: str

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "color": list(self.color),
            "terminology": {
                "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                "type": {"scheme": "SCT", "code": self.snomed_code, "meaning": self.snomed_meaning},
            },
        }


PROSTATE = Structure("prostate", "Prostate", (216, 160, 102), "41216001", "Prostate")
PERIPHERAL_ZONE = Structure(
    "peripheral_zone", "Peripheral zone", (230, 158, 140), "279706003", "Peripheral zone of prostate"
)
TRANSITION_ZONE = Structure(
    "transition_zone", "Transition zone", (128, 174, 128), "399384005", "Transition zone of prostate"
)

STRUCTURES: Dict[str, Structure] = {s.name: s for s in (PROSTATE, PERIPHERAL_ZONE, TRANSITION_ZONE)}

#: Structures whose union is the whole gland.
ZONES = ("peripheral_zone", "transition_zone")

#: Whole-gland volumes (mL) an adult prostate plausibly has, small normal gland to large
#: benign hyperplasia; a segmentation outside this range is suspect, not necessarily wrong.
PLAUSIBLE_GLAND_ML = (15.0, 150.0)

#: Anatomical synonyms accepted in label maps of data readers and configs.
ALIASES: Dict[str, str] = {
    "prostate": "prostate",
    "whole_gland": "prostate",
    "wholegland": "prostate",
    "gland": "prostate",
    "peripheral_zone": "peripheral_zone",
    "pz": "peripheral_zone",
    "transition_zone": "transition_zone",
    "tz": "transition_zone",
    "central_gland": "transition_zone",
    "cg": "transition_zone",
}


def structure(name: str) -> Structure:
    """Look up a structure by name or alias (case-insensitive); ``KeyError`` if unknown."""
    key = ALIASES.get(name.strip().lower().replace(" ", "_").replace("-", "_"))
    if key is None:
        raise KeyError(f"unknown structure {name!r}; known: {sorted(STRUCTURES)}")
    return STRUCTURES[key]
