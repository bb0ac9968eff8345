"""Runtimes: ONNX export and checksum, backend choice, precision rules, agreement between backends,
and a CPU segmentation that never imports torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_tiny_package, synthetic_image

from UNetSegmentLib import hardware, runtime
from UNetSegmentLib.inference import Predictor
from UNetSegmentLib.model_package import ModelPackage, ModelPackageError
from UNetSegmentLib.runtime import RuntimeUnavailable, check_precision, choose_backend, create_runtime

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"
DATA = REPO.parent / "shared" / "data"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# -- the ONNX network in a package --------------------------------------------------------------


def test_packages_carry_an_onnx_network_with_its_checksum(tiny_package):
    assert tiny_package.has_onnx
    meta = json.loads((tiny_package.path / "model.json").read_text(encoding="utf-8"))
    assert meta["onnx"]["file"] == "model.onnx" and meta["onnx"]["opset"] == 17
    assert meta["onnx"]["sha256"] == hashlib.sha256((tiny_package.path / "model.onnx").read_bytes()).hexdigest()


def test_the_bundled_default_model_has_onnx_from_its_own_weights():
    pkg = ModelPackage.load(BUNDLED)
    assert pkg.has_onnx
    from UNetSegmentLib.onnx_export import onnx_bytes

    # byte-stable: exporting the package's weights again gives exactly the shipped file
    assert hashlib.sha256(onnx_bytes(pkg.build_network())).hexdigest() == pkg.info.onnx_sha256


def test_the_export_is_byte_stable(tmp_path):
    a = make_tiny_package(tmp_path / "a", seed=3)
    b = make_tiny_package(tmp_path / "b", seed=3)
    c = make_tiny_package(tmp_path / "c", seed=4)
    assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    assert a.info.onnx_sha256 == b.info.onnx_sha256 != c.info.onnx_sha256


@pytest.mark.parametrize("shape", [(8, 32, 32), (12, 48, 40), (20, 64, 96)])
def test_onnx_runtime_gives_the_torch_networks_logits(tiny_package, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 1, *shape)).astype(np.float32)
    ort = create_runtime(tiny_package, backend="onnxruntime", device="cpu")
    with torch.no_grad():
        expected = tiny_package.build_network()(torch.from_numpy(x)).numpy()
    got = ort.run(x)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_a_tampered_onnx_network_is_refused(tmp_path):
    pkg = make_tiny_package(tmp_path / "pkg")
    data = bytearray((pkg.path / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (pkg.path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="ONNX network .* fails its checksum"):
        ModelPackage.load(pkg.path)
    loaded = ModelPackage.load(pkg.path, verify=False)
    with pytest.raises(ModelPackageError, match="fails its checksum"):
        create_runtime(loaded, backend="onnxruntime", device="cpu")


def test_a_listed_but_missing_onnx_network_is_refused(tmp_path):
    pkg = make_tiny_package(tmp_path / "pkg")
    (pkg.path / "model.onnx").unlink()
    with pytest.raises(ModelPackageError, match="lists model.onnx"):
        ModelPackage.load(pkg.path)


def test_packages_without_onnx_still_run_on_torch(tmp_path):
    pytest.importorskip("torch")
    folder = tmp_path / "old"
    pkg = make_tiny_package(folder)
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    del meta["onnx"]  # a package written before ONNX existed
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    (folder / "model.onnx").unlink()
    old = ModelPackage.load(folder)
    assert not old.has_onnx
    predictor = Predictor(old, device="cpu")
    assert predictor.backend == "torch"
    with pytest.raises(RuntimeUnavailable, match="no model.onnx"):
        Predictor(old, device="cpu", backend="onnxruntime")
    assert predictor.predict(synthetic_image()).labelmap.GetSize() == (64, 64, 16)
    assert pkg.info.weights_sha256 == old.info.weights_sha256


# -- which backend -------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """Pretend which runtimes are installed, whether an NVIDIA driver is there, and the CPU."""

    def set_(torch=True, ort=True, ov=False, nvidia=False, isa="AVX2", bf16=False):
        monkeypatch.setattr(runtime, "torch_installed", lambda: torch)
        monkeypatch.setattr(runtime, "onnxruntime_installed", lambda: ort)
        monkeypatch.setattr(runtime, "openvino_installed", lambda: ov)
        monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: nvidia)
        info = hardware.CpuInfo("Test CPU 9000", isa, bf16, 2)
        monkeypatch.setattr(runtime, "cpu_info", lambda: info)

    return set_


def test_auto_is_onnx_runtime_on_a_cpu_and_torch_on_a_gpu(machine):
    machine()
    assert choose_backend("auto", "auto", has_onnx=True) == "onnxruntime"
    assert choose_backend("auto", "cpu", has_onnx=True) == "onnxruntime"
    assert choose_backend("auto", "cuda", has_onnx=True) == "torch"
    assert choose_backend("auto", "auto", has_onnx=False) == "torch"
    machine(nvidia=True)
    assert choose_backend("auto", "auto", has_onnx=True) == "torch"
    assert choose_backend("auto", "cpu", has_onnx=True) == "onnxruntime"
    machine(torch=False, nvidia=True)
    assert choose_backend("auto", "auto", has_onnx=True) == "onnxruntime"  # no torch: the driver alone is not enough


def test_auto_takes_openvino_only_where_the_cpu_has_native_bf16(machine):
    machine(ov=True, isa="AVX2", bf16=False)
    assert choose_backend("auto", "auto", has_onnx=True) == "onnxruntime"
    machine(ov=True, isa="AVX-512 BF16", bf16=True)
    assert choose_backend("auto", "auto", has_onnx=True) == "openvino"
    machine(ov=True, ort=False)
    assert choose_backend("auto", "auto", has_onnx=True) == "openvino"


@pytest.mark.parametrize(
    ("kwargs", "backend", "device", "has_onnx", "message"),
    [
        ({"ort": False}, "onnxruntime", "cpu", True, "ONNX Runtime is not installed"),
        ({}, "onnxruntime", "cuda", True, "runs on the CPU only"),
        ({}, "onnxruntime", "cpu", False, "no model.onnx"),
        ({"torch": False}, "torch", "cpu", True, "PyTorch is not installed"),
        ({"torch": False}, "auto", "cuda", True, "needs PyTorch"),
        ({"torch": False, "ort": False}, "auto", "cpu", True, "no runtime installed"),
        ({"torch": False}, "auto", "cpu", False, "no model.onnx and PyTorch is not installed"),
        ({"ov": False}, "openvino", "cpu", True, "OpenVINO is not installed"),
        ({}, "tensorflow", "cpu", True, "backend must be one of"),
    ],
)
def test_impossible_backends_are_explained(machine, kwargs, backend, device, has_onnx, message):
    machine(**kwargs)
    with pytest.raises(RuntimeUnavailable, match=message):
        choose_backend(backend, device, has_onnx)


def test_bf16_is_refused_on_a_cpu_that_would_emulate_it(machine):
    machine(isa="AVX2", bf16=False)
    with pytest.raises(RuntimeUnavailable, match=r"Test CPU 9000, AVX2.*--precision float32"):
        check_precision("bfloat16", "cpu")
    check_precision("float32", "cpu")
    check_precision("bfloat16", "cuda")
    machine(isa="AVX-512 BF16", bf16=True)
    check_precision("bfloat16", "cpu")


def test_the_cli_refuses_bf16_on_such_a_cpu_before_any_work(machine, tmp_path, capsys):
    from UNetSegmentLib.cli import EXIT_USAGE, main

    machine(isa="AVX2", bf16=False)
    image = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(), str(image))
    out = tmp_path / "out.nrrd"
    code = main(["segment", str(image), "-o", str(out), "--precision", "bfloat16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USAGE
    assert len(err) == 1 and "native bfloat16" in err[0] and "AVX2" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_cpu_info_names_an_instruction_set():
    info = hardware.cpu_info()
    assert info.isa in {"AVX-512 + AMX", "AVX-512 BF16", "AVX-512", "AVX2", "AVX", "SSE"} or info.isa.startswith("ARM")
    assert info.cores >= 1 and info.model
    assert hardware.cpu_summary()["isa"] == info.isa


# -- a CPU run without torch ----------------------------------------------------------------------

#: Runs the CLI in a process where importing torch or safetensors fails (and is recorded). With
#: ``ABSENT=1`` they also look uninstalled (``importlib.util.find_spec`` finds nothing).
BLOCK_TORCH = """
import importlib.abc, importlib.machinery, importlib.util, os, sys
BLOCKED = ("torch", "safetensors")
attempts = []
class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        attempts.append(module.__name__)
        raise ImportError("torch is blocked in this test: " + module.__name__)
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Loader())
        return None
