"""Cross-validation by patient: the folds, the recipe's stages chained per fold, pooling, comparing."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_experiment, write_pairs

from training.config import ConfigError, load_config
from training.data import Case
from training.data.registry import assign_fold, read_all


def _cases():
    cases = [
        Case(f"{g}{i}", f"{g}{i}.nii.gz", f"{g}{i}_label.nii.gz", group=g, source="s")
        for g, n in (("A", 5), ("B", 4), ("C", 3))
        for i in range(n)
    ]
    cases.append(Case("T0", "t.nii.gz", "t_label.nii.gz", group="A", source="s", split="test"))
    cases.append(Case("U0", "u.nii.gz", None, group="A", source="s"))
    cases[0] = Case("A0", "A0.nii.gz", "A0_label.nii.gz", group="A", source="s", split="validation")  # official
    return cases


def test_folds_partition_the_patients_and_mix_the_centres():
    cases = _cases()
    foldable = {c.case_id for c in cases}
    labelled = sorted(c.case_id for c in cases if c.label and c.split != "test")
    held_out = []
    for fold in range(3):
        split = {c.case_id: c.split for c in assign_fold(cases, foldable, 3, fold, seed=0)}
        held_out.append(sorted(k for k, v in split.items() if v == "validation"))
        assert split["T0"] == "test" and split["U0"] == "train"  # a test split and unlabelled cases stay
        assert all(split[k] == "train" for k in labelled if k not in held_out[-1])
    # every labelled patient held out exactly once; fold sizes 4/4/4; each centre spread over the folds
    assert sorted(sum(held_out, [])) == labelled
    assert [len(h) for h in held_out] == [4, 4, 4]
    for g, n in (("A", 5), ("B", 4), ("C", 3)):
        per_fold = [sum(k.startswith(g) for k in h) for h in held_out]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1, (g, per_fold)
    # deterministic for a seed, another seed deals otherwise
    again = assign_fold(cases, foldable, 3, 1, seed=0)
    assert sorted(c.case_id for c in again if c.split == "validation") == held_out[1]
    other = [
        sorted(c.case_id for c in assign_fold(cases, foldable, 3, f, seed=7) if c.split == "validation")
        for f in range(3)
    ]
    assert other != held_out
    with pytest.raises(ValueError, match="at least 20 labelled cases"):
        assign_fold(cases, foldable, 20, 0, seed=0)


def _stage(root: Path, name: str, data: Path, **train) -> Path:
    source = {"format": "pairs", "path": str(data), "label_map": {1: "prostate"}}
    # output_dir is not used: crossval.py puts each fold's run elsewhere
    cfg = tiny_experiment(name, root / "unused" / name, source, model_id="tiny-cv", iterations_per_epoch=1, **train)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_config_checks_folds_and_a_source_with_its_own_validation_list(tmp_path):
    data = write_pairs(tmp_path / "pairs", 3, prefix="p")
    stage = _stage(tmp_path, "a", data)
    for bad in (["data.folds=1"], ["data.folds=3", "data.fold=3"], ["data.fold=1"]):
        with pytest.raises(ConfigError, match="data.fold"):
            load_config(stage, bad)
    cfg = load_config(stage, ["data.folds=3", "data.fold=2", "data.sources.0.validation=[p0]"])
    with pytest.raises(ValueError, match="chooses the validation cases itself"):
        read_all(cfg.data.sources, 0, 0, 3, 2)


@pytest.mark.slow
def test_crossval_runs_the_recipe_per_fold_pools_and_compares(tmp_path, capsys):
    from training.crossval import main
    from training.evaluate import read_per_case

    data = write_pairs(tmp_path / "pairs", 3, prefix="p")
    first = _stage(tmp_path, "first", data)
    second = _stage(tmp_path, "second", data, learning_rate=0.001)
    out = tmp_path / "cv"
    argv = ["run", "-o", str(out), "--folds", "2", "--config", str(first), "--config", str(second)]
    assert main(argv) == 0

    pooled_dir = out / "second"  # a recipe is named after its last stage
    fold_of = json.loads((pooled_dir / "summary.json").read_text(encoding="utf-8"))["crossval"]["fold_of_case"]
    assert sorted(fold_of) == ["p0", "p1", "p2"] and sorted(Counter(fold_of.values()).values()) == [1, 2]
    for fold in (0, 1):
        second_run = out / f"fold{fold}" / "second"
        saved = yaml.safe_load((second_run / "config.yaml").read_text(encoding="utf-8"))
        # the second stage starts from the first stage's last epoch of the same fold
        assert saved["train"]["init_from"] == str(out / f"fold{fold}" / "first" / "last.pt")
        assert (saved["data"]["folds"], saved["data"]["fold"]) == (2, fold)
        for stage in ("first", "second"):
            with open(out / f"fold{fold}" / stage / "split.csv", newline="", encoding="utf-8") as f:
                held = sorted(r["case_id"] for r in csv.DictReader(f) if r["split"] == "validation")
            assert held == sorted(k for k, v in fold_of.items() if v == fold)
        evaluated = [r["case_id"] for r in read_per_case(out / f"fold{fold}" / "second.eval" / "per_case.csv")]
        assert sorted(evaluated) == sorted(k for k, v in fold_of.items() if v == fold)
    pooled = read_per_case(pooled_dir / "per_case.csv")
    assert sorted(r["case_id"] for r in pooled) == ["p0", "p1", "p2"]
    assert all(0.0 <= r["dice"] <= 1.0 for r in pooled)
    report = (pooled_dir / "crossval.md").read_text(encoding="utf-8")
    assert "## Targets" in report and "### Per centre" in report and "nnU-Net" in report

    # run again: nothing is retrained (finished stages are kept), the evaluation is the same
    stamp = (out / "fold0" / "second" / "last.pt").stat().st_mtime_ns
    assert main(argv + ["--eval-only"]) == 0
    assert (out / "fold0" / "second" / "last.pt").stat().st_mtime_ns == stamp
    assert [r["dice"] for r in read_per_case(pooled_dir / "per_case.csv")] == [r["dice"] for r in pooled]
    # a recipe that is the first stage alone, in the same folder: its runs are shared, not retrained
    first_stamp = (out / "fold1" / "first" / "last.pt").stat().st_mtime_ns
    assert main(["run", "-o", str(out), "--folds", "2", "--config", str(first)]) == 0
    assert (out / "fold1" / "first" / "last.pt").stat().st_mtime_ns == first_stamp
    assert sorted(r["case_id"] for r in read_per_case(out / "first" / "per_case.csv")) == ["p0", "p1", "p2"]
    assert main(["compare", str(out / "first"), str(pooled_dir)]) == 0
    # per fold, the average of the two recipes' fold models, scored on that fold's patients
    assert main(["average", str(out / "first"), str(pooled_dir), "-o", str(tmp_path / "avg")]) == 0
    averaged = read_per_case(tmp_path / "avg" / "average" / "per_case.csv")
    assert sorted(r["case_id"] for r in averaged) == ["p0", "p1", "p2"]
    pair = json.loads((tmp_path / "avg" / "fold0" / "average.model" / "model.json").read_text(encoding="utf-8"))
    assert [m["provenance"]["fold"] for m in pair["members"]] == [0, 0] and len(pair["members"]) == 2
    assert main(["compare", str(pooled_dir), str(tmp_path / "avg" / "average")]) == 0
    other = tmp_path / "other"
    shutil.copytree(out / "first", other)
    summary = json.loads((other / "summary.json").read_text(encoding="utf-8"))
    summary["crossval"]["fold_of_case"]["p0"] = 1 - summary["crossval"]["fold_of_case"]["p0"]
    (other / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    capsys.readouterr()
    assert main(["average", str(other), str(pooled_dir), "-o", str(tmp_path / "avg2")]) == 1
    assert "hold out other patients" in capsys.readouterr().err
    # a changed recipe does not silently reuse the folds trained with the old one
    capsys.readouterr()
    assert main(argv + ["train.learning_rate=0.5"]) == 1
    assert "was trained with another config" in capsys.readouterr().err

    # compare: against itself every difference is 0; against a copy one patient better by 0.1 Dice
    b = tmp_path / "b"
    b.mkdir()
    with open(pooled_dir / "per_case.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows[0]["dice"] = str(float(rows[0]["dice"]) + 0.1)
    with open(b / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["compare", str(pooled_dir), str(b), "-o", str(tmp_path / "cmp.md")]) == 0
    result = json.loads((tmp_path / "cmp.json").read_text(encoding="utf-8"))["prostate"]
    assert result["dice"]["diff"] == pytest.approx(0.1 / 3, abs=1e-5)
    assert (result["dice"]["b_better"], result["dice"]["a_better"], result["dice"]["ties"]) == (1, 0, 2)
    assert result["hd95_mm"]["diff"] == pytest.approx(0.0)
    assert "| prostate | dice | 3 |" in (tmp_path / "cmp.md").read_text(encoding="utf-8")
    # different patients cannot be paired
    rows.pop()
    with open(b / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    assert main(["compare", str(pooled_dir), str(b)]) == 1
    assert "did not evaluate the same patients" in capsys.readouterr().err


@pytest.mark.shared_data
def test_the_default_model_recipe_splits_into_folds_by_patient_and_centre(shared_data, tmp_path):
    from training.crossval import check_same_split, stage_configs

    configs = [
        str(REPO / "training" / "configs" / f"{name}.yaml")
        for name in ("default_wholegland", "default_wholegland_finetune", "default_wholegland_presence_onesided")
    ]
    overrides = [f"data.sources.0.path={shared_data / 'promise12'}", f"data.sources.1.path={tmp_path / 'synthetic'}"]
    held_out = []
    for fold in range(4):
        stages = stage_configs(configs, overrides, tmp_path / "cv", 4, fold)
        assert [s.train.init_from for s in stages[1:]] == [
            str(tmp_path / "cv" / f"fold{fold}" / name / "last.pt")
            for name in ("default-wholegland", "default-wholegland-finetune")
        ]
        held_out.append(check_same_split(stages))
    promise12 = sorted(p.name.split("_")[0] for p in (shared_data / "promise12").glob("Case*_label.nii.gz"))
    # the 36 patients, each held out once, 9 per fold; the synthetic cases always train
    assert sorted(sum(held_out, [])) == promise12 and [len(h) for h in held_out] == [9, 9, 9, 9]


def test_final_model_trains_the_recipe_on_every_labelled_case_after_the_folds(tmp_path, capsys):
    from training.crossval import main
    from UNetSegmentLib.model_package import ModelPackage

    data = write_pairs(tmp_path / "pairs", 3, prefix="p")
    first = _stage(tmp_path, "first", data)
    second = _stage(tmp_path, "second", data, learning_rate=0.001)
    out = tmp_path / "cv"
    argv = ["run", "-o", str(out), "--folds", "2", "--config", str(first), "--config", str(second), "--final"]
    assert main(argv) == 0
    assert "final model (every labelled case) in" in capsys.readouterr().out
    for stage in ("first", "second"):
        with open(out / "final" / stage / "split.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["case_id"] for r in rows) == ["p0", "p1", "p2"] and {r["split"] for r in rows} == {"train"}
    saved = yaml.safe_load((out / "final" / "second" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["init_from"] == str(out / "final" / "first" / "last.pt")
    assert saved["data"]["folds"] == 0
    package = ModelPackage.load(out / "final" / "second.model")
    assert package.info.id == "tiny-cv"
    times = json.loads((out / "stage_times.json").read_text(encoding="utf-8"))
    assert set(times) == {f"{w}/{s}" for w in ("fold0", "fold1", "final") for s in ("first", "second")}
    assert all(t["minutes"] >= 0 and t["device"] == "cpu" for t in times.values())
    # the same command again trains nothing; --final-only exports the finished final model alone
    stamp = (out / "final" / "second" / "last.pt").stat().st_mtime_ns
    assert main(argv) == 0
    assert main(["run", "-o", str(out), "--config", str(first), "--config", str(second), "--final-only"]) == 0
    assert (out / "final" / "second" / "last.pt").stat().st_mtime_ns == stamp
    # --eval-only never trains: a final model not trained yet is an error, not a silent skip
    capsys.readouterr()
    assert main(["run", "-o", str(tmp_path / "other"), "--config", str(first), "--final-only", "--eval-only"]) == 1
    assert "has not finished training" in capsys.readouterr().err


@pytest.mark.shared_data
def test_the_default_model_recipe_final_model_trains_on_all_36_patients(shared_data, tmp_path):
    from training.crossval import final_configs
    from training.data.registry import config_cases

    configs = [
        str(REPO / "training" / "configs" / f"{name}.yaml")
        for name in ("default_wholegland", "default_wholegland_finetune", "default_wholegland_presence_onesided")
    ]
    overrides = [f"data.sources.0.path={shared_data / 'promise12'}", f"data.sources.1.path={tmp_path / 'synthetic'}"]
    stages = final_configs(configs, overrides, tmp_path / "cv")
    promise12 = sorted(p.name.split("_")[0] for p in (shared_data / "promise12").glob("Case*_label.nii.gz"))
    for cfg in stages:
        cases = [c for c in config_cases(cfg) if c.label and c.source == "promise12"]
        assert sorted(c.case_id for c in cases) == promise12 and {c.split for c in cases} == {"train"}


def _row(case_id, dice, source="promise12", group="UCL", label="", **kw):
    row = {"case_id": case_id, "group": group, "source": source, "structure": "prostate", "dice": dice}
    row.update({"hd95_mm": 3.0, "asd_mm": 1.0, "volume_pred_ml": 40.0, "volume_ref_ml": 40.0})
    row.update({"volume_diff_ml": 0.0, "volume_diff_pct": 0.0, "components": 1, "ref_slices": 10})
    row.update({"slices_missed": 0, "seconds": 1.0, "image": f"/d/{case_id}.nii.gz", "label": label})
    row.update(kw)
    return row


def test_targets_and_the_report_per_centre(tmp_path):
    from training.crossval import targets, write_report
    from training.evaluate import summarize, write_per_case

    rows = [
        _row("Case00", 0.93, group="BIDMC"),
        _row("Case01", 0.91),
        _row("Case13", 0.79, group="RUNMC", components=2),
        _row("ProstateX-0000", 0.86, "prostatex", "ProstateX", "/p/labels/wholegland_AI_Guerbet23.nii.gz"),
    ]
    got = {t["target"]: t for t in targets(rows)}
    mean = got["PROMISE12 mean Dice (3 patients)"]
    assert mean["value"] == pytest.approx((0.93 + 0.91 + 0.79) / 3) and not mean["met"]
    assert not got["PROMISE12 lowest patient (Case13)"]["met"]
    assert got["ProstateX-0000 vs Guerbet23"]["met"] and got["ProstateX-0000 vs Guerbet23"]["value"] == 0.86
    assert got["one connected component: every patient"]["failing"] == ["Case13"]
    assert got["every labelled slice found: every patient"]["met"]
    rows[2] = _row("Case13", 0.95, group="RUNMC")
    got = {t["target"]: t for t in targets(rows)}
    assert all(t["met"] for t in got.values())

    pooled = tmp_path / "recipe"
    pooled.mkdir()
    write_per_case(rows, pooled / "per_case.csv")
    summary = summarize(rows)
    summary["crossval"] = {"folds": 2, "recipe": ["a.yaml"], "overrides": []}
    summary["targets"] = targets(rows)
    text = write_report(pooled, summary).read_text(encoding="utf-8")
    assert "| PROMISE12 mean Dice (3 patients) | 0.930 | >= 0.89 | yes |" in text
    assert "| recipe | prostate | prostatex/ProstateX | 1 | 0.860" in text
    assert "| recipe | prostate | promise12/RUNMC | 1 | 0.950" in text
    assert "PI-CAI gland model" in text and "same dataset, other cases" in text
