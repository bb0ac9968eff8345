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
    p.add_argument(
        "--model",
        help="also describe this model (ID, ID@VERSION or a package folder): its networks and the backend it gets",
    )
    p.set_defaults(func=run)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # read without importing (torch and MONAI take seconds to import)
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace, reporter: ProgressReporter, cancel: Cancellation) -> int:
    import SimpleITK as sitk

    from ..hardware import cpu_info, default_threads
    from ..runtime import RuntimeUnavailable, choose_backend, nvidia_driver_present
    from ..store import DEFAULT_MODEL_ID

    cpu = cpu_info()
    print(f"unetsegment {__version__}")
    print(f"python      {platform.python_version()} ({platform.platform()})")
    print(
        f"packages    onnxruntime {_version('onnxruntime')}, torch {_version('torch')}, SimpleITK "
        f"{sitk.Version.VersionString()}, numpy {_version('numpy')}, monai {_version('monai')} (training only)"
    )
    print(f"cpu         {cpu.model}: {cpu.isa}, bfloat16 {'native' if cpu.native_bf16 else 'not native (emulated)'}")
    print(f"threads     {default_threads()} inference threads, {os.cpu_count()} CPU cores")
    store = model_store()
    default = store.find(DEFAULT_MODEL_ID)
    try:
        backend = choose_backend("auto", "auto", has_onnx=default.has_onnx if default else True)
    except RuntimeUnavailable as e:
        backend = f"none ({e})"
    if backend == "torch" and nvidia_driver_present():
        import torch  # only where PyTorch would run the segmentation anyway

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            print(f"device      cuda ({names}); bfloat16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
        else:
            print("device      cpu (an NVIDIA driver is present, but PyTorch sees no CUDA GPU)")
    else:
        print("device      cpu")
    print(f"backend     {backend} (--backend auto)")
    print(f"model cache {store.root}")
    installed = f"installed {default.info.version}, {default.info.members_summary()}" if default else "not installed"
    print(f"default     {DEFAULT_MODEL_ID} ({installed})")
    if getattr(args, "model", None):
        package = store.resolve(args.model, allow_download=False)
        try:
            chosen = choose_backend("auto", "auto", has_onnx=package.has_onnx)
        except RuntimeUnavailable as e:
            chosen = f"none ({e})"
        print(
            f"model       {package.info.id} {package.info.version}: {package.info.members_summary()} ({package.path})"
        )
        print(f"            backend {chosen} (--backend auto), checksums of every network verified")
    return EXIT_OK
