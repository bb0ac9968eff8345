"""What every command shares: exit codes, errors, cancellation, all-or-nothing outputs, the model
and predictor, and segmenting one image into its files."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..progress import ProgressReporter, format_warning_line

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
  {EXIT_USAGE}    bad command line, --device cuda without a GPU, a --backend that is not
       installed, --precision bfloat16 on a CPU without native bfloat16, or a DICOM
       folder whose series to read is not clear (none or several axial T2): the
       numbered list is printed; choose with --series N or --series-uid UID
  {EXIT_INPUT}    input missing, unreadable or damaged (truncated or corrupted file,
       an unreadable file in the DICOM series, an undecodable compression)
  {EXIT_INVALID_IMAGE}    invalid image: 2D, 4D or multi-component without --channel, empty,
       constant, NaN/Inf values, voxel spacing <= 0, < 0.05 mm or > 20 mm,
       fewer than 3 slices, or less than 30 mm in-plane; a labelmap, mask,
       probability map or segmentation instead of a scan; a DICOM series that
       is not whole (missing or duplicated slices, uneven spacing without
       --resample-uneven, mixed orientations, sizes or series)
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
#: ``inference.QUALITY_SETTINGS``'s keys, here so that parsing the command line imports no runtime.
QUALITIES = ("fast", "standard", "best")


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
            from ..runtime import CancelledError

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
        ext = _matching_extension(final, LABELMAP_EXTENSIONS + (".json", ".png", ".dcm")) or ""
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
    labelmap: Optional[Path]
    seg_nrrd: Optional[Path] = None
    volumes_json: Optional[Path] = None
    extras: Any = None  #: ``extras.Extras``: DICOM SEG, uncertainty map, report picture, PSA
    #: the folder of the DICOM series read (a study tree's chosen T2), for its tags and the SEG's references
    dicom_source: Optional[Path] = None


# -- the pipeline ------------------------------------------------------------------------------


def resolve_model(spec: Optional[str], offline: bool, reporter: ProgressReporter, cancel: Cancellation):
    """The verified model package for ``--model`` (None = the default model); may download it."""
    from ..store import ModelStore

    reporter("loading", 0.5, "model")
    package = ModelStore().resolve(
        spec, allow_download=not offline, progress=reporter.bytes_callback("downloading"), should_cancel=cancel.is_set
    )
    reporter("loading", 1.0, f"model {package.info.id} {package.info.version}")
    return package


def check_runtime_options(args: argparse.Namespace) -> None:
    """Refuse a backend, device or precision that cannot run here (exit 2) before any work is done."""
    from ..runtime import RuntimeUnavailable, check_precision, choose_backend

    try:
        check_precision(args.precision, args.device)
        if args.backend != "auto":
            choose_backend(args.backend, args.device, has_onnx=True)  # the package is checked once loaded
    except RuntimeUnavailable as e:
        raise CliError(EXIT_USAGE, str(e)) from None


def build_predictor(package, args: argparse.Namespace):
    """A ``Predictor`` for the command's backend, device, quality, precision and thread options."""
    from ..inference import Predictor
    from ..runtime import RuntimeUnavailable

    if args.threads:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(args.threads))
    try:
        return Predictor(
            package,
            device=args.device,
            quality=args.quality,
            precision=args.precision,
            threads=args.threads,
            backend=args.backend,
        )
    except RuntimeUnavailable as e:
        raise CliError(EXIT_USAGE, str(e)) from None


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
    from .. import io
    from ..segfile import write_seg_nrrd
    from .extras import Extras, analyse, write_extras

    extras = job.extras or Extras()
    prediction = predictor.predict(image, progress=reporter, should_cancel=cancel.is_set)
    cancel.check()
    first_output = job.labelmap or extras.dicom_seg
    reporter("writing", 0.0, first_output.name if first_output else "")
    labels = predictor.info.labels
    staged = StagedWrites()
    # marks the labelmap as this tool's output (kept in NRRD and MetaImage), so it is refused as an input
    prediction.labelmap.SetMetaData("unetsegment_model", f"{predictor.info.id} {predictor.info.version}")
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
            "output": str(first_output),
            "seg_nrrd": str(job.seg_nrrd) if job.seg_nrrd else None,
            "model": {"id": predictor.info.id, "version": predictor.info.version},
            "volumes_ml": {k: round(v, 3) for k, v in prediction.volumes_ml.items()},
            "device": prediction.device,
            "backend": prediction.backend,
            "quality": predictor.quality,
            "members": prediction.members,
            "seconds": round(time.perf_counter() - t_start, 2),
            "warnings": list(warnings),
        }
        source = job.dicom_source or job.input
        result.update(analyse(prediction, image, source, predictor.info, extras.psa))
        write_extras(extras, prediction, image, source, predictor.info, result, staged, job.input.name)
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


def structure_names(predictor) -> Dict[str, str]:
    return {lab.structure.name: lab.structure.display_name for lab in predictor.info.labels}


def print_volumes(result: Dict[str, Any], names: Dict[str, str]) -> None:
    for key, ml in result["volumes_ml"].items():
        print(f"  {names.get(key, key)}: {ml:.1f} mL")


def print_written(job: SegmentJob) -> None:
    if job.labelmap is None:
        return
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


def classify_error(e: BaseException) -> Tuple[int, str]:
    """An exception -> (exit code, one-line message)."""
    from ..io import ImageReadError
    from ..model_package import ModelPackageError
    from ..store import DownloadCancelled, DownloadError
    from ..validation import InvalidImageError

    runtime = sys.modules.get("UNetSegmentLib.runtime")
    choice = sys.modules.get("UNetSegmentLib.dicom.choice")
    if isinstance(e, CliError):
        return e.code, e.message
    if choice is not None and isinstance(e, choice.SeriesChoiceError):
        return EXIT_USAGE, _one_line(e)
    if isinstance(e, (KeyboardInterrupt, DownloadCancelled)) or (
        runtime is not None and isinstance(e, runtime.CancelledError)
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
    if runtime is not None and isinstance(e, runtime.RuntimeUnavailable):
        return EXIT_USAGE, _one_line(e)
    if isinstance(e, MemoryError):
        return (
            EXIT_INTERNAL,
            "not enough memory for this image; try --device cpu, --quality fast or a machine with more memory",
        )
    return (
        EXIT_INTERNAL,
        f"internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug to see the traceback)",
    )


class StderrHandler(logging.Handler):
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


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return v


def channel_number(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return v
