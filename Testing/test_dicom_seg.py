"""DICOM SEG written with highdicom, read back against the real DICOM series in ../shared/data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from UNetSegmentLib.dicom.seg import (  # noqa: E402
    DicomSegError,
    read_headers,
    read_series_headers,
    write_dicom_seg,
)
from UNetSegmentLib.io import read_image  # noqa: E402
from UNetSegmentLib.labels import STRUCTURES  # noqa: E402
from UNetSegmentLib.model_package import ModelInfo, ModelPackage  # noqa: E402

pytestmark = [pytest.mark.shared_data, pytest.mark.filterwarnings("ignore::UserWarning")]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"


def _info() -> ModelInfo:
    return ModelPackage.load(DEFAULT_MODEL, verify=False).info


def _zonal_info() -> ModelInfo:
    d = _info().to_dict()
    d["id"], d["version"] = "test-zonal", "0.0.1"
    d["labels"] = [
        {"value": v, **STRUCTURES[name].to_dict()} for v, name in ((1, "peripheral_zone"), (2, "transition_zone"))
    ]
    return ModelInfo.from_dict(d)


def _series_slices_by_uid(folder: Path):
    """SOPInstanceUID -> (ImagePositionPatient, pixel array) of every instance, read file by file."""
    out = {}
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(str(f))
        out[ds.SOPInstanceUID] = (np.asarray(ds.ImagePositionPatient, dtype=float), ds.pixel_array)
    return out


def _check_seg(path: Path, image: sitk.Image, labelmap: sitk.Image, folder: Path, info: ModelInfo) -> None:
    seg = hd.seg.segread(str(path))
    array_zyx = sitk.GetArrayFromImage(labelmap)
    image_zyx = sitk.GetArrayFromImage(image)
    instances = _series_slices_by_uid(folder)
    source_series = {pydicom.dcmread(str(f), stop_before_pixels=True).SeriesInstanceUID for f in folder.iterdir()}
    # the source series and study are referenced
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID in source_series
    assert (
        seg.StudyInstanceUID == pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True).StudyInstanceUID
    )
    assert seg.number_of_frames == array_zyx.shape[0] * len(info.labels)
    assert seg.SeriesNumber > 0 and seg.InstanceNumber == 1
    # every frame references one instance; that instance's pixels and position are labelmap slice k's
    seen = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = int(
            np.argmin(
                [
                    np.linalg.norm(position - labelmap.TransformIndexToPhysicalPoint((0, 0, z)))
                    for z in range(array_zyx.shape[0])
                ]
            )
        )
        src_position, src_pixels = instances[uid]
        np.testing.assert_allclose(src_position, position, atol=1e-3)
        np.testing.assert_array_equal(src_pixels, image_zyx[k])
        seen.add(uid)
    assert seen == set(instances)
    # the frames equal the labelmap voxel for voxel, per source instance in labelmap order
    uids = [
        min(
            instances, key=lambda u: np.linalg.norm(instances[u][0] - labelmap.TransformIndexToPhysicalPoint((0, 0, z)))
        )
        for z in range(array_zyx.shape[0])
    ]
    for number, lab in enumerate(info.labels, start=1):
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number])
        np.testing.assert_array_equal(frames[..., 0].astype(bool), array_zyx == lab.value)
        desc = seg.get_segment_description(number)
        assert desc.segmented_property_type.value == lab.structure.snomed_code
        assert desc.segmented_property_type.scheme_designator == "SCT"
        assert desc.segmented_property_category.value == "123037004"
        algo = desc.algorithm_identification[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (info.id, info.version)
        assert str(desc.algorithm_type.value) == "AUTOMATIC"


def test_prostatex_reference_label_round_trips(shared_data, tmp_path):
    folder = shared_data / "prostatex" / "ProstateX-0000" / "dicom" / "t2w"
    image = read_image(folder)
    labelmap = sitk.Cast(
        sitk.ReadImage(str(folder.parents[1] / "labels" / "wholegland_AI_Guerbet23.nii.gz")), sitk.sitkUInt8
    )
    assert labelmap.GetSize() == image.GetSize()
    labelmap.CopyInformation(image)
    assert sitk.GetArrayViewFromImage(labelmap).any()
    info = _info()
    path = write_dicom_seg(labelmap, folder, info, tmp_path / "seg.dcm")
    _check_seg(path, image, labelmap, folder, info)


def test_zonal_labels_get_two_segments_with_their_codes(shared_data, tmp_path):
    folder = shared_data / "prostatex" / "ProstateX-0000" / "dicom" / "t2w"
    image = read_image(folder)
    zones = sitk.Cast(
        sitk.ReadImage(str(folder.parents[1] / "labels" / "zonal_pz1_tz2_AI_Yuan23.nii.gz")), sitk.sitkUInt8
    )
    zones.CopyInformation(image)
    assert set(np.unique(sitk.GetArrayViewFromImage(zones))) == {0, 1, 2}
    info = _zonal_info()
    path = write_dicom_seg(zones, folder, info, tmp_path / "zones.dcm")
    _check_seg(path, image, zones, folder, info)
    seg = hd.seg.segread(str(path))
    assert [seg.get_segment_description(n).segmented_property_type.value for n in (1, 2)] == ["279706003", "399384005"]


@pytest.mark.parametrize("case", ["Prostate3T-03-0001", "Prostate3T-03-0002"])
def test_nci_isbi_series_slice_dependent_labelmap(shared_data, tmp_path, case):
    """A labelmap that differs on every slice: frames in the wrong order or on the wrong instance fail."""
    folder = shared_data / "nci_isbi_test_dicom" / case
    image = read_image(folder)
    nx, ny, nz = image.GetSize()
    array_zyx = np.zeros((nz, ny, nx), dtype=np.uint8)
    for z in range(nz):
        array_zyx[z, 100 + 5 * z : 150 + 5 * z, 120 : 130 + 7 * z] = 1
    labelmap = sitk.GetImageFromArray(array_zyx)
    labelmap.CopyInformation(image)
    info = _info()
    path = write_dicom_seg(labelmap, folder, info, tmp_path / "seg.dcm")
    _check_seg(path, image, labelmap, folder, info)


def test_labelmap_off_the_series_is_refused(shared_data):
    folder = shared_data / "nci_isbi_test_dicom" / "Prostate3T-03-0001"
    image = read_image(folder)
    shifted = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    shifted.CopyInformation(image)
    shifted.SetOrigin([o + 1.5 for o in image.GetOrigin()])
    with pytest.raises(DicomSegError, match="does not lie on a DICOM series"):
        read_series_headers(folder, shifted)


def test_headers_are_grouped_by_series(shared_data):
    groups = read_headers(shared_data / "nci_isbi_test_dicom")
    assert sorted(len(v) for v in groups.values()) == [19, 21]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all("PixelData" not in ds for v in groups.values() for ds in v)
