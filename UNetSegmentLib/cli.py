"""The ``unetsegment`` command line: segment, batch, demo, models, info.

    unetsegment segment t2.nrrd -o t2_prostate.nrrd --seg-nrrd t2_prostate.seg.nrrd
    unetsegment batch scans/ -o results/ --csv results/summary.csv
    unetsegment demo
    unetsegment models list

``python -m UNetSegmentLib ...`` is the same program (the Slicer module runs
``PythonSlicer -m UNetSegmentLib segment ... --progress machine``). Errors
are one line on stderr and a documented exit code (``EXIT_*`` below), never
a traceback; outputs appear whole or not at all. Heavy imports (torch) happen
only in the commands that need them, so ``--help`` and ``--version`` are fast.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .progress import PROGRESS_MODES, ProgressReporter, format_error_line, format_warning_line

EXIT_OK = 0
EXIT_INTERNAL = 1  #: unexpected internal error (rerun with --debug for the traceback)
EXIT_USAGE = 2  #: bad command line (or --device cuda without a GPU)
EXIT_INPUT = 3  #: input missing or unreadable
EXIT_INVALID_IMAGE = 4  #: input readable but not a segmentable 3D scan (see validation.py)
EXIT_MODEL = 5  #: model not found, fails its checksum, or an invalid package
EXIT_DOWNLOAD = 6  #: model download failed
EXIT_OUTPUT = 7  #: output cannot be written (folder, extension, exists without --overwrite)
EXIT_CANCELLED = 130  #: interrupted (Ctrl-C, SIGTERM) or cancelled; no partial output is left

EPILOG = f"""\
exit codes:
  {EXIT_OK}    success
  {EXIT_INTERNAL}    unexpected internal error (rerun with --debug to see the traceback)
  {EXIT_USAGE}    bad command line, or --device cuda without a GPU
  {EXIT_INPUT}    input missing or unreadable
  {EXIT_INVALID_IMAGE}    invalid image: 2D, 4D or multi-component without --channel, empty,
       constant, NaN/Inf values, voxel spacing <= 0, < 0.05 mm or > 20 mm,
       fewer than 3 slices, or less than 30 mm in-plane
  {EXIT_MODEL}    model not found, fails its checksum, or not a valid model package
  {EXIT_DOWNLOAD}    model download failed
  {EXIT_OUTPUT}    output cannot be written (folder not writable, unknown extension,
       file exists without --overwrite)
  {EXIT_CANCELLED}  interrupted (Ctrl-C / SIGTERM); no partial output is left
  batch: 0 if every case succeeded, else the exit code of the first failed case.
A CT (or an image with Hounsfield-like values) is segmented with a WARNING.

environment:
  UNETSEGMENT_HOME       model cache folder (default: ~/.cache/unetsegment)
  UNETSEGMENT_CATALOGUE  model catalogue (path or URL) instead of the built-in one
"""

LABELMAP_EXTENSIONS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha")
#: Input file types ``batch`` picks up (a sub-folder is a case if it holds a DICOM series).
INPUT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
BATCH_FORMATS = {"nrrd": "_segmentation.nrrd", "nii.gz": "_segmentation.nii.gz", "seg.nrrd": ".seg.nrrd"}
#: ``inference.QUALITY_SETTINGS``'s keys, here so that parsing the command line does not import torch.
QUALITIES = ("fast", "standard", "best")
DEMO_DIR = "unetsegment-demo"
DEMO_GLAND_ML = 30.0


class CliError(Exception):
    """A failure with its exit code and a one-line message for the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UsageError(Exception):
    """argparse rejected the command line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise UsageError(message)


# -- cancellation ------------------------------------------------------------------------


class Cancellation:
    """SIGINT/SIGTERM set a flag that the pipeline polls (a second signal interrupts at once)."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Dict[int, Any] = {}

    def is_set(self) -> bool:
        return self.flag

    def check(self) -> None:
        """Raise ``inference.CancelledError`` once a signal has arrived."""
        if self.flag:
            from .inference import CancelledError

            raise CancelledError("cancelled")

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGINT", "SIGTERM"):
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# -- outputs -------------------------------------------------------------------------------


