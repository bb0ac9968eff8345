"""training/explore.py: statistics, figures and report on fixtures and on the real data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from Testing.fixtures_datasets import make_nci_isbi, make_promise12_mhd
from training import explore


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _rows_by(path, key):
    with open(path, newline="", encoding="utf-8") as f:
        return {r[key]: r for r in csv.DictReader(f)}


def _png_ok(path) -> bool:
    import matplotlib.image

    return path.stat().st_size > 1000 and matplotlib.image.imread(str(path)).ndim == 3


def test_promise12_metaimage_report(tmp_path, capsys):
    root = make_promise12_mhd(tmp_path / "promise12")
    out = tmp_path / "report"
    assert explore.main([str(root), "--format", "promise12", "-o", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    rows = _rows(out / "cases.csv")
    assert sorted(rows) == ["Case00", "Case13", "Case38", "Case50"]
    r = rows["Case13"]
    assert (r["size_x"], r["size_y"], r["size_z"]) == ("32", "32", "8")
    assert (float(r["spacing_x"]), float(r["spacing_z"])) == (3.0, 8.0)
    assert r["orientation"] == "LPS" and r["group"] == "RUNMC" and r["label_grid"] == "same"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "Case13_segmentation.mhd")))
    assert float(r["ml_prostate"]) == pytest.approx((label == 1).sum() * 3 * 3 * 8 / 1000, abs=0.01)
    assert int(r["labelled_slices"]) == int(label.any(axis=(1, 2)).sum())
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "Case13.mhd")))
    assert float(r["i_p99"]) == pytest.approx(np.percentile(image, 99), abs=0.01)
    assert rows["Case50"]["label_grid"] == "none" and rows["Case50"]["split"] == "test"
    summary = _rows_by(out / "summary.csv", "metric")
    assert summary["ml_prostate"]["n"] == "3"
    report = (out / "README.md").read_text(encoding="utf-8")
    for png in ("spacing.png", "volumes.png", "intensity.png", "examples.png"):
        assert f"]({png})" in report and _png_ok(out / png)
    assert "Case38" in report and "## Findings" in report


def test_zonal_report_uses_the_readers_label_mapping(tmp_path):
    root = make_nci_isbi(tmp_path / "nci")
    out = tmp_path / "report"
    assert explore.main([str(root), "--format", "nci_isbi", "-o", str(out)]) == 0
    rows = _rows(out / "cases.csv")
    assert len(rows) == 4
    swapped = rows["ProstateDx-01-0001"]  # file value 1 is its PZ
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "Training" / "ProstateDx-01-0001.nrrd")))
    assert float(swapped["ml_peripheral_zone"]) == pytest.approx((label == 1).sum() * 72 / 1000, abs=0.01)
    assert swapped["label_grid"] == "resampled"
    for r in rows.values():
        assert float(r["mean_peripheral_zone"]) > float(r["mean_transition_zone"])
        assert float(r["ml_gland"]) == pytest.approx(
            float(r["ml_peripheral_zone"]) + float(r["ml_transition_zone"]), abs=0.02
        )
    assert rows["Prostate3T-01-0002"]["oblique_deg"] == "10.0"
    report = (out / "README.md").read_text(encoding="utf-8")
    assert "brighter than the transition zone in 4 of 4" in report
    assert "1 label(s) lie on a grid other than their image's" in report


def test_parse_label_map():
    assert explore.parse_label_map("1=pz, 2=central gland") == {1: "peripheral_zone", 2: "transition_zone"}
    with pytest.raises(ValueError):
        explore.parse_label_map("pz")
    with pytest.raises(KeyError):
        explore.parse_label_map("1=bladder")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert explore.main([str(tmp_path / "absent"), "--format", "promise12", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("explore.py:") and "\n" not in err and "Traceback" not in err
    image = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(image))
    assert explore.main([str(image), "--format", "image", "--label", str(image), "-o", str(tmp_path / "o")]) == 1
    assert "--label-map" in capsys.readouterr().err
    assert (
        explore.main([str(tmp_path), "--format", "pairs", "--label-map", "1=bladder", "-o", str(tmp_path / "o")]) == 1
    )
    assert "bladder" in capsys.readouterr().err


@pytest.mark.shared_data
def test_prostatex_dicom_with_zonal_labels(shared_data, tmp_path):
    case = shared_data / "prostatex" / "ProstateX-0000"
    out = tmp_path / "px"
    args = [str(case / "dicom" / "t2w"), "--format", "image", "--case-id", "ProstateX-0000"]
    args += [
        "--label",
        str(case / "labels" / "zonal_pz1_tz2_AI_Yuan23.nii.gz"),
        "--label-map",
        "1=pz,2=tz",
        "-o",
        str(out),
    ]
    assert explore.main(args) == 0
    r = _rows(out / "cases.csv")["ProstateX-0000"]
    assert (r["size_x"], r["size_z"], r["orientation"], r["label_grid"]) == ("384", "19", "LPS", "same")
    assert float(r["oblique_deg"]) == pytest.approx(18.5, abs=0.2)  # the series is tilted about x
    assert float(r["ml_gland"]) == pytest.approx(45.0, abs=1.0)
    assert float(r["mean_peripheral_zone"]) > 1.5 * float(r["mean_transition_zone"])
    assert _png_ok(out / "examples.png")
