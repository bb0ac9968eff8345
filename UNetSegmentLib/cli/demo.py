"""``unetsegment demo``: segment a built-in synthetic sample, offline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..progress import ProgressReporter
from .common import (
    EXIT_OK,
    Cancellation,
    SegmentJob,
    build_predictor,
    check_runtime_options,
    check_writable_folder,
    predict_and_write,
    print_volumes,
    print_written,
    resolve_model,
    structure_names,
)

DEMO_DIR = "unetsegment-demo"
#: a normal-sized gland; the default model under-segments large synthetic glands (see its model card)
DEMO_GLAND_ML = 30.0


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("demo", parents=parents, help="segment a built-in synthetic sample (works offline)", **fmt)
    p.add_argument(
        "-o", "--output-dir", default=DEMO_DIR, help=f"where the sample and results go (default: ./{DEMO_DIR})"
    )
    p.set_defaults(func=run)  # the demo replaces its own files; --overwrite is not needed


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    check_runtime_options(args)
    import numpy as np
    import SimpleITK as sitk

    from .. import io
    from ..synthetic import make_case

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
    print_volumes(result, structure_names(predictor))
    print(f"  Dice against the sample's known gland ({reference.name}): {dice:.2f}")
    print(f"Sample scan:              {sample}")
    print_written(job)
    print("To segment your own T2-weighted scan (NRRD, NIfTI or a DICOM folder):")
    print("  unetsegment segment /path/to/t2.nii.gz -o t2_prostate.nrrd --seg-nrrd t2_prostate.seg.nrrd")
    return EXIT_OK
