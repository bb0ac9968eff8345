"""Per-source sampling weights: one 3 T case counted as several, or kept out of training but scored."""

from __future__ import annotations

import numpy as np
import pytest

from Testing.fixtures_datasets import make_promise12_mhd, make_prostatex
from training.config import ConfigError, DatasetSource, load_config
from training.data.registry import read_all
from training.dataset import FULL, PatchSampler, Volume


def _sources(tmp_path, weight):
    p12 = make_promise12_mhd(tmp_path / "p12", train_numbers=(0, 1, 13, 14, 38, 39), test_numbers=())
    px = make_prostatex(tmp_path / "px", patients=(0, 1), unlabelled=())
    return [
        DatasetSource(format="promise12", path=str(p12)),
        DatasetSource(format="prostatex", path=str(px), weight=weight),
    ]


def test_weights_reach_the_cases_and_leave_the_folds_alone(tmp_path):
    plain = read_all(_sources(tmp_path, 1.0), 0, seed=0, folds=4, fold=1)
    heavy = read_all(_sources(tmp_path, 3.0), 0, seed=0, folds=4, fold=1)
    assert {c.case_id: c.weight for c in heavy if c.source == "prostatex"} == {
        "ProstateX-0000": 3.0,
        "ProstateX-0001": 3.0,
    }
    assert all(c.weight == 1.0 for c in heavy if c.source == "promise12")
    # the same patients are held out whatever the weights: recipes with and without stay paired
    assert [(c.case_id, c.split) for c in plain] == [(c.case_id, c.split) for c in heavy]
    folds = set()
    for f in range(4):
        cases = read_all(_sources(tmp_path, 0.0), 0, seed=0, folds=4, fold=f)
        folds |= {c.case_id for c in cases if c.split == "validation"}
    assert {"ProstateX-0000", "ProstateX-0001"} <= folds  # weight 0: still scored in some fold


def _volume(case_id, weight, value):
    from training.data import Case

    image = np.full((8, 16, 16), value, np.float32)
    target = np.zeros(image.shape, np.uint8)
    target[2:6, 4:12, 4:12] = 1
    return Volume(Case(case_id, "", "x", {1: "prostate"}, weight=weight), image, target, FULL)


def _drawn(volumes, n=600, seed=0):
    it = iter(PatchSampler(volumes, (4, 8, 8), 0.5, None, seed=seed))
    return [int(next(it)[0][0, 0, 0, 0].item()) for _ in range(n)]


def test_the_sampler_draws_in_proportion_to_the_weights():
    counts = np.bincount(_drawn([_volume("a", 1.0, 0), _volume("b", 1.0, 1), _volume("x", 3.0, 2)]), minlength=3)
    assert counts.sum() == 600
    assert counts[2] / 600 == pytest.approx(0.6, abs=0.06)  # 3 of 5 shares
    assert counts[0] == pytest.approx(counts[1], abs=45)
    none = np.bincount(_drawn([_volume("a", 1.0, 0), _volume("x", 0.0, 1)]), minlength=2)
    assert none[1] == 0  # weight 0 never trains
    with pytest.raises(ValueError, match="weight 0"):
        PatchSampler([_volume("x", 0.0, 1)], (4, 8, 8), 0.5, None, seed=0)


def test_equal_weights_draw_the_same_patches_as_before():
    # equal weights of any size keep the unweighted random stream: old seeds reproduce old runs
    ones = _drawn([_volume("a", 1.0, 0), _volume("b", 1.0, 1), _volume("c", 1.0, 2)], n=50)
    twos = _drawn([_volume("a", 2.0, 0), _volume("b", 2.0, 1), _volume("c", 2.0, 2)], n=50)
    assert ones == twos and len(set(ones)) == 3


def test_weight_validation(tmp_path):
    with pytest.raises(ConfigError, match="weight must be 0 or more"):
        load_config(None, ["data.sources=[{format: promise12, path: x, weight: -1}]"])
    with pytest.raises(ConfigError, match="every source has weight 0"):
        load_config(None, ["data.sources=[{format: promise12, path: x, weight: 0}]"])
    cfg = load_config(
        None, ["data.sources=[{format: prostatex, path: x, weight: 3, reference: wholegland_AI_Guerbet23}]"]
    )
    assert cfg.data.sources[0].weight == 3.0 and cfg.data.sources[0].reference == "wholegland_AI_Guerbet23"


def test_an_override_one_past_the_end_appends_a_source():
    base = ["data.sources=[{format: promise12, path: p}]"]
    cfg = load_config(None, [*base, "data.sources.1={format: prostatex, path: x, weight: 0}"])
    assert [s.format for s in cfg.data.sources] == ["promise12", "prostatex"] and cfg.data.sources[1].weight == 0
    cfg = load_config(None, [*base, "data.sources.0.weight=2"])
    assert len(cfg.data.sources) == 1 and cfg.data.sources[0].weight == 2
    for bad in ("data.sources.2={format: prostatex}", "data.sources.1.weight=2", "data.sources.x=1"):
        with pytest.raises(ConfigError, match="is not an index of that list"):
            load_config(None, [*base, bad])
