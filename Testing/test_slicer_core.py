"""What real Slicer does differently, on Slicer's own core (slicer-core), and the module end to end on it.

- Volumes come from files through ``vtkSlicerVolumesLogic`` (Slicer's reader, which
  reverses the slices of a left-handed volume) and go out through its storage node.
- The output segmentation may have a closed-surface source, or its own transform.
- Segment names and colours must stay as the model defines them.
- Cancelling, a failing process and an unreadable result leave every node as it was.
- End to end: ProstateX-0000's DICOM series and a PROMISE12 case, the real background
  process and the default model, voxel for voxel against ``unetsegment segment``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_standin.fakeprocess import FakeProcess
from slicer_standin.fixtures import cliTakesBackend
from slicer_standin.helpers import REPO, addLinearTransform, ijkToRas, makeInputVolume, matrixArray, pumpEvents

pytest_plugins = ("slicer_standin.fixtures",)  # slicer_env, real_cli

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _scene_state(slicer):
    """Every node's ID, class, name and modification time: any change to any node changes it."""
    return sorted((n.GetID(), n.GetClassName(), n.GetName(), n.GetMTime()) for n in slicer.mrmlScene.GetNodes())


def _logic(env, **kwargs):
    return env.module.UNetSegmentLogic(pythonCommand=[sys.executable], **kwargs)


def _threshold(array):
    return (array > 400).astype(np.uint8)


def _mask_on_volume(slicer, segmentation_node, segment_id, volume):
    """A segment exported on ``volume``'s grid, in ``volume``'s frame (a labelmap under its parent transform)."""
    import vtk

    out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    out.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentation_node, ids, out, volume)
    mask = slicer.util.arrayFromVolume(out).copy()
    slicer.mrmlScene.RemoveNode(out.GetDisplayNode())
    slicer.mrmlScene.RemoveNode(out)
    return mask


def _ijk_to_ras_of_file(image: sitk.Image) -> np.ndarray:
    """The file's voxel-to-RAS matrix (ITK stores LPS)."""
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return m


def _in_file_order(array_kji, volume, image: sitk.Image) -> np.ndarray:
    """An array on the node's grid, reordered as the file's (z, y, x): the two grids hold the same points.

    Slicer may reverse or permute axes on load (a left-handed file); the node's
    IJK-to-RAS against the file's says how: a signed permutation plus an offset.
    """
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    node_to_file = np.linalg.inv(_ijk_to_ras_of_file(image)) @ matrixArray(m)
    rotation = np.round(node_to_file[:3, :3])
    np.testing.assert_allclose(node_to_file[:3, :3], rotation, atol=1e-4)  # same points, axes only reordered
    offset = np.round(node_to_file[:3, 3]).astype(int)
    k, j, i = np.indices(array_kji.shape)
    file_ijk = np.einsum("ab,bxyz->axyz", rotation.astype(int), np.stack([i, j, k])) + offset[:, None, None, None]
    out = np.zeros(image.GetSize()[::-1], dtype=array_kji.dtype)
    out[file_ijk[2], file_ijk[1], file_ijk[0]] = array_kji
    return out


# -- left-handed, oblique and flipped volumes ------------------------------------------------------------

GEOMETRIES = {
    # direction (ITK, row-major), spacing: left-handed (slices run inferior), oblique, x flipped (left-handed)
    "left-handed": ((1, 0, 0, 0, 1, 0, 0, 0, -1), (0.8, 0.8, 3.0)),
    "oblique": (tuple(sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix()), (0.7, 0.7, 2.5)),
    "flipped": ((-1, 0, 0, 0, 1, 0, 0, 0, 1), (0.6, 0.6, 3.3)),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_volumes_slicer_reads_are_segmented_exactly_voxel_for_voxel(slicer_env, tiny_package, geometry):
    from conftest import synthetic_image

    slicer = slicer_env.slicer
    direction, spacing = GEOMETRIES[geometry]
    image = synthetic_image(size_xyz=(40, 36, 12), spacing=spacing, direction=direction, origin=(12.0, -30.0, 7.0))
    path = slicer_env.tmp / f"{geometry}.nii.gz"
    sitk.WriteImage(image, str(path))
    file_zyx = sitk.GetArrayFromImage(image)

    volume = slicer.util.loadVolume(str(path))
    if geometry != "oblique":
        # Slicer makes a left-handed volume right-handed by reversing its slice order
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), file_zyx[::-1])
    np.testing.assert_array_equal(_in_file_order(slicer.util.arrayFromVolume(volume), volume, image), file_zyx)

    fake = FakeProcess(labels_from_input=_threshold)
    logic = _logic(slicer_env, processFactory=lambda: fake)
    segmentation = logic.segment(volume, modelSpec=str(tiny_package.path), show3D=False, wait=True)
    mask_kji = _mask_on_volume(slicer, segmentation, "prostate", volume)
    np.testing.assert_array_equal(mask_kji, _threshold(slicer.util.arrayFromVolume(volume)))
    np.testing.assert_array_equal(_in_file_order(mask_kji, volume, image), _threshold(file_zyx))
    assert mask_kji.sum() > 100


