"""Ensemble packages: the format, checksums per member, mismatched members, the averaged softmax on every
backend, members per quality, progress and cancelling across members, building one (export.py, crossval.py),
and a CPU run on one without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, make_tiny_package, synthetic_image

from UNetSegmentLib.inference import QUALITIES, CancelledError, Predictor
from UNetSegmentLib.model_package import (
    ENSEMBLE_FORMAT_VERSION,
    MODEL_JSON,
    QUALITY_NAMES,
    ModelInfo,
    ModelPackage,
    ModelPackageError,
    sha256_file,
)
from UNetSegmentLib.runtime import create_runtime, openvino_installed

BUNDLED = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"


def _ensemble(folder: Path, sources, members_per_quality=None, names=None) -> ModelPackage:
    """An ensemble package of ``sources`` (single packages) written as export.py writes it."""
    from training.export import export_ensemble, source_package

    names = names or [f"m{i}" for i in range(len(sources))]
    members = [(name, *source_package(src.path)) for name, src in zip(names, sources)]
    return export_ensemble(folder, members, members_per_quality)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny packages with different random weights, and their ensemble (every member at every quality)."""
    root = tmp_path_factory.mktemp("ensemble")
    a = make_tiny_package(root / "a", seed=1)
    b = make_tiny_package(root / "b", seed=2)
    return a, b, _ensemble(root / "ab", [a, b])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x20
    path.write_bytes(bytes(data))


# -- the format -----------------------------------------------------------------------------------


def test_an_ensemble_lists_its_members_files_with_their_sha256(pair):
    a, b, ens = pair
    meta = json.loads((ens.path / MODEL_JSON).read_text(encoding="utf-8"))
    assert meta["format_version"] == ENSEMBLE_FORMAT_VERSION and "weights" not in meta and "onnx" not in meta
    assert [m["name"] for m in meta["members"]] == ["m0", "m1"]
    for member, source in zip(meta["members"], (a, b)):
        weights = ens.path / member["weights"]["file"]
        assert member["weights"]["file"] == f"members/{member['name']}/weights.safetensors"
        assert weights.read_bytes() == source.weights_path.read_bytes()  # copied byte for byte
        assert member["weights"]["sha256"] == sha256_file(weights) == source.info.weights_sha256
        assert member["onnx"]["sha256"] == sha256_file(ens.path / member["onnx"]["file"])
        assert member["provenance"]["package"] == str(source.path)
    loaded = ModelPackage.load(ens.path)
    assert loaded.info == ens.info and ModelInfo.from_dict(loaded.info.to_dict()) == loaded.info
    assert loaded.has_onnx and loaded.info.is_ensemble and len(loaded.members) == 2
    assert loaded.info.weights_digest not in ("", a.info.weights_sha256, b.info.weights_sha256)
    with pytest.raises(ModelPackageError, match="is an ensemble of 2 networks"):
        loaded.build_network()


def test_the_bundled_default_package_is_unchanged_and_verifies():
    """A package with one network keeps format 1: model.json is written back byte for byte."""
    pkg = ModelPackage.load(BUNDLED, verify=True)
    text = (BUNDLED / MODEL_JSON).read_text(encoding="utf-8")
    assert json.dumps(pkg.info.to_dict(), indent=2) + "\n" == text
    assert json.loads(text)["format_version"] == 1 and "members" not in json.loads(text)
    assert not pkg.info.is_ensemble and [m.name for m in pkg.members] == ["model"]
    assert pkg.members[0].weights_path == pkg.weights_path and pkg.info.weights_digest == pkg.info.weights_sha256
    assert [m.name for m in pkg.members_for("fast")] == ["model"]
    from UNetSegmentLib.store import load_catalogue

    assert [e.version for e in load_catalogue() if e.id == pkg.info.id][-1] == pkg.info.version


def test_the_library_and_the_package_format_name_the_same_qualities():
    assert QUALITIES == QUALITY_NAMES


