"""UNetSegmentLib.file_checks: whole files pass (written by ITK, nibabel, pynrrd, and the real data), damaged ones
fail by name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from UNetSegmentLib.file_checks import DamagedFileError, check_image_file


def _image():
    return sitk.GetImageFromArray(np.random.default_rng(0).normal(300, 50, (8, 40, 40)).astype(np.int16))


@pytest.mark.parametrize("name", ["a.nrrd", "a.nhdr", "a.nii", "a.nii.gz", "a.mha", "a.mhd"])
@pytest.mark.parametrize("compress", [False, True])
def test_files_written_by_itk_pass(tmp_path, name, compress):
    sitk.WriteImage(_image(), str(tmp_path / name), compress)
    check_image_file(tmp_path / name)


def test_files_written_by_nibabel_and_pynrrd_pass(tmp_path):
    nib = pytest.importorskip("nibabel")
    nrrd = pytest.importorskip("nrrd")
    arr = np.random.default_rng(1).normal(0, 1, (20, 20, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "n1.nii.gz"))
    nib.save(nib.Nifti2Image(arr, np.eye(4)), str(tmp_path / "n2.nii"))
    nrrd.write(str(tmp_path / "p.nrrd"), arr, {"encoding": "gzip"})
    nrrd.write(str(tmp_path / "p_bz.nrrd"), arr, {"encoding": "bzip2"})
    nrrd.write(str(tmp_path / "p_detached.nhdr"), arr, detached_header=True)
    for name in ("n1.nii.gz", "n2.nii", "p.nrrd", "p_bz.nrrd", "p_detached.nhdr"):
        check_image_file(tmp_path / name)
    data = (tmp_path / "n2.nii").read_bytes()
    (tmp_path / "n2.nii").write_bytes(data[:-100])
    with pytest.raises(DamagedFileError, match="n2.nii"):
        check_image_file(tmp_path / "n2.nii")


def test_concatenated_gzip_members_are_one_stream(tmp_path):
    sitk.WriteImage(_image(), str(tmp_path / "a.nii"))
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "m.nii.gz").write_bytes(gzip.compress(raw[:9000]) + gzip.compress(raw[9000:]))
    check_image_file(tmp_path / "m.nii.gz")
    (tmp_path / "m.nii.gz").write_bytes(gzip.compress(raw[:9000]) + gzip.compress(raw[9000:])[:-50])
    with pytest.raises(DamagedFileError, match="m.nii.gz.*stops early"):
        check_image_file(tmp_path / "m.nii.gz")


@pytest.mark.shared_data
def test_every_real_image_and_label_passes(shared_data):
    files = sorted(shared_data.rglob("*.nii.gz"))
    assert len(files) >= 70
    for f in files:
        check_image_file(f)