def _matching_extension(path: Path, allowed: Sequence[str]) -> Optional[str]:
    name = path.name.lower()
    return next((e for e in allowed if name.endswith(e) and len(name) > len(e)), None)


def check_writable_folder(folder: Path) -> None:
    """Raise ``CliError(EXIT_OUTPUT)`` unless files can be created in ``folder`` (created later if missing)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(EXIT_OUTPUT, f"cannot write to {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".unetsegment-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CliError(EXIT_OUTPUT, f"cannot write to the folder {existing} ({e.strerror or e})") from None


def check_output(path: Path, overwrite: bool, allowed: Sequence[str], what: str, inputs: Sequence[Path] = ()) -> Path:
    """An output path, made absolute, checked before any work: extension, not the input, overwrite, writable."""
    p = Path(path).expanduser().absolute()
    if _matching_extension(p, allowed) is None:
        raise CliError(EXIT_OUTPUT, f"the {what} {p} must end in {' or '.join(allowed)}")
    if p.is_dir():
        raise CliError(EXIT_OUTPUT, f"the {what} {p} is a folder; give a file name")
    if p.exists():
        for other in inputs:
            if other.exists() and os.path.samefile(p, other):
                raise CliError(EXIT_OUTPUT, f"the {what} {p} is the input; choose another name")
        if not overwrite:
            raise CliError(EXIT_OUTPUT, f"the {what} {p} already exists; use --overwrite to replace it")
    check_writable_folder(p.parent)
    return p


class StagedWrites:
    """Outputs written under hidden temporary names and renamed into place together, so a failure or
    a cancellation leaves none of them (and no partial file)."""

    def __init__(self) -> None:
        self._staged: List[Tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        ext = _matching_extension(final, LABELMAP_EXTENSIONS + (".json",)) or ""
        stem = final.name[: len(final.name) - len(ext)]
        tmp = final.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.unetsegment-tmp{ext}")
        self._staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            try:
                tmp.unlink()
            except OSError:
                pass
        self._staged.clear()


@dataclass
class SegmentJob:
    """One image to segment and where its results go (absolute paths; None = not written)."""

    input: Path
    labelmap: Path
    seg_nrrd: Optional[Path] = None
    volumes_json: Optional[Path] = None


# -- the pipeline ------------------------------------------------------------------------------


def resolve_model(spec: Optional[str], offline: bool, reporter: ProgressReporter, cancel: Cancellation):
    """The verified model package for ``--model`` (None = the default model); may download it."""
    from .store import ModelStore

    reporter("loading", 0.5, "model")
    package = ModelStore().resolve(
        spec, allow_download=not offline, progress=reporter.bytes_callback("downloading"), should_cancel=cancel.is_set
    )
    reporter("loading", 1.0, f"model {package.info.id} {package.info.version}")
    return package


def build_predictor(package, args: argparse.Namespace):
    """A ``Predictor`` for the command's device, quality, precision and thread options."""
    from .inference import Predictor, resolve_device

    try:
        resolve_device(args.device)
    except RuntimeError as e:
        raise CliError(EXIT_USAGE, str(e)) from None
    if args.threads:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(args.threads))
    return Predictor(package, device=args.device, quality=args.quality, precision=args.precision, threads=args.threads)


