"""training/: config parsing, targets, the partial-label loss, a tiny run, resume, export round trip."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from training.config import ConfigError, load_config
from training.dataset import FULL, GLAND, targets_for
from training.losses import PartialLabelDiceCE, slice_presence_loss

REPO = Path(__file__).resolve().parent.parent


# --- configs -----------------------------------------------------------------


def test_default_config_parses_into_typed_sections():
    cfg = load_config(REPO / "training" / "configs" / "default_wholegland.yaml")
    assert cfg.model.structures == ["prostate"]
    assert cfg.model.patch_size_zyx == [20, 128, 128]
    assert cfg.data.sources[0].format == "promise12"
    assert isinstance(cfg.train.learning_rate, float) and cfg.augment.flip_x is True


def test_unknown_and_misspelt_keys_are_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epoch: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(f)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["modell.base_channels=4"])


def test_overrides_are_typed_and_reach_list_items(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  sources:\n    - format: pairs\n      path: /a\n", encoding="utf-8")
    cfg = load_config(
        f, ["train.epochs=3", "data.sources.0.path=/b", "augment.enabled=false", "model.spacing_xyz_mm=[1, 1, 2]"]
    )
    assert cfg.train.epochs == 3 and cfg.data.sources[0].path == "/b" and cfg.augment.enabled is False
    assert cfg.model.spacing_xyz_mm == [1.0, 1.0, 2.0]
    with pytest.raises(ConfigError):
        load_config(f, ["train.epochs=many"])
    with pytest.raises(ConfigError):
        load_config(f, ["data.sources.3.path=/c"])
    with pytest.raises(ConfigError, match="multiple"):
        load_config(None, ["model.patch_size_zyx=[20, 100, 128]"])  # 100 is not a multiple of 8


# --- targets -------------------------------------------------------------------


def _zonal_label():
    lab = np.zeros((2, 4, 6), np.uint8)
    lab[:, 1:3, 1:3] = 1  # PZ
    lab[:, 1:3, 3:5] = 2  # TZ
    return lab


def test_targets_follow_the_models_structure_order():
    lab = _zonal_label()
    t, kind = targets_for(lab, {1: "pz", 2: "tz"}, ["peripheral_zone", "transition_zone"])
    assert kind == FULL and np.array_equal(t, lab)
    t, kind = targets_for(lab, {1: "pz", 2: "tz"}, ["transition_zone", "peripheral_zone"])
    assert kind == FULL and np.array_equal(t == 1, lab == 2) and np.array_equal(t == 2, lab == 1)


def test_targets_merge_zones_for_a_gland_model_and_mark_gland_only_cases():
    lab = _zonal_label()
    t, kind = targets_for(lab, {1: "pz", 2: "tz"}, ["prostate"])
    assert kind == FULL and np.array_equal(t, (lab > 0).astype(np.uint8))
    gland = (lab > 0).astype(np.uint8) * 7
    t, kind = targets_for(gland, {7: "whole_gland"}, ["peripheral_zone", "transition_zone"])
    assert kind == GLAND and set(np.unique(t)) == {0, 1} and t.sum() == (lab > 0).sum()
    with pytest.raises(ValueError, match="cannot supervise"):
        targets_for(lab, {1: "pz"}, ["prostate"])  # the PZ alone is not the gland


# --- loss ----------------------------------------------------------------------


def _onehot_logits(target: torch.Tensor, classes: int, margin: float = 20.0) -> torch.Tensor:
    """Logits ``(N, C, z, y, x)`` that put ``margin`` on each voxel's target class."""
    return torch.nn.functional.one_hot(target[:, 0], classes).permute(0, 4, 1, 2, 3).float() * margin


def test_loss_is_small_for_right_and_large_for_wrong_logits():
    loss = PartialLabelDiceCE()
    target = torch.from_numpy(_zonal_label()).long()[None, None].repeat(2, 1, 1, 1, 1)
    gland_only = torch.tensor([False, False])
    right = loss(_onehot_logits(target, 3), target, gland_only)
    wrong = loss(_onehot_logits((target + 1) % 3, 3), target, gland_only)
    assert float(right) < 0.05 and float(wrong) > 1.0


