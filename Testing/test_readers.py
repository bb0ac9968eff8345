"""Dataset readers on fixtures written in each dataset's exact on-disk format, and on the real data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from Testing.fixtures_datasets import make_msd, make_nci_isbi, make_promise12_mhd, small_case
from training.config import DatasetSource
from training.data.msd import read_msd
from training.data.nci_isbi import (
    DEFAULT_LABEL_MAP,
    check_zone_labels,
    read_nci_isbi,
    read_series_geometries,
    scan_nci_isbi,
)
from training.data.promise12 import read_promise12
from training.data.registry import read_source
from training.dataset import targets_for
from UNetSegmentLib.io import read_image
from UNetSegmentLib.preprocessing import PreprocessingSpec, preprocess_image, preprocess_label

PZ, TZ = "peripheral_zone", "transition_zone"
ZONAL = [PZ, TZ]


def _on(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``label`` resampled onto ``reference``'s grid in physical space, ``(z, y, x)``."""
    res = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res)


def _structure_mask(label_zyx: np.ndarray, label_map, name: str) -> np.ndarray:
    return np.isin(label_zyx, [v for v, n in label_map.items() if n == name])


# --------------------------------------------------------------------------- NCI-ISBI


@pytest.fixture(scope="module")
def nci_root(tmp_path_factory):
    return make_nci_isbi(tmp_path_factory.mktemp("nci_isbi"))


@pytest.fixture(scope="module")
def nci_cases(nci_root):
    return {c.case_id: c for c in read_nci_isbi(str(nci_root))}


def test_nci_official_split_groups_and_left_out_cases(nci_cases):
    assert {i: (c.split, c.group) for i, c in nci_cases.items()} == {
        "Prostate3T-01-0001": ("train", "3T"),
        "ProstateDx-01-0001": ("train", "1.5T"),
        "Prostate3T-01-0002": ("validation", "3T"),
        "ProstateDx-01-0002": ("test", "1.5T"),
    }  # ProstateDx-01-0003 (label outside its series) and Prostate3T-01-0003 (no label) are out
    assert all(c.source == "nci_isbi" for c in nci_cases.values())
    assert nci_cases["Prostate3T-01-0002"].label.endswith("Leaderboard/Prostate3T-01-0002_truth.nrrd")


def test_nci_label_values_follow_anatomy_default_and_swapped(nci_cases):
    assert DEFAULT_LABEL_MAP == {1: TZ, 2: PZ}
    assert nci_cases["Prostate3T-01-0001"].label_map == {1: TZ, 2: PZ}
    assert nci_cases["ProstateDx-01-0001"].label_map == {1: PZ, 2: TZ}  # swapped file, caught by anatomy


@pytest.mark.parametrize(
    "case_id, seed, direction_deg",
    [("Prostate3T-01-0001", 0, None), ("ProstateDx-01-0001", 1, None), ("Prostate3T-01-0002", 2, 10.0)],
)
def test_nci_image_and_label_reproduce_the_written_case(nci_cases, case_id, seed, direction_deg):
    """DICOM read back has the written geometry and voxels; the mapped label equals the written zones."""
    from Testing.fixtures_datasets import oblique_direction

    case = nci_cases[case_id]
    ref_img, ref_lab = small_case(seed, direction=None if direction_deg is None else oblique_direction(direction_deg))
    image = read_image(case.image)
    assert image.GetSize() == ref_img.GetSize()
    assert np.allclose(image.GetSpacing(), ref_img.GetSpacing())
    assert np.allclose(image.GetOrigin(), ref_img.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetDirection(), ref_img.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), np.clip(sitk.GetArrayFromImage(ref_img), 0, None))
    label = _on(sitk.ReadImage(case.label), image)  # the cropped label is resampled in physical space
    ref = sitk.GetArrayFromImage(ref_lab)
    for name, value in ((PZ, 1), (TZ, 2)):
        got = _structure_mask(label, case.label_map, name)
        want = ref == value
        if case_id == "ProstateDx-01-0001":  # its label NRRD lacks the first and last slice
            want[[0, -1]] = False
        assert got.sum() > 0 and np.array_equal(got, want)


