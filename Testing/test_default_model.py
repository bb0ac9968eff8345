"""The bundled default model: its catalogue entry, its recorded metrics, and what it does on real MRI.

The issue's definition of done: ``unetsegment segment`` on a real T2 from
../shared/data, with no ``--model``, uses the bundled model and gives the Dice
that the committed evaluation reports.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO

from UNetSegmentLib.labels import PLAUSIBLE_GLAND_ML
from UNetSegmentLib.model_package import ModelPackage, sha256_file
from UNetSegmentLib.store import BUILTIN_CATALOGUE, BUNDLED_DIR, DEFAULT_MODEL_ID, load_catalogue, version_key

#: the evaluation of the shipped version with the current engine (the previous engine: docs/default_model/eval_*)
EVAL_DIR = REPO / "docs" / "default_model" / "engine_0.2" / "eval_promise12_validation"


@pytest.fixture(scope="module")
def bundled() -> ModelPackage:
    return ModelPackage.load(BUNDLED_DIR / DEFAULT_MODEL_ID, verify=True)


def test_catalogue_entry_is_the_bundled_package_zipped(bundled, tmp_path):
    entries = [e for e in load_catalogue(str(BUILTIN_CATALOGUE)) if e.id == DEFAULT_MODEL_ID]
    # the newest version listed is the bundled one; earlier releases stay listed for a rollback
    entry = max(entries, key=lambda e: version_key(e.version))
    assert entry.version == bundled.info.version
    assert len({e.version for e in entries}) == len(entries)
    assert all(e.url.endswith(f"/{DEFAULT_MODEL_ID}-{e.version}.zip") for e in entries)
    zip_path = bundled.to_zip(tmp_path / f"{DEFAULT_MODEL_ID}-{entry.version}.zip")
    assert (sha256_file(zip_path), zip_path.stat().st_size) == (entry.sha256, entry.size)
    assert entry.url.endswith(zip_path.name)
    assert entry.structures == bundled.info.structures
    assert entry.license == bundled.info.license
    terms = " ".join(bundled.info.license["training_data"])
    assert "PROMISE12" in terms


def test_recorded_metrics_are_those_of_the_committed_evaluation(bundled):
    from training.evaluate import read_per_case

    recorded = bundled.info.training["metrics"]["promise12_validation"]
    rows = [r for r in read_per_case(EVAL_DIR / "per_case.csv") if r["structure"] == "prostate"]
    assert sorted(r["case_id"] for r in rows) == sorted(recorded["cases"])
    assert sorted(recorded["cases"]) == sorted(bundled.info.training["data"]["validation_cases"])
    assert recorded["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]), abs=5e-4)
    # every committed evaluation (each quality, each reference) was made with the shipped weights
    for summary_path in sorted(EVAL_DIR.parent.glob("eval_*/summary.json")):
        model = json.loads(summary_path.read_text(encoding="utf-8"))["model"]
        assert (model["version"], model["weights_sha256"]) == (bundled.info.version, bundled.info.weights_sha256), (
            summary_path
        )
    assert len(list(EVAL_DIR.parent.glob("eval_*/summary.json"))) == 5
    # held out: no validation case was trained on
    assert not set(recorded["cases"]) & set(bundled.info.training["data"]["train_cases"])


@pytest.mark.slow
@pytest.mark.shared_data
def test_segment_with_no_model_gives_the_reported_dice_on_real_mri(shared_data, tmp_path, monkeypatch, capsys):
    from training.evaluate import compare_masks, read_per_case
    from UNetSegmentLib.cli import EXIT_OK, main

    # no cache and an empty catalogue: the bundled model must be found offline
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"format_version": 1, "models": []}), encoding="utf-8")
    monkeypatch.setenv("UNETSEGMENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UNETSEGMENT_CATALOGUE", str(catalogue))
    rows = {r["case_id"]: r for r in read_per_case(EVAL_DIR / "per_case.csv") if r["structure"] == "prostate"}
    case = min(rows, key=lambda c: rows[c]["seconds"])  # the quickest held-out case
    image = shared_data / "promise12" / f"{case}_image.nii.gz"
    out = tmp_path / f"{case}_segmentation.nii.gz"

    code = main(["segment", str(image), "-o", str(out), "--offline"])
    stdout = capsys.readouterr().out
    assert code == EXIT_OK and f"with {DEFAULT_MODEL_ID} " in stdout

    pred_img = sitk.ReadImage(str(out))
    ref_img = sitk.ReadImage(str(shared_data / "promise12" / f"{case}_label.nii.gz"))
    pred = sitk.GetArrayFromImage(pred_img) > 0
    ref = sitk.GetArrayFromImage(ref_img) > 0
    m = compare_masks(pred, ref, tuple(reversed(ref_img.GetSpacing())))
    assert m["dice"] == pytest.approx(rows[case]["dice"], abs=0.01)
    lo, hi = PLAUSIBLE_GLAND_ML
    assert lo <= m["volume_pred_ml"] <= hi
    assert m["components"] == 1
    # labelled slices without the gland found: as the committed evaluation records (its report names them)
    assert m["slices_missed"] == rows[case]["slices_missed"]
