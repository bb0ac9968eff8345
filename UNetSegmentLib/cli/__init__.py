"""The ``unetsegment`` command line: segment, batch, series, demo, models, info.

    unetsegment segment t2.nrrd -o t2_prostate.nrrd --seg-nrrd t2_prostate.seg.nrrd
    unetsegment batch scans/ -o results/ --csv results/summary.csv
    unetsegment series dicom_study/
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
import logging
import sys
import traceback
from typing import Optional, Sequence

from .. import __version__
from ..progress import PROGRESS_MODES, ProgressReporter, format_error_line
from . import batch, demo, info, models, segment, series
from .common import (
    EPILOG,
    EXIT_CANCELLED,
    EXIT_DOWNLOAD,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INVALID_IMAGE,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    QUALITIES,
    Cancellation,
    CliError,
    StderrHandler,
    UsageError,
    _Parser,
    channel_number,
    classify_error,
    positive_int,
)

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_DOWNLOAD",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INVALID_IMAGE",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_USAGE",
    "QUALITIES",
    "CliError",
    "build_parser",
    "main",
]


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
    g.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "onnxruntime", "openvino", "torch"),
        help="auto (default): ONNX Runtime on the CPU (OpenVINO, if installed, on CPUs with native bfloat16), PyTorch on a GPU",
    )
    g.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto (GPU if available)"
    )
    g.add_argument(
        "--quality",
        default="standard",
        choices=QUALITIES,
        help="fast: one pass over the image; standard (default): averaged with the mirror images the model was "
        "trained on (left-right for the default model), computed around the gland; best: the mirrored passes over "
        "the whole image (slowest)",
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto: bfloat16 on a GPU, float32 on the CPU; bfloat16 on the CPU needs native support and --backend torch",
    )
    g.add_argument("--threads", type=positive_int, help="CPU threads (default: every core this process may use)")
    g.add_argument("--offline", action="store_true", help="never download a model")
    g.add_argument(
        "--channel", type=channel_number, help="volume of a 4D or component of a multi-channel image (0 = first)"
    )
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

    for command in (segment, batch, series, demo, models, info):
        command.add_parser(sub, [common] if command in (models, info, series) else [common, run], **fmt)
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
    handler = StderrHandler(machine=mode == "machine")
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
