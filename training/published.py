"""Published results to set our evaluation beside, each with its source.

Only numbers that a paper, a model card or the project's data README states
are here; each entry says what data it was measured on, so the benchmark
report can say plainly which comparisons share our data and which do not.
IoU (Jaccard) is converted to Dice with ``Dice = 2 IoU / (1 + IoU)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


def iou_to_dice(iou: float) -> float:
    """Dice from IoU (Jaccard) of the same masks: ``2 IoU / (1 + IoU)``."""
    return 2.0 * iou / (1.0 + iou)


def dice_to_iou(dice: float) -> float:
    """IoU (Jaccard) from Dice of the same masks: ``Dice / (2 - Dice)``."""
    return dice / (2.0 - dice)


@dataclass(frozen=True)
class PublishedResult:
    """One published number.

    ``metric`` is ``"dice"`` or ``"iou"`` (as published; :attr:`dice` converts).
    ``structure`` uses the project's names (``prostate``, ``transition_zone``,
    ``peripheral_zone``) or a free text for other anatomy.
    ``same_source``: the dataset name our evaluations record in
    ``per_case.csv`` (``source`` column) when they evaluate the same dataset;
    ``same_case``/``same_label``: substrings of the image and reference-label
    paths that identify the very same case and reference (then the comparison
    is on identical data).
    """

    method: str
    data: str
    structure: str
    metric: str
    value: float
    source: str
    comparability: str
    hd_mm: Optional[float] = None
    same_source: Optional[str] = None
    same_case: Optional[Tuple[str, str]] = None

    @property
    def dice(self) -> float:
        return iou_to_dice(self.value) if self.metric == "iou" else self.value


CICEK_2016 = (
    "Çiçek Ö., Abdulkadir A., Lienkamp S.S., Brox T., Ronneberger O. 3D U-Net: Learning Dense Volumetric "
    "Segmentation from Sparse Annotation. MICCAI 2016, LNCS 9901:424-432; arXiv:1606.06650"
)
MILLETARI_2016 = (
    "Milletari F., Navab N., Ahmadi S.-A. V-Net: Fully Convolutional Neural Networks for Volumetric Medical "
    "Image Segmentation. 3DV 2016; arXiv:1606.04797, Table 1 (PROMISE12 test-set results)"
)
ADAMS_2022 = (
    "MONAI Model Zoo bundle prostate_mri_anatomy (Adams L.C., Bressem K.K.), docs/README.md, rater 1; "
    "Adams L.C. et al. Prostate158. Computers in Biology and Medicine 148:105817, 2022"
)
ISENSEE_2021 = (
    "Isensee F., Jaeger P.F., Kohl S.A.A., Petersen J., Maier-Hein K.H. nnU-Net: a self-configuring method for "
    "deep learning-based biomedical image segmentation. Nature Methods 18:203-211, 2021 (PROMISE12 test set; "
    "the figure as quoted in the project's issue 20, not re-checked here)"
)
PICAI_GLAND = (
    "PI-CAI whole-gland segmentation model (Bosma J.S. et al., picai_labels 'Bosma22b'; Saha A. et al. "
    "Lancet Oncology 2024): 5-fold cross-validation over 438 cases, as quoted in the project's issue 20"
)
TAPS = "lavlab-taps 1.1.2 (PyPI, CPU) run on ProstateX-0000, as recorded in ../shared/data/README.md ('Known values')"
SEED = (
    "the seed project UNetSegment grew from (its reported result, as given in the project brief; not re-measured here)"
)

PUBLISHED: Tuple[PublishedResult, ...] = (
    PublishedResult(
        "3D U-Net (Çiçek et al. 2016), semi-automated",
        "Xenopus kidney, confocal microscopy (the paper's own data)",
        "kidney",
        "iou",
        0.863,
        CICEK_2016,
        "Different data and modality: shows the architecture's reference result only.",
    ),
    PublishedResult(
        "Seed project 3D U-Net",
        "NCI-ISBI 2013 prostate MRI",
        "prostate",
        "iou",
        0.52,
        SEED,
        "Mean IoU INCLUDING the background class, which inflates it; not a whole-gland IoU. Different data "
        "unless we evaluate NCI-ISBI too.",
        same_source="nci_isbi",
    ),
    PublishedResult(
        "Imorphics (active appearance models)",
        "PROMISE12 test set (30 hidden cases; Litjens et al. 2014)",
        "prostate",
        "dice",
        0.879,
        MILLETARI_2016,
        "Same challenge and centres, different cases: the challenge keeps its test labels private and scores "
        "submissions itself; our PROMISE12 figures are on held-out training cases.",
        hd_mm=5.935,
        same_source="promise12",
    ),
    PublishedResult(
        "nnU-Net (Isensee et al. 2021)",
        "PROMISE12 test set (30 hidden cases)",
        "prostate",
        "dice",
        0.919,
        ISENSEE_2021,
        "Same challenge and centres, different cases (see above); the best published whole-gland result on "
        "PROMISE12 that we know of.",
        same_source="promise12",
    ),
    PublishedResult(
        "PI-CAI gland model (nnU-Net, Bosma22b)",
        "PI-CAI public training set, 438 cases, 5-fold cross-validation (3 T and 1.5 T, several Dutch and "
        "Norwegian centres)",
        "prostate",
        "dice",
        0.897,
        PICAI_GLAND,
        "Different data and its own cross-validation; ProstateX patients are part of PI-CAI, so it is the "
        "closest published figure to our ProstateX check.",
        same_source="prostatex",
    ),
    PublishedResult(
        "V-Net (Milletari et al. 2016), Dice loss",
        "PROMISE12 test set (30 hidden cases)",
        "prostate",
        "dice",
        0.869,
        MILLETARI_2016,
        "Same challenge and centres, different cases (see above).",
        hd_mm=5.71,
        same_source="promise12",
    ),
    PublishedResult(
        "MONAI prostate_mri_anatomy (U-Net)",
        "Prostate158 test set",
        "transition_zone",
        "dice",
        0.877,
        ADAMS_2022,
        "Different data (Prostate158, 3 T, one centre); zonal, so only comparable with a zonal model.",
        hd_mm=18.3,
        same_source="prostate158",
    ),
    PublishedResult(
        "MONAI prostate_mri_anatomy (U-Net)",
        "Prostate158 test set",
        "peripheral_zone",
        "dice",
        0.754,
        ADAMS_2022,
        "Different data (Prostate158, 3 T, one centre); zonal, so only comparable with a zonal model.",
        hd_mm=22.8,
        same_source="prostate158",
    ),
    PublishedResult(
        "TAPS (lavlab-taps 1.1.2)",
        "ProstateX-0000 vs AI reference Guerbet23 (PI-CAI)",
        "prostate",
        "dice",
        0.86,
        TAPS,
        "Same case and same reference when our report includes ProstateX-0000 against Guerbet23; one case, "
        "AI-made reference.",
        same_case=("ProstateX-0000", "Guerbet23"),
    ),
    PublishedResult(
        "TAPS (lavlab-taps 1.1.2)",
        "ProstateX-0000 vs AI reference Bosma22b (PI-CAI)",
        "prostate",
        "dice",
        0.83,
        TAPS,
        "Same case and same reference when our report includes ProstateX-0000 against Bosma22b; one case, "
        "AI-made reference.",
        same_case=("ProstateX-0000", "Bosma22b"),
    ),
)
