"""The synthetic prostate MRI generator and the synthetic dataset source."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from training.config import DatasetSource
from training.data.registry import read_source
from training.data.synthetic import LABEL_MAP, generate_dataset
from UNetSegmentLib.synthetic import PZ_LABEL, TZ_LABEL, make_case


def _arrays(image, label):
    return sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(label)


def _ml(mask, image) -> float:
    return float(mask.sum()) * float(np.prod(image.GetSpacing())) / 1000.0


def _centroid_lps(mask_zyx: np.ndarray, image: sitk.Image) -> np.ndarray:
    idx_xyz = np.argwhere(mask_zyx).mean(0)[::-1]
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx_xyz]))


def test_default_case_grid_types_and_values():
    image, label = make_case(0)
    assert image.GetSize() == (160, 160, 24) and label.GetSize() == (160, 160, 24)
    assert np.allclose(image.GetSpacing(), (0.6, 0.6, 3.0))
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert image.GetOrigin() == label.GetOrigin() and image.GetSpacing() == label.GetSpacing()
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    a, lab = _arrays(image, label)
    assert set(np.unique(lab)) == {0, PZ_LABEL, TZ_LABEL}
    assert a.min() >= 0 and a.max() > 300  # magnitude image with a realistic range


def test_same_seed_same_case_and_other_seed_other_case():
    a0, l0 = _arrays(*make_case(3))
    a1, l1 = _arrays(*make_case(3))
    a2, l2 = _arrays(*make_case(4))
    assert np.array_equal(a0, a1) and np.array_equal(l0, l1)
    assert not np.array_equal(l0, l2)


@pytest.mark.parametrize("seed", range(6))
def test_zonal_anatomy_and_t2_contrast(seed):
    image, label = make_case(seed)
    a, lab = _arrays(image, label)
    pz, tz = lab == PZ_LABEL, lab == TZ_LABEL
    gland_ml = _ml(lab > 0, image)
    assert 18.0 <= gland_ml <= 85.0
    assert 0.15 < pz.sum() / (lab > 0).sum() < 0.85
    # the PZ wraps the TZ from behind: its centroid is posterior (larger LPS y, larger row index j)
    assert _centroid_lps(pz, image)[1] > _centroid_lps(tz, image)[1] + 3.0
    assert np.argwhere(pz)[:, 1].mean() > np.argwhere(tz)[:, 1].mean()
    # and laterally: the PZ spreads wider left-right than the TZ
    assert np.ptp(np.argwhere(pz)[:, 2]) > np.ptp(np.argwhere(tz)[:, 2])
    # T2: the PZ is brighter than the TZ
    assert a[pz].mean() > 1.4 * a[tz].mean()


@pytest.mark.parametrize("gland_ml", [20.0, 45.0, 80.0])
def test_requested_gland_volume_is_labelled(gland_ml):
    image, label = make_case(7, gland_ml=gland_ml)
    assert _ml(sitk.GetArrayFromImage(label) > 0, image) == pytest.approx(gland_ml, rel=0.05)


def test_whole_gland_labels_are_the_union_of_the_zones():
    _, zonal = _arrays(*make_case(5))
    _, whole = _arrays(*make_case(5, zones=False))
    assert set(np.unique(whole)) == {0, 1}
    assert np.array_equal(whole == 1, zonal > 0)


def test_bladder_above_the_gland_and_air_outside_the_body():
    image, label = make_case(2, spacing_xyz=(2.0, 2.0, 3.0), size_xyz=(200, 160, 40))
    a, lab = _arrays(image, label)
    gland = np.argwhere(lab > 0)
    _, cy, cx = gland.mean(0).astype(int)
    column = a[:, cy - 10 : cy + 10, cx - 10 : cx + 10]  # 40 x 40 mm around the gland, all slices
    bright = np.argwhere(column > np.percentile(column, 95))  # urine is the brightest tissue there
    assert bright[:, 0].mean() > gland[:, 0].max()
    corner = a[:, :8, :8]  # 400 x 320 mm field: the corners are air (noise only)
    assert corner.mean() < 0.1 * np.percentile(a, 90)


def test_anatomy_stays_put_in_physical_space_across_grids():
    """The grid samples a pose fixed by the seed: the gland's LPS centroid does not depend on the grid."""
    fine_img, fine_lab = make_case(11)
    coarse_img, coarse_lab = make_case(11, spacing_xyz=(1.5, 1.2, 4.0), size_xyz=(70, 90, 20))
    c_fine = _centroid_lps(sitk.GetArrayFromImage(fine_lab) > 0, fine_img)
    c_coarse = _centroid_lps(sitk.GetArrayFromImage(coarse_lab) > 0, coarse_img)
    assert np.linalg.norm(c_fine - c_coarse) < 2.0
    assert coarse_img.GetSize() == (70, 90, 20)


def test_rejects_bad_grids():
    with pytest.raises(ValueError):
        make_case(0, spacing_xyz=(0.6, 0.0, 3.0))
    with pytest.raises(ValueError):
        make_case(0, size_xyz=(160, 160))


def test_generate_dataset_writes_once_and_splits(tmp_path):
    cases = generate_dataset(str(tmp_path), 5, seed=1)
    assert [c.case_id for c in cases] == [f"synthetic-s1-{i:03d}" for i in range(5)]
    assert [c.split for c in cases] == ["train"] * 4 + ["validation"]
    assert all(c.group == "synthetic" and c.label_map == LABEL_MAP for c in cases)
    assert LABEL_MAP == {1: "peripheral_zone", 2: "transition_zone"}
    assert len(list(tmp_path.glob("*.nii.gz"))) == 10
    image, label = sitk.ReadImage(cases[0].image), sitk.ReadImage(cases[0].label)
    assert image.GetSize() == label.GetSize() and np.allclose(image.GetOrigin(), label.GetOrigin())
    ref_img, ref_lab = make_case(1 * 1_000_003 + 0)
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(ref_lab))
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = generate_dataset(str(tmp_path), 5, seed=1)
    assert again == cases
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_generate_dataset_small_counts_and_registry(tmp_path):
    two = read_source(DatasetSource(format="synthetic", path=str(tmp_path), num_cases=2, seed=0))
    assert [c.split for c in two] == ["train", "validation"]
    assert [c.split for c in generate_dataset(str(tmp_path / "one"), 1, 0)] == ["train"]
    with pytest.raises(ValueError):
        generate_dataset(str(tmp_path / "none"), 0, 0)
