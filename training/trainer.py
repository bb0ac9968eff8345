"""A training run as a short list of named steps (see :func:`run`)."""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import yaml

from UNetSegmentLib.network import UNet3D, UNet3DConfig, count_parameters
from UNetSegmentLib.preprocessing import PreprocessingSpec
from UNetSegmentLib.runtime.torch_runtime import cpu_supports_bf16, resolve_device

from .config import ConfigError, ExperimentConfig, from_dict
from .data import Case
from .data.registry import config_cases
from .dataset import GLAND, PatchSampler, Volume, build_augment, load_volume
from .losses import PartialLabelDiceCE

log = logging.getLogger("training")


@dataclass
class Run:
    """Everything a training run holds while it runs."""

    cfg: ExperimentConfig
    out: Path
    device: torch.device
    bf16: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train: List[Volume]
    val: List[Volume]
    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    elapsed_s: float = 0.0
    rank: int = 0
    world: int = 1


def preprocessing_spec(cfg: ExperimentConfig) -> PreprocessingSpec:
    m = cfg.model
    return PreprocessingSpec(tuple(m.spacing_xyz_mm), "LPS", "zscore", tuple(m.clip_percentiles))  # type: ignore[arg-type]


def network_config(cfg: ExperimentConfig) -> UNet3DConfig:
    m = cfg.model
    return UNet3DConfig(
        1, len(m.structures) + 1, m.base_channels, tuple(tuple(p) for p in m.pool_sizes), m.padding, m.norm
    )  # type: ignore[arg-type]