def predict_and_write(
    job: SegmentJob,
    image,
    warnings: List[str],
    predictor,
    reporter: ProgressReporter,
    cancel: Cancellation,
    t_start: float,
    extra_images: Sequence[Tuple[Any, Path]] = (),
) -> Dict[str, Any]:
    """Segment ``image`` and write the job's outputs all-or-nothing; returns the result record.

    ``extra_images``: ``(sitk.Image, path)`` pairs written and committed with the
    outputs (the demo's sample scan), so they too appear only on success.
    """
    from . import io
    from .segfile import write_seg_nrrd

    prediction = predictor.predict(image, progress=reporter, should_cancel=cancel.is_set)
    cancel.check()
    reporter("writing", 0.0, job.labelmap.name)
    labels = predictor.info.labels
    staged = StagedWrites()
    try:
        writes = [(prediction.labelmap, p) for p in (job.labelmap, job.seg_nrrd) if p is not None] + list(extra_images)
        for image_out, path in writes:
            try:
                if path.name.lower().endswith(".seg.nrrd"):
                    write_seg_nrrd(image_out, staged.temp_for(path), labels)
                else:
                    io.write_image(image_out, staged.temp_for(path))
            except (OSError, RuntimeError) as e:
                raise CliError(EXIT_OUTPUT, f"cannot write {path}: {_one_line(e)}") from None
        result = {
            "input": str(job.input),
            "output": str(job.labelmap),
            "seg_nrrd": str(job.seg_nrrd) if job.seg_nrrd else None,
            "model": {"id": predictor.info.id, "version": predictor.info.version},
            "volumes_ml": {k: round(v, 3) for k, v in prediction.volumes_ml.items()},
            "device": prediction.device,
            "quality": predictor.quality,
            "seconds": round(time.perf_counter() - t_start, 2),
            "warnings": list(warnings),
        }
        if job.volumes_json is not None:
            try:
                tmp = staged.temp_for(job.volumes_json)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            except OSError as e:
                raise CliError(EXIT_OUTPUT, f"cannot write {job.volumes_json}: {e.strerror or e}") from None
        cancel.check()
        staged.commit()
    finally:
        staged.discard()
    reporter("writing", 1.0, "done")
    return result


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


def _structure_names(predictor) -> Dict[str, str]:
    return {lab.structure.name: lab.structure.display_name for lab in predictor.info.labels}


def _print_volumes(result: Dict[str, Any], names: Dict[str, str]) -> None:
    for key, ml in result["volumes_ml"].items():
        print(f"  {names.get(key, key)}: {ml:.1f} mL")


def _print_written(job: SegmentJob) -> None:
    print(f"Labelmap written to      {job.labelmap}")
    if job.seg_nrrd is not None:
        print(f"Segmentation written to  {job.seg_nrrd}")
    if job.volumes_json is not None:
        print(f"Volumes written to       {job.volumes_json}")
    seg = job.seg_nrrd or (job.labelmap if job.labelmap.name.lower().endswith(".seg.nrrd") else None)
    if seg is not None:
        print(f"Open in 3D Slicer: drag {job.input} and {seg} onto the Slicer window (or File > Add Data).")
    else:
        print(
            f"Open in 3D Slicer: File > Add Data, add {job.input} and {job.labelmap} and tick 'LabelMap' for the second;"
            f" or in ITK-SNAP: itksnap -g {job.input} -s {job.labelmap}. Add --seg-nrrd PATH for named, coloured segments."
        )


# -- commands ------------------------------------------------------------------------------


