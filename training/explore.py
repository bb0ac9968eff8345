"""Explore a dataset before training: geometry, intensities and label volumes per case.

Examples::

    python training/explore.py ../shared/data/promise12 --format promise12 -o docs/data_exploration/promise12
    python training/explore.py /data/Task05_Prostate --format msd -o runs/explore-msd
    python training/explore.py /data/mine --format pairs --label-map 1=prostate -o runs/explore-mine
    python training/explore.py /data/PROMISE12 -o runs/explore-promise12   # format recognised from the folder
    python training/explore.py ../shared/data/prostatex/ProstateX-0000/dicom/t2w --format image \\
        --label ../shared/data/prostatex/ProstateX-0000/labels/zonal_pz1_tz2_AI_Yuan23.nii.gz \\
        --label-map 1=pz,2=tz -o docs/data_exploration/prostatex

Writes into the output folder: ``cases.csv`` (one row per case), ``summary.csv``
(statistics over cases), figures (``spacing.png``, ``volumes.png``,
``intensity.png``, ``examples.png``) and ``README.md``, a report that shows them.

Geometry is reported in ITK order (x, y, z) with the DICOM orientation code of
the image axes (``LPS``: i to the patient's left, j posterior, k superior).
Label volumes are counted on the label's own grid (mL); intensities inside
structures and example slices use the label resampled onto the image grid in
physical space (nearest neighbour). Example slices are shown in LPS: anterior
at the top, the patient's right on the image's left (radiological view).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shlex
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from training.data import Case  # noqa: E402
from UNetSegmentLib.io import ImageReadError, read_image  # noqa: E402
from UNetSegmentLib.labels import STRUCTURES, structure  # noqa: E402

log = logging.getLogger("explore")

FORMATS = ("promise12", "prostatex", "nci_isbi", "msd", "pairs", "synthetic", "image")
PERCENTILES = (1, 5, 50, 95, 99)
#: the whole gland: union of every labelled structure
GLAND = "gland"
#: fewer cases than this get tables but no histograms
MIN_CASES_FOR_HISTOGRAMS = 3


@dataclass
class Example:
    """Axial slices of a case for the figure, in LPS: ``images`` and ``labels`` are (y, x) arrays.

    ``slice_indices`` are k in the LPS-oriented image: the labelled range's
    lower quarter (towards the apex), middle and upper quarter (towards the
    base); ``aspect`` = dy / dx.
    """

    case_id: str
    group: str
    images: List[np.ndarray]
    labels: List[np.ndarray]
    label_map: Dict[int, str]
    aspect: float
    slice_indices: List[int]

    @property
    def middle(self) -> int:
        return len(self.slice_indices) // 2


def parse_label_map(text: str) -> Dict[int, str]:
    """``"1=pz,2=tz"`` -> ``{1: "peripheral_zone", 2: "transition_zone"}`` (names or aliases)."""
    out: Dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"label map entry {part!r} is not VALUE=NAME (e.g. 1=prostate)")
        out[int(value)] = structure(name).name
    return out


def load_cases(args: argparse.Namespace) -> List[Case]:
    """The cases of ``args.data`` read with the chosen format's reader."""
    label_map = parse_label_map(args.label_map) if args.label_map else {}
    if args.format == "image":
        if not Path(args.data).exists():
            raise FileNotFoundError(f"image {args.data} does not exist")
        if args.label and not Path(args.label).exists():
            raise FileNotFoundError(f"label {args.label} does not exist")
        if args.label and not label_map:
            raise ValueError("--label needs --label-map, e.g. --label-map 1=prostate")
        case_id = args.case_id or Path(args.data).name.split(".")[0]
        return [Case(case_id, str(args.data), args.label, label_map, args.group, "train", "image", args.channel)]
    from training.config import DatasetSource
    from training.data.registry import read_source

    src = DatasetSource(
        format=args.format,
        path=str(args.data),
        image_suffix=args.image_suffix,
        label_suffix=args.label_suffix,
        label_map=label_map,
        num_cases=args.num_cases,
        seed=args.seed,
    )
    return read_source(src)


