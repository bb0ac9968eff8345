"""Slicer .seg.nrrd writing: header fields as Slicer reads them, geometry in LPS, voxels intact."""

from __future__ import annotations

import math

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from UNetSegmentLib.labels import structure
from UNetSegmentLib.model_package import LabelEntry
from UNetSegmentLib.segfile import read_nrrd_fields, read_segments, terminology_entry, write_seg_nrrd

PROSTATE_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^41216001^Prostate~^^~Anatomic codes - DICOM master list~^^~^^"
)
ZONES = (LabelEntry(1, structure("pz")), LabelEntry(2, structure("tz")))


def _oblique_direction(deg: float = 25.0, flip_x: bool = True):
    a = math.radians(deg)
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])  # RAS-style first axis
    return tuple(rot.ravel())


def _labelmap(size_xyz=(30, 20, 7), direction=None) -> sitk.Image:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 3, size_xyz[::-1]).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 3.3))
    img.SetOrigin((-12.5, 40.25, -77.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_prostate_terminology_is_slicers_serialised_entry():
    assert terminology_entry(structure("prostate")) == PROSTATE_TERMINOLOGY


def test_segments_carry_names_colours_values_extent_and_terminology(tmp_path):
    lab = _labelmap()
    path = write_seg_nrrd(lab, tmp_path / "zones.seg.nrrd", ZONES)
    fields = read_nrrd_fields(path)
    assert fields["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert fields["Segmentation_ContainedRepresentationNames"].split("|")[0] == "Binary labelmap"
    assert fields["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    segments = read_segments(path)
    assert [s["ID"] for s in segments] == ["peripheral_zone", "transition_zone"]
    assert [s["Name"] for s in segments] == ["Peripheral zone", "Transition zone"]
    assert [s["LabelValue"] for s in segments] == ["1", "2"]
    assert all(s["Layer"] == "0" and s["Extent"] == "0 29 0 19 0 6" for s in segments)
    for seg, entry in zip(segments, ZONES):
        rgb = [float(c) for c in seg["Color"].split()]
        assert np.allclose(rgb, np.array(entry.structure.color) / 255.0, atol=1e-5)
        tags = dict(t.split(":", 1) for t in seg["Tags"].split("|") if t)
        parts = tags["TerminologyEntry"].split("~")
        assert len(parts) == 7 and parts[2] == f"SCT^{entry.structure.snomed_code}^{entry.structure.snomed_meaning}"


@pytest.mark.parametrize("direction", [None, _oblique_direction()], ids=["axial", "oblique-flipped"])
def test_itk_reads_back_the_same_grid_and_voxels(tmp_path, direction):
    lab = _labelmap(direction=direction)
    path = write_seg_nrrd(lab, tmp_path / "a.seg.nrrd", ZONES)
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == lab.GetSize()
    assert np.allclose(back.GetSpacing(), lab.GetSpacing(), atol=1e-9)
    assert np.allclose(back.GetOrigin(), lab.GetOrigin(), atol=1e-9)
    assert np.allclose(back.GetDirection(), lab.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(lab))
    assert back.GetMetaData("Segment1_Name") == "Transition zone"


def test_pynrrd_sees_lps_space_directions_and_x_fastest_voxels(tmp_path):
    lab = _labelmap(direction=_oblique_direction())
    path = write_seg_nrrd(lab, tmp_path / "b.seg.nrrd", ZONES)
    data_xyz, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert header["encoding"] == "gzip"
    direction = np.array(lab.GetDirection()).reshape(3, 3)
    expected = (direction * np.array(lab.GetSpacing())).T  # row i: LPS vector of voxel axis i
    assert np.allclose(np.asarray(header["space directions"], float), expected, atol=1e-9)
    assert np.allclose(header["space origin"], lab.GetOrigin())
    assert np.array_equal(data_xyz, sitk.GetArrayFromImage(lab).transpose(2, 1, 0))


def test_empty_segments_keep_the_full_extent_and_wide_labelmaps_are_cast(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint16)
    arr[1:3, 2:4, 3:5] = 2  # only the second structure present
    lab = sitk.GetImageFromArray(arr)
    path = write_seg_nrrd(lab, tmp_path / "c.seg.nrrd", ZONES, compress=False)
    assert b"encoding: raw\n" in path.read_bytes()[:1000]
    assert [s["Extent"] for s in read_segments(path)] == ["0 6 0 5 0 4"] * 2
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)


def test_values_beyond_a_byte_are_refused_and_nothing_is_left_behind(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint16)
    arr[0, 0, 0] = 300
    with pytest.raises(ValueError, match="0-255"):
        write_seg_nrrd(sitk.GetImageFromArray(arr), tmp_path / "d.seg.nrrd", ZONES)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be", encoding="utf-8")
    with pytest.raises(OSError):
        write_seg_nrrd(_labelmap(), tmp_path / "blocker" / "e.seg.nrrd", ZONES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
