"""The network on the CPU with ONNX Runtime: ``model.onnx`` of the package, float32.

The file is read once, checked against the sha256 in ``model.json``, and the session is
built from those same bytes (so the checked file is the one that runs). A run happens in
a worker thread while the calling thread watches ``should_cancel``: on cancel,
``RunOptions.terminate`` stops ONNX Runtime between two operators, so Ctrl-C ends even
a long run within a fraction of a second.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

import numpy as np

from ..hardware import default_threads
from . import CancelledError, trim_heap

log = logging.getLogger(__name__)

#: How often a waiting run checks ``should_cancel`` (seconds).
POLL_S = 0.05
#: Largest window per call: the activations of the full-resolution levels take about
#: 300 bytes per voxel, so this keeps a run near 500 MB.
MAX_WINDOW_VOXELS = 1_600_000


class OnnxRuntime:
    """A model package's ONNX network (or one ensemble member's) in an ONNX Runtime CPU session."""

    name = "onnxruntime"
    device = "cpu"
    precision = "float32"
    max_window_voxels = MAX_WINDOW_VOXELS

    def __init__(self, package, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        data = package.read_onnx()  # checked against model.json's sha256
        self.threads = default_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no shape-inference chatter on stderr
        # no arena: windows change size from call to call, and an arena keeps every size's peak
        # (on ProstateX-0000 581 MB instead of 459 MB peak for the whole process, same speed)
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def fallback(self) -> None:
        return None

    def release_memory(self) -> None:
        """Hand the memory freed after the last run back to the system (glibc keeps it per thread
        otherwise), so that an ensemble's members, run one after the other, do not each keep theirs."""
        trim_heap()

    def _run(self, x: np.ndarray, options) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}, options)[0]

    def run(self, x: np.ndarray, should_cancel: Optional[Callable[[], bool]] = None) -> np.ndarray:
        """``(1, C, z, y, x)`` float32 -> logits ``(1, K, z, y, x)`` float32."""
        options = self._ort.RunOptions()
        if should_cancel is None:
            return self._run(x, options)
        if should_cancel():
            raise CancelledError("cancelled")
        result: List[np.ndarray] = []
        error: List[BaseException] = []

        def work() -> None:
            try:
                result.append(self._run(x, options))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                error.append(e)

        worker = threading.Thread(target=work, name="unetsegment-onnxruntime", daemon=True)
        worker.start()
        cancelled = False
        while worker.is_alive():
            worker.join(POLL_S)
            if not cancelled and worker.is_alive() and should_cancel():
                options.terminate = True  # ONNX Runtime stops at the next operator
                cancelled = True
        if cancelled or should_cancel():
            raise CancelledError("cancelled")
        if error:
            raise error[0]
        return result[0]
