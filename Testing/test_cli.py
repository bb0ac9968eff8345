"""The ``unetsegment`` command line: every failure has its exit code and one line, outputs are all-or-nothing.

Most tests call ``main([...])`` in-process with the tiny random-weight
package (output meaningless, geometry real); a few run ``python -m
UNetSegmentLib`` as the Slicer module does and read the machine protocol.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, make_tiny_package, synthetic_image
from test_validation import write_dicom_series

from UNetSegmentLib import cli
from UNetSegmentLib.cli import (
    EXIT_CANCELLED,
    EXIT_DOWNLOAD,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INVALID_IMAGE,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    main,
)
from UNetSegmentLib.model_package import sha256_file
from UNetSegmentLib.progress import STAGES, ProgressReporter, format_progress_line, parse_progress_line
from UNetSegmentLib.segfile import read_segments


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """A private model cache and an empty catalogue: no test touches ~/.cache or the network."""
    home = tmp_path / "home"
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": []}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_HOME", str(home))
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    return home


@pytest.fixture
def t2(tmp_path) -> Path:
    path = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(), str(path))
    return path


def run(capsys, *argv, keep_progress: bool = False):
    """``main(argv)`` -> (exit code, stdout, stderr lines); human progress lines (``stage...``) are dropped
    unless ``keep_progress``, so what remains are warnings and errors."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    if not keep_progress:
        lines = [line for line in lines if not any(line.startswith(f"{s}...") for s in STAGES)]
    return code, out, lines


def seg(capsys, tiny_package, *argv):
    return run(capsys, "segment", *argv, "--model", tiny_package.path)


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def _write(tmp_path, name, image) -> Path:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


# -- success -----------------------------------------------------------------------------------


def test_segment_writes_labelmap_slicer_file_and_volumes_on_the_input_grid(capsys, tmp_path, t2, tiny_package):
    out = tmp_path / "res" / "t2_label.nii.gz"
    code, stdout, err = seg(
        capsys,
        tiny_package,
        t2,
        "-o",
        out,
        "--seg-nrrd",
        tmp_path / "res" / "t2.seg.nrrd",
        "--volumes-json",
        tmp_path / "v.json",
    )
    assert code == EXIT_OK, err
    inp, lab = sitk.ReadImage(str(t2)), sitk.ReadImage(str(out))
    assert lab.GetSize() == inp.GetSize()
    assert np.allclose(lab.GetSpacing(), inp.GetSpacing()) and np.allclose(lab.GetOrigin(), inp.GetOrigin())
    assert np.allclose(lab.GetDirection(), inp.GetDirection())
    assert [s["Name"] for s in read_segments(tmp_path / "res" / "t2.seg.nrrd")] == ["Prostate"]
    result = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    assert result["model"] == {"id": "tiny-test-model", "version": "0.0.1"}
    assert set(result) >= {"input", "output", "volumes_ml", "device", "seconds"}
    voxels = np.count_nonzero(sitk.GetArrayFromImage(lab) == 1)
    assert result["volumes_ml"]["prostate"] == pytest.approx(voxels * 3.0 / 1000, abs=1e-3)
    assert str(out) in stdout and "3D Slicer" in stdout and "mL" in stdout
    assert _files(tmp_path / "res") == ["t2.seg.nrrd", "t2_label.nii.gz"]  # no temporary files left


def test_output_named_seg_nrrd_is_written_as_a_slicer_segmentation(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "out.seg.nrrd")
    assert code == EXIT_OK, err
    assert read_segments(tmp_path / "out.seg.nrrd")[0]["ID"] == "prostate"


def test_human_progress_and_summary_go_to_stderr_and_stdout(capsys, tmp_path, t2, tiny_package):
    code, stdout, err = run(
        capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", tiny_package.path, keep_progress=True
    )
    assert code == EXIT_OK
    assert any(line.startswith("inference") for line in err)
    assert "Labelmap written to" in stdout and "UNETSEGMENT" not in stdout + "".join(err)


