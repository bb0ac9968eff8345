"""The benchmark report: ``python training/benchmark.py --eval EVAL_DIR [...] --model PKG -o REPORT_DIR``.

Example::

    python training/benchmark.py --model models/prostate-wholegland-t2 \\
        --eval runs/eval/promise12-val --eval runs/eval/prostatex-guerbet23 \\
        --run runs/default-wholegland -o runs/report

Reads evaluation folders written by ``training/evaluate.py`` (``per_case.csv``,
``summary.json``, optionally ``predictions/``) and writes ``REPORT_DIR/report.md``
with PNG figures in ``REPORT_DIR/figures/``: box plots of Dice and HD95 per
structure, the best and worst case as mid-gland overlays, and the learning
curve of the run (``--run``; repeated for a fine-tuning and the run it started from). The results are set beside the published
numbers of :mod:`training.published`, saying for each whether it was
measured on the same data. ``REPORT_DIR/benchmark.json`` holds the same
numbers for machines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from training import figures  # noqa: E402
from training.evaluate import GLAND, describe, read_per_case  # noqa: E402
from training.published import PUBLISHED, PublishedResult  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One evaluation folder: its name, description and per-case rows."""

    name: str
    path: Path
    description: str
    rows: List[Dict[str, Any]]

    @property
    def structures(self) -> List[str]:
        return list(dict.fromkeys(r["structure"] for r in self.rows))


def load_eval(path: Path) -> EvalSet:
    """Read an ``evaluate.py`` output folder."""
    path = Path(path)
    if not (path / "per_case.csv").is_file():
        raise FileNotFoundError(f"{path} has no per_case.csv: is it an evaluate.py output folder?")
    summary = (
        json.loads((path / "summary.json").read_text(encoding="utf-8")) if (path / "summary.json").is_file() else {}
    )
    rows = read_per_case(path / "per_case.csv")
    if not rows:
        raise ValueError(f"{path / 'per_case.csv'} holds no rows")
    return EvalSet(path.name, path, str(summary.get("data", "")), rows)


# --- model facts -----------------------------------------------------------


def model_facts(package) -> Dict[str, Any]:
    """Parameters, FLOPs per patch, patch and spacing, training data and licences of a model package."""
    from UNetSegmentLib.network import conv_flops, count_parameters

    info = package.info
    net = package.members[0].build_network()  # an ensemble's members share the architecture
    patch = tuple(info.inference.patch_size_zyx)
    return {
        "id": info.id,
        "version": info.version,
        "name": info.name,
        "structures": info.structures,
        "parameters": count_parameters(net),
        "flops_per_patch": conv_flops(net, patch),
        "patch_size_zyx": list(patch),
        "spacing_xyz_mm": list(info.preprocessing.spacing_xyz_mm),
        "architecture": info.architecture,
        "weights_sha256": info.weights_digest,
        "members": len(info.networks),
        "training": info.training,
        "license": info.license,
    }


# --- comparison with published results ------------------------------------


def _gland_rows(rows: Sequence[Dict[str, Any]], structure: str) -> List[Dict[str, Any]]:
    """Rows that speak about ``structure``; a published whole-gland number matches our prostate or gland rows."""
    wanted = {structure, GLAND} if structure == "prostate" else {structure}
    return [r for r in rows if r["structure"] in wanted]


def match_published(entry: PublishedResult, evals: Sequence[EvalSet]) -> Tuple[str, Optional[float], int]:
    """``(relation, our mean Dice or None, n)`` of one published result against our evaluations.

    relation: ``same case and reference``, ``same dataset, other cases`` or ``different data``.
    A case evaluated several times (at several ``--quality`` settings, say) counts once, from
    the first evaluation given: the same patient must not weigh twice in a mean.
    """
    rows, seen = [], set()
    for e in evals:
        for r in _gland_rows(e.rows, entry.structure):
            key = (r.get("case_id"), str(r.get("image", "")), str(r.get("label", "")))
            if key not in seen:
                seen.add(key)
                rows.append(r)
    if entry.same_case is not None:
        case, label = entry.same_case
        same = [r for r in rows if case in str(r.get("image", "")) and label in str(r.get("label", ""))]
        if same:
            return "same case and reference", _mean_dice(same), len(same)
    if entry.same_source is not None:
        same = [r for r in rows if r.get("source") == entry.same_source]
        if same:
            return "same dataset, other cases", _mean_dice(same), len(same)
    return "different data", None, 0


