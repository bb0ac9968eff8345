"""``unetsegment batch``: every image (or DICOM series folder) in a folder, with a summary CSV."""

from __future__ import annotations

import argparse
import csv
import fnmatch
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..progress import ProgressReporter
from . import extras
from .common import (
    EXIT_CANCELLED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    LABELMAP_EXTENSIONS,
    Cancellation,
    CliError,
    SegmentJob,
    build_predictor,
    check_output,
    check_runtime_options,
    check_writable_folder,
    classify_error,
    positive_int,
    predict_and_write,
    resolve_model,
    structure_names,
)
from .series import add_input_options, read_case, series_folder

#: Input file types ``batch`` picks up (a sub-folder is a case if it holds a DICOM series).
INPUT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
BATCH_FORMATS = {"nrrd": "_segmentation.nrrd", "nii.gz": "_segmentation.nii.gz", "seg.nrrd": ".seg.nrrd"}


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("batch", parents=parents, help="segment every image in a folder", **fmt)
    p.add_argument(
        "input_dir",
        help="folder of image files and/or DICOM folders; each DICOM tree gives one case per study (its axial T2)",
    )
    p.add_argument("-o", "--output-dir", required=True, help="folder for the labelmaps and summary.csv")
    p.add_argument("--pattern", default="*", help="only names matching this glob (e.g. '*_t2w.nii.gz')")
    p.add_argument("--csv", metavar="PATH", help="summary CSV (default: OUTPUT_DIR/summary.csv)")
    p.add_argument("--format", default="nrrd", choices=sorted(BATCH_FORMATS), help="output file type (default: nrrd)")
    extras.add_batch_arguments(p)
    add_input_options(p)
    d = p.add_argument_group(
        "distributed (Dask; pip install 'unetsegment[dask]')",
        "Cases go to Dask workers, each of which builds its predictor once. A rerun skips the cases "
        "whose input and labelmap still match the record of an earlier run (--overwrite redoes them).",
    ).add_mutually_exclusive_group()
    d.add_argument("--workers", type=positive_int, metavar="N", help="a local cluster of N worker processes")
    d.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    p.set_defaults(func=run)


class _Prefixed:
    """A reporter whose warnings start with the case name."""

    def __init__(self, reporter: ProgressReporter, name: str) -> None:
        self._reporter, self._name = reporter, name

    def warning(self, message: str) -> None:
        self._reporter.warning(f"{self._name}: {message}")


def _input_extension(name: str) -> Optional[str]:
    low = name.lower()
    return next((e for e in INPUT_EXTENSIONS if low.endswith(e) and len(low) > len(e)), None)


def _holds_dicom(folder: Path) -> bool:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    for d in [folder] + sorted(p for p in folder.rglob("*") if p.is_dir()):
        if reader.GetGDCMSeriesIDs(str(d)):
            return True
    return False


def find_cases(folder: Path, pattern: str = "*", skip: Sequence[Path] = ()) -> List[Tuple[str, Path]]:
    """``(case name, path)`` of every image file and DICOM series folder directly in ``folder``.

    Files: NIfTI, NRRD, MetaImage; ``*.seg.nrrd`` and ``*_segmentation.*``
    (our own outputs) are skipped. Sub-folders count if they hold a DICOM
    series (at any depth). ``pattern`` (a glob, e.g. ``*_t2w.nii.gz``)
    filters the names. Names are made unique with a numeric suffix.
    """
    skip_resolved = {p.resolve() for p in skip}
    cases: List[Tuple[str, Path]] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not fnmatch.fnmatch(p.name, pattern) or p.resolve() in skip_resolved:
            continue
        if p.is_file():
            ext = _input_extension(p.name)
            if ext is None or p.name.lower().endswith(".seg.nrrd"):
                continue
            name = p.name[: -len(ext)]
            if name.endswith("_segmentation"):
                continue
            cases.append((name, p))
        elif p.is_dir() and _holds_dicom(p):
            cases.append((p.name, p))
    seen: Dict[str, int] = {}
    unique = []
    for name, p in cases:
        seen[name] = seen.get(name, 0) + 1
        unique.append((name if seen[name] == 1 else f"{name}_{seen[name]}", p))
    return unique


def study_cases(name: str, folder: Path) -> List[Tuple[str, Path, Optional[str], Optional[Exception]]]:
    """One case per study of the DICOM tree ``folder``: ``(name, folder, series uid, error)``.

    The series is the study's axial T2 (``dicom.choice``), refused when it shares
    its folder with a look-alike series (as ``segment`` refuses it). A study whose
    choice is not clear gets ``error`` (exit 2, naming the series to choose from).
    With several studies the names get ``_<patient>_<date>``.
    """
    from ..dicom import NoDicomError, SeriesIntegrityError, index_folder
    from ..dicom.choice import study_choices
    from ..dicom.read import check_folder_not_mixed

    try:
        index = index_folder(folder)
    except NoDicomError as e:
        return [(name, folder, None, e)]
    choices = study_choices(index)
    studies = index.studies()
    out: List[Tuple[str, Path, Optional[str], Optional[Exception]]] = []
    for key, choice, error in choices:
        case = name
        if len(choices) > 1:
            first = studies[key][0]
            case = f"{name}_{key[0] or 'patient'}_{first.study_date or first.number}"
        if choice is None:
            out.append((case, folder, None, CliError(EXIT_USAGE, str(error))))
            continue
        try:
            check_folder_not_mixed(index, choice.series)
        except SeriesIntegrityError as e:
            out.append((case, folder, None, e))
            continue
        out.append((case, folder, choice.series.uid, None))
    return out