@pytest.mark.parametrize("case_id", ["Prostate3T-01-0001", "ProstateDx-01-0001", "Prostate3T-01-0002"])
def test_nci_model_targets_put_the_pz_behind_the_tz(nci_cases, case_id):
    """Through the shared preprocessing: model target 1 (PZ) lies posterior to target 2 (TZ) on the LPS model grid."""
    case = nci_cases[case_id]
    _, grid = preprocess_image(read_image(case.image), PreprocessingSpec((3.0, 3.0, 8.0)))
    target, kind = targets_for(preprocess_label(sitk.ReadImage(case.label), grid), case.label_map, ZONAL)
    assert kind == "full"
    assert np.argwhere(target == 1)[:, 1].mean() > np.argwhere(target == 2)[:, 1].mean() + 1.0


def test_nci_scan_reports_geometry_and_series_choice(nci_root):
    entries = {e.patient_id: e for e in scan_nci_isbi(str(nci_root))}
    assert entries["Prostate3T-01-0001"].grid_note == "" and entries["Prostate3T-01-0001"].overlap == 1.0
    cropped = entries["ProstateDx-01-0001"]
    assert "size" in cropped.grid_note and cropped.overlap == 1.0
    assert cropped.series is not None and cropped.series.description == "T2 TSE AX"  # not the ADC series
    assert cropped.zones.decision == "anatomy" and "swapped" in cropped.zones.reason
    assert entries["ProstateDx-01-0003"].overlap == 0.0
    assert "Prostate3T-01-0003" not in entries


def test_nci_overrides_by_argument_and_file(nci_root, tmp_path):
    cases = {
        c.case_id: c
        for c in read_nci_isbi(str(nci_root), overrides={"prostatedx-01-0001": {1: "central_gland", 2: "pz"}})
    }
    assert cases["ProstateDx-01-0001"].label_map == {1: TZ, 2: PZ}
    copy = tmp_path / "nci"
    shutil.copytree(nci_root, copy)
    (copy / "label_overrides.json").write_text(
        json.dumps({"Prostate3T-01-0001": {"1": "pz", "2": "tz"}}), encoding="utf-8"
    )
    cases = {c.case_id: c for c in read_nci_isbi(str(copy))}
    assert cases["Prostate3T-01-0001"].label_map == {1: PZ, 2: TZ}
    assert cases["ProstateDx-01-0001"].label_map == {1: PZ, 2: TZ}
    (copy / "label_overrides.json").write_text(json.dumps({"Prostate3T-01-0001": {"1": "bladder"}}), encoding="utf-8")
    with pytest.raises(KeyError):
        read_nci_isbi(str(copy))


def test_nci_through_the_registry(nci_root):
    cases = read_source(DatasetSource(format="nci_isbi", path=str(nci_root)))
    assert len(cases) == 4


def test_zone_rule_falls_back_to_the_default_when_anatomy_cannot_decide():
    _, label = small_case(0)
    only_pz = sitk.BinaryThreshold(label, 1, 1, 1, 0)
    check = check_zone_labels(only_pz)
    assert check.decision == "default" and check.label_map == DEFAULT_LABEL_MAP
    # two values side by side (left/right) at the same y: no anatomical answer
    arr = np.zeros((4, 20, 20), np.uint8)
    arr[1:3, 8:12, 2:8], arr[1:3, 8:12, 12:18] = 1, 2
    side_by_side = sitk.GetImageFromArray(arr)
    assert check_zone_labels(side_by_side).decision == "default"
    # and the rule works in physical space: a grid flipped in y (RAS-like rows) still finds the PZ
    flipped = sitk.Flip(label, [False, True, False], flipAboutOrigin=False)
    assert flipped.GetDirection()[4] == -1.0
    assert check_zone_labels(flipped).label_map == {1: PZ, 2: TZ}


def test_nci_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nci_isbi(str(tmp_path / "absent"))
    (tmp_path / "Training").mkdir()
    with pytest.raises(ValueError, match="no NCI-ISBI label"):
        read_nci_isbi(str(tmp_path))


# --------------------------------------------------------------------------- MSD Task05


@pytest.fixture()
def msd_root(tmp_path):
    return make_msd(tmp_path / "Task05_Prostate")


def test_msd_cases_split_labels_and_channel(msd_root):
    cases = read_msd(str(msd_root))
    assert [(c.case_id, c.split) for c in cases] == [
        ("prostate_00", "train"),
        ("prostate_02", "train"),
        ("prostate_05", "test"),
    ]
    assert all(c.channel == 0 and c.label_map == {1: PZ, 2: TZ} and c.group == "Radboud" for c in cases)
    assert cases[2].label is None
    assert not any("._" in c.image for c in cases)


