"""The module's panel: the ``.ui`` file against the code, and the Widget driven on Slicer's core with Qt stand-ins.

Dialogs are those of Slicer's own ``slicer.util`` (outside testing mode, so they are shown and recorded).
"""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET

import pytest
from slicer_standin.fakeprocess import FakeProcess
from slicer_standin.helpers import REPO, makeInputVolume, pumpEvents, shownMessages

pytest_plugins = ("slicer_standin.fixtures",)  # slicer_env, real_cli

MODULE_FILE = REPO / "UNetSegment" / "UNetSegment.py"
UI_FILE = REPO / "UNetSegment" / "Resources" / "UI" / "UNetSegment.ui"


def _ui_widgets():
    """name -> (class, {property: text or list})"""
    widgets = {}
    for w in ET.parse(UI_FILE).getroot().iter("widget"):
        props = {}
        for p in w.findall("property"):
            value = p[0] if len(p) else None
            if value is not None and value.tag == "stringlist":
                props[p.get("name")] = [s.text for s in value.findall("string")]
            elif value is not None:
                props[p.get("name")] = value.text
        widgets[w.get("name")] = (w.get("class"), props)
    return widgets


def _used_ui_names():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }


def _parameter_annotations():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "UNetSegmentParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_is_in_the_ui_with_a_fitting_class():
    widgets = _ui_widgets()
    missing = _used_ui_names() - set(widgets)
    assert not missing, f"used in UNetSegment.py but not in the .ui: {sorted(missing)}"
    annotations = _parameter_annotations()
    bound = {
        props["SlicerParameterName"]: (name, cls, props)
        for name, (cls, props) in widgets.items()
        if "SlicerParameterName" in props
    }
    assert set(bound) == set(annotations) - {"modelSpec"}  # the model list is filled from the store, not bound
    for parameter, (name, cls, props) in bound.items():
        kind = annotations[parameter]
        if kind.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox" and props["nodeTypes"] == [kind], name
        elif kind == "bool":
            assert cls == "QCheckBox", name
        elif kind == "float":
            assert cls == "QDoubleSpinBox", name
        else:
            assert kind in ("Device", "Quality") and cls == "QComboBox", name
    assert widgets["segmentButton"] == ("QPushButton", widgets["segmentButton"][1])
    assert widgets["segmentButton"][1]["text"] == "Segment Prostate"
    for name in ("logCollapsibleButton", "advancedCollapsibleButton"):
        assert widgets[name][0] == "ctkCollapsibleButton" and widgets[name][1]["collapsed"] == "true"


def _widget(env):
    import qt

    parent = env.slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    env.slicer.app.setTestingEnabled(False)  # dialogs are shown (and recorded) as a user would see them
    widget = env.module.UNetSegmentWidget(parent)
    widget.setup()
    widget.logic.pythonCommand = [sys.executable]
    return widget


def test_panel_binds_to_the_parameter_node_both_ways(slicer_env):
    slicer, module = slicer_env.slicer, slicer_env.module
    volume = makeInputVolume(slicer)
    w = _widget(slicer_env)
    p = w._parameterNode
    assert p.inputVolume is volume and w.ui.inputVolumeSelector.currentNode() is volume
    assert w.ui.segmentButton.enabled and w.ui.segmentButton.text == "Segment Prostate"
    assert not w.ui.progressBar.visible

    w.ui.deviceComboBox.currentIndex = 1
    assert p.device is module.Device.CPU
    p.quality = module.Quality.BEST
    assert w.ui.qualityComboBox.currentText == "Best (denser windows, slowest)"
    w.ui.show3DCheckBox.checked = False
    assert p.show3D is False
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    p.outputSegmentation = seg
    assert w.ui.outputSegmentationSelector.currentNode() is seg
    assert p.psa == 0.0 and w.ui.psaSpinBox.value == 0.0  # not given
    w.ui.psaSpinBox.value = 6.5
    assert p.psa == 6.5
    p.psa = 2000.0  # not clamped by the panel: the command line refuses it, with its own message
    assert w.ui.psaSpinBox.value == 2000.0

    p.inputVolume = None
    assert not w.ui.segmentButton.enabled


