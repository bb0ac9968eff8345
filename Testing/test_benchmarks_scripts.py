"""The benchmark scripts' parsing, measuring and reporting, on tiny settings (no timing is asserted)."""

from __future__ import annotations

import json
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
    assert "speed-up: TAPS time / ours" in md and ">= 5" in md and "<= 0.5" in md


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


def test_cpu_options_main_tiny(tmp_path, tiny_package):
    sitk.WriteImage(synthetic_image((48, 48, 12)), str(tmp_path / "image.nii.gz"))
    with pytest.raises(SystemExit):
        bench_cpu_options.parse_args(["--variants", "ncdhw-fp32,fast"])
    argv = [
        "--model",
        str(tiny_package.path),
        "--input",
        str(tmp_path / "image.nii.gz"),
        "--variants",
        "ncdhw-fp32,cl-fp32",
    ]
    argv += ["--threads", "1", "--repeats", "1", "--warmup", "0", "--out-dir", str(tmp_path)]
    assert bench_cpu_options.main(argv) == 0
    res = _only_result(tmp_path, "cpu_options")
    assert res["baseline"] == "ncdhw-fp32@1t"
    assert list(res["variants"]) == ["ncdhw-fp32@1t", "cl-fp32@1t"]
    base, cl = res["variants"]["ncdhw-fp32@1t"], res["variants"]["cl-fp32@1t"]
    assert base["memory_format"] == "contiguous" and cl["memory_format"] == "channels_last"
    assert base["speedup_inference"] == 1.0 and base["agreement"]["gland"] == 1.0
    assert cl["agreement"]["gland"] > 0.99  # fp32 in either layout: the same labels
    assert cl["inference_s"]["n"] == 1 and cl["total_s"]["median"] >= cl["inference_s"]["median"]
    assert cl["cpu_s"]["median"] > 0


# --- bench_network ---------------------------------------------------------------


def test_network_main_tiny(tmp_path, tiny_package):
    from UNetSegmentLib.network import conv_flops
    from UNetSegmentLib.preprocessing import preprocess_image
    from UNetSegmentLib.sliding_window import window_count

    image = synthetic_image((48, 48, 12))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    argv = [
        "--model",
        str(tiny_package.path),
        "--input",
        str(tmp_path / "image.nii.gz"),
        "--repeats",
        "1",
        "--warmup",
        "0",
    ]
    argv += ["--micro-channels", "4", "--micro-size", "4,16,16", "--precision", "float32", "--out-dir", str(tmp_path)]
    assert bench_network.main(argv) == 0
    res = _only_result(tmp_path, "network")
    patch = tiny_package.info.inference.patch_size_zyx
    shape, _ = preprocess_image(image, tiny_package.info.preprocessing)
    net = res["network"]
    # standard quality: the plain pass and the package's one test-time flip (x)
    assert net["passes"] == 2 and tiny_package.info.inference.test_time_flips == ("x",)
    assert net["windows"] == 2 * window_count(shape.shape, patch, tiny_package.info.inference.overlap)
    assert net["flops_per_forward"] == conv_flops(tiny_package.build_network(), patch)
    assert net["flops_per_image"] == net["flops_per_forward"] * net["windows"] and net["dtype"] == "float32"
    assert net["inference_s"]["n"] == 1 and net["predict_cpu_s"]["n"] == 1 and net["forward_gflops"] > 0
    assert set(res["microbenchmark"]) == {"NCDHW fp32", "channels-last fp32", "channels-last bf16"}
    assert all(m["flops"] == 2 * 4 * 4 * 27 * 4 * 16 * 16 and m["gflops"] > 0 for m in res["microbenchmark"].values())


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
