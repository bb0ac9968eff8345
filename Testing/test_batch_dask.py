"""``unetsegment batch --scheduler / --workers`` on a Dask LocalCluster of 2 worker processes.

The real-data tests segment three small PROMISE12 cases (Case13, Case25, Case35) with the
shipped default model (``--quality fast``), once with the plain batch and once on the cluster,
with a worker killed while it segments Case25; then the batch is run again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, SHARED_DATA, synthetic_image

from UNetSegmentLib.cli import EXIT_INVALID_IMAGE, EXIT_OK, EXIT_USAGE, main

distributed = pytest.importorskip("distributed")

CASES = ("Case13", "Case25", "Case35")
DEFAULT_MODEL = REPO / "UNetSegmentLib" / "models" / "prostate-wholegland-t2"
FAST = ("--model", DEFAULT_MODEL, "--quality", "fast", "--offline", "--progress", "none")


class KillOnce(distributed.WorkerPlugin):
    """SIGKILLs the worker process ``delay_s`` after it starts the first task whose key names ``case``.

    ``marker`` (written before the kill) says which process died and whether the case's
    labelmap was already there, i.e. whether the worker died mid-case.
    """

    def __init__(self, case: str, marker: str, output: str, delay_s: float = 0.5) -> None:
        self.case, self.marker, self.output, self.delay_s = case, marker, output, delay_s

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "executing" or self.case not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # the first worker only
        except FileExistsError:
            return

        def kill():
            state = {"pid": os.getpid(), "output_existed": os.path.exists(self.output)}
            os.write(fd, json.dumps(state).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Timer(self.delay_s, kill).start()


def _batch(*argv) -> tuple:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def _rows(csv_path: Path) -> dict:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _labelmap(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, one task at a time each, as ``--workers 2`` makes."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as c,
        distributed.Client(c) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield c, client


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    for case in CASES:
        (folder / f"{case}.nii.gz").symlink_to(SHARED_DATA / "promise12" / f"{case}_image.nii.gz")
    return folder


@pytest.fixture(scope="module")
def plain_batch(real_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    code, _ = _batch("batch", real_cases, "-o", out, *FAST, "--threads", "1")
    assert code == EXIT_OK
    return out


@pytest.fixture(scope="module")
def dask_batch(real_cases, cluster, tmp_path_factory):
    """The batch on the cluster, a worker SIGKILLed 0.5 s into Case25."""
    _, client = cluster
    out = tmp_path_factory.mktemp("dask")
    marker = out.parent / "killed.json"
    victim = KillOnce("Case25", str(marker), str(out / "Case25_segmentation.nrrd"))
    client.register_plugin(victim, name="kill-once")
    try:
        code, stdout = _batch("batch", real_cases, "-o", out, *FAST, "--scheduler", cluster[0].scheduler_address)
    finally:
        client.unregister_worker_plugin("kill-once")
    return {"out": out, "code": code, "stdout": stdout, "killed": json.loads(marker.read_text(encoding="utf-8"))}


@pytest.mark.shared_data
def test_dask_batch_gives_the_plain_batchs_labelmaps(plain_batch, dask_batch):
    assert dask_batch["code"] == EXIT_OK, dask_batch["stdout"]
    plain_rows, dask_rows = _rows(plain_batch / "summary.csv"), _rows(dask_batch["out"] / "summary.csv")
    assert list(dask_rows) == list(CASES)  # the case order, whatever order the workers finished in
    for case in CASES:
        name = f"{case}_segmentation.nrrd"
        expected, got = _labelmap(plain_batch / name), _labelmap(dask_batch["out"] / name)
        assert expected.any() and np.array_equal(expected, got), case
        assert dask_rows[case]["status"] == "ok" and dask_rows[case]["prostate_ml"] == plain_rows[case]["prostate_ml"]


@pytest.mark.shared_data
def test_each_worker_built_one_predictor_with_its_share_of_the_cores(dask_batch, cluster):
    from UNetSegmentLib.cli.batch_dask import available_cores, built_predictors

    _, client = cluster
    built, cores = client.run(built_predictors), client.run(available_cores)
    # the worker alive since the start did at least one case (the killed one's replacement may have none)
    assert len(built) == 2 and any(built.values())
    for address, predictors in built.items():
        # at most one predictor per process, kept for its next cases; 2 workers x threads <= cores
        assert len(predictors) <= 1 and all(p[:2] == ("auto", max(1, cores[address] // 2)) for p in predictors)
    if all(p[2] != "torch" for ps in built.values() for p in ps):  # ONNX Runtime or OpenVINO on the CPU
        assert not any(client.run(_imports_torch).values())  # a CPU segmentation runs without torch


def _imports_torch() -> bool:
    return "torch" in sys.modules


@pytest.mark.shared_data
def test_a_worker_killed_mid_case_has_its_case_done_elsewhere(dask_batch, cluster):
    killed = dask_batch["killed"]
    assert killed["output_existed"] is False  # it died before Case25's labelmap was written
    assert killed["pid"] not in cluster[1].run(os.getpid).values()  # that process is gone
    assert _rows(dask_batch["out"] / "summary.csv")["Case25"]["status"] == "ok"
    leftovers = [p.name for p in dask_batch["out"].iterdir() if p.name.startswith(".") and p.is_file()]
    assert leftovers == []  # no half-written temporaries


@pytest.mark.shared_data
def test_a_second_run_skips_every_case_and_rewrites_nothing(real_cases, dask_batch):
    out = dask_batch["out"]
    labelmaps = sorted(out.glob("*_segmentation.nrrd"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in labelmaps}
    code, stdout = _batch("batch", real_cases, "-o", out, *FAST, "--workers", "2")
    assert code == EXIT_OK, stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in labelmaps} == before
    rows = _rows(out / "summary.csv")
    assert {r["status"] for r in rows.values()} == {"skipped"} and len(rows) == len(CASES)
    assert all(float(r["prostate_ml"]) > 0 for r in rows.values())  # the recorded results, kept in the summary
    assert "0 of 3 case(s) segmented" in stdout and "3 already done" in stdout


def test_a_changed_input_or_labelmap_is_segmented_again_and_failures_are_rows(tmp_path, tiny_package, cluster):
    src = tmp_path / "in"
    src.mkdir()
    for i in (1, 2):
        sitk.WriteImage(synthetic_image(seed=i), str(src / f"case{i}.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 64, 64), np.int16)), str(src / "flat.nrrd"))
    out = tmp_path / "out"
    args = ("batch", src, "-o", out, "--model", tiny_package.path, "--progress", "none")
    scheduler = ("--scheduler", cluster[0].scheduler_address)
    code, _ = _batch(*args, *scheduler)
    rows = _rows(out / "summary.csv")
    assert code == EXIT_INVALID_IMAGE
    assert {c: r["status"] for c, r in rows.items()} == {"case1": "ok", "case2": "ok", "flat": "failed"}
    assert rows["flat"]["exit_code"] == str(EXIT_INVALID_IMAGE) and "constant" in rows["flat"]["error"]

    sitk.WriteImage(synthetic_image(seed=3), str(src / "case1.nrrd"))  # a new scan under the same name
    labelmap2 = out / "case2_segmentation.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(labelmap2))  # a labelmap edited by hand
    code, _ = _batch(*args, *scheduler)
    rows = _rows(out / "summary.csv")
    # neither matches its record: not done, and the labelmaps are there, so without --overwrite they fail
    assert {c: r["status"] for c, r in rows.items()} == {"case1": "failed", "case2": "failed", "flat": "failed"}
    assert "already exists" in rows["case1"]["error"]
    code, _ = _batch(*args, *scheduler, "--overwrite")
    rows = _rows(out / "summary.csv")
    assert {c: r["status"] for c, r in rows.items()} == {"case1": "ok", "case2": "ok", "flat": "failed"}
    assert sitk.ReadImage(str(labelmap2)).GetSize() == sitk.ReadImage(str(src / "case2.nrrd")).GetSize()
    code, _ = _batch(*args, *scheduler)
    assert {c: r["status"] for c, r in _rows(out / "summary.csv").items()} == {
        "case1": "skipped",
        "case2": "skipped",
        "flat": "failed",  # a failed case is tried again on every run
    }


def test_without_dask_the_distributed_flags_are_a_usage_error_and_batch_runs_as_before(
    tmp_path, tiny_package, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(synthetic_image(seed=1), str(src / "case1.nrrd"))
    args = ("batch", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_package.path), "--progress", "none")
    assert main([*args, "--workers", "2"]) == EXIT_USAGE
    assert "pip install 'unetsegment[dask]'" in capsys.readouterr().err
    assert main(list(args)) == EXIT_OK
    assert (tmp_path / "out" / "case1_segmentation.nrrd").is_file()


def test_workers_and_scheduler_exclude_each_other(capsys):
    assert main(["batch", "in", "-o", "out", "--workers", "2", "--scheduler", "tcp://x:8786"]) == EXIT_USAGE
    assert "not allowed with" in capsys.readouterr().err


def test_one_gpu_per_worker_by_the_workers_number():
    from UNetSegmentLib.cli.batch_dask import gpu_for

    assert [gpu_for(i, 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]  # a local cluster's names
    assert gpu_for("node7-2", 4) == 2  # dask worker --nworkers: NAME-i
    assert gpu_for(0, 1) is None and gpu_for("tcp://10.0.0.1:4000", 2) is None


class KillAlways(distributed.WorkerPlugin):
    """SIGKILLs any worker process as soon as it starts a task whose key names ``case``."""

    def __init__(self, case: str) -> None:
        self.case = case

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "executing" and self.case in str(key):
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_case_that_kills_its_workers_is_a_failed_row_and_the_others_finish(tmp_path, tiny_package):
    import dask

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "poison"):
        sitk.WriteImage(synthetic_image(seed=len(name)), str(src / f"{name}.nrrd"))
    # no retry: the first lost worker makes the case bad (the default allows 3)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as c,
        distributed.Client(c) as client,
    ):
        client.register_plugin(KillAlways("poison"), name="kill-always")
        code, _ = _batch(
            "batch", src, "-o", tmp_path / "out", "--model", tiny_package.path, "--progress", "none",
            "--scheduler", c.scheduler_address,
        )  # fmt: skip
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"a": "ok", "b": "ok", "poison": "failed"}
    assert code == 1 and rows["poison"]["exit_code"] == "1" and "stopped every worker" in rows["poison"]["error"]


def test_threads_given_by_hand_warn_where_they_oversubscribe_a_host(caplog):
    from UNetSegmentLib.cli.batch_dask import _check_threads

    class TwoWorkersOnTwoCores:
        def scheduler_info(self, n_workers=5):
            return {"workers": {a: {"host": "h", "nthreads": 1} for a in ("tcp://h:1", "tcp://h:2")}}

        def run(self, fn):
            return {"tcp://h:1": 2, "tcp://h:2": 2}

    with caplog.at_level("WARNING", logger="UNetSegmentLib"):
        _check_threads(TwoWorkersOnTwoCores(), 1)
        assert not caplog.records
        _check_threads(TwoWorkersOnTwoCores(), 2)
    assert len(caplog.records) == 1 and "oversubscribes its 2 cores" in caplog.text


def test_the_extra_outputs_and_the_index_page_are_the_plain_batchs(tmp_path, tiny_package, cluster):
    pytest.importorskip("matplotlib")
    src = tmp_path / "in"
    src.mkdir()
    for i in (1, 2):
        sitk.WriteImage(synthetic_image(seed=i), str(src / f"case{i}.nrrd"))
    clinical = tmp_path / "psa.csv"
    clinical.write_text("case,psa\ncase1,6.5\ncase2,12\n", encoding="utf-8")
    args = ("--model", tiny_package.path, "--progress", "none", "--report", "--uncertainty", "--clinical", clinical)
    assert _batch("batch", src, "-o", tmp_path / "plain", *args)[0] == EXIT_OK
    code, _ = _batch("batch", src, "-o", tmp_path / "dask", *args, "--scheduler", cluster[0].scheduler_address)
    assert code == EXIT_OK
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert "index.html" in files and "case1_report.png" in files and "case2_uncertainty.nii.gz" in files
    assert sorted(p.name for p in (tmp_path / "dask").iterdir() if not p.name.startswith(".")) == files
    plain, dask_rows = _rows(tmp_path / "plain" / "summary.csv"), _rows(tmp_path / "dask" / "summary.csv")
    same = ("status", "prostate_ml", "gland_ml", "psa_ng_ml", "psa_density", "confidence", "flag_codes")
    for case in ("case1", "case2"):
        assert {k: dask_rows[case][k] for k in same} == {k: plain[case][k] for k in same}
    assert dask_rows["case2"]["psa_ng_ml"] == "12.0" or float(dask_rows["case2"]["psa_ng_ml"]) == 12.0
    assert "case1_report.png" in (tmp_path / "dask" / "index.html").read_text(encoding="utf-8")