@pytest.mark.parametrize("tamper", ["weights.safetensors", "model.onnx"])
def test_a_tampered_member_is_refused_naming_it(tmp_path, pair, tamper):
    import shutil

    folder = tmp_path / "ens"
    shutil.copytree(pair[2].path, folder)
    _flip_byte(folder / "members" / "m1" / tamper)
    verb = "fail their checksum" if tamper.startswith("weights") else "fails its checksum"
    with pytest.raises(ModelPackageError, match=f"member 'm1': .*members/m1/{tamper} {verb}"):
        ModelPackage.load(folder)
    ModelPackage.load(folder, verify=False).members[0].verify()  # the other member is fine


def test_the_bytes_checked_are_the_bytes_run(tmp_path, pair):
    """A member's file changed after the package was loaded is refused by every runtime that would load it."""
    import shutil

    folder = tmp_path / "ens"
    shutil.copytree(pair[2].path, folder)
    ens = ModelPackage.load(folder)
    _flip_byte(folder / "members" / "m0" / "model.onnx")
    _flip_byte(folder / "members" / "m1" / "weights.safetensors")
    with pytest.raises(ModelPackageError, match="member 'm0': .*model.onnx fails its checksum"):
        Predictor(ens, backend="onnxruntime", device="cpu")
    pytest.importorskip("torch")
    with pytest.raises(ModelPackageError, match="member 'm1': .*weights.safetensors fail their checksum"):
        Predictor(ens, backend="torch", device="cpu")


def test_a_missing_member_file_is_refused_naming_it(tmp_path, pair):
    import shutil

    folder = tmp_path / "ens"
    shutil.copytree(pair[2].path, folder)
    (folder / "members" / "m1" / "model.onnx").unlink()
    with pytest.raises(ModelPackageError, match="member 'm1': .*lists members/m1/model.onnx"):
        ModelPackage.load(folder, verify=False)


def _edit(folder: Path, edit) -> None:
    d = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    edit(d)
    (folder / MODEL_JSON).write_text(json.dumps(d), encoding="utf-8")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["members"][1].update(preprocessing={}), "member 'm1' sets its own preprocessing"),
        (lambda d: d["members"][1].update(seed=3), r"member 'm1' has unknown keys \['seed'\]"),
        (lambda d: d["members"][1].update(name="m0"), "distinct names; m0 is repeated"),
        (lambda d: d["members"][1]["weights"].update(file="../a/weights.safetensors"), "not a relative path"),
        (lambda d: d["members"][1]["weights"].update(sha256=""), "member 'm1' has no valid weights sha256"),
        (lambda d: d["members"][1].pop("onnx"), "member 'm1' has no ONNX network but 'm0' has"),
        (lambda d: d.update(members=[]), "lists no members"),
        (lambda d: d.update(weights={"file": "weights.safetensors", "sha256": "0" * 64}), "not weights or onnx"),
        (lambda d: d.update(format_version=1), "lists members .* but has format_version 1"),
        (lambda d: d.update(members_per_quality={"fast": 0}), "gives fast 0 members; it must be 1 to 2"),
        (lambda d: d.update(members_per_quality={"best": 3}), "gives best 3 members"),
        (lambda d: d.update(members_per_quality={"ultra": 1}), "names 'ultra'"),
    ],
)
def test_malformed_ensemble_model_json_is_refused(tmp_path, pair, edit, message):
    import shutil

    folder = tmp_path / "ens"
    shutil.copytree(pair[2].path, folder)
    _edit(folder, edit)
    with pytest.raises(ModelPackageError, match=message):
        ModelPackage.load(folder, verify=False)


def test_members_per_quality_in_a_single_package_is_refused(tmp_path):
    pkg = make_tiny_package(tmp_path / "one")
    _edit(pkg.path, lambda d: d.update(members_per_quality={"best": 1}))
    with pytest.raises(ModelPackageError, match="lists members .* but has format_version 1"):
        ModelPackage.load(pkg.path, verify=False)


