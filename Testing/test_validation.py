"""Input validation: each kind of image no model can segment is refused with a plain message."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_image

from UNetSegmentLib.io import ImageReadError
from UNetSegmentLib.validation import (
    CT_AIR_HU,
    InvalidImageError,
    dicom_modality,
    header_spacing,
    read_input,
    validate_image,
)


def _image(array_zyx: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    return img


def write_dicom_series(image: sitk.Image, folder, modality: str = "MR") -> None:
    """Write a 3D int16 image as a DICOM series (one file per slice) with ``modality``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.1"
    d = image.GetDirection()
    sx, sy, sz = image.GetSpacing()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0020|000d": uid + ".1",
            "0020|000e": uid + ".2",
            "0020|0052": uid + ".4",
            "0008|0018": f"{uid}.3.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:.4f}" for c in pos),
            "0020|0037": "\\".join(str(c) for c in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0028|0030": f"{sy}\\{sx}",
            "0018|0050": str(sz),
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def test_a_plausible_t2_volume_passes_without_warnings():
    assert validate_image(synthetic_image()) == []


def test_a_2d_image_is_refused():
    with pytest.raises(InvalidImageError, match="2D"):
        validate_image(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(64, 64))))


def test_a_4d_image_is_refused_with_a_hint_to_choose_a_channel():
    img = sitk.JoinSeries([synthetic_image(seed=s) for s in range(2)])
    assert img.GetDimension() == 4
    with pytest.raises(InvalidImageError, match="--channel"):
        validate_image(img)


def test_a_4d_file_is_accepted_once_a_channel_is_chosen(tmp_path):
    path = tmp_path / "t2_adc.nii.gz"
    sitk.WriteImage(
        sitk.JoinSeries([sitk.Cast(synthetic_image(seed=s), sitk.sitkFloat32) for s in range(2)]), str(path)
    )
    with pytest.raises(InvalidImageError, match="4D"):
        read_input(path)
    image, warnings = read_input(path, channel=1)
    assert image.GetDimension() == 3 and warnings == []


def test_a_multi_component_image_is_refused():
    a, b = synthetic_image(seed=0), synthetic_image(seed=1)
    with pytest.raises(InvalidImageError, match="components"):
        validate_image(sitk.Compose(a, b))


def test_an_empty_image_is_refused(tmp_path):
    (tmp_path / "e.raw").write_bytes(b"")
    (tmp_path / "e.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 0 64 16\nElementSpacing = 1 1 3\nElementType = MET_SHORT\nElementDataFile = e.raw\n",
        encoding="utf-8",
    )
    with pytest.raises(InvalidImageError, match="empty"):
        read_input(tmp_path / "e.mhd")


def test_a_constant_image_is_refused():
    with pytest.raises(InvalidImageError, match="constant"):
        validate_image(_image(np.full((16, 64, 64), 7, np.int16)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    arr = sitk.GetArrayFromImage(synthetic_image()).astype(np.float32)
    arr[3, 10, 10] = bad
    with pytest.raises(InvalidImageError, match="NaN" if np.isnan(bad) else "Inf"):
        validate_image(_image(arr))


@pytest.mark.parametrize("spacing", [(0.01, 0.01, 3.0), (1.0, 1.0, 25.0)])
def test_absurd_spacing_is_refused(spacing):
    img = synthetic_image(size_xyz=(64, 64, 16), spacing=spacing)
    with pytest.raises(InvalidImageError, match="spacing"):
        validate_image(img)


@pytest.mark.parametrize("suffix", [".mhd", ".nrrd"])
def test_zero_spacing_in_a_header_is_an_invalid_image_not_an_unreadable_file(tmp_path, suffix):
    data = np.random.default_rng(0).integers(0, 1000, (16, 64, 64)).astype(np.int16).tobytes()
    if suffix == ".mhd":
        (tmp_path / "z.raw").write_bytes(data)
        (tmp_path / "z.mhd").write_text(
            "ObjectType = Image\nNDims = 3\nDimSize = 64 64 16\nElementSpacing = 0 1 3\nElementType = MET_SHORT\nElementDataFile = z.raw\n",
            encoding="utf-8",
        )
    else:
        header = (
            "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 64 64 16\n"
            "space directions: (0,0,0) (0,1,0) (0,0,3)\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            "space origin: (0,0,0)\n\n"
        )
        (tmp_path / "z.nrrd").write_bytes(header.encode() + data)
    assert header_spacing(tmp_path / f"z{suffix}")[0] == 0.0
    with pytest.raises(InvalidImageError, match="zero or negative"):
        read_input(tmp_path / f"z{suffix}")


def test_fewer_than_three_slices_is_refused():
    with pytest.raises(InvalidImageError, match="3 slices"):
        validate_image(synthetic_image(size_xyz=(64, 64, 2)))


def test_a_field_of_view_too_small_for_a_prostate_is_refused():
    with pytest.raises(InvalidImageError, match="in-plane"):
        validate_image(synthetic_image(size_xyz=(40, 40, 16), spacing=(0.5, 0.5, 3.0)))  # 20 x 20 mm


def test_the_slice_axis_of_a_sagittal_stack_is_its_coarse_axis():
    # sagittal acquisition stored with x as the slice axis: 12 slices x 4 mm, 80 x 80 mm in-plane
    assert validate_image(synthetic_image(size_xyz=(12, 160, 160), spacing=(4.0, 0.5, 0.5))) == []
    with pytest.raises(InvalidImageError, match="in-plane"):
        validate_image(synthetic_image(size_xyz=(12, 40, 160), spacing=(4.0, 0.5, 0.5)))


def test_a_thin_slab_gets_a_warning_but_passes():
    warnings = validate_image(synthetic_image(size_xyz=(64, 64, 5), spacing=(1.0, 1.0, 3.0)))
    assert len(warnings) == 1 and "cut off" in warnings[0]


def test_hounsfield_like_values_give_a_ct_warning():
    arr = sitk.GetArrayFromImage(synthetic_image()).astype(np.int16)
    arr[:, :, :20] = -1000  # air around the body, as in a CT
    warnings = validate_image(_image(arr))
    assert len(warnings) == 1 and "CT" in warnings[0] and f"{CT_AIR_HU:g}" in warnings[0]


def test_a_few_negative_values_in_an_mr_do_not_warn():
    arr = sitk.GetArrayFromImage(synthetic_image()).astype(np.int16)
    arr[0, 0, :10] = -1000  # a handful of odd voxels, far below 5%
    arr[1] -= 300
    assert validate_image(_image(arr)) == []


def test_dicom_modality_ct_gives_a_warning(tmp_path):
    write_dicom_series(synthetic_image(), tmp_path / "ct", modality="CT")
    assert dicom_modality(tmp_path / "ct") == "CT"
    image, warnings = read_input(tmp_path / "ct")
    assert image.GetSize() == (64, 64, 16)
    assert len(warnings) == 1 and "Modality CT" in warnings[0]


def test_a_dicom_mr_series_passes(tmp_path):
    write_dicom_series(synthetic_image(), tmp_path / "mr" / "study" / "series", modality="MR")
    image, warnings = read_input(tmp_path / "mr")
    assert image.GetSize() == (64, 64, 16) and warnings == []


def test_missing_and_unreadable_inputs_raise_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_input(tmp_path / "nope.nrrd")
    (tmp_path / "junk.nrrd").write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(ImageReadError, match="cannot read"):
        read_input(tmp_path / "junk.nrrd")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_input(tmp_path / "empty_folder")
