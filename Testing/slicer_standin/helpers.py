"""Helpers for the Slicer module tests: import the module, make inputs, run the event loop."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "UNetSegment"
MODULE_FILE = MODULE_DIR / "UNetSegment.py"


def importModule() -> types.ModuleType:
    """Import ``UNetSegment.py`` (and its helper package) afresh against the installed stand-in."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    for name in list(sys.modules):
        if name == "UNetSegment" or name.startswith("UNetSegmentLogicLib"):
            del sys.modules[name]
    return importlib.import_module("UNetSegment")


def ijkToRas(spacing: Sequence[float], origin: Sequence[float], rotationDeg: float) -> np.ndarray:
    """4x4 IJK-to-RAS: axial slices rotated ``rotationDeg`` about S (oblique in-plane), spacing in mm."""
    a = np.deg2rad(rotationDeg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def makeInputVolume(
    slicer: Any,
    name: str = "T2",
    size_ijk=(64, 64, 16),
    spacing=(1.0, 1.0, 3.0),
    rotationDeg: float = 20.0,
    seed: int = 0,
) -> Any:
    """A noisy volume with a bright ellipsoid, on an oblique grid; array in (k, j, i) order."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = size_ijk
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    r = ((i - ni / 2) / (ni / 5)) ** 2 + ((j - nj / 2) / (nj / 6)) ** 2 + ((k - nk / 2) / (nk / 4)) ** 2
    array_kji = (200 + 300 * (r < 1) + rng.normal(0, 20, r.shape)).astype(np.int16)
    return slicer.util.addVolumeFromArray(
        array_kji, ijkToRAS=ijkToRas(spacing, (-30.0, 12.0, 5.0), rotationDeg), name=name
    )


def addLinearTransform(slicer: Any, name: str = "Registration", matrix: Optional[np.ndarray] = None) -> Any:
    import vtk

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    m = vtk.vtkMatrix4x4()
    values = matrix if matrix is not None else ijkToRas((1, 1, 1), (5.0, -3.0, 12.0), 15.0)
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(values[r, c]))
    node.SetMatrixTransformToParent(m)
    return node


def matrixArray(m: Any) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def pumpEvents(slicer: Any, until, timeout: float = 600.0) -> None:
    """Run the stand-in's event loop (timers) until ``until()`` is true."""
    import time

    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("the background run did not finish in time")
        slicer.app.processEvents()
        time.sleep(0.02)


def shownMessages() -> list:
    """``(kind, text, detailedText)`` of each message box shown so far; kind from the icon (error, question, ...)."""
    import ctk
    import qt

    kinds = {
        qt.QMessageBox.Critical: "error",
        qt.QMessageBox.Warning: "warning",
        qt.QMessageBox.Question: "question",
        qt.QMessageBox.Information: "information",
    }
    return [
        (kinds.get(box.icon, "none"), box.text, box.detailedText or None)
        for box in qt.QDialog.shown
        if isinstance(box, ctk.ctkMessageBox)
    ]
