"""The benchmark scripts' parsing, measuring and reporting, on tiny settings (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SHARED_DATA, synthetic_image

from benchmarks import bench_cpu_options, bench_inference, bench_network, bench_training, common


def _only_result(folder: Path, name: str) -> dict:
    files = sorted(folder.glob(f"{name}-*.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text(encoding="utf-8"))


# --- common -----------------------------------------------------------------


def test_parsers_accept_lists_and_reject_bad_values():
    assert common.parse_int_list("1,2") == [1, 2]
    assert common.parse_counts("0,1") == [0, 1]
    assert common.parse_triple("20,128,128") == (20, 128, 128)
    for bad in ("0", "1,,2", "a", ""):
        with pytest.raises(ValueError):
            common.parse_int_list(bad)
    with pytest.raises(ValueError):
        common.parse_triple("1,2")
    with pytest.raises(ValueError):
        common.parse_counts("-1")


def test_ratio_summary_and_verdict():
    assert common.ratio(10.0, 2.0) == 5.0
    assert np.isnan(common.ratio(1.0, 0.0))
    assert np.isnan(common.ratio(float("nan"), 1.0))
    s = common.summarize([3.0, 1.0, 2.0, float("nan")])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert common.summarize([])["n"] == 0
    assert common.verdict(5.0, 5.0, higher_is_better=True) == "met"
    assert common.verdict(4.9, 5.0, higher_is_better=True) == "missed"
    assert common.verdict(0.6, 0.5, higher_is_better=False) == "missed"
    assert common.verdict(float("nan"), 0.5, higher_is_better=False) == "n/a"


def test_run_alternating_interleaves_after_warmup():
    calls = []
    runners = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b")}
    seen = []
    out = common.run_alternating(runners, repeats=2, warmup=1, on_result=lambda n, r, v: seen.append((n, r)))
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert out == {"a": [3, 5], "b": [4, 6]}
    assert seen[:2] == [("a", 0), ("b", 0)] and seen[-1] == ("b", 2)
    with pytest.raises(ValueError):
        common.run_alternating(runners, repeats=0)


def test_markdown_table_is_aligned_and_formats_numbers():
    text = common.markdown_table(["name", "value"], [["x", 0.86234], ["longer name", float("nan")], ["y", 1234.4]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1 and lines[1].startswith("|---")
    assert "| 0.862 " in text and "| -  " in text and "| 1,234 " in text


def test_dice_and_mask_on_a_different_grid():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert common.dice(a, b) == pytest.approx(0.5)
    assert common.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError):
        common.dice(a, b[:2])
    ref = sitk.Image(20, 20, 10, sitk.sitkUInt8)
    ref.SetSpacing((1.0, 1.0, 2.0))
    arr = np.zeros((10, 20, 20), np.uint8)
    arr[2:6, 5:15, 5:15] = 2
    ref_img = sitk.GetImageFromArray(arr)
    ref_img.CopyInformation(ref)
    # the same mask on a grid twice as fine in x and y
    fine = sitk.Resample(
        ref_img, [40, 40, 10], sitk.Transform(), sitk.sitkNearestNeighbor, (-0.25, -0.25, 0.0), (0.5, 0.5, 2.0)
    )
    on_ref = common.mask_on_grid(fine, ref_img)
    assert on_ref.shape == arr.shape
    assert common.dice(on_ref, arr > 0) > 0.95


def test_write_results_writes_json_and_markdown(tmp_path):
    j, m = common.write_results("demo", {"value": np.float32(1.5), "path": Path("/x")}, "# title", tmp_path, "tag")
    assert j.name.startswith("demo-tag-") and json.loads(j.read_text(encoding="utf-8")) == {"value": 1.5, "path": "/x"}
    assert m.read_text(encoding="utf-8") == "# title\n"


# --- bench_inference ----------------------------------------------------------


def test_inference_args_resolve_cases_and_commands(tmp_path):
    args = bench_inference.parse_args([])
    assert args.input == SHARED_DATA / "prostatex" / "ProstateX-0000" / "t2w.nii.gz"
    assert args.label.name == "wholegland_AI_Guerbet23.nii.gz" and args.repeats == 3 and args.warmup == 1
    args = bench_inference.parse_args(["--case", "promise12:Case25", "--repeats", "1"])
    assert args.input.name == "Case25_image.nii.gz" and args.label.name == "Case25_label.nii.gz"
    args = bench_inference.parse_args(["--input", str(tmp_path / "a b.nii.gz")])
    assert args.label is None
    with pytest.raises(SystemExit):
        bench_inference.parse_args(["--case", "nope"])
    with pytest.raises(SystemExit):
        bench_inference.parse_args(["--repeats", "0"])
    cmd = bench_inference.build_command(
        bench_inference.ours_template(Path("/m")), Path("/in put.nii"), Path("/o.nii.gz"), Path("/m"), "cpu"
    )
    assert cmd == [
        sys.executable,
        "-m",
        "UNetSegmentLib",
        "segment",
        "/in put.nii",
        "-o",
        "/o.nii.gz",
        "--model",
        "/m",
        "--device",
        "cpu",
    ]
    taps = bench_inference.build_command(bench_inference.TAPS_CMD, Path("/i.nii.gz"), Path("/t.nii.gz"))
    assert taps == ["taps", "segment", "/i.nii.gz", "/t.nii.gz", "--exact"]


def test_measure_command_reports_peak_memory_of_the_process_tree(tmp_path):
    """A child that starts a grandchild holding ~300 MiB: the peak is the grandchild's, not the parent's."""
    script = tmp_path / "tool.py"
    script.write_text(
        textwrap.dedent(
            """
            import subprocess, sys
            if sys.argv[1] == "child":
                block = bytearray(300 * 1024 * 1024)
                block[::4096] = b"x" * len(block[::4096])
                sys.exit(0)
            subprocess.run([sys.executable, __file__, "child"], check=True)
            open(sys.argv[2], "w").write("done")
            sys.exit(int(sys.argv[3]))
            """
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out.txt"
    r = bench_inference.measure_command([sys.executable, str(script), "parent", str(out), "0"], out, tmp_path / "log")
    assert r.returncode == 0 and out.read_text(encoding="utf-8") == "done"
    assert r.peak_rss_mib > 300 and r.cpu_s > 0
    assert 0 < r.to_output_s <= r.to_exit_s
    r = bench_inference.measure_command([sys.executable, str(script), "parent", str(out), "3"], out, tmp_path / "log")
    assert r.returncode == 3
    r = bench_inference.measure_command(
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(2)"], out, tmp_path / "log"
    )
    assert r.returncode == 2 and np.isnan(r.to_output_s) and "boom" in r.log


def _fake_tool(tmp_path: Path, name: str, label: Path, erode: int) -> str:
    """A stand-in segmenter that writes the reference label, eroded ``erode`` voxels in-plane."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            import SimpleITK as sitk
            lab = sitk.ReadImage({str(label)!r})
            if {erode}:
                lab = sitk.BinaryErode(lab, [{erode}, {erode}, 0])
            sitk.WriteImage(lab, sys.argv[2])
            """
        ),
        encoding="utf-8",
    )
    return f"{{python}} {script} {{input}} {{output}}"


def test_inference_main_side_by_side_with_stand_in_tools(tmp_path):
    image = synthetic_image((48, 48, 12))
    label = sitk.Cast(image > 400, sitk.sitkUInt8)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(label, [2, 2, 0])) > 0
    expected = common.dice(eroded, sitk.GetArrayFromImage(label) > 0)
    assert expected < 0.95
    argv = [
        "--input", str(tmp_path / "image.nii.gz"),
        "--label", str(tmp_path / "label.nii.gz"),
        "--repeats", "2", "--warmup", "0",
        "--ours-cmd", _fake_tool(tmp_path, "ours", tmp_path / "label.nii.gz", 0),
        "--peer-cmd", _fake_tool(tmp_path, "peer", tmp_path / "label.nii.gz", 2),
        "--out-dir", str(tmp_path / "results"),
        "--keep", str(tmp_path / "work"),
    ]  # fmt: skip
    assert bench_inference.main(argv) == 0
    res = _only_result(tmp_path / "results", "inference")
    assert [len(res["runs"][t]) for t in ("ours", "taps")] == [2, 2]
    assert all(r["returncode"] == 0 and r["peak_rss_mib"] > 10 for t in ("ours", "taps") for r in res["runs"][t])
    acc = res["accuracy"]
    assert acc["dice_ours_vs_label"] == 1.0
    assert acc["dice_taps_vs_label"] == pytest.approx(expected)
    assert acc["dice_ours_vs_taps"] == pytest.approx(expected)
    assert acc["volume_ml_ours"] == pytest.approx(acc["volume_ml_label"])
    s = res["summary"]
    assert res["ratios"]["speedup_median"] == pytest.approx(
        s["taps"]["to_output_s"]["median"] / s["ours"]["to_output_s"]["median"]
    )
    assert res["ratios"]["memory_ratio_median"] == pytest.approx(
        s["ours"]["peak_rss_mib"]["median"] / s["taps"]["peak_rss_mib"]["median"]
    )
    md = (tmp_path / "results").glob("inference-*.md").__next__().read_text(encoding="utf-8")
    assert "speed-up: TAPS time / ours" in md
    assert f">= {bench_inference.SPEEDUP_TARGET:g}" in md and f"<= {bench_inference.MEMORY_TARGET:g}" in md


def test_inference_main_reports_a_failing_tool(tmp_path, capsys):
    image = synthetic_image((16, 16, 4))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    argv = ["--input", str(tmp_path / "image.nii.gz"), "--repeats", "1", "--warmup", "0", "--no-peer"]
    argv += ["--ours-cmd", "{python} -c 'import sys; sys.exit(\"no model\")'", "--out-dir", str(tmp_path / "r")]
    argv += ["--keep", str(tmp_path / "work")]
    assert bench_inference.main(argv) == 1
    assert "ours failed (exit 1): no model" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert "no model" in (tmp_path / "work" / "ours-1.log").read_text(encoding="utf-8")


# --- Predictor memory_format (added for bench_cpu_options) ---------------------


def test_predictor_memory_format(tiny_package):
    from UNetSegmentLib.inference import Predictor

    def first_conv_weight(p):
        modules = p.runtime.network.modules()
        return next(m for m in modules if isinstance(m, torch.nn.Conv3d) and m.weight.shape[1] > 1).weight

    auto = Predictor(tiny_package, device="cpu", backend="torch")
    assert first_conv_weight(auto).is_contiguous(memory_format=torch.channels_last_3d)
    assert not first_conv_weight(auto).is_contiguous()
    ncdhw = Predictor(tiny_package, device="cpu", memory_format="contiguous", backend="torch")
    assert first_conv_weight(ncdhw).is_contiguous()
    with pytest.raises(ValueError):
        Predictor(tiny_package, device="cpu", memory_format="nhwc")


# --- bench_cpu_options ---------------------------------------------------------


def test_label_agreement_per_label():
    base = np.zeros((2, 4, 4), np.uint8)
    base[:, :2] = 1
    base[:, 2:] = 2
    other = base.copy()
    other[:, 2:] = 1  # label 2 lost to label 1: gland unchanged
    a = bench_cpu_options.label_agreement(other, base, [1, 2])
    assert a["gland"] == 1.0 and a["label_2"] == 0.0 and a["min_label"] == 0.0
    assert a["label_1"] == pytest.approx(2 * 16 / (32 + 16))


def test_cpu_options_skip_reasons(tiny_package, monkeypatch):
    from UNetSegmentLib import runtime

    reason = bench_cpu_options.skip_reason
    assert reason("ort-fp32", tiny_package, native_bf16=False) is None
    assert "native bf16" in reason("ov-bf16", tiny_package, native_bf16=False)
    assert "native bf16" in reason("torch-cl-bf16", tiny_package, native_bf16=False)
    assert reason("torch-cl-bf16", tiny_package, native_bf16=True) is None
    monkeypatch.setattr(runtime, "openvino_installed", lambda: False)
    assert "OpenVINO is not installed" in reason("ov-fp32", tiny_package, native_bf16=True)
    assert reason("torch-ncdhw-fp32", tiny_package, native_bf16=True) is None
    assert set(bench_cpu_options.VARIANTS) == {
        "ort-fp32", "ov-fp32", "ov-bf16", "torch-ncdhw-fp32", "torch-cl-fp32", "torch-cl-bf16"
    }  # fmt: skip
    with pytest.raises(SystemExit):
        bench_cpu_options.parse_args(["--variants", "ort-fp32,fast"])
    assert bench_cpu_options.parse_args(["--threads", "1"]).threads == [1]
    assert bench_cpu_options.parse_args([]).threads[0] == 1


def test_cpu_options_main_tiny(tmp_path, tiny_package, monkeypatch):
    from UNetSegmentLib import hardware

    # a CPU without native bf16 (AVX2), whatever this one has: the bf16 variant is skipped with a note
    avx2 = hardware.CpuInfo(model="Test CPU", isa="AVX2", native_bf16=False, cores=2)
    monkeypatch.setattr(hardware, "cpu_info", lambda: avx2)
    sitk.WriteImage(synthetic_image((48, 48, 12)), str(tmp_path / "image.nii.gz"))
    argv = ["--model", str(tiny_package.path), "--input", str(tmp_path / "image.nii.gz")]
    argv += ["--variants", "ort-fp32,torch-cl-fp32,ov-bf16,ov-fp32"]
    argv += ["--threads", "1", "--repeats", "1", "--warmup", "0", "--out-dir", str(tmp_path)]
    assert bench_cpu_options.main(argv) == 0
    res = _only_result(tmp_path, "cpu_options")
    assert res["baseline"] == "ort-fp32@1t"
    assert list(res["variants"]) == ["ort-fp32@1t", "torch-cl-fp32@1t", "ov-fp32@1t"]
    assert list(res["skipped"]) == ["ov-bf16"] and "native bf16" in res["skipped"]["ov-bf16"]
    md = next(tmp_path.glob("cpu_options-*.md")).read_text(encoding="utf-8")
    assert "- skipped ov-bf16: this CPU has no native bf16" in md
    rows = res["variants"]
    assert [r["backend"] for r in rows.values()] == ["onnxruntime", "torch", "openvino"]
    assert all(r["threads"] == 1 and r["runtime_threads"] == 1 for r in rows.values())
    assert rows["torch-cl-fp32@1t"]["memory_format"] == "channels_last"
    assert rows["ov-fp32@1t"]["precision"] == "float32"
    base, cl = rows["ort-fp32@1t"], rows["torch-cl-fp32@1t"]
    assert base["speedup_inference"] == 1.0 and base["agreement"]["gland"] == 1.0
    # float32 in each runtime: the same network, the same labels
    assert cl["agreement"]["gland"] > 0.99 and rows["ov-fp32@1t"]["agreement"]["gland"] > 0.99
    assert cl["inference_s"]["n"] == 1 and cl["total_s"]["median"] >= cl["inference_s"]["median"]
    assert cl["cpu_s"]["median"] > 0
    env = res["environment"]
    assert (env["cpu"], env["cpu_isa"], env["cpu_native_bf16"]) == ("Test CPU", "AVX2", False)
    assert env["backend"] == "onnxruntime" and env["threads"] == [1]


def test_cpu_options_nothing_runnable(tmp_path, tiny_package, monkeypatch, capsys):
    from UNetSegmentLib import runtime

    sitk.WriteImage(synthetic_image((16, 16, 4)), str(tmp_path / "image.nii.gz"))
    monkeypatch.setattr(runtime, "openvino_installed", lambda: False)
    argv = ["--model", str(tiny_package.path), "--input", str(tmp_path / "image.nii.gz"), "--variants", "ov-fp32"]
    assert bench_cpu_options.main(argv + ["--out-dir", str(tmp_path / "r")]) == 1
    assert "no variant can run here (ov-fp32: OpenVINO is not installed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --- bench_network ---------------------------------------------------------------


def test_environment_records_cpu_runtimes_and_threads_without_importing_torch():
    from UNetSegmentLib.hardware import cpu_summary

    env = common.environment(backend="openvino", threads=3)
    assert env["cpu"] == cpu_summary()["model"] and env["cpu_isa"] == cpu_summary()["isa"]
    assert env["backend"] == "openvino" and env["threads"] == 3
    import onnxruntime

    assert env["onnxruntime"] == onnxruntime.__version__ and env["torch"] == torch.__version__
    assert set(common.runtime_versions()) == {"onnxruntime", "openvino", "torch"}
    code = (
        "import sys; from benchmarks import common; env = common.environment(); "
        "assert 'torch' not in sys.modules, 'torch imported'; assert env['torch'] and env['threads'] >= 1"
    )
    repo = Path(common.__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_conv_onnx_model_is_the_convolution(tiny_package):
    """The microbenchmark's one-node ONNX model computes a 3x3x3 same-padded convolution."""
    import onnx
    import onnxruntime as ort

    data = bench_network.conv_onnx_model(3, seed=5)
    weight = torch.from_numpy(np.array(onnx.numpy_helper.to_array(onnx.load_from_string(data).graph.initializer[0])))
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 6, 5)).astype(np.float32)
    y = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = torch.nn.functional.conv3d(torch.from_numpy(x), weight, padding=1).numpy()
    assert y.shape == (1, 3, 4, 6, 5) and np.abs(y - expected).max() < 1e-4 and np.abs(expected).max() > 0.1


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_network_main_tiny(tmp_path, tiny_package, backend):
    from UNetSegmentLib.hardware import cpu_info
    from UNetSegmentLib.network import conv_flops

    image = synthetic_image((48, 48, 12))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    argv = ["--model", str(tiny_package.path), "--input", str(tmp_path / "image.nii.gz"), "--backend", backend]
    argv += ["--repeats", "1", "--warmup", "0", "--threads", "1", "--precision", "float32"]
    argv += ["--micro-channels", "4", "--micro-size", "4,16,16", "--out-dir", str(tmp_path)]
    assert bench_network.main(argv) == 0
    res = _only_result(tmp_path, "network")
    patch = tiny_package.info.inference.patch_size_zyx
    net, micro, floor = res["network"], res["microbenchmark"], res["floor"]
    assert net["backend"] == backend and net["threads"] == 1 and net["precision"] == "float32"
    # standard quality: the plain pass and the package's one test-time flip (x)
    assert net["passes"] == 2 and tiny_package.info.inference.test_time_flips == ("x",)
    assert net["flops_per_patch"] == conv_flops(tiny_package.build_network(), patch)
    assert net["flops_per_voxel"] * np.prod(patch) == pytest.approx(net["flops_per_patch"])
    assert sum(lv["flops"] for lv in net["flops_by_level"]) == net["flops_per_patch"]
    assert net["flops_by_level"][0]["size_zyx"] == list(patch)
    # the work is what the passes computed: at least the grid once, windows padded to the patch
    assert net["computed_voxels"] >= min(net["grid_voxels"], int(np.prod(patch))) > 0
    assert net["floor_work_flops"] == pytest.approx(net["flops_per_voxel"] * net["computed_voxels"])
    assert micro["engine"].startswith(backend) and micro["threads"] == 1
    assert micro["flops"] == 2 * 4 * 4 * 27 * 4 * 16 * 16 and micro["gflops"] > 0
    assert floor["floor_s"] == pytest.approx(net["floor_work_flops"] / (micro["gflops"] * 1e9))
    assert floor["ratio"] == pytest.approx(net["inference_s"]["min"] / floor["floor_s"]) and floor["ratio"] > 0
    assert floor["verdict"] == ("met" if floor["ratio"] <= 1.5 else "missed") and floor["target"] == 1.5
    assert net["inference_s"]["n"] == 1 and net["forward_gflops"] > 0
    env = res["environment"]
    assert env["cpu_isa"] == cpu_info().isa and env["backend"] == backend and env["threads"] == 1
    md = next(tmp_path.glob("network-*.md")).read_text(encoding="utf-8")
    assert "network time / floor (target <= 1.5)" in md and f"{floor['ratio']:.2f} {floor['verdict']}" in md


