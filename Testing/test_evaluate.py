"""training/evaluate.py: metrics in mm with known answers, structure matching, files and CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from training.data import Case
from training.evaluate import (
    GLAND,
    compare_masks,
    comparisons,
    describe,
    evaluate,
    evaluate_case,
    main,
    parse_label_map,
    read_per_case,
    reference_masks,
    single_case,
)


def ball(shape_zyx, spacing_zyx, centre_zyx, radius_mm):
    """Boolean ball of ``radius_mm`` around a voxel centre on a grid of ``spacing_zyx`` mm."""
    z, y, x = np.indices(shape_zyx)
    c, s = centre_zyx, spacing_zyx
    return ((z - c[0]) * s[0]) ** 2 + ((y - c[1]) * s[1]) ** 2 + ((x - c[2]) * s[2]) ** 2 <= radius_mm**2


def shifted_ball_dice(radius: float, shift: float) -> float:
    """Dice of two balls of one radius whose centres are ``shift`` apart (lens volume, exact)."""
    return 1 - 3 * shift / (4 * radius) + shift**3 / (16 * radius**3)


@pytest.mark.parametrize("spacing_zyx", [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_ball_shifted_two_slices_has_analytic_dice_and_hd95_in_mm(spacing_zyx):
    shape = tuple(int(60 / s) for s in spacing_zyx)
    c = tuple(n // 2 for n in shape)
    ref = ball(shape, spacing_zyx, c, 12.0)
    pred = ball(shape, spacing_zyx, (c[0] + 2, c[1], c[2]), 12.0)
    shift_mm = 2 * spacing_zyx[0]
    m = compare_masks(pred, ref, spacing_zyx)
    assert m["dice"] == pytest.approx(shifted_ball_dice(12.0, shift_mm), abs=0.01)
    assert m["hd95_mm"] == pytest.approx(shift_mm, abs=0.5)
    assert 0 < m["asd_mm"] < shift_mm
    assert m["volume_ref_ml"] == pytest.approx(4 / 3 * math.pi * 12**3 / 1000, rel=0.03)
    assert m["volume_diff_ml"] == pytest.approx(0.0, abs=1e-9)


def test_concentric_balls_are_the_radius_difference_apart_on_an_anisotropic_grid():
    spacing = (3.0, 1.0, 0.8)
    shape = tuple(int(70 / s) for s in spacing)
    c = tuple(n // 2 for n in shape)
    m = compare_masks(ball(shape, spacing, c, 10.0), ball(shape, spacing, c, 16.0), spacing)
    assert m["dice"] == pytest.approx(2 * 10**3 / (10**3 + 16**3), abs=0.01)
    assert m["hd95_mm"] == pytest.approx(6.0, abs=1.0)
    assert m["asd_mm"] == pytest.approx(6.0, abs=1.0)
    assert m["volume_diff_pct"] == pytest.approx(100 * (10**3 - 16**3) / 16**3, abs=3.0)


def test_transposed_arrays_with_transposed_spacing_give_the_same_metrics():
    spacing = (3.0, 1.0, 0.7)
    shape = (20, 50, 70)
    c = (10, 25, 35)
    a, b = ball(shape, spacing, c, 11.0), ball(shape, spacing, (c[0] + 1, c[1] + 3, c[2]), 11.0)
    m1 = compare_masks(a, b, spacing)
    m2 = compare_masks(a.transpose(2, 1, 0), b.transpose(2, 1, 0), spacing[::-1])
    for k in ("dice", "hd95_mm", "asd_mm", "volume_pred_ml"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-5)
    wrong = compare_masks(a, b, spacing[::-1])
    assert wrong["hd95_mm"] != pytest.approx(m1["hd95_mm"], rel=0.05)


def test_anatomy_checks_count_components_and_missed_reference_slices():
    from training.evaluate import anatomy_checks

    ref = np.zeros((10, 20, 20), bool)
    ref[2:8, 5:15, 5:15] = True  # reference on slices 2..7
    pred = ref.copy()
    pred[4] = False  # slice 4 missed entirely
    pred[6, 5:15, 5:15] = False
    pred[6, 0, 0] = True  # slice 6: a voxel, but off the reference -> missed too
    m = anatomy_checks(pred, ref)
    assert m == {"components": 4.0, "ref_slices": 6.0, "slices_missed": 2.0}  # slices 2-3, 5, 7 and the stray voxel
    # corner-touching voxels are one 26-connected component
    diag = np.zeros((3, 3, 3), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = diag[2, 2, 2] = True
    assert anatomy_checks(diag, diag)["components"] == 1.0
    assert anatomy_checks(np.zeros_like(ref), ref) == {"components": 0.0, "ref_slices": 6.0, "slices_missed": 6.0}


def test_empty_masks_have_documented_values_not_crashes():
    ref = ball((10, 20, 20), (1, 1, 1), (5, 10, 10), 4)
    empty = np.zeros_like(ref)
    one = compare_masks(empty, ref, (1, 1, 1))
    assert one["dice"] == 0.0 and math.isnan(one["hd95_mm"]) and math.isnan(one["asd_mm"])
    assert one["volume_diff_pct"] == pytest.approx(-100.0)
    other = compare_masks(ref, empty, (1, 1, 1))
    assert other["dice"] == 0.0 and math.isnan(other["hd95_mm"]) and math.isnan(other["volume_diff_pct"])
    both = compare_masks(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95_mm"], both["asd_mm"]) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        compare_masks(ref, ref[:5], (1, 1, 1))
    with pytest.raises(ValueError):
        compare_masks(ref, ref, (1, 1))


def test_describe_counts_nan_and_leaves_it_out():
    d = describe([1.0, 3.0, math.nan, 2.0])
    assert (d["n"], d["n_nan"]) == (3, 1)
    assert d["mean"] == pytest.approx(2.0) and d["median"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert describe([math.nan])["mean"] is None


def test_label_map_parsing_accepts_aliases_and_rejects_garbage():
    assert parse_label_map(["1=pz,2=tz"]) == {1: "peripheral_zone", 2: "transition_zone"}
    assert parse_label_map(["1=prostate", "3=central_gland"]) == {1: "prostate", 3: "transition_zone"}
    with pytest.raises(ValueError):
        parse_label_map(["prostate"])
    with pytest.raises(KeyError):
        parse_label_map(["1=kidney"])


def test_structures_compared_for_each_model_and_reference_kind():
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[1:3, 2:6, 2:4] = 1
    lab[1:3, 2:6, 4:6] = 2
    zonal_ref = reference_masks(lab, {1: "pz", 2: "tz"})
    gland_ref = reference_masks((lab > 0).astype(np.uint8), {1: "prostate"})
    zonal_model = [(1, "peripheral_zone"), (2, "transition_zone")]
    gland_model = [(1, "prostate")]
    # zonal model vs zonal reference: each zone and the gland
    names = [n for n, _, _ in comparisons(lab, zonal_model, zonal_ref)]
    assert names == ["peripheral_zone", "transition_zone", GLAND]
    # zonal model vs gland-only reference: the union of the predicted zones
    ((name, pred, ref),) = comparisons(lab, zonal_model, gland_ref)
    assert name == GLAND and pred.sum() == ref.sum() == (lab > 0).sum()
    # whole-gland model vs zonal reference: prostate against the union of the zones
    ((name, pred, ref),) = comparisons((lab > 0).astype(np.uint8), gland_model, zonal_ref)
    assert name == "prostate" and np.array_equal(pred, ref)


def _image(array_zyx, spacing_xyz):
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing_xyz)
    return img


def test_evaluate_case_converts_itk_spacing_to_numpy_order(tmp_path):
    """Image spacing (x, y, z) = (1, 1, 3) mm: a prediction two slices off is 6 mm away, not 2 mm."""
    spacing_zyx = (3.0, 1.0, 1.0)
    ref = ball((20, 60, 60), spacing_zyx, (10, 30, 30), 12.0).astype(np.uint8)
    pred = ball((20, 60, 60), spacing_zyx, (12, 30, 30), 12.0).astype(np.uint8)
    sitk.WriteImage(_image((ref * 100).astype(np.int16), (1.0, 1.0, 3.0)), str(tmp_path / "img.nrrd"))
    sitk.WriteImage(_image(ref, (1.0, 1.0, 3.0)), str(tmp_path / "lab.nrrd"))
    labels = (SimpleNamespace(value=1, structure=SimpleNamespace(name="prostate")),)

    class FakePredictor:
        info = SimpleNamespace(labels=labels)

        def predict(self, image):
            assert image.GetSpacing() == (1.0, 1.0, 3.0)
            return SimpleNamespace(labelmap=_image(pred, image.GetSpacing()))

    case = Case("c1", str(tmp_path / "img.nrrd"), str(tmp_path / "lab.nrrd"), {1: "prostate"})
    (row,) = evaluate_case(FakePredictor(), case)
    assert row["structure"] == "prostate" and row["case_id"] == "c1"
    assert row["hd95_mm"] == pytest.approx(6.0, abs=0.5)
    assert row["dice"] == pytest.approx(shifted_ball_dice(12.0, 6.0), abs=0.01)


def _pair_folder(folder, n=2):
    from conftest import synthetic_image

    folder.mkdir()
    for i in range(n):
        img = synthetic_image(size_xyz=(48, 48, 12), spacing=(1.5, 1.5, 3.0), seed=i)
        lab = sitk.Cast(sitk.BinaryThreshold(img, 400, 10000, 1, 0), sitk.sitkUInt8)
        sitk.WriteImage(img, str(folder / f"case{i}_image.nii.gz"))
        sitk.WriteImage(lab, str(folder / f"case{i}_label.nii.gz"))
    return folder


def test_evaluate_writes_per_case_and_summary(tmp_path, tiny_package):
    from training.evaluate import cases_from_data

    cases = cases_from_data(_pair_folder(tmp_path / "pairs"), label_map={1: "prostate"})
    assert [c.case_id for c in cases] == ["case0", "case1"]
    rows = evaluate(tiny_package, cases, tmp_path / "out", device="cpu", save_predictions=True)
    assert len(rows) == 2 and {r["structure"] for r in rows} == {"prostate"}
    back = read_per_case(tmp_path / "out" / "per_case.csv")
    assert [r["case_id"] for r in back] == ["case0", "case1"]
    for r, b in zip(rows, back):
        assert b["dice"] == pytest.approx(r["dice"], rel=1e-4)
        assert 0.0 <= b["dice"] <= 1.0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    s = summary["structures"]["prostate"]
    assert summary["n_cases"] == 2 and s["n"] == 2
    assert s["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in rows]), rel=1e-6)
    assert s["hd95_mm"]["n"] + s["hd95_mm"]["n_nan"] == 2
    assert summary["model"]["id"] == "tiny-test-model"
    pred = sitk.ReadImage(str(tmp_path / "out" / "predictions" / "case0.nii.gz"))
    assert pred.GetSize() == (48, 48, 12) and pred.GetSpacing() == pytest.approx((1.5, 1.5, 3.0))


def test_cli_single_case_and_one_line_errors(tmp_path, tiny_package, capsys):
    folder = _pair_folder(tmp_path / "pairs", n=1)
    out = tmp_path / "out"
    args = [
        "--model",
        str(tiny_package.path),
        "--image",
        str(folder / "case0_image.nii.gz"),
        "--label",
        str(folder / "case0_label.nii.gz"),
    ]
    assert main([*args, "--label-map", "1=prostate", "-o", str(out), "--device", "cpu", "--case-id", "x1"]) == 0
    assert "prostate: Dice" in capsys.readouterr().out
    assert read_per_case(out / "per_case.csv")[0]["case_id"] == "x1"
    assert main([*args, "-o", str(out)]) == 1  # no label map
    err = capsys.readouterr().err
    assert err.startswith("evaluate.py: ") and len(err.strip().splitlines()) == 1
    assert main(["--model", str(tmp_path / "nope"), "--data", str(folder), "-o", str(out)]) == 1
    assert "not a model package" in capsys.readouterr().err


def test_single_case_id_defaults_to_folder_and_stem(tmp_path):
    f = tmp_path / "ProstateX-0000" / "t2w.nii.gz"
    f.parent.mkdir()
    f.write_bytes(b"")
    assert single_case(str(f), "lab.nii.gz", {1: "prostate"}).case_id == "ProstateX-0000_t2w"


@pytest.mark.shared_data
def test_prostatex_reference_volume_on_its_true_grid(shared_data, tiny_package, tmp_path):
    """The Guerbet23 gland is 43 mL (data README): volumes use the real 0.5 x 0.5 x 3 mm spacing."""
    px = shared_data / "prostatex" / "ProstateX-0000"
    case = single_case(str(px / "t2w.nii.gz"), str(px / "labels" / "wholegland_AI_Guerbet23.nii.gz"), {1: "prostate"})
    (row,) = evaluate(tiny_package, [case], tmp_path / "px", device="cpu")
    assert row["volume_ref_ml"] == pytest.approx(43.0, abs=0.5)
    assert row["case_id"] == "ProstateX-0000_t2w"
