"""The Slicer module's logic on Slicer's real core (slicer-core), with the real background process.

Only the Qt side is a stand-in (``Testing/slicer_standin``). ``sys.executable
-m UNetSegmentLib`` stands in for ``PythonSlicer``; the model
is the ``tiny_package`` fixture (random weights), so the tests check geometry,
names, colours, terminology, volumes, cancellation and failures, not accuracy.
A scripted fake process covers edge cases quickly. Static checks: Python 3.9
grammar, import boundaries and the CMake file lists.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_standin.fakeprocess import FakeProcess
from slicer_standin.helpers import (
    REPO,
    addLinearTransform,
    makeInputVolume,
    matrixArray,
    pumpEvents,
    shownMessages,
)

pytest_plugins = ("slicer_standin.fixtures",)  # slicer_env, real_cli, installed_tiny_model

MODULE_DIR = REPO / "UNetSegment"
LIB_DIR = REPO / "UNetSegmentLib"


def _py_files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _scene_ids(slicer):
    return sorted(n.GetID() for n in slicer.mrmlScene.GetNodes())


def _scene_state(slicer):
    """Every node's ID, class, name and modification time: any change to any node changes it."""
    return sorted((n.GetID(), n.GetClassName(), n.GetName(), n.GetMTime()) for n in slicer.mrmlScene.GetNodes())


def _logic(env, **kwargs):
    return env.module.UNetSegmentLogic(pythonCommand=[sys.executable], **kwargs)


# -- static checks -----------------------------------------------------------------------------


def test_module_and_library_parse_with_python39_grammar():
    files = [MODULE_DIR / "UNetSegment.py", *_py_files(MODULE_DIR / "UNetSegmentLogicLib"), *_py_files(LIB_DIR)]
    assert len(files) > 10
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_library_never_imports_slicer_qt_ctk_or_vtk():
    for path in _py_files(LIB_DIR):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("slicer", "qt", "ctk", "vtk")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_module_never_imports_torch_or_the_inference_code():
    heavy = ("torch", "monai", "UNetSegmentLib.inference", "UNetSegmentLib.network", "UNetSegmentLib.cli")
    for path in [MODULE_DIR / "UNetSegment.py", *_py_files(MODULE_DIR / "UNetSegmentLogicLib")]:
        bad = {m for m in _imported_modules(path) if m.startswith(heavy)}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_using_the_module_keeps_torch_out_of_slicers_process(tmp_path):
    """Import the module, list models, import a model zip, read its labels: torch must stay unimported."""
    import slicer_standin

    if not slicer_standin.available():
        pytest.skip("slicer-core is not installed")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "Testing")!r}]
        os.environ["UNETSEGMENT_HOME"] = {str(tmp_path / "cache")!r}
        import slicer_standin
        from slicer_standin.helpers import importModule, makeInputVolume
        slicer = slicer_standin.install({str(tmp_path)!r})
        module = importModule()
        logic = module.UNetSegmentLogic()
        choices = logic.modelChoices()
        default = next((c for c in choices if c.installed and c.id == "prostate-wholegland-t2"), None)
        labels = logic.modelLabels(default.id, {{"id": default.id, "version": default.version}}) if default else []
        logic.versionLines()
        makeInputVolume(slicer)
        print("torch" in sys.modules, "monai" in sys.modules, len(choices))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    torch_loaded, monai_loaded, n_choices = out.stdout.split()
    assert (torch_loaded, monai_loaded) == ("False", "False")
    assert int(n_choices) >= 1