def test_msd_t2_channel_and_geometry(msd_root):
    case = read_msd(str(msd_root))[0]
    ref_img, ref_lab = small_case(100)
    t2 = read_image(case.image, case.channel)
    adc = read_image(case.image, 1)
    label = sitk.ReadImage(case.label)
    assert t2.GetDimension() == 3 and t2.GetSize() == ref_img.GetSize()
    for img in (t2, label):
        assert np.allclose(img.GetOrigin(), ref_img.GetOrigin(), atol=1e-3)
        assert np.allclose(img.GetSpacing(), ref_img.GetSpacing())
        assert np.allclose(img.GetDirection(), ref_img.GetDirection(), atol=1e-6)
    assert np.allclose(sitk.GetArrayFromImage(t2), sitk.GetArrayFromImage(ref_img))
    assert np.allclose(sitk.GetArrayFromImage(adc), 2000.0 - sitk.GetArrayFromImage(ref_img))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(ref_lab))
    pz = _structure_mask(sitk.GetArrayFromImage(label), case.label_map, PZ)
    tz = _structure_mask(sitk.GetArrayFromImage(label), case.label_map, TZ)
    assert sitk.GetArrayFromImage(t2)[pz].mean() > sitk.GetArrayFromImage(t2)[tz].mean()


def test_msd_label_table_and_modality_come_from_dataset_json(msd_root):
    meta = json.loads((msd_root / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"0": "background", "1": "TZ", "2": "PZ"}
    meta["modality"] = {"0": "ADC", "1": "T2"}
    (msd_root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    case = read_msd(str(msd_root))[0]
    assert case.label_map == {1: TZ, 2: PZ} and case.channel == 1
    meta["labels"] = {"0": "background", "1": "tumour"}
    (msd_root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="tumour"):
        read_msd(str(msd_root))


def test_msd_without_dataset_json_and_via_registry(msd_root):
    via_registry = read_source(DatasetSource(format="msd", path=str(msd_root)))
    (msd_root / "dataset.json").unlink()
    cases = read_msd(str(msd_root))
    assert [(c.case_id, c.split, c.channel) for c in cases] == [(c.case_id, c.split, c.channel) for c in via_registry]
    assert cases[0].label_map == {1: PZ, 2: TZ}


# --------------------------------------------------------------------------- PROMISE12


def test_promise12_metaimage_layout(tmp_path):
    root = make_promise12_mhd(tmp_path / "promise12")
    cases = read_promise12(str(root))
    assert [(c.case_id, c.group, c.split) for c in cases] == [
        ("Case00", "BIDMC", "train"),
        ("Case13", "RUNMC", "train"),
        ("Case38", "HK", "train"),
        ("Case50", "", "test"),
    ]
    assert all(c.label_map == {1: "prostate"} for c in cases)
    case = cases[1]
    assert case.image.endswith("Case13.mhd") and case.label.endswith("Case13_segmentation.mhd")
    image, label = read_image(case.image), sitk.ReadImage(case.label)
    ref_img, ref_lab = small_case(213, zones=False)
    assert image.GetSize() == label.GetSize() == ref_img.GetSize()
    assert np.allclose(label.GetOrigin(), image.GetOrigin()) and np.allclose(label.GetSpacing(), (3.0, 3.0, 8.0))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(ref_lab))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref_img))


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_promise12_shared_data(shared_data):
    cases = read_promise12(str(shared_data / "promise12"))
    assert len(cases) == 36 and all(c.label for c in cases)
    groups = {g: sum(c.group == g for c in cases) for g in ("BIDMC", "UCL", "RUNMC", "HK")}
    assert groups == {"BIDMC": 6, "UCL": 11, "RUNMC": 10, "HK": 9}
    reader = sitk.ImageFileReader()
    for c in cases:  # headers only: each label lies on its image's grid
        reader.SetFileName(c.image)
        reader.ReadImageInformation()
        img_geo = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin())
        reader.SetFileName(c.label)
        reader.ReadImageInformation()
        assert (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()) == img_geo, c.case_id
    case00 = next(c for c in cases if c.case_id == "Case00")
    label = sitk.ReadImage(case00.label)
    ml = float((sitk.GetArrayViewFromImage(label) == 1).sum()) * float(np.prod(label.GetSpacing())) / 1000
    assert ml == pytest.approx(45.5, abs=0.5)  # the table in shared/data/README.md