sys.meta_path.insert(0, _Block())
if os.environ.get("ABSENT") == "1":
    _real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else _real(name, package)
from UNetSegmentLib.cli import main
code = main(sys.argv[1:])
if attempts:
    sys.stderr.write("IMPORTED " + ", ".join(attempts) + chr(10))
    sys.exit(99)
sys.exit(code)
"""


def _run_without_torch(args, tmp_path, env_extra=None):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "UNETSEGMENT_HOME": str(tmp_path / "home"),
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )


def test_segment_and_demo_run_on_onnx_runtime_with_torch_blocked(tmp_path):
    """The CPU path imports neither torch nor safetensors (the blocker fails the run with exit 99 if it tries)."""
    image = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(size_xyz=(96, 96, 16), spacing=(1.5, 1.5, 3.0)), str(image))
    out = tmp_path / "seg.nrrd"
    js = tmp_path / "vol.json"
    proc = _run_without_torch(["segment", str(image), "-o", str(out), "--volumes-json", str(js)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # ONNX Runtime, or OpenVINO where it is installed and the CPU has native bf16 (see runtime.choose_backend)
    assert out.exists() and json.loads(js.read_text())["backend"] in ("onnxruntime", "openvino")
    proc = _run_without_torch(["demo", "-o", str(tmp_path / "demo")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Dice against the sample's known gland" in proc.stdout
    proc = _run_without_torch(["info"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "backend     onnxruntime" in proc.stdout or "backend     openvino" in proc.stdout
    assert "cpu " in proc.stdout and "inference threads" in proc.stdout


def test_asking_for_torch_without_it_is_a_clear_error(tmp_path):
    image = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(), str(image))
    proc = _run_without_torch(
        ["segment", str(image), "-o", str(tmp_path / "o.nrrd"), "--backend", "torch"], tmp_path, {"ABSENT": "1"}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("unetsegment: error:") and "PyTorch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_base_install_brings_no_torch():
    """What pip installs without extras (the installed metadata, any Python version): no torch."""
    import importlib.metadata

    requires = importlib.metadata.requires("unetsegment") or []
    base = " ".join(r for r in requires if "extra ==" not in r).lower()
    assert "torch" not in base and "safetensors" not in base and "onnxruntime" in base
    assert any(r.startswith("torch") and 'extra == "torch"' in r for r in requires)


# -- the backends agree on real scans --------------------------------------------------------------


def _real_cases():
    cases = []
    if DATA.is_dir():
        cases += sorted(p for p in (DATA / "promise12").glob("Case*_image.nii.gz"))
        cases += [DATA / "prostatex" / "ProstateX-0000" / "t2w.nii.gz"]
        cases += sorted(p for p in (DATA / "nci_isbi_test_dicom").iterdir() if p.is_dir())
    return cases


@pytest.mark.shared_data
def test_onnx_runtime_and_torch_agree_on_every_real_case(shared_data):
    """Dice >= 0.999 between the two backends (float32) on every real scan in ../shared/data."""
    pytest.importorskip("torch")
    from UNetSegmentLib.validation import read_input

    pkg = ModelPackage.load(BUNDLED)
    ort = Predictor(pkg, device="cpu", backend="onnxruntime")
    pt = Predictor(pkg, device="cpu", backend="torch", precision="float32")
    cases = _real_cases()
    assert len(cases) >= 39
    worst = []
    for path in cases:
        image, _ = read_input(path, None)
        a = sitk.GetArrayFromImage(ort.predict(image).labelmap) > 0
        b = sitk.GetArrayFromImage(pt.predict(image).labelmap) > 0
        worst.append((_dice(a, b), path.name))
        assert a.any(), path
    low = [w for w in worst if w[0] < 0.999]
    assert not low, f"backends disagree: {low}"


# -- cancelling a real run -------------------------------------------------------------------------


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_onnx_inference_ends_the_process_within_two_seconds(tmp_path, signame):
    """Ctrl-C / SIGTERM while ONNX Runtime computes: exit 130 soon after, no output, one plain line."""
    import signal
    import time

    from UNetSegmentLib.progress import parse_progress_line

    # a large field of view, so the whole-grid pass takes seconds
    image = synthetic_image(size_xyz=(300, 300, 48), spacing=(1.0, 1.0, 3.0), seed=5)
    src = tmp_path / "big.nrrd"
    sitk.WriteImage(image, str(src))
    out = tmp_path / "out" / "seg.nrrd"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    env["UNETSEGMENT_HOME"] = str(tmp_path / "home")
    argv = [sys.executable, "-m", "UNetSegmentLib", "segment", str(src), "-o", str(out)]
    argv += ["--backend", "onnxruntime", "--quality", "best", "--progress", "machine"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:
            event = parse_progress_line(line)
            if event and event.get("stage") == "inference":
                break
        time.sleep(0.3)  # inside a network call
        sent = time.perf_counter()
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=30)
        elapsed = time.perf_counter() - sent
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert "Traceback" not in rest and "cancelled" in rest
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
