"""Data packs (training/pack.py), training from one without SimpleITK or MONAI, and the device round trip
of a cross-validation (crossval.py run --pack --parallel --train-only, archive, restore, evaluation here)."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tiny_experiment, write_pairs

from training.config import ConfigError, load_config
from training.data.registry import config_cases, read_source
from training.dataset import load_volume
from training.pack import Pack, dequantize, quantize, write_pack
from training.trainer import preprocessing_spec

#: runs a script with SimpleITK and MONAI unimportable, as on the lent GPU machine
BLOCKED = """
import runpy, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("SimpleITK", "monai"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    assert not {"SimpleITK", "monai"} & set(sys.modules), "imported after all"
"""


def _two_sources(tmp: Path) -> list:
    """A gland-only source (pairs) and a zonal one (synthetic), for a zonal model: both kinds of case."""
    pairs = write_pairs(tmp / "pairs", 4, prefix="p")
    return [
        {"format": "pairs", "path": str(pairs), "label_map": {1: "prostate"}},
        {"format": "synthetic", "path": str(tmp / "synthetic"), "num_cases": 3, "seed": 5, "use_for_validation": False},
    ]


def _config(tmp: Path, name: str = "tiny", sources=None, structures=("peripheral_zone", "transition_zone"), **train):
    cfg = tiny_experiment(name, tmp / "run" / name, {}, **train)
    cfg["data"] = {"sources": sources if sources is not None else _two_sources(tmp), "cache_dir": str(tmp / "cache")}
    cfg["model"]["structures"] = list(structures)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_quantisation_keeps_the_minimum_and_stays_within_half_a_step():
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 1, (5, 7, 9)) * 1.7).astype(np.float32)
    image[0, 0, :3] = image.min()  # the clipped background: many voxels at the minimum
    step = 2.0**-10
    q, lo = quantize(image, step)
    back = dequantize(q, lo, step)
    assert q.dtype == np.uint16 and back.dtype == np.float32
    assert back.min() == image.min() and np.all(back[0, 0, :3] == image.min())  # the padding value, exactly
    assert np.abs(back - image).max() <= step / 2 + 1e-6
    assert np.abs(back - image).max() > step / 8  # really quantised
    with pytest.raises(ValueError, match="65536 steps"):
        quantize(np.array([0.0, 100.0], np.float32), step)


@pytest.mark.parametrize("bits", [10, None])
def test_pack_round_trip_gives_load_volumes_cases_and_volumes(tmp_path, bits):
    cfg = load_config(_config(tmp_path))
    index = write_pack(tmp_path / "data.pack", [cfg], tmp_path / "cache", bits=bits, log=lambda *_: None)
    pack = Pack(tmp_path / "data.pack")
    spec = preprocessing_spec(cfg)
    kinds = set()
    for src in cfg.data.sources:
        cases = read_source(src)
        assert pack.reader(src) == cases  # every field, in the reader's order
        for case in cases:
            ref = load_volume(case, spec, cfg.model.structures, tmp_path / "cache")
            got = pack.volume(case)
            assert got.case == case and got.kind == ref.kind and got.image.dtype == np.float32
            assert np.array_equal(got.target, ref.target) and got.target.dtype == np.uint8
            if bits is None:
                assert np.array_equal(got.image, ref.image)
            else:
                assert np.abs(got.image - ref.image).max() <= 2.0 ** -(bits + 1) + 1e-6
                assert got.image.min() == ref.image.min()  # the sampler pads with it
            kinds.add(got.kind)
    assert kinds == {"gland", "full"}
    assert index["image_step"] == (0.0 if bits is None else 2.0**-bits) == pack.index["image_step"]
    assert pack.max_abs_error <= (0.0 if bits is None else 2.0 ** -(bits + 1) + 1e-6)
    assert len(pack.sha256) == 64 and pack.record()["volumes"] == 7


def test_pack_refuses_configs_it_was_not_made_for(tmp_path):
    cfg = load_config(_config(tmp_path))
    write_pack(tmp_path / "data.pack", [cfg], tmp_path / "cache", log=lambda *_: None)
    pack = Pack(tmp_path / "data.pack")
    pack.check(cfg)
    pack.check(load_config(_config(tmp_path), ["data.folds=2", "train.epochs=9"]))  # splits and training: any
    pack.check(load_config(_config(tmp_path), ["data.sources.0.weight=0", "data.sources.1.use_for_validation=true"]))
    with pytest.raises(ConfigError, match="other preprocessing"):
        pack.check(load_config(_config(tmp_path), ["model.spacing_xyz_mm=[2, 2, 3]"]))
    with pytest.raises(ValueError, match="does not hold the synthetic source"):
        pack.check(load_config(_config(tmp_path), ["data.sources.1.num_cases=4"]))
    with pytest.raises(ConfigError, match="preprocesses differently"):
        write_pack(tmp_path / "x.pack", [cfg, load_config(_config(tmp_path), ["model.structures=[prostate]"])], "c")
    (tmp_path / "not.pack").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a data pack"):
        Pack(tmp_path / "not.pack")


def test_the_folds_and_splits_from_a_pack_are_those_from_the_sources(tmp_path):
    cfg_path = _config(tmp_path)
    write_pack(tmp_path / "data.pack", [load_config(cfg_path)], tmp_path / "cache", log=lambda *_: None)
    pack = Pack(tmp_path / "data.pack")
    held = []
    for fold in range(3):
        cfg = load_config(cfg_path, ["data.folds=3", f"data.fold={fold}"])
        from_sources, from_pack = config_cases(cfg), config_cases(cfg, pack.reader)
        assert from_pack == from_sources
        held.append(sorted(c.case_id for c in from_pack if c.split == "validation"))
    assert sorted(sum(held, [])) == ["p0", "p1", "p2", "p3"]  # the synthetic source stays in training
    cfg = load_config(cfg_path, ["data.folds=3", "data.fold=1", "data.sources.0.weight=0"])  # scored, never trained
    assert config_cases(cfg, pack.reader) == config_cases(cfg) and {c.weight for c in config_cases(cfg)} == {0.0, 1.0}
    cfg = load_config(cfg_path, ["data.validation_per_group=1"])  # no folds: validation per centre
    assert config_cases(cfg, pack.reader) == config_cases(cfg)
    assert any(c.split == "validation" for c in config_cases(cfg, pack.reader))


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_issue20_recipe_folds_from_its_pack_are_those_from_the_sources(shared_data, tmp_path):
    from training.crossval import check_same_split, stage_configs
    from training.pack import open_pack

    configs = [
        str(REPO / "training" / "configs" / f"{name}.yaml")
        for name in ("default_wholegland", "default_wholegland_finetune", "default_wholegland_presence_onesided")
    ]
    overrides = [f"data.sources.0.path={shared_data / 'promise12'}", f"data.sources.1.path={tmp_path / 'synthetic'}"]
    overrides.append(f"data.sources.2={{format: prostatex, path: {shared_data / 'prostatex'}, weight: 0}}")  # B0
    cfgs = [load_config(c, overrides) for c in configs]
    index = write_pack(tmp_path / "p.pack", cfgs, tmp_path / "cache", log=lambda *_: None)
    # 36 PROMISE12 + 8 synthetic + ProstateX-0000, beside the repository's ~13 MiB within the device's 64 MiB
    assert len(index["volumes"]) == 45 and index["bytes"] < 46 * 2**20
    reader = open_pack(tmp_path / "p.pack").reader
    held = []
    for fold in range(4):
        stages = stage_configs(configs, overrides, tmp_path / "cv", 4, fold)
        assert check_same_split(stages, reader) == check_same_split(stages)
        assert config_cases(stages[0], reader) == config_cases(stages[0])
        held.append(check_same_split(stages, reader))
    assert len(sum(held, [])) == 37 and "ProstateX-0000" in sum(held, [])  # every patient scored once


def test_training_from_a_pack_needs_neither_simpleitk_nor_monai(tmp_path):
    from training.trainer import run

    cfg_path = _config(tmp_path, epochs=2, structures=("prostate",), num_threads=1)
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg["augment"] = {"on_device": True, "rotate_deg": 10}
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert (
        subprocess.run(
            [
                sys.executable,
                "training/pack.py",
                "-o",
                str(tmp_path / "exact.pack"),
                "--config",
                str(cfg_path),
                "--lossless",
            ],
            cwd=REPO,
            capture_output=True,
        ).returncode
        == 0
    )
    out = tmp_path / "blocked"
    argv = ["training/train.py", "--config", str(cfg_path), "--pack", str(tmp_path / "exact.pack"), f"output_dir={out}"]
    done = subprocess.run([sys.executable, "-c", BLOCKED, *argv], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    versions = json.loads((out / "versions.json").read_text(encoding="utf-8"))
    assert versions["monai"] == versions["SimpleITK"] == "not installed"
    assert json.loads((out / "pack.json").read_text(encoding="utf-8"))["image_step"] == 0.0
    # the same run from the sources (with SimpleITK) trains on the same cases to the same weights
    ref = run(load_config(cfg_path, [f"output_dir={tmp_path / 'sources'}"]))
    with (
        open(out / "split.csv", newline="", encoding="utf-8") as a,
        open(ref / "split.csv", newline="", encoding="utf-8") as b,
    ):
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))
    got = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"]
    want = torch.load(ref / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    # a pack without the config's sources is refused in one line
    other = subprocess.run(
        [sys.executable, "-c", BLOCKED, *argv[:-1], f"output_dir={tmp_path / 'x'}", "data.sources.1.seed=6"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1 and "does not hold the synthetic source" in other.stderr


def test_stage_time_limits_share_the_budget_by_patches_and_are_not_part_of_the_recipe(tmp_path):
    from training.crossval import same_recipe, with_budget

    base = _config(tmp_path, structures=("prostate",))
    stages = [
        load_config(base, ["train.epochs=200", "train.iterations_per_epoch=50"]),
        load_config(base, ["train.epochs=80", "train.iterations_per_epoch=50", "train.time_limit_min=1"]),
        load_config(base, ["train.epochs=45", "train.iterations_per_epoch=25", "train.batch_size=4"]),
    ]
    limits = [s.train.time_limit_min for s in with_budget(stages, 6.5)]
    assert limits == [4.0, 1.0, 0.9]  # 20,000 / 8,000 / 4,500 patches of 32,500; the second keeps its own 1 min
    assert with_budget(stages, 0) == stages
    assert same_recipe(stages[0], with_budget(stages, 6.5)[0])
    assert not same_recipe(stages[0], load_config(base, ["train.epochs=200", "train.iterations_per_epoch=51"]))


def test_stage_times_of_parallel_chains_are_all_kept(tmp_path):
    from training.crossval import record_time

    threads = [threading.Thread(target=record_time, args=(tmp_path, f"fold{i}/s", 60.0 * i, "cpu")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = json.loads((tmp_path / "stage_times.json").read_text(encoding="utf-8"))
    assert sorted(times) == [f"fold{i}/s" for i in range(8)] and times["fold3/s"]["minutes"] == 3.0
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*tmp"))


def _fake_stage(run_dir: Path, epochs: int, finished: bool, weights: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: x\n", encoding="utf-8")
    (run_dir / "log.csv").write_text("epoch,key,value\n" + "".join(f"{e},lr,0.1\n" for e in range(1, epochs + 1)))
    (run_dir / "best.pt").write_bytes(b"not travelling")
    state = {
        "model": {"w": torch.full((300, 300), weights)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(300, 300)}}},
        "rng": {"torch": torch.get_rng_state()},
        "epoch": epochs,
    }
    torch.save(state, run_dir / "last.pt")
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"epochs": epochs}), encoding="utf-8")


def test_archive_round_trip(tmp_path, monkeypatch):
    from training.cv_archive import MANIFEST, archive, restore

    monkeypatch.chdir(tmp_path)
    out = Path("runs/cv")  # relative, as gpu_cv.sh gives it: the configs name it
    for fold in range(4):
        _fake_stage(out / f"fold{fold}" / "a", 10, True, 1.0)
        _fake_stage(out / f"fold{fold}" / "b", 5, fold != 3, 2.0 + fold)  # fold 3 stopped part-way
    _fake_stage(out / "final" / "a", 10, True, 7.0)
    (out / "logs").mkdir()
    (out / "logs" / "fold0.log").write_text("trained\n", encoding="utf-8")
    (out / "stage_times.json").write_text("{}", encoding="utf-8")
    (out / "cache").mkdir()
    (out / "cache" / "big.npz").write_bytes(b"0" * 100)
    files = archive(out, tmp_path / "device_out", max_files=7)
    assert len(files) == 7 and all(f.stat().st_size < 16 * 2**20 for f in files)
    manifest = json.loads((tmp_path / "device_out" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["stages"]["fold3/b"] == {"finished": False, "epochs": 5, "checkpoint": "resumable"}
    assert manifest["stages"]["fold0/b"] == {"finished": True, "epochs": 5, "checkpoint": "weights"}
    assert manifest["stages"]["fold0/a"] == {"finished": True, "epochs": 10}  # no checkpoint: b came after it

    shutil.move(str(out), "elsewhere")
    restored, _ = restore(tmp_path / "device_out")
    assert restored == out
    slim = torch.load(out / "fold0" / "b" / "last.pt", weights_only=False)
    assert (
        "optimizer" not in slim and "rng" not in slim and torch.equal(slim["model"]["w"], torch.full((300, 300), 2.0))
    )
    whole = torch.load(out / "fold3" / "b" / "last.pt", weights_only=False)
    assert "optimizer" in whole and whole["epoch"] == 5  # resumable
    assert not (out / "fold0" / "a" / "last.pt").exists() and not (out / "fold0" / "a" / "best.pt").exists()
    assert (out / "logs" / "fold0.log").read_text(encoding="utf-8") == "trained\n" and not (out / "cache").exists()
    # files already there are not overwritten; a damaged file is refused
    with pytest.raises(FileExistsError, match="already in"):
        restore(tmp_path / "device_out")
    restore(tmp_path / "device_out", force=True)
    damaged = tmp_path / "device_out" / "cv-fold1.tar.gz"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    with pytest.raises(ValueError, match="damaged"):
        restore(tmp_path / "device_out", force=True)

    # too big for what comes back (a base-16 network): the weights alone, then rounded to float16
    shutil.rmtree(out)
    shutil.move("elsewhere", str(out))
    torch.save(
        {**torch.load(out / "final" / "a" / "last.pt", weights_only=False), "model": {"w": weights_f32()}},
        out / "final" / "a" / "last.pt",
    )
    archive(out, tmp_path / "small", max_files=7, max_mib=0.3, max_total_mib=3.0)
    stages = json.loads((tmp_path / "small" / MANIFEST).read_text(encoding="utf-8"))["stages"]
    assert stages["fold3/b"]["checkpoint"] == stages["final/a"]["checkpoint"] == "weights (float16)"
    shutil.rmtree(out)
    restore(tmp_path / "small")
    final = torch.load(out / "final" / "a" / "last.pt", weights_only=False)["model"]["w"]
    assert final.dtype == torch.float32 and torch.equal(final, weights_f32().half().float())
    assert not torch.equal(final, weights_f32())  # rounded: the manifest says so
    with pytest.raises(ValueError, match="do not fit"):
        archive(out, tmp_path / "tiny", max_files=7, max_mib=0.1)


def weights_f32() -> torch.Tensor:
    return torch.randn(300, 300, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_parallel_training_from_a_pack_then_evaluation_here_without_retraining(tmp_path, monkeypatch, capsys):
    """The device's part (pack, 2 chains + final at once, train only, archive) and this machine's (restore, run)."""
    from training.crossval import main
    from training.evaluate import read_per_case

    monkeypatch.chdir(tmp_path)
    pairs = write_pairs(tmp_path / "pairs", 4, prefix="p")
    sources = [{"format": "pairs", "path": str(pairs), "label_map": {1: "prostate"}}]
    stages = [
        str(_config(tmp_path, name, sources, ("prostate",), iterations_per_epoch=1, num_threads=1))
        for name in ("first", "second")
    ]
    pack = tmp_path / "data.pack"
    write_pack(pack, [load_config(s) for s in stages], tmp_path / "cache", log=lambda *_: None)
    device = ["run", "-o", "runs/cv", "--folds", "2", "--config", stages[0], "--config", stages[1], "--final"]
    device += ["--train-only", "--parallel", "3", "--pack", str(pack), "--time-budget-min", "5"]
    device += ["augment.enabled=true", "augment.on_device=true"]
    assert main(device) == 0
    times = json.loads(Path("runs/cv/stage_times.json").read_text(encoding="utf-8"))
    assert set(times) == {f"{c}/{s}" for c in ("fold0", "fold1", "final") for s in ("first", "second")}
    assert {p.name for p in Path("runs/cv/logs").iterdir()} == {"fold0.log", "fold1.log", "final.log"}
    assert not Path("runs/cv/second").exists() and not list(Path("runs/cv").glob("fold0/*.eval"))  # trained only
    saved = yaml.safe_load(Path("runs/cv/fold1/second/config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["init_from"] == "runs/cv/fold1/first/last.pt" and saved["train"]["time_limit_min"] == 2.5
    assert json.loads(Path("runs/cv/fold1/second/pack.json").read_text(encoding="utf-8"))["volumes"] == 4
    record = json.loads(Path("runs/cv/cv_run.json").read_text(encoding="utf-8"))
    assert record["parallel"] == 3 and record["pack"] == str(pack)
    assert main(["archive", "-o", "runs/cv", str(tmp_path / "device_out"), "--max-files", "7"]) == 0

    # back here: only the archive, restored where it came from; the recorded command evaluates and pools
    shutil.rmtree("runs/cv")
    assert main(["restore", str(tmp_path / "device_out")]) == 0
    command = capsys.readouterr().out.split("evaluate and pool here with:\n")[1].splitlines()[0]
    assert "--pack" not in command and "--parallel" not in command and "--train-only" not in command
    stamps = {p: p.stat().st_mtime_ns for p in Path("runs/cv").glob("*/second/last.pt")}
    assert len(stamps) == 3
    assert main(shlex.split(command)[2:]) == 0  # python training/crossval.py run ...
    assert {p: p.stat().st_mtime_ns for p in Path("runs/cv").glob("*/second/last.pt")} == stamps  # not retrained
    pooled = read_per_case(Path("runs/cv/second/per_case.csv"))
    assert sorted(r["case_id"] for r in pooled) == ["p0", "p1", "p2", "p3"]
    assert Path("runs/cv/final/second.model/model.json").is_file()
    assert json.loads(Path("runs/cv/stage_times.json").read_text(encoding="utf-8")) == times
    assert json.loads(Path("runs/cv/cv_run.json").read_text(encoding="utf-8"))["parallel"] == 3  # how it trained