@pytest.fixture
def served_tiny_model(slicer_env, tiny_package, monkeypatch):
    """The tiny model as a zip on an HTTP server on 127.0.0.1, listed in a catalogue the module reads."""
    import functools
    import http.server
    import json
    import threading

    from UNetSegmentLib.model_package import sha256_file

    folder = slicer_env.tmp / "served"
    folder.mkdir()
    zip_path = tiny_package.to_zip(folder / "tiny.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    entry = {
        "id": "tiny-test-model",
        "version": "0.0.1",
        "name": "Tiny test model",
        "structures": ["prostate"],
        "url": f"http://127.0.0.1:{server.server_port}/tiny.zip",
        "sha256": sha256_file(zip_path),
        "size": zip_path.stat().st_size,
        "license": {"weights": "CC0-1.0 (random)"},
    }
    catalogue = folder / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": [entry]}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    yield "tiny-test-model@0.0.1"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_segment_button_downloads_runs_turns_into_cancel_and_fills_the_results(slicer_env, real_cli, served_tiny_model):
    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    index = w.ui.modelComboBox.findData(served_tiny_model)
    assert w.ui.modelComboBox.itemText(index) == "Tiny test model (0.0.1) - download"
    w.ui.modelComboBox.currentIndex = index
    assert w._parameterNode.modelSpec == served_tiny_model
    w.ui.deviceComboBox.currentIndex = 1  # CPU
    w.ui.psaSpinBox.value = 6.5

    stages, showProgress = [], w.onProgress
    w.onProgress = lambda stage, overall, message: (stages.append(stage), showProgress(stage, overall, message))

    w.ui.segmentButton.click()
    assert w.logic.isRunning()
    assert w.ui.segmentButton.text == "Cancel" and w.ui.segmentButton.enabled
    assert w.ui.progressBar.visible and not w.ui.inputsCollapsibleButton.enabled
    pumpEvents(slicer, lambda: not w.logic.isRunning())

    run = w.logic.lastRun
    assert run.status == "succeeded", run.message
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == [
        "preparing",
        "downloading",
        "segmenting",
        "importing",
    ]
    assert w.ui.progressBar.format == "Importing: %p%" and w.ui.progressBar.value == 100
    assert w.ui.segmentButton.text == "Segment Prostate" and not w.ui.progressBar.visible
    assert w.ui.inputsCollapsibleButton.enabled
    assert w.ui.statusLabel.text.startswith("Done in")
    assert w._parameterNode.outputSegmentation is run.segmentationNode
    assert run.command[run.command.index("--psa") + 1] == "6.5"
    table = w.ui.resultsTable
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount)}
    gland = run.result["volumes_ml"]["prostate"]
    assert table.item(0, 0).text() == "Prostate" and rows["Prostate"] == f"{gland:.1f} mL"
    # PSA density from the command line's result, PSA / gland volume
    density = run.result["psa"]["psa_density"]
    assert rows["PSA"] == "6.5 ng/mL"
    if gland > 0:
        assert density == pytest.approx(6.5 / gland, rel=1e-2, abs=1e-3)
        assert rows["PSA density"] == f"{density:.3f} ng/mL/cc"
    else:
        assert density is None and rows["PSA density"] == "- (no gland segmented)"
    assert rows["Confidence"].startswith(f"{run.result['confidence']:.2f}")
    # every quality flag, one sentence each, under the table and in the log; none blocked the result
    flags = run.result["flags"]
    assert flags, "the tiny random model's result should be flagged (implausible volume, low confidence)"
    for flag in flags:
        sentence = flag["message"].rstrip(".") + "."
        assert f"- {sentence}" in w.ui.findingsLabel.text.splitlines()
        assert f"  - {flag['message']}" in w.ui.logTextEdit.plainText.splitlines()  # the command line's summary
    assert "Result: prostate" in w.ui.logTextEdit.plainText
    assert "PSA density:" in w.ui.logTextEdit.plainText
    # the downloaded model is now installed in the cache and offered as such
    assert w.ui.modelComboBox.currentText == "Tiny test model (0.0.1)"
    assert (slicer_env.tmp / "model-cache" / "models" / "tiny-test-model" / "0.0.1" / "model.json").is_file()


