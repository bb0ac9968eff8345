"""``unetsegment segment``: one image to a labelmap (and optional Slicer segmentation and volumes JSON)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..progress import ProgressReporter
from . import extras
from .common import (
    EXIT_OK,
    EXIT_OUTPUT,
    LABELMAP_EXTENSIONS,
    Cancellation,
    CliError,
    SegmentJob,
    build_predictor,
    check_output,
    check_runtime_options,
    predict_and_write,
    print_volumes,
    print_written,
    resolve_model,
    structure_names,
)
from .series import add_input_options, read_case, series_folder


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("segment", parents=parents, help="segment one image", **fmt)
    p.add_argument(
        "input",
        help="image file (NRRD, NIfTI, MetaImage) or DICOM folder (a series or a study tree: the axial T2 is chosen)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="labelmap: .nrrd, .nii.gz, .nii, .mha or .seg.nrrd (Slicer); .dcm: a DICOM SEG (DICOM input only)",
    )
    p.add_argument(
        "--seg-nrrd", metavar="PATH", help="also write a 3D Slicer segmentation (.seg.nrrd) with names and colours"
    )
    p.add_argument(
        "--volumes-json",
        metavar="PATH",
        help="write the volumes (mL), confidence, quality flags, PSA density and run details as JSON",
    )
    extras.add_segment_arguments(p)
    add_input_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    check_runtime_options(args)
    t_start = time.perf_counter()
    source = Path(args.input).expanduser().absolute()
    outputs = extras.Extras(psa=args.psa)
    if Path(args.output).name.lower().endswith(".dcm"):
        job = SegmentJob(source, None)
        outputs.dicom_seg = check_output(Path(args.output), args.overwrite, (".dcm",), "DICOM SEG", [source])
    else:
        job = SegmentJob(
            source, check_output(Path(args.output), args.overwrite, LABELMAP_EXTENSIONS, "output", [source])
        )
    if args.seg_nrrd:
        job.seg_nrrd = check_output(Path(args.seg_nrrd), args.overwrite, (".seg.nrrd",), "segmentation file", [source])
    if args.volumes_json:
        job.volumes_json = check_output(Path(args.volumes_json), args.overwrite, (".json",), "volumes file", [source])
    if args.dicom_seg:
        outputs.dicom_seg = check_output(Path(args.dicom_seg), args.overwrite, (".dcm",), "DICOM SEG", [source])
    if args.uncertainty:
        outputs.uncertainty = check_output(
            Path(args.uncertainty), args.overwrite, extras.UNCERTAINTY_EXTENSIONS, "uncertainty map", [source]
        )
    if args.report:
        outputs.report = check_output(Path(args.report), args.overwrite, (".png",), "report picture", [source])
    job.extras = outputs
    finals = [p for p in (job.labelmap, job.seg_nrrd, job.volumes_json, *outputs.paths()) if p is not None]
    if len(set(finals)) != len(finals):
        raise CliError(EXIT_OUTPUT, "the output files (-o, --seg-nrrd, --volumes-json, --dicom-seg, ...) must differ")
    extras.check_requirements(outputs, source)

    reporter("loading", 0.0, f"reading {source.name}")
    got = read_case(source, args, reporter)
    image, warnings = got.image, got.warnings
    job.dicom_source = series_folder(got)
    cancel.check()
    package = resolve_model(args.model, args.offline, reporter, cancel)
    predictor = build_predictor(package, args)
    result = predict_and_write(job, image, warnings, predictor, reporter, cancel, t_start)
    reporter.result(result)
    averaged = f" (average of {result['members']} networks)" if result["members"] > 1 else ""
    print(
        f"Segmented {source} with {package.info.id} {package.info.version}{averaged} on {result['device']} "
        f"in {result['seconds']:.1f} s"
    )
    print_volumes(result, structure_names(predictor))
    extras.print_findings(result)
    print_written(job)
    extras.print_extras(result)
    return EXIT_OK