def init_seed(cfg: ExperimentConfig) -> int:
    """The seed of the weights and the patches (``train.init_seed``, else ``train.seed``); not of the split."""
    return cfg.train.init_seed if cfg.train.init_seed >= 0 else cfg.train.seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def software_versions() -> Dict[str, str]:
    """Versions of what training used; MONAI and SimpleITK may be absent (training from a data pack)."""
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = "not installed"
    try:
        import SimpleITK

        sitk_version = SimpleITK.Version_VersionString()
    except ImportError:
        sitk_version = "not installed"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai_version,
        "SimpleITK": sitk_version,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def setup_distributed(cuda: bool) -> tuple:
    """(rank, world size); initialises the process group under ``torchrun``.

    ``cuda``: the run trains on GPUs: NCCL, one GPU per process (``LOCAL_RANK``); otherwise
    gloo, also on a machine that has GPUs (``train.device=cpu``).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        rank = torch.distributed.get_rank()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return rank, world
    return 0, 1


def barrier(run_or_world) -> None:
    """Wait for every process (no-op in a single process)."""
    world = run_or_world if isinstance(run_or_world, int) else run_or_world.world
    if world > 1:
        torch.distributed.barrier()


def agree_max(run: Run, value: float) -> float:
    """The largest ``value`` over the processes, so that every rank takes the same decision.

    Wall clocks differ between ranks: a time-limit stop or a time-based learning rate
    decided per rank would leave one rank waiting in an all-reduce, or the weights apart.
    """
    if run.world == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=run.device if run.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def mean_over_ranks(run: Run, value: float) -> float:
    """The mean of ``value`` over the processes (the logged training loss covers every rank's patches)."""
    if run.world == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=run.device if run.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return float(t.item()) / run.world


def load_data(cfg: ExperimentConfig, out: Path, rank: int = 0, world: int = 1, pack=None) -> tuple:
    """Read the sources, split by patient, and preprocess every case (cached).

    Under ``torchrun`` rank 0 fills the cache first and the other ranks then read it,
    so that no two processes preprocess (and write) the same case. ``pack``: a
    ``training.pack.Pack`` holding the cases and volumes instead (no sources, no SimpleITK).
    """
    if pack is not None:
        pack.check(cfg)
        cases = config_cases(cfg, pack.reader)
        train_cases = [c for c in cases if c.split == "train" and c.label]
        val_cases = [c for c in cases if c.split == "validation" and c.label]
        if not train_cases:
            raise ValueError("no labelled training cases in the configured sources")
        return cases, [pack.volume(c) for c in train_cases], [pack.volume(c) for c in val_cases]
    cases = config_cases(cfg)
    spec = preprocessing_spec(cfg)
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "cache"
    train_cases = [c for c in cases if c.split == "train" and c.label]
    val_cases = [c for c in cases if c.split == "validation" and c.label]
    if not train_cases:
        raise ValueError("no labelled training cases in the configured sources")
    from tqdm import tqdm

    if rank > 0:
        barrier(world)  # rank 0 is preprocessing
    vols = [
        load_volume(c, spec, cfg.model.structures, cache)
        for c in tqdm(train_cases + val_cases, desc="preprocessing", unit="case", disable=rank != 0 or None)
    ]
    if rank == 0:
        barrier(world)  # the cache is complete
    return cases, vols[: len(train_cases)], vols[len(train_cases) :]


def write_split(out: Path, cases: List[Case]) -> None:
    rows = [
        {
            "case_id": c.case_id,
            "split": c.split,
            "group": c.group,
            "source": c.source,
            "image": c.image,
            "label": c.label or "",
        }
        for c in cases
    ]
    with open(out / "split.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def build(cfg: ExperimentConfig, resume: bool, pack: Optional[Union[str, Path]] = None) -> Run:
    """The run of ``cfg``: data, network, optimizer (resumed from ``last.pt`` with ``resume``).

    ``pack``: train from this data pack (``training/pack.py``) instead of the sources.
    """
    data_pack = None
    if pack is not None:
        from .pack import open_pack

        data_pack = open_pack(pack)
    out = Path(cfg.output_dir)
    resuming = resume and (out / "last.pt").exists()
    init = initial_weights(cfg) if cfg.train.init_from and not resuming else None  # checked before writing
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    rank, world = setup_distributed(device.type == "cuda")
    seed_everything(init_seed(cfg) + rank)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        # fixed patch shapes: let cuDNN pick its fastest convolutions (+40 % patches/s on an H200)
        torch.backends.cudnn.benchmark = True
    bf16 = cfg.train.precision == "bfloat16" or (
        cfg.train.precision == "auto" and (device.type == "cuda" or cpu_supports_bf16())
    )
    cases, train, val = load_data(cfg, out, rank, world, data_pack)
    if rank == 0:
        write_split(out, cases)
        if data_pack is not None:
            (out / "pack.json").write_text(json.dumps(data_pack.record(), indent=2), encoding="utf-8")
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        (out / "versions.json").write_text(json.dumps(software_versions(), indent=2), encoding="utf-8")
    model = UNet3D(network_config(cfg)).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.learning_rate,
        momentum=0.99,
        nesterov=True,
        weight_decay=cfg.train.weight_decay,
    )
    run = Run(cfg, out, device, bf16, model, optimizer, train, val, rank=rank, world=world)
    log.info(
        "%d training and %d validation cases; %s parameters; device %s%s",
        len(train),
        len(val),
        f"{count_parameters(model):,}",
        device,
        " (bf16)" if bf16 else "",
    )
    if resuming:
        load_checkpoint(run, out / "last.pt")
    elif init is not None:
        _bare(run.model).load_state_dict(init)
        log.info("weights initialised from %s", cfg.train.init_from)
    return run


def initial_weights(cfg: ExperimentConfig) -> Dict[str, torch.Tensor]:
    """The state dict named by ``train.init_from`` (package folder or checkpoint), checked against ``model``."""
    from UNetSegmentLib.model_package import ModelPackage, ModelPackageError

    path = Path(cfg.train.init_from)
    if not path.exists():
        raise ConfigError(f"train.init_from: {path} does not exist")
    expected = network_config(cfg).to_dict()
    if path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise ConfigError(f"train.init_from: {path} is not a training checkpoint (no 'model' weights)")
        found = state.get("config", {}).get("model")
        weights = state["model"]
        if found is not None:
            found = network_config(from_dict(ExperimentConfig, {"model": found})).to_dict()
    else:
        try:
            package = ModelPackage.load(path)
        except ModelPackageError as e:
            raise ConfigError(f"train.init_from: {e}") from None
        found = package.info.architecture.get("parameters")
        weights = package.build_network().state_dict()
    if found is not None:
        differ = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        if differ:
            details = ", ".join(f"{k}: {a!r} there, {b!r} in this config" for k, (a, b) in differ.items())
            raise ConfigError(f"train.init_from: {path} has another architecture ({details})")
    return weights


def save_checkpoint(run: Run, path: Path) -> None:
    state = {
        "model": _bare(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": run.epoch,
        "best_dice": run.best_dice,
        "best_epoch": run.best_epoch,
        "elapsed_s": run.elapsed_s,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "config": run.cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(run: Run, path: Path) -> None:
    # our own checkpoints hold Python RNG state (tuples), so weights_only loading cannot be used
    state = torch.load(path, map_location=run.device, weights_only=False)
    if "optimizer" not in state:
        raise ValueError(
            f"{path} holds weights only (slimmed for the journey from a lent device, crossval.py archive): "
            "it cannot resume; remove its run folder to train that stage again"
        )
    _bare(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.epoch, run.best_dice, run.best_epoch = state["epoch"], state["best_dice"], state["best_epoch"]
    run.elapsed_s = float(state.get("elapsed_s", 0.0))
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resumed from %s at epoch %d (best Dice %.4f)", path, run.epoch, run.best_dice)


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def poly_lr(cfg: ExperimentConfig, progress: float) -> float:
    """Poly decay over training progress in 0..1."""
    return cfg.train.learning_rate * max(0.0, 1 - progress) ** cfg.train.poly_power


def progress_of(run: Run, elapsed_min: float) -> float:
    """Fraction of training done: by epochs, or by the time limit when that comes first."""
    p = run.epoch / run.cfg.train.epochs
    if run.cfg.train.time_limit_min > 0:
        p = max(p, elapsed_min / run.cfg.train.time_limit_min)
    return min(p, 1.0)


def autocast(run: Run):
    from contextlib import nullcontext

    return torch.autocast(run.device.type, dtype=torch.bfloat16) if run.bf16 else nullcontext()


def train_epoch(run: Run, batches, loss_fn, model, progress: float, augment=None) -> float:
    """One epoch of ``iterations_per_epoch`` batches; returns the mean loss.

    ``augment``: a ``device_augment.DeviceAugment`` applied to each batch on the training device.
    """
    from tqdm import tqdm

    model.train()
    for g in run.optimizer.param_groups:
        g["lr"] = poly_lr(run.cfg, progress)
    total = 0.0
    n = run.cfg.train.iterations_per_epoch
    bar = tqdm(
        range(n),
        desc=f"epoch {run.epoch + 1}/{run.cfg.train.epochs}",
        unit="it",
        leave=False,
        disable=run.rank != 0 or None,
    )
    for _ in bar:
        image, target, gland_only = next(batches)
        image = image.to(run.device, non_blocking=True)
        target = target.to(run.device, non_blocking=True)
        if augment is not None:
            image, target = augment(image, target)
            target = target.long()
        if run.device.type == "cpu":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        with autocast(run):
            logits = model(image)
        loss = loss_fn(logits, target, gland_only.to(run.device))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        run.optimizer.step()
        value = float(loss.detach())
        total += value
        bar.set_postfix(loss=f"{value:.3f}")
    return total / n


@torch.no_grad()
def validate(run: Run) -> Dict[str, float]:
    """Dice per structure on whole validation volumes (model grid): Gaussian sliding window, overlap 0.25, no post-processing.

    ``slices_missed_gland``: labelled z-slices, summed over the validation volumes, where no
    predicted gland voxel lies on the reference (``anatomy.anatomy_checks``; a missed base or apex).
    """
    from training.anatomy import anatomy_checks
    from UNetSegmentLib.sliding_window import sliding_window

    model = _bare(run.model)
    model.eval()
    names = list(run.cfg.model.structures)
    per_structure: Dict[str, List[float]] = {n: [] for n in names}
    gland: List[float] = []
    missed = 0.0

    def network(window: np.ndarray) -> np.ndarray:  # (1, 1, *patch) -> (1, K, *patch), numpy float32
        with autocast(run):
            return model(torch.from_numpy(window).to(run.device)).float().cpu().numpy()

    for v in run.val:
        x = np.ascontiguousarray(v.image[None, None], dtype=np.float32)
        logits = sliding_window(x, run.cfg.model.patch_size_zyx, network, overlap=0.25)
        pred = logits.argmax(1)[0]
        t = v.target
        gland.append(_dice(pred > 0, t > 0))
        missed += anatomy_checks(pred > 0, t > 0)["slices_missed"]
        if v.kind != GLAND:
            for i, n in enumerate(names, start=1):
                per_structure[n].append(_dice(pred == i, t == i))
    metrics = {f"dice_{n}": float(np.mean(d)) for n, d in per_structure.items() if d}
    metrics["dice_gland"] = float(np.mean(gland)) if gland else float("nan")
    metrics["dice_mean"] = float(
        np.mean([metrics[f"dice_{n}"] for n in names if f"dice_{n}" in metrics] or [metrics["dice_gland"]])
    )
    metrics["slices_missed_gland"] = missed
    return metrics


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


class Logger:
    """CSV log (always) and TensorBoard (when installed)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.csv = out / "log.csv"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed; logging to CSV only")

    def write(self, epoch: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv.exists()
        with open(self.csv, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "key", "value"])
            for k, v in values.items():
                w.writerow([epoch, k, f"{v:.6g}"])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, epoch)
            self.tb.flush()


def fit(run: Run) -> Dict[str, float]:
    """The training loop: epochs, validation, best and last checkpoints, time limit."""
    cfg = run.cfg
    a = cfg.augment
    on_device = a.enabled and a.on_device
    seed = init_seed(cfg) + 1000 * run.epoch
    augment = build_augment(a, cfg.model.patch_size_zyx) if a.enabled and not on_device else None
    centre = a if a.enabled and not on_device and _centre_augmented(a) else None
    sampler = PatchSampler(
        run.train, cfg.model.patch_size_zyx, cfg.data.foreground_fraction, augment, seed, on_device, centre
    )
    batch_augment = None
    if on_device:
        from .device_augment import DeviceAugment

        batch_augment = DeviceAugment(a, cfg.model.patch_size_zyx, cfg.model.spacing_xyz_mm, seed * 1009 + run.rank)
    loader = torch.utils.data.DataLoader(
        sampler,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.train.num_workers,
        persistent_workers=cfg.train.num_workers > 0,
        pin_memory=run.device.type == "cuda",
    )
    batches = iter(loader)
    model = run.model
    if run.world > 1:
        # DDP broadcasts rank 0's weights and buffers, then averages the gradients in backward()
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_fn = PartialLabelDiceCE(run.cfg.train.slice_presence_weight, run.cfg.train.slice_absence_weight)
    logger = Logger(run.out, run.rank == 0)
    start = time.monotonic() - run.elapsed_s
    metrics: Dict[str, float] = {}
    while run.epoch < cfg.train.epochs:
        t0 = time.monotonic()
        progress = agree_max(run, progress_of(run, (t0 - start) / 60))  # one learning rate on every rank
        loss = mean_over_ranks(run, train_epoch(run, batches, loss_fn, model, progress, batch_augment))
        run.epoch += 1
        values = {"train_loss": loss, "lr": run.optimizer.param_groups[0]["lr"], "epoch_s": time.monotonic() - t0}
        run.elapsed_s = agree_max(run, time.monotonic() - start)
        out_of_time = cfg.train.time_limit_min > 0 and run.elapsed_s / 60 > cfg.train.time_limit_min
        last = run.epoch == cfg.train.epochs or out_of_time
        if run.rank == 0 and run.val and (run.epoch % cfg.train.validate_every == 0 or last):
            metrics = validate(run)
            values.update({f"val_{k}": v for k, v in metrics.items()})
            if metrics["dice_mean"] > run.best_dice:
                run.best_dice, run.best_epoch = metrics["dice_mean"], run.epoch
                save_checkpoint(run, run.out / "best.pt")
        if run.rank == 0:
            logger.write(run.epoch, values)
            log.info("epoch %d: %s", run.epoch, ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            save_checkpoint(run, run.out / "last.pt")
        if out_of_time:
            log.info("time limit of %.0f min reached after epoch %d", cfg.train.time_limit_min, run.epoch)
            break
    if run.rank == 0 and not run.val:
        save_checkpoint(run, run.out / "best.pt")
    return metrics


def _centre_augmented(a) -> bool:
    return max(a.bias_field_prob, a.coil_prob, a.contrast_prob, a.through_plane_prob) > 0


def run(cfg: ExperimentConfig, resume: bool = False, pack: Optional[Union[str, Path]] = None) -> Path:
    """Build, fit, and return the output folder (with best.pt, last.pt, logs, config, split).

    ``pack``: train from this data pack (``training/pack.py``) instead of the sources.
    """
    r = build(cfg, resume, pack)
    fit(r)
    if r.rank == 0:
        summary = {"best_epoch": r.best_epoch, "best_val_dice": r.best_dice, "epochs": r.epoch}
        (r.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if r.world > 1:
        barrier(r)  # rank 0's checkpoints and summary are on disk before any process returns
        torch.distributed.destroy_process_group()
    return r.out
