"""A scripted stand-in for the background process (the module's ProcessProtocol), for fast edge-case tests.

It reads the command line the module built, writes the outputs a real run
would write (a labelmap on the input's grid, read with SimpleITK, and the
volumes JSON) and queues protocol lines, so the module's logic is exercised
without starting Python and torch. The real process is used by the main tests.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from UNetSegmentLib.progress import format_error_line, format_progress_line, format_result_line


def argument(command: Sequence[str], flag: str) -> str:
    return command[list(command).index(flag) + 1]


class FakeProcess:
    """``labels_from_input(array_zyx) -> labels_zyx`` decides the labelmap; ``exit_code``/``error`` a failure;
    ``corrupt_labelmap`` a result file that cannot be read; ``extra_result`` fields added to the result record
    (flags, confidence, psa)."""

    def __init__(
        self,
        labels_from_input: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        exit_code: int = 0,
        error: Optional[str] = None,
        write_result: bool = True,
        model: Optional[Dict[str, str]] = None,
        grid_change: Optional[Callable[[sitk.Image], sitk.Image]] = None,
        structure_names: Optional[Dict[int, str]] = None,
        corrupt_labelmap: bool = False,
        extra_result: Optional[Dict[str, object]] = None,
    ) -> None:
        self.labels_from_input = labels_from_input
        self.exit_code = exit_code
        self.error = error
        self.write_result = write_result
        self.model = model or {"id": "tiny-test-model", "version": "0.0.1"}
        self.grid_change = grid_change
        self.structure_names = structure_names or {1: "prostate"}
        self.corrupt_labelmap = corrupt_labelmap
        self.extra_result = dict(extra_result or {})
        self.command: List[str] = []
        self.env: Dict[str, str] = {}
        self._lines: List[str] = []
        self.killed = False

    def start(self, args: Sequence[str], env: Dict[str, str], cwd: str) -> None:
        self.command, self.env = list(args), dict(env)
        lines = [format_progress_line("loading", 1.0, 0.04, "model"), format_progress_line("inference", 0.5, 0.5)]
        if self.error is not None:
            lines.append(format_error_line(self.exit_code, self.error))
        elif self.write_result and self.labels_from_input is not None:
            lines.append(format_result_line(self._writeOutputs()))
        lines.append("a line that is not part of the protocol")
        self._lines = lines

    def _writeOutputs(self) -> dict:
        image = sitk.ReadImage(self.command[self.command.index("segment") + 1])
        labels_zyx = self.labels_from_input(sitk.GetArrayFromImage(image)).astype(np.uint8)
        labelmap = sitk.GetImageFromArray(labels_zyx)
        labelmap.CopyInformation(image)
        if self.grid_change is not None:
            labelmap = self.grid_change(labelmap)
        sitk.WriteImage(labelmap, argument(self.command, "-o"), True)
        if self.corrupt_labelmap:  # a result file that cannot be read: its header only, data cut off
            path = argument(self.command, "-o")
            with open(path, "rb") as f:
                header = f.read().split(b"\n\n")[0]
            with open(path, "wb") as f:
                f.write(header + b"\n\n")
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        volumes = {name: float((labels_zyx == v).sum() * voxel_ml) for v, name in self.structure_names.items()}
        result = {"model": self.model, "volumes_ml": volumes, "device": "cpu", "seconds": 0.1, **self.extra_result}
        with open(argument(self.command, "--volumes-json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        return result

    def readLines(self) -> List[str]:
        lines, self._lines = self._lines, []
        return lines

    def exitCode(self) -> Optional[int]:
        if self._lines:
            return None
        return 130 if self.killed else self.exit_code

    def kill(self) -> None:
        self.killed = True
        self._lines = []