def test_dice_ce_is_monais_dice_ce_bit_for_bit():
    """Training needs no MONAI: its Dice + cross-entropy is MONAI's DiceCELoss, value and gradient."""
    from monai.losses import DiceCELoss

    from training.losses import dice_ce

    reference = DiceCELoss(to_onehot_y=True, softmax=True, batch=False)
    g = torch.Generator().manual_seed(0)
    for classes in (2, 3):
        logits = torch.randn(3, classes, 4, 8, 8, generator=g) * 3
        target = torch.randint(0, classes, (3, 1, 4, 8, 8), generator=g)
        target[0] = 0  # a patch without foreground
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        want, got = reference(a, target), dice_ce(b, target)
        want.backward()
        got.backward()
        assert got.item() == want.item() and torch.equal(a.grad, b.grad)
        assert got.item() > 0.5  # random logits: far from a perfect score


def test_gland_only_cases_do_not_care_how_the_gland_splits_into_zones():
    loss = PartialLabelDiceCE()
    zones = torch.from_numpy(_zonal_label()).long()[None, None]
    gland = (zones > 0).long()
    logits = _onehot_logits(zones, 3, margin=3.0) + 0.1 * torch.randn(
        1, 3, *zones.shape[2:], generator=torch.Generator().manual_seed(0)
    )
    swapped = logits[:, [0, 2, 1]]  # PZ and TZ exchanged: same gland
    only = torch.tensor([True])
    assert float(loss(logits, gland, only)) == pytest.approx(float(loss(swapped, gland, only)), rel=1e-5)
    full = torch.tensor([False])
    assert float(loss(logits, zones, full)) < float(loss(swapped, zones, full)) - 0.5


def test_a_few_steps_on_one_batch_lower_the_loss():
    from UNetSegmentLib.network import UNet3D, UNet3DConfig

    torch.manual_seed(0)
    net = UNet3D(UNet3DConfig(1, 3, 4, ((1, 2, 2), (2, 2, 2)), "same", "batch"))
    target = torch.zeros(2, 1, 4, 16, 16, dtype=torch.long)
    target[:, :, 1:3, 4:12, 4:8] = 1
    target[:, :, 1:3, 4:12, 8:12] = 2
    image = target.float() + 0.1 * torch.randn(target.shape)
    gland_only = torch.tensor([False, True])
    gland_target = torch.where(gland_only[:, None, None, None, None], (target > 0).long(), target)
    loss_fn = PartialLabelDiceCE()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(8):
        loss = loss_fn(net(image), gland_target, gland_only)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]


def _gland_with_small_base() -> torch.Tensor:
    """(1, 1, 8, 16, 16): a gland in slices 1-6 whose base (slice 6) is a 2 x 2 voxel sliver."""
    t = torch.zeros(1, 1, 8, 16, 16, dtype=torch.long)
    t[0, 0, 1:6, 3:13, 3:13] = 1
    t[0, 0, 6, 7:9, 7:9] = 1
    return t


def test_slice_presence_weighs_a_missed_base_slice_that_dice_barely_sees():
    target = _gland_with_small_base()
    exact = _onehot_logits(target, 2, margin=6.0)
    no_base = target.clone()
    no_base[0, 0, 6] = 0
    missed = _onehot_logits(no_base, 2, margin=6.0)
    beyond = target.clone()
    beyond[0, 0, 7, 7:9, 7:9] = 1  # one slice past the labelled base
    over = _onehot_logits(beyond, 2, margin=6.0)
    only = torch.tensor([True])
    plain = PartialLabelDiceCE()
    presence_gap = float(slice_presence_loss(missed, target) - slice_presence_loss(exact, target))
    dice_ce_gap = float(plain(missed, target, only) - plain(exact, target, only))
    assert presence_gap > 0.5 and dice_ce_gap < 0.1 * presence_gap
    assert float(slice_presence_loss(over, target)) > float(slice_presence_loss(exact, target)) + 0.5
    # zonal logits: any foreground class counts as presence
    zonal = torch.cat([exact[:, :1], exact[:, 1:] - 1.0, exact[:, 1:] - 1.0], dim=1)
    assert float(slice_presence_loss(zonal, target)) < 0.1


