"""The network on the CPU with OpenVINO: ``model.onnx`` of the package, compiled for this CPU.

Optional (``pip install openvino``). On CPUs with native bf16 (AVX-512 BF16, AMX) OpenVINO
runs the convolutions in bf16 by default, several times faster than float32 there; where
the CPU has no native bf16 it runs float32. ``--backend auto`` picks it only on CPUs with
native bf16 (see ``benchmarks/bench_network.py`` for the measurements behind that).
The bytes checked against ``model.json``'s sha256 are the bytes compiled. A run is an
asynchronous infer request that the waiting thread cancels when ``should_cancel`` says so.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from ..hardware import cpu_info, default_threads
from . import CancelledError, trim_heap

log = logging.getLogger(__name__)

POLL_S = 0.05
MAX_WINDOW_VOXELS = 1_600_000


class OpenVinoRuntime:
    """A model package's ONNX network (or one ensemble member's) compiled by OpenVINO for the CPU."""

    name = "openvino"
    device = "cpu"
    max_window_voxels = MAX_WINDOW_VOXELS

    def __init__(self, package, threads: Optional[int] = None, precision: str = "auto") -> None:
        import openvino as ov

        data = package.read_onnx()
        self.threads = default_threads(threads)
        bf16 = precision == "bfloat16" or (precision == "auto" and cpu_info().native_bf16)
        self.precision = "bfloat16" if bf16 else "float32"
        core = ov.Core()
        model = core.read_model(data, b"")  # ONNX bytes; no external weights
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()

    def fallback(self) -> None:
        return None

    def release_memory(self) -> None:
        """Free the intermediate buffers kept from the last run, and hand the freed pages back to the
        system (glibc keeps them per thread otherwise): an ensemble's members run one after the other,
        so only one member's buffers are held at a time. The next run allocates them again."""
        release = getattr(self.compiled, "release_memory", None)  # OpenVINO 2024.3 and later
        if release is not None:
            release()
            trim_heap()

    def run(self, x: np.ndarray, should_cancel: Optional[Callable[[], bool]] = None) -> np.ndarray:
        """``(1, C, z, y, x)`` float32 -> logits ``(1, K, z, y, x)`` float32."""
        if should_cancel is not None and should_cancel():
            raise CancelledError("cancelled")
        self.request.start_async({0: np.ascontiguousarray(x, dtype=np.float32)})
        while not self.request.wait_for(int(POLL_S * 1000)):
            if should_cancel is not None and should_cancel():
                self.request.cancel()
                raise CancelledError("cancelled")
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)
