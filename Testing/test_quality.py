"""Quality flags: each fires on the case it describes and stays quiet on a plain axial T2."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_image

from UNetSegmentLib.model_package import ModelPackage
from UNetSegmentLib.quality import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    acquisition_plane,
    confidence_threshold,
    dicom_text_tags,
    input_flags,
    output_flags,
)


def codes(flags):
    return [f.code for f in flags]


def rotation_x(deg: float):
    """Direction cosines (row-major 3x3) of a tilt about the patient's left-right axis."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)


def test_a_plain_axial_t2_has_no_input_flags():
    assert input_flags(synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0))) == []


@pytest.mark.parametrize(
    "direction, plane",
    [
        ((0, 0, 1, 1, 0, 0, 0, 1, 0), "sagittal"),  # slices stacked along x (L)
        ((1, 0, 0, 0, 0, 1, 0, 1, 0), "coronal"),  # slices stacked along y (P)
    ],
)
def test_sagittal_and_coronal_acquisitions_are_flagged_with_the_measured_cost(direction, plane):
    image = synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0), direction=direction)
    assert acquisition_plane(image)[0] == plane
    flags = [f for f in input_flags(image) if f.code == f"{plane}_acquisition"]
    assert len(flags) == 1
    assert "0.78 and 0.63" in flags[0].message and "31% and 52% less volume" in flags[0].message


def test_obliquity_is_measured_and_flagged_only_when_large():
    assert acquisition_plane(synthetic_image(direction=rotation_x(18)))[1] == pytest.approx(18, abs=0.01)
    big = synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0), direction=rotation_x(40))
    small = synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0), direction=rotation_x(18))
    assert codes(input_flags(big)) == ["oblique"] and "40 degrees" in input_flags(big)[0].message
    assert input_flags(small) == []


def test_pixel_size_slice_thickness_and_field_of_view():
    assert "coarse_pixels" in codes(input_flags(synthetic_image(size_xyz=(96, 96, 20), spacing=(2.0, 2.0, 3.0))))
    assert "thick_slices" in codes(input_flags(synthetic_image(size_xyz=(160, 160, 12), spacing=(0.8, 0.8, 6.0))))
    assert "small_field_of_view" in codes(input_flags(synthetic_image(size_xyz=(64, 64, 20), spacing=(1.0, 1.0, 3.0))))
    assert "large_field_of_view" in codes(
        input_flags(synthetic_image(size_xyz=(400, 400, 20), spacing=(1.0, 1.0, 3.0)))
    )


def test_intensity_statistics_unlike_a_t2():
    base = synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0))
    a = sitk.GetArrayFromImage(base)
    masked = a.copy()
    masked[:, :, :100] = 0  # 62% zeros, as a masked ADC map
    negative = (a.astype(np.int16) - 400).astype(np.int16)
    labels = (a > 400).astype(np.int16)
    for arr, code in ((masked, "masked_background"), (negative, "negative_intensities"), (labels, "few_grey_levels")):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(base)
        assert code in codes(input_flags(img)), code


@pytest.mark.parametrize(
    "tags, what",
    [
        ({"SeriesDescription": "ep2d_diff_b50_400_800_ADC"}, "ADC"),
        ({"SeriesDescription": "ep2d_diff_b1400_TRACEW"}, "diffusion"),
        ({"ProtocolName": "t1_twist_tra_dyn"}, "dynamic"),
        ({"SeriesDescription": "localizer", "ImageType": "ORIGINAL\\PRIMARY\\M\\NORM"}, "localizer"),
    ],
)
def test_dicom_names_of_other_contrasts_are_flagged(tags, what):
    flags = [f for f in input_flags(synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0)), tags)]
    assert codes(flags) == ["other_contrast"] and what in flags[0].message


def test_t2_dicom_names_and_a_named_coil():
    image = synthetic_image(size_xyz=(160, 160, 20), spacing=(0.8, 0.8, 3.0))
    assert (
        input_flags(image, {"SeriesDescription": "t2_tse_tra", "ImageType": "ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D"}) == []
    )
    assert codes(input_flags(image, {"ReceiveCoilName": "Endorectal"})) == ["endorectal_coil"]


