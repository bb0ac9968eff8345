"""Training under ``torchrun --nproc_per_node 2`` on the CPU (gloo): data, gradients, files, resume.

Each launch runs ``training/train.py``'s ``main`` through ``Testing/ddp_probe.py``, which records
per rank the patches, losses, gradients, weights and the files written under the run folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def _torchrun(probe: Path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(REPO / "Testing" / "ddp_probe.py"), str(probe), *args]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _load(probe: Path) -> tuple:
    return tuple(torch.load(probe / f"rank{r}.pt", weights_only=False) for r in (0, 1))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One epoch of the tiny config on two processes, then ``--resume`` to a second epoch."""
    from conftest import tiny_experiment, write_pairs

    tmp = tmp_path_factory.mktemp("ddp")
    data = write_pairs(tmp / "pairs", 4)
    source = {"format": "pairs", "path": str(data), "label_map": {1: "prostate"}, "validation": ["c3"]}
    # a time limit far off: the learning rate then decays with the elapsed time too, on every rank alike
    cfg = tiny_experiment("ddp", tmp / "run", source, iterations_per_epoch=3, num_threads=1, time_limit_min=30)
    cfg["data"]["cache_dir"] = str(tmp / "cache")
    config = tmp / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    first = _torchrun(tmp / "probe1", "--config", str(config))
    snapshot = tmp / "after_epoch_1"
    shutil.copytree(tmp / "run", snapshot)
    resumed = _torchrun(tmp / "probe2", "--config", str(config), "--resume", "train.epochs=2")
    return {
        "run": tmp / "run",
        "after_epoch_1": snapshot,
        "first": _load(tmp / "probe1"),
        "resumed": _load(tmp / "probe2"),
        "stdout": (first.stdout + first.stderr, resumed.stdout + resumed.stderr),
    }


def test_each_rank_trains_on_its_own_patches(two_process_run):
    r0, r1 = two_process_run["first"]
    # 3 steps of a batch of 2 each; the DataLoader may prefetch, never fewer
    assert len(r0["patches"]) >= 6 and len(r1["patches"]) >= 6
    assert not set(r0["patches"]) & set(r1["patches"])
    assert r0["losses"] != r1["losses"]


def test_gradients_are_averaged_so_the_weights_stay_identical(two_process_run):
    for r0, r1 in (two_process_run["first"], two_process_run["resumed"]):
        assert len(r0["grads"]) == len(r1["grads"]) == 3
        for g0, g1 in zip(r0["grads"], r1["grads"]):
            assert torch.equal(g0, g1)  # different losses, one gradient: DDP's all-reduce
            assert g0.abs().sum() > 0
        # one learning rate: the time-based decay is agreed between the ranks, not read off each one's clock
        assert r0["lr"] == r1["lr"] and all(0 < lr < 0.01 for lr in r0["lr"])
        assert r0["weights"].keys() == r1["weights"].keys()
        for k, w in r0["weights"].items():
            assert torch.equal(w, r1["weights"][k]), k
    # training moved the weights
    r0, _ = two_process_run["first"]
    moved = sum(float((r0["weights"][k] - r0["start_weights"][k]).abs().sum()) for k in r0["weights"])
    assert moved > 0


def test_only_rank_0_writes_the_run_folder_and_logs(two_process_run):
    for r0, r1 in (two_process_run["first"], two_process_run["resumed"]):
        assert r1["writes"] == []
        written = set(r0["writes"])
        assert {"last.pt", "best.pt", "log.csv", "config.yaml", "split.csv", "summary.json"} <= written
        assert any(w.startswith("tensorboard/") for w in written) or not _has_tensorboard()
    first_out, resumed_out = two_process_run["stdout"]
    for text, epoch in ((first_out, 1), (resumed_out, 2)):
        assert text.count("run folder:") == 1  # printed by rank 0 only
        assert text.count(f"INFO epoch {epoch}:") == 1 and "rank 1" not in text
    log = (two_process_run["run"] / "log.csv").read_text(encoding="utf-8").splitlines()
    train_loss = [line for line in log if ",train_loss," in line]
    assert [line.split(",")[0] for line in train_loss] == ["1", "2"]  # one row per epoch, not one per rank


def test_resume_continues_on_both_ranks_from_rank_0s_checkpoint(two_process_run):
    saved = torch.load(two_process_run["after_epoch_1"] / "last.pt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1
    first0, _ = two_process_run["first"]
    for rank in two_process_run["resumed"]:
        assert rank["start_epoch"] == 1
        for k, w in rank["start_weights"].items():
            assert torch.equal(w, saved["model"][k]), k
            assert torch.equal(w, first0["weights"][k]), k  # where the first launch stopped
    r0, r1 = two_process_run["resumed"]
    assert not set(r0["patches"]) & set(r1["patches"])
    final = torch.load(two_process_run["run"] / "last.pt", map_location="cpu", weights_only=False)
    assert final["epoch"] == 2
    for k, w in r0["weights"].items():
        assert torch.equal(final["model"][k], w), k


def _has_tensorboard() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
