"""``slicer.app`` and ``slicer.modules`` over Slicer's real core: the Qt-side pieces that slicer-core lacks.

In Slicer these are Qt classes (``qSlicerCoreApplication``,
``qSlicerCoreIOManager``, ``qSlicerAbstractCoreModule``, the subject
hierarchy plugin logic). Here they are thin Python objects that hand every
piece of real work to the C++ logics of ``slicer-core``:

- reading a volume is ``vtkSlicerVolumesLogic.AddArchetypeVolume`` (Slicer's
  reader with its RAS/LPS and handedness rules), writing one is the node's
  own default storage node;
- ``slicer.modules.<name>.logic()`` are the real module logics, created once
  per scene, with the segmentation conversion rules registered as Slicer's
  Segmentations module does at startup;
- new data nodes get a subject hierarchy item, as the subject hierarchy
  plugin logic does in Slicer.

Qt's event loop is :meth:`Application.processEvents`, which runs the
timeouts of started ``qt.QTimer`` objects whose interval has elapsed.
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable, Dict, List, Optional

import vtk

#: qSlicerVolumesReader's options, as bits of vtkSlicerVolumesLogic's ``loadingOptions``.
_VOLUME_OPTION_BITS = {"labelmap": 1, "center": 2, "singleFile": 4, "autoWindowLevel": 8, "discardOrientation": 16}
_VOLUME_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd", ".dcm", ".img.gz", ".hdr")


def _stringArray(array: Any) -> List[str]:
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


class CoreIOManager:
    """``qSlicerCoreIOManager``: load volumes through the volumes logic, export through storage nodes."""

    def __init__(self, scene: Any, logics: Dict[str, Any]) -> None:
        self.scene = scene
        self.logics = logics

    def fileType(self, fileName: Any) -> str:
        name = str(fileName).lower()
        if os.path.isdir(name) or name.endswith(_VOLUME_EXTENSIONS):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, fileType: str, properties: Dict[str, Any], loadedNodes: Any, userMessages: Any = None) -> bool:
        if fileType != "VolumeFile":
            raise NotImplementedError(f"the stand-in IO manager reads volumes only, not {fileType}")
        fileName = str(properties["fileName"])
        options = sum(bit for key, bit in _VOLUME_OPTION_BITS.items() if properties.get(key))
        name = properties.get("name") or self._baseName(fileName)
        fileList = vtk.vtkStringArray()
        for extra in properties.get("fileNames", []) or []:
            fileList.InsertNextValue(str(extra))
        node = self.logics["volumes"].AddArchetypeVolume(fileName, name, options, fileList, userMessages)
        if node is None:
            return False
        loadedNodes.AddItem(node)
        return True

    @staticmethod
    def _baseName(fileName: str) -> str:
        base = os.path.basename(fileName)
        for extension in _VOLUME_EXTENSIONS:
            if base.lower().endswith(extension):
                return base[: -len(extension)]
        return base

    def fileWriterExtensions(self, node: Any) -> List[str]:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            return []
        storage.UnRegister(None)  # a new reference, owned by this variable
        formats = _stringArray(storage.GetSupportedWriteFileTypes())
        if not formats:  # slicer-core lists no ITK writers before ITK's IO factories load; the default one works
            extension = storage.GetDefaultWriteFileExtension()
            formats = [f"{extension.upper()} (.{extension})"]
        return formats

    def extractKnownExtension(self, fileName: Any, node: Any) -> str:
        import slicer

        known = [
            slicer.vtkDataFileFormatHelper.GetFileExtensionFromFormatString(f) for f in self.fileWriterExtensions(node)
        ]
        matches = [e for e in known if e and str(fileName).lower().endswith(e.lower())]
        return max(matches, key=len) if matches else ""

    def exportNodes(
        self,
        nodeIDs: List[str],
        fileNames: List[str],
        properties: Dict[str, Any],
        hardenTransform: bool,
        userMessages: Any = None,
    ) -> bool:
        if hardenTransform:
            raise NotImplementedError("the stand-in IO manager does not export in world coordinates")
        success = True
        for nodeID, fileName in zip(nodeIDs, fileNames):
            node = self.scene.GetNodeByID(nodeID)
            storage = node.CreateDefaultStorageNode()
            storage.UnRegister(None)  # a new reference, owned by this variable
            storage.SetScene(self.scene)
            storage.SetFileName(str(fileName))
            if properties.get("fileFormat"):
                storage.SetWriteFileFormat(properties["fileFormat"])
            storage.SetUseCompression(int(properties.get("useCompression", 1)))
            success = bool(storage.WriteData(node)) and success
        return success


class MainWindow:
    """``qSlicerMainWindow`` as far as ``slicer.util.mainWindow()`` needs it."""

    objectName = "qSlicerMainWindow"

    def statusBar(self) -> None:
        return None


class Application:
    majorVersion = 5
    minorVersion = 12
    applicationName = "Slicer"
    applicationVersion = "5.12.4-standin"

    def __init__(
        self,
        temporaryPath: str,
        scene: Any,
        logics: Dict[str, Any],
        testingEnabled: bool = True,
        mainWindow: bool = True,
    ) -> None:
        self.temporaryPath = temporaryPath
        self._testingEnabled = testingEnabled
        self._mainWindow = MainWindow() if mainWindow else None
        self._ioManager = CoreIOManager(scene, logics)
        self._startupSlots: List[Callable] = []

    def testingEnabled(self) -> bool:
        return self._testingEnabled

    def setTestingEnabled(self, enabled: bool) -> None:
        self._testingEnabled = bool(enabled)

    def commandOptions(self) -> Any:
        return types.SimpleNamespace(testingEnabled=self._testingEnabled, noMainWindow=self._mainWindow is None)

    def topLevelWidgets(self) -> List[Any]:
        return [self._mainWindow] if self._mainWindow is not None else []

    def coreIOManager(self) -> CoreIOManager:
        return self._ioManager

    ioManager = coreIOManager

    def processEvents(self, *args: Any) -> None:
        import qt

        qt.QTimer.fireDue()

    def setOverrideCursor(self, cursor: Any) -> None:
        import qt

        qt.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        import qt

        qt.QApplication.restoreOverrideCursor()

    @property
    def overrideCursorDepth(self) -> int:
        import qt

        return len(qt.QApplication._cursors)

    def connect(self, signal: str, slot: Callable) -> None:
        if signal == "startupCompleted()":
            self._startupSlots.append(slot)

    def completeStartup(self) -> None:
        """What Slicer does once all modules are loaded: emit ``startupCompleted()``."""
        for slot in self._startupSlots:
            slot()


_MODULE_NAMES = {
    "colors": "Colors",
    "subjecthierarchy": "SubjectHierarchy",
    "transforms": "Transforms",
    "terminologies": "Terminologies",
    "volumes": "Volumes",
    "segmentations": "Segmentations",
}


def makeLogics(slicer: Any, scene: Any) -> Dict[str, Any]:
    """The real module logics on ``scene``, set up as Slicer's module classes do when they start."""
    appLogic = slicer.vtkMRMLApplicationLogic()
    appLogic.SetMRMLScene(scene)
    logics: Dict[str, Any] = {"application": appLogic}
    # Slicer loads its default colour tables and terminologies from its share folder, which
    # slicer-core does not ship: quiet their "file not found" errors while the logics start
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    for key, cls in (
        ("colors", slicer.vtkSlicerColorLogic),
        ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("transforms", slicer.vtkSlicerTransformLogic),
        ("terminologies", slicer.vtkSlicerTerminologiesModuleLogic),
        ("volumes", slicer.vtkSlicerVolumesLogic),
        ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(_MODULE_NAMES[key], logic)
        logics[key] = logic
    vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    _registerConversionRules(slicer)
    _addSubjectHierarchyItems(slicer, scene)
    return logics


def _registerConversionRules(slicer: Any) -> None:
    """What ``qSlicerSegmentationsModule::setup`` does: make the representations convertible."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetName() for rule in factory.GetConverterRules()}
    for cls in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        rule = cls()
        if rule.GetName() not in registered:
            factory.RegisterConverterRule(rule)


def _addSubjectHierarchyItems(slicer: Any, scene: Any) -> None:
    """The subject hierarchy plugin logic's job: an item under the scene for each new data node."""
    dataClasses = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTransformNode", "vtkMRMLModelNode")

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(caller: Any, event: Any, node: Any) -> None:
        if node is None or node.GetHideFromEditors() or not any(node.IsA(c) for c in dataClasses):
            return
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if shNode is not None and not shNode.GetItemByDataNode(node):
            shNode.CreateItem(shNode.GetSceneItemID(), node)

    scene.AddObserver(scene.NodeAddedEvent, onNodeAdded)


def makeModules(logics: Dict[str, Any], modulePaths: Optional[Dict[str, str]] = None) -> Any:
    """``slicer.modules``: one entry per module with ``logic()`` and ``path``, as qSlicerAbstractCoreModule has."""
    modules = types.SimpleNamespace()
    for key, logic in logics.items():
        if key != "application":
            setattr(modules, key, types.SimpleNamespace(logic=lambda logic=logic: logic, path=""))
    for name, path in (modulePaths or {}).items():
        setattr(modules, name.lower(), types.SimpleNamespace(logic=lambda: None, path=path))
    return modules