def _labelmap(mask_zyx: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    img.SetSpacing(spacing)
    return img


def _ellipsoid(shape=(30, 100, 100), centre=(15, 50, 50), radii_vox=(6, 25, 20)) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii_vox)) <= 1


def test_one_plausible_gland_has_no_output_flags():
    mask = _ellipsoid()
    assert 15 < mask.sum() * 3 / 1000 < 150
    assert output_flags(_labelmap(mask), [1], confidence=0.95, threshold=0.9) == []


def test_output_checks_each_fire_on_their_case():
    gland = _ellipsoid()
    two = gland | _ellipsoid(centre=(15, 50, 90), radii_vox=(2, 4, 4))
    end = _ellipsoid(centre=(2, 50, 50))
    edge = _ellipsoid(centre=(15, 50, 5))
    gap = gland.copy()
    gap[15] = False
    holes = gland.copy()
    holes[14, 45:55, 45:55] = False
    small = _ellipsoid(radii_vox=(2, 6, 6))
    cases = {
        "several_components": two,
        "touches_end_slice": end,
        "touches_image_edge": edge,
        "slice_gap": gap,
        "holes": holes,
        "volume_out_of_range": small,
    }
    for code, mask in cases.items():
        assert code in codes(output_flags(_labelmap(mask), [1])), code
    assert codes(output_flags(_labelmap(np.zeros((30, 100, 100), bool)), [1])) == ["empty"]
    low = output_flags(_labelmap(gland), [1], confidence=0.8, threshold=0.9)
    assert codes(low) == ["low_confidence"] and "0.80" in low[0].message and "0.90" in low[0].message
    # every flag is one sentence
    for flags in (low, output_flags(_labelmap(two), [1])):
        assert all(len(re.findall(r"[.!?](\s|$)", f.message)) == 1 for f in flags)


def test_the_zones_together_are_the_gland():
    gland = _ellipsoid().astype(np.uint8)
    zones = gland.copy()
    zones[:, :50] *= 2  # transition zone in front, peripheral zone behind: one gland, two labels
    assert output_flags(_labelmap(zones), [1, 2]) == []


def test_the_confidence_threshold_comes_from_the_model_when_it_has_one(tiny_package):
    assert confidence_threshold(tiny_package.info) == DEFAULT_CONFIDENCE_THRESHOLD
    d = tiny_package.info.to_dict()
    d["training"] = {"calibration": {"confidence_threshold": 0.8}}
    from UNetSegmentLib.model_package import ModelInfo

    assert confidence_threshold(ModelInfo.from_dict(d)) == 0.8


@pytest.mark.shared_data
def test_real_scans(shared_data):
    """ProstateX's T2 passes; its ADC and diffusion maps are flagged; the DICOM tags are read from the files."""
    px = shared_data / "prostatex" / "ProstateX-0000"
    assert input_flags(sitk.ReadImage(str(px / "t2w.nii.gz"))) == []
    for name in ("adc.nii.gz", "hbv.nii.gz"):
        assert {"masked_background", "coarse_pixels"} <= set(codes(input_flags(sitk.ReadImage(str(px / name)))))
    tags = dicom_text_tags(shared_data / "nci_isbi_test_dicom" / "Prostate3T-03-0001")
    assert tags["SeriesDescription"] == "t2_tse_tra" and tags["ImageType"].startswith("ORIGINAL")


@pytest.mark.shared_data
def test_endorectal_coil_on_promise12(shared_data):
    """The coil centres' cases (BIDMC 0-12 except 01, HK 38-49: 15 of the 36) are flagged and no other case is.

    The brightness ratio's threshold was chosen on these cases: this guards it against drift, it is not
    an independent validation.
    """
    folder = shared_data / "promise12"
    flagged, expected = set(), set()
    for path in sorted(folder.glob("Case*_image.nii.gz")):
        n = int(path.name[4:6])
        if n <= 12 and n != 1 or 38 <= n <= 49:
            expected.add(n)
        if "endorectal_coil" in codes(input_flags(sitk.ReadImage(str(path)))):
            flagged.add(n)
    assert len(expected) == 15 and flagged == expected


def test_the_default_model_loads_a_threshold():
    from conftest import REPO

    info = ModelPackage.load(REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2", verify=False).info
    assert 0 < confidence_threshold(info) < 1
