"""``unetsegment info``: versions, runtime, CPU, threads and the model cache."""

from __future__ import annotations

import argparse
import os
import platform

from .. import __version__
from ..progress import ProgressReporter
from .common import EXIT_OK, Cancellation
from .models import model_store


def add_parser(sub, parents, **fmt) -> None:
    p = sub.add_parser("info", parents=parents, help="versions, runtime, CPU, threads, bfloat16 support, model cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import SimpleITK as sitk
    import torch

    from ..inference import cpu_supports_bf16, resolve_device
    from ..store import DEFAULT_MODEL_ID

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
    store = model_store()
    print(f"model cache {store.root}")
    default = store.find(DEFAULT_MODEL_ID)
    print(f"default     {DEFAULT_MODEL_ID} ({f'installed {default.info.version}' if default else 'not installed'})")
    return EXIT_OK