# -- the output segmentation: closed surface, its own transform, names and colours ---------------------


def _surface_segmentation(slicer, with_segment: bool):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Surfaces")
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName("Closed surface")
    if with_segment:
        import vtk

        sphere = vtk.vtkSphereSource()
        sphere.SetRadius(10.0)
        sphere.Update()
        segment = vtk.vtkSegment() if hasattr(vtk, "vtkSegment") else slicer.vtkSegment()
        segment.SetName("Lesion")
        segment.AddRepresentation("Closed surface", sphere.GetOutput())
        segmentation.AddSegment(segment, "lesion")
    return node


def test_a_closed_surface_output_is_refused_before_anything_runs(slicer_env):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    surfaces = _surface_segmentation(slicer, with_segment=True)
    # what Slicer itself does with such a target: the import fails
    labelmap = slicer.util.addVolumeFromArray(np.ones((4, 4, 4), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
    ids = __import__("vtk").vtkStringArray()
    assert not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, surfaces, ids)
    slicer.mrmlScene.RemoveNode(labelmap.GetDisplayNode())
    slicer.mrmlScene.RemoveNode(labelmap)

    before = _scene_state(slicer)
    fake = FakeProcess(labels_from_input=_threshold)
    logic = _logic(slicer_env, processFactory=lambda: fake)
    with pytest.raises(ValueError) as info:
        logic.segment(volume, surfaces, wait=True)
    message = str(info.value)
    assert "'Surfaces'" in message and "closed surface" in message and "Segmentations module" in message
    assert fake.command == [] and not list(slicer_env.temp.glob("UNetSegment-*"))  # nothing started
    assert _scene_state(slicer) == before
    assert surfaces.GetSegmentation().GetSourceRepresentationName() == "Closed surface"


def test_an_empty_closed_surface_output_is_switched_to_labelmap_and_used(slicer_env, tiny_package):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    empty = _surface_segmentation(slicer, with_segment=False)
    logic = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=_threshold))
    out = logic.segment(volume, empty, modelSpec=str(tiny_package.path), show3D=True, wait=True)
    assert out is empty and empty.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    np.testing.assert_array_equal(
        _mask_on_volume(slicer, empty, "prostate", volume), _threshold(slicer.util.arrayFromVolume(volume))
    )
    assert empty.GetSegmentation().ContainsRepresentation("Closed surface")


def test_an_existing_segmentation_keeps_its_transform_and_gets_the_segments_in_place(slicer_env, tiny_package):
    """The input under one transform, the output under another: the new voxels land where the input's are."""
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer, rotationDeg=25.0)
    input_transform = addLinearTransform(slicer, "Registration")
    volume.SetAndObserveTransformNodeID(input_transform.GetID())
    output_transform = addLinearTransform(slicer, "Theirs", ijkToRas((1, 1, 1), (-7.0, 4.0, 2.0), -30.0))
    existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Mine")
    existing.CreateDefaultDisplayNodes()
    existing.SetAndObserveTransformNodeID(output_transform.GetID())

    logic = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=_threshold))
    assert logic.segment(volume, existing, modelSpec=str(tiny_package.path), show3D=False, wait=True) is existing
    assert existing.GetTransformNodeID() == output_transform.GetID()

    # the segment's own voxels: same values, and their world positions are the input's voxels' positions
    import vtk

    internal = existing.GetBinaryLabelmapInternalRepresentation("prostate")
    image_to_segmentation = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(image_to_segmentation)
    segmentation_to_world, input_to_world, ijk_to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    output_transform.GetMatrixTransformToWorld(segmentation_to_world)
    input_transform.GetMatrixTransformToWorld(input_to_world)
    volume.GetIJKToRASMatrix(ijk_to_ras)
    np.testing.assert_allclose(
        matrixArray(segmentation_to_world) @ matrixArray(image_to_segmentation),
        matrixArray(input_to_world) @ matrixArray(ijk_to_ras),
        atol=1e-6,
    )
    extent = internal.GetExtent()
    expected = _threshold(slicer.util.arrayFromVolume(volume))
    voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(existing, "prostate")
    inside = expected[extent[4] : extent[5] + 1, extent[2] : extent[3] + 1, extent[0] : extent[1] + 1]
    np.testing.assert_array_equal(voxels > 0, inside > 0)
    assert int((voxels > 0).sum()) == int(expected.sum()) > 100  # nothing was cut off
    # (Slicer's ExportSegmentsToLabelmapNode back onto the input resamples across the two transforms and
    # loses a few dozen boundary voxels to rounding: the check above, on the segment's own voxels, is exact)


