"""The network in PyTorch: CUDA GPUs, Apple MPS, bf16 on CPUs with native bf16, and packages without ONNX.

On the CPU the network runs in channels-last 3D layout (oneDNN is faster with it), with
bf16 autocast where the CPU has native bf16 and ``precision`` allows; on CUDA with bf16
autocast. A run cannot be interrupted inside PyTorch, so ``should_cancel`` is checked
before each call and the pipeline keeps CPU windows small enough to answer quickly.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable, Optional

import numpy as np
import torch

from ..hardware import cpu_info, default_threads
from . import CancelledError, RuntimeUnavailable

log = logging.getLogger(__name__)

#: ``auto``: channels-last (NDHWC) on the CPU, where oneDNN is faster with it; ``contiguous``: NCDHW.
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
#: Window limits (voxels): a GPU takes a whole prostate grid at once; on the CPU a call
#: takes a second or two at most, so that cancelling answers quickly.
MAX_WINDOW_VOXELS = {"cuda": 16_000_000, "mps": 4_000_000, "cpu": 1_600_000}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; a GPU that is not there is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeUnavailable("a GPU (CUDA) was requested but PyTorch sees none; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeUnavailable("Apple MPS was requested but PyTorch sees none; use --device cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private op; absent on some builds
        return cpu_info().native_bf16


class TorchRuntime:
    """A model package's network (or one ensemble member's) in PyTorch on one device; the weights'
    bytes checked against ``model.json``'s sha256 are the bytes loaded."""

    name = "torch"

    def __init__(
        self,
        package,
        device: str = "auto",
        precision: str = "auto",
        threads: Optional[int] = None,
        memory_format: str = "auto",
    ) -> None:
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, not {memory_format!r}")
        self.package = package
        self._precision = precision
        self.memory_format = memory_format
        self.threads = default_threads(threads)
        if threads:
            torch.set_num_threads(int(threads))
        self.network = package.build_network()
        self.version = torch.__version__
        self._to(resolve_device(device))

    def _to(self, device: torch.device) -> None:
        self.torch_device = device
        self.device = device.type
        net = self.network.to(device)
        if self._channels_last():
            net = net.to(memory_format=torch.channels_last_3d)
        self.network = net
        if self._precision == "auto":
            bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())
        else:
            bf16 = self._precision == "bfloat16"
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.precision = "bfloat16" if bf16 else "float32"
        self.max_window_voxels = MAX_WINDOW_VOXELS.get(device.type, MAX_WINDOW_VOXELS["cpu"])

    def _channels_last(self) -> bool:
        if self.memory_format == "auto":
            return self.torch_device.type == "cpu"
        return self.memory_format == "channels_last"

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16)

    def fallback(self) -> Optional[TorchRuntime]:
        """After a GPU ran out of memory: the same network on the CPU."""
        if self.torch_device.type == "cpu":
            return None
        log.warning("GPU out of memory; running on the CPU instead")
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
        self._to(torch.device("cpu"))
        return self

    @torch.no_grad()
    def run(self, x: np.ndarray, should_cancel: Optional[Callable[[], bool]] = None) -> np.ndarray:
        """``(1, C, z, y, x)`` float32 -> logits ``(1, K, z, y, x)`` float32."""
        if should_cancel is not None and should_cancel():
            raise CancelledError("cancelled")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
        if self._channels_last():
            t = t.contiguous(memory_format=torch.channels_last_3d)
        with self._autocast():
            y = self.network(t)
        return y.float().cpu().numpy()

    def is_out_of_memory(self, e: BaseException) -> bool:
        return isinstance(e, torch.cuda.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and "out of memory" in str(e).lower() and self.torch_device.type != "cpu"
        )
