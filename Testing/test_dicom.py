"""UNetSegmentLib.dicom: series index, the axial T2 choice, slice integrity, reading, and the instance order
a DICOM SEG writer references; ``unetsegment series`` and ``batch`` on study trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA
from fixtures_dicom import (
    SAGITTAL,
    compress,
    volume,
    write_dicomdir,
    write_enhanced_mr,
    write_series,
    write_study,
)
from input_catalogue import mixed_uids

from UNetSegmentLib.cli import main
from UNetSegmentLib.dicom import (
    SeriesChoiceError,
    SeriesIntegrityError,
    choose_series,
    classify,
    index_folder,
    read_dicom,
    series_datasets,
    series_instances,
)
from UNetSegmentLib.dicom.integrity import SPACING_TOLERANCE, slice_plan

REAL_T2 = SHARED_DATA / "prostatex" / "ProstateX-0000" / "dicom" / "t2w"


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": []}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))


def test_each_series_of_a_study_gets_its_kind_from_attributes_not_names_of_files(tmp_path):
    write_study(tmp_path / "s", kinds=("localizer", "t2_tra", "t2_sag", "t2_cor", "dwi", "adc", "dce", "anonymous_t2"))
    for p in (tmp_path / "s").rglob("*.dcm"):  # file and folder names say nothing
        p.rename(p.with_name(f"x{abs(hash(p.name)) % 10**6}"))
    index = index_folder(tmp_path / "s")
    kinds = [(classify(s).name, s.plane) for s in index.series]
    assert kinds == [
        ("localizer", "axial"),
        ("T2", "axial"),
        ("T2", "sagittal"),
        ("T2", "coronal"),
        ("DWI", "axial"),
        ("ADC", "axial"),
        ("DCE / T1", "axial"),
        ("T2", "axial"),
    ]
    assert "TR 6000 ms / TE 110 ms" in classify(index.series[7]).because  # no T2 in its name: timing


def test_the_choice_is_the_axial_t2_or_a_numbered_refusal(tmp_path):
    write_study(tmp_path / "one", kinds=("localizer", "dwi", "t2_tra", "adc"))
    choice = choose_series(index_folder(tmp_path / "one"))
    assert choice.series.number == 3 and "only axial T2-weighted" in choice.reason
    assert "\n" not in choice.reason and "1 ADC, 1 DWI, 1 localizer" in choice.reason

    write_study(tmp_path / "two", kinds=("t2_tra", "t2_tra", "dwi"))
    index = index_folder(tmp_path / "two")
    with pytest.raises(SeriesChoiceError, match=r"2 axial T2-weighted series \(numbers 1, 2\)") as info:
        choose_series(index)
    assert [line.split(".")[0].strip() for line in info.value.listing[1:]] == ["1", "2", "3"]
    assert "12 slices" in info.value.listing[1] and "axial" in info.value.listing[1]
    assert choose_series(index, number=2).series is index.series[1]
    assert choose_series(index, uid=index.series[0].uid).series is index.series[0]


@pytest.mark.shared_data
def test_real_prostatex_series_is_read_exactly_as_its_nifti(shared_data):
    got = read_dicom(REAL_T2)
    reference = sitk.ReadImage(str(REAL_T2.parent.parent / "t2w.nii.gz"))
    assert got.image.GetSize() == reference.GetSize()
    assert np.allclose(got.image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    assert np.allclose(got.image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    assert np.allclose(got.image.GetDirection(), reference.GetDirection(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(reference))
    assert got.series.tilt_deg == pytest.approx(18.5, abs=0.5)  # an oblique axial is still axial


@pytest.mark.shared_data
def test_real_nci_isbi_folder_with_two_patients_asks(shared_data, capsys):
    folder = shared_data / "nci_isbi_test_dicom"
    with pytest.raises(SeriesChoiceError, match="2 axial T2"):
        read_dicom(folder)
    code = main(["series", str(folder)])
    out = capsys.readouterr().out
    assert code == 0 and "2 series in 2 study(ies)" in out and "Prostate3T-03-0001" in out
    assert out.count("batch would read") == 2


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_nci_isbi_batch_takes_one_series_per_study(shared_data, capsys, tmp_path, tiny_package):
    folder = shared_data / "nci_isbi_test_dicom"
    argv = ["batch", str(folder), "-o", str(tmp_path / "out"), "--model", str(tiny_package.path), "--quality", "fast"]
    code = main(argv + ["--progress", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = (tmp_path / "out" / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and all("t2_tse_tra" in r for r in rows[1:])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nrrd")) == [  # one case per patient folder
        "Prostate3T-03-0001_segmentation.nrrd",
        "Prostate3T-03-0002_segmentation.nrrd",
    ]


def test_instances_come_in_the_images_slice_order_for_a_seg_writer(tmp_path):
    img = volume(size_xyz=(32, 32, 6), direction=SAGITTAL)
    files = write_series(tmp_path / "s", img, positions_k=[3, 0, 5, 1, 4, 2])  # files not in slice order
    got = read_dicom(tmp_path / "s")
    refs = series_instances(got.series)
    assert refs == got.instances()
    assert [r.path for r in refs] == [files[i] for i in (1, 3, 5, 0, 4, 2)]
    for k, ref in enumerate(refs):  # entry k is the image's slice k
        point = got.image.TransformIndexToPhysicalPoint((0, 0, k))
        assert np.allclose(point, img.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-4)
        assert ref.frame_number is None and ref.sop_instance_uid
    datasets = series_datasets(got.series)
    assert [d.SOPInstanceUID for d in datasets] == [r.sop_instance_uid for r in refs]
    assert np.array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(img).astype(np.uint16))


def test_enhanced_mr_frames_are_placed_by_position(tmp_path):
    img = volume(size_xyz=(32, 32, 5))
    write_enhanced_mr(tmp_path / "mf" / "a.dcm", img, frame_order=[2, 4, 0, 1, 3])
    got = read_dicom(tmp_path / "mf")
    assert got.series.multi_frame and got.image.GetSpacing() == pytest.approx((1.5, 1.5, 3.0))
    assert np.array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(img))
    assert [r.frame_number for r in series_instances(got.series)] == [3, 4, 1, 5, 2]


@pytest.mark.parametrize("syntax", ["rle", "jpeg_lossless", "jpeg2000"])
def test_compressed_series_decode_to_the_same_voxels(tmp_path, syntax):
    img = volume(size_xyz=(32, 32, 4))
    compress(write_series(tmp_path / "c", img), syntax)
    got = read_dicom(tmp_path / "c")
    assert np.array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(img).astype(np.uint16))


def test_spacing_tolerance_and_resampling(tmp_path):
    img = volume(size_xyz=(32, 32, 8))
    small = SPACING_TOLERANCE * 3.0 * 0.5 / 3.0  # half the tolerance, in slices
    write_series(tmp_path / "ok", img, positions_k=[0, 1, 2, 3 + small, 4, 5, 6, 7])
    assert slice_plan(index_folder(tmp_path / "ok").series[0]).uneven == ""
    write_series(tmp_path / "gap", img, positions_k=[0, 1, 2, 4, 5, 6, 7])
    with pytest.raises(SeriesIntegrityError, match=r"missing slices between -14.00 and -8.00 mm"):
        read_dicom(tmp_path / "gap")
    got = read_dicom(tmp_path / "gap", allow_uneven=True)
    assert got.image.GetSize()[2] == 8 and "resampled onto a uniform 3.00 mm" in got.warnings[0]
    arr, ref = sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(img).astype(np.float32)
    assert np.array_equal(arr[[0, 1, 2, 4, 5, 6, 7]], ref[[0, 1, 2, 4, 5, 6, 7]])  # measured slices kept
    assert np.allclose(arr[3], (ref[2] + ref[4]) / 2)  # the missing one interpolated


def test_a_dicomdir_is_followed_and_its_file_names_do_not_matter(tmp_path, capsys):
    write_study(tmp_path / "tree", kinds=("localizer", "t2_tra", "dwi"))
    cd = write_dicomdir(tmp_path / "tree")
    (cd / "stray.dcm").write_bytes((tmp_path / "tree" / "P1" / "study1" / "01_localizer" / "IM0001.dcm").read_bytes())
    index = index_folder(cd)
    assert index.via_dicomdir and len(index.series) == 3  # the stray file is not in the DICOMDIR
    assert main(["series", str(cd)]) == 0
    out = capsys.readouterr().out
    assert "via its DICOMDIR" in out and "segment would read series 2 't2_tse_tra'" in out


def test_batch_takes_one_series_per_study_of_a_tree_and_reports_unclear_ones(tmp_path, capsys, tiny_package):
    tree = tmp_path / "export"
    write_study(tree, patient_id="A", kinds=("localizer", "t2_tra", "dwi"), flat=False)
    write_study(tree / "B_folder", patient_id="B", kinds=("t2_tra", "t2_tra"), seed=5)  # unclear: two axial T2
    write_study(tree / "B_folder", patient_id="B2", kinds=("t2_sag", "t2_tra", "adc"), seed=9)
    mixed_uids(tree / "C", SHARED_DATA)  # a T2 and a look-alike derived series in one folder
    code = main(
        ["batch", str(tree), "-o", str(tmp_path / "out"), "--model", str(tiny_package.path), "--progress", "none"]
    )
    out = capsys.readouterr().out
    rows = (tmp_path / "out" / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert code == 2, out  # the first failure's exit code: the unclear study
    assert len(rows) == 5
    ok = [r for r in rows[1:] if ",ok," in r]
    failed = [r for r in rows[1:] if ",failed," in r]
    assert len(ok) == 2 and all("t2_tse_tra" in r for r in ok)
    assert len(failed) == 2 and "2 axial T2-weighted series" in failed[0]
    assert ",4," in failed[1] and "mixed SeriesInstanceUIDs" in failed[1]


def test_text_files_beside_the_slices_are_not_damaged_slices(tmp_path):
    write_series(tmp_path / "s", volume(size_xyz=(32, 32, 4)))
    (tmp_path / "s" / "README").write_text("exported by a PACS\n", encoding="utf-8")
    (tmp_path / "s" / "notes.txt").write_text("nothing", encoding="utf-8")
    got = read_dicom(tmp_path / "s")
    assert got.image.GetSize() == (32, 32, 4) and not got.index.unreadable
    assert "'t2_tse_tra'" in got.choice.reason and "t2_tse_tra / t2_tse_tra" not in classify(got.series).because


def test_enhanced_mr_rescale_is_applied_once_per_frame(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    img = volume(size_xyz=(32, 32, 4))
    path = write_enhanced_mr(tmp_path / "mf" / "a.dcm", img)
    ds = pydicom.dcmread(str(path))
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1 + i, 10 * i, "US"
        item.PixelValueTransformationSequence = Sequence([pvt])
    ds.save_as(str(path))
    got = sitk.GetArrayFromImage(read_dicom(tmp_path / "mf").image)
    stored = sitk.GetArrayFromImage(img).astype(np.float32)
    expected = np.stack([stored[k] * (1 + k) + 10 * k for k in range(4)])
    assert np.allclose(got, expected)


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG-lossy.dcm"]
)
def test_compressed_files_from_other_encoders_pass_the_checks_and_fail_when_cut(tmp_path, name):
    """pydicom's bundled test files (JPEG-LS, RLE, JPEG 2000 and JPEG made by other encoders, with their own padding)."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    from UNetSegmentLib.dicom.integrity import check_dicom_file
    from UNetSegmentLib.io import ImageReadError

    source = get_testdata_file(name, download=False)
    if source is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    check_dicom_file(Path(source))
    if name.startswith("MR_small"):  # the same slice as MR_small.dcm: decodes to the same values
        for f, folder in ((source, "c"), (get_testdata_file("MR_small.dcm", download=False), "u")):
            (tmp_path / folder).mkdir()
            shutil.copy(f, tmp_path / folder / "a.dcm")
        a, b = (sitk.GetArrayFromImage(read_dicom(tmp_path / d).image) for d in ("c", "u"))
        assert np.array_equal(a, b)
    data = Path(source).read_bytes()
    ds = pydicom.dcmread(source)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - len(ds.PixelData) // 3])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        check_dicom_file(cut)


def test_a_dicom_seg_from_a_study_tree_references_the_chosen_t2(tmp_path, capsys, tiny_package):
    pytest.importorskip("highdicom")
    import pydicom

    files = write_study(tmp_path / "tree", kinds=("localizer", "t2_tra", "dwi"))
    out = tmp_path / "seg.dcm"
    code = main(["segment", str(tmp_path / "tree"), "-o", str(out), "--model", str(tiny_package.path)])
    assert code == 0, capsys.readouterr().err
    seg = pydicom.dcmread(str(out))
    t2_uid = pydicom.dcmread(str(files["t2_tra"][0]), stop_before_pixels=True).SeriesInstanceUID
    referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    assert referenced == {t2_uid}
