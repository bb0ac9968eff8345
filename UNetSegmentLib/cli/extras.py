"""What a result carries besides the labelmap: quality flags, confidence, PSA density, and the optional
DICOM SEG, uncertainty map and report picture. ``segment`` and ``batch`` share this module.

``analyse`` runs on every result (flags and confidence are always there); ``write_extras`` writes the
optional files through the command's :class:`~.common.StagedWrites`, so they appear together with the
labelmap or not at all.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from .common import EXIT_OUTPUT, EXIT_USAGE, CliError, StagedWrites

#: Output names ``batch`` gives a case's extra files, after the case name.
BATCH_SUFFIXES = {"dicom_seg": "_seg.dcm", "uncertainty": "_uncertainty.nii.gz", "report": "_report.png"}
UNCERTAINTY_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha")


@dataclass
class Extras:
    """The extra outputs of one case (absolute paths; None = not asked for) and its PSA (ng/mL)."""

    dicom_seg: Optional[Path] = None
    uncertainty: Optional[Path] = None
    report: Optional[Path] = None
    psa: Optional[float] = None

    def paths(self) -> List[Path]:
        return [p for p in (self.dicom_seg, self.uncertainty, self.report) if p is not None]


def psa_argument(text: str) -> float:
    """argparse type for ``--psa``: a PSA in ng/mL within ``psa.PSA_RANGE`` (exit 2 otherwise)."""
    from ..psa import PSAError, check_psa

    try:
        return check_psa(text)
    except PSAError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reports and DICOM")
    g.add_argument(
        "--dicom-seg",
        metavar="PATH",
        help="also write a DICOM Segmentation (.dcm) referencing the input DICOM series (needs highdicom); "
        "'-o result.dcm' writes only that",
    )
    g.add_argument("--uncertainty", metavar="PATH", help="write the per-voxel uncertainty (0-1) as a float image")
    g.add_argument("--report", metavar="PATH.png", help="write a picture of the result (needs matplotlib)")
    g.add_argument("--psa", type=psa_argument, metavar="NG_PER_ML", help="serum PSA (ng/mL) for the PSA density")


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reports and DICOM")
    g.add_argument(
        "--dicom-seg", action="store_true", help="write CASE_seg.dcm (DICOM SEG) for each DICOM series input"
    )
    g.add_argument("--uncertainty", action="store_true", help="write CASE_uncertainty.nii.gz for each case")
    g.add_argument(
        "--report", action="store_true", help="write CASE_report.png for each case and an index.html of them all"
    )
    g.add_argument(
        "--clinical",
        metavar="CSV",
        help="CSV with a 'case' column (the case names of the summary) and a 'psa' column (ng/mL)",
    )


def require(module: str, extra: str, what: str) -> None:
    """Raise ``CliError(EXIT_USAGE)`` naming the extra to install unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CliError(EXIT_USAGE, f"{what} needs {module}: pip install 'unetsegment[{extra}]'")


def check_requirements(extras: Extras, source: Path) -> None:
    """Refuse, before any work, what cannot be written: a DICOM SEG of a non-DICOM input, missing packages."""
    if extras.dicom_seg is not None:
        if not source.is_dir():
            raise CliError(EXIT_USAGE, f"a DICOM SEG needs a DICOM series folder as input, not {source.name}")
        require("highdicom", "dicom", "a DICOM SEG")
    if extras.report is not None:
        require("matplotlib", "report", "--report")


def analyse(prediction, image, source: Path, info, psa: Optional[float]) -> Dict[str, Any]:
    """Confidence, quality flags and PSA density of one prediction, as result-record fields."""
    from ..psa import psa_density
    from ..quality import confidence_threshold, dicom_text_tags, input_flags, output_flags
    from ..uncertainty import case_confidence

    confidence = None
    if getattr(prediction, "probabilities", None) is not None:
        confidence = round(case_confidence(prediction.probabilities), 4)
    threshold = confidence_threshold(info)
    tags = dicom_text_tags(source) if source.is_dir() else {}
    values = [lab.value for lab in info.labels]
    flags = input_flags(image, tags) + output_flags(prediction.labelmap, values, confidence, threshold)
    out: Dict[str, Any] = {
        "confidence": confidence,
        "confidence_threshold": threshold,
        "flags": [f.to_dict() for f in flags],
    }
    if psa is not None:
        out["psa"] = psa_density(psa, prediction.volumes_ml)
    return out


def write_extras(
    extras: Extras, prediction, image, source: Path, info, result: Dict[str, Any], staged: StagedWrites, title: str
) -> None:
    """Write the case's DICOM SEG, uncertainty map and report to staged temporary names; add their paths to ``result``."""
    from .. import io

    try:
        if extras.dicom_seg is not None:
            from ..dicom.seg import DicomSegError, write_dicom_seg

            try:
                write_dicom_seg(prediction.labelmap, source, info, staged.temp_for(extras.dicom_seg))
            except DicomSegError as e:
                raise CliError(EXIT_OUTPUT, f"cannot write the DICOM SEG: {e}") from None
            result["dicom_seg"] = str(extras.dicom_seg)
        if extras.uncertainty is not None:
            from ..uncertainty import uncertainty_image

            io.write_image(
                uncertainty_image(prediction.probabilities, prediction.grid), staged.temp_for(extras.uncertainty)
            )
            result["uncertainty"] = str(extras.uncertainty)
        if extras.report is not None:
            from ..report import write_report_png

            write_report_png(image, prediction.labelmap, info.labels, staged.temp_for(extras.report), result, title)
            result["report"] = str(extras.report)
    except (OSError, RuntimeError) as e:
        raise CliError(EXIT_OUTPUT, f"cannot write the extra outputs: {' '.join(str(e).split())[:300]}") from None


def print_findings(result: Dict[str, Any]) -> None:
    """The CLI summary lines: confidence, PSA density, then one line per flag."""
    if result.get("confidence") is not None:
        print(f"  Confidence: {result['confidence']:.2f} (model threshold {result['confidence_threshold']:.2f})")
    psa = result.get("psa")
    if psa:
        density = psa.get("psa_density")
        text = f"{density:.3f} ng/mL/cc" if density is not None else "- (no gland)"
        print(f"  PSA density: {text} (PSA {psa['psa_ng_ml']:g} ng/mL / gland {psa['gland_ml']:.1f} mL)")
        if "tz_psa_density" in psa:
            tz = psa["tz_psa_density"]
            print(f"  Transition-zone PSA density: {tz:.3f} ng/mL/cc" if tz is not None else "  TZ PSA density: -")
    flags = result.get("flags") or []
    print(f"  Quality flags: {len(flags)}" if flags else "  Quality flags: none")
    for f in flags:
        print(f"  - {f['message']}")


def print_extras(result: Dict[str, Any]) -> None:
    for key, label in (("dicom_seg", "DICOM SEG"), ("uncertainty", "Uncertainty"), ("report", "Picture")):
        if result.get(key):
            print(f"{label + ' written to':<25}{result[key]}")