def test_segment_names_and_colours_stay_as_the_model_defines_them(slicer_env, tiny_package):
    import vtk

    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    logic = _logic(slicer_env, processFactory=lambda: FakeProcess(labels_from_input=_threshold))
    segmentation = logic.segment(volume, modelSpec=str(tiny_package.path), show3D=True, wait=True)
    segment = segmentation.GetSegmentation().GetSegment("prostate")
    assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
    assert (segment.GetName(), segment.GetColor()) == ("Prostate", pytest.approx((216 / 255, 160 / 255, 102 / 255)))
    tag = vtk.mutable("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    context = str(tag).split("~")[0]
    assert context == "UNetSegment - prostate MRI"
    # the terminology file (with its @schema) is loaded by Slicer's terminologies logic, and names the code
    terminologies = slicer.modules.terminologies.logic()
    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert context in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    entry = slicer.vtkSlicerTerminologyEntry()
    assert terminologies.DeserializeTerminologyEntry(str(tag), entry)
    assert entry.GetTypeObject().GetCodeValue() == "41216001"


# -- cancel, a failing process, an unreadable result: the scene is left as it was -------------------------


@pytest.mark.parametrize("outcome", ["cancel", "process fails", "unreadable result"])
def test_cancel_and_failures_leave_every_node_as_it_was(slicer_env, tiny_package, outcome):
    slicer = slicer_env.slicer
    volume = makeInputVolume(slicer)
    transform = addLinearTransform(slicer)
    existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Existing")
    existing.CreateDefaultDisplayNodes()
    existing.GetSegmentation().AddEmptySegment("prostate", "My prostate", (0.1, 0.2, 0.3))
    existing.SetAndObserveTransformNodeID(transform.GetID())
    fake = {
        "cancel": FakeProcess(labels_from_input=_threshold),
        "process fails": FakeProcess(exit_code=4, error="invalid image: the volume is constant"),
        "unreadable result": FakeProcess(labels_from_input=_threshold, corrupt_labelmap=True),
    }[outcome]
    before = _scene_state(slicer)
    for output in (existing, None):
        logic = _logic(slicer_env, processFactory=lambda fake=fake: fake)
        run = logic.segment(volume, output, modelSpec=str(tiny_package.path))
        if outcome == "cancel":
            logic.cancel()
        pumpEvents(slicer, lambda logic=logic: not logic.isRunning())
        assert run.status == ("cancelled" if outcome == "cancel" else "failed"), run.message
        assert _scene_state(slicer) == before
        assert existing.GetSegmentation().GetSegment("prostate").GetName() == "My prostate"
    if outcome == "unreadable result":
        assert run.message.startswith("The result could not be imported: The segmentation result could not be read")


# -- end to end: the default model, the real background process, real MRI ---------------------------------


def _cli_labelmap(input_path: Path, output: Path) -> np.ndarray:
    """``unetsegment segment`` as a user runs it, with the module's device, quality and backend."""
    command = [sys.executable, "-m", "UNetSegmentLib", "segment", str(input_path), "-o", str(output)]
    command += ["--device", "cpu", "--quality", "standard", "--progress", "none"]
    if cliTakesBackend():
        command += ["--backend", "onnxruntime"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return sitk.ReadImage(str(output))


E2E_CASES = {
    "ProstateX-0000 DICOM": "prostatex/ProstateX-0000/dicom/t2w",
    "PROMISE12 Case13": "promise12/Case13_image.nii.gz",
}


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("case", sorted(E2E_CASES))
def test_end_to_end_the_module_agrees_with_the_command_line_voxel_for_voxel(slicer_env, real_cli, shared_data, case):
    slicer = slicer_env.slicer
    source = shared_data / E2E_CASES[case]
    first_file = sorted(source.iterdir())[0] if source.is_dir() else source
    volume = slicer.util.loadVolume(str(first_file), {"name": "T2"})  # Slicer's reader: a DICOM file reads its series
    uids = []
    if source.is_dir():  # as Slicer's DICOM module loads a series: its instance UIDs on the volume
        import pydicom

        uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in sorted(source.iterdir())]
        volume.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    before = {n.GetID() for n in slicer.mrmlScene.GetNodes()}

    logic = _logic(slicer_env)
    segmentation = logic.segment(volume, device="cpu", quality="standard", show3D=False, wait=True)
    assert logic.lastRun.status == "succeeded" and logic.lastRun.result["model"]["id"] == "prostate-wholegland-t2"
    added = {n.GetID() for n in slicer.mrmlScene.GetNodes()} - before
    assert segmentation.GetID() in added
    assert all(slicer.mrmlScene.GetNodeByID(i).GetClassName().startswith("vtkMRMLSegmentation") for i in added)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMReferencedInstanceUIDsAttributeName()
    referenced = sh.GetItemAttribute(sh.GetItemByDataNode(segmentation), attribute).split()
    assert referenced == uids and len(set(uids)) == len(uids) == (
        volume.GetImageData().GetDimensions()[2] if uids else 0
    )

    written = _cli_labelmap(source, slicer_env.tmp / "cli.nrrd")
    cli_zyx = sitk.GetArrayFromImage(written)
    module_kji = _mask_on_volume(slicer, segmentation, "prostate", volume)
    module_zyx = _in_file_order(module_kji, volume, written)
    assert int(cli_zyx.sum()) > 1000
    np.testing.assert_array_equal(module_zyx, (cli_zyx == 1).astype(np.uint8))
    voxel_ml = float(np.prod(volume.GetSpacing())) / 1000.0
    assert logic.lastRun.result["volumes_ml"]["prostate"] == pytest.approx(module_kji.sum() * voxel_ml, abs=1e-3)
