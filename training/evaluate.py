"""Evaluate a model package against reference labels: ``python training/evaluate.py --model PKG --data CONFIG -o OUT``.

Examples::

    # the validation cases of a training config (or of a run folder holding config.yaml)
    python training/evaluate.py --model models/prostate-wholegland-t2 \\
        --data training/configs/default_wholegland.yaml -o runs/eval/promise12-val
    # every labelled pair in a folder
    python training/evaluate.py --model PKG --data /data/pairs --label-map 1=prostate -o OUT
    # one external case
    python training/evaluate.py --model PKG -o OUT \\
        --image ../shared/data/prostatex/ProstateX-0000/t2w.nii.gz \\
        --label ../shared/data/prostatex/ProstateX-0000/labels/wholegland_AI_Guerbet23.nii.gz --label-map 1=prostate

Each case is segmented with :class:`UNetSegmentLib.inference.Predictor` and
compared with its reference on the case's ORIGINAL grid (the grid the
reference was drawn on), in mm on the true voxel spacing:

- Dice (MONAI ``DiceMetric``);
- 95th-percentile symmetric Hausdorff distance, mm (``HausdorffDistanceMetric(percentile=95)``);
- average symmetric surface distance, mm (``SurfaceDistanceMetric(symmetric=True)``);
- volumes of prediction and reference, their difference in mL and in % of the reference;
- anatomical checks: the prediction's number of 26-connected components, the
  number of slices (numpy axis 0, the image's slice axis) holding reference,
  and how many of those the prediction misses (no voxel on the reference there).

Structures compared: each structure the model outputs that the reference
has; ``prostate`` against the union of the reference's zones; and ``gland``
(union of the predicted zones against the reference's gland, or the union
of its zones) for zonal models.

Empty masks have documented values, never a crash: prediction and reference
both empty -> Dice 1, distances 0; exactly one empty -> Dice 0 and the
distances are undefined (MONAI gives inf) -> stored as NaN and counted as
``n_nan`` in ``summary.json``.

Writes ``OUT/per_case.csv`` (one row per case and structure), ``OUT/summary.json``
(mean, std, median, min, max and n per metric and structure) and, with
``--save-predictions``, ``OUT/predictions/<case_id>.nii.gz``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from training.anatomy import anatomy_checks  # noqa: E402  (the trainer imports it without SimpleITK)
from training.data import Case  # noqa: E402
from UNetSegmentLib.inference import QUALITIES, WINDOW_MODES  # noqa: E402
from UNetSegmentLib.runtime import BACKENDS, RuntimeUnavailable  # noqa: E402

log = logging.getLogger(__name__)

#: Metrics summarised in ``summary.json``.
METRICS = (
    "dice",
    "hd95_mm",
    "asd_mm",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_diff_ml",
    "volume_diff_pct",
    "components",
    "ref_slices",
    "slices_missed",
)
#: Columns of ``per_case.csv``, in order.
COLUMNS = ("case_id", "group", "source", "structure", *METRICS, "seconds", "image", "label")
#: Name of the whole-gland comparison for zonal models.
GLAND = "gland"
SPLITS = ("validation", "test", "train", "all")


# --- metrics on masks -------------------------------------------------------


def compare_masks(pred_zyx: np.ndarray, ref_zyx: np.ndarray, spacing_zyx_mm: Sequence[float]) -> Dict[str, float]:
    """Dice, HD95 (mm), ASSD (mm) and volumes (mL) of two boolean ``(z, y, x)`` masks on one grid.

    ``spacing_zyx_mm`` is the voxel size in NUMPY order (z, y, x): reverse an
    ITK ``GetSpacing()`` (x, y, z) before passing it. Distances use MONAI's
    metrics with that spacing. See the module docstring for empty masks.
    """
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    pred = np.asarray(pred_zyx, dtype=bool)
    ref = np.asarray(ref_zyx, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx_mm must be three positive numbers, got {spacing_zyx_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    v_pred, v_ref = float(pred.sum()) * voxel_ml, float(ref.sum()) * voxel_ml
    out = {
        "volume_pred_ml": v_pred,
        "volume_ref_ml": v_ref,
        "volume_diff_ml": v_pred - v_ref,
        "volume_diff_pct": 100.0 * (v_pred - v_ref) / v_ref if v_ref > 0 else math.nan,
        **anatomy_checks(pred, ref),
    }
    if not pred.any() and not ref.any():
        out.update(dice=1.0, hd95_mm=0.0, asd_mm=0.0)
        return out
    if not pred.any() or not ref.any():
        out.update(dice=0.0, hd95_mm=math.nan, asd_mm=math.nan)
        return out
    # crop to the union's bounding box plus a margin: same surfaces, smaller distance transforms
    box = _bounding_box(pred | ref, margin=2)
    p = torch.from_numpy(pred[box][None, None].astype(np.float32))  # (batch 1, channel 1, z, y, x)
    r = torch.from_numpy(ref[box][None, None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, r)
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, r, spacing=spacing)
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(p, r, spacing=spacing)
    out.update(
        dice=float(dice.flatten()[0]),
        hd95_mm=_finite(float(hd95.flatten()[0])),
        asd_mm=_finite(float(asd.flatten()[0])),
    )
    return out


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def _bounding_box(mask: np.ndarray, margin: int) -> Tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# --- which structures to compare -------------------------------------------


def reference_masks(label_zyx: np.ndarray, label_map: Dict[int, str]) -> Dict[str, np.ndarray]:
    """Boolean ``(z, y, x)`` masks of a reference label per project structure name (aliases resolved)."""
    from UNetSegmentLib.labels import structure

    masks: Dict[str, np.ndarray] = {}
    for value, name in label_map.items():
        s = structure(name).name
        m = label_zyx == int(value)
        masks[s] = masks[s] | m if s in masks else m
    return masks


def comparisons(
    pred_zyx: np.ndarray, model_labels: Sequence[Tuple[int, str]], ref: Dict[str, np.ndarray]
) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """``(name, predicted mask, reference mask)`` for every structure both sides can speak about.

    ``model_labels`` is ``[(value, structure name), ...]`` of the model's output.
    """
    from UNetSegmentLib.labels import ZONES

    pred = {name: pred_zyx == value for value, name in model_labels}
    ref_zones = [ref[z] for z in ZONES if z in ref]
    ref_gland = ref.get("prostate")
    if ref_gland is None and ref_zones:
        ref_gland = np.logical_or.reduce(ref_zones)
    out = []
    for name, mask in pred.items():
        if name in ref:
            out.append((name, mask, ref[name]))
        elif name == "prostate" and ref_gland is not None:
            out.append((name, mask, ref_gland))
    zones_pred = [pred[z] for z in ZONES if z in pred]
    if zones_pred and "prostate" not in pred and ref_gland is not None:
        out.append((GLAND, np.logical_or.reduce(zones_pred), ref_gland))
    return out


# --- cases -----------------------------------------------------------------


def parse_label_map(items: Optional[Sequence[str]]) -> Dict[int, str]:
    """``["1=prostate"]`` or ``["1=pz,2=tz"]`` -> ``{1: "prostate"}``; structure names are checked."""
    from UNetSegmentLib.labels import structure

    out: Dict[int, str] = {}
    for item in items or ():
        for part in filter(None, (p.strip() for p in item.split(","))):
            value, sep, name = part.partition("=")
            if not sep or not value.strip().isdigit():
                raise ValueError(f"label map entry {part!r} is not VALUE=STRUCTURE (e.g. 1=prostate)")
            out[int(value)] = structure(name).name
    return out


def cases_from_data(
    data: Union[str, Path],
    split: Optional[str] = None,
    label_map: Optional[Dict[int, str]] = None,
    image_suffix: str = "_image",
    label_suffix: str = "_label",
) -> List[Case]:
    """Labelled cases of a training config (YAML), a run folder (with ``config.yaml``) or a folder of pairs.

    A config's cases and split are those of training (``training.data.registry.config_cases``
    with its seed), so ``split="validation"`` (the default for configs) gives
    the cases the run held out. A folder of pairs defaults to ``"all"``.
    """
    from training.config import load_config
    from training.data.registry import config_cases

    path = Path(data)
    if path.is_dir() and (path / "config.yaml").is_file():
        path = path / "config.yaml"
    if path.is_file():
        cfg = load_config(path)
        cases = config_cases(cfg)
        split = split or "validation"
    elif path.is_dir():
        from training.data.pairs import read_pairs

        cases = read_pairs(str(path), label_map or {1: "prostate"}, image_suffix, label_suffix)
        split = split or "all"
    else:
        raise FileNotFoundError(f"data {data} is neither a config file nor a folder")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    chosen = [c for c in cases if split == "all" or c.split == split]
    unlabelled = [c.case_id for c in chosen if not c.label]
    if unlabelled:
        log.warning(
            "%d %s case(s) have no reference label and are skipped: %s",
            len(unlabelled),
            split,
            ", ".join(unlabelled[:5]),
        )
    return [c for c in chosen if c.label]


def single_case(
    image: str, label: str, label_map: Dict[int, str], case_id: Optional[str] = None, source: str = "external"
) -> Case:
    """A :class:`Case` for one image and its reference; the id defaults to ``<folder>_<file stem>``."""
    if not label_map:
        raise ValueError("an external case needs --label-map, e.g. 1=prostate")
    if case_id is None:
        p = Path(image)
        stem = re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", "", p.name, flags=re.IGNORECASE)
        case_id = f"{p.parent.name}_{stem}" if p.is_file() else p.name
    return Case(case_id, str(image), str(label), dict(label_map), split="test", source=source)


def _reference_on_image_grid(label: sitk.Image, image: sitk.Image, case_id: str) -> sitk.Image:
    """The reference label on the image's grid (nearest neighbour when the grids differ)."""
    same = label.GetSize() == image.GetSize() and np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-4)
    same = (
        same
        and np.allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-2)
        and np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-4)
    )
    if same:
        return label
    log.warning("%s: reference label is not on the image grid; resampling it (nearest neighbour)", case_id)
    return sitk.Resample(
        sitk.Cast(label, sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )


# --- evaluation ------------------------------------------------------------


def evaluate_case(predictor, case: Case, prediction_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Segment one case and compare it with its reference: one row (dict of :data:`COLUMNS`) per structure."""
    from UNetSegmentLib.io import read_image, write_image

    image = read_image(case.image, channel=case.channel)
    t0 = time.perf_counter()
    pred_img = predictor.predict(image).labelmap
    seconds = time.perf_counter() - t0
    if prediction_dir is not None:
        write_image(pred_img, prediction_dir / f"{case.case_id}.nii.gz")
    ref_img = _reference_on_image_grid(sitk.ReadImage(str(case.label)), image, case.case_id)
    pred_zyx = sitk.GetArrayViewFromImage(pred_img)
    ref_zyx = sitk.GetArrayViewFromImage(ref_img)
    spacing_zyx = tuple(reversed(image.GetSpacing()))  # ITK (x, y, z) -> numpy (z, y, x)
    model_labels = [(lab.value, lab.structure.name) for lab in predictor.info.labels]
    pairs = comparisons(pred_zyx, model_labels, reference_masks(ref_zyx, case.label_map))
    if not pairs:
        log.warning("%s: the reference (%s) has none of the model's structures", case.case_id, case.label_map)
    rows = []
    for name, pred_mask, ref_mask in pairs:
        row: Dict[str, Any] = {"case_id": case.case_id, "group": case.group, "source": case.source, "structure": name}
        row.update(compare_masks(pred_mask, ref_mask, spacing_zyx))
        row.update(seconds=seconds, image=case.image, label=case.label)
        rows.append(row)
    return rows


def evaluate(
    package,
    cases: Sequence[Case],
    out_dir: Optional[Union[str, Path]] = None,
    device: str = "auto",
    quality: str = "standard",
    save_predictions: bool = False,
    description: str = "",
    backend: str = "auto",
    windows: str = "grid",
) -> List[Dict[str, Any]]:
    """Evaluate ``package`` (a :class:`ModelPackage` or its folder) on labelled ``cases``.

    Returns the per-case rows (a list of dicts with :data:`COLUMNS`); with
    ``out_dir`` also writes ``per_case.csv`` and ``summary.json`` there (and
    the predictions with ``save_predictions``).
    """
    from tqdm import tqdm

    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.model_package import ModelPackage

    if not isinstance(package, ModelPackage):
        package = ModelPackage.load(package)
    if not cases:
        raise ValueError("no labelled cases to evaluate")
    out = Path(out_dir) if out_dir is not None else None
    pred_dir = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if save_predictions:
            pred_dir = out / "predictions"
            pred_dir.mkdir(exist_ok=True)
    predictor = Predictor(package, device=device, quality=quality, backend=backend, windows=windows)
    rows: List[Dict[str, Any]] = []
    for case in tqdm(cases, desc="evaluating", unit="case", disable=None):
        rows.extend(evaluate_case(predictor, case, pred_dir))
    if out is not None:
        write_per_case(rows, out / "per_case.csv")
        summary = summarize(rows)
        summary["model"] = {
            "id": package.info.id,
            "version": package.info.version,
            "weights_sha256": package.info.weights_digest,  # ties these results to the exact weights
            "members": len(predictor.members),  # networks averaged (an ensemble's, at this quality)
            "path": str(package.path),
        }
        summary["data"] = description
        summary["quality"] = quality
        from UNetSegmentLib.hardware import cpu_summary

        # seconds_per_case means something only beside the machine that measured it
        summary["runtime"] = {
            "backend": predictor.backend,
            "device": predictor.device,
            "windows": windows,
            "cpu": cpu_summary(),
        }
        (out / "summary.json").write_text(
            json.dumps(summary, indent=2, allow_nan=False, default=_json_default) + "\n", encoding="utf-8"
        )
    return rows


def _json_default(o: Any) -> Any:
    raise TypeError(f"cannot serialise {type(o).__name__}")


def write_per_case(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    """``per_case.csv``: one row per case and structure; NaN is written as an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k, "")) for k in COLUMNS})


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_per_case(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Read ``per_case.csv`` back: metric columns as floats (NaN for empty cells)."""
    numeric = set(METRICS) | {"seconds"}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in numeric & set(r):
            r[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    return rows


def describe(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample std (ddof 1; 0 for one value), median, min, max over finite values; ``n`` and ``n_nan``."""
    a = np.asarray(values, dtype=float)
    finite = a[np.isfinite(a)]
    d: Dict[str, Any] = {"n": int(finite.size), "n_nan": int(a.size - finite.size)}
    if finite.size:
        d.update(
            mean=float(finite.mean()),
            std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            median=float(np.median(finite)),
            min=float(finite.min()),
            max=float(finite.max()),
        )
    else:
        d.update(mean=None, std=None, median=None, min=None, max=None)
    return d


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``{"n_cases", "structures": {name: {"n", metric: describe(...)}}, "seconds_per_case"}``."""
    by_structure: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_structure.setdefault(r["structure"], []).append(r)
    structures = {}
    for name, rs in by_structure.items():
        structures[name] = {"n": len(rs), **{m: describe([r[m] for r in rs]) for m in METRICS}}
    per_case_s = {r["case_id"]: r["seconds"] for r in rows}
    return {
        "n_cases": len(per_case_s),
        "cases": sorted(per_case_s),
        "structures": structures,
        "seconds_per_case": describe(list(per_case_s.values())),
        "empty_handling": "both empty: Dice 1, distances 0; one empty: Dice 0, distances NaN (counted in n_nan)",
    }


# --- command line ----------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Evaluate a UNetSegment model package against reference labels (Dice, HD95, ASSD in mm, volumes)."
    )
    p.add_argument("--model", required=True, help="model package folder (model.json + weights)")
    src = p.add_argument_group("cases (either --data or --image with --label)")
    src.add_argument(
        "--data", help="training config (YAML), run folder with config.yaml, or folder of image/label pairs"
    )
    src.add_argument(
        "--split", choices=SPLITS, help="which cases of --data (default: validation for a config, all for a folder)"
    )
    src.add_argument("--image", help="one image (file or DICOM folder) to evaluate")
    src.add_argument("--label", help="its reference labelmap")
    src.add_argument("--case-id", help="id of the --image case (default <folder>_<file stem>)")
    src.add_argument("--source", default="external", help="dataset name recorded for --image (default external)")
    src.add_argument(
        "--label-map", nargs="+", metavar="VALUE=STRUCTURE", help="reference label values, e.g. 1=prostate or 1=pz 2=tz"
    )
    src.add_argument("--image-suffix", default="_image", help="for a folder of pairs (default _image)")
    src.add_argument("--label-suffix", default="_label", help="for a folder of pairs (default _label)")
    p.add_argument("-o", "--output", required=True, help="output folder for per_case.csv and summary.json")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--quality",
        default="standard",
        choices=QUALITIES,
        help="as unetsegment segment's --quality (default standard, the command's default)",
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="as unetsegment segment's --backend")
    p.add_argument(
        "--windows",
        default="grid",
        choices=WINDOW_MODES,
        help="grid: the whole model grid per pass (the default engine); patch: the model's training patch "
        "with overlap, as UNetSegment did before 0.2 (the baseline of the engine's Dice guard)",
    )
    p.add_argument("--save-predictions", action="store_true", help="write predictions/<case_id>.nii.gz")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from training.config import ConfigError
    from UNetSegmentLib.io import ImageReadError
    from UNetSegmentLib.model_package import ModelPackageError

    try:
        label_map = parse_label_map(args.label_map)
        if args.image:
            if not args.label:
                raise ValueError("--image needs --label")
            cases = [single_case(args.image, args.label, label_map, args.case_id, args.source)]
            description = f"{args.image} vs {args.label}"
        elif args.data:
            cases = cases_from_data(args.data, args.split, label_map, args.image_suffix, args.label_suffix)
            description = f"{args.data} ({args.split or 'default split'})"
        else:
            raise ValueError("give --data, or --image with --label")
        rows = evaluate(
            args.model,
            cases,
            args.output,
            args.device,
            args.quality,
            args.save_predictions,
            description,
            backend=args.backend,
            windows=args.windows,
        )
    except (
        OSError,
        ValueError,
        KeyError,
        ConfigError,
        ModelPackageError,
        ImageReadError,
        RuntimeError,
        RuntimeUnavailable,
    ) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"evaluate.py: {msg}", file=sys.stderr)
        return 1
    summary = json.loads((Path(args.output) / "summary.json").read_text(encoding="utf-8"))
    for name, s in summary["structures"].items():
        d, h = s["dice"], s["hd95_mm"]
        hd = f"{h['mean']:.1f} mm" if h["mean"] is not None else "n/a"
        print(f"{name}: Dice {d['mean']:.3f} +/- {d['std']:.3f} (median {d['median']:.3f}), HD95 {hd}, n={s['n']}")
    print(f"{len({r['case_id'] for r in rows})} case(s); results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
