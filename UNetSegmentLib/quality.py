"""Quality flags: plain sentences that tell a reader why a result may deserve a closer look.

No flag blocks a result. :func:`input_flags` looks at the scan before it is segmented (is it an axial
T2-weighted pelvic scan like the training data?), :func:`output_flags` at the segmentation (is it one
plausible gland?). Each :class:`Flag` has a stable ``code`` (for scripts and the batch CSV) and one
sentence for people.

Thresholds, all physical (mm, mL) and chosen from the training data (``docs/uncertainty.md``):

- intensities: more than :data:`MAX_ZERO_FRACTION` of the voxels at or below zero (a masked ADC or
  diffusion map, a padded image), or more than :data:`MAX_NEGATIVE_FRACTION` negative (not a magnitude
  image), or fewer than :data:`MIN_DISTINCT_VALUES` grey levels;
- in-plane pixel coarser than :data:`MAX_INPLANE_SPACING_MM` (diffusion and ADC maps are 1.5-2.5 mm;
  T2 is 0.3-1.5 mm); field of view across the slice outside :data:`FIELD_OF_VIEW_MM`; slices thicker
  than :data:`MAX_SLICE_THICKNESS_MM`;
- acquisition plane from the slice normal (the axis with the largest spacing): sagittal or coronal is
  flagged, and an axial plane tilted more than :data:`MAX_OBLIQUITY_DEG` from the patient's axial plane;
- an endorectal coil: the DICOM ReceiveCoilName names it, or the centre of the scan holds signal more than
  :data:`COIL_BRIGHTNESS_RATIO` times the 99th percentile of the tissue (the coil's bright halo; on
  PROMISE12 the coil cases give 3.6-8.1, the others 0.6-1.7);
- DICOM SeriesDescription, ProtocolName or ImageType naming another contrast (:data:`OTHER_CONTRASTS`);
- output: whole-gland volume outside ``labels.PLAUSIBLE_GLAND_ML``; more than one 26-connected
  component; gland on the first or last slice or on the in-plane edge; a slice without gland between
  slices with gland; enclosed holes in a slice; confidence below the model's calibrated threshold
  (:func:`confidence_threshold`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .labels import PLAUSIBLE_GLAND_ML
from .morphology import fill_holes, label_components

log = logging.getLogger(__name__)

MAX_ZERO_FRACTION = 0.30
MAX_NEGATIVE_FRACTION = 0.01
MIN_DISTINCT_VALUES = 64
MAX_INPLANE_SPACING_MM = 1.5
FIELD_OF_VIEW_MM = (100.0, 300.0)
MAX_SLICE_THICKNESS_MM = 4.5
MAX_OBLIQUITY_DEG = 30.0
COIL_BRIGHTNESS_RATIO = 2.5
#: Voxels enclosed by the gland in one slice, as a fraction of its volume, above which holes are flagged.
HOLE_FRACTION = 0.001

#: Default confidence threshold (``uncertainty.case_confidence``) where a model carries none in
#: ``model.json`` ``training.calibration.confidence_threshold``; from the held-out PROMISE12 cases of
#: the default model (``docs/uncertainty.md``).
DEFAULT_CONFIDENCE_THRESHOLD = 0.90

#: Words in a DICOM SeriesDescription / ProtocolName / ImageType that name another contrast.
OTHER_CONTRASTS: Dict[str, str] = {
    r"\badc\b|apparent diff": "an ADC map",
    r"\bdwi\b|\bdiff|\bb-?\d{2,4}\b|\bep2d|\bbval|\btrace\b|\bhbv\b|calc_?bval": "a diffusion-weighted series",
    r"\bdce\b|dynamic|perfusion|\bvibe\b|twist|\bt1\b|t1w|t1_": "a T1-weighted or dynamic contrast-enhanced series",
    r"localiz|localis|scout|survey|\bloc\b|haste_loc": "a localizer",
}
CONTRAST_TEXT_TAGS = {"0008|103e": "SeriesDescription", "0018|1030": "ProtocolName", "0008|0008": "ImageType"}
RECEIVE_COIL_TAG = "0018|1250"

PLANE_SENTENCE = (
    "It looks like a {plane} acquisition: the model was trained on axial T2 and segments other planes worse "
    "(on one patient the default model's sagittal and coronal T2 gave Dice 0.78 and 0.63 against the axial "
    "reference, with 31% and 52% less volume); use the axial T2 series if there is one."
)


@dataclass(frozen=True)
class Flag:
    """One finding: ``kind`` is ``"input"`` or ``"output"``; ``code`` a stable short name; ``message`` one sentence."""

    kind: str
    code: str
    message: str

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


# -- input ------------------------------------------------------------------------------------


def dicom_text_tags(folder: Union[str, Path], max_files: int = 50) -> Dict[str, str]:
    """SeriesDescription, ProtocolName, ImageType and ReceiveCoilName of the first DICOM file under ``folder``.

    Read with SimpleITK (no pydicom needed); keys are the tag names, missing tags are left out.
    """
    reader = sitk.ImageFileReader()
    wanted = dict(CONTRAST_TEXT_TAGS, **{RECEIVE_COIL_TAG: "ReceiveCoilName"})
    for i, f in enumerate(sorted(p for p in Path(folder).rglob("*") if p.is_file())):
        if i >= max_files:
            break
        try:
            reader.SetFileName(str(f))
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        return {name: reader.GetMetaData(tag).strip() for tag, name in wanted.items() if reader.HasMetaDataKey(tag)}
    return {}


def slice_axis(image: sitk.Image) -> int:
    """The ITK axis (0 x, 1 y, 2 z) the slices are stacked along: the largest spacing, z when tied."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return 2 if spacing[2] >= spacing.max() - 1e-6 else int(np.argmax(spacing))