def _mean_dice(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    d = describe([r["dice"] for r in rows])
    return d["mean"]


# --- figures ---------------------------------------------------------------


def _extreme_cases(evals: Sequence[EvalSet]) -> Tuple[Tuple[EvalSet, Dict[str, Any]], Tuple[EvalSet, Dict[str, Any]]]:
    """(best, worst) rows by Dice of each eval's first structure (the gland for zonal models when present)."""
    candidates = []
    for e in evals:
        key = GLAND if GLAND in e.structures else e.structures[0]
        candidates += [(e, r) for r in e.rows if r["structure"] == key and math.isfinite(r["dice"])]
    candidates.sort(key=lambda er: er[1]["dice"])
    return candidates[-1], candidates[0]


def _prediction_for(e: EvalSet, row: Dict[str, Any], predictor_factory):
    """The saved prediction of a case, or a fresh one from the model package."""
    import SimpleITK as sitk

    from UNetSegmentLib.io import read_image

    saved = e.path / "predictions" / f"{row['case_id']}.nii.gz"
    if saved.is_file():
        return sitk.ReadImage(str(saved))
    log.info("segmenting %s for its overlay (no saved prediction)", row["case_id"])
    return predictor_factory().predict(read_image(row["image"])).labelmap


def case_overlay(e: EvalSet, row: Dict[str, Any], predictor_factory, title: str, path: Path) -> Path:
    """Mid-gland overlay of one evaluated case."""
    import SimpleITK as sitk

    from UNetSegmentLib.io import read_image

    image = read_image(row["image"])
    pred = _prediction_for(e, row, predictor_factory)
    ref = sitk.ReadImage(str(row["label"]))
    if ref.GetSize() != image.GetSize():
        ref = sitk.Resample(sitk.Cast(ref, sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return figures.overlay(
        sitk.GetArrayFromImage(image),
        sitk.GetArrayFromImage(ref),
        sitk.GetArrayFromImage(pred),
        image.GetSpacing(),
        title,
        path,
    )


def make_figures(
    evals: Sequence[EvalSet], package, run_dirs: Sequence[Path], out: Path, device: str
) -> Dict[str, Path]:
    """All report figures; returns ``{name: path}``. ``run_dirs``: consecutive training runs (the learning curve)."""
    figs: Dict[str, Path] = {}
    fig_dir = out / "figures"
    dice = {f"{e.name}\n{s}": [r["dice"] for r in e.rows if r["structure"] == s] for e in evals for s in e.structures}
    hd = {f"{e.name}\n{s}": [r["hd95_mm"] for r in e.rows if r["structure"] == s] for e in evals for s in e.structures}
    figs["dice"] = figures.box_plot(dice, "Dice", "Dice per case", fig_dir / "dice_boxplot.png", ylim=(0, 1))
    figs["hd95"] = figures.box_plot(hd, "HD95 (mm)", "95 % Hausdorff distance per case", fig_dir / "hd95_boxplot.png")
    predictor = []

    def predictor_factory():
        if not predictor:
            from UNetSegmentLib.inference import Predictor

            predictor.append(Predictor(package, device=device))
        return predictor[0]

    (be, best), (we, worst) = _extreme_cases(evals)
    extremes = [("best", be, best)] + ([("worst", we, worst)] if worst is not best else [])
    for label, e, row in extremes:
        title = f"{label}: {row['case_id']} ({e.name}), {row['structure']} Dice {row['dice']:.3f}"
        name = f"{label}_{_safe(row['case_id'])}.png"
        figs[label] = case_overlay(e, row, predictor_factory, title, fig_dir / name)
    missing = [r for r in run_dirs if not (r / "log.csv").is_file()]
    if missing:
        log.warning("%s has no log.csv; no learning curve", missing[0])
    elif run_dirs:
        joined, starts = figures.chain_logs([figures.read_log(r / "log.csv") for r in run_dirs])
        figs["learning_curve"] = figures.learning_curve(joined, fig_dir / "learning_curve.png", starts)
    return figs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# --- Markdown --------------------------------------------------------------


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _stat(rows: Sequence[Dict[str, Any]], metric: str, digits: int) -> str:
    d = describe([r[metric] for r in rows])
    if d["mean"] is None:
        return f"– ({d['n_nan']} undefined)"
    s = f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f} ({d['median']:.{digits}f})"
    return s + (f", {d['n_nan']} undefined" if d["n_nan"] else "")


def _results_table(evals: Sequence[EvalSet]) -> List[str]:
    lines = [
        "| evaluation | structure | n | Dice mean ± sd (median) | HD95 mm | ASSD mm | volume diff mL | abs. volume diff % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in evals:
        for s in e.structures:
            rs = [r for r in e.rows if r["structure"] == s]
            abs_pct = [abs(r["volume_diff_pct"]) for r in rs]
            lines.append(
                f"| {e.name} | {s} | {len(rs)} | {_stat(rs, 'dice', 3)} | {_stat(rs, 'hd95_mm', 1)} | "
                f"{_stat(rs, 'asd_mm', 2)} | {_stat(rs, 'volume_diff_ml', 1)} | {_fmt(describe(abs_pct)['mean'], 1)} |"
            )
    return lines


def per_group(e: EvalSet, structure: str) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """``[(centre, rows)]`` of one structure, centres in first-seen order; ``source/group`` names them."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in e.rows:
        if r["structure"] == structure:
            name = "/".join(str(v) for v in (r.get("source"), r.get("group")) if v) or "(no centre recorded)"
            groups.setdefault(name, []).append(r)
    return list(groups.items())


def _per_group_section(evals: Sequence[EvalSet]) -> List[str]:
    lines = [
        "### Per centre",
        "",
        "| evaluation | structure | centre | n | Dice mean ± sd (median) | lowest Dice (case) | HD95 mm | abs. volume diff % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in evals:
        for s in e.structures:
            for name, rs in per_group(e, s):
                finite = [r for r in rs if math.isfinite(r["dice"])]
                low = min(finite, key=lambda r: r["dice"]) if finite else None
                low_s = f"{low['dice']:.3f} ({low['case_id']})" if low else "–"
                abs_pct = describe([abs(r["volume_diff_pct"]) for r in rs])["mean"]
                lines.append(
                    f"| {e.name} | {s} | {name} | {len(rs)} | {_stat(rs, 'dice', 3)} | {low_s} | "
                    f"{_stat(rs, 'hd95_mm', 1)} | {_fmt(abs_pct, 1)} |"
                )
    return lines


def plausibility(e: EvalSet) -> Dict[str, Dict[str, Any]]:
    """Anatomical checks of each whole-gland structure (``prostate`` or ``gland``) of one evaluation.

    Per structure: ``n`` cases and, for each check, the case ids that FAIL it:
    ``volume`` (predicted volume outside :data:`UNetSegmentLib.labels.PLAUSIBLE_GLAND_ML`),
    ``one_component`` (not exactly one connected component) and ``every_slice``
    (a slice holding reference without a predicted voxel on it). A check is
    ``None`` when the evaluation predates its column in ``per_case.csv``.
    """
    from UNetSegmentLib.labels import PLAUSIBLE_GLAND_ML

    lo, hi = PLAUSIBLE_GLAND_ML
    out: Dict[str, Dict[str, Any]] = {}
    for s in e.structures:
        if s not in ("prostate", GLAND):
            continue
        rs = [r for r in e.rows if r["structure"] == s]
        out[s] = {
            "n": len(rs),
            "volume": _failing(rs, "volume_pred_ml", lambda v: lo <= v <= hi),
            "one_component": _failing(rs, "components", lambda v: v == 1),
            "every_slice": _failing(rs, "slices_missed", lambda v: v == 0),
        }
    return out


def _failing(rows: Sequence[Dict[str, Any]], column: str, ok) -> Optional[List[str]]:
    """Case ids of ``rows`` whose ``column`` fails ``ok``; ``None`` when the column was not recorded."""
    if any(column not in r for r in rows):
        return None
    return [r["case_id"] for r in rows if not ok(r[column])]


def _plausibility_section(evals: Sequence[EvalSet]) -> List[str]:
    from UNetSegmentLib.labels import PLAUSIBLE_GLAND_ML

    lo, hi = PLAUSIBLE_GLAND_ML
    lines = [
        "### Anatomical plausibility",
        "",
        f"Cases passing each check of the whole gland: predicted volume within {lo:g}-{hi:g} mL, exactly one "
        "connected component (26-connectivity), and a predicted voxel on the reference in every slice that "
        "holds reference. Failing cases are named.",
        "",
        "| evaluation | structure | n | volume plausible | one component | on the gland in every labelled slice |",
        "|---|---|---|---|---|---|",
    ]
    for e in evals:
        for s, checks in plausibility(e).items():
            cells = []
            for key in ("volume", "one_component", "every_slice"):
                failed = checks[key]
                if failed is None:
                    cells.append("– (not recorded)")
                else:
                    cell = f"{checks['n'] - len(failed)}/{checks['n']}"
                    cells.append(cell + (f" (fails: {', '.join(failed)})" if failed else ""))
            lines.append(f"| {e.name} | {s} | {checks['n']} | " + " | ".join(cells) + " |")
    return lines


def _model_section(facts: Dict[str, Any]) -> List[str]:
    arch = facts["architecture"].get("parameters", {})
    training = facts.get("training", {})
    data = training.get("data", {})
    lic = facts.get("license", {})
    lines = [
        "## Model",
        "",
        f"- **{facts['name']}** (`{facts['id']}` {facts['version']}), structures: {', '.join(facts['structures'])}",
        f"- 3D U-Net, base channels {arch.get('base_channels', '?')}, pooling {arch.get('pool_sizes', '?')}, "
        f"{arch.get('norm', '?')} norm, {arch.get('padding', '?')} padding",
        f"- size: {facts['parameters']:,} parameters ({facts['parameters'] * 4 / 1e6:.1f} MB as float32)",
        f"- compute: {facts['flops_per_patch'] / 1e9:.1f} GFLOPs per patch of {' x '.join(map(str, facts['patch_size_zyx']))} "
        f"voxels (z, y, x) at {' x '.join(f'{s:g}' for s in facts['spacing_xyz_mm'])} mm (x, y, z); convolutions only, 2 FLOPs per multiply-add",
        f"- weights sha256: `{facts['weights_sha256'][:16]}…`",
    ]
    if facts.get("members", 1) > 1:
        lines.append(f"- an ensemble of {facts['members']} networks (size and compute above are per network)")
    if training:
        lines.append(
            f"- training: experiment `{training.get('experiment', '?')}`, {training.get('epochs', '?')} epochs, "
            f"best validation Dice (model grid) {_fmt(training.get('best_validation_dice'))}"
        )
    if data:
        counts = ", ".join(f"{len(v)} {k.replace('_cases', '')}" for k, v in data.items() if k.endswith("_cases"))
        lines.append(
            f"- training data: {', '.join(data.get('sources', [])) or '?'} ({counts or 'case lists not recorded'})"
        )
    if lic:
        lines.append(f"- licence: code {lic.get('code', '?')}; weights: {lic.get('weights', '?')}")
        for t in lic.get("training_data", []):
            lines.append(f"  - training data terms: {t}")
    return lines


def _published_section(evals: Sequence[EvalSet]) -> Tuple[List[str], List[Dict[str, Any]]]:
    lines = [
        "## Beside published results",
        "",
        "Dice = 2 IoU / (1 + IoU) converts results published as IoU (Jaccard); both refer to the same masks, "
        "so the conversion is exact for one case and close for means. *Ours* is our mean Dice on the rows that "
        "share the published result's case or dataset, and '–' where none does.",
        "",
        "| method | data | structure | published | as Dice | ours (Dice) | same data? | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    sources = list(dict.fromkeys(p.source for p in PUBLISHED))
    for p in PUBLISHED:
        relation, ours, n = match_published(p, evals)
        published = f"{'IoU' if p.metric == 'iou' else 'Dice'} {p.value:.3f}"
        if p.hd_mm is not None:
            published += f", HD {p.hd_mm:g} mm"
        ours_s = f"{ours:.3f} (n={n})" if ours is not None else "–"
        lines.append(
            f"| {p.method} | {p.data} | {p.structure} | {published} | {p.dice:.3f} | {ours_s} | {relation} | [{sources.index(p.source) + 1}] |"
        )
        records.append({**p.__dict__, "dice": p.dice, "relation": relation, "ours_dice": ours, "ours_n": n})
    lines += ["", "Sources:", ""] + [f"{i}. {src}" for i, src in enumerate(sources, start=1)]
    lines += ["", "What each comparison means:", ""]
    for p, rec in zip(PUBLISHED, records):
        lines.append(f"- **{p.method}, {p.structure}** ({rec['relation']}): {p.comparability}")
    same = [r for r in records if r["relation"] == "same case and reference"]
    lines += [
        "",
        "Only rows marked *same case and reference* compare like with like. *Same dataset, other cases* shares "
        "scanners and annotation protocol but not cases or scoring; *different data* rows are context, not a contest.",
    ]
    if not same:
        lines.append("None of the published results was measured on a case evaluated here.")
    return lines, records


def _cases_section(evals: Sequence[EvalSet], k: int = 5) -> List[str]:
    lines = [
        "## Cases",
        "",
        "| evaluation | case | group | structure | Dice | HD95 mm | ASSD mm | volume ref mL | volume diff % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(((e, r) for e in evals for r in e.rows), key=lambda er: (er[0].name, er[1]["dice"]))
    shown = rows if len(rows) <= 2 * k else rows[:k] + rows[-k:]
    for e, r in shown:
        lines.append(
            f"| {e.name} | {r['case_id']} | {r.get('group', '')} | {r['structure']} | {_fmt(r['dice'])} | {_fmt(r['hd95_mm'], 1)} | "
            f"{_fmt(r['asd_mm'], 2)} | {_fmt(r['volume_ref_ml'], 1)} | {_fmt(r['volume_diff_pct'], 1)} |"
        )
    if len(rows) > 2 * k:
        lines.insert(
            2,
            f"The {k} lowest and {k} highest Dice of {len(rows)} rows; all are in each evaluation's `per_case.csv`.\n",
        )
    return lines


def write_report(
    evals: Sequence[EvalSet],
    package,
    out: Path,
    run_dirs: Union[None, Path, Sequence[Path]] = None,
    device: str = "auto",
    title: Optional[str] = None,
) -> Path:
    """Write ``out/report.md``, ``out/figures/*.png`` and ``out/benchmark.json``; returns the report's path.

    ``run_dirs``: the training run, or consecutive runs (a fine-tuning after the run it started from).
    """
    out = Path(out)
    if run_dirs is None:
        run_dirs = []
    elif isinstance(run_dirs, (str, Path)):
        run_dirs = [Path(run_dirs)]
    out.mkdir(parents=True, exist_ok=True)
    facts = model_facts(package)
    figs = make_figures(evals, package, [Path(r) for r in run_dirs], out, device)
    rel = {k: v.relative_to(out).as_posix() for k, v in figs.items()}
    lines = [
        f"# {title or 'Benchmark: ' + facts['name']}",
        "",
        f"Generated by `training/benchmark.py` on {datetime.date.today().isoformat()} from "
        + ", ".join(f"`{e.path}`" for e in evals)
        + ". Metrics are computed on each case's original grid, distances in mm on its true spacing "
        "(MONAI DiceMetric, HausdorffDistanceMetric at the 95th percentile, symmetric SurfaceDistanceMetric). "
        "Where exactly one of prediction and reference is empty, Dice is 0 and the distances are undefined "
        "(counted, not averaged); where both are, Dice is 1 and the distances 0.",
        "",
        "## Results",
        "",
        *(f"- **{e.name}**: {e.description or e.path} ({len({r['case_id'] for r in e.rows})} cases)" for e in evals),
        "",
        *_results_table(evals),
        "",
        "Values: mean ± sample standard deviation (median) over cases.",
        "",
        *_per_group_section(evals),
        "",
        *_plausibility_section(evals),
        "",
        f"![Dice per case]({rel['dice']})",
        f"![HD95 per case]({rel['hd95']})",
        "",
        "Best and worst case (mid-gland slice of the reference):",
        "",
        " ".join(f"![{k} case]({rel[k]})" for k in ("best", "worst") if k in rel),
        "",
    ]
    if "learning_curve" in rel:
        runs = ", then ".join(f"`{r}`" for r in run_dirs)
        note = (
            " (each started from the weights of the one before; dashed lines mark where)" if len(run_dirs) > 1 else ""
        )
        lines += ["### Learning curve", "", f"Run {runs}{note}.", "", f"![learning curve]({rel['learning_curve']})", ""]
    published, records = _published_section(evals)
    lines += published + [""] + _model_section(facts) + [""] + _cases_section(evals) + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    bench = {
        "model": facts,
        "evaluations": {e.name: {**_summary(e), "plausibility": plausibility(e)} for e in evals},
        "published": records,
        "figures": rel,
    }
    (out / "benchmark.json").write_text(json.dumps(bench, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return report


def _summary(e: EvalSet) -> Dict[str, Any]:
    return {
        "description": e.description,
        "structures": {
            s: {
                m: describe([r[m] for r in e.rows if r["structure"] == s])
                for m in ("dice", "hd95_mm", "asd_mm", "volume_diff_ml")
            }
            for s in e.structures
        },
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the Markdown benchmark report of a model from evaluate.py outputs.")
    p.add_argument(
        "--eval",
        action="append",
        required=True,
        type=Path,
        metavar="EVAL_DIR",
        help="evaluate.py output folder (repeatable)",
    )
    p.add_argument("--model", required=True, help="the evaluated model package folder")
    p.add_argument(
        "--run",
        type=Path,
        action="append",
        default=[],
        help="training run folder, for the learning curve from log.csv; repeat for consecutive schedules "
        "(a run, then the fine-tuning started from it)",
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="report folder")
    p.add_argument("--title", help="report title")
    p.add_argument("--device", default="auto", help="for overlays of cases whose predictions were not saved")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from UNetSegmentLib.io import ImageReadError
    from UNetSegmentLib.model_package import ModelPackage, ModelPackageError

    try:
        evals = [load_eval(d) for d in args.eval]
        package = ModelPackage.load(args.model)
        report = write_report(evals, package, args.output, args.run, args.device, args.title)
    except (OSError, ValueError, KeyError, ModelPackageError, ImageReadError, RuntimeError) as e:
        print(f"benchmark.py: {e}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