@pytest.mark.shared_data
def test_prostatex_dicom_geometry_and_zone_rule(shared_data):
    case = shared_data / "prostatex" / "ProstateX-0000"
    (series,) = read_series_geometries(case / "dicom")
    nifti = sitk.ReadImage(str(case / "t2w.nii.gz"))
    assert series.size_xyz == nifti.GetSize() == (384, 384, 19)
    assert np.allclose(series.spacing_xyz, nifti.GetSpacing(), atol=1e-4)
    assert np.allclose(series.origin_lps, nifti.GetOrigin(), atol=1e-3)
    assert np.allclose(np.asarray(series.direction).ravel(), nifti.GetDirection(), atol=1e-5)
    dicom = read_image(case / "dicom" / "t2w")
    assert dicom.GetSize() == nifti.GetSize() and np.allclose(dicom.GetOrigin(), nifti.GetOrigin(), atol=1e-3)
    for name in ("zonal_pz1_tz2_AI_Yuan23.nii.gz", "zonal_pz1_tz2_AI_HeviAI23.nii.gz"):
        label = sitk.ReadImage(str(case / "labels" / name))
        points = np.array(
            [label.TransformIndexToPhysicalPoint((0, 0, 0)), label.TransformIndexToPhysicalPoint((383, 383, 18))]
        )
        assert series.fraction_inside(points) == 1.0
        check = check_zone_labels(label)  # the files say 1 = PZ, 2 = TZ: anatomy agrees
        assert check.decision == "anatomy" and check.label_map == {1: PZ, 2: TZ}
        assert check.pz_posterior_mm > 3.0


def test_prostatex_layout_references_and_registry(tmp_path):
    from Testing.fixtures_datasets import make_prostatex
    from training.data.detect import detect_format
    from training.data.prostatex import read_prostatex

    root = make_prostatex(tmp_path / "prostatex")
    assert detect_format(str(root)).format == "prostatex"
    assert detect_format(str(root / "ProstateX-0000")).format == "prostatex"
    cases = {c.case_id: c for c in read_prostatex(str(root))}
    assert sorted(cases) == ["ProstateX-0000", "ProstateX-0001", "ProstateX-0002"]
    gland = cases["ProstateX-0000"]
    assert gland.label.endswith("wholegland_AI_Guerbet23.nii.gz") and gland.label_map == {1: "prostate"}
    assert gland.group == "ProstateX" and gland.source == "prostatex" and gland.split == "train"
    assert cases["ProstateX-0002"].label is None and cases["ProstateX-0002"].split == "test"
    zonal = read_source(DatasetSource(format="prostatex", path=str(root), reference="zonal_pz1_tz2_AI_Yuan23"))
    assert zonal[0].label_map == {1: PZ, 2: TZ} and zonal[0].label.endswith("Yuan23.nii.gz")
    # the whole-gland reference is the union of the zonal one's two zones
    wg = sitk.GetArrayFromImage(sitk.ReadImage(gland.label))
    zones = sitk.GetArrayFromImage(sitk.ReadImage(zonal[0].label))
    assert wg.sum() > 0 and np.array_equal(wg == 1, zones > 0)
    with pytest.raises(ValueError, match="no reference label 'wholegland_AI_Bosma22b'.*Guerbet23"):
        read_prostatex(str(root), "wholegland_AI_Bosma22b")
    with pytest.raises(ValueError, match="no ProstateX patient folders"):
        read_prostatex(str(tmp_path))


@pytest.mark.shared_data
def test_prostatex_shared_data_default_reference(shared_data):
    from training.data.prostatex import read_prostatex

    (case,) = read_prostatex(str(shared_data / "prostatex"))
    assert case.case_id == "ProstateX-0000" and case.label_map == {1: "prostate"}
    assert case.label.endswith("wholegland_AI_Guerbet23.nii.gz")  # before Bosma22b, though later by name
    (b,) = read_prostatex(str(shared_data / "prostatex" / "ProstateX-0000"), "wholegland_AI_Bosma22b")
    assert b.label.endswith("wholegland_AI_Bosma22b.nii.gz")
