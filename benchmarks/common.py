"""Helpers shared by the benchmark scripts: alternating runs, statistics, ratios, tables, results.

Every script measures a baseline and its variants in the same process or
session, alternating them (baseline, variant, baseline, variant, ...) so that
a machine that gets busier or cooler half-way affects all of them alike, and
reports each variant as a ratio to the baseline. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("UNETSEGMENT_SHARED_DATA", REPO.parent / "shared" / "data"))
#: The default model that ships inside the library (added when the default training run is exported).
BUNDLED_MODEL = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"


def resolve_case(case: str, data_root: Path = SHARED_DATA) -> Tuple[Path, Optional[Path]]:
    """A named case of ../shared/data -> (T2 image, whole-gland label).

    ``prostatex`` (ProstateX-0000 with the Guerbet23 AI whole-gland label) or
    ``promise12:CaseNN`` (manual whole-gland label of the challenge).
    """
    if case in ("prostatex", "prostatex:ProstateX-0000"):
        d = data_root / "prostatex" / "ProstateX-0000"
        return d / "t2w.nii.gz", d / "labels" / "wholegland_AI_Guerbet23.nii.gz"
    if case.startswith("promise12:"):
        name = case.split(":", 1)[1]
        d = data_root / "promise12"
        return d / f"{name}_image.nii.gz", d / f"{name}_label.nii.gz"
    raise ValueError(f"unknown case {case!r}: use prostatex or promise12:CaseNN")


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """``--case``, ``--input`` and ``--label``, shared by the scripts that segment a real image."""
    parser.add_argument(
        "--case",
        default="prostatex",
        help="prostatex (default) or promise12:CaseNN from ../shared/data; sets --input and --label",
    )
    parser.add_argument("--input", type=Path, help="an image file (NIfTI, NRRD, ...) instead of --case")
    parser.add_argument(
        "--label", type=Path, help="reference whole-gland label on the input grid (default: the case's)"
    )


def resolve_input(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``args.input``/``args.label`` from ``args.case`` unless ``--input`` was given."""
    if args.input is not None:
        return
    try:
        args.input, case_label = resolve_case(args.case)
    except ValueError as e:
        parser.error(str(e))
    if args.label is None:
        args.label = case_label


def load_package(path: Optional[Path]):
    """The model package at ``path``, or the bundled default model; ``SystemExit`` with a one-line reason."""
    from UNetSegmentLib.model_package import ModelPackage, ModelPackageError

    folder = Path(path) if path else BUNDLED_MODEL
    if not folder.exists():
        raise SystemExit(f"no model package at {folder}: pass --model FOLDER (e.g. from training/export.py)")
    try:
        return ModelPackage.load(folder)
    except (ModelPackageError, OSError, ValueError) as e:
        raise SystemExit(f"cannot load model package {folder}: {e}") from None


def parse_int_list(text: str, minimum: int = 1) -> List[int]:
    """``"1,2"`` -> ``[1, 2]``; rejects empty items and values below ``minimum``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, not {text!r}") from None
    if not values or min(values) < minimum:
        raise ValueError(f"expected integers >= {minimum}, not {text!r}")
    return values


def parse_counts(text: str) -> List[int]:
    """``"0,1"`` -> ``[0, 1]``: non-negative integers (worker counts)."""
    return parse_int_list(text, minimum=0)


def parse_triple(text: str) -> Tuple[int, int, int]:
    """``"20,128,128"`` -> ``(20, 128, 128)`` (z, y, x)."""
    values = parse_int_list(text)
    if len(values) != 3:
        raise ValueError(f"expected three integers z,y,x, not {text!r}")
    return (values[0], values[1], values[2])


def run_alternating(
    runners: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    on_result: Optional[Callable[[str, int, Any], None]] = None,
) -> Dict[str, List[Any]]:
    """Call each runner ``warmup`` times (results dropped), then ``repeats`` rounds of all runners in turn.

    Returns ``{name: [result of round 1, round 2, ...]}``. ``on_result(name,
    round, result)`` is called after every measured call (round 0 = warm-up).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    results: Dict[str, List[Any]] = {name: [] for name in runners}
    for _ in range(warmup):
        for name, fn in runners.items():
            r = fn()
            if on_result:
                on_result(name, 0, r)
    for i in range(repeats):
        for name, fn in runners.items():
            r = fn()
            results[name].append(r)
            if on_result:
                on_result(name, i + 1, r)
    return results


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Median, minimum, maximum and count of ``values`` (NaN statistics when empty)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    try:
        if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
            return float("nan")
    except TypeError:
        return float("nan")
    return float(numerator) / float(denominator)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    """``"met"`` / ``"missed"`` against a target ratio; ``"n/a"`` for NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def fmt(value: Any) -> str:
    """A table cell: floats to 3 significant digits (whole numbers from 100 on), NaN/None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:#.3g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table whose columns are padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def mask_on_grid(mask, reference):
    """``mask`` (sitk.Image, any label values) as a boolean (z, y, x) array on ``reference``'s grid.

    Same size, spacing, origin and direction: the voxels are taken as they
    are. Otherwise the mask is resampled onto the reference grid by nearest
    neighbour in physical (LPS) space, so two tools that write different
    header conventions are still compared voxel for voxel.
    """
    import SimpleITK as sitk

    same = (
        mask.GetSize() == reference.GetSize()
        and np.allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        and np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        and np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-4)
    )
    if not same:
        mask = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(mask) > 0


