"""Model packages: write/load round trip, checksums, malformed model.json, strict weight loading, zip."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from conftest import make_tiny_package
from safetensors.torch import load_file

from UNetSegmentLib.model_package import (
    MODEL_JSON,
    WEIGHTS_FILE,
    ModelInfo,
    ModelPackage,
    ModelPackageError,
    sha256_file,
)


@pytest.fixture
def package(tmp_path) -> ModelPackage:
    return make_tiny_package(tmp_path / "pkg", structures=("peripheral_zone", "transition_zone"))


def _edit_model_json(pkg: ModelPackage, edit) -> None:
    path = pkg.path / MODEL_JSON
    d = json.loads(path.read_text(encoding="utf-8"))
    edit(d)
    path.write_text(json.dumps(d), encoding="utf-8")


def test_write_load_round_trip(package):
    loaded = ModelPackage.load(package.path, verify=True)
    assert loaded.info == package.info
    assert ModelInfo.from_dict(loaded.info.to_dict()) == loaded.info
    assert loaded.info.weights_sha256 == sha256_file(package.weights_path)
    assert loaded.info.structures == ["peripheral_zone", "transition_zone"]
    assert loaded.info.num_classes == 3
    assert loaded.info.preprocessing.spacing_xyz_mm == (2.0, 2.0, 4.0)
    assert loaded.info.inference.patch_size_zyx == (8, 32, 32)
    assert [lab.structure.snomed_code for lab in loaded.info.labels] == ["279706003", "399384005"]
    assert not list(package.path.glob("*.tmp"))


def test_test_time_flips_round_trip_and_default_to_none(package):
    assert package.info.inference.test_time_flips == ("x",)
    assert package.info.to_dict()["inference"]["test_time_flips"] == ["x"]
    _edit_model_json(package, lambda d: d["inference"].update(test_time_flips=["z", "x"]))
    assert ModelPackage.load(package.path, verify=False).info.inference.test_time_flips == ("z", "x")
    # model.json written before the field existed: no flips, since none is known to be safe
    _edit_model_json(package, lambda d: d["inference"].pop("test_time_flips"))
    assert ModelPackage.load(package.path, verify=False).info.inference.test_time_flips == ()


def test_write_copies_extra_files(tmp_path, package):
    card = tmp_path / "card.md"
    card.write_text("# Model card\n", encoding="utf-8")
    state = load_file(str(package.weights_path))
    pkg = ModelPackage.write(
        tmp_path / "with-card", package.info, state, extra_files={"README.md": card, "report/card.md": card}
    )
    assert (pkg.path / "README.md").read_text(encoding="utf-8") == "# Model card\n"
    assert (pkg.path / "report" / "card.md").is_file()
    again = ModelPackage.load(pkg.path, verify=True)
    assert again.info.weights_sha256 == sha256_file(pkg.weights_path)
    reloaded = load_file(str(pkg.weights_path))
    assert set(reloaded) == set(state) and all(torch.equal(reloaded[k], state[k]) for k in state)


def test_tampered_weights_fail_the_checksum(package):
    data = bytearray(package.weights_path.read_bytes())
    data[-3] ^= 0x10
    package.weights_path.write_bytes(bytes(data))
    expected = package.info.weights_sha256[:12]
    with pytest.raises(ModelPackageError, match=f"fail their checksum .*expected {expected}"):
        ModelPackage.load(package.path, verify=True)
    assert ModelPackage.load(package.path, verify=False).info.id == "tiny-test-model"


def test_missing_weights_sha256_is_refused(package):
    _edit_model_json(package, lambda d: d["weights"].update(sha256=""))
    with pytest.raises(ModelPackageError, match="no weights sha256"):
        ModelPackage.load(package.path, verify=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("architecture"), "malformed: KeyError"),
        (lambda d: d.update(format_version=3), "format_version 3 is not supported"),
        (lambda d: d.update(format_version=2), "format_version 2 \\(an ensemble\\) lists no members"),
        (lambda d: d.update(id="Prostate Model"), "model id 'Prostate Model'"),
        (lambda d: d.update(version="1.0"), "not a semantic version"),
        (lambda d: d["labels"][0].update(value=0), "outside 1-255"),
        (lambda d: d["labels"][1].update(value=1), "distinct values"),
        (lambda d: d.update(labels=[]), "non-empty"),
        (lambda d: d["preprocessing"].update(spacing_xyz_mm=[1, 1]), "malformed: ValueError"),
        (lambda d: d["inference"].update(patch_size_zyx="big"), "malformed"),
        (lambda d: d["inference"].update(overlap=1.0), "overlap must be in"),
        (lambda d: d["inference"].update(test_time_flips=["left-right"]), "test_time_flips must be distinct axes"),
        (lambda d: d["inference"].update(test_time_flips=["x", "x"]), "test_time_flips must be distinct axes"),
    ],
)
def test_malformed_model_json(package, edit, message):
    _edit_model_json(package, edit)
    with pytest.raises(ModelPackageError, match=message):
        ModelPackage.load(package.path, verify=False)


def test_unreadable_or_missing_files(tmp_path, package):
    (package.path / MODEL_JSON).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelPackageError, match="cannot read"):
        ModelPackage.load(package.path)
    with pytest.raises(ModelPackageError, match="is not a model package"):
        ModelPackage.load(tmp_path / "nowhere")
    other = make_tiny_package(tmp_path / "other")
    other.weights_path.unlink()
    with pytest.raises(ModelPackageError, match=f"has no {WEIGHTS_FILE}"):
        ModelPackage.load(other.path, verify=False)


def test_build_network_loads_the_weights(package):
    net = package.build_network()
    saved = load_file(str(package.weights_path))
    state = net.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert not net.training
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 8, 32, 32))
    assert out.shape == (1, 3, 8, 32, 32)


def test_build_network_is_strict(tmp_path, package):
    state = load_file(str(package.weights_path))
    dropped = sorted(state)[0]
    del state[dropped]
    with pytest.raises(ModelPackageError, match="(?s)cannot load weights.*Missing key"):
        ModelPackage.write(tmp_path / "missing-key-onnx", package.info, state)  # the ONNX export loads them
    pkg = ModelPackage.write(tmp_path / "missing-key", package.info, state, onnx=False)
    with pytest.raises(ModelPackageError, match="(?s)cannot load weights.*Missing key"):
        pkg.build_network()

    state = load_file(str(package.weights_path))
    state["extra.weight"] = torch.zeros(1)
    pkg = ModelPackage.write(tmp_path / "extra-key", package.info, state, onnx=False)
    with pytest.raises(ModelPackageError, match="Unexpected key"):
        pkg.build_network()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["architecture"].update(name="ResNet"), "unsupported architecture 'ResNet'"),
        (lambda d: d["architecture"]["parameters"].update(norm="group"), "bad UNet3D parameters"),
        (lambda d: d["architecture"]["parameters"].update(dropout=0.1), "unknown UNet3D parameters"),
        (lambda d: d["labels"].pop(), "network has 3 outputs but the labels need 2"),
    ],
)
def test_build_network_refuses_mismatched_architecture(package, edit, message):
    _edit_model_json(package, edit)
    with pytest.raises(ModelPackageError, match=message):
        ModelPackage.load(package.path, verify=True).build_network()


def test_to_zip_has_files_at_top_level_and_round_trips(tmp_path, package):
    (package.path / "report").mkdir()
    (package.path / "report" / "dice.csv").write_text("case,dice\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    zip_path = package.to_zip(tmp_path / "out" / "tiny.zip")
    assert zip_path == tmp_path / "out" / "tiny.zip"
    assert not list(zip_path.parent.glob("*.part"))
    with zipfile.ZipFile(zip_path) as z:
        assert sorted(z.namelist()) == [MODEL_JSON, "model.onnx", "report/dice.csv", WEIGHTS_FILE]
        z.extractall(tmp_path / "unzipped")
    again = ModelPackage.load(tmp_path / "unzipped", verify=True)
    assert again.info == package.info
    assert sha256_file(tmp_path / "unzipped" / WEIGHTS_FILE) == package.info.weights_sha256


def test_to_zip_is_byte_reproducible_whatever_the_file_times(tmp_path, package):
    import os
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(package.path, copy)
    for f in copy.iterdir():
        os.utime(f, (1_000_000_000, 1_000_000_000))  # 2001, unlike the fixture's files
        f.chmod(0o600)
    a = package.to_zip(tmp_path / "a.zip")
    b = ModelPackage.load(copy).to_zip(tmp_path / "b.zip")
    assert sha256_file(a) == sha256_file(b)
    with zipfile.ZipFile(b) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    (copy / MODEL_JSON).write_text((copy / MODEL_JSON).read_text(encoding="utf-8") + " ", encoding="utf-8")
    assert sha256_file(ModelPackage.load(copy).to_zip(tmp_path / "c.zip")) != sha256_file(a)


def test_writing_the_same_weights_again_gives_the_same_bytes(tmp_path, package):
    """A re-export of unchanged weights must keep the sha256 in model.json and the catalogue."""
    state = load_file(str(package.weights_path))
    digests = {ModelPackage.write(tmp_path / f"w{i}", package.info, state).info.weights_sha256 for i in range(12)}
    assert digests == {package.info.weights_sha256}