def test_cancel_button_stops_the_run_and_leaves_the_scene(slicer_env):
    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    w.logic.processFactory = lambda: FakeProcess(labels_from_input=lambda a: a > 400)
    before = sorted(n.GetID() for n in slicer.mrmlScene.GetNodes())
    w.ui.segmentButton.click()
    assert w.ui.segmentButton.text == "Cancel"
    w.ui.segmentButton.click()
    pumpEvents(slicer, lambda: not w.logic.isRunning())
    assert w.logic.lastRun.status == "cancelled"
    assert w.ui.statusLabel.text == "Segmentation was cancelled; the scene was not changed."
    assert w.ui.segmentButton.text == "Segment Prostate"
    assert sorted(n.GetID() for n in slicer.mrmlScene.GetNodes()) == before
    assert not [m for m in shownMessages() if m[0] == "error"]


def test_a_failed_run_shows_one_plain_message(slicer_env):
    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    w.logic.processFactory = lambda: FakeProcess(exit_code=4, error="invalid image: the volume is constant")
    w.ui.segmentButton.click()
    pumpEvents(slicer, lambda: not w.logic.isRunning())
    errors = [m for m in shownMessages() if m[0] == "error"]
    assert len(errors) == 1
    _, text, details = errors[0]
    assert text == "Invalid image: the volume is constant."
    assert "Traceback" not in text and "Traceback" not in (details or "")
    assert w.ui.statusLabel.text == "Failed: Invalid image: the volume is constant."
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_flags_confidence_and_psa_density_are_shown_and_do_not_block_the_result(slicer_env, installed_tiny_model):
    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    flags = [
        {"kind": "input", "code": "sagittal", "message": "The scan is sagittal; axial T2 segments best"},
        {"kind": "output", "code": "low_confidence", "message": "The confidence 0.61 is below 0.90."},
    ]
    extra = {"flags": flags, "confidence": 0.61, "confidence_threshold": 0.9}
    extra["psa"] = {"psa_ng_ml": 6.5, "gland_ml": 40.0, "psa_density": 0.163}
    fake = FakeProcess(labels_from_input=lambda a: a > 400, extra_result=extra)
    w.logic.processFactory = lambda: fake
    w.ui.psaSpinBox.value = 6.5
    w.ui.segmentButton.click()
    pumpEvents(slicer, lambda: not w.logic.isRunning())
    assert w.logic.lastRun.status == "succeeded" and fake.command[fake.command.index("--psa") + 1] == "6.5"
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    table = w.ui.resultsTable
    rows = [(table.item(r, 0).text(), table.item(r, 1).text()) for r in range(table.rowCount)]
    volume = w.logic.lastRun.result["volumes_ml"]["prostate"]
    assert rows == [
        ("Prostate", f"{volume:.1f} mL"),
        ("PSA", "6.5 ng/mL"),
        ("PSA density", "0.163 ng/mL/cc"),
        ("Confidence", "0.61 (below 0.90)"),
    ]
    assert w.ui.findingsLabel.text.splitlines() == [
        "2 quality flags (the result is kept; check it):",
        "- The scan is sagittal; axial T2 segments best.",
        "- The confidence 0.61 is below 0.90.",
    ]
    assert w.ui.statusLabel.text.startswith("Done in")
    assert not [m for m in shownMessages() if m[0] == "error"]


def test_a_psa_out_of_range_is_refused_by_the_command_line_with_its_plain_message(slicer_env, real_cli):
    from UNetSegmentLib.psa import PSA_RANGE

    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    w.ui.deviceComboBox.currentIndex = 1  # CPU

    def sceneState():  # every node but the panel's own parameter node (which holds the PSA typed)
        nodes = slicer.mrmlScene.GetNodes()
        return sorted((n.GetID(), n.GetMTime()) for n in nodes if not n.IsA("vtkMRMLScriptedModuleNode"))

    before = sceneState()
    for value in (5000.0, -2.0):
        w.ui.psaSpinBox.value = value
        w.ui.segmentButton.click()
        pumpEvents(slicer, lambda: not w.logic.isRunning(), timeout=120)
        run = w.logic.lastRun
        assert run.status == "failed" and run.exitCode == 2
        errors = [m for m in shownMessages() if m[0] == "error"]
        _, text, _ = errors[-1]
        assert text.startswith(f"PSA {value:g} ng/mL is outside the accepted {PSA_RANGE[0]:g}-{PSA_RANGE[1]:g} ng/mL")
        assert text.endswith(".") and "argument" not in text and "usage" not in text and "\n" not in text
        assert w.ui.statusLabel.text == f"Failed: {text}"
        assert w.ui.resultsTable.rowCount == 0 and w.ui.findingsLabel.text == ""
    assert len([m for m in shownMessages() if m[0] == "error"]) == 2
    # the scene is as it was: no node added, none modified
    assert sceneState() == before
    assert not list(slicer_env.temp.glob("UNetSegment-*"))


