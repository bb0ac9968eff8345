"""The input catalogue through the Slicer module's process path: a plain message in the panel, the scene unchanged.

The module writes the selected volume to a temporary NRRD and runs
``python -m UNetSegmentLib segment ... --progress machine`` in the background.
Here the process is the real command line, run in this process
(``UNetSegmentLib.cli.main``) on the catalogue's input instead of the module's
NRRD, so what the module reads is the CLI's real output for each bad input
(protocol lines, the error line, the exit code). It must turn each into one
plain message, without a traceback, and leave the scene and the temporary
folder as they were. Kept apart from test_slicer_module.py, whose stand-in is
being reworked.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
from conftest import SHARED_DATA
from input_catalogue import CATALOGUE, Case
from slicer_standin.helpers import makeInputVolume

from UNetSegmentLib.cli import main

pytest_plugins = ("slicer_standin.fixtures",)


class CatalogueProcess:
    """A ProcessProtocol that runs the real CLI in-process on ``source`` in place of the module's input file."""

    def __init__(self, source: Path, extra: Sequence[str]) -> None:
        self.source, self.extra = source, list(extra)
        self.command: List[str] = []
        self._lines: List[str] = []
        self._code: Optional[int] = None

    def start(self, args: Sequence[str], env: Dict[str, str], cwd: str) -> None:
        self.command = list(args)
        argv = self.command[self.command.index("segment") :]
        argv[1] = str(self.source)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            self._code = main(argv + self.extra)
        self._lines = out.getvalue().splitlines() + err.getvalue().splitlines()

    def readLines(self) -> List[str]:
        lines, self._lines = self._lines, []
        return lines

    def exitCode(self) -> Optional[int]:
        return None if self._lines else self._code

    def kill(self) -> None:
        pass


def _scene_ids(slicer):
    return sorted(n.GetID() for n in slicer.mrmlScene.GetNodes())


def _params():
    for case in CATALOGUE:
        marks = [pytest.mark.shared_data] if case.real_data else []
        yield pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_catalogue_input_gives_a_plain_message_and_leaves_the_scene(case: Case, slicer_env, tiny_package):
    import sys

    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    before = _scene_ids(slicer)
    folder = slicer_env.tmp / "case"
    folder.mkdir()
    source, extra = case.build(folder, SHARED_DATA)
    process = CatalogueProcess(source, extra)
    logic = slicer_env.module.UNetSegmentLogic(pythonCommand=[sys.executable], processFactory=lambda: process)
    with pytest.raises(RuntimeError) as info:
        logic.segment(volume, modelSpec=str(tiny_package.path), device="cpu", wait=True)
    message = str(info.value)
    assert logic.lastRun.status == "failed" and logic.lastRun.exitCode == case.code
    assert "\n" not in message and "Traceback" not in message and message
    for word in case.words:  # the CLI's reason reaches the panel
        assert word.lower() in message.lower(), f"{case.name}: {word!r} not in {message!r}"
    assert _scene_ids(slicer) == before
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not list(slicer_env.temp.glob("UNetSegment-*"))  # the run's temporary folder is gone
