"""segment and batch: flags, confidence, PSA density, uncertainty map, report picture and DICOM SEG.

The tiny random-weight package makes the runs fast (its output is meaningless, its geometry real);
one slow test runs the default model on a real DICOM series.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, synthetic_image
from test_cli import isolated_store, run  # noqa: F401 - isolated_store is an autouse fixture
from test_validation import write_dicom_series

from UNetSegmentLib.cli import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE

pytest.importorskip("highdicom")
pytest.importorskip("matplotlib")


def seg(capsys, package, *argv):
    return run(capsys, "segment", *argv, "--model", package.path, "--device", "cpu")


@pytest.fixture
def t2(tmp_path) -> Path:
    path = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(size_xyz=(96, 96, 16), spacing=(1.0, 1.0, 3.0)), str(path))
    return path


def test_segment_reports_confidence_flags_and_psa_density_and_writes_the_map_and_picture(
    capsys, tmp_path, t2, tiny_package
):
    out = tmp_path / "out"
    code, stdout, err = seg(
        capsys,
        tiny_package,
        t2,
        "-o", out / "o.nrrd",
        "--volumes-json", out / "v.json",
        "--psa", "6.5",
        "--uncertainty", out / "u.nii.gz",
        "--report", out / "r.png",
    )  # fmt: skip
    assert code == EXIT_OK, err
    result = json.loads((out / "v.json").read_text(encoding="utf-8"))
    assert 0.0 <= result["confidence"] <= 1.0 and result["confidence_threshold"] > 0
    assert all(set(f) == {"kind", "code", "message"} for f in result["flags"])
    gland = sum(result["volumes_ml"].values())
    psa = result["psa"]
    assert psa["psa_ng_ml"] == 6.5 and psa["gland_ml"] == pytest.approx(gland, abs=0.01)
    assert psa["psa_density"] == (pytest.approx(6.5 / gland, abs=1e-3) if gland > 0 else None)
    assert "Confidence:" in stdout and "PSA density" in stdout and "Quality flags" in stdout
    for f in result["flags"]:
        assert f["message"] in stdout
    u = sitk.ReadImage(str(out / "u.nii.gz"))
    image = sitk.ReadImage(str(t2))
    assert u.GetSize() == image.GetSize() and np.allclose(u.GetSpacing(), image.GetSpacing())
    assert u.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayViewFromImage(u)
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["uncertainty"] == str(out / "u.nii.gz") and result["report"] == str(out / "r.png")
    assert sorted(p.name for p in out.iterdir()) == ["o.nrrd", "r.png", "u.nii.gz", "v.json"]


@pytest.mark.parametrize("value", ["0", "-2", "5000", "nan", "six"])
def test_an_impossible_psa_is_refused_with_exit_2(capsys, tmp_path, t2, tiny_package, value):
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--psa", value)
    assert code == EXIT_USAGE and "ng/mL" in err[-1]
    assert not (tmp_path / "o.nrrd").exists()


def test_a_dicom_seg_needs_a_dicom_input(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--dicom-seg", tmp_path / "s.dcm")
    assert code == EXIT_USAGE and "DICOM series folder" in err[-1]
    assert seg(capsys, tiny_package, t2, "-o", tmp_path / "o.dcm")[0] == EXIT_USAGE
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--report", tmp_path / "r.jpg")
    assert code == EXIT_OUTPUT and ".png" in err[-1]


def _read_seg(path: Path):
    import highdicom as hd

    return hd.seg.segread(str(path))


def test_output_dcm_writes_only_a_dicom_seg_of_the_labelmap(capsys, tmp_path, tiny_package):
    folder = tmp_path / "dicom"
    write_dicom_series(synthetic_image(size_xyz=(96, 96, 16)), folder)
    out = tmp_path / "out"
    code, stdout, err = seg(capsys, tiny_package, folder, "-o", out / "s.dcm", "--volumes-json", out / "v.json")
    assert code == EXIT_OK, err
    assert sorted(p.name for p in out.iterdir()) == ["s.dcm", "v.json"]
    assert "DICOM SEG written to" in stdout
    s = _read_seg(out / "s.dcm")
    assert s.number_of_frames == 16 and s.get_segment_description(1).segmented_property_type.value == "41216001"
    algo = s.get_segment_description(1).algorithm_identification[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("tiny-test-model", "0.0.1")


@pytest.mark.shared_data
def test_segment_a_real_series_to_labelmap_and_dicom_seg_that_agree(capsys, shared_data, tmp_path, tiny_package):
    folder = shared_data / "nci_isbi_test_dicom" / "Prostate3T-03-0002"
    code, _, err = seg(capsys, tiny_package, folder, "-o", tmp_path / "o.nrrd", "--dicom-seg", tmp_path / "s.dcm")
    assert code == EXIT_OK, err
    _check_seg_matches_labelmap(tmp_path / "s.dcm", tmp_path / "o.nrrd", folder)


def _check_seg_matches_labelmap(seg_path: Path, labelmap_path: Path, folder: Path) -> None:
    import pydicom

    labelmap = sitk.ReadImage(str(labelmap_path))
    array = sitk.GetArrayFromImage(labelmap)
    by_position = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        by_position[tuple(np.round(np.asarray(ds.ImagePositionPatient, dtype=float), 2))] = ds.SOPInstanceUID
    uids = [
        by_position[tuple(np.round(labelmap.TransformIndexToPhysicalPoint((0, 0, k)), 2))]
        for k in range(array.shape[0])
    ]
    s = _read_seg(seg_path)
    frames = s.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames.astype(bool), array == 1)
    assert (
        s.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True).SeriesInstanceUID
    )


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_on_a_real_series_gives_a_plausible_flagless_gland(capsys, shared_data, tmp_path):
    """The default model on an unseen NCI-ISBI series: one gland of 15-150 mL, a DICOM SEG equal to it."""

    folder = shared_data / "nci_isbi_test_dicom" / "Prostate3T-03-0001"
    model = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"
    code, _, err = run(
        capsys, "segment", folder, "-o", tmp_path / "o.nrrd", "--dicom-seg", tmp_path / "s.dcm",
        "--volumes-json", tmp_path / "v.json", "--model", model, "--device", "cpu", "--psa", "5",
    )  # fmt: skip
    assert code == EXIT_OK, err
    result = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    assert 15 < result["volumes_ml"]["prostate"] < 150
    assert not [f for f in result["flags"] if f["code"] in ("empty", "several_components", "volume_out_of_range")]
    assert result["psa"]["psa_density"] == pytest.approx(5 / result["volumes_ml"]["prostate"], abs=1e-3)
    _check_seg_matches_labelmap(tmp_path / "s.dcm", tmp_path / "o.nrrd", folder)


def test_batch_writes_findings_in_the_csv_a_seg_per_dicom_series_and_an_index_page(capsys, tmp_path, tiny_package):
    data = tmp_path / "in"
    data.mkdir()
    for i in range(2):
        sitk.WriteImage(synthetic_image(size_xyz=(96, 96, 16), seed=i), str(data / f"case{i}.nii.gz"))
    write_dicom_series(synthetic_image(size_xyz=(96, 96, 16), seed=5), data / "series")
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case,psa\ncase0,4.2\nseries,9\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "batch", data, "-o", out, "--model", tiny_package.path, "--device", "cpu",
        "--clinical", clinical, "--report", "--dicom-seg", "--uncertainty",
    )  # fmt: skip
    assert code == EXIT_OK, err
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv", encoding="utf-8"))}
    assert set(rows) == {"case0", "case1", "series"}
    for name, row in rows.items():
        assert 0 <= float(row["confidence"]) <= 1 and int(row["n_flags"]) == len(row["flag_codes"].split())
        assert (out / f"{name}_report.png").exists() and (out / f"{name}_uncertainty.nii.gz").exists()
    assert rows["case0"]["psa_ng_ml"] == "4.2" and rows["case1"]["psa_density"] == ""
    gland = float(rows["series"]["gland_ml"])
    if gland > 0:
        assert float(rows["series"]["psa_density"]) == pytest.approx(9 / gland, abs=1e-3)
    assert rows["series"]["dicom_seg"] == str(out / "series_seg.dcm") and rows["case0"]["dicom_seg"] == ""
    assert (out / "series_seg.dcm").exists() and not (out / "case0_seg.dcm").exists()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'src="{name}_report.png"' in page for name in rows)
    assert "Index page" in stdout


def test_batch_refuses_a_bad_clinical_file_before_any_case(capsys, tmp_path, tiny_package):
    data = tmp_path / "in"
    data.mkdir()
    sitk.WriteImage(synthetic_image(), str(data / "case0.nii.gz"))
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case,psa\ncase0,4000\n", encoding="utf-8")
    code, _, err = run(
        capsys, "batch", data, "-o", tmp_path / "out", "--model", tiny_package.path, "--clinical", clinical
    )
    assert code == EXIT_USAGE and "line 2 (case0)" in err[-1] and "ng/mL" in err[-1]
    assert not (tmp_path / "out").exists()