def test_a_missing_dependency_is_reported_before_anything_runs(slicer_env, monkeypatch):
    import ctk
    import qt
    from UNetSegmentLogicLib import dependencies

    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    w.ui.deviceComboBox.currentIndex = 1  # CPU: ONNX Runtime, asked for through slicer.packaging.pip_ensure
    monkeypatch.setattr(dependencies, "CPU_REQUIREMENTS", ["onnxruntime>=99"])
    ctk.ctkMessageBox.answers.append(qt.QMessageBox.Cancel)  # the user declines installing it
    with pytest.raises(dependencies.DependencyError):
        w.ui.segmentButton.click()  # Slicer prints the re-raised exception to the console
    (confirm, (kind, text, _)) = shownMessages()
    assert confirm[0] == "question" and "onnxruntime>=99" in confirm[2]
    assert kind == "error"
    assert text == (
        "Segmentation could not start.\n\n"
        "The Python packages UNetSegment needs were not installed (User declined package installation)."
    )
    assert slicer.packaging.installCalls == []
    assert not w.logic.isRunning() and not w.ui.progressBar.visible
    assert slicer.app.overrideCursorDepth == 0


def _bundled_default_spec() -> str:
    from UNetSegmentLib.model_package import ModelPackage
    from UNetSegmentLib.store import BUNDLED_DIR, DEFAULT_MODEL_ID

    return f"{DEFAULT_MODEL_ID}@{ModelPackage.load(BUNDLED_DIR / DEFAULT_MODEL_ID).info.version}"


def test_advanced_actions(slicer_env, tiny_package):
    import ctk
    import qt

    slicer = slicer_env.slicer
    w = _widget(slicer_env)
    bundled = _bundled_default_spec()
    assert [w.ui.modelComboBox.itemData(i) for i in range(w.ui.modelComboBox.count)] == [bundled]

    qt.QFileDialog.nextFileNames.append(str(tiny_package.to_zip(slicer_env.tmp / "tiny.zip")))
    w.ui.importModelButton.click()
    assert w.ui.modelComboBox.currentText == "Tiny test model (0.0.1)"
    assert w._parameterNode.modelSpec == "tiny-test-model@0.0.1"
    assert "CC0-1.0 (random)" in w.ui.modelInfoLabel.text

    w.ui.openCacheFolderButton.click()
    assert qt.QDesktopServices.opened == [qt.QUrl.fromLocalFile(str(slicer_env.tmp / "model-cache")).toString()]

    ctk.ctkMessageBox.answers.append(qt.QMessageBox.No)
    w.ui.clearCacheButton.click()
    assert w.ui.modelComboBox.count == 2
    w.ui.clearCacheButton.click()
    assert w.ui.modelComboBox.count == 1 and w._parameterNode.modelSpec == bundled
    assert w.ui.modelComboBox.currentText.startswith("Prostate whole gland")

    w.logic.processFactory = lambda: FakeProcess()
    w.ui.showVersionsButton.click()
    pumpEvents(slicer, lambda: w.logic.lastRun is None and not w._infoRun.timer.isActive())
    log = w.ui.logTextEdit.plainText
    assert "UNetSegment 0.1.0" in log and "torch 2." in log and "model prostate-wholegland-t2@" in log
    assert "a line that is not part of the protocol" in log
    assert not w.ui.logCollapsibleButton.collapsed
    assert [m[0] for m in shownMessages()] == ["question", "question"]  # the two "clear the cache?" questions


def test_choosing_the_gpu_without_the_pytorch_extension_says_what_to_do(slicer_env, monkeypatch):
    from UNetSegmentLogicLib import dependencies

    slicer = slicer_env.slicer
    makeInputVolume(slicer)
    w = _widget(slicer_env)
    w.ui.deviceComboBox.currentIndex = 2  # GPU (CUDA)
    assert w._parameterNode.device.value == "cuda"
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", ">=99")  # PyTorch "missing"
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # and no PyTorch extension
    with pytest.raises(dependencies.DependencyError):
        w.ui.segmentButton.click()
    ((kind, text, _),) = shownMessages()
    assert kind == "error" and "PyTorch extension" in text and "or choose the CPU" in text
    assert slicer.packaging.installCalls == [] and not w.logic.isRunning()
