"""``slicer.util`` of the stand-in: same names, signatures and failure behaviour as Slicer 5.8.

Dialogs are recorded in ``slicer.util.messages`` (kind, text) instead of
shown; confirmations return what a test queued in ``slicer.util.answers``,
else the value Slicer returns in testing mode. ``pip_install`` only records
its arguments in ``slicer.util.pipCalls``: tests never change the Python
environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import vtk

from . import segmentations, uiloader, volumeio


def makeUtilModule(slicer: types.ModuleType) -> types.ModuleType:
    util = types.ModuleType("slicer.util")
    util.messages = []  # (kind, text)
    util.answers = []  # queued return values of confirm* dialogs
    util.pipCalls = []
    util.modulePaths = {}  # module name -> path of its .py file

    def scene() -> Any:
        return slicer.mrmlScene

    # -- arrays and volumes ---------------------------------------------------------
    def arrayFromVolume(volumeNode: Any) -> np.ndarray:
        """``(k, j, i)`` view of the volume's voxels (modifying it modifies the volume)."""
        return segmentations.volumeArray(volumeNode)

    def updateVolumeFromArray(volumeNode: Any, narray: np.ndarray) -> None:
        if narray.ndim != 3:
            raise RuntimeError("Unsupported numpy array shape: " + str(narray.shape) + " expected (K,J,I)")
        volumeNode.SetAndObserveImageData(volumeio.imageDataFromArray(narray))
        volumeNode.CreateDefaultDisplayNodes()

    def addVolumeFromArray(
        narray: np.ndarray, ijkToRAS: Any = None, name: Optional[str] = None, nodeClassName: Optional[str] = None
    ) -> Any:
        node = scene().AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
        if ijkToRAS is not None:
            matrix = ijkToRAS
            if not isinstance(ijkToRAS, vtk.vtkMatrix4x4):
                matrix = vtk.vtkMatrix4x4()
                for r in range(4):
                    for c in range(4):
                        matrix.SetElement(r, c, float(ijkToRAS[r][c]))
            node.SetIJKToRASMatrix(matrix)
        updateVolumeFromArray(node, narray)
        return node

    def arrayFromSegmentBinaryLabelmap(
        segmentationNode: Any, segmentId: str, referenceVolumeNode: Any = None
    ) -> np.ndarray:
        """Mask of one segment on the reference volume's grid (the stand-in requires the same grid)."""
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if segment is None:
            raise ValueError(f"no segment {segmentId}")
        image = segment.GetRepresentation(segmentations.BINARY_LABELMAP)
        ref = vtk.vtkMatrix4x4()
        referenceVolumeNode.GetIJKToRASMatrix(ref)
        refArray = np.array([[ref.GetElement(r, c) for c in range(4)] for r in range(4)])
        refShape = arrayFromVolume(referenceVolumeNode).shape
        if image is None:
            return np.zeros(refShape, dtype=np.uint8)
        if image.array_kji.shape != refShape or not np.allclose(image.ijkToRas, refArray, atol=1e-4):
            raise NotImplementedError("the Slicer stand-in does not resample segments to another grid")
        return (image.array_kji == segment.GetLabelValue()).astype(np.uint8)

    # -- files --------------------------------------------------------------------
    def _loadVolume(filename: Any, properties: Dict[str, Any], className: str, displayClass: str) -> Any:
        image = volumeio.readVolume(str(filename))
        base = os.path.basename(str(filename))
        for ext in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha"):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
                break
        node = slicer.mrmlScene.CreateNodeByClass(className)
        node._name = scene().GenerateUniqueName(properties.get("name") or base)
        volumeio.setNodeFromImage(node, image)
        scene().AddNode(node)
        storage = scene().AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(filename))
        node.SetAndObserveStorageNodeID(storage.GetID())
        display = scene().AddNewNodeByClass(displayClass)
        node.SetAndObserveDisplayNodeID(display.GetID())
        return node

    def loadVolume(filename: Any, properties: Dict[str, Any] = {}, returnNode: bool = False) -> Any:  # noqa: B006 - Slicer's signature
        if properties.get("labelmap"):
            return _loadVolume(filename, properties, "vtkMRMLLabelMapVolumeNode", "vtkMRMLLabelMapVolumeDisplayNode")
        return _loadVolume(filename, properties, "vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeDisplayNode")

    def loadLabelVolume(filename: Any, properties: Dict[str, Any] = {}, returnNode: bool = False) -> Any:  # noqa: B006
        properties["labelmap"] = True
        return loadVolume(filename, properties, returnNode)

    def saveNode(node: Any, filename: Any, properties: Dict[str, Any] = {}) -> bool:  # noqa: B006
        """Write and make the node's storage node point at ``filename`` (as Slicer does)."""
        success = volumeio.writeVolume(node, str(filename))
        if success:
            node.AddDefaultStorageNode()
            node.GetStorageNode().SetFileName(str(filename))
        else:
            logging.error(f"Failed to save node to file: {filename}")
        return success

    def exportNode(node: Any, filename: Any, properties: Dict[str, Any] = {}, world: bool = False) -> bool:  # noqa: B006
        """Write without touching the node's storage node; ``world`` hardens parent transforms."""
        success = volumeio.writeVolume(node, str(filename), world=world)
        if not success:
            logging.error(f"Failed to export node to file: {filename}")
        return success

    # -- nodes --------------------------------------------------------------------
    def getNodesByClass(className: str, scene_: Any = None) -> List[Any]:
        return (scene_ or scene()).GetNodesByClass(className)

    def getFirstNodeByClassByName(className: str, name: str, scene_: Any = None) -> Any:
        return next((n for n in getNodesByClass(className, scene_) if n.GetName() == name), None)

    def getNode(pattern: str = "*", index: int = 0, scene_: Any = None) -> Any:
        import fnmatch

        nodes = [
            n
            for n in (scene_ or scene()).GetNodes()
            if fnmatch.fnmatchcase(n.GetName() or "", pattern) or n.GetID() == pattern
        ]
        if len(nodes) <= index:
            raise util.MRMLNodeNotFoundException(f"could not find nodes in the scene by name or id '{pattern}'")
        return nodes[index]

    class MRMLNodeNotFoundException(Exception):
        pass

    # -- dialogs ------------------------------------------------------------------
    def _record(kind: str) -> Callable:
        def display(
            text: str, windowTitle: Optional[str] = None, parent: Any = None, standardButtons: Any = None, **kwargs: Any
        ) -> None:
            util.messages.append((kind, str(text), kwargs.get("detailedText")))

        return display

    def _confirm(kind: str, testingValue: bool) -> Callable:
        def confirm(text: str, windowTitle: Optional[str] = None, parent: Any = None, **kwargs: Any) -> bool:
            util.messages.append((kind, str(text), kwargs.get("detailedText")))
            return util.answers.pop(0) if util.answers else testingValue

        return confirm

    @contextlib.contextmanager
    def tryWithErrorDisplay(message: Optional[str] = None, show: bool = True, waitCursor: bool = False):
        """Slicer's code path: show ``message`` + error (traceback only as details), then re-raise."""
        try:
            if waitCursor:
                slicer.app.setOverrideCursor(3)
            yield
            if waitCursor:
                slicer.app.restoreOverrideCursor()
        except Exception as e:
            if waitCursor:
                slicer.app.restoreOverrideCursor()
            if show and not slicer.app.testingEnabled():
                import traceback

                text = f"{message}\n\n{e}" if message is not None else str(e)
                util.messages.append(("error", text, traceback.format_exc()))
            raise

    def pip_install(requirements: Any) -> None:
        if not isinstance(requirements, (str, list)):
            raise ValueError("pip_install requirement input must be string or list")
        util.pipCalls.append(requirements)

    # -- settings, paths, UI ---------------------------------------------------------
    def toBool(value: Any) -> bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)

    def settingsValue(key: str, default: Any, converter: Callable = lambda v: v, settings: Any = None) -> Any:
        import qt

        value = qt.QSettings().value(key, None)
        return converter(value) if value is not None else default

    def modulePath(moduleName: str) -> str:
        return util.modulePaths[moduleName]

    def tempDirectory(key: str = "__SlicerTemp__", tempDir: Optional[str] = None, includeDateTime: bool = True) -> str:
        import tempfile

        return tempfile.mkdtemp(prefix=key, dir=tempDir or slicer.app.temporaryPath)

    class VTKObservationMixin:
        def __init__(self) -> None:
            super().__init__()
            self.Observations: List[tuple] = []

        def addObserver(
            self, obj: Any, event: Any, method: Callable, group: str = "none", priority: float = 0.0
        ) -> None:
            if self.hasObserver(obj, event, method):
                return
            tag = obj.AddObserver(event, method, priority)
            self.Observations.append((obj, event, method, group, tag, priority))

        def removeObserver(self, obj: Any, event: Any, method: Callable) -> None:
            for o in list(self.Observations):
                if o[0] is obj and o[1] == event and o[2] == method:
                    obj.RemoveObserver(o[4])
                    self.Observations.remove(o)

        def removeObservers(self, method: Optional[Callable] = None) -> None:
            for o in list(self.Observations):
                if method is None or o[2] == method:
                    o[0].RemoveObserver(o[4])
                    self.Observations.remove(o)

        def hasObserver(self, obj: Any, event: Any, method: Callable) -> bool:
            return any(o[0] is obj and o[1] == event and o[2] == method for o in self.Observations)

    names = dict(locals())
    for name, value in names.items():
        if not name.startswith("_") and name not in ("util", "slicer", "names", "scene"):
            setattr(util, name, value)
    util.errorDisplay = _record("error")
    util.warningDisplay = _record("warning")
    util.infoDisplay = _record("info")
    util.delayDisplay = lambda message, autoCloseMsec=1000, parent=None, **kwargs: util.messages.append(
        ("delay", str(message), None)
    )
    util.showStatusMessage = lambda message, duration=0: util.messages.append(("status", str(message), None))
    util.confirmOkCancelDisplay = _confirm("confirmOkCancel", True)
    util.confirmYesNoDisplay = _confirm("confirmYesNo", True)
    util.loadUI = uiloader.loadUI
    util.childWidgetVariables = uiloader.childWidgetVariables
    util.mainWindow = lambda: None
    util.startupEnvironment = lambda: dict(os.environ)
    return util