@pytest.mark.parametrize(
    "other, difference",
    [
        ({"spacing_xyz": (1.5, 1.5, 3.0)}, r"preprocessing.spacing_xyz_mm: \[2.0, 2.0, 4.0\] vs \[1.5, 1.5, 3.0\]"),
        ({"patch_zyx": (8, 48, 48)}, r"inference.patch_size_zyx: \[8, 32, 32\] vs \[8, 48, 48\]"),
        ({"test_time_flips": ()}, r'inference.test_time_flips: \["x"\] vs \[\]'),
        ({"structures": ("transition_zone",)}, r'labels\[0\].name: "prostate" vs "transition_zone"'),
        ({"structures": ("peripheral_zone", "transition_zone")}, "architecture.parameters.out_channels: 2 vs 3"),
    ],
)
def test_members_that_differ_are_refused_naming_the_difference(tmp_path, pair, other, difference):
    odd = make_tiny_package(tmp_path / "odd", seed=5, **other)
    with pytest.raises(ModelPackageError, match=f"member 'm1' .* in {difference}"):
        _ensemble(tmp_path / "ens", [pair[0], odd])
    assert not (tmp_path / "ens" / MODEL_JSON).exists()


def test_an_ensemble_is_not_a_member(tmp_path, pair):
    with pytest.raises(ModelPackageError, match="member 'm1' .* is itself an ensemble"):
        _ensemble(tmp_path / "ens", [pair[0], pair[2]])
    with pytest.raises(ModelPackageError, match="at least two members"):
        _ensemble(tmp_path / "one", [pair[0]])


# -- inference ---------------------------------------------------------------------------------------


def test_two_identical_members_give_the_single_models_output(tmp_path, pair):
    a = pair[0]
    twin = _ensemble(tmp_path / "aa", [a, a])
    image = synthetic_image()
    for quality in QUALITIES:
        single = Predictor(a, backend="onnxruntime", device="cpu", quality=quality).predict(image)
        double = Predictor(twin, backend="onnxruntime", device="cpu", quality=quality).predict(image)
        assert (single.members, double.members) == (1, 2)
        assert np.array_equal(double.probabilities, single.probabilities)  # (p + p) / 2 is p exactly
        assert np.array_equal(sitk.GetArrayFromImage(double.labelmap), sitk.GetArrayFromImage(single.labelmap))
        assert double.computed_voxels == 2 * single.computed_voxels