def test_module_file_stays_small():
    lines = (MODULE_DIR / "UNetSegment.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 600, f"UNetSegment.py has {lines} lines; move helpers into UNetSegmentLogicLib"


def test_the_backend_follows_the_device():
    """ONNX Runtime on the CPU (no torch), PyTorch on the GPU, the CLI's own choice for auto."""
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from UNetSegmentLogicLib.run import segmentCommand
    finally:
        sys.path.remove(str(MODULE_DIR))
    for device, backend in (("cpu", "onnxruntime"), ("cuda", "torch"), ("auto", "auto")):
        cmd = segmentCommand(["py"], "in.nrrd", "out.nrrd", "r.json", "m@1", device, "standard")
        assert (cmd[cmd.index("--device") + 1], cmd[cmd.index("--backend") + 1]) == (device, backend)


def test_the_packaging_stand_in_has_slicers_signatures():
    """``slicer.packaging`` as in Slicer 5.12 (Base/Python/slicer/packaging.py): names, order and defaults."""
    import inspect
    import types

    from slicer_standin.packaging import makeModule

    packaging = makeModule(types.ModuleType("slicer"))
    expected = {
        "pip_ensure": [
            ("requirements", inspect.Parameter.empty),
            ("constraints", None),
            ("skip_packages", None),
            ("prompt_install", True),
            ("prompt_restart", True),
            ("requester", None),
            ("skip_in_testing", True),
            ("show_progress", True),
        ],
        "pip_install": [
            ("requirements", inspect.Parameter.empty),
            ("constraints", None),
            ("no_deps_requirements", None),
            ("skip_packages", None),
            ("blocking", True),
            ("show_progress", True),
            ("requester", None),
            ("parent", None),
            ("logCallback", None),
            ("completedCallback", None),
        ],
    }
    for name, parameters in expected.items():
        signature = inspect.signature(getattr(packaging, name))
        assert [(p.name, p.default) for p in signature.parameters.values()] == parameters, name


def _cmake_list(text: str, variable: str):
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not found"
    return [t for t in m.group(1).split() if not t.startswith("#")]


def test_cmake_lists_every_module_and_library_file():
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = [s.replace("${MODULE_NAME}", "UNetSegment") for s in _cmake_list(module_cmake, "MODULE_PYTHON_SCRIPTS")]
    resources = [
        s.replace("${MODULE_NAME}", "UNetSegment") for s in _cmake_list(module_cmake, "MODULE_PYTHON_RESOURCES")
    ]
    listed_module = {MODULE_DIR / p for p in scripts + resources}
    assert all(p.is_file() for p in listed_module), [str(p) for p in listed_module if not p.is_file()]
    on_disk = {
        p
        for p in MODULE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".ui", ".png", ".json", ".svg")
    }
    assert on_disk == listed_module, f"unlisted: {sorted(map(str, on_disk - listed_module))}"
    assert "slicerMacroBuildScriptedModule" in module_cmake and "WITH_GENERIC_TESTS" in module_cmake
    assert re.search(
        r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", module_cmake, re.S
    )

    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    listed_lib = {REPO / p for p in _cmake_list(top, "LIB_PYTHON_SCRIPTS") + _cmake_list(top, "LIB_PYTHON_RESOURCES")}
    assert all(p.is_file() for p in listed_lib), [str(p) for p in listed_lib if not p.is_file()]
    lib_files = {p for p in LIB_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert lib_files == listed_lib, f"unlisted: {sorted(map(str, lib_files - listed_lib))}"
    for needed in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(UNetSegment)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
        'set(EXTENSION_DEPENDS "PyTorch")',
    ):
        assert needed in top, needed


def test_terminology_file_matches_the_label_table():
    from UNetSegmentLib.labels import STRUCTURES

    doc = json.loads((MODULE_DIR / "Resources" / "prostate.term.json").read_text(encoding="utf-8"))
    (category,) = doc["SegmentationCodes"]["Category"]
    assert (category["CodingSchemeDesignator"], category["CodeValue"]) == ("SCT", "123037004")
    types = {t["CodeValue"]: t for t in category["Type"]}
    for s in STRUCTURES.values():
        assert types[s.snomed_code]["CodeMeaning"] == s.snomed_meaning
        assert tuple(types[s.snomed_code]["recommendedDisplayRGBValue"]) == s.color


# -- the run: command line and progress ------------------------------------------------------------


