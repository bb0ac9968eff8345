"""Dataset readers: each turns a dataset on disk into a list of :class:`Case`.

A reader maps the dataset's label values onto the project's structure names
(``UNetSegmentLib.labels``) explicitly, and keeps the dataset's official split
where it has one; splits are always by patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass(frozen=True)
class Case:
    """One patient's image and label.

    ``image`` is a file (NRRD, NIfTI, MetaImage) or a DICOM series folder.
    ``label_map`` maps values in the label file to structure names;
    values not listed are background. ``group`` is the centre or scanner, used
    to stratify validation. ``split`` is train, validation or test.
    ``channel`` selects one component of a multi-channel (4D) image.
    ``weight`` scales how often training draws its patches (the source's ``weight``):
    0 keeps a case out of training while cross-validation still scores it.
    """

    case_id: str
    image: str
    label: Optional[str]
    label_map: Dict[int, str] = field(default_factory=dict)
    group: str = ""
    split: str = "train"
    source: str = ""
    channel: Optional[int] = None
    weight: float = 1.0
