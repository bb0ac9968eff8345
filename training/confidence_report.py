"""How well the per-case confidence predicts Dice: ``python training/confidence_report.py -o OUT``.

Segments the held-out cases of a model (default: the default model's PROMISE12 validation cases, read
from its ``model.json``), keeping the averaged softmax (``Prediction.probabilities``), and
compares, per case, the Dice against the reference label with

- ``confidence``: :func:`UNetSegmentLib.uncertainty.case_confidence` (soft Dice of the foreground
  probability against the mask);
- ``uncertain_fraction``: voxels of normalised entropy above 0.5, per voxel of the mask (an alternative);

and the output flags of :mod:`UNetSegmentLib.quality` at a threshold. Writes ``OUT/per_case.csv`` and
``OUT/summary.json`` with the Spearman rank correlations and, for each candidate threshold, the Dice of
the flagged and the unflagged cases.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from UNetSegmentLib.model_package import ModelPackage  # noqa: E402
from UNetSegmentLib.quality import DEFAULT_CONFIDENCE_THRESHOLD, output_flags  # noqa: E402
from UNetSegmentLib.uncertainty import case_confidence, entropy_zyx  # noqa: E402

log = logging.getLogger("confidence_report")
DEFAULT_MODEL = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "promise12"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(a, b).sum()) / denom


def degrade(image: sitk.Image, how: str, seed: int = 0) -> sitk.Image:
    """A harder version of a scan: ``noise`` (Gaussian, sd 25% of the tissue's median) or ``coarse``
    (in-plane resolution cut 3x, then brought back to the original grid, as a low-resolution scan)."""
    if how == "none":
        return image
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    if how == "noise":
        tissue = a[a > np.percentile(a, 10)]
        rng = np.random.default_rng(seed)
        out = sitk.GetImageFromArray(np.clip(a + rng.normal(0, 0.25 * np.median(tissue), a.shape), 0, None))
        out.CopyInformation(image)
        return out
    if how == "coarse":
        size = list(image.GetSize())
        spacing = list(image.GetSpacing())
        small = sitk.Image([max(1, size[0] // 3), max(1, size[1] // 3), size[2]], sitk.sitkFloat32)
        small.SetSpacing([spacing[0] * size[0] / (size[0] // 3), spacing[1] * size[1] / (size[1] // 3), spacing[2]])
        small.SetDirection(image.GetDirection())
        small.SetOrigin(image.GetOrigin())
        img = sitk.Cast(image, sitk.sitkFloat32)
        smooth = sitk.SmoothingRecursiveGaussian(img, [spacing[0] * 1.2, spacing[1] * 1.2, 0.01])
        low = sitk.Resample(smooth, small, sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.Resample(low, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    raise ValueError(f"unknown degradation {how!r}")


def evaluate_case(predictor, image_path: Path, label_path: Path, how: str = "none") -> Dict[str, Any]:
    """One case: Dice, confidence, uncertain fraction, volumes and the output flags (without confidence)."""
    image = degrade(sitk.ReadImage(str(image_path)), how)
    prediction = predictor.predict(image)
    values = [lab.value for lab in predictor.info.labels]
    pred = np.isin(sitk.GetArrayViewFromImage(prediction.labelmap), values)
    ref = sitk.GetArrayViewFromImage(sitk.ReadImage(str(label_path))) > 0
    probs = prediction.probabilities
    mask_model = probs.argmax(0) != 0
    entropy = entropy_zyx(probs)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {
        "dice": round(dice(pred, ref), 4),
        "confidence": round(case_confidence(probs), 4),
        "uncertain_fraction": round(float((entropy > 0.5).sum() / max(mask_model.sum(), 1)), 4),
        "volume_ml": round(float(pred.sum() * voxel_ml), 2),
        "reference_ml": round(float(ref.sum() * voxel_ml), 2),
        "flags": " ".join(f.code for f in output_flags(prediction.labelmap, values)),
    }


def flagged_split(rows: Sequence[Dict[str, Any]], threshold: float) -> Dict[str, Any]:
    flagged = [r["dice"] for r in rows if r["confidence"] < threshold]
    kept = [r["dice"] for r in rows if r["confidence"] >= threshold]
    return {
        "threshold": threshold,
        "n_flagged": len(flagged),
        "dice_flagged_mean": round(float(np.mean(flagged)), 4) if flagged else None,
        "dice_unflagged_mean": round(float(np.mean(kept)), 4) if kept else None,
    }


def summarize(rows: Sequence[Dict[str, Any]], thresholds: Sequence[float]) -> Dict[str, Any]:
    d = [r["dice"] for r in rows]
    out: Dict[str, Any] = {"n_cases": len(rows), "cases": [f"{r['case']}/{r.get('degraded', 'none')}" for r in rows]}
    for key, sign in (("confidence", 1), ("uncertain_fraction", -1)):
        rho, p = stats.spearmanr([sign * r[key] for r in rows], d)
        out[f"spearman_{key}_vs_dice"] = {"rho": round(float(rho), 3), "p": round(float(p), 3)}
    out["spearman_uncertain_fraction_vs_dice"]["note"] = "sign flipped: higher fraction = less certain"
    out["by_threshold"] = [flagged_split(rows, t) for t in thresholds]
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model package folder (default: the default model)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of CaseNN_image/label.nii.gz")
    p.add_argument("--cases", nargs="*", help="case ids (default: the model's training.data.validation_cases)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--thresholds", type=float, nargs="*", default=[0.88, 0.90, 0.92, 0.93, DEFAULT_CONFIDENCE_THRESHOLD]
    )
    p.add_argument(
        "--degrade",
        nargs="*",
        default=["none"],
        choices=["none", "noise", "coarse"],
        help="also run harder versions of each case (noise, coarse), to spread the Dice",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from UNetSegmentLib.inference import Predictor

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    package = ModelPackage.load(args.model)
    cases = args.cases or package.info.training.get("data", {}).get("validation_cases", [])
    predictor = Predictor(package, device="cpu", threads=args.threads)
    data, out = Path(args.data), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for how in args.degrade:
        for case in cases:
            pair = (data / f"{case}_image.nii.gz", data / f"{case}_label.nii.gz")
            row = {"case": case, "degraded": how, **evaluate_case(predictor, *pair, how=how)}
            log.info("%s", row)
            rows.append(row)
    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, sorted(set(args.thresholds)))
    summary["model"] = {"id": package.info.id, "version": package.info.version}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("%s", json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