def test_command_line_and_environment_run_the_library(slicer_env):
    logic = _logic(slicer_env)
    volume = makeInputVolume(slicer_env.slicer)
    fake = FakeProcess(labels_from_input=lambda a: (a > 400).astype(np.uint8))
    logic.processFactory = lambda: fake
    run = logic.segment(volume, modelSpec="some-model@1.2.3", device="cpu", quality="best", show3D=False)
    cmd = fake.command
    assert cmd[:4] == [sys.executable, "-m", "UNetSegmentLib", "segment"]
    assert cmd[cmd.index("--model") + 1] == "some-model@1.2.3"
    assert (cmd[cmd.index("--device") + 1], cmd[cmd.index("--quality") + 1], cmd[cmd.index("--progress") + 1]) == (
        "cpu",
        "best",
        "machine",
    )
    assert cmd[cmd.index("--backend") + 1] == "onnxruntime"  # a CPU run never needs torch
    assert fake.env["PYTHONPATH"].split(":")[0] == str(REPO)  # where UNetSegmentLib is, first
    input_path = Path(cmd[4])
    assert input_path.parent.parent == slicer_env.temp and input_path.is_file()
    logic.cancel()
    pumpEvents(slicer_env.slicer, lambda: not logic.isRunning())
    assert run.status == "cancelled" and not input_path.parent.exists()


def test_progress_stages_are_mapped_and_never_go_back(slicer_env):
    from UNetSegmentLogicLib.run import SegmentationRun

    lines = [
        '{"x": 1}',
        'UNETSEGMENT_PROGRESS {"stage": "loading", "fraction": 0.5, "overall": 0.02, "message": "model"}',
        'UNETSEGMENT_PROGRESS {"stage": "downloading", "fraction": 0.5, "overall": 0.08, "message": "1.0 of 2.0 MB"}',
        'UNETSEGMENT_PROGRESS {"stage": "inference", "fraction": 0.5, "overall": 0.5, "message": ""}',
        'UNETSEGMENT_PROGRESS {"stage": "inference", "fraction": 0.4, "overall": 0.45, "message": ""}',
        'UNETSEGMENT_WARNING {"message": "looks like a CT"}',
        'UNETSEGMENT_RESULT {"volumes_ml": {"prostate": 40.0}, "model": {"id": "m", "version": "1.0.0"}}',
    ]

    class Scripted:
        def start(self, args, env, cwd):
            pass

        def readLines(self):
            out, lines[:] = list(lines), []
            return out

        def exitCode(self):
            return 0

        def kill(self):
            pass

    seen, logged = [], []
    run = SegmentationRun(["x"], {}, ".", Scripted, lambda s, o, m: seen.append((s, round(o, 4), m)), logged.append)
    run.start()
    assert run.poll() is False and run.status == "succeeded"
    assert [s for s, _, _ in seen] == ["preparing", "preparing", "downloading", "segmenting", "segmenting"]
    overall = [o for _, o, _ in seen]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(0.05 + 0.9 * 0.5)
    assert run.warnings == ["looks like a CT"] and run.result["volumes_ml"] == {"prostate": 40.0}
    assert '{"x": 1}' in logged


# -- the run against the real background process ------------------------------------------------------


