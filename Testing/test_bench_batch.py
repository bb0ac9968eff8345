"""benchmarks/bench_batch.py: parsing, the ratios and scaling from given runs, and a tiny real run (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import synthetic_image

from benchmarks import bench_batch


def _run(wall_s: float, ok: int = 4, first: float = 10.0, last: float = 20.0) -> bench_batch.BatchRun:
    return bench_batch.BatchRun(wall_s, 2 * wall_s, 0, ok, ok, first, last, "")


def test_variants_are_plain_or_dask_n():
    assert bench_batch.parse_variants("plain,dask-1,dask-2") == ["plain", "dask-1", "dask-2"]
    for bad in ("plain,plain", "dask-0", "dask", "threads-2", ""):
        with pytest.raises(Exception):  # noqa: B017 - argparse.ArgumentTypeError
            bench_batch.parse_variants(bad)


def test_cases_per_minute_ratios_and_scaling_from_runs():
    runs = {
        "plain": [_run(60.0), _run(62.0)],
        "dask-1": [_run(80.0, first=30, last=60), _run(80.0, first=30, last=60)],
        "dask-2": [_run(48.0, first=30, last=45), _run(48.0, first=30, last=45)],
    }
    assert runs["plain"][0].cases_per_min == pytest.approx(4.0)  # 4 cases in a minute
    assert runs["dask-1"][0].steady_cases_per_min == pytest.approx(6.0)  # 3 intervals in 30 s
    summary = bench_batch.summarise(runs, "plain")
    assert summary["plain"]["speedup"] == 1.0
    plain_median = (240 / 60 + 240 / 62) / 2  # the median of the runs' cases/min
    assert summary["dask-2"]["speedup"] == pytest.approx((240 / 48) / plain_median)
    sc = bench_batch.scaling(summary)
    assert sc["workers"] == 2 and sc["speedup"] == pytest.approx(80 / 48) and sc["efficiency"] == pytest.approx(40 / 48)
    assert sc["speedup_steady"] == pytest.approx(2.0)
    assert bench_batch.scaling({"plain": summary["plain"]}) == {}


def test_threads_stated_per_variant():
    assert bench_batch.predictor_threads("dask-2", None, 2) == "1"
    assert bench_batch.predictor_threads("dask-1", None, 2) == "2"
    assert bench_batch.predictor_threads("dask-2", 3, 2) == "3"


@pytest.mark.slow  # ~20 s: two batch processes and a local cluster
def test_a_tiny_run_measures_every_variant_and_compares_the_labelmaps(tmp_path, tiny_package, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        sitk.WriteImage(synthetic_image(seed=i), str(src / f"c{i}.nrrd"))
    code = bench_batch.main(
        [
            "--input-dir", str(src), "--model", str(tiny_package.path), "--quality", "fast",
            "--variants", "plain,dask-1", "--repeats", "1", "--warmup", "0",
            "--out-dir", str(tmp_path / "results"), "--tag", "smoke",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (result,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "results").glob("batch-smoke-*.json")]
    assert result["cases"] == ["c0", "c1", "c2"] and result["baseline"] == "plain"
    for v in ("plain", "dask-1"):
        run = result["runs"][v][0]
        assert run["ok"] == 3 and run["returncode"] == 0 and run["cpu_s"] > 0
        assert result["variants"][v]["cases_per_min"]["median"] > 0
    assert result["dice_vs_baseline"] == {"plain": 1.0, "dask-1": 1.0}
    assert "--workers 1" in result["commands"]["dask-1"] and "--workers" not in result["commands"]["plain"]
    assert result["environment"]["cpu"] and "instruction_sets" in result["environment"]
    assert "cases/min" in capsys.readouterr().out
    assert Path(result["input_dir"]) == src