def test_slice_weights_split_labelled_and_unlabelled_slices():
    target = _gland_with_small_base()
    logits = torch.randn(1, 2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    only = torch.tensor([True])
    base = float(PartialLabelDiceCE()(logits, target, only))
    assert float(PartialLabelDiceCE(0.0, 0.0)(logits, target, only)) == pytest.approx(base)
    both = float(slice_presence_loss(logits, target))
    labelled = float(slice_presence_loss(logits, target, 1.0, 0.0))
    unlabelled = float(slice_presence_loss(logits, target, 0.0, 1.0))
    assert labelled > 0 and unlabelled > 0 and labelled + unlabelled == pytest.approx(both, rel=1e-5)
    assert float(PartialLabelDiceCE(0.5, 0.5)(logits, target, only)) == pytest.approx(base + 0.5 * both, rel=1e-5)
    assert float(PartialLabelDiceCE(2.0)(logits, target, only)) == pytest.approx(base + 2 * labelled, rel=1e-5)
    # one-sided: a gland predicted past the labelled base costs nothing (a missed base slice costs:
    # test_slice_presence_weighs_a_missed_base_slice_that_dice_barely_sees)
    beyond = target.clone()
    beyond[0, 0, 7, 7:9, 7:9] = 1
    exact, over = _onehot_logits(target, 2, margin=6.0), _onehot_logits(beyond, 2, margin=6.0)
    assert float(slice_presence_loss(over, target, 1.0, 0.0)) == pytest.approx(
        float(slice_presence_loss(exact, target, 1.0, 0.0)), abs=1e-6
    )
    with pytest.raises(ValueError, match="slice_absence_weight"):
        PartialLabelDiceCE(0.0, -1.0)
    with pytest.raises(ConfigError, match="slice_presence_weight"):
        load_config(None, ["train.slice_presence_weight=-0.5"])
    c = load_config(REPO / "training" / "configs" / "default_wholegland_presence.yaml").train
    d = load_config(REPO / "training" / "configs" / "default_wholegland_presence_onesided.yaml").train
    assert (c.slice_presence_weight, c.slice_absence_weight) == (1.0, 1.0)
    assert (d.slice_presence_weight, d.slice_absence_weight) == (1.0, 0.0)


# --- a tiny run -------------------------------------------------------------------


def _tiny_config(tmp: Path, epochs: int = 1, out: str = "run") -> Path:
    from conftest import tiny_experiment, write_pairs

    data = tmp / "pairs"
    if not data.exists():
        write_pairs(data, 3)
    source = {"format": "pairs", "path": str(data), "label_map": {1: "prostate"}, "validation": ["c2"]}
    cfg = tiny_experiment("tiny", tmp / out, source, epochs=epochs)
    cfg["data"]["cache_dir"] = str(tmp / "cache")
    cfg["augment"] = {"rotate_deg": 10, "scale": 0.1}
    f = tmp / f"{out}.yaml"
    f.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of a tiny run: its folder."""
    from training.trainer import run

    tmp = tmp_path_factory.mktemp("tiny_run")
    return run(load_config(_tiny_config(tmp)))


def test_a_run_writes_its_folder(tiny_run):
    for name in ("config.yaml", "split.csv", "log.csv", "best.pt", "last.pt", "summary.json", "versions.json"):
        assert (tiny_run / name).is_file(), name
    with open(tiny_run / "split.csv", newline="", encoding="utf-8") as f:
        split = {r["case_id"]: r["split"] for r in csv.DictReader(f)}
    assert split == {"c0": "train", "c1": "train", "c2": "validation"}
    with open(tiny_run / "log.csv", newline="", encoding="utf-8") as f:
        logged = {r["key"]: float(r["value"]) for r in csv.DictReader(f) if r["epoch"] == "1"}
    assert {"train_loss", "lr", "val_dice_prostate", "val_dice_mean", "val_slices_missed_gland"} <= set(logged)
    # a count of the validation case's labelled slices without a predicted gland voxel on them; the
    # count is taken on the model grid, whose z spacing (3 mm) is the fixture's, so the file's slices bound it
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_run.parent / "pairs" / "c2_label.nii.gz")))
    missed = logged["val_slices_missed_gland"]
    assert missed == int(missed) and 0 <= missed <= (ref > 0).any(axis=(1, 2)).sum()
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1 and 0.0 <= summary["best_val_dice"] <= 1.0
    assert load_config(tiny_run / "config.yaml").model.id == "tiny-run"  # the copied config reads back


def test_resume_restores_weights_optimizer_counters_and_rng(tiny_run, tmp_path):
    import shutil

    from training.trainer import build, fit

    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "copy"))
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    cfg = load_config(run_dir / "config.yaml", ["train.epochs=2", f"output_dir={run_dir}"])
    r = build(cfg, resume=True)
    assert (
        (r.epoch, r.best_dice, r.best_epoch)
        == (saved["epoch"], saved["best_dice"], saved["best_epoch"])
        == (1, saved["best_dice"], 1)
    )
    for k, v in r.model.state_dict().items():
        assert torch.equal(v.cpu(), saved["model"][k]), k
    opt = r.optimizer.state_dict()
    assert opt["param_groups"][0]["lr"] == saved["optimizer"]["param_groups"][0]["lr"]
    for i, st in saved["optimizer"]["state"].items():
        assert torch.equal(opt["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["rng"]["numpy"][1])
    fit(r)
    assert r.epoch == 2
    with open(run_dir / "log.csv", newline="", encoding="utf-8") as f:
        assert sorted({int(row["epoch"]) for row in csv.DictReader(f)}) == [1, 2]
    assert torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 2


def test_init_from_a_checkpoint_or_package_starts_a_fresh_schedule_from_those_weights(tiny_run, tmp_path):
    from training.config import ConfigError
    from training.export import export_run
    from training.trainer import build

    saved = torch.load(tiny_run / "last.pt", map_location="cpu", weights_only=False)
    package = export_run(tiny_run, tmp_path / "pkg", checkpoint="last.pt")
    for source in (tiny_run / "last.pt", package.path):
        cfg = load_config(
            tiny_run / "config.yaml", [f"train.init_from={source}", f"output_dir={tmp_path / ('ft-' + source.name)}"]
        )
        r = build(cfg, resume=False)
        assert (r.epoch, r.best_epoch) == (0, -1)  # a new run: epochs and schedule start afresh
        assert r.optimizer.state_dict()["state"] == {}
        for k, v in r.model.state_dict().items():
            assert torch.equal(v.cpu(), saved["model"][k]), k
    # the package records where its weights started
    ft = build(
        load_config(tiny_run / "config.yaml", [f"train.init_from={package.path}", f"output_dir={tmp_path / 'ft2'}"]),
        resume=False,
    )
    from training.trainer import fit

    fit(ft)
    assert export_run(ft.out, tmp_path / "ft-pkg").info.training["initialized_from"] == str(package.path)
    # an architecture that does not match, or a missing file, is a plain config error
    wider = load_config(
        tiny_run / "config.yaml", [f"train.init_from={package.path}", "model.base_channels=8", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="another architecture.*base_channels: 4 there, 8 in this config"):
        build(wider, resume=False)
    with pytest.raises(ConfigError, match="does not exist"):
        build(
            load_config(
                tiny_run / "config.yaml", [f"train.init_from={tmp_path / 'nope.pt'}", f"output_dir={tmp_path / 'x'}"]
            ),
            resume=False,
        )
    assert not (tmp_path / "x").exists()  # nothing written for a run that cannot start


def _weights_after_two_runs(tmp_path, overrides):
    from training.trainer import run

    out = []
    for name in ("a", "b"):
        cfg = load_config(_tiny_config(tmp_path, out=name), overrides)
        out.append(torch.load(run(cfg) / "last.pt", map_location="cpu", weights_only=False)["model"])
    return out


def test_same_seed_gives_the_same_weights(tmp_path):
    a, b = _weights_after_two_runs(tmp_path, ["augment.enabled=false"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_the_same_weights_with_augmentation(tmp_path):
    a, b = _weights_after_two_runs(tmp_path, [])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_round_trip(tiny_run, tmp_path):
    from training.export import catalogue_entry, export_run
    from UNetSegmentLib.inference import Predictor
    from UNetSegmentLib.model_package import ModelPackage

    metrics = {"dice_prostate": 0.5}
    pkg = export_run(tiny_run, tmp_path / "pkg", metrics)
    loaded = ModelPackage.load(tmp_path / "pkg")  # verifies the weights' sha256
    info = loaded.info
    assert info.id == "tiny-run" and info.structures == ["prostate"] and info.num_classes == 2
    assert info.preprocessing.spacing_xyz_mm == (3.0, 3.0, 3.0) and info.inference.patch_size_zyx == (8, 16, 16)
    assert info.training["metrics"] == metrics and info.training["data"]["validation_cases"] == ["c2"]
    assert info.inference.test_time_flips == ("x",)  # trained with left-right flips: safe to flip at test time
    assert info.training["data"]["sources"] == ["pairs"]
    best = torch.load(tiny_run / "best.pt", map_location="cpu", weights_only=False)["model"]
    net = loaded.build_network()
    assert all(torch.equal(v, best[k]) for k, v in net.state_dict().items())
    img = sitk.ReadImage(str(tiny_run.parent / "pairs" / "c2_image.nii.gz"))
    pred = Predictor(loaded, device="cpu").predict(img)
    assert pred.labelmap.GetSize() == img.GetSize() and pred.labelmap.GetSpacing() == img.GetSpacing()
    z = pkg.to_zip(tmp_path / "pkg.zip")
    entry = catalogue_entry(z, pkg, "https://example.org/pkg.zip")
    with zipfile.ZipFile(z) as f:
        assert {"model.json", "weights.safetensors"} <= set(f.namelist())
    assert entry["size"] == z.stat().st_size and len(entry["sha256"]) == 64 and entry["structures"] == ["prostate"]


@pytest.mark.parametrize(
    "overrides, flips",
    [([], ("x",)), (["augment.flip_x=false"], ()), (["augment.enabled=false"], ())],
)
def test_export_declares_only_the_flips_the_model_was_trained_with(tmp_path, overrides, flips):
    from training.export import trained_flips

    assert trained_flips(load_config(_tiny_config(tmp_path), overrides)) == flips


def test_export_cli_last_checkpoint_into_a_catalogue(tiny_run, tmp_path, capsys):
    from training.export import main
    from UNetSegmentLib.model_package import ModelPackage, sha256_file
    from UNetSegmentLib.store import load_catalogue

    catalogue = tmp_path / "catalogue.json"
    other = {
        "id": "other-model",
        "version": "2.0.0",
        "url": "https://example.org/o.zip",
        "sha256": "ab" * 32,
        "size": 1,
    }
    older = {"id": "tiny-run", "version": "0.0.0", "url": "https://example.org/t.zip", "sha256": "cd" * 32, "size": 1}
    catalogue.write_text(json.dumps({"format_version": 1, "models": [other, older]}), encoding="utf-8")
    out = tmp_path / "tiny-run"
    url = "https://example.org/tiny-run.zip"
    assert main([str(tiny_run), str(out), "--checkpoint", "last.pt", "--catalogue", str(catalogue), "--url", url]) == 0
    pkg = ModelPackage.load(out)
    last = torch.load(tiny_run / "last.pt", map_location="cpu", weights_only=False)
    assert pkg.info.training["checkpoint"] == "last.pt" and pkg.info.training["epochs"] == last["epoch"]
    assert all(torch.equal(v, last["model"][k]) for k, v in pkg.build_network().state_dict().items())
    listed = [(e.id, e.version) for e in load_catalogue(str(catalogue))]
    # the older release stays listed (a rollback: --model tiny-run@0.0.0), the other model untouched
    assert listed == [("other-model", "2.0.0"), ("tiny-run", "0.0.0"), ("tiny-run", pkg.info.version)]
    entries = {(e.id, e.version): e for e in load_catalogue(str(catalogue))}
    assert entries[("other-model", "2.0.0")].sha256 == "ab" * 32 and entries[("tiny-run", "0.0.0")].sha256 == "cd" * 32
    new = entries[("tiny-run", pkg.info.version)]
    assert (new.version, new.url) == (pkg.info.version, url)
    assert (new.sha256, new.size) == (sha256_file(out.with_suffix(".zip")), out.with_suffix(".zip").stat().st_size)
    # evaluation results recorded from evaluate.py folders
    from training.evaluate import summarize

    rows = [
        {"case_id": c, "structure": "prostate", "dice": d, "hd95_mm": 3.0, "asd_mm": 1.0, "seconds": 2.0}
        for c, d in (("a", 0.8), ("b", 0.9))
    ]
    for r in rows:
        r.update({k: 0.0 for k in ("volume_pred_ml", "volume_ref_ml", "volume_diff_ml", "volume_diff_pct")})
        r.update(components=1.0, ref_slices=5.0, slices_missed=0.0)
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({**summarize(rows), "data": "two cases"}), encoding="utf-8")
    card = tmp_path / "card.md"
    card.write_text("# Model card\n", encoding="utf-8")
    argv = [str(tiny_run), str(tmp_path / "with-eval"), "--eval", f"val={ev}", "--add", f"README.md={card}"]
    assert main(argv) == 0
    assert (tmp_path / "with-eval" / "README.md").read_text(encoding="utf-8") == "# Model card\n"
    recorded = ModelPackage.load(tmp_path / "with-eval").info.training["metrics"]["val"]
    assert recorded["dice"] == pytest.approx(0.85) and recorded["cases"] == ["a", "b"]
    assert recorded["structures"]["prostate"]["dice_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert main([str(tiny_run), str(tmp_path / "x"), "--eval", "no-equals-sign"]) == 1
    # the same weights re-packaged under a new version; a version that is not semantic is refused
    assert main([str(tiny_run), str(tmp_path / "v2"), "--version", "2.0.1"]) == 0
    assert ModelPackage.load(tmp_path / "v2").info.version == "2.0.1"
    assert main([str(tiny_run), str(tmp_path / "v3"), "--version", "latest"]) == 1
    # exporting a version the catalogue lists again replaces that entry, not adds a second one
    again = ["--catalogue", str(catalogue), "--url", "https://example.org/rebuilt.zip"]
    assert main([str(tiny_run), str(tmp_path / "rebuilt"), *again]) == 0
    relisted = {(e.id, e.version): e.url for e in load_catalogue(str(catalogue))}
    assert len(relisted) == 3 and relisted[("tiny-run", pkg.info.version)] == "https://example.org/rebuilt.zip"
    # a file that is not a catalogue is not overwritten
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": "none"}', encoding="utf-8")
    assert main([str(tiny_run), str(tmp_path / "again"), "--catalogue", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export.py:") and bad.read_text(encoding="utf-8") == '{"models": "none"}'


def test_init_seed_changes_the_weights_not_the_folds(tmp_path):
    """``train.init_seed`` gives a second initialisation on the same cross-validation split."""
    from conftest import tiny_experiment, write_pairs

    from training.trainer import run

    data = write_pairs(tmp_path / "pairs", 4)
    source = {"format": "pairs", "path": str(data), "label_map": {1: "prostate"}}
    outs = {}
    for name, init in (("plain", None), ("zero", 0), ("one", 1)):
        cfg = tiny_experiment(
            name, tmp_path / name, source, seed=0, **({"init_seed": init} if init is not None else {})
        )
        cfg["data"].update(folds=2, fold=1, cache_dir=str(tmp_path / "cache"))
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        out = run(load_config(f))
        split = (out / "split.csv").read_text(encoding="utf-8")
        outs[name] = (split, torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"])
    assert outs["plain"][0] == outs["zero"][0] == outs["one"][0]  # the same patients held out
    same = all(torch.equal(outs["plain"][1][k], outs["zero"][1][k]) for k in outs["plain"][1])
    differ = any(not torch.equal(outs["plain"][1][k], outs["one"][1][k]) for k in outs["plain"][1])
    assert same and differ  # init_seed 0 is train.seed 0; 1 is another network