@pytest.mark.slow
def test_real_run_imports_segments_on_the_input_grid(slicer_env, real_cli, installed_tiny_model):
    """Oblique input under a linear transform and a study: geometry, names, colours, terminology, volumes."""
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer, rotationDeg=25.0)
    transform = addLinearTransform(slicer)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1"), "MR study")
    sh.SetItemParent(sh.GetItemByDataNode(volume), study)

    logic = _logic(slicer_env)
    logic.keepTemporaryFiles = True
    stages = []
    seg = logic.segment(
        volume,
        modelSpec=installed_tiny_model,
        device="cpu",
        quality="fast",
        show3D=True,
        wait=True,
        progressCallback=lambda s, o, m: stages.append(s),
    )
    run = logic.lastRun
    assert run.status == "succeeded" and seg is run.segmentationNode
    # nothing temporary is left in the scene (checked first: slicer.util's array helpers leave display nodes)
    for temporary in (
        "vtkMRMLLabelMapVolumeNode",
        "vtkMRMLLabelMapVolumeDisplayNode",
        "vtkMRMLVolumeArchetypeStorageNode",
    ):
        assert slicer.mrmlScene.GetNumberOfNodesByClass(temporary) == 0, temporary
    assert stages[0] == "preparing" and stages[-1] == "importing" and "segmenting" in stages

    # one segment per label, with the model's name, colour and terminology
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetSegment("prostate")
    assert segment.GetName() == "Prostate"
    assert segment.GetColor() == pytest.approx(tuple(c / 255 for c in (216, 160, 102)))
    import vtk

    tag = vtk.mutable("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    assert str(tag).split("~")[:3] == [
        "UNetSegment - prostate MRI",
        "SCT^123037004^Anatomical Structure",
        "SCT^41216001^Prostate",
    ]

    # reference geometry = input geometry; same parent transform; under the input's study
    role = seg.GetReferenceImageGeometryReferenceRole()
    assert role == "referenceImageGeometryRef" and seg.GetNodeReferenceID(role) == volume.GetID()
    geometry, extent = vtk.vtkMatrix4x4(), [0] * 6
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()),
        geometry,
        extent,
    )
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    np.testing.assert_allclose(matrixArray(geometry), matrixArray(ijk_to_ras), atol=1e-9)
    assert extent == list(volume.GetImageData().GetExtent())
    assert seg.GetTransformNodeID() == transform.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert segmentation.ContainsRepresentation("Closed surface")

    # the segment is the labelmap the process wrote, voxel for voxel, and its volume is the reported one
    mask_kji = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "prostate", volume)
    temp_dirs = list(slicer_env.temp.glob("UNetSegment-*"))
    written = sitk.ReadImage(str(temp_dirs[0] / "labelmap.nrrd"))
    np.testing.assert_array_equal(mask_kji, (sitk.GetArrayFromImage(written) == 1).astype(np.uint8))
    voxel_ml = np.prod(volume.GetSpacing()) / 1000.0
    assert run.result["volumes_ml"]["prostate"] == pytest.approx(mask_kji.sum() * voxel_ml, abs=1e-3)
    assert mask_kji.sum() > 0

    # the labelmap file is on the input's grid in LPS: RAS = diag(-1, -1, 1) LPS
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(written.GetDirection()).reshape(3, 3) * np.array(written.GetSpacing())
    np.testing.assert_allclose(lps_to_ras @ direction, matrixArray(ijk_to_ras)[:3, :3], atol=1e-5)
    np.testing.assert_allclose(lps_to_ras @ np.array(written.GetOrigin()), matrixArray(ijk_to_ras)[:3, 3], atol=1e-5)


@pytest.mark.slow
def test_real_cancel_leaves_the_scene_as_it_was(slicer_env, real_cli, installed_tiny_model):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Existing")
    existing.GetSegmentation().AddEmptySegment("other", "Other", (0.1, 0.2, 0.3))
    before = _scene_ids(slicer)
    logic = _logic(slicer_env)
    finished = []
    run = logic.segment(
        volume, existing, modelSpec=installed_tiny_model, device="cpu", finishedCallback=finished.append
    )
    pumpEvents(slicer, lambda: run.overall > 0.06 or not logic.isRunning())  # the process has started reading
    assert logic.isRunning()
    logic.cancel()
    pumpEvents(slicer, lambda: not logic.isRunning(), timeout=30)
    assert finished == [run] and run.status == "cancelled"
    assert "scene was not changed" in run.message
    assert _scene_ids(slicer) == before
    assert existing.GetSegmentation().GetNumberOfSegments() == 1
    assert not list(slicer_env.temp.glob("UNetSegment-*"))


@pytest.mark.slow
def test_real_failure_leaves_no_segmentation(slicer_env, real_cli):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    before = _scene_ids(slicer)
    logic = _logic(slicer_env)
    with pytest.raises(RuntimeError) as info:
        logic.segment(volume, modelSpec="no-such-model", device="cpu", wait=True)
    message = str(info.value)
    assert "no-such-model" in message and "Traceback" not in message and "\n" not in message
    assert logic.lastRun.status == "failed" and logic.lastRun.exitCode == 5
    assert _scene_ids(slicer) == before
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not list(slicer_env.temp.glob("UNetSegment-*"))


# -- edge cases with the scripted process ---------------------------------------------------------


def _zonal_package(tmp):
    from conftest import make_tiny_package

    return make_tiny_package(tmp / "zonal", structures=("peripheral_zone", "transition_zone"))