def cmd_segment(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from .validation import read_input

    t_start = time.perf_counter()
    source = Path(args.input).expanduser().absolute()
    job = SegmentJob(source, check_output(Path(args.output), args.overwrite, LABELMAP_EXTENSIONS, "output", [source]))
    if args.seg_nrrd:
        job.seg_nrrd = check_output(Path(args.seg_nrrd), args.overwrite, (".seg.nrrd",), "segmentation file", [source])
    if args.volumes_json:
        job.volumes_json = check_output(Path(args.volumes_json), args.overwrite, (".json",), "volumes file", [source])
    finals = [p for p in (job.labelmap, job.seg_nrrd, job.volumes_json) if p is not None]
    if len(set(finals)) != len(finals):
        raise CliError(EXIT_OUTPUT, "the output, --seg-nrrd and --volumes-json must be different files")

    reporter("loading", 0.0, f"reading {source.name}")
    image, warnings = read_input(source, args.channel)
    for w in warnings:
        reporter.warning(w)
    cancel.check()
    package = resolve_model(args.model, args.offline, reporter, cancel)
    predictor = build_predictor(package, args)
    result = predict_and_write(job, image, warnings, predictor, reporter, cancel, t_start)
    reporter.result(result)
    print(
        f"Segmented {source} with {package.info.id} {package.info.version} on {result['device']} in {result['seconds']:.1f} s"
    )
    _print_volumes(result, _structure_names(predictor))
    _print_written(job)
    return EXIT_OK


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


def _write_csv(path: Path, rows: List[Dict[str, Any]], columns: List[str]) -> None:
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


def cmd_batch(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from .validation import read_input

    in_dir = Path(args.input_dir).expanduser().absolute()
    if not in_dir.is_dir():
        raise CliError(EXIT_INPUT, f"input folder not found: {in_dir}")
    out_dir = Path(args.output_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(EXIT_OUTPUT, f"the output folder {out_dir} is a file")
    check_writable_folder(out_dir)
    csv_path = check_output(Path(args.csv) if args.csv else out_dir / "summary.csv", True, (".csv",), "summary")
    cases = find_cases(in_dir, args.pattern, skip=[out_dir])
    if not cases:
        raise CliError(
            EXIT_INPUT,
            f"no images (NIfTI, NRRD, MetaImage or DICOM series folders) matching {args.pattern!r} in {in_dir}",
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    package = resolve_model(args.model, args.offline, reporter, cancel)
    predictor = build_predictor(package, args)
    structures = [lab.structure.name for lab in package.info.labels]
    columns = (
        ["case", "input", "status", "exit_code", "error", "output"]
        + [f"{s}_ml" for s in structures]
        + ["seconds", "warnings"]
    )
    rows: List[Dict[str, Any]] = []
    first_failure = EXIT_OK
    print(f"Segmenting {len(cases)} case(s) from {in_dir} with {package.info.id} {package.info.version}")
    for i, (name, path) in enumerate(cases):
        reporter.begin_span(i / len(cases), (i + 1) / len(cases))
        t0 = time.perf_counter()
        output = out_dir / f"{name}{BATCH_FORMATS[args.format]}"
        row: Dict[str, Any] = {
            "case": name,
            "input": str(path),
            "output": str(output),
            "status": "failed",
            "exit_code": "",
        }
        try:
            job = SegmentJob(path, check_output(output, args.overwrite, LABELMAP_EXTENSIONS, "output", [path]))
            reporter("loading", 0.0, f"{name}: reading")
            image, warnings = read_input(path, args.channel)
            for w in warnings:
                reporter.warning(f"{name}: {w}")
            result = predict_and_write(job, image, warnings, predictor, reporter, cancel, t0)
            row.update(status="ok", exit_code=EXIT_OK, error="", warnings="; ".join(warnings))
            row.update({f"{k}_ml": v for k, v in result["volumes_ml"].items()})
            vols = ", ".join(
                f"{_structure_names(predictor).get(k, k)} {v:.1f} mL" for k, v in result["volumes_ml"].items()
            )
            print(f"[{i + 1}/{len(cases)}] {name}: ok, {vols}")
        except BaseException as e:  # one failing case is reported and the batch goes on
            code, message = classify_error(e)
            row.update(exit_code=code, error=message, status="cancelled" if code == EXIT_CANCELLED else "failed")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if code == EXIT_CANCELLED:
                _write_csv(csv_path, rows, columns)
                raise
            first_failure = first_failure or code
            print(f"[{i + 1}/{len(cases)}] {name}: FAILED ({message})")
            _write_csv(csv_path, rows, columns)
            continue
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        _write_csv(csv_path, rows, columns)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} case(s) segmented into {out_dir}; summary: {csv_path}")
    if failed:
        reporter.warning(f"{failed} of {len(rows)} case(s) failed; see {csv_path}")
    return first_failure


def cmd_demo(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    import numpy as np
    import SimpleITK as sitk

    from . import io
    from .synthetic import make_case

    t_start = time.perf_counter()
    out_dir = Path(args.output_dir).expanduser().absolute()
    check_writable_folder(out_dir)
    reporter("loading", 0.0, "making a synthetic T2 sample")
    # a normal-sized gland (30 mL); the default model under-segments large synthetic glands (see its model card)
    image, truth = make_case(seed=0, gland_ml=DEMO_GLAND_ML)
    sample = out_dir / "sample_t2.nrrd"
    reference = out_dir / "sample_t2_reference.nrrd"
    job = SegmentJob(
        sample,
        out_dir / "sample_t2_segmentation.nrrd",
        out_dir / "sample_t2.seg.nrrd",
        out_dir / "sample_t2_volumes.json",
    )
    package = resolve_model(args.model, args.offline, reporter, cancel)
    predictor = build_predictor(package, args)
    result = predict_and_write(
        job, image, [], predictor, reporter, cancel, t_start, extra_images=[(image, sample), (truth, reference)]
    )
    reporter.result(result)
    pred = sitk.GetArrayFromImage(io.read_image(job.labelmap)) > 0  # a copy: the image is a temporary
    gland = sitk.GetArrayViewFromImage(truth) > 0
    dice = 2.0 * np.count_nonzero(pred & gland) / max(np.count_nonzero(pred) + np.count_nonzero(gland), 1)
    print(
        f"Demo: segmented a synthetic prostate T2 scan with {package.info.id} {package.info.version} in {result['seconds']:.1f} s"
    )
    _print_volumes(result, _structure_names(predictor))
    print(f"  Dice against the sample's known gland ({reference.name}): {dice:.2f}")
    print(f"Sample scan:              {sample}")
    _print_written(job)
    print("To segment your own T2-weighted scan (NRRD, NIfTI or a DICOM folder):")
    print("  unetsegment segment /path/to/t2.nii.gz -o t2_prostate.nrrd --seg-nrrd t2_prostate.seg.nrrd")
    return EXIT_OK


def _store():
    from .store import ModelStore

    return ModelStore()


def _describe(pkg, store) -> str:
    where = "bundled" if store.bundled_dir in pkg.path.parents else "cache"
    return f"  {pkg.info.id:<28} {pkg.info.version:<10} {', '.join(pkg.info.structures):<36} [{where}] {pkg.path}"


def cmd_models(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from .model_package import ModelPackageError
    from .store import parse_spec

    store = _store()
    action = args.models_command
    if action == "list":
        installed = store.installed()
        print(f"Installed models (cache {store.models_dir}):")
        for pkg in installed:
            print(_describe(pkg, store))
        if not installed:
            print("  none")
        have = {(p.info.id, p.info.version) for p in installed}
        try:
            available = [e for e in store.catalogue if (e.id, e.version) not in have]
        except ModelPackageError as e:
            print(f"The model catalogue cannot be read: {e}")
            return EXIT_OK
        print("Available to download (unetsegment models download ID):")
        for e in available:
            size = f"{e.size / 1e6:.0f} MB" if e.size else "size unknown"
            note = "" if e.sha256 else " (not published yet)"
            print(f"  {e.id:<28} {e.version:<10} {', '.join(e.structures):<36} {size}{note}")
        if not available:
            print("  none")
        return EXIT_OK
    if action == "path":
        if args.id:
            model_id, version = parse_spec(args.id)
            pkg = store.find(model_id, version)
            if pkg is None:
                from .store import ModelNotFoundError

                raise ModelNotFoundError(f"model {args.id} is not installed")
            print(pkg.path)
        else:
            print(store.root)
        return EXIT_OK
    if action == "download":
        model_id, version = parse_spec(args.id)
        pkg = store.download(
            model_id, version, progress=reporter.bytes_callback("downloading"), should_cancel=cancel.is_set
        )
        reporter.end_line()
        print(f"Installed {pkg.info.id} {pkg.info.version} in {pkg.path}")
        return EXIT_OK
    if action == "import":
        pkg = store.import_zip(args.zip)
        print(f"Installed {pkg.info.id} {pkg.info.version} in {pkg.path}")
        return EXIT_OK
    if action == "verify":
        if args.id:
            targets = [parse_spec(args.id)]
        else:
            targets = [(p.info.id, p.info.version) for p in store.installed()]
            if not targets:
                print("No models installed.")
        code = EXIT_OK
        for model_id, version in targets:
            try:
                pkg = store.verify(model_id, version)
                print(f"ok      {pkg.info.id} {pkg.info.version} ({pkg.path})")
            except ModelPackageError as e:
                print(f"FAILED  {model_id} {version or ''}: {e}")
                code = EXIT_MODEL
        return code
    if action == "remove":
        model_id, version = parse_spec(args.id)
        store.remove(model_id, version)
        print(f"Removed {args.id} from {store.models_dir}")
        return EXIT_OK
    raise CliError(EXIT_USAGE, f"unknown models command {action!r}")


def cmd_info(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import SimpleITK as sitk
    import torch

    from .inference import cpu_supports_bf16, resolve_device
    from .store import DEFAULT_MODEL_ID

    try:  # only the training toolkit needs MONAI; read its version without importing it (slow)
        monai_version = version("monai")
    except PackageNotFoundError:
        monai_version = "not installed (needed for training only)"
    print(f"unetsegment {__version__}")
    print(f"python      {platform.python_version()} ({platform.platform()})")
    print(
        f"torch       {torch.__version__}, SimpleITK {sitk.Version.VersionString()}, numpy {numpy.__version__}, monai {monai_version}"
    )
    device = resolve_device("auto")
    if device.type == "cuda":
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device      cuda ({names}); bfloat16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        print("device      cpu (no CUDA GPU visible to PyTorch)")
    print(f"threads     {torch.get_num_threads()} PyTorch threads, {os.cpu_count()} CPU cores")
    print(f"bfloat16    CPU native: {'yes' if cpu_supports_bf16() else 'no'}")
    store = _store()
    print(f"model cache {store.root}")
    default = store.find(DEFAULT_MODEL_ID)
    print(f"default     {DEFAULT_MODEL_ID} ({f'installed {default.info.version}' if default else 'not installed'})")
    return EXIT_OK


# -- errors --------------------------------------------------------------------------------


def classify_error(e: BaseException) -> Tuple[int, str]:
    """An exception -> (exit code, one-line message)."""
    from .io import ImageReadError
    from .model_package import ModelPackageError
    from .store import DownloadCancelled, DownloadError
    from .validation import InvalidImageError

    inference = sys.modules.get("UNetSegmentLib.inference")
    if isinstance(e, CliError):
        return e.code, e.message
    if isinstance(e, (KeyboardInterrupt, DownloadCancelled)) or (
        inference is not None and isinstance(e, inference.CancelledError)
    ):
        return EXIT_CANCELLED, "cancelled; no output was written"
    if isinstance(e, ImageReadError):
        return EXIT_INPUT, _one_line(e)
    if isinstance(e, InvalidImageError):
        return EXIT_INVALID_IMAGE, f"invalid image: {_one_line(e)}"
    if isinstance(e, DownloadError):
        return EXIT_DOWNLOAD, f"download failed: {_one_line(e)}"
    if isinstance(e, ModelPackageError):
        return EXIT_MODEL, f"model: {_one_line(e)}"
    if isinstance(e, MemoryError):
        return (
            EXIT_INTERNAL,
            "not enough memory for this image; try --device cpu, --quality fast or a machine with more memory",
        )
    return (
        EXIT_INTERNAL,
        f"internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug to see the traceback)",
    )


class _StderrHandler(logging.Handler):
    """Library log records as ``WARNING: ...`` lines (or protocol lines) on the current ``sys.stderr``."""

    def __init__(self, machine: bool) -> None:
        super().__init__()
        self.machine = machine

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if self.machine and record.levelno >= logging.WARNING:
                line = format_warning_line(msg)
            else:
                line = f"{record.levelname}: {msg}"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


# -- the parser ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return v


def _channel(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logging"
    )
    common.add_argument(
        "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="show informational logging"
    )

    run = argparse.ArgumentParser(add_help=False)
    g = run.add_argument_group("model and device")
    g.add_argument("--model", help="ID, ID@VERSION, a model package folder or .zip (default: the default model)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto (GPU if available)")
    g.add_argument(
        "--quality",
        default="standard",
        choices=QUALITIES,
        help="fast: one pass, less window overlap; standard: averaged with the mirror images the model was trained on "
        "(left-right for the default model); best: as standard with denser windows (slowest)",
    )
    g.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    g.add_argument("--threads", type=_positive_int, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("--offline", action="store_true", help="never download a model")
    g.add_argument("--channel", type=_channel, help="volume of a 4D or component of a multi-channel image (0 = first)")
    g.add_argument(
        "--progress", default="human", choices=PROGRESS_MODES, help="progress on stderr (machine: JSON lines)"
    )
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")

    parser = _Parser(
        prog="unetsegment",
        description="Prostate (whole gland or zones) segmentation of T2-weighted MRI with a 3D U-Net.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"unetsegment {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--verbose", "-v", action="store_true", help="show informational logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": EPILOG}

    p = sub.add_parser("segment", parents=[common, run], help="segment one image", **fmt)
    p.add_argument("input", help="image file (NRRD, NIfTI, MetaImage) or DICOM folder")
    p.add_argument("-o", "--output", required=True, help="labelmap: .nrrd, .nii.gz, .nii, .mha or .seg.nrrd (Slicer)")
    p.add_argument(
        "--seg-nrrd", metavar="PATH", help="also write a 3D Slicer segmentation (.seg.nrrd) with names and colours"
    )
    p.add_argument("--volumes-json", metavar="PATH", help="write the structure volumes (mL) and run details as JSON")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("batch", parents=[common, run], help="segment every image in a folder", **fmt)
    p.add_argument("input_dir", help="folder of image files and/or DICOM series folders")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the labelmaps and summary.csv")
    p.add_argument("--pattern", default="*", help="only names matching this glob (e.g. '*_t2w.nii.gz')")
    p.add_argument("--csv", metavar="PATH", help="summary CSV (default: OUTPUT_DIR/summary.csv)")
    p.add_argument("--format", default="nrrd", choices=sorted(BATCH_FORMATS), help="output file type (default: nrrd)")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("demo", parents=[common, run], help="segment a built-in synthetic sample (works offline)", **fmt)
    p.add_argument(
        "-o", "--output-dir", default=DEMO_DIR, help=f"where the sample and results go (default: ./{DEMO_DIR})"
    )
    p.set_defaults(func=cmd_demo)  # the demo replaces its own files; --overwrite is not needed

    p = sub.add_parser("models", parents=[common], help="list, download, import, verify or remove models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    msub.add_parser("list", parents=[common], help="installed and downloadable models")
    q = msub.add_parser("download", parents=[common], help="download a model from the catalogue")
    q.add_argument("id", help="ID or ID@VERSION")
    q = msub.add_parser("import", parents=[common], help="install a model package .zip")
    q.add_argument("zip")
    q = msub.add_parser("verify", parents=[common], help="re-check the weights' checksums")
    q.add_argument("id", nargs="?", help="ID or ID@VERSION (default: every installed model)")
    q = msub.add_parser("path", parents=[common], help="the model cache folder, or an installed model's folder")
    q.add_argument("id", nargs="?")
    q = msub.add_parser("remove", parents=[common], help="delete a downloaded model")
    q.add_argument("id", help="ID or ID@VERSION")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", parents=[common], help="versions, device, threads, bfloat16 support, model cache")
    p.set_defaults(func=cmd_info)
    return parser


def _wants_machine(argv: Sequence[str]) -> bool:
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--progress=machine" or (a == "--progress" and i + 1 < len(argv) and argv[i + 1] == "machine"):
            return True
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (never raises, never prints a traceback unless --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        if _wants_machine(argv):
            sys.stderr.write(format_error_line(EXIT_USAGE, str(e)) + "\n")
            sys.stderr.flush()
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    debug = bool(getattr(args, "debug", False))
    mode = getattr(args, "progress", "human")
    lib_log = logging.getLogger("UNetSegmentLib")
    handler = _StderrHandler(machine=mode == "machine")
    old_level, old_propagate = lib_log.level, lib_log.propagate
    lib_log.addHandler(handler)
    lib_log.setLevel(logging.DEBUG if debug else logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    lib_log.propagate = False
    import SimpleITK as sitk

    itk_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(debug)
    cancel = Cancellation()
    reporter = ProgressReporter(mode, check=cancel.check)
    cancel.install()
    try:
        return int(args.func(args, reporter, cancel))
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        code, message = classify_error(e)
        reporter.end_line()
        if debug:
            traceback.print_exc(file=sys.stderr)
        if mode == "machine":
            reporter.error(code, message)
        else:
            sys.stderr.write(f"unetsegment: error: {message}\n")
            sys.stderr.flush()
        return code
    finally:
        cancel.restore()
        sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)
        lib_log.removeHandler(handler)
        lib_log.setLevel(old_level)
        lib_log.propagate = old_propagate
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
