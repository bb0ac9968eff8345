"""One segmentation run in a background process, advanced by polling (a ``qt.QTimer`` or a loop).

The command is ``<python> -m UNetSegmentLib segment in.nrrd -o out.nrrd ...
--progress machine``; its protocol lines (``UNETSEGMENT_PROGRESS``,
``_RESULT``, ``_ERROR``, ``_WARNING``, parsed by
``UNetSegmentLib.progress.parse_progress_line``) drive the panel's stages::

    preparing    input written, model located        0.00 - 0.05 (and the CLI's "loading")
    downloading  model fetched from the catalogue    the CLI's "downloading"
    segmenting   preprocessing .. writing            the CLI's overall progress, mapped to 0.05 - 0.95
    importing    labelmap brought into the scene     0.95 - 1.00

Pure Python: no Slicer, no torch. The process comes from a factory, so tests
can run the real command line or a scripted fake.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from .findings import plainMessage, psaArgument
from .process import BackgroundProcess, ProcessProtocol

STAGES = ("preparing", "downloading", "segmenting", "importing")
STAGE_LABELS = {
    "preparing": "Preparing",
    "downloading": "Downloading model",
    "segmenting": "Segmenting",
    "importing": "Importing",
}
#: Overall progress (0-1) at which each stage of the panel starts; the CLI's run spans 0.05-0.95.
CLI_SPAN = (0.05, 0.95)
#: CLI stages that the panel shows as its own stages (all others are "segmenting").
CLI_STAGE_TO_STAGE = {"loading": "preparing", "downloading": "downloading"}
#: Exit code of the CLI when it was interrupted (cancelled).
EXIT_CANCELLED = 130

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
#: ``--backend`` of each ``--device``: ONNX Runtime on the CPU (no torch), PyTorch on the GPU; auto lets the CLI pick.
BACKEND_FOR_DEVICE = {"cpu": "onnxruntime", "cuda": "torch", "auto": "auto"}


def segmentCommand(
    python: Sequence[str],
    inputPath: str,
    outputPath: str,
    volumesJsonPath: str,
    modelSpec: str,
    device: str,
    quality: str,
    psa: Optional[float] = None,
) -> List[str]:
    """The command line of one run; ``python`` is ``[PythonSlicer]`` in Slicer, ``[sys.executable]`` in tests.

    The backend follows the device (:data:`BACKEND_FOR_DEVICE`), so a CPU run never needs torch.
    ``psa`` (ng/mL; None or 0 = not given) adds ``--psa``; the command line checks its range.
    """
    psaValue = psaArgument(psa)
    return [
        *python,
        "-m",
        "UNetSegmentLib",
        "segment",
        inputPath,
        "-o",
        outputPath,
        "--model",
        modelSpec,
        "--device",
        device,
        "--backend",
        BACKEND_FOR_DEVICE[device],
        "--quality",
        quality,
        "--progress",
        "machine",
        "--volumes-json",
        volumesJsonPath,
        "--overwrite",
        *(["--psa", psaValue] if psaValue is not None else []),
    ]


def parseLine(line: str) -> Optional[Dict[str, Any]]:
    """A protocol line as a dict with ``kind``; None for other output (logged, not shown as progress)."""
    from UNetSegmentLib.progress import parse_progress_line

    return parse_progress_line(line)


class SegmentationRun:
    """The state of one run: stage, progress, log, outcome.

    Call :meth:`start`, then :meth:`poll` until it returns False (the GUI does
    it from a timer; blocking mode from a loop). ``onProgress(stage, overall,
    message)`` and ``onLog(line)`` are called from :meth:`poll`, in the
    caller's thread. After the end, ``status`` is ``succeeded``, ``failed`` or
    ``cancelled`` and ``message`` is one plain sentence for the user.
    ``expectResult`` False is for commands without a result line (``info``).
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Dict[str, str],
        cwd: str,
        processFactory: Callable[[], ProcessProtocol] = BackgroundProcess,
        onProgress: Optional[Callable[[str, float, str], None]] = None,
        onLog: Optional[Callable[[str], None]] = None,
        expectResult: bool = True,
    ) -> None:
        self.command = list(command)
        self.expectResult = expectResult
        self.env = env
        self.cwd = cwd
        self.process = processFactory()
        self.onProgress = onProgress or (lambda stage, overall, message: None)
        self.onLog = onLog or (lambda line: None)
        self.status = RUNNING
        self.stage = "preparing"
        self.overall = 0.0
        self.message = ""
        self.result: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self.exitCode: Optional[int] = None
        self._error: Optional[Dict[str, Any]] = None
        self._cancelRequested = False
        # filled by the module once the result is imported
        self.labels: List[Dict[str, Any]] = []
        self.segmentationNode: Any = None
        self.timer: Any = None

    # -- driving --------------------------------------------------------------------
    def start(self) -> None:
        self.report("preparing", CLI_SPAN[0], "starting the segmentation process")
        try:
            self.process.start(self.command, self.env, self.cwd)
        except OSError as e:
            self._finish(FAILED, f"The segmentation process could not be started ({e.strerror or e}).")

    def poll(self) -> bool:
        """Handle new output; True while the process runs (or output is still coming)."""
        if self.status != RUNNING:
            return False
        for line in self.process.readLines():
            self._handleLine(line)
        code = self.process.exitCode()
        if code is None:
            return True
        self.exitCode = code
        if self._cancelRequested or code == EXIT_CANCELLED:
            self._finish(CANCELLED, "Segmentation was cancelled; the scene was not changed.")
        elif code != 0 or self._error is not None:
            self._finish(FAILED, self._failureMessage(code))
        elif self.expectResult and not self.result:
            self._finish(FAILED, "The segmentation process ended without a result.")
        else:
            self._finish(SUCCEEDED, "")
        return False

    def cancel(self) -> None:
        """Kill the process tree; the next :meth:`poll` reports ``cancelled``."""
        if self.status == RUNNING:
            self._cancelRequested = True
            self.process.kill()

    @property
    def cancelRequested(self) -> bool:
        return self._cancelRequested

    # -- output ---------------------------------------------------------------------
    def _handleLine(self, line: str) -> None:
        record = parseLine(line)
        if record is None:
            if line.strip():
                self.onLog(line)
            return
        kind = record["kind"]
        if kind == "progress":
            cliStage = str(record.get("stage", ""))
            stage = CLI_STAGE_TO_STAGE.get(cliStage, "segmenting")
            lo, hi = CLI_SPAN
            overall = lo + (hi - lo) * float(record.get("overall", 0.0))
            self.report(stage, overall, str(record.get("message", "")))
        elif kind == "result":
            self.result = record
            self.onLog(f"Result: {self._describeVolumes(record)}")
        elif kind == "warning":
            self.warnings.append(str(record.get("message", "")))
            self.onLog(f"Warning: {record.get('message', '')}")
        elif kind == "error":
            self._error = record
            self.onLog(f"Error: {record.get('message', '')}")

    def report(self, stage: str, overall: float, message: str = "") -> None:
        """Record and announce progress; overall progress never goes back."""
        self.stage = stage
        self.overall = max(self.overall, min(max(overall, 0.0), 1.0))
        self.onProgress(stage, self.overall, message)

    def _failureMessage(self, code: int) -> str:
        if self._error is not None:
            text = plainMessage(str(self._error.get("message", "")))
            if text:
                return text
        return f"The segmentation process failed (exit code {code}); see the log for details."

    @staticmethod
    def _describeVolumes(record: Dict[str, Any]) -> str:
        volumes = record.get("volumes_ml", {})
        return ", ".join(f"{k} {float(v):.1f} mL" for k, v in volumes.items()) or "no structures"

    def _finish(self, status: str, message: str) -> None:
        self.status = status
        self.message = message
        if status == FAILED:
            logging.error("UNetSegment: %s", message)
        else:
            logging.info("UNetSegment run %s. %s", status, message)