def test_result_replaces_same_segments_and_keeps_others(slicer_env):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    package = _zonal_package(slicer_env.tmp)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Mine")
    seg.GetSegmentation().AddEmptySegment("lesion", "Lesion", (1.0, 0.0, 0.0))
    seg.GetSegmentation().AddEmptySegment("transition_zone", "old TZ", (0.0, 0.0, 1.0))

    def zones(a_zyx):
        labels = np.zeros(a_zyx.shape, np.uint8)
        labels[a_zyx > 400] = 2
        labels[:, :, : a_zyx.shape[2] // 2][a_zyx[:, :, : a_zyx.shape[2] // 2] > 400] = 1
        return labels

    fake = FakeProcess(zones, structure_names={1: "peripheral_zone", 2: "transition_zone"})
    logic = _logic(slicer_env, processFactory=lambda: fake)
    out = logic.segment(volume, seg, modelSpec=str(package.path), device="cpu", show3D=False, wait=True)
    assert out is seg
    s = seg.GetSegmentation()
    assert [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())] == [
        "lesion",
        "transition_zone",
        "peripheral_zone",
    ]
    assert s.GetSegment("transition_zone").GetName() == "Transition zone"
    assert s.GetSegment("lesion").GetName() == "Lesion"
    assert not s.ContainsRepresentation("Closed surface")
    expected = zones(slicer.util.arrayFromVolume(volume))
    for value, segment_id in ((1, "peripheral_zone"), (2, "transition_zone")):
        np.testing.assert_array_equal(
            slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, volume), expected == value
        )
    assert logic.lastRun.labels[1]["terminology"]["type"]["code"] == "399384005"


def test_error_line_becomes_the_message_and_the_scene_is_unchanged(slicer_env):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    before = _scene_ids(slicer)
    fake = FakeProcess(exit_code=4, error="invalid image: fewer than 3 slices")
    logic = _logic(slicer_env, processFactory=lambda: fake)
    finished = []
    run = logic.segment(volume, finishedCallback=finished.append)
    pumpEvents(slicer, lambda: not logic.isRunning())
    assert finished == [run] and run.status == "failed"
    assert run.message == "Invalid image: fewer than 3 slices."
    assert _scene_ids(slicer) == before


def test_exit_zero_without_a_result_is_a_failure(slicer_env):
    volume = makeInputVolume(slicer_env.slicer)
    fake = FakeProcess(labels_from_input=lambda a: a > 400, write_result=False)
    logic = _logic(slicer_env, processFactory=lambda: fake)
    with pytest.raises(RuntimeError, match="without a result"):
        logic.segment(volume, wait=True)


def test_result_on_another_grid_is_refused_and_nothing_is_left(slicer_env, tiny_package):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    before = _scene_ids(slicer)
    shrink = lambda img: sitk.RegionOfInterest(img, [img.GetSize()[0] - 1, *img.GetSize()[1:]], [0, 0, 0])  # noqa: E731
    fake = FakeProcess(labels_from_input=lambda a: a > 400, grid_change=shrink)
    logic = _logic(slicer_env, processFactory=lambda: fake)
    with pytest.raises(RuntimeError, match="could not be imported"):
        logic.segment(volume, modelSpec=str(tiny_package.path), wait=True)
    assert _scene_ids(slicer) == before


def test_import_failure_removes_the_new_segmentation(slicer_env, tiny_package, monkeypatch):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Existing")
    realLogic = slicer.modules.segmentations.logic()

    class Refusing:  # Slicer's logic, whose import reports a failure
        def __getattr__(self, name):
            return getattr(realLogic, name)

        def ImportLabelmapToSegmentationNode(self, *args):
            return False

    monkeypatch.setattr(slicer.modules.segmentations, "logic", lambda: Refusing())
    before = _scene_state(slicer)
    for output in (None, existing):
        logic = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=lambda a: a > 400))
        with pytest.raises(RuntimeError, match="could not import"):
            logic.segment(volume, output, modelSpec=str(tiny_package.path), wait=True)
        assert _scene_ids(slicer) == [n[0] for n in before]
        assert existing.GetSegmentation().GetNumberOfSegments() == 0