def orientation_code(image: sitk.Image) -> str:
    """DICOM orientation code of the image axes (e.g. ``LPS``, ``RAS``)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def obliquity_deg(image: sitk.Image) -> float:
    """Largest angle (degrees) between an image axis and the nearest patient axis."""
    d = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(d.max(axis=0), -1, 1))).max())


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (within rounding)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def _on_grid(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``label`` as uint8 on ``reference``'s grid (nearest neighbour in physical space)."""
    label = sitk.Cast(label, sitk.sitkUInt8)
    if same_grid(label, reference):
        return label
    return sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def case_stats(case: Case) -> Tuple[Dict[str, Any], Optional[Example]]:
    """One row of statistics for a case, and its mid-gland example slice (``None`` without a label)."""
    row: Dict[str, Any] = {
        "case_id": case.case_id,
        "group": case.group,
        "split": case.split,
        "source": case.source,
        "image": case.image,
        "label": case.label or "",
    }
    image = read_image(case.image, case.channel)
    row.update(zip(("size_x", "size_y", "size_z"), image.GetSize()))
    row.update(zip(("spacing_x", "spacing_y", "spacing_z"), (round(s, 4) for s in image.GetSpacing())))
    row["orientation"] = orientation_code(image)
    row["oblique_deg"] = round(obliquity_deg(image), 2)
    row["pixel_type"] = image.GetPixelIDTypeAsString()
    arr = sitk.GetArrayViewFromImage(image)
    values = np.percentile(arr, PERCENTILES)
    row["i_min"], row["i_max"], row["i_mean"] = float(arr.min()), float(arr.max()), round(float(arr.mean()), 2)
    for p, v in zip(PERCENTILES, values):
        row[f"i_p{p:02d}"] = round(float(v), 2)
    if not case.label:
        row["label_grid"] = "none"
        return row, None
    label = sitk.ReadImage(case.label)
    lab_arr = sitk.GetArrayViewFromImage(label)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    present = sorted(int(v) for v in np.unique(lab_arr) if v != 0)
    row["label_values"] = ";".join(str(v) for v in present)
    row["unmapped_values"] = ";".join(str(v) for v in present if v not in case.label_map)
    counts = np.bincount(lab_arr.ravel().astype(np.int64), minlength=max(present, default=0) + 1)
    names = sorted(set(case.label_map.values()))
    for name in names:
        row[f"ml_{name}"] = round(
            sum(counts[v] for v, n in case.label_map.items() if n == name and v < len(counts)) * voxel_ml, 2
        )
    if len(names) > 1:
        row[f"ml_{GLAND}"] = round(sum(counts[v] for v in case.label_map if v < len(counts)) * voxel_ml, 2)
    row["label_grid"] = "same" if same_grid(label, image) else "resampled"
    oriented = sitk.DICOMOrient(image, "LPS")
    lab_lps = sitk.GetArrayFromImage(_on_grid(label, oriented))
    img_lps = sitk.GetArrayViewFromImage(oriented)
    mapped = np.isin(lab_lps, list(case.label_map))
    for name in names:
        mask = np.isin(lab_lps, [v for v, n in case.label_map.items() if n == name])
        row[f"mean_{name}"] = round(float(img_lps[mask].mean()), 2) if mask.any() else ""
    slices = np.nonzero(mapped.any(axis=(1, 2)))[0]
    row["labelled_slices"] = int(len(slices))
    row["first_labelled_slice"] = int(slices[0]) if len(slices) else ""
    row["last_labelled_slice"] = int(slices[-1]) if len(slices) else ""
    if not len(slices):
        return row, None
    ks = sorted({int(slices[int(f * (len(slices) - 1))]) for f in (0.25, 0.5, 0.75)})
    sx, sy, _ = oriented.GetSpacing()
    images = [np.array(img_lps[k]) for k in ks]
    labels = [lab_lps[k].copy() for k in ks]
    return row, Example(case.case_id, case.group, images, labels, dict(case.label_map), sy / sx, ks)


NUMERIC_SUMMARY = (
    "size_x",
    "size_y",
    "size_z",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "oblique_deg",
    "i_p01",
    "i_p50",
    "i_p99",
    "i_max",
    "labelled_slices",
)