def acquisition_plane(image: sitk.Image) -> Tuple[str, float]:
    """``(plane, tilt in degrees)``: the patient plane (axial, coronal, sagittal) nearest to the slices.

    The slice normal is the direction of :func:`slice_axis` in LPS; its largest component names the
    plane (S: axial, P: coronal, L: sagittal) and its angle to that axis is the tilt.
    """
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = direction[:, slice_axis(image)]
    normal = normal / np.linalg.norm(normal)
    i = int(np.argmax(np.abs(normal)))
    tilt = float(np.degrees(np.arccos(min(1.0, abs(normal[i])))))
    return ("sagittal", "coronal", "axial")[i], tilt


def _intensity_flags(image: sitk.Image) -> List[Flag]:
    a = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((a.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(a[::step, ::step, ::step], dtype=np.float32)
    flags = []
    negative = float(np.mean(sample < 0))
    if negative > MAX_NEGATIVE_FRACTION:
        flags.append(
            Flag(
                "input",
                "negative_intensities",
                f"{negative:.0%} of the voxels are negative, which a T2-weighted magnitude image never has: "
                "it may be a computed map or an already normalised image.",
            )
        )
    zero = float(np.mean(sample <= 0))
    if zero > MAX_ZERO_FRACTION:
        flags.append(
            Flag(
                "input",
                "masked_background",
                f"{zero:.0%} of the voxels are zero or below, as in a masked ADC or diffusion map "
                "rather than a T2-weighted scan.",
            )
        )
    distinct = len(np.unique(sample))
    if distinct < MIN_DISTINCT_VALUES:
        flags.append(
            Flag(
                "input",
                "few_grey_levels",
                f"The image has only {distinct} grey levels, unlike an MR scan: it may be a labelmap or a mask.",
            )
        )
    return flags


def _coil_flag(image: sitk.Image, tags: Dict[str, str]) -> Optional[Flag]:
    coil = tags.get("ReceiveCoilName", "")
    if re.search(r"endorect|\berc\b|\be-?coil", coil, re.IGNORECASE):
        return Flag(
            "input",
            "endorectal_coil",
            f"The scan was acquired with an endorectal coil ({coil}): the coil deforms the gland and brightens "
            "the tissue near it, so check the posterior outline.",
        )
    a = sitk.GetArrayViewFromImage(image)
    z, y, x = a.shape
    centre = np.asarray(
        a[z // 4 : max(z // 4 + 1, 3 * z // 4), y // 4 : 3 * y // 4, x // 4 : 3 * x // 4], dtype=np.float32
    )
    sample = np.asarray(a[:, ::2, ::2], dtype=np.float32)
    tissue = sample[sample > np.percentile(sample, 10)]
    if centre.size == 0 or tissue.size == 0:
        return None
    ratio = float(centre.max() / max(np.percentile(tissue, 99), 1e-6))
    if ratio > COIL_BRIGHTNESS_RATIO:
        return Flag(
            "input",
            "endorectal_coil",
            f"The centre of the scan holds signal {ratio:.1f} times brighter than the tissue, as near an endorectal "
            "coil: the coil deforms the gland, so check the posterior outline.",
        )
    return None


def input_flags(image: sitk.Image, dicom_tags: Optional[Dict[str, str]] = None) -> List[Flag]:
    """Flags about the scan: intensities, pixel size, field of view, slices, plane, coil, DICOM naming.

    ``dicom_tags``: :func:`dicom_text_tags` of the source DICOM folder, if the input was one.
    """
    tags = dicom_tags or {}
    flags = _intensity_flags(image)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    size = np.asarray(image.GetSize(), dtype=float)
    axis = slice_axis(image)
    inplane = [i for i in range(3) if i != axis]
    pixel = float(max(spacing[inplane]))
    if pixel > MAX_INPLANE_SPACING_MM:
        flags.append(
            Flag(
                "input",
                "coarse_pixels",
                f"The pixels are {pixel:.2g} mm across, coarser than a T2-weighted scan (0.3-1.5 mm) and typical of "
                "a diffusion or ADC series.",
            )
        )
    fov = float(max(size[inplane] * spacing[inplane]))
    lo, hi = FIELD_OF_VIEW_MM
    if fov < lo:
        flags.append(
            Flag(
                "input",
                "small_field_of_view",
                f"The field of view is {fov:.0f} mm, small for a pelvic scan: the gland may be cut off.",
            )
        )
    elif fov > hi:
        flags.append(
            Flag(
                "input",
                "large_field_of_view",
                f"The field of view is {fov:.0f} mm, wider than a prostate T2 (about 120-250 mm): it may be a "
                "survey or body scan with too little detail.",
            )
        )
    thickness = float(spacing[axis])
    if thickness > MAX_SLICE_THICKNESS_MM:
        flags.append(
            Flag(
                "input",
                "thick_slices",
                f"The slices are {thickness:.1f} mm apart, thicker than the training data (up to 4 mm): apex and "
                "base are blurred and the volume is less exact.",
            )
        )
    plane, tilt = acquisition_plane(image)
    if plane != "axial":
        flags.append(Flag("input", f"{plane}_acquisition", PLANE_SENTENCE.format(plane=plane)))
    elif tilt > MAX_OBLIQUITY_DEG:
        flags.append(
            Flag(
                "input",
                "oblique",
                f"The slices are tilted {tilt:.0f} degrees from the axial plane, more than the training data: "
                "check the outline at apex and base.",
            )
        )
    coil = _coil_flag(image, tags)
    if coil is not None:
        flags.append(coil)
    named = _other_contrast(tags)
    if named is not None:
        flags.append(named)
    return flags


def _other_contrast(tags: Dict[str, str]) -> Optional[Flag]:
    for tag in CONTRAST_TEXT_TAGS.values():
        text = tags.get(tag, "")
        if not text:
            continue
        spaced = re.sub(r"[\\_/]+", " ", text)
        for pattern, what in OTHER_CONTRASTS.items():
            if re.search(pattern, spaced, re.IGNORECASE):
                return Flag(
                    "input",
                    "other_contrast",
                    f"The DICOM {tag} '{text}' names {what}, not a T2-weighted series: the model segments T2 only.",
                )
    return None


# -- output -----------------------------------------------------------------------------------


def confidence_threshold(info) -> float:
    """The model's calibrated confidence threshold: ``model.json`` ``training.calibration.confidence_threshold``,
    else :data:`DEFAULT_CONFIDENCE_THRESHOLD`."""
    value = (info.training or {}).get("calibration", {}).get("confidence_threshold")
    return float(value) if value is not None else DEFAULT_CONFIDENCE_THRESHOLD


def output_flags(
    labelmap: sitk.Image, values: Sequence[int], confidence: Optional[float] = None, threshold: Optional[float] = None
) -> List[Flag]:
    """Flags about the segmentation (the gland = every label in ``values``) on the input grid."""
    mask = np.isin(sitk.GetArrayViewFromImage(labelmap), list(values))
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    volume = float(mask.sum() * voxel_ml)
    flags: List[Flag] = []
    if not mask.any():
        return [Flag("output", "empty", "No gland was found: the scan may not show the prostate.")]
    lo, hi = PLAUSIBLE_GLAND_ML
    if not lo <= volume <= hi:
        flags.append(
            Flag(
                "output",
                "volume_out_of_range",
                f"The gland measures {volume:.1f} mL, outside the usual {lo:.0f}-{hi:.0f} mL: check the outline.",
            )
        )
    _, n = label_components(mask)
    if n > 1:
        flags.append(Flag("output", "several_components", f"The segmentation has {n} separate pieces, not one gland."))
    flags.extend(_border_flags(mask, labelmap))
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    gaps = int((slices[-1] - slices[0] + 1) - len(slices))
    if gaps:
        flags.append(
            Flag(
                "output",
                "slice_gap",
                f"{gaps} slice(s) inside the gland have no segmentation: the outline is broken along the slices.",
            )
        )
    holes = sum(int(np.count_nonzero(fill_holes(m) & ~m)) for m in mask if m.any())
    if holes > HOLE_FRACTION * mask.sum():
        flags.append(
            Flag("output", "holes", f"The segmentation has holes ({holes * voxel_ml:.2f} mL) inside the gland.")
        )
    if confidence is not None and threshold is not None and confidence < threshold:
        flags.append(
            Flag(
                "output",
                "low_confidence",
                f"The model's confidence {confidence:.2f} is below its calibrated threshold {threshold:.2f}: on the "
                "held-out cases such results were less accurate, so review this one.",
            )
        )
    return flags


def _border_flags(mask: np.ndarray, labelmap: sitk.Image) -> List[Flag]:
    axis_zyx = 2 - slice_axis(labelmap)
    flags = []
    first_last = np.take(mask, [0, mask.shape[axis_zyx] - 1], axis=axis_zyx)
    if first_last.any():
        flags.append(
            Flag(
                "output",
                "touches_end_slice",
                "The segmentation reaches the first or last slice: either the scan does not cover the whole gland "
                "(volume too small) or the outline runs past the apex or base (volume too large), so check those "
                "slices.",
            )
        )
    edges = [np.take(mask, [0, mask.shape[a] - 1], axis=a).any() for a in range(3) if a != axis_zyx]
    if any(edges):
        flags.append(
            Flag(
                "output",
                "touches_image_edge",
                "The gland reaches the edge of the image: it may be cut off by the field of view.",
            )
        )
    return flags


def flags_text(flags: Sequence[Flag]) -> str:
    """The sentences joined for one CSV cell."""
    return " ".join(f.message for f in flags)