def test_machine_progress_lines_follow_the_protocol(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(
        capsys,
        tiny_package,
        t2,
        "-o",
        tmp_path / "o.nrrd",
        "--progress",
        "machine",
        "--volumes-json",
        tmp_path / "v.json",
    )
    assert code == EXIT_OK
    msgs = [parse_progress_line(line) for line in err]
    assert all(m is not None for m in msgs), err
    progress = [m for m in msgs if m["kind"] == "progress"]
    stages = [m["stage"] for m in progress]
    assert {"loading", "preprocessing", "inference", "postprocessing", "resampling", "writing"} <= set(stages)
    order = [STAGES.index(s) for s in stages]
    assert order == sorted(order)
    overall = [m["overall"] for m in progress]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert all(0.0 <= m["fraction"] <= 1.0 for m in progress)
    assert msgs[-1]["kind"] == "result"
    result = {k: v for k, v in msgs[-1].items() if k != "kind"}
    assert result == json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("quality", ["fast", "standard", "best"])
def test_quality_presets(capsys, tmp_path, t2, tiny_package, quality):
    code, _, _ = seg(
        capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--quality", quality, "--volumes-json", tmp_path / "v.json"
    )
    assert code == EXIT_OK
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))["quality"] == quality


def test_the_command_line_knows_every_quality_of_the_library():
    from UNetSegmentLib.inference import QUALITIES

    assert cli.QUALITIES == QUALITIES