def test_invalid_requests_are_refused_before_anything_starts(slicer_env):
    slicer = slicer_env.slicer
    logic = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=lambda a: a > 400))
    with pytest.raises(ValueError, match="Select a T2 volume"):
        logic.segment(None)
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 64, 64), np.int16))
    with pytest.raises(ValueError, match="3D T2 scan"):
        logic.segment(flat)
    volume = makeInputVolume(slicer)
    logic.segment(volume)
    with pytest.raises(RuntimeError, match="already running"):
        logic.segment(volume)
    assert len(list(slicer_env.temp.glob("UNetSegment-*"))) == 1


# -- models and dependencies ------------------------------------------------------------------


def test_model_choices_and_offline_import(slicer_env, tiny_package):
    logic = _logic(slicer_env)
    before = logic.modelChoices()
    assert before[0].id == "prostate-wholegland-t2"
    info = logic.importModelZip(str(tiny_package.to_zip(slicer_env.tmp / "m.zip")))
    choices = logic.modelChoices()
    tiny = next(c for c in choices if c.id == "tiny-test-model")
    assert tiny.installed and tiny.spec == f"{info.id}@{info.version}" and tiny.structures == ("Prostate",)
    assert "CC0-1.0 (random)" in tiny.summary()
    assert [c.installed for c in choices] == sorted((c.installed for c in choices), reverse=True)
    assert Path(logic.cacheFolder()) == slicer_env.tmp / "model-cache"
    logic.clearCache()
    assert all(c.id != "tiny-test-model" for c in logic.modelChoices())


def test_model_choices_offer_only_a_newer_release_from_the_catalogue(slicer_env, tiny_package, monkeypatch):
    logic = _logic(slicer_env)
    logic.importModelZip(str(tiny_package.to_zip(slicer_env.tmp / "m.zip")))  # tiny-test-model 0.0.1

    def entry(model_id, version):
        url = f"https://example.org/{model_id}-{version}.zip"
        return {"id": model_id, "version": version, "name": model_id, "url": url, "sha256": "ab" * 32, "size": 1}

    listed = [entry("tiny-test-model", v) for v in ("0.0.0", "0.0.1", "0.0.3", "0.0.2")]
    listed += [entry("other-model", v) for v in ("1.0.0", "1.1.0")]
    catalogue = slicer_env.tmp / "versions.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": listed}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    specs = {c.spec: c.installed for c in logic.modelChoices() if c.id in ("tiny-test-model", "other-model")}
    # installed 0.0.1 stays; the newest release is offered; older and in-between releases are not
    assert specs == {"tiny-test-model@0.0.1": True, "tiny-test-model@0.0.3": False, "other-model@1.1.0": False}


def test_cpu_needs_only_onnxruntime_and_asks_through_slicers_pip_ensure(slicer_env, monkeypatch):
    """Slicer >= 5.12: ``slicer.packaging.pip_ensure`` with Slicer's signature; torch is never asked for on the CPU."""
    import ctk
    import qt
    from UNetSegmentLogicLib import dependencies

    slicer = slicer_env.slicer
    slicer.app.setTestingEnabled(False)
    logic = _logic(slicer_env)
    logic.ensureDependencies(device="cpu")  # onnxruntime is installed here: nothing asked, nothing installed
    assert slicer.packaging.installCalls == [] and shownMessages() == []
    assert dependencies.requirementsFor("cpu") == ["onnxruntime>=1.17"]

    monkeypatch.setattr(dependencies, "CPU_REQUIREMENTS", ["onnxruntime>=99"])
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", ">=99")  # torch "missing" too: still not asked for
    ctk.ctkMessageBox.answers.append(qt.QMessageBox.Cancel)
    with pytest.raises(dependencies.DependencyError, match="were not installed"):
        logic.ensureDependencies(device="cpu")
    ((kind, _, details),) = shownMessages()
    assert kind == "question" and details == "- onnxruntime>=99" and slicer.packaging.installCalls == []

    with pytest.raises(dependencies.DependencyError, match="onnxruntime>=99"):
        logic.ensureDependencies(device="cpu")  # confirmed; "pip" ran but the package is still missing
    (call,) = slicer.packaging.installCalls
    assert call["requirements"] == ["onnxruntime>=99"] and call["requester"] == "UNetSegment"
    pins = dict(line.split("==") for line in call["constraints"].split())
    assert set(pins) == {"torch", "numpy", "scipy", "SimpleITK"} and pins["numpy"] == np.__version__
    assert not list(slicer_env.temp.glob("UNetSegment-constraints-*"))


