"""The runtimes that run the network: windows in, logits out.

    runtime = create_runtime(package, backend="auto", device="auto")
    logits = runtime.run(x)          # (1, C, z, y, x) float32 -> (1, K, z, y, x) float32

- ``onnxruntime`` (:mod:`.onnx_runtime`): the package's ``model.onnx`` on the CPU with ONNX
  Runtime. The default on the CPU: a small wheel, no PyTorch, and on CPUs without native
  bf16 (AVX2) about twice as fast as PyTorch.
- ``openvino`` (:mod:`.openvino_runtime`, optional): the same ``model.onnx`` compiled by OpenVINO;
  picked by ``auto`` on CPUs with native bf16 (AVX-512 BF16, AMX), where it runs bf16.
- ``torch`` (:mod:`.torch_runtime`): the package's weights in PyTorch, for CUDA GPUs (and
  Apple MPS), bf16 on CPUs with native bf16, and packages without ONNX.

``auto`` picks ``torch`` when a GPU is asked for or found (found only where PyTorch is
installed and an NVIDIA driver is present, so a CPU-only machine never imports torch),
else ``openvino`` on a CPU with native bf16 where OpenVINO is installed, else ``onnxruntime``
when the package has ONNX and ONNX Runtime is installed, else ``torch``.
Every runtime can be cancelled while it runs (:meth:`Runtime.run`'s ``should_cancel``).
A runtime runs one network: an ensemble package gets one per member, on the same backend.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import platform
from typing import Callable, Optional, Protocol

import numpy as np

from ..hardware import cpu_info

BACKENDS = ("auto", "onnxruntime", "openvino", "torch")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")


class RuntimeUnavailable(RuntimeError):
    """The runtime, device or precision asked for cannot be used here; the message says why and what to do."""


class CancelledError(Exception):
    """Raised when ``should_cancel`` returned True while a run was under way."""


class Runtime(Protocol):
    """Runs the network on one ``(1, C, z, y, x)`` float32 array at a time (any size the network accepts).

    Optionally ``release_memory()``: free what the last run kept (called between an ensemble's members)."""

    name: str  #: "onnxruntime" or "torch"
    device: str  #: "cpu", "cuda" or "mps"
    precision: str  #: "float32" or "bfloat16"
    threads: int
    #: largest window (voxels) one call may take; the pipeline tiles larger grids
    max_window_voxels: int

    def run(self, x: np.ndarray, should_cancel: Optional[Callable[[], bool]] = None) -> np.ndarray:
        """Logits ``(1, K, z, y, x)`` float32 for ``x``; raises :class:`CancelledError` if cancelled."""
        ...

    def fallback(self) -> Optional[Runtime]:
        """A CPU runtime to retry on after the device ran out of memory (None: no fallback)."""
        ...


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None


def trim_heap() -> None:
    """Return freed heap memory to the system where the C library can (glibc's ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def nvidia_driver_present() -> bool:
    """An NVIDIA driver is loaded (checked without importing torch or CUDA)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if platform.system() == "Linux":
        return os.path.exists("/proc/driver/nvidia/version")
    if platform.system() == "Windows":
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return os.path.exists(os.path.join(root, "System32", "nvcuda.dll"))
    return False


#: The runtimes of ``model.onnx``: name -> (what the user reads, is it installed, the pip package).
_ONNX_BACKENDS = {
    "onnxruntime": ("ONNX Runtime", lambda: onnxruntime_installed(), "onnxruntime"),
    "openvino": ("OpenVINO", lambda: openvino_installed(), "openvino"),
}


def choose_backend(backend: str, device: str, has_onnx: bool) -> str:
    """The backend ``auto`` stands for here (see the module docstring); explicit choices are checked."""
    if backend not in BACKENDS:
        raise RuntimeUnavailable(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise RuntimeUnavailable(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    gpu = device.startswith("cuda") or device == "mps"
    if backend in _ONNX_BACKENDS:
        label, installed, package = _ONNX_BACKENDS[backend]
        if gpu:
            raise RuntimeUnavailable(
                f"--backend {backend} runs on the CPU only; use --backend torch for --device {device}"
            )
        if not has_onnx:
            raise RuntimeUnavailable("this model package has no model.onnx; use --backend torch (needs PyTorch)")
        if not installed():
            raise RuntimeUnavailable(f"{label} is not installed: pip install {package}")
        return backend
    if backend == "torch":
        if not torch_installed():
            raise RuntimeUnavailable(
                "PyTorch is not installed: pip install torch (see the README), or use --backend onnxruntime"
            )
        return "torch"
    # auto
    if gpu or (device == "auto" and torch_installed() and nvidia_driver_present()):
        if torch_installed():
            return "torch"
        raise RuntimeUnavailable(f"--device {device} needs PyTorch with GPU support: pip install torch")
    if has_onnx and openvino_installed() and cpu_info().native_bf16:
        return "openvino"  # bf16 convolutions: several times faster than float32 on such CPUs
    if has_onnx and onnxruntime_installed():
        return "onnxruntime"
    if has_onnx and openvino_installed():
        return "openvino"
    if torch_installed():
        return "torch"
    if not has_onnx:
        raise RuntimeUnavailable("this model package has no model.onnx and PyTorch is not installed: pip install torch")
    raise RuntimeUnavailable("no runtime installed: pip install onnxruntime")


def check_precision(precision: str, device: str) -> None:
    """bf16 only where it runs natively: on the CPU that needs AVX-512 BF16, AMX or ARM BF16."""
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "bfloat16" and device in ("cpu", "auto") and not cpu_info().native_bf16:
        if device == "auto" and nvidia_driver_present():
            return
        cpu = cpu_info()
        raise RuntimeUnavailable(
            f"--precision bfloat16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); this CPU ({cpu.model}, "
            f"{cpu.isa}) would emulate it, many times slower. Use --precision float32 (or auto)."
        )


def create_runtime(
    package,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: Optional[int] = None,
) -> Runtime:
    """The runtime for ``package``: a :class:`~UNetSegmentLib.model_package.ModelPackage` with one
    network, or one network of a package (:class:`~UNetSegmentLib.model_package.PackageMember`;
    an ensemble runs one runtime per member, see :class:`~UNetSegmentLib.inference.Predictor`)."""
    check_precision(precision, device)
    chosen = choose_backend(backend, device, package.has_onnx)
    if precision == "bfloat16" and chosen == "onnxruntime" and backend == "auto":
        chosen = "torch"  # ONNX Runtime has no bf16 convolutions on the CPU
    if chosen == "onnxruntime":
        if precision == "bfloat16":
            raise RuntimeUnavailable(
                "--precision bfloat16 needs --backend torch (ONNX Runtime runs float32 on the CPU)"
            )
        from .onnx_runtime import OnnxRuntime

        return OnnxRuntime(package, threads=threads)
    if chosen == "openvino":
        from .openvino_runtime import OpenVinoRuntime

        return OpenVinoRuntime(package, threads=threads, precision=precision)
    from .torch_runtime import TorchRuntime

    return TorchRuntime(package, device=device, precision=precision, threads=threads)


__all__ = [
    "BACKENDS",
    "DEVICES",
    "PRECISIONS",
    "CancelledError",
    "Runtime",
    "RuntimeUnavailable",
    "check_precision",
    "choose_backend",
    "create_runtime",
    "trim_heap",
]