def _is_dicom_tree(folder: Path) -> bool:
    """A folder that is itself a DICOM tree: a DICOMDIR, or DICOM files directly in it."""
    if (folder / "DICOMDIR").is_file():
        return True
    from ..dicom.index import _read_header

    files = [p for p in sorted(folder.iterdir())[:20] if p.is_file() and _input_extension(p.name) is None]
    return any(_read_header(p)[0] is not None for p in files[:5])


def write_csv(path: Path, rows: List[Dict[str, Any]], columns: List[str]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as e:
        raise CliError(EXIT_OUTPUT, f"cannot write the summary {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def output_for(out_dir: Path, name: str, fmt: str) -> Path:
    """The labelmap of case ``name`` in ``out_dir`` (``fmt``: a key of :data:`BATCH_FORMATS`)."""
    return out_dir / f"{name}{BATCH_FORMATS[fmt]}"


def case_row(name: str, path: Path, output: Path) -> Dict[str, Any]:
    """A summary row for one case, marked failed until :func:`segment_case` succeeds."""
    return {"case": name, "input": str(path), "output": str(output), "status": "failed", "exit_code": ""}


def segment_case(
    row: Dict[str, Any],
    path: Path,
    output: Path,
    args: argparse.Namespace,
    psa: Optional[float],
    predictor,
    reporter: ProgressReporter,
    cancel: Cancellation,
    t0: float,
    series_uid: Optional[str] = None,
    choice_problem: Optional[BaseException] = None,
) -> Dict[str, Any]:
    """Read, check, segment and write one case and its extra outputs (all-or-nothing).

    ``args``: ``overwrite``, ``channel`` and the extra outputs' flags (``extras.BATCH_SUFFIXES``).
    ``series_uid``: the study's series (``study_cases``); ``choice_problem``: why it has none.
    Fills ``row`` and returns the result; raises on failure (``classify_error`` turns the
    exception into the row's exit code and message).
    """
    name = row["case"]
    job = SegmentJob(path, check_output(output, args.overwrite, LABELMAP_EXTENSIONS, "output", [path]))
    job.extras = _case_extras(args, name, path, output.parent, psa)
    reporter("loading", 0.0, f"{name}: reading")
    if choice_problem is not None:
        raise choice_problem
    got = read_case(path, args, _Prefixed(reporter, name), series_uid=series_uid)
    image, warnings = got.image, got.warnings
    row["series"] = got.chosen or ""
    job.dicom_source = series_folder(got)
    result = predict_and_write(job, image, warnings, predictor, reporter, cancel, t0)
    row.update(status="ok", exit_code=EXIT_OK, error="", warnings="; ".join(warnings))
    row.update({f"{k}_ml": v for k, v in result["volumes_ml"].items()})
    row.update(_findings_columns(result))
    return result


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    check_runtime_options(args)
    in_dir = Path(args.input_dir).expanduser().absolute()
    if not in_dir.is_dir():
        raise CliError(EXIT_INPUT, f"input folder not found: {in_dir}")
    out_dir = Path(args.output_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(EXIT_OUTPUT, f"the output folder {out_dir} is a file")
    check_writable_folder(out_dir)
    csv_path = check_output(Path(args.csv) if args.csv else out_dir / "summary.csv", True, (".csv",), "summary")
    found = [(in_dir.name, in_dir)] if _is_dicom_tree(in_dir) else find_cases(in_dir, args.pattern, skip=[out_dir])
    cases: List[Tuple[str, Path, Optional[str], Optional[Exception]]] = []
    for name, path in found:
        cases += study_cases(name, path) if path.is_dir() else [(name, path, None, None)]
    if not cases:
        raise CliError(
            EXIT_INPUT,
            f"no images (NIfTI, NRRD, MetaImage or DICOM series folders) matching {args.pattern!r} in {in_dir}",
        )
    psa_by_case = _read_clinical(args.clinical, [case[0] for case in cases], reporter)
    if args.report:
        extras.require("matplotlib", "report", "--report")
    if args.dicom_seg:
        extras.require("highdicom", "dicom", "--dicom-seg")
    out_dir.mkdir(parents=True, exist_ok=True)

    package = resolve_model(args.model, args.offline, reporter, cancel)
    structures = [lab.structure.name for lab in package.info.labels]
    columns = (
        ["case", "input", "series", "status", "exit_code", "error", "output"]
        + [f"{s}_ml" for s in structures]
        + ["gland_ml", "psa_ng_ml", "psa_density"]
        + (["transition_zone_psa_density"] if "transition_zone" in structures else [])
        + ["confidence", "n_flags", "flag_codes", "flags", "seconds", "warnings"]
        + [key for key in extras.BATCH_SUFFIXES if getattr(args, key)]
    )
    if getattr(args, "workers", None) or getattr(args, "scheduler", None):
        from .batch_dask import run_distributed

        return run_distributed(args, reporter, cancel, cases, out_dir, csv_path, package, columns, psa_by_case)
    predictor = build_predictor(package, args)
    index_rows: List[Dict[str, Any]] = []
    rows: List[Dict[str, Any]] = []
    first_failure = EXIT_OK
    print(f"Segmenting {len(cases)} case(s) from {in_dir} with {package.info.id} {package.info.version}")
    for i, (name, path, series_uid, choice_problem) in enumerate(cases):
        reporter.begin_span(i / len(cases), (i + 1) / len(cases))
        t0 = time.perf_counter()
        output = output_for(out_dir, name, args.format)
        row = case_row(name, path, output)
        try:
            result = segment_case(
                row,
                path,
                output,
                args,
                psa_by_case.get(name),
                predictor,
                reporter,
                cancel,
                t0,
                series_uid,
                choice_problem,
            )
            index_rows.append(index_row(name, result))
            vols = ", ".join(
                f"{structure_names(predictor).get(k, k)} {v:.1f} mL" for k, v in result["volumes_ml"].items()
            )
            print(f"[{i + 1}/{len(cases)}] {name}: ok, {vols}")
        except BaseException as e:  # one failing case is reported and the batch goes on
            code, message = classify_error(e)
            row.update(exit_code=code, error=message, status="cancelled" if code == EXIT_CANCELLED else "failed")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if code == EXIT_CANCELLED:
                write_csv(csv_path, rows, columns)
                raise
            first_failure = first_failure or code
            index_rows.append({"case": name, "status": row["status"], "error": message})
            print(f"[{i + 1}/{len(cases)}] {name}: FAILED ({message})")
            write_csv(csv_path, rows, columns)
            continue
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        write_csv(csv_path, rows, columns)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} case(s) segmented into {out_dir}; summary: {csv_path}")
    if args.report:
        write_index(index_rows, out_dir, in_dir)
    if failed:
        reporter.warning(f"{failed} of {len(rows)} case(s) failed; see {csv_path}")
    return first_failure


def write_index(index_rows: List[Dict[str, Any]], out_dir: Path, in_dir: Path) -> None:
    """``--report``'s index page of the cases' pictures."""
    from ..report import write_index_html

    index = write_index_html(index_rows, out_dir / "index.html", title=f"UNetSegment: {in_dir.name}")
    print(f"Index page of the pictures: {index}")


def _read_clinical(path: Optional[str], names: Sequence[str], reporter: ProgressReporter) -> Dict[str, float]:
    """PSA per case from ``--clinical``; a bad file or value stops the batch before any case (exit 2)."""
    if not path:
        return {}
    from ..psa import PSAError, read_psa_csv

    try:
        psa = read_psa_csv(Path(path).expanduser())
    except PSAError as e:
        raise CliError(EXIT_USAGE, str(e)) from None
    unknown = sorted(set(psa) - set(names))
    if unknown:
        reporter.warning(f"--clinical names case(s) not in the batch: {', '.join(unknown[:5])}")
    return psa


def _case_extras(args: argparse.Namespace, name: str, path: Path, out_dir: Path, psa: Optional[float]):
    """The extra outputs of one case: a DICOM SEG only for DICOM series folders."""
    outputs = extras.Extras(psa=psa)
    for key, suffix in extras.BATCH_SUFFIXES.items():
        if getattr(args, key) and (key != "dicom_seg" or path.is_dir()):
            allowed = (suffix[suffix.index(".") :],)
            setattr(outputs, key, check_output(out_dir / f"{name}{suffix}", args.overwrite, allowed, key, [path]))
    return outputs


def _findings_columns(result: Dict[str, Any]) -> Dict[str, Any]:
    flags = result.get("flags") or []
    psa = result.get("psa") or {}
    cols: Dict[str, Any] = {
        "gland_ml": round(sum(result["volumes_ml"].values()), 3),
        "psa_ng_ml": psa.get("psa_ng_ml", ""),
        "psa_density": psa.get("psa_density", ""),
        "transition_zone_psa_density": psa.get("tz_psa_density", ""),
        "confidence": result.get("confidence", ""),
        "n_flags": len(flags),
        "flag_codes": " ".join(f["code"] for f in flags),
        "flags": " ".join(f["message"] for f in flags),
    }
    cols.update({key: result.get(key, "") for key in extras.BATCH_SUFFIXES})
    return cols


def index_row(name: str, result: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "case": name,
        "status": "ok",
        "report": result.get("report"),
        "volumes_ml": result["volumes_ml"],
        "psa_density": (result.get("psa") or {}).get("psa_density"),
        "confidence": result.get("confidence"),
        "flags": result.get("flags") or [],
    }