def test_threads_and_precision_options_run(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(
        capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--threads", 1, "--precision", "float32", "--device", "cpu"
    )
    assert code == EXIT_OK, err


def test_a_dicom_folder_is_segmented(capsys, tmp_path, tiny_package):
    write_dicom_series(synthetic_image(), tmp_path / "dicom")
    code, _, err = seg(capsys, tiny_package, tmp_path / "dicom", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_OK, err
    assert sitk.ReadImage(str(tmp_path / "o.nrrd")).GetSize() == (64, 64, 16)


def test_overwrite_replaces_existing_outputs(capsys, tmp_path, t2, tiny_package):
    (tmp_path / "o.nrrd").write_text("old", encoding="utf-8")
    assert seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--overwrite")[0] == EXIT_OK
    assert sitk.ReadImage(str(tmp_path / "o.nrrd")).GetSize() == (64, 64, 16)


# -- exit 3: input missing or unreadable ----------------------------------------------------------


def test_missing_input_exits_3_with_one_line(capsys, tmp_path, tiny_package):
    code, stdout, err = seg(capsys, tiny_package, tmp_path / "nope.nrrd", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_INPUT
    assert err == [f"unetsegment: error: input not found: {tmp_path / 'nope.nrrd'}"]
    assert not (tmp_path / "o.nrrd").exists()


def test_unreadable_input_exits_3(capsys, tmp_path, tiny_package):
    (tmp_path / "junk.nii.gz").write_bytes(os.urandom(2000))
    code, _, err = seg(capsys, tiny_package, tmp_path / "junk.nii.gz", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_INPUT and len(err) == 1 and "cannot read" in err[0]


def test_a_folder_without_dicom_exits_3(capsys, tmp_path, tiny_package):
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "readme.txt").write_text("hello", encoding="utf-8")
    code, _, err = seg(capsys, tiny_package, tmp_path / "notdicom", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_INPUT and "no DICOM" in err[0]


# -- exit 4: invalid images --------------------------------------------------------------------------


def _constant(tmp_path):
    return _write(tmp_path, "c.nrrd", sitk.GetImageFromArray(np.full((16, 64, 64), 5, np.int16)))


def _nan(tmp_path, value=np.nan):
    arr = sitk.GetArrayFromImage(synthetic_image()).astype(np.float32)
    arr[2, 3, 4] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1, 1, 3))
    return _write(tmp_path, "n.nrrd", img)


INVALID = {
    "2d": (
        lambda p: _write(p, "a.nrrd", sitk.GetImageFromArray(np.arange(4096, dtype=np.int16).reshape(64, 64))),
        "2D",
    ),
    "4d": (lambda p: _write(p, "a.nii.gz", sitk.JoinSeries([synthetic_image(), synthetic_image(seed=1)])), "--channel"),
    "vector": (lambda p: _write(p, "a.nrrd", sitk.Compose(synthetic_image(), synthetic_image(seed=1))), "components"),
    "constant": (_constant, "constant"),
    "nan": (_nan, "NaN"),
    "inf": (lambda p: _nan(p, np.inf), "Inf"),
    "tiny-spacing": (lambda p: _write(p, "a.nrrd", synthetic_image(spacing=(0.01, 0.01, 0.02))), "spacing"),
    "huge-spacing": (lambda p: _write(p, "a.nrrd", synthetic_image(spacing=(1.0, 1.0, 30.0))), "spacing"),
    "two-slices": (lambda p: _write(p, "a.nrrd", synthetic_image(size_xyz=(64, 64, 2))), "3 slices"),
    "small-fov": (
        lambda p: _write(p, "a.nrrd", synthetic_image(size_xyz=(40, 40, 16), spacing=(0.5, 0.5, 3.0))),
        "in-plane",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_images_exit_4_without_output(capsys, tmp_path, tiny_package, case):
    make, words = INVALID[case]
    path = make(tmp_path)
    code, stdout, err = seg(capsys, tiny_package, path, "-o", tmp_path / "out" / "o.nrrd")
    assert code == EXIT_INVALID_IMAGE
    assert len(err) == 1 and err[0].startswith("unetsegment: error: invalid image:") and words in err[0]
    assert not (tmp_path / "out").exists() and stdout == ""


def test_empty_image_exits_4(capsys, tmp_path, tiny_package):
    (tmp_path / "e.raw").write_bytes(b"")
    (tmp_path / "e.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 64 0 16\nElementSpacing = 1 1 3\nElementType = MET_SHORT\nElementDataFile = e.raw\n",
        encoding="utf-8",
    )
    code, _, err = seg(capsys, tiny_package, tmp_path / "e.mhd", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_INVALID_IMAGE and "empty" in err[0]


def test_zero_spacing_header_exits_4(capsys, tmp_path, tiny_package):
    (tmp_path / "z.raw").write_bytes(np.ones((16, 64, 64), np.int16).tobytes())
    (tmp_path / "z.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 64 64 16\nElementSpacing = 1 0 3\nElementType = MET_SHORT\nElementDataFile = z.raw\n",
        encoding="utf-8",
    )
    code, _, err = seg(capsys, tiny_package, tmp_path / "z.mhd", "-o", tmp_path / "o.nrrd")
    assert code == EXIT_INVALID_IMAGE and "zero or negative" in err[0]


def test_a_4d_image_runs_with_a_channel(capsys, tmp_path, tiny_package):
    path = _write(tmp_path, "a.nii.gz", sitk.JoinSeries([synthetic_image(), synthetic_image(seed=1)]))
    code, _, err = seg(capsys, tiny_package, path, "-o", tmp_path / "o.nrrd", "--channel", 1)
    assert code == EXIT_OK, err


def test_a_ct_gets_a_warning_and_still_runs(capsys, tmp_path, tiny_package):
    arr = sitk.GetArrayFromImage(synthetic_image()).astype(np.int16) - 1000  # air at about -800 .. -1000
    arr[:, :, :16] = -1024
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1, 1, 3))
    code, _, err = seg(capsys, tiny_package, _write(tmp_path, "ct.nrrd", img), "-o", tmp_path / "o.nrrd")
    assert code == EXIT_OK
    warnings = [line for line in err if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "CT" in warnings[0]
    assert (tmp_path / "o.nrrd").exists()


def test_a_dicom_ct_gets_a_machine_warning_line(capsys, tmp_path, tiny_package):
    write_dicom_series(synthetic_image(), tmp_path / "ct", modality="CT")
    code, _, err = seg(capsys, tiny_package, tmp_path / "ct", "-o", tmp_path / "o.nrrd", "--progress", "machine")
    assert code == EXIT_OK
    warnings = [m for m in map(parse_progress_line, err) if m["kind"] == "warning"]
    assert len(warnings) == 1 and "Modality CT" in warnings[0]["message"]
    assert parse_progress_line(err[-1])["warnings"] == [warnings[0]["message"]]


# -- exit 5 and 6: models -----------------------------------------------------------------------------


def test_a_missing_model_folder_exits_5(capsys, tmp_path, t2):
    code, _, err = run(capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", tmp_path / "no_such_model")
    assert code == EXIT_MODEL and len(err) == 1 and "no_such_model" in err[0]
    assert not (tmp_path / "o.nrrd").exists()


def test_an_unknown_model_id_exits_5(capsys, tmp_path, t2):
    code, _, err = run(capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", "no-such-model")
    assert code == EXIT_MODEL and "no-such-model" in err[0]


def test_offline_without_the_model_installed_exits_5(capsys, tmp_path, t2):
    code, _, err = run(capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", "prostate-zonal-t2", "--offline")
    assert code == EXIT_MODEL and "not installed" in err[0]


def test_weights_failing_their_checksum_exit_5(capsys, tmp_path, t2):
    pkg = make_tiny_package(tmp_path / "broken")
    with open(pkg.weights_path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    code, _, err = run(capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", pkg.path)
    assert code == EXIT_MODEL and "checksum" in err[0]


def test_an_invalid_package_exits_5(capsys, tmp_path, t2):
    pkg = make_tiny_package(tmp_path / "bad")
    (pkg.path / "model.json").write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", pkg.path)
    assert code == EXIT_MODEL and len(err) == 1


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_failed_download_exits_6(capsys, tmp_path, t2, monkeypatch):
    catalogue = tmp_path / "remote.json"
    entry = {
        "id": "remote-model",
        "version": "1.0.0",
        "url": f"http://127.0.0.1:{_closed_port()}/m.zip",
        "sha256": "a" * 64,
        "size": 10,
    }
    catalogue.write_text(json.dumps({"format_version": 1, "models": [entry]}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    code, _, err = run(
        capsys, "segment", t2, "-o", tmp_path / "o.nrrd", "--model", "remote-model", "--progress", "machine"
    )
    assert code == EXIT_DOWNLOAD
    msgs = [parse_progress_line(line) for line in err]
    assert [m["kind"] for m in msgs if m["kind"] != "progress"] == ["error"]
    assert msgs[-1]["code"] == EXIT_DOWNLOAD and "download failed" in msgs[-1]["message"]


# -- exit 7: outputs ----------------------------------------------------------------------------------


def test_an_unknown_output_extension_exits_7(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.png")
    assert code == EXIT_OUTPUT and ".nrrd" in err[0]


def test_an_existing_output_without_overwrite_exits_7_and_is_untouched(capsys, tmp_path, t2, tiny_package):
    (tmp_path / "o.nrrd").write_text("precious", encoding="utf-8")
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd")
    assert code == EXIT_OUTPUT and "--overwrite" in err[0]
    assert (tmp_path / "o.nrrd").read_text(encoding="utf-8") == "precious"


def test_an_unwritable_output_folder_exits_7(capsys, tmp_path, t2, tiny_package):
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "file" / "sub" / "o.nrrd")
    assert code == EXIT_OUTPUT and "not a folder" in err[0]


@pytest.mark.skipif(os.name == "nt", reason="permission bits")
def test_a_read_only_output_folder_exits_7(capsys, tmp_path, t2, tiny_package):
    target = Path("/proc/unetsegment-test") if os.geteuid() == 0 else tmp_path / "ro"
    if target.parent == tmp_path:
        target.mkdir()
        target.chmod(0o500)
    try:
        code, _, err = seg(capsys, tiny_package, t2, "-o", target / "o.nrrd")
    finally:
        if target.parent == tmp_path:
            target.chmod(0o700)
    assert code == EXIT_OUTPUT and len(err) == 1


def test_the_output_may_not_overwrite_the_input(capsys, tmp_path, t2, tiny_package):
    code, _, err = seg(capsys, tiny_package, t2, "-o", t2, "--overwrite")
    assert code == EXIT_OUTPUT and "is the input" in err[0]


def test_seg_nrrd_and_volumes_json_need_their_extensions(capsys, tmp_path, t2, tiny_package):
    assert seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--seg-nrrd", tmp_path / "s.nrrd")[0] == EXIT_OUTPUT
    assert (
        seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--volumes-json", tmp_path / "v.txt")[0] == EXIT_OUTPUT
    )
    assert not (tmp_path / "o.nrrd").exists()


def test_a_write_failure_after_inference_exits_7_and_leaves_nothing(capsys, tmp_path, t2, tiny_package, monkeypatch):
    import UNetSegmentLib.segfile as segfile

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segfile, "write_seg_nrrd", fail)
    code, _, err = seg(
        capsys, tiny_package, t2, "-o", tmp_path / "out" / "o.nrrd", "--seg-nrrd", tmp_path / "out" / "o.seg.nrrd"
    )
    assert code == EXIT_OUTPUT and "No space left" in err[-1]
    assert _files(tmp_path / "out") == []  # the labelmap written first was discarded too


# -- exit 2, 1, 130 -------------------------------------------------------------------------------------


def test_usage_errors_exit_2(capsys, t2):
    code, _, err = run(capsys, "segment", t2)
    assert code == EXIT_USAGE and "required" in err[-1]
    assert run(capsys, "segment", t2, "-o", "x.nrrd", "--quality", "ultra")[0] == EXIT_USAGE
    assert run(capsys, "segment", t2, "-o", "x.nrrd", "--threads", "0")[0] == EXIT_USAGE
    assert run(capsys)[0] == EXIT_USAGE


def test_usage_errors_in_machine_mode_also_give_an_error_line(capsys, t2):
    code, _, err = run(capsys, "segment", t2, "--progress", "machine")
    assert code == EXIT_USAGE
    assert parse_progress_line(err[-1])["code"] == EXIT_USAGE


def test_cuda_without_a_gpu_is_a_usage_error(capsys, tmp_path, t2, tiny_package):
    import torch

    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--device", "cuda")
    if torch.cuda.is_available():
        assert code == EXIT_OK
    else:
        assert code == EXIT_USAGE and "GPU" in err[-1] and not (tmp_path / "o.nrrd").exists()


def test_an_internal_error_is_one_line_with_a_debug_hint(capsys, tmp_path, t2, tiny_package, monkeypatch):
    import UNetSegmentLib.inference as inference

    def boom(*a, **k):
        raise ZeroDivisionError("something broke")

    monkeypatch.setattr(inference, "postprocess_labels", boom)
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--progress", "none")
    assert code == EXIT_INTERNAL
    assert len(err) == 1 and "ZeroDivisionError: something broke" in err[0] and "--debug" in err[0]
    code, _, err = seg(capsys, tiny_package, t2, "-o", tmp_path / "o.nrrd", "--progress", "none", "--debug")
    assert code == EXIT_INTERNAL and any("Traceback" in line for line in err)
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_inference_cancels_with_130_and_no_output(
    capsys, tmp_path, t2, tiny_package, monkeypatch, signame
):
    from UNetSegmentLib.inference import Predictor

    original = Predictor._probabilities

    def interrupted(self, *a, **k):
        os.kill(os.getpid(), getattr(signal, signame))
        return original(self, *a, **k)

    monkeypatch.setattr(Predictor, "_probabilities", interrupted)
    before = signal.getsignal(signal.SIGINT)
    code, _, err = seg(
        capsys, tiny_package, t2, "-o", tmp_path / "out" / "o.nrrd", "--seg-nrrd", tmp_path / "out" / "o.seg.nrrd"
    )
    assert code == EXIT_CANCELLED and "cancelled" in err[-1]
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# -- batch ----------------------------------------------------------------------------------------------


def test_batch_builds_one_predictor_and_reports_failures_in_the_csv(capsys, tmp_path, tiny_package, monkeypatch):
    from UNetSegmentLib.inference import Predictor

    built = []
    original = Predictor.__init__

    def counting(self, *a, **k):
        built.append(1)
        original(self, *a, **k)

    monkeypatch.setattr(Predictor, "__init__", counting)
    src = tmp_path / "in"
    src.mkdir()
    _write(src, "case1.nii.gz", synthetic_image(seed=1))
    _write(src, "case2.nrrd", synthetic_image(seed=2))
    _write(src, "flat.nrrd", sitk.GetImageFromArray(np.zeros((16, 64, 64), np.int16)))
    write_dicom_series(synthetic_image(seed=3), src / "patient3" / "series")
    (src / "notes.txt").write_text("not an image", encoding="utf-8")
    code, stdout, err = run(capsys, "batch", src, "-o", tmp_path / "out", "--model", tiny_package.path)
    assert code == EXIT_INVALID_IMAGE  # the first failed case's code
    assert len(built) == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv", newline="", encoding="utf-8")))
    status = {r["case"]: r["status"] for r in rows}
    assert status == {"case1": "ok", "case2": "ok", "flat": "failed", "patient3": "ok"}
    flat = next(r for r in rows if r["case"] == "flat")
    assert flat["exit_code"] == str(EXIT_INVALID_IMAGE) and "constant" in flat["error"]
    assert float(next(r for r in rows if r["case"] == "case1")["prostate_ml"]) >= 0
    assert _files(tmp_path / "out") == [
        "case1_segmentation.nrrd",
        "case2_segmentation.nrrd",
        "patient3_segmentation.nrrd",
        "summary.csv",
    ]
    assert "FAILED" in stdout and "3 of 4" in stdout


def test_batch_pattern_format_and_csv_path(capsys, tmp_path, tiny_package):
    src = tmp_path / "in"
    src.mkdir()
    _write(src, "a_t2w.nii.gz", synthetic_image(seed=1))
    _write(src, "a_adc.nii.gz", synthetic_image(seed=2))
    code, _, err = run(
        capsys, "batch", src, "-o", tmp_path / "out", "--model", tiny_package.path, "--pattern", "*_t2w.nii.gz",
        "--format", "seg.nrrd", "--csv", tmp_path / "s.csv",
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert _files(tmp_path / "out") == ["a_t2w.seg.nrrd"]
    assert [r["case"] for r in csv.DictReader(open(tmp_path / "s.csv", newline="", encoding="utf-8"))] == ["a_t2w"]


def test_batch_without_images_or_folder_exits_3(capsys, tmp_path, tiny_package):
    assert (
        run(capsys, "batch", tmp_path / "nope", "-o", tmp_path / "out", "--model", tiny_package.path)[0] == EXIT_INPUT
    )
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "batch", tmp_path / "empty", "-o", tmp_path / "out", "--model", tiny_package.path)
    assert code == EXIT_INPUT and "no images" in err[0]


def test_batch_with_a_missing_model_stops_before_any_case(capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _write(src, "a.nrrd", synthetic_image())
    code, _, _ = run(capsys, "batch", src, "-o", tmp_path / "out", "--model", tmp_path / "missing_model")
    assert code == EXIT_MODEL and not (tmp_path / "out" / "summary.csv").exists()


# -- demo, models, info, version -----------------------------------------------------------------------------


def test_demo_segments_a_synthetic_sample_and_says_what_to_run_next(capsys, tmp_path, tiny_package):
    code, stdout, err = run(capsys, "demo", "-o", tmp_path / "demo", "--model", tiny_package.path, "--offline")
    assert code == EXIT_OK, err
    names = _files(tmp_path / "demo")
    assert names == [
        "sample_t2.nrrd",
        "sample_t2.seg.nrrd",
        "sample_t2_reference.nrrd",
        "sample_t2_segmentation.nrrd",
        "sample_t2_volumes.json",
    ]
    sample, label = (
        sitk.ReadImage(str(tmp_path / "demo" / "sample_t2.nrrd")),
        sitk.ReadImage(str(tmp_path / "demo" / "sample_t2_segmentation.nrrd")),
    )
    assert label.GetSize() == sample.GetSize()
    assert "unetsegment segment " in stdout and str(tmp_path / "demo" / "sample_t2.seg.nrrd") in stdout
    # a second run simply replaces the demo's files
    assert run(capsys, "demo", "-o", tmp_path / "demo", "--model", tiny_package.path)[0] == EXIT_OK


def test_demo_without_a_usable_model_fails_cleanly_and_writes_nothing(capsys, tmp_path, monkeypatch):
    import UNetSegmentLib.store as store

    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "no_bundled_models")
    code, stdout, err = run(capsys, "demo", "-o", tmp_path / "demo", "--offline")
    assert code == EXIT_MODEL and len(err) == 1 and store.DEFAULT_MODEL_ID in err[0]
    assert not (tmp_path / "demo").exists() or _files(tmp_path / "demo") == []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_models_commands_manage_the_cache(capsys, tmp_path, tiny_package, isolated_store, monkeypatch):
    zip_path = tiny_package.to_zip(tmp_path / "tiny.zip")
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(zip_path, served / "tiny.zip")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = {
            "id": "tiny-test-model", "version": "0.0.1", "url": f"http://127.0.0.1:{server.server_address[1]}/tiny.zip",
            "sha256": sha256_file(zip_path), "size": zip_path.stat().st_size, "structures": ["prostate"],
        }  # fmt: skip
        catalogue = tmp_path / "served.json"
        catalogue.write_text(json.dumps({"format_version": 1, "models": [entry]}), encoding="utf-8")
        monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
        code, out, _ = run(capsys, "models", "list")
        assert (
            code == EXIT_OK
            and "tiny-test-model" not in out.split("Available")[0]
            and "tiny-test-model" in out.split("Available")[1]
        )
        code, out, err = run(capsys, "models", "download", "tiny-test-model@0.0.1")
        assert code == EXIT_OK and "Installed tiny-test-model 0.0.1" in out, err
    finally:
        server.shutdown()
    installed = isolated_store / "models" / "tiny-test-model" / "0.0.1"
    assert (installed / "model.json").is_file()
    assert run(capsys, "models", "path")[1].strip() == str(isolated_store)
    assert run(capsys, "models", "path", "tiny-test-model")[1].strip() == str(installed)
    assert run(capsys, "models", "verify")[0] == EXIT_OK
    with open(installed / "weights.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\xff\xff\xff\xff")
    code, out, _ = run(capsys, "models", "verify", "tiny-test-model")
    assert code == EXIT_MODEL and "FAILED" in out
    assert run(capsys, "models", "remove", "tiny-test-model")[0] == EXIT_OK
    assert not installed.exists()
    assert run(capsys, "models", "remove", "tiny-test-model")[0] == EXIT_MODEL
    code, out, _ = run(capsys, "models", "import", zip_path)
    assert code == EXIT_OK and installed.is_dir()
    code, out, _ = run(capsys, "models", "import", tmp_path / "missing.zip")
    assert code == EXIT_MODEL


def test_version_and_info(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == EXIT_OK and out.strip() == "unetsegment 0.1.0"
    code, out, _ = run(capsys, "info")
    assert code == EXIT_OK and "model cache" in out and "bfloat16" in out and "threads" in out


# -- the progress protocol ----------------------------------------------------------------------------------


def test_parse_progress_line_round_trips_and_ignores_other_lines():
    line = format_progress_line("inference", 0.5, 0.6, "window 3")
    assert parse_progress_line(line) == {
        "kind": "progress",
        "stage": "inference",
        "fraction": 0.5,
        "overall": 0.6,
        "message": "window 3",
    }
    assert parse_progress_line("WARNING: something") is None
    assert parse_progress_line("UNETSEGMENT_PROGRESS {broken") is None
    assert parse_progress_line('UNETSEGMENT_ERROR {"code": 3, "message": "x"}') == {
        "kind": "error",
        "code": 3,
        "message": "x",
    }


def test_machine_reporter_merges_tiny_steps_and_never_goes_back(capsys):
    rep = ProgressReporter("machine")
    for i in range(1001):
        rep("inference", i / 1000)
    rep("preprocessing", 1.0)  # an earlier stage reported late does not lower overall
    lines = [parse_progress_line(x) for x in capsys.readouterr().err.splitlines()]
    assert 90 <= len(lines) <= 103
    overall = [m["overall"] for m in lines]
    assert overall == sorted(overall)


# -- as the Slicer module runs it ---------------------------------------------------------------------------


def _python_m(*args, **kw):
    # the checkout first, and whatever PYTHONPATH already holds after it (dependencies may live there)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-m", "UNetSegmentLib", *map(str, args)], env=env, cwd=str(REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_python_m_segment_speaks_the_machine_protocol(tmp_path, t2, tiny_package):
    proc = _python_m(
        "segment",
        t2,
        "-o",
        tmp_path / "o.nrrd",
        "--model",
        tiny_package.path,
        "--progress",
        "machine",
        "--seg-nrrd",
        tmp_path / "o.seg.nrrd",
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, stderr
    msgs = [parse_progress_line(line) for line in stderr.splitlines()]
    assert all(m is not None for m in msgs), stderr
    assert msgs[0]["kind"] == "progress" and msgs[-1]["kind"] == "result"
    assert msgs[-1]["seg_nrrd"] == str(tmp_path / "o.seg.nrrd") and "prostate" in msgs[-1]["volumes_ml"]
    assert "Labelmap written to" in stdout


def test_python_m_reports_errors_as_one_protocol_line(tmp_path, tiny_package):
    proc = _python_m(
        "segment",
        tmp_path / "missing.nrrd",
        "-o",
        tmp_path / "o.nrrd",
        "--model",
        tiny_package.path,
        "--progress",
        "machine",
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INPUT
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 2  # the first progress line, then the error
    assert parse_progress_line(lines[-1])["code"] == EXIT_INPUT and "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="SIGTERM cannot be caught on Windows")
def test_python_m_is_cancelled_by_sigterm_and_leaves_no_output(tmp_path):
    # a fine model grid makes thousands of windows, so inference is still running when the signal arrives
    fine = make_tiny_package(tmp_path / "fine_model", spacing_xyz=(0.5, 0.5, 1.5))
    big = _write(tmp_path, "big.nrrd", synthetic_image(size_xyz=(320, 320, 48), spacing=(0.5, 0.5, 1.5)))
    out = tmp_path / "out"
    proc = _python_m(
        "segment", big, "-o", out / "o.nrrd", "--model", fine.path, "--progress", "machine", "--quality", "best"
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        msg = parse_progress_line(line)
        if msg and msg.get("stage") == "inference":
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == EXIT_CANCELLED, "".join(seen) + rest
    assert parse_progress_line(rest.strip().splitlines()[-1])["code"] == EXIT_CANCELLED
    assert not out.exists() or _files(out) == []