BACKENDS = [
    "onnxruntime",
    "torch",
    pytest.param("openvino", marks=pytest.mark.skipif(not openvino_installed(), reason="OpenVINO not installed")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ensemble_averages_its_members_softmax(pair, backend):
    """``best`` runs every pass on the whole grid, so the members see the same windows as alone: the
    ensemble's softmax is the mean of theirs."""
    if backend == "torch":
        pytest.importorskip("torch")
    a, b, ens = pair
    image = synthetic_image(size_xyz=(72, 64, 16))
    kw = {"backend": backend, "device": "cpu", "quality": "best", "precision": "float32"}
    pa = Predictor(a, **kw).predict(image).probabilities
    pb = Predictor(b, **kw).predict(image).probabilities
    result = Predictor(ens, **kw).predict(image)
    assert result.members == 2 and result.backend == backend
    assert np.abs(pa - pb).max() > 1e-2  # the members disagree, so a wrong average shows
    np.testing.assert_allclose(result.probabilities, (pa + pb) / 2, atol=1e-6)


class RecordingRuntime:
    """A real runtime that records the windows it ran (and can ask to cancel after some)."""

    def __init__(self, inner, log: list, name: str) -> None:
        self.inner, self.log, self.name_ = inner, log, name
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.threads, self.max_window_voxels = inner.threads, inner.max_window_voxels

    def run(self, x, should_cancel=None):
        self.log.append((self.name_, tuple(x.shape[2:]), float(x.sum())))
        return self.inner.run(x, should_cancel)

    def fallback(self):
        return None


def _recording_predictor(ens: ModelPackage, quality: str):
    log: list = []
    members = ens.members_for(quality)
    runtimes = [RecordingRuntime(create_runtime(m, backend="onnxruntime"), log, m.name) for m in members]
    return Predictor(ens, quality=quality, runtime=runtimes), log


def test_every_member_runs_the_same_windows_and_the_box_comes_from_the_average(pair):
    """``standard``: the first pass near the centre, then the mirrored pass on the gland's box, for each member."""
    a, b, ens = pair
    predictor, log = _recording_predictor(ens, "standard")
    result = predictor.predict(synthetic_image(size_xyz=(96, 96, 16)))
    by_member = {name: [(shape, s) for n, shape, s in log if n == name] for name in ("m0", "m1")}
    assert len(by_member["m0"]) >= 2 and by_member["m0"] == by_member["m1"]
    assert [n for n, _, _ in log][:2] == ["m0", "m1"]  # one region at a time: both members, then the next
    assert result.computed_voxels == sum(int(np.prod(shape)) for _, shape, _ in log)


def test_members_per_quality_is_respected(tmp_path, pair):
    a, b, _ = pair
    c = make_tiny_package(tmp_path / "c", seed=3)
    ens = _ensemble(tmp_path / "abc", [a, b, c], {"fast": 1, "standard": 2})
    assert ens.info.members_summary() == "ensemble of 3 networks (fast 1, standard 2, best 3)"
    image = synthetic_image()
    fast = Predictor(ens, backend="onnxruntime", device="cpu", quality="fast")
    assert [m.name for m in fast.members] == ["m0"] and len(fast.runtimes) == 1
    alone = Predictor(a, backend="onnxruntime", device="cpu", quality="fast").predict(image)
    got = fast.predict(image)
    assert got.members == 1 and np.array_equal(got.probabilities, alone.probabilities)
    assert Predictor(ens, backend="onnxruntime", device="cpu", quality="standard").predict(image).members == 2
    assert Predictor(ens, backend="onnxruntime", device="cpu", quality="best").predict(image).members == 3
    # without members_per_quality every member runs at every quality
    assert all(len(pair[2].members_for(q)) == 2 for q in QUALITIES)
    with pytest.raises(ValueError, match="give one runtime each, not 1"):
        Predictor(ens, quality="best", runtime=fast.runtime)


def test_progress_rises_through_every_member_and_cancel_stops_between_them(pair):
    ens = pair[2]
    predictor, log = _recording_predictor(ens, "fast")
    reports: list = []
    predictor.predict(synthetic_image(), progress=lambda stage, frac: reports.append((stage, frac)))
    inference = [f for s, f in reports if s == "inference"]
    assert inference[0] == 0.0 and inference[-1] == 1.0 and inference == sorted(inference)
    assert len(set(inference)) >= 3  # a step per member's window, not one jump
    assert {n for n, _, _ in log} == {"m0", "m1"}

    predictor, log = _recording_predictor(ens, "fast")
    with pytest.raises(CancelledError):
        predictor.predict(synthetic_image(), should_cancel=lambda: bool(log))  # cancel once m0 has run a window
    assert [n for n, _, _ in log] == ["m0"]


def test_a_member_with_the_wrong_number_of_classes_is_named(pair):
    class TwoLabels:
        name, device, precision, threads, max_window_voxels = "fake", "cpu", "float32", 1, 10**9

        def run(self, x, should_cancel=None):
            return np.zeros((1, 3) + x.shape[2:], np.float32)

        def fallback(self):
            return None

    ens = pair[2]
    runtimes = [create_runtime(ens.members[0], backend="onnxruntime"), TwoLabels()]
    with pytest.raises(
        ModelPackageError, match="network 'm1' of tiny-test-model-ensemble gives 3 classes; its labels need 2"
    ):
        Predictor(ens, quality="fast", runtime=runtimes).predict(synthetic_image())


# -- building one -------------------------------------------------------------------------------------


def test_export_py_ensemble_builds_a_package_from_packages(tmp_path, pair, capsys):
    from training.export import main

    a, b, _ = pair
    out = tmp_path / "ens"
    argv = ["--ensemble", str(out), str(a.path), str(b.path), "--names", "first,second", "--version", "2.0.0"]
    assert main([*argv, "--members-per-quality", "fast=1,standard=1,best=all", "--zip"]) == 0
    assert "ensemble of 2 networks (fast 1, standard 1, best 2)" in capsys.readouterr().out
    ens = ModelPackage.load(out)
    assert [m.name for m in ens.members] == ["first", "second"]
    assert (ens.info.id, ens.info.version) == ("tiny-test-model-ensemble", "2.0.0")
    assert ens.info.members[1].provenance["weights_sha256"] == b.info.weights_sha256
    assert ens.info.training["ensemble_of"] == 2 and (tmp_path / "ens.zip").is_file()
    # the default: the first member alone at the default quality, all at best
    assert main(["--ensemble", str(tmp_path / "default"), str(a.path), str(b.path)]) == 0
    assert ModelPackage.load(tmp_path / "default").info.members_per_quality == {"fast": 1, "standard": 1, "best": 2}
    capsys.readouterr()
    odd = make_tiny_package(tmp_path / "odd", spacing_xyz=(1.0, 1.0, 3.0))
    assert main(["--ensemble", str(tmp_path / "bad"), str(a.path), str(odd.path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export.py: member 'member1'") and "preprocessing.spacing_xyz_mm" in err
    assert main(["--ensemble", str(tmp_path / "q"), str(a.path), str(b.path), "--members-per-quality", "best=3"]) == 1
    assert "give 1 to 2 or all" in capsys.readouterr().err


def _tiny_with_cases(folder: Path, seed: int, train, held) -> ModelPackage:
    from safetensors.torch import load_file

    pkg = make_tiny_package(folder / "tmp", seed=seed)
    data = {"train_cases": list(train), "validation_cases": list(held), "sources": ["pairs"]}
    info = ModelInfo(**{**pkg.info.__dict__, "training": {"experiment": "second", "epochs": 1, "data": data}})
    return ModelPackage.write(folder, info, load_file(str(pkg.weights_path)))


def test_crossval_ensemble_packs_the_fold_models_with_their_provenance(tmp_path, capsys):
    from training.crossval import main

    out = tmp_path / "cv"
    patients = ["p0", "p1", "p2", "p3"]
    folds = {0: ["p0", "p1"], 1: ["p2", "p3"]}
    for fold, held in folds.items():
        _tiny_with_cases(out / f"fold{fold}" / "second.model", fold, [p for p in patients if p not in held], held)
        (out / f"fold{fold}" / "second").mkdir()  # the run folder
    _tiny_with_cases(out / "final" / "second.model", 7, patients, [])
    (out / "second").mkdir()
    stats = {"mean": 0.8, "std": 0.1}
    summary = {
        "n_cases": 4,
        "cases": patients,
        "structures": {"prostate": {m: stats for m in ("dice", "hd95_mm", "asd_mm", "volume_diff_ml")}},
        "crossval": {"folds": 2, "recipe": ["first.yaml", "second.yaml"], "overrides": []},
    }
    (out / "second" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert main(["ensemble", str(out / "second"), "-o", str(tmp_path / "ens"), "--final"]) == 0
    assert "ensemble of 3 networks (fast 1, standard 1, best 3)" in capsys.readouterr().out
    ens = ModelPackage.load(tmp_path / "ens")
    assert [m.name for m in ens.members] == ["final", "fold0", "fold1"]
    fold1 = ens.info.members[2].provenance
    assert (fold1["fold"], fold1["folds"], fold1["validation_cases"]) == (1, 2, ["p2", "p3"])
    assert fold1["run"] == str(out / "fold1" / "second") and ens.info.members[0].provenance["final"] is True
    assert ens.info.training["data"]["train_cases"] == patients and "validation_cases" not in ens.info.training["data"]
    cv = ens.info.training["crossval"]
    assert cv["recipe"] == ["first.yaml", "second.yaml"] and cv["members_held_out"]["dice"] == 0.8
    # without --final: the folds alone, every member at best only
    assert main(["ensemble", str(out / "second"), "-o", str(tmp_path / "folds")]) == 0
    assert [m.name for m in ModelPackage.load(tmp_path / "folds").members] == ["fold0", "fold1"]
    capsys.readouterr()
    (out / "fold1" / "second.model" / MODEL_JSON).unlink()
    assert main(["ensemble", str(out / "second"), "-o", str(tmp_path / "broken")]) == 1
    assert "fold1" in capsys.readouterr().err


# -- the command line without torch --------------------------------------------------------------------


def test_segment_and_info_run_an_ensemble_with_torch_blocked(tmp_path, pair):
    from test_runtime import _run_without_torch

    ens = pair[2]
    image = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(), str(image))
    js = tmp_path / "vol.json"
    argv = ["segment", str(image), "-o", str(tmp_path / "seg.nrrd"), "--model", str(ens.path), "--volumes-json"]
    proc = _run_without_torch([*argv, str(js)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(js.read_text(encoding="utf-8"))
    assert record["members"] == 2 and record["backend"] in ("onnxruntime", "openvino")
    assert "(average of 2 networks)" in proc.stdout
    proc = _run_without_torch(["info", "--model", str(ens.path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ensemble of 2 networks (fast 2, standard 2, best 2)" in proc.stdout
    assert "1 network)" in proc.stdout  # the default model's line


def test_an_ensemble_zip_installs_and_the_models_command_shows_and_verifies_it(tmp_path, pair, monkeypatch, capsys):
    from UNetSegmentLib.cli import EXIT_MODEL, EXIT_OK, main

    monkeypatch.setenv("UNETSEGMENT_HOME", str(tmp_path / "home"))
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": []}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    zip_path = pair[2].to_zip(tmp_path / "ens.zip")
    assert main(["models", "import", str(zip_path)]) == EXIT_OK
    installed = tmp_path / "home" / "models" / "tiny-test-model-ensemble" / "0.0.1"
    assert (installed / "members" / "m1" / "model.onnx").is_file()
    capsys.readouterr()
    assert main(["models", "list"]) == EXIT_OK
    assert "[ensemble of 2 networks (fast 2, standard 2, best 2)]" in capsys.readouterr().out
    assert main(["models", "verify", "tiny-test-model-ensemble"]) == EXIT_OK
    assert "2 members checked" in capsys.readouterr().out
    _flip_byte(installed / "members" / "m1" / "weights.safetensors")
    assert main(["models", "verify", "tiny-test-model-ensemble"]) == EXIT_MODEL
    assert "member 'm1'" in capsys.readouterr().out


def test_out_of_memory_moves_every_member_to_its_fallback(pair):
    """A device out of memory: each member's runtime hands over to its CPU fallback, and the run is redone."""

    class Gpu:
        name, device, precision, threads, max_window_voxels = "torch", "cuda", "bfloat16", 1, 10**9

        def __init__(self, cpu):
            self.cpu = cpu

        def run(self, x, should_cancel=None):
            raise RuntimeError("CUDA out of memory")

        def is_out_of_memory(self, e):
            return "out of memory" in str(e)

        def fallback(self):
            return self.cpu

    ens = pair[2]
    cpu = [create_runtime(m, backend="onnxruntime") for m in ens.members]
    predictor = Predictor(ens, quality="fast", runtime=[Gpu(rt) for rt in cpu])
    result = predictor.predict(synthetic_image())
    assert predictor.runtimes == cpu and result.device == "cpu" and result.members == 2
    expected = Predictor(ens, quality="fast", runtime=cpu).predict(synthetic_image())
    assert np.array_equal(result.probabilities, expected.probabilities)
