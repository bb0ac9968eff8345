"""Every bad and awkward input of the catalogue (``input_catalogue.py``) through ``unetsegment segment``.

Each bad input must give its exit code and exactly one line on stderr (no
traceback) that says what is wrong (naming the damaged file where there is
one), leave no output or temporary file, and leave the model cache and an
earlier result in the output folder untouched. The CLI runs in-process
(``cli.main``) for speed; a few cases also run as a real subprocess to show
that nothing else reaches stderr. The awkward inputs that are readable are
segmented with a tiny model and must say which series was read and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import SimpleITK as sitk
from conftest import REPO, SHARED_DATA
from input_catalogue import CATALOGUE, READABLE, RESAMPLED, Case

from UNetSegmentLib.cli import main
from UNetSegmentLib.progress import STAGES

EARLIER = b"an earlier result that must survive\n"


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "sentinel.txt").write_text("cache content", encoding="utf-8")
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": []}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_HOME", str(home))
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    return home


def _snapshot(folder: Path) -> Dict[str, Tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _errors(err: str):
    return [line for line in err.splitlines() if line.strip() and not any(line.startswith(f"{s}...") for s in STAGES)]


def _params():
    for case in CATALOGUE:
        marks = [pytest.mark.shared_data] if case.real_data else []
        yield pytest.param(case, id=case.name, marks=marks)


def test_the_catalogue_is_big_enough_and_covers_every_format():
    assert len(CATALOGUE) >= 40
    names = " ".join(c.name for c in CATALOGUE)
    for word in ("nrrd", "nifti", "nii.gz", "mha", "mhd", "dicom", "mask", "probability", "own", "real"):
        assert word in names, word
    assert {c.code for c in CATALOGUE} == {2, 3, 4}


@pytest.mark.parametrize("case", _params())
def test_bad_input_gets_its_exit_code_and_one_line(case: Case, tmp_path, capsys, isolated_store, tiny_package):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source, extra = case.build(inputs, SHARED_DATA)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "earlier.nrrd").write_bytes(EARLIER)
    cache_before = _snapshot(isolated_store)
    inputs_before = _snapshot(inputs)
    argv = ["segment", str(source), "-o", str(out_dir / "result.nrrd"), "--seg-nrrd", str(out_dir / "result.seg.nrrd")]
    argv += ["--volumes-json", str(out_dir / "result.json"), "--model", str(tiny_package.path), *extra]

    code = main(argv)
    out, err = capsys.readouterr()

    lines = _errors(err)
    assert code == case.code, f"{case.name}: exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("unetsegment: error: "), lines
    assert "Traceback" not in err + out
    message = lines[0]
    for word in case.words:
        assert word in message, f"{case.name}: {word!r} not in {message!r}"
    if case.names_file:
        assert case.names_file in message, f"{case.name}: the file {case.names_file} is not named in {message!r}"
    assert sorted(p.name for p in out_dir.iterdir()) == ["earlier.nrrd"]  # no output, no temporary file
    assert (out_dir / "earlier.nrrd").read_bytes() == EARLIER
    assert _snapshot(isolated_store) == cache_before
    assert _snapshot(inputs) == inputs_before  # the input is only read
    if case.code == 2 and "DICOM folder" not in message:
        assert "  1. " in out  # the numbered list of series to choose from


@pytest.mark.parametrize("name", ["nii.gz truncated stream", "dicom slice missing", "study with two axial T2"])
def test_no_traceback_reaches_stderr_of_the_real_process(name, tmp_path, tiny_package):
    case = next(c for c in CATALOGUE if c.name == name)
    source, extra = case.build(tmp_path, SHARED_DATA)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "UNetSegmentLib", "segment", str(source), "-o", str(tmp_path / "o.nrrd")]
        + ["--model", str(tiny_package.path), "--progress", "none", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == case.code, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("unetsegment: error: "), proc.stderr
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("name,build,words", READABLE, ids=[r[0] for r in READABLE])
def test_awkward_but_readable_input_is_segmented_and_says_why(name, build, words, tmp_path, capsys, tiny_package):
    (tmp_path / "in").mkdir()
    source, extra = build(tmp_path / "in", SHARED_DATA)
    if name in RESAMPLED:
        extra = [*extra, "--resample-uneven"]
    out = tmp_path / "o.nrrd"
    code = main(
        ["segment", str(source), "-o", str(out), "--model", str(tiny_package.path), "--progress", "none", *extra]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    text = stdout + err
    for word in words:
        assert word in text, f"{name}: {word!r} not in {text!r}"
    assert "Reading series" in stdout
    labelmap = sitk.ReadImage(str(out))
    assert labelmap.GetDimension() == 3 and labelmap.GetSize()[0] >= 32
    if name in RESAMPLED:
        assert labelmap.GetSize()[2] == 12 and abs(labelmap.GetSpacing()[2] - 3.0) < 1e-6


def test_a_segmented_result_is_refused_as_input(tmp_path, capsys, tiny_package):
    """The tool's own output, written by a real run, is recognised when it is given back as the image."""
    from fixtures_dicom import volume

    scan = tmp_path / "t2.nrrd"
    sitk.WriteImage(volume(), str(scan))
    assert main(["segment", str(scan), "-o", str(tmp_path / "t2_seg.nrrd"), "--model", str(tiny_package.path)]) == 0
    capsys.readouterr()
    code = main(
        [
            "segment",
            str(tmp_path / "t2_seg.nrrd"),
            "-o",
            str(tmp_path / "again.nrrd"),
            "--model",
            str(tiny_package.path),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 4 and "written by unetsegment" in err and "tiny-test-model" in err
    assert not (tmp_path / "again.nrrd").exists()
