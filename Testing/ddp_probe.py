"""Run ``training/train.py`` under ``torchrun`` and record what each rank did (for test_distributed_training).

    torchrun --standalone --nproc_per_node 2 Testing/ddp_probe.py PROBE_DIR [train.py arguments]

The training code runs unchanged; the probe only watches it. Each rank writes
``PROBE_DIR/rank{R}.pt`` with:

- ``patches``: sha1 of every image patch the rank's sampler yielded;
- ``losses``: the rank's own loss at every step (before DDP averages anything);
- ``grads`` and ``lr``: the flattened gradient and the learning rate the optimizer stepped with;
- ``start_epoch`` and ``start_weights``: the state after ``build`` (a resumed run's checkpoint);
- ``weights``: the network's parameters when training ended (BatchNorm's running statistics are
  per rank: DDP broadcasts rank 0's at each forward, and only rank 0's are saved);
- ``writes``: files the rank opened for writing, or renamed into place, under the run folder
  (from a Python audit hook, so ``open``, ``torch.save``, numpy and TensorBoard all show).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

import training.dataset as dataset
import training.trainer as trainer
from training.config import load_config
from training.train import main, parse_args

probe_dir = Path(sys.argv[1])
argv = sys.argv[2:]
rank = int(os.environ["RANK"])
args = parse_args(argv)
out_dir = Path(load_config(args.config, args.overrides).output_dir).resolve()
record = {"patches": [], "losses": [], "grads": [], "lr": [], "writes": set()}


def _under_out(path) -> bool:
    if isinstance(path, int):
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(out_dir)
    except (TypeError, ValueError):
        return False


def _audit(event: str, a: tuple) -> None:
    if event == "open":
        path, mode, flags = a
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writing and _under_out(path):
            record["writes"].add(os.fsdecode(path))
    elif event == "os.rename" and _under_out(a[1]):
        record["writes"].add(os.fsdecode(a[1]))


sys.addaudithook(_audit)

_iter = dataset.PatchSampler.__iter__


def _watched_iter(self):
    for image, target, gland in _iter(self):
        record["patches"].append(hashlib.sha1(image.numpy().tobytes()).hexdigest())
        yield image, target, gland


dataset.PatchSampler.__iter__ = _watched_iter

_forward = trainer.PartialLabelDiceCE.forward


def _watched_forward(self, *a, **k):
    loss = _forward(self, *a, **k)
    record["losses"].append(float(loss.detach()))
    return loss


trainer.PartialLabelDiceCE.forward = _watched_forward

_build = trainer.build


def _watched_build(cfg, resume, pack=None):
    run = _build(cfg, resume, pack)
    record["start_epoch"] = run.epoch
    record["start_weights"] = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    record["model"] = run.model

    def before_step(optimizer, *_):
        grads = [p.grad.detach().flatten() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        record["grads"].append(torch.cat(grads).clone())
        record["lr"].append(optimizer.param_groups[0]["lr"])

    run.optimizer.register_step_pre_hook(before_step)
    return run


trainer.build = _watched_build

code = main(argv)
model = record.pop("model")
record["weights"] = {k: v.detach().clone() for k, v in model.named_parameters()}
record["writes"] = sorted(str(Path(p).resolve().relative_to(out_dir)) for p in record["writes"])
probe_dir.mkdir(parents=True, exist_ok=True)
torch.save(record, probe_dir / f"rank{rank}.pt")
sys.exit(code)