def test_older_slicer_installs_with_util_pip_install_after_our_confirmation(tmp_path, monkeypatch):
    """Slicer 5.8-5.11 has no ``slicer.packaging``: our own question, then ``slicer.util.pip_install(args)``."""
    import slicer_standin

    if not slicer_standin.available():
        pytest.skip("slicer-core is not installed")
    from slicer_standin.helpers import MODULE_FILE, importModule

    paths = {"UNetSegment": str(MODULE_FILE)}
    slicer = slicer_standin.install(str(tmp_path), testingEnabled=False, modulePaths=paths, withPackaging=False)
    try:
        import ctk
        import qt

        module = importModule()
        from UNetSegmentLogicLib import dependencies

        assert dependencies._slicerPackaging() is None
        calls = []
        monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: calls.append(list(requirements)))
        monkeypatch.setattr(dependencies, "CPU_REQUIREMENTS", ["onnxruntime>=99"])
        ctk.ctkMessageBox.answers.append(qt.QMessageBox.Cancel)
        logic = module.UNetSegmentLogic(pythonCommand=[sys.executable])
        with pytest.raises(dependencies.DependencyError, match="were not installed"):
            logic.ensureDependencies(device="cpu")
        assert calls == [] and "onnxruntime>=99" in shownMessages()[0][1]
        with pytest.raises(dependencies.DependencyError, match="Installing onnxruntime>=99 failed"):
            logic.ensureDependencies(device="cpu")
        ((flag, _constraints, requirement),) = calls
        assert (flag, requirement) == ("-c", "onnxruntime>=99")
    finally:
        slicer_standin.uninstall()


def test_gpu_gets_torch_from_the_pytorch_extension_only(slicer_env, monkeypatch):
    import types

    from UNetSegmentLogicLib import dependencies

    slicer = slicer_env.slicer
    logic = _logic(slicer_env)
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", ">=99")
    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kwargs):
            calls.append((askConfirmation, torchVersionRequirement))
            return None  # the user declined

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    with pytest.raises(dependencies.DependencyError, match="PyTorch >=99 is needed on the GPU"):
        logic.ensureDependencies(device="cuda")
    assert calls == [(True, ">=99")] and slicer.packaging.installCalls == []

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # no PyTorch extension: refused, never pip
    with pytest.raises(dependencies.DependencyError, match="install that extension from the Extensions Manager"):
        logic.ensureDependencies(device="cuda")
    assert slicer.packaging.installCalls == []
    assert dependencies.requirementsFor("cuda") == ["safetensors>=0.4,<1"]


# -- issue 18: PSA, quality flags, confidence, DICOM references --------------------------------


def test_the_psa_reaches_the_command_line_only_when_given(slicer_env, tiny_package):
    volume = makeInputVolume(slicer_env.slicer)
    for psa, expected in ((0.0, None), (6.5, "6.5"), (0.25, "0.25"), (5000.0, "5000"), (-3.0, "-3")):
        fake = FakeProcess(labels_from_input=lambda a: a > 400)
        logic = _logic(slicer_env, processFactory=lambda fake=fake: fake)
        logic.segment(volume, modelSpec=str(tiny_package.path), device="cpu", psa=psa, wait=True)
        cmd = fake.command
        if expected is None:
            assert "--psa" not in cmd
        else:  # passed as given: the command line checks the range (tested with the real one in test_slicer_ui)
            assert cmd[cmd.index("--psa") + 1] == expected and cmd.count("--psa") == 1


