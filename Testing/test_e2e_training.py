"""End to end: synthetic data -> train.py -> evaluate -> export.py -> ``unetsegment segment`` -> benchmark.

A tiny whole-gland model (base width 4, 2 mm x 2 mm x 4 mm grid) learns the
synthetic glands of ``UNetSegmentLib.synthetic`` in about a minute on two CPU
cores, then segments a case it never saw through the command line, as a
user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 4242  # the dataset below uses generator seeds 0-11
#: per subprocess; about 1 min each unloaded, generous for busy CI machines
TIMEOUT_S = 900


def _config(tmp: Path, data: Path) -> Path:
    cfg = {
        "name": "e2e",
        "output_dir": str(tmp / "run"),
        "data": {
            "sources": [{"format": "synthetic", "path": str(data), "num_cases": 12, "seed": 0}],
            "foreground_fraction": 0.5,
        },
        "model": {
            "id": "e2e-wholegland",
            "version": "0.0.1",
            "name": "End-to-end test model",
            "structures": ["prostate"],  # the synthetic zones are merged into the gland
            "base_channels": 4,
            "pool_sizes": [[1, 2, 2], [2, 2, 2]],
            "spacing_xyz_mm": [2.0, 2.0, 4.0],
            "patch_size_zyx": [16, 48, 48],
        },
        "augment": {"enabled": False},
        "train": {
            "epochs": 8,
            "iterations_per_epoch": 20,
            "batch_size": 2,
            "learning_rate": 0.01,
            "validate_every": 2,
            "precision": "float32",
            "device": "cpu",
        },
    }
    f = tmp / "e2e.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return f


def _run(args, timeout):
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_train_evaluate_export_and_segment_a_held_out_case(tmp_path):
    from training.benchmark import load_eval, write_report
    from training.data.synthetic import generate_dataset
    from training.evaluate import cases_from_data, compare_masks, evaluate
    from training.export import export_run
    from UNetSegmentLib.model_package import ModelPackage, sha256_file
    from UNetSegmentLib.synthetic import make_case

    data = tmp_path / "data"
    cases = generate_dataset(str(data), 12, seed=0)
    assert sum(c.split == "validation" for c in cases) == 2 and all(Path(c.label).is_file() for c in cases)

    # train: a subprocess, as a user runs it
    _run(["training/train.py", "--config", str(_config(tmp_path, data))], timeout=TIMEOUT_S)
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "split.csv", "log.csv", "best.pt", "last.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs"] == 8 and summary["best_val_dice"] > 0.7, summary

    # evaluate the run's held-out validation cases on their original grids
    val = cases_from_data(run_dir)
    assert sorted(c.case_id for c in val) == sorted(c.case_id for c in cases if c.split == "validation")
    draft = export_run(run_dir, tmp_path / "draft")  # evaluation needs a package; export.py writes the final one
    rows = evaluate(
        draft, val, tmp_path / "eval", device="cpu", save_predictions=True, description="synthetic validation"
    )
    assert all(r["structure"] == "prostate" and r["dice"] > 0.75 and r["hd95_mm"] < 10 for r in rows), rows

    # export with the evaluation recorded, zipped, with its catalogue entry
    pkg_dir = tmp_path / "e2e-wholegland"
    _run(
        [
            "training/export.py",
            str(run_dir),
            str(pkg_dir),
            "--metrics",
            str(tmp_path / "eval" / "summary.json"),
            "--zip",
        ],
        timeout=TIMEOUT_S,
    )
    pkg = ModelPackage.load(pkg_dir)
    assert pkg.info.training["metrics"]["structures"]["prostate"]["dice"]["n"] == 2
    entry = json.loads((tmp_path / "e2e-wholegland.catalogue.json").read_text(encoding="utf-8"))
    assert entry["sha256"] == sha256_file(tmp_path / "e2e-wholegland.zip")
    with zipfile.ZipFile(tmp_path / "e2e-wholegland.zip") as z:
        assert {"model.json", "weights.safetensors"} <= set(z.namelist())

    # segment a case the model never saw with the command line
    image, label = make_case(HELD_OUT_SEED)
    sitk.WriteImage(image, str(tmp_path / "held_out.nii.gz"))
    out = tmp_path / "held_out_seg.nrrd"
    _run(
        [
            "-m",
            "UNetSegmentLib",
            "segment",
            str(tmp_path / "held_out.nii.gz"),
            "-o",
            str(out),
            "--model",
            str(pkg_dir),
            "--device",
            "cpu",
        ],
        timeout=TIMEOUT_S,
    )
    seg = sitk.ReadImage(str(out))
    assert seg.GetSize() == image.GetSize() and seg.GetSpacing() == pytest.approx(image.GetSpacing())
    m = compare_masks(sitk.GetArrayFromImage(seg) > 0, sitk.GetArrayFromImage(label) > 0, image.GetSpacing()[::-1])
    assert m["dice"] > 0.75, m
    assert abs(m["volume_diff_pct"]) < 25, m

    # the benchmark report of it all
    report = write_report([load_eval(tmp_path / "eval")], pkg, tmp_path / "report", run_dirs=run_dir, device="cpu")
    text = report.read_text(encoding="utf-8")
    assert "figures/learning_curve.png" in text and (tmp_path / "report" / "figures" / "learning_curve.png").is_file()
    assert "synthetic validation" in text
