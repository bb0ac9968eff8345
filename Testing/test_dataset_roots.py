"""Training readers on datasets' roots as distributed (PROMISE12 download, MSD archive, NCI-ISBI TCIA tree),
and explore.py recognising the format without --format."""

from __future__ import annotations

import csv

import pytest

from Testing.fixtures_datasets import (
    make_msd_download,
    make_nci_isbi,
    make_promise12_download,
    make_promise12_mhd,
)
from training import explore
from training.config import DatasetSource
from training.data.detect import detect_format
from training.data.registry import read_source


def _cases(fmt, path):
    return read_source(DatasetSource(format=fmt, path=str(path)))


def test_promise12_download_root_reads_every_part(tmp_path):
    root = make_promise12_download(tmp_path / "PROMISE12")
    cases = {c.case_id: c for c in _cases("promise12", root)}
    assert sorted(cases) == ["Case00", "Case01", "Case13", "Case26", "Case38", "TestCase00", "TestCase01"]
    assert {c.split for k, c in cases.items() if k.startswith("Case")} == {"train"}
    assert all(c.label and c.label.endswith("_segmentation.mhd") for k, c in cases.items() if k.startswith("Case"))
    assert cases["TestCase00"].split == "test" and cases["TestCase00"].label is None
    assert cases["TestCase00"].image.endswith("TestData/Case00.mhd")
    assert (cases["Case01"].group, cases["Case13"].group, cases["Case38"].group) == ("UCL", "RUNMC", "HK")


def test_msd_root_holding_task05_is_read(tmp_path):
    root = make_msd_download(tmp_path / "decathlon")
    cases = _cases("msd", root)
    assert sorted(c.case_id for c in cases) == ["prostate_00", "prostate_02", "prostate_05"]
    assert all("Task05_Prostate" in c.image for c in cases)


def test_nci_isbi_tcia_root_is_read_with_its_label_folders(tmp_path):
    root = make_nci_isbi(tmp_path / "NCI-ISBI")
    splits = {c.case_id: c.split for c in _cases("nci_isbi", root)}
    assert splits["Prostate3T-01-0001"] == "train" and splits["Prostate3T-01-0002"] == "validation"
    assert splits["ProstateDx-01-0002"] == "test"


@pytest.mark.parametrize(
    "make,fmt,words",
    [
        (make_promise12_download, "promise12", ["TrainingData_Part1", "TestData"]),
        (lambda p: make_promise12_mhd(p), "promise12", ["4 CaseNN.mhd"]),
        (make_msd_download, "msd", ["Task05_Prostate", "2 training images"]),
        (lambda p: make_msd_download(p) / "Task05_Prostate", "msd", ["dataset.json"]),
        (make_nci_isbi, "nci_isbi", ["6 patient DICOM folders", "Leaderboard", "Test", "Training"]),
    ],
    ids=["promise12-download", "promise12-folder", "msd-root", "msd-task", "nci-isbi-tcia"],
)
def test_the_format_is_recognised_from_the_layout(tmp_path, make, fmt, words):
    root = make(tmp_path / "data")
    got = detect_format(str(root))
    assert got.format == fmt
    for w in words:
        assert w in got.found, got.found


def test_an_unknown_layout_is_refused_naming_what_was_looked_for(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("nothing", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        detect_format(str(tmp_path / "x"))


def test_explore_without_format_names_what_it_found(tmp_path, capsys):
    root = make_promise12_download(tmp_path / "PROMISE12")
    out = tmp_path / "report"
    assert explore.main([str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recognised promise12: PROMISE12 as downloaded: TestData, TrainingData_Part1" in printed
    with open(out / "cases.csv", newline="", encoding="utf-8") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 7 and rows["TestCase01"]["split"] == "test"
    assert "--format promise12" in (out / "README.md").read_text(encoding="utf-8")