def test_findings_rows_and_plain_messages():
    sys.path.insert(0, str(MODULE_DIR))
    from UNetSegmentLogicLib import findings

    labels = [
        {"name": "peripheral_zone", "display_name": "Peripheral zone"},
        {"name": "transition_zone", "display_name": "Transition zone"},
    ]
    result = {
        "volumes_ml": {"peripheral_zone": 12.04, "transition_zone": 30.0},
        "confidence": 0.95,
        "confidence_threshold": 0.9,
        "flags": [],
        "psa": {
            "psa_ng_ml": 8.4,
            "gland_ml": 42.04,
            "psa_density": 0.2,
            "transition_zone_ml": 30.0,
            "tz_psa_density": 0.28,
        },
    }
    assert findings.resultRows(result, labels) == [
        ("Peripheral zone", "12.0 mL"),
        ("Transition zone", "30.0 mL"),
        ("Gland", "42.0 mL"),
        ("PSA", "8.4 ng/mL"),
        ("PSA density", "0.200 ng/mL/cc"),
        ("Transition-zone PSA density", "0.280 ng/mL/cc"),
        ("Confidence", "0.95"),
    ]
    assert findings.flagsText(result) == "Quality checks: nothing to flag."
    assert findings.flagsText({"volumes_ml": {}}) == ""  # an older command line without flags: nothing claimed
    empty = {"volumes_ml": {"prostate": 0.0}, "confidence": 0.5, "confidence_threshold": 0.9}
    empty["psa"] = {"psa_ng_ml": 5.0, "gland_ml": 0.0, "psa_density": None}
    rows = dict(findings.resultRows(empty, []))
    assert "Gland" not in rows and rows["PSA density"] == "- (no gland segmented)"
    assert rows["Confidence"] == "0.50 (below 0.90)"
    assert findings.plainMessage("argument --psa: PSA 'x' is not a number; give it in ng/mL") == (
        "PSA 'x' is not a number; give it in ng/mL."
    )
    assert findings.psaArgument(0) is None and findings.psaArgument(None) is None
    assert findings.psaArgument(12.0) == "12"


def _dicom_input(slicer, uids):
    """A volume as Slicer's DICOM import leaves it: instance UIDs attribute, series item under patient and study."""
    volume = makeInputVolume(slicer)
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "ProstateX-0000"), "MR prostate")
    series = sh.GetItemByDataNode(volume)
    sh.SetItemParent(series, study)
    sh.SetItemUID(series, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName(), "1.2.3.4.5")
    sh.SetItemUID(series, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMInstanceUIDName(), " ".join(uids))
    return volume, sh, study


def test_a_dicom_input_gives_a_segmentation_with_the_references_slicers_dicom_export_needs(slicer_env, tiny_package):
    import vtk

    slicer = slicer_env.slicer
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(1, 17)]
    volume, sh, study = _dicom_input(slicer, uids)
    existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Existing")  # at the scene's top
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMReferencedInstanceUIDsAttributeName()
    for output in (None, existing):
        fake = FakeProcess(labels_from_input=lambda a: a > 400)
        logic = _logic(slicer_env, processFactory=lambda fake=fake: fake)
        seg = logic.segment(volume, output, modelSpec=str(tiny_package.path), wait=True)
        item = sh.GetItemByDataNode(seg)
        assert sh.GetItemAttribute(item, attribute).split() == uids
        assert sh.GetItemParent(item) == study  # patient and study of the export come from here
        # Slicer's own resolution of DICOM references finds the input's series
        assert list(sh.GetItemsReferencedFromItemByDICOM(item)) == [sh.GetItemByDataNode(volume)]
        role = seg.GetReferenceImageGeometryReferenceRole()
        assert seg.GetNodeReference(role) is volume  # the export's source images
        segment = seg.GetSegmentation().GetSegment("prostate")
        for tag, value in (("DICOM.SegmentAlgorithmType", "AUTOMATIC"), ("DICOM.SegmentAlgorithmName", None)):
            found = vtk.mutable("")
            assert segment.GetTag(tag, found)
            assert str(found) == (value or "UNetSegment tiny-test-model 0.0.1")

    plain = makeInputVolume(slicer, name="not from DICOM")
    seg = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=lambda a: a > 400)).segment(
        plain, modelSpec=str(tiny_package.path), wait=True
    )
    assert not sh.GetItemAttribute(sh.GetItemByDataNode(seg), attribute)
    found = vtk.mutable("")
    assert seg.GetSegmentation().GetSegment("prostate").GetTag("DICOM.SegmentAlgorithmType", found)
    assert str(found) == "AUTOMATIC"