def summarise(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Statistics over cases of the numeric columns: n, min, median, mean, max."""
    keys = list(NUMERIC_SUMMARY) + sorted({k for r in rows for k in r if k.startswith(("ml_", "mean_"))})
    out = []
    for key in keys:
        vals = np.array([float(r[key]) for r in rows if r.get(key, "") not in ("", None)])
        if not len(vals):
            continue
        out.append(
            {
                "metric": key,
                "n": int(len(vals)),
                "min": round(float(vals.min()), 3),
                "median": round(float(np.median(vals)), 3),
                "mean": round(float(vals.mean()), 3),
                "max": round(float(vals.max()), 3),
            }
        )
    return out


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    keys: List[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)


def _colour(name: str) -> Tuple[float, float, float]:
    s = STRUCTURES.get(name)
    return tuple(c / 255 for c in s.color) if s else (1.0, 1.0, 0.0)  # type: ignore[return-value]


def _groups(rows: Sequence[Dict[str, Any]]) -> List[str]:
    return sorted({str(r.get("group", "")) for r in rows})


def plot_spacing(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key, title in (
        (axes[0], "spacing_x", "in-plane spacing (mm)"),
        (axes[1], "spacing_z", "slice spacing (mm)"),
    ):
        data = [[float(r[key]) for r in rows if r.get("group", "") == g and key in r] for g in _groups(rows)]
        ax.hist(data, bins=12, stacked=True, label=[g or "(none)" for g in _groups(rows)])
        ax.set_xlabel(title)
        ax.set_ylabel("cases")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=7, title="group", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_volumes(rows: Sequence[Dict[str, Any]], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in sorted({k for r in rows for k in r if k.startswith("ml_")}) if k != f"ml_{GLAND}"]
    if f"ml_{GLAND}" in {k for r in rows for k in r} and len(keys) > 1:
        keys.append(f"ml_{GLAND}")
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        name = key[3:]
        vals = [float(r[key]) for r in rows if r.get(key, "") != ""]
        ax.hist(vals, bins=12, color=_colour(name if name != GLAND else "prostate"), edgecolor="k", linewidth=0.5)
        ax.set_xlabel(f"{name} volume (mL)")
        ax.set_ylabel("cases")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def plot_intensity(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    """Per-case 1st-99th percentile bars with the median, ordered by group then 99th percentile."""
    import matplotlib.pyplot as plt

    order = sorted(rows, key=lambda r: (str(r.get("group", "")), float(r["i_p99"])))
    groups = _groups(rows)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(5, 0.22 * len(order) + 2), 3.2))
    for i, r in enumerate(order):
        c = cmap(groups.index(str(r.get("group", ""))) % 10)
        ax.plot([i, i], [r["i_p01"], r["i_p99"]], color=c, lw=3, solid_capstyle="butt")
        ax.plot(i, r["i_p50"], "k_", ms=8)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([r["case_id"] for r in order], rotation=90, fontsize=6)
    ax.set_ylabel("intensity (1st-99th pct, median)")
    for g in groups:
        ax.plot([], [], color=cmap(groups.index(g) % 10), lw=3, label=g or "(none)")
    ax.legend(fontsize=7, ncol=min(4, len(groups)))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def choose_examples(examples: Sequence[Example], n: int) -> List[Example]:
    """Up to ``n`` examples, taken in turn from each group so every centre is shown."""
    by_group: Dict[str, List[Example]] = defaultdict(list)
    for e in examples:
        by_group[e.group].append(e)
    chosen: List[Example] = []
    while len(chosen) < n and any(by_group.values()):
        for g in sorted(by_group):
            if by_group[g] and len(chosen) < n:
                chosen.append(by_group[g].pop(0))
    return chosen


def plot_examples(examples: Sequence[Example], path: Path) -> None:
    """Mid-gland slices of up to 12 cases; with at most 4 cases, three slices (apex to base) each."""
    import matplotlib.pyplot as plt

    panels = []
    for e in examples:
        picks = range(len(e.slice_indices)) if len(examples) <= 4 else [e.middle]
        panels.extend((e, i) for i in picks)
    cols = min(4 if len(examples) > 4 else 3, len(panels))
    rows = math.ceil(len(panels) / cols)
    inch = 2.6 if len(panels) > 6 else 3.2
    fig, axes = plt.subplots(rows, cols, figsize=(inch * cols, (inch + 0.25) * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (e, i) in zip(axes.ravel(), panels):
        img, lab = e.images[i], e.labels[i]
        lo, hi = np.percentile(img, (1, 99.5))
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=e.aspect, interpolation="bilinear")
        for value, name in sorted(e.label_map.items()):
            mask = (lab == value).astype(float)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[_colour(name)], linewidths=0.8)
        ax.set_title(f"{e.case_id} ({e.group}) k={e.slice_indices[i]}", fontsize=7)
    names = sorted({n for e in examples for n in e.label_map.values()})
    handles = [plt.Line2D([], [], color=_colour(n), lw=1.5, label=n) for n in names]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.98))
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _md_table(rows: Sequence[Dict[str, Any]], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


def findings(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Plain-language observations that matter for preprocessing and training."""
    out = []
    ok = [r for r in rows if not r.get("error")]
    if not ok:
        return ["no case could be read"]
    sx = [float(r["spacing_x"]) for r in ok]
    sz = [float(r["spacing_z"]) for r in ok]
    out.append(
        f"In-plane spacing {_span(sx, '.3g')} mm, slice spacing {_span(sz, '.3g')} mm (the model resamples to its own spacing)."
    )
    orient = Counter(r["orientation"] for r in ok)
    out.append("Orientation codes: " + ", ".join(f"{k} x{v}" for k, v in orient.most_common()) + ".")
    oblique = [r["case_id"] for r in ok if float(r["oblique_deg"]) > 1.0]
    if oblique:
        out.append(f"{len(oblique)} case(s) are oblique by more than 1 degree (e.g. {oblique[0]}).")
    p99 = [float(r["i_p99"]) for r in ok]
    if min(p99) > 0 and max(p99) / min(p99) > 1.5:
        out.append(
            f"99th intensity percentile {_span(p99, '.4g')} (x{max(p99) / min(p99):.1f} across cases): intensities need per-case normalisation."
        )
    elif p99:
        out.append(f"99th intensity percentile {_span(p99, '.4g')}.")
    gland = [
        float(r.get(f"ml_{GLAND}", r.get("ml_prostate", "")))
        for r in ok
        if r.get(f"ml_{GLAND}", r.get("ml_prostate", "")) != ""
    ]
    if gland:
        out.append(
            f"Labelled gland volume {_span(gland, '.1f')} mL"
            + (f" (median {np.median(gland):.1f})." if len(gland) > 1 else ".")
        )
    zonal = [r for r in ok if r.get("mean_peripheral_zone", "") != "" and r.get("mean_transition_zone", "") != ""]
    if zonal:
        brighter = sum(float(r["mean_peripheral_zone"]) > float(r["mean_transition_zone"]) for r in zonal)
        out.append(
            f"The peripheral zone is brighter than the transition zone in {brighter} of {len(zonal)} case(s) (T2 contrast as expected)."
        )
    unmapped = [r["case_id"] for r in ok if r.get("unmapped_values")]
    if unmapped:
        out.append(
            f"{len(unmapped)} case(s) have label values outside the label map (e.g. {unmapped[0]}): they count as background."
        )
    resampled = [r["case_id"] for r in ok if r.get("label_grid") == "resampled"]
    if resampled:
        out.append(
            f"{len(resampled)} label(s) lie on a grid other than their image's (e.g. {resampled[0]}); they are resampled in physical space."
        )
    bad = [r["case_id"] for r in rows if r.get("error")]
    if bad:
        out.append(f"{len(bad)} case(s) could not be read: {', '.join(bad[:5])}.")
    return out


def write_report(
    out: Path,
    args: argparse.Namespace,
    rows: Sequence[Dict[str, Any]],
    summary: Sequence[Dict[str, Any]],
    figures: Dict[str, str],
) -> Path:
    """``README.md`` in ``out``: overview, findings, summary table, figures and the per-case table."""
    groups = Counter(str(r.get("group", "")) or "(none)" for r in rows)
    splits = Counter(str(r.get("split", "")) for r in rows)
    cmd = "python training/explore.py " + shlex.join(
        getattr(args, "argv", None) or [str(args.data), "--format", args.format, "-o", str(args.output)]
    )
    lines = [
        f"# Data exploration: {args.title or Path(str(args.data)).name}",
        "",
        "Generated by `training/explore.py`; regenerate with:",
        "",
        f"    {cmd}",
        "",
        f"{len(rows)} case(s); groups: "
        + ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
        + "; splits: "
        + ", ".join(f"{s} {n}" for s, n in sorted(splits.items()))
        + ".",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in findings(rows)] + [""]
    lines += [
        "## Summary over cases",
        "",
        "Sizes in voxels and spacings in mm, ITK order (x, y, z); intensities in the image's own units;"
        " `ml_*` are label volumes in mL, `mean_*` mean image intensity inside a structure.",
        "",
        _md_table(summary, ["metric", "n", "min", "median", "mean", "max"]),
        "",
    ]
    captions = {
        "spacing": "Voxel spacing per case, stacked by group.",
        "volumes": "Label volume per structure (mL); `gland` is the union of all labelled structures.",
        "intensity": "Intensity range per case: bar from the 1st to the 99th percentile, tick at the median.",
        "examples": "Axial slices through the labelled gland with the label outlines (LPS: anterior up, patient's right on"
        " the left); k is the slice index after reorienting to LPS (k grows towards the head).",
    }
    lines += ["## Figures", ""]
    for key, file in figures.items():
        lines += [f"![{key}]({file})", "", captions[key], ""]
    keys = [
        "case_id",
        "group",
        "split",
        "size_x",
        "size_y",
        "size_z",
        "spacing_x",
        "spacing_z",
        "orientation",
        "i_p01",
        "i_p99",
    ]
    keys += [k for k in sorted({k for r in rows for k in r}) if k.startswith("ml_")] + ["labelled_slices", "error"]
    keys = [k for k in keys if any(r.get(k, "") != "" for r in rows)]
    lines += [
        "## Cases",
        "",
        "All columns are in `cases.csv`; statistics over cases in `summary.csv`.",
        "",
        _md_table(rows, keys),
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def explore(cases: Sequence[Case], out: Path, args: argparse.Namespace, progress: bool = True) -> Path:
    """Compute statistics and figures for ``cases`` and write the report into ``out``; returns README.md."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    examples: List[Example] = []
    iterator: Any = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="cases", unit="case")
    for case in iterator:
        try:
            row, example = case_stats(case)
        except (ImageReadError, RuntimeError, OSError, ValueError) as e:
            log.warning("%s: %s", case.case_id, e)
            rows.append(
                {
                    "case_id": case.case_id,
                    "group": case.group,
                    "split": case.split,
                    "error": str(e).splitlines()[0][:200],
                }
            )
            continue
        rows.append(row)
        if example is not None:
            examples.append(example)
    write_csv(out / "cases.csv", rows)
    summary = summarise([r for r in rows if not r.get("error")])
    write_csv(out / "summary.csv", summary)
    ok = [r for r in rows if not r.get("error")]
    figures: Dict[str, str] = {}
    if len(ok) >= MIN_CASES_FOR_HISTOGRAMS:
        plot_spacing(ok, out / "spacing.png")
        figures["spacing"] = "spacing.png"
        if plot_volumes(ok, out / "volumes.png"):
            figures["volumes"] = "volumes.png"
        plot_intensity(ok, out / "intensity.png")
        figures["intensity"] = "intensity.png"
    if examples:
        plot_examples(choose_examples(examples, args.examples), out / "examples.png")
        figures["examples"] = "examples.png"
    return write_report(out, args, rows, summary, figures)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Per-case and summary statistics of a prostate MRI dataset, with a Markdown report."
    )
    p.add_argument("data", help="dataset folder (or, with --format image, one image file or DICOM series folder)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="dataset reader (default: recognised from the folder: PROMISE12, MSD Task05, NCI-ISBI, pairs or an image)",
    )
    p.add_argument("--label-map", default="", help="label values for pairs/image, e.g. 1=prostate or 1=pz,2=tz")
    p.add_argument("--image-suffix", default="_image", help="pairs: image name suffix (default _image)")
    p.add_argument("--label-suffix", default="_label", help="pairs: label name suffix (default _label)")
    p.add_argument("--label", help="image: the label file")
    p.add_argument("--case-id", help="image: the case id (default: the file or folder name)")
    p.add_argument("--group", default="", help="image: the group (centre or scanner)")
    p.add_argument("--channel", type=int, help="image: volume of a 4D image to read")
    p.add_argument("--num-cases", type=int, default=10, help="synthetic: number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed")
    p.add_argument("--examples", type=int, default=12, help="example slices in the figure (default 12)")
    p.add_argument("--title", default="", help="report title (default: the data folder's name)")
    p.add_argument("--note", default="", help="a paragraph for the report (e.g. the data's source and licence)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.format is None:
            from training.data.detect import detect_format

            detected = detect_format(args.data)
            args.format = detected.format
            print(f"Recognised {detected.format}: {detected.found}")
            args.argv = args.argv + ["--format", detected.format]  # the report's command states it
        cases = load_cases(args)
        report = explore(cases, Path(args.output), args)
    except (FileNotFoundError, ValueError, KeyError, ImageReadError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"explore.py: {msg}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
