"""UNetSegment: prostate segmentation of T2-weighted MRI with a 3D U-Net, as a 3D Slicer module.

The network runs in a background process (``PythonSlicer -m UNetSegmentLib segment ...``: ONNX
Runtime on the CPU, PyTorch on the GPU), so torch is never imported into Slicer and the GUI stays
responsive; this file writes the input, follows the progress lines and imports the result. Runs on
Slicer 5.8 (Python 3.9) and later. No ``from __future__ import annotations``: ``parameterNodeWrapper``
evaluates the parameter annotations at class creation.
"""

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from UNetSegmentLogicLib import dependencies, dicomrefs, findings, results
from UNetSegmentLogicLib import run as runlib
from UNetSegmentLogicLib.models import ModelChoice, listModelChoices, modelLabels
from UNetSegmentLogicLib.options import Device, Quality
from UNetSegmentLogicLib.process import BackgroundProcess, processEnvironment, pythonSlicerCommand

TERMINOLOGY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "prostate.term.json")
DEFAULT_MODEL_ID = "prostate-wholegland-t2"  # UNetSegmentLib.store.DEFAULT_MODEL_ID, without importing it at startup


def loadTerminology() -> str:
    """Register the module's terminology context with Slicer; returns its name ("" if unavailable)."""
    try:
        return slicer.modules.terminologies.logic().LoadTerminologyFromFile(TERMINOLOGY_FILE)
    except AttributeError:  # Terminologies module not loaded (e.g. --disable-modules)
        return ""


# -- UNetSegment --


class UNetSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("UNet Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["UNetSegment developers"]
        self.parent.helpText = _(
            "Fully automatic segmentation of the prostate on T2-weighted MRI with a 3D U-Net. "
            "Choose the T2 volume and click <b>Segment Prostate</b>; the first run installs the Python "
            "packages it needs and, if the model is not installed, downloads it. "
            "Research use only: not a medical device."
        )
        self.parent.acknowledgementText = _(
            "The network follows Çiçek et al., 3D U-Net, MICCAI 2016. Models are trained on public "
            "prostate MRI collections; each model states its training data and licence in the panel."
        )
        slicer.app.connect("startupCompleted()", loadTerminology)


# -- Parameter node --


@parameterNodeWrapper
class UNetSegmentParameterNode:
    """inputVolume: T2; outputSegmentation: None = create one; modelSpec: ``id@version`` ("" = default); psa: 0 = none."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelSpec: str = ""
    device: Device = Device.AUTO
    quality: Quality = Quality.STANDARD
    show3D: bool = True
    psa: float = 0.0


# -- UNetSegmentWidget --


class UNetSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    SEGMENT_TEXT = _("Segment Prostate")
    CANCEL_TEXT = _("Cancel")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelChoices: List[ModelChoice] = []
        self._infoRun = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UNetSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNetSegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.openCacheFolderButton.connect("clicked(bool)", self.onOpenCacheFolder)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.reinstallDependenciesButton.connect("clicked(bool)", self.onReinstallDependencies)
        self.ui.showVersionsButton.connect("clicked(bool)", self.onShowVersions)

        self.ui.progressBar.visible = False
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[UNetSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    # -- GUI state ------------------------------------------------------------------------
    def updateGUI(self, caller=None, event=None) -> None:
        """Button, model selector and enabled state from the parameter node and the running state."""
        running = self.logic.isRunning()
        p = self._parameterNode
        self.ui.segmentButton.text = self.CANCEL_TEXT if running else self.SEGMENT_TEXT
        if running:
            self.ui.segmentButton.enabled = True
            self.ui.segmentButton.toolTip = _("Stop the segmentation; the scene is left as it was.")
        elif p and p.inputVolume and self._modelChoices:
            self.ui.segmentButton.enabled = True
            self.ui.segmentButton.toolTip = _("Segment the prostate in the selected T2 volume.")
        else:
            self.ui.segmentButton.enabled = False
            self.ui.segmentButton.toolTip = _("Select a T2 volume (and a model) first.")
        for widget in (
            self.ui.inputsCollapsibleButton,
            self.ui.modelCollapsibleButton,
            self.ui.advancedCollapsibleButton,
        ):
            widget.enabled = not running
        self._selectModel(p.modelSpec if p else "")

    def refreshModels(self) -> None:
        """Fill the model selector from the installed models and the catalogue."""
        try:
            self._modelChoices = self.logic.modelChoices()
            problem = "" if self._modelChoices else _("No model is installed or listed in the catalogue.")
        except Exception as e:  # noqa: BLE001 - a broken cache must not break the panel
            self._modelChoices, problem = [], _("Models cannot be listed: {error}").format(error=e)
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for choice in self._modelChoices:
            self.ui.modelComboBox.addItem(choice.label, choice.spec)
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self.ui.modelInfoLabel.text = problem
        p = self._parameterNode
        if p and self._modelChoices and p.modelSpec not in [c.spec for c in self._modelChoices]:
            p.modelSpec = self._modelChoices[0].spec  # none chosen yet, or the chosen one is gone (cache cleared)
        if p:
            self.updateGUI()
        else:
            self._selectModel("")

    def _selectModel(self, spec: str) -> None:
        index = next((i for i, c in enumerate(self._modelChoices) if c.spec == spec), 0 if self._modelChoices else -1)
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.currentIndex = index
        self.ui.modelComboBox.blockSignals(wasBlocked)
        if index >= 0:
            self.ui.modelInfoLabel.text = self._modelChoices[index].summary()

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._modelChoices):
            self._parameterNode.modelSpec = self._modelChoices[index].spec

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # -- segmentation ------------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self.logic.isRunning():
            self.ui.statusLabel.text = _("Cancelling...")
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies(device=p.device.value)
            self.ui.logTextEdit.clear()
            self.ui.resultsTable.setRowCount(0)
            self.ui.findingsLabel.text = ""
            self.ui.progressBar.value = 0
            self.ui.progressBar.visible = True
            try:
                self.logic.segment(
                    p.inputVolume,
                    p.outputSegmentation,
                    modelSpec=self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) or "",
                    device=p.device.value,
                    quality=p.quality.value,
                    show3D=p.show3D,
                    psa=p.psa,
                    progressCallback=self.onProgress,
                    logCallback=self.appendLog,
                    finishedCallback=self.onFinished,
                )
            except Exception:
                self.ui.progressBar.visible = False
                raise
            finally:
                self.updateGUI()

    def onProgress(self, stage: str, overall: float, message: str) -> None:
        label = runlib.STAGE_LABELS.get(stage, stage)
        self.ui.progressBar.value = int(round(100 * overall))
        self.ui.progressBar.format = f"{label}: %p%"
        self.ui.statusLabel.text = f"{label}: {message}" if message else f"{label}..."

    def onFinished(self, run: runlib.SegmentationRun) -> None:
        self.ui.progressBar.visible = False
        self.updateGUI()
        if run.status == runlib.SUCCEEDED:
            p = self._parameterNode
            if p is not None and run.segmentationNode is not None:
                p.outputSegmentation = run.segmentationNode
            self.showVolumes(run)
            done, result = _("Done in {seconds:.0f} s on {device}."), run.result
            self.ui.statusLabel.text = done.format(seconds=result.get("seconds", 0.0), device=result.get("device", "?"))
            self.refreshModels()  # a model downloaded by this run is now installed
        elif run.status == runlib.CANCELLED:
            self.ui.statusLabel.text = run.message
        else:
            self.ui.statusLabel.text = _("Failed: {message}").format(message=run.message)
            tail = "\n".join(self.ui.logTextEdit.plainText.splitlines()[-30:])
            slicer.util.errorDisplay(run.message, windowTitle=_("UNetSegment"), detailedText=tail)

    def showVolumes(self, run: runlib.SegmentationRun) -> None:
        """Volumes, PSA density and confidence in the Results table; the quality flags under it."""
        rows = findings.resultRows(run.result, run.labels)
        self.ui.resultsTable.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                self.ui.resultsTable.setItem(row, column, qt.QTableWidgetItem(text))
        self.ui.findingsLabel.text = findings.flagsText(run.result)

    # -- advanced ----------------------------------------------------------------------------
    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model"), "", _("Model package (*.zip)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            info = self.logic.importModelZip(path)
            self.refreshModels()
            self._parameterNode.modelSpec = f"{info.id}@{info.version}"
            self.ui.statusLabel.text = _("Imported model {name} {version}.").format(
                name=info.name, version=info.version
            )

    def onOpenCacheFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The model cache folder could not be opened.")):
            folder = self.logic.cacheFolder()
            os.makedirs(folder, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def onClearCache(self) -> None:
        folder = self.logic.cacheFolder()
        text = _("Delete all downloaded models in {folder}? Models bundled with the extension stay.").format(
            folder=folder
        )
        if not slicer.util.confirmYesNoDisplay(text, windowTitle=_("Clear model cache")):
            return
        with slicer.util.tryWithErrorDisplay(_("The model cache could not be cleared."), waitCursor=True):
            self.logic.clearCache()
            self.refreshModels()
            self.ui.statusLabel.text = _("Model cache cleared.")

    def onReinstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The Python packages could not be reinstalled."), waitCursor=True):
            self.logic.ensureDependencies(device=self._parameterNode.device.value, reinstall=True)
            self.ui.statusLabel.text = _("Python packages reinstalled.")

    def onShowVersions(self) -> None:
        self.ui.logCollapsibleButton.collapsed = False
        for line in self.logic.versionLines():
            self.appendLog(line)
        with slicer.util.tryWithErrorDisplay(_("The GPU check could not start.")):
            self._infoRun = self.logic.runInfo(logCallback=self.appendLog)


# -- UNetSegmentLogic --


class UNetSegmentLogic(ScriptedLoadableModuleLogic):
    """Segmentation without the GUI: ``logic.segment(volume, wait=True)`` returns the segmentation node.

    ``processFactory`` makes the background process (tests pass a fake); ``pythonCommand`` is the interpreter
    that runs UNetSegmentLib (default: ``[PythonSlicer]``). One run at a time.
    """

    POLL_INTERVAL_MS = 200

    def __init__(
        self, processFactory: Callable[[], Any] = BackgroundProcess, pythonCommand: Optional[List[str]] = None
    ) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory
        self.pythonCommand = pythonCommand
        self.keepTemporaryFiles = False
        self.lastRun: Optional[runlib.SegmentationRun] = None
        self._active: Optional[Dict[str, Any]] = None
        self._timer = None
        self._terminologyContext: Optional[str] = None

    def getParameterNode(self):
        return UNetSegmentParameterNode(super().getParameterNode())

    # -- models and packages -----------------------------------------------------------------
    def store(self):
        from UNetSegmentLib.store import ModelStore

        return ModelStore()

    def modelChoices(self) -> List[ModelChoice]:
        return listModelChoices(self.store(), DEFAULT_MODEL_ID)

    def importModelZip(self, path: str):
        """Install a model package zip (checked like a download); returns its ``ModelInfo``."""
        return self.store().import_zip(path).info

    def cacheFolder(self) -> str:
        return str(self.store().root)

    def clearCache(self) -> None:
        if self.isRunning():
            raise RuntimeError(_("Wait for the segmentation to finish (or cancel it) first."))
        self.store().clear()

    def ensureDependencies(self, device: str = "cpu", reinstall: bool = False) -> None:
        """ONNX Runtime for the CPU; PyTorch (PyTorch extension) and safetensors for the GPU."""
        dependencies.ensureDependencies(slicer, device=device, reinstall=reinstall)

    def versionLines(self) -> List[str]:
        import UNetSegmentLib

        python = sys.version.split()[0]
        lines = [f"UNetSegment {UNetSegmentLib.__version__}, Slicer {slicer.app.applicationVersion}, Python {python}"]
        lines += [f"{name} {version}" for name, version in dependencies.versions().items()]
        lines += [f"model {c.spec}{'' if c.installed else ' (not installed)'}" for c in self.modelChoices()]
        return lines

    def terminologyContext(self) -> str:
        if self._terminologyContext is None:
            self._terminologyContext = loadTerminology()
        return self._terminologyContext

    # -- background process ----------------------------------------------------------------
    def _python(self) -> List[str]:
        return list(self.pythonCommand) if self.pythonCommand else pythonSlicerCommand()

    def _environment(self) -> Dict[str, str]:
        import UNetSegmentLib

        return processEnvironment(os.path.dirname(os.path.dirname(os.path.abspath(UNetSegmentLib.__file__))))

    def isRunning(self) -> bool:
        return self._active is not None

    def cancel(self) -> None:
        if self._active is not None:
            self._active["run"].cancel()

    def runInfo(self, logCallback: Optional[Callable[[str], None]] = None):
        """``UNetSegmentLib info`` (versions, GPU) in the background; its lines go to ``logCallback``."""
        command = [*self._python(), "-m", "UNetSegmentLib", "info"]
        env, cwd = self._environment(), tempfile.gettempdir()
        run = runlib.SegmentationRun(command, env, cwd, self.processFactory, onLog=logCallback, expectResult=False)
        run.start()
        run.timer = self._startTimer(lambda: run.poll() or run.timer.stop())  # lives as long as the run
        return run

    def _startTimer(self, onTimeout: Callable[[], Any]):
        timer = qt.QTimer()
        timer.timeout.connect(onTimeout)
        timer.start(self.POLL_INTERVAL_MS)
        return timer

    # -- segmentation ----------------------------------------------------------------------
    def segment(
        self,
        inputVolume,
        outputSegmentation=None,
        modelSpec: str = "",
        device: str = "auto",
        quality: str = "standard",
        show3D: bool = True,
        psa: float = 0.0,
        wait: bool = False,
        progressCallback: Optional[Callable[[str, float, str], None]] = None,
        logCallback: Optional[Callable[[str], None]] = None,
        finishedCallback: Optional[Callable[[runlib.SegmentationRun], None]] = None,
    ):
        """Segment ``inputVolume`` in a background process.

        ``modelSpec``: ``id``, ``id@version`` or a model package folder ("" = the default model). ``device``:
        auto, cpu or cuda. ``quality``: fast, standard or best. ``psa``: serum PSA (ng/mL) for the PSA density,
        0 = none (the command line refuses a value out of range). With ``wait`` the call blocks (keeping Slicer's
        events flowing) and returns the segmentation node, or raises ``RuntimeError`` with a plain message;
        otherwise it returns the :class:`SegmentationRun` at once and calls ``finishedCallback(run)`` at the end
        (``run.segmentationNode`` is set on success).
        """
        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        results.checkInputVolume(inputVolume)
        results.checkOutputSegmentation(outputSegmentation)
        tempDir = tempfile.mkdtemp(prefix="UNetSegment-", dir=slicer.app.temporaryPath)
        paths = {name: os.path.join(tempDir, name) for name in ("input.nrrd", "labelmap.nrrd", "result.json")}
        spec = modelSpec or DEFAULT_MODEL_ID
        try:
            if progressCallback:
                progressCallback("preparing", 0.0, _("writing the input volume"))
            if not slicer.util.exportNode(inputVolume, paths["input.nrrd"]) or not os.path.isfile(paths["input.nrrd"]):
                raise RuntimeError(_("The input volume could not be written to a temporary file."))
            outputs = (paths["input.nrrd"], paths["labelmap.nrrd"], paths["result.json"])
            command = runlib.segmentCommand(self._python(), *outputs, spec, device, quality, psa=psa)
            run = runlib.SegmentationRun(
                command, self._environment(), tempDir, self.processFactory, progressCallback, logCallback
            )
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        self._active = dict(run=run, tempDir=tempDir, labelmapPath=paths["labelmap.nrrd"], inputVolume=inputVolume)
        self._active.update(outputSegmentation=outputSegmentation, spec=spec, show3D=show3D, finished=finishedCallback)
        self.lastRun = run
        run.start()
        if not wait:
            self._timer = self._startTimer(self._onTimer)
            return run
        while run.poll():
            slicer.app.processEvents()
            time.sleep(0.05)
        self._finish()
        if run.status != runlib.SUCCEEDED:
            raise RuntimeError(run.message)
        return run.segmentationNode

    def _onTimer(self) -> None:
        run = self._active["run"] if self._active else None
        try:
            running = run is not None and run.poll()
        except Exception as e:  # noqa: BLE001 - a failing callback must not leave the run hanging
            logging.exception("UNetSegment: following the background process failed")
            run.cancel()
            run.status, run.message, running = runlib.FAILED, str(e), False
        if not running:
            self._finish()

    def _finish(self) -> None:
        """After the process ends: import on success, clean up, tell the caller."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        active, self._active = self._active, None
        if active is None:
            return
        run = active["run"]
        try:
            if run.status == runlib.SUCCEEDED:
                self._import(run, active)
        except Exception as e:  # noqa: BLE001 - reported as a failed run, with a plain message
            logging.exception("UNetSegment: importing the result failed")
            run.status, run.message = runlib.FAILED, _("The result could not be imported: {error}").format(error=e)
        finally:
            if not self.keepTemporaryFiles:
                shutil.rmtree(active["tempDir"], ignore_errors=True)
        if active["finished"] is not None:
            active["finished"](run)

    def _import(self, run: runlib.SegmentationRun, active: Dict[str, Any]) -> None:
        inputVolume = active["inputVolume"]
        if inputVolume.GetScene() is None:
            raise RuntimeError(_("the input volume was removed from the scene"))
        output = active["outputSegmentation"]
        if output is not None and output.GetScene() is None:
            output = None  # removed while running: make a new one
        run.report("importing", runlib.CLI_SPAN[1], _("importing the segmentation"))
        run.labels = self.modelLabels(active["spec"], run.result.get("model", {}))
        args = (active["labelmapPath"], inputVolume, run.labels, output, self.terminologyContext(), active["show3D"])
        name = f"{inputVolume.GetName()} segmentation"
        node = run.segmentationNode = results.importLabelmap(slicer, vtk, *args, name=name)
        dicomrefs.keepDicomReferences(slicer, node, inputVolume, run.labels, run.result.get("model", {}))
        run.report("importing", 1.0, _("done"))

    def modelLabels(self, spec: str, model: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The labels of the model that produced a result (see ``UNetSegmentLogicLib.models.modelLabels``)."""
        return modelLabels(self.store(), spec, model)


# -- UNetSegmentTest --


class UNetSegmentTest(ScriptedLoadableModuleTest):
    """Runs for real inside Slicer: sample data, dependencies, the default model on the CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleProstate()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _loadSample(self):
        import SampleData

        self.delayDisplay("Loading the MR-US prostate sample")
        nodes = SampleData.downloadSamples("MRUSProstate")
        return next(n for n in nodes if n.GetName() == "MRProstate")

    def test_SegmentSampleProstate(self):
        inputVolume = self._loadSample()
        logic = UNetSegmentLogic()
        logic.ensureDependencies()
        self.delayDisplay("Segmenting with the default model on the CPU (may take a few minutes)")
        segmentation = logic.segment(inputVolume, device="cpu", quality="standard", show3D=True, wait=True)
        labels = logic.lastRun.labels
        names = [segmentation.GetSegmentation().GetSegment(label["name"]).GetName() for label in labels]
        self.assertEqual(names, [label["display_name"] for label in labels])
        role = segmentation.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentation.GetNodeReferenceID(role), inputVolume.GetID())
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "prostate", inputVolume)
        spacing = inputVolume.GetSpacing()
        voxelMl = spacing[0] * spacing[1] * spacing[2] / 1000.0
        glandMl = float(mask.sum()) * voxelMl
        from UNetSegmentLib.labels import PLAUSIBLE_GLAND_ML

        low, high = PLAUSIBLE_GLAND_ML
        self.assertTrue(low <= glandMl <= high, f"implausible gland volume {glandMl:.1f} mL")
        reported = logic.lastRun.result["volumes_ml"]["prostate"]
        self.assertAlmostEqual(glandMl, reported, delta=0.02 * reported + 0.1)
        self.delayDisplay(f"Test passed: prostate {glandMl:.1f} mL")

    def test_CancelLeavesSceneUnchanged(self):
        inputVolume = self._loadSample()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic = UNetSegmentLogic()
        run = logic.segment(inputVolume, device="cpu")
        logic.cancel()
        while logic.isRunning():
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(run.status, runlib.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Test passed: cancelling left the scene unchanged")