def test_network_micro_defaults_to_the_full_resolution_layer(tiny_package):
    assert bench_network.full_resolution_width(tiny_package) == 8  # base_channels 4
    args = bench_network.parse_args(["--model", str(tiny_package.path)])
    assert args.micro_channels is None and args.micro_size is None and args.backend == "auto"
    with pytest.raises(SystemExit):
        bench_network.parse_args(["--backend", "tensorrt"])


# --- bench_training ----------------------------------------------------------------

TINY_TRAINING = [
    "model.base_channels=2",
    "model.patch_size_zyx=[4,16,16]",
    "model.pool_sizes=[[1,2,2]]",
    "train.batch_size=2",
]


def test_training_args():
    args = bench_training.parse_args([])
    assert (
        args.config == bench_training.DEFAULT_CONFIG
        and args.workers == [0, 1]
        and args.variants == list(bench_training.COMPUTE_VARIANTS)
    )
    assert bench_training.parse_args(["--parts", "compute", "--workers", "1,0"]).workers == [1, 0]
    for bad in (["--parts", "gpu"], ["--workers", "-1"], ["--variants", "fp64"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            bench_training.parse_args(bad)


def test_training_main_tiny(tmp_path):
    argv = [
        *TINY_TRAINING,
        "--steps",
        "1",
        "--warmup",
        "0",
        "--data-batches",
        "1",
        "--data-repeats",
        "1",
        "--workers",
        "0,1",
    ]
    argv += ["--num-volumes", "2", "--out-dir", str(tmp_path)]
    assert bench_training.main(argv) == 0
    res = _only_result(tmp_path, "training")
    assert res["config"]["model"]["patch_size_zyx"] == [4, 16, 16]
    parts = res["parts"]
    assert list(parts["compute"]["variants"]) == ["ncdhw-fp32", "cl-fp32", "cl-bf16"]
    assert list(parts["data"]["variants"]) == ["num_workers=0", "num_workers=1"]
    for part in parts.values():
        assert part["variants"][part["baseline"]]["ratio"] == 1.0
        assert all(v["patches_per_s"] > 0 and v["cpu_s"]["n"] == 1 for v in part["variants"].values())
    losses = [r[0]["loss"] for r in parts["compute"]["runs"].values()]
    assert np.isfinite(losses).all() and max(losses) - min(losses) < 0.05  # same weights, same batch
    assert bench_training.main(["model.unknown=1", "--out-dir", str(tmp_path)]) == 1


def test_synthetic_volumes_hold_a_gland():
    vols = bench_training.synthetic_volumes(2, (4, 16, 16))
    assert len(vols) == 2 and vols[0].image.shape == (14, 25, 25)
    assert 0 < vols[0].target.mean() < 0.5 and vols[0].image[vols[0].target > 0].mean() > 1.0