def image_dice(a_path: Path, b_path: Path) -> float:
    """Whole-gland Dice (every non-zero label) of two label files, ``a`` resampled onto ``b``'s grid if needed."""
    import SimpleITK as sitk

    b = sitk.ReadImage(str(b_path))
    a = sitk.ReadImage(str(a_path))
    return dice(mask_on_grid(a, b), sitk.GetArrayFromImage(b) > 0)


def cpu_name() -> str:
    """The CPU's model name (see :func:`UNetSegmentLib.hardware.cpu_info`)."""
    from UNetSegmentLib.hardware import cpu_info

    return cpu_info().model


#: Runtimes whose versions every result records: module name -> distributions that provide it.
RUNTIME_DISTRIBUTIONS: Dict[str, Tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu", "ort-nightly"),
    "openvino": ("openvino",),
    "torch": ("torch",),
}


def runtime_versions() -> Dict[str, Optional[str]]:
    """Installed version of onnxruntime, openvino and torch (None: not installed), read from the
    package metadata, so that recording them imports none of them."""
    import importlib.metadata
    import importlib.util

    out: Dict[str, Optional[str]] = {}
    for module, dists in RUNTIME_DISTRIBUTIONS.items():
        version = None
        if importlib.util.find_spec(module) is not None:
            for dist in dists:
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
            else:
                version = "installed (version unknown)"
        out[module] = version
    return out


def environment(backend: Optional[str] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """Facts about the machine and software that a reader of a result needs.

    The CPU's model and instruction set (``hardware.cpu_summary``: speed depends on AVX2 /
    AVX-512 / native bf16 far more than on the clock), the threads inference uses (``threads``,
    else the runtimes' default: the CPUs this process may use), the runtime (``backend``, when
    the script runs one) and the versions of onnxruntime, openvino and torch. Torch is not
    imported: where a script has imported it, its thread count is recorded too.
    """
    import sys

    from UNetSegmentLib.hardware import cpu_summary, default_threads

    cpu = cpu_summary()
    env: Dict[str, Any] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu["model"],
        "cpu_isa": cpu["isa"],
        "cpu_native_bf16": cpu["native_bf16"],
        "cpu_count": cpu["cores"],
        "cpus_available": default_threads(),
        "threads": default_threads(threads),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if backend is not None:
        env["backend"] = backend
    env.update(runtime_versions())
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
    return env


def write_results(
    name: str, payload: Dict[str, Any], markdown: str, out_dir: Optional[Path] = None, tag: str = ""
) -> Tuple[Path, Path]:
    """Write ``<out_dir>/<name>[-tag]-<timestamp>.json`` and ``.md``; returns both paths."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "-".join(p for p in (name, tag, time.strftime("%Y%m%d-%H%M%S")) if p)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, md_path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def environment_markdown(env: Mapping[str, Any]) -> str:
    """One line per environment fact, for the head of a Markdown result."""
    return "\n".join(f"- {k}: {v}" for k, v in env.items())
