"""training/benchmark.py and training/published.py: the report, its figures and the published table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from training.benchmark import EvalSet, load_eval, main, match_published, write_report
from training.published import PUBLISHED, dice_to_iou, iou_to_dice

PNG = b"\x89PNG\r\n\x1a\n"


def test_iou_dice_conversion():
    assert iou_to_dice(0.863) == pytest.approx(0.9264, abs=1e-4)
    assert iou_to_dice(1.0) == 1.0 and iou_to_dice(0.0) == 0.0
    for d in (0.1, 0.5, 0.879):
        assert iou_to_dice(dice_to_iou(d)) == pytest.approx(d)


def test_every_published_result_has_a_source_and_a_comparability_note():
    assert {p.metric for p in PUBLISHED} <= {"dice", "iou"}
    for p in PUBLISHED:
        assert p.source and p.comparability and 0 < p.value < 1
    values = {(p.method.split(" (")[0], p.structure): p.value for p in PUBLISHED}
    assert values[("MONAI prostate_mri_anatomy", "transition_zone")] == 0.877
    assert values[("V-Net", "prostate")] == 0.869


def _row(case_id, dice, source="external", image="img.nii.gz", label="lab.nii.gz", structure="prostate"):
    return {"case_id": case_id, "structure": structure, "dice": dice, "source": source, "image": image, "label": label}


def test_published_results_match_only_the_same_case_or_dataset():
    taps_guerbet = next(p for p in PUBLISHED if p.same_case and "Guerbet23" in p.same_case[1])
    vnet = next(p for p in PUBLISHED if p.method.startswith("V-Net"))
    px = _row(
        "px", 0.8, image="/d/ProstateX-0000/t2w.nii.gz", label="/d/ProstateX-0000/labels/wholegland_AI_Guerbet23.nii.gz"
    )
    promise = [_row("Case01", 0.9, source="promise12"), _row("Case02", 0.7, source="promise12")]
    evals = [EvalSet("a", Path("a"), "", [px]), EvalSet("b", Path("b"), "", promise)]
    assert match_published(taps_guerbet, evals) == ("same case and reference", pytest.approx(0.8), 1)
    assert match_published(vnet, evals) == ("same dataset, other cases", pytest.approx(0.8), 2)
    bosma = next(p for p in PUBLISHED if p.same_case and "Bosma22b" in p.same_case[1])
    assert match_published(bosma, evals) == ("different data", None, 0)
    # a zonal model's "gland" row answers a whole-gland published result
    gland = [_row("px", 0.75, structure="gland", image=px["image"], label=px["label"])]
    assert match_published(taps_guerbet, [EvalSet("z", Path("z"), "", gland)])[1] == pytest.approx(0.75)
    # the same patients evaluated again (another --quality) count once, from the first evaluation
    again = EvalSet(
        "c", Path("c"), "", [_row("Case01", 0.5, source="promise12"), _row("Case03", 0.6, source="promise12")]
    )
    assert match_published(vnet, [*evals, again]) == ("same dataset, other cases", pytest.approx(2.2 / 3), 3)


def _pairs(folder: Path, n: int = 3) -> Path:
    from conftest import synthetic_image

    folder.mkdir()
    for i in range(n):
        img = synthetic_image(size_xyz=(48, 48, 12), spacing=(1.5, 1.5, 3.0), seed=i)
        sitk.WriteImage(img, str(folder / f"case{i}_image.nii.gz"))
        sitk.WriteImage(
            sitk.Cast(sitk.BinaryThreshold(img, 400, 10000, 1, 0), sitk.sitkUInt8),
            str(folder / f"case{i}_label.nii.gz"),
        )
    return folder


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, tiny_package):
    from training.evaluate import cases_from_data, evaluate

    root = tmp_path_factory.mktemp("bench")
    cases = cases_from_data(_pairs(root / "pairs"), label_map={1: "prostate"})
    evaluate(tiny_package, cases, root / "eval-synthetic", device="cpu", description="three synthetic pairs")
    return root / "eval-synthetic"


def test_report_has_figures_results_published_table_and_model_facts(tmp_path, eval_dir, tiny_package):
    from UNetSegmentLib.network import count_parameters

    run = tmp_path / "run"
    run.mkdir()
    rows = (
        ["epoch,key,value"]
        + [f"{e},train_loss,{1.0 / e:.4f}" for e in range(1, 6)]
        + [f"{e},val_dice_prostate,{0.1 * e:.2f}" for e in (2, 4)]
    )
    (run / "log.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    evals = [load_eval(eval_dir)]
    report = write_report(evals, tiny_package, tmp_path / "report", run_dirs=run, device="cpu")
    text = report.read_text(encoding="utf-8")
    figs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    names = {f.name.split("_")[0] for f in figs}
    assert {"dice", "hd95", "learning", "best", "worst"} <= names
    for f in figs:
        assert f.read_bytes()[:8] == PNG and f"figures/{f.name}" in text
    for p in PUBLISHED:
        assert p.method in text
    assert "Dice = 2 IoU / (1 + IoU)" in text and "0.926" in text  # Çiçek's IoU 0.863 as Dice
    assert "Litjens" in text and "Milletari" in text and "Çiçek" in text and "prostate_mri_anatomy" in text
    assert "different data" in text and "eval-synthetic" in text and "three synthetic pairs" in text
    assert f"{count_parameters(tiny_package.build_network()):,} parameters" in text
    assert "GFLOPs per patch" in text and "Apache-2.0" in text
    bench = json.loads((tmp_path / "report" / "benchmark.json").read_text(encoding="utf-8"))
    assert bench["model"]["flops_per_patch"] > 0
    assert bench["evaluations"]["eval-synthetic"]["structures"]["prostate"]["dice"]["n"] == 3
    assert "### Anatomical plausibility" in text
    assert set(bench["evaluations"]["eval-synthetic"]["plausibility"]["prostate"]) == {
        "n",
        "volume",
        "one_component",
        "every_slice",
    }
    # every markdown table row has as many cells as its own table's header
    header = None
    rows_checked = 0
    for line in text.splitlines():
        if line.startswith("| evaluation | structure"):
            header = line
        elif line.startswith("| eval-synthetic | prostate | 3"):
            assert header is not None and line.count("|") == header.count("|"), line
            rows_checked += 1
    assert rows_checked == 2  # the results table and the plausibility table


def test_plausibility_names_the_failing_cases_and_skips_unrecorded_checks():
    from training.benchmark import EvalSet, plausibility

    def row(case, volume, components, missed, structure="prostate"):
        return {
            "case_id": case,
            "structure": structure,
            "volume_pred_ml": volume,
            "components": components,
            "slices_missed": missed,
        }

    rows = [row("ok", 40.0, 1.0, 0.0), row("tiny", 9.0, 1.0, 0.0), row("split", 60.0, 2.0, 1.0)]
    rows.append(row("ok", 10.0, 3.0, 0.0, structure="peripheral_zone"))  # zones are not judged as glands
    checks = plausibility(EvalSet("e", Path("e"), "", rows))
    assert list(checks) == ["prostate"]
    assert checks["prostate"] == {"n": 3, "volume": ["tiny"], "one_component": ["split"], "every_slice": ["split"]}
    old = [{"case_id": "a", "structure": "prostate", "volume_pred_ml": 200.0}]  # an evaluation from before the checks
    checks = plausibility(EvalSet("old", Path("old"), "", old))["prostate"]
    assert checks["volume"] == ["a"] and checks["one_component"] is None and checks["every_slice"] is None


def test_cli_writes_report_and_reports_bad_input_in_one_line(tmp_path, eval_dir, tiny_package, capsys):
    out = tmp_path / "r"
    assert main(["--eval", str(eval_dir), "--model", str(tiny_package.path), "-o", str(out), "--device", "cpu"]) == 0
    assert (out / "report.md").is_file() and not (out / "figures" / "learning_curve.png").exists()
    assert main(["--eval", str(tmp_path / "missing"), "--model", str(tiny_package.path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("benchmark.py: ") and "per_case.csv" in err and len(err.strip().splitlines()) == 1


def _log_csv(run: Path, rows) -> Path:
    run.mkdir(parents=True)
    lines = ["epoch,key,value"] + [f"{e},{k},{v}" for e, k, v in rows]
    (run / "log.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


def test_chain_logs_puts_a_fine_tuning_after_the_run_it_started_from():
    from training.figures import chain_logs

    first = {"train_loss": [(1, 0.9), (2, 0.5), (3, 0.4)], "val_dice_prostate": [(3, 0.8)]}
    second = {"train_loss": [(1, 0.3), (2, 0.2)], "val_dice_prostate": [(2, 0.85)]}
    joined, starts = chain_logs([first, second])
    assert joined["train_loss"] == [(1, 0.9), (2, 0.5), (3, 0.4), (4, 0.3), (5, 0.2)]
    assert joined["val_dice_prostate"] == [(3, 0.8), (5, 0.85)] and starts == [3]
    assert chain_logs([first]) == (first, [])


def test_report_learning_curve_of_consecutive_runs(tmp_path, eval_dir, tiny_package):
    a = _log_csv(tmp_path / "a", [(1, "train_loss", 0.9), (2, "train_loss", 0.5), (2, "val_dice_prostate", 0.7)])
    b = _log_csv(tmp_path / "b", [(1, "train_loss", 0.4), (1, "val_dice_prostate", 0.8)])
    out = tmp_path / "r"
    argv = ["--eval", str(eval_dir), "--model", str(tiny_package.path), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--run", str(a), "--run", str(b)]) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"Run `{a}`, then `{b}` (each started from" in text
    assert (out / "figures" / "learning_curve.png").read_bytes().startswith(PNG)
    # a run without its log.csv: no curve rather than a curve of part of the training
    out2 = tmp_path / "r2"
    assert main([*argv[:-4], "-o", str(out2), "--device", "cpu", "--run", str(a), "--run", str(tmp_path)]) == 0
    assert not (out2 / "figures" / "learning_curve.png").exists()
