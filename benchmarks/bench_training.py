"""Training throughput (patches/s) of the configured network, CPU options side by side.

    python benchmarks/bench_training.py                                  # default_wholegland.yaml
    python benchmarks/bench_training.py --steps 2 model.base_channels=4 model.patch_size_zyx=[8,64,64]

Three parts, each with its own baseline:

1. compute: one training step (forward, PartialLabelDiceCE, backward, gradient
   clipping, SGD step, as ``training.trainer.train_epoch``) on a fixed batch, in
   NCDHW float32 (baseline), channels-last float32 and channels-last bf16
   autocast; the variants alternate step by step from the same initial weights;
2. data: batches from ``training.dataset.PatchSampler`` (with the config's
   augmentation) through a ``DataLoader`` with ``num_workers`` 0 (baseline)
   and 1;
3. step + data: both together, as training runs them (the trainer's memory
   format and precision), per ``num_workers``.

Volumes are synthetic (an ellipsoid "gland" in noise on the model grid) or,
with ``--cache-dir``, the preprocessed ``.npz`` volumes of a training run's cache.
Ratios are variant patches/s / baseline patches/s: above 1 is faster. The
main process's CPU time per batch is shown too (a data worker's is not in it).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    REPO,
    environment,
    environment_markdown,
    markdown_table,
    parse_counts,
    ratio,
    run_alternating,
    summarize,
    write_results,
)

DEFAULT_CONFIG = REPO / "training" / "configs" / "default_wholegland.yaml"

#: variant name -> (channels-last, bf16 autocast)
COMPUTE_VARIANTS = {"ncdhw-fp32": (False, False), "cl-fp32": (True, False), "cl-bf16": (True, True)}


def parse_variants(text: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in COMPUTE_VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants must be among {', '.join(COMPUTE_VARIANTS)}, not {text!r}")
    return names


def synthetic_volumes(count: int, patch_zyx: Sequence[int], seed: int = 0) -> list:
    """``count`` model-grid volumes (z, y, x) a little larger than the patch: z-scored noise with a bright ellipsoid gland."""
    from training.data import Case
    from training.dataset import FULL, Volume

    rng = np.random.default_rng(seed)
    shape = (int(patch_zyx[0]) + 10, int(patch_zyx[1] * 1.6), int(patch_zyx[2] * 1.6))
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    vols = []
    for i in range(count):
        c = [s / 2 + rng.uniform(-0.1, 0.1) * s for s in shape]
        r = [max(s / 6, 2.0) for s in shape]
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
        image = (rng.normal(0, 1, shape) + 2.0 * inside).astype(np.float32)
        vols.append(Volume(Case(f"synthetic{i:02d}", "", None), image, inside.astype(np.uint8), FULL))
    return vols


def cached_volumes(cache_dir: Path, count: int) -> list:
    """The first ``count`` preprocessed volumes (``.npz``: image, target, kind) of a training cache."""
    from training.data import Case
    from training.dataset import Volume

    files = sorted(Path(cache_dir).glob("*.npz"))[:count]
    if not files:
        raise SystemExit(f"no .npz volumes in {cache_dir}")
    vols = []
    for f in files:
        with np.load(f) as z:
            vols.append(Volume(Case(f.stem, "", None), z["image"], z["target"], str(z["kind"])))
    return vols


def make_sampler(cfg, volumes: list, augment: bool):
    from training.dataset import PatchSampler, build_augment

    aug = build_augment(cfg.augment, cfg.model.patch_size_zyx) if augment and cfg.augment.enabled else None
    return PatchSampler(volumes, cfg.model.patch_size_zyx, cfg.data.foreground_fraction, aug, cfg.train.seed)


def fixed_batch(cfg, volumes: list):
    """One batch of ``train.batch_size`` patches without augmentation: (image, target, gland_only)."""
    it = iter(make_sampler(cfg, volumes, augment=False))
    items = [next(it) for _ in range(cfg.train.batch_size)]
    return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), torch.tensor([i[2] for i in items])


class TrainStep:
    """One training step of the trainer's recipe, in a given memory format and precision."""

    def __init__(self, cfg, state: Dict[str, torch.Tensor], channels_last: bool, bf16: bool) -> None:
        from training.losses import PartialLabelDiceCE
        from training.trainer import network_config
        from UNetSegmentLib.network import UNet3D

        self.channels_last = channels_last
        self.bf16 = bf16
        model = UNet3D(network_config(cfg))
        model.load_state_dict(copy.deepcopy(state))
        self.model = model.to(memory_format=torch.channels_last_3d) if channels_last else model
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.train.learning_rate,
            momentum=0.99,
            nesterov=True,
            weight_decay=cfg.train.weight_decay,
        )
        self.loss_fn = PartialLabelDiceCE()

    def __call__(self, image: torch.Tensor, target: torch.Tensor, gland_only: torch.Tensor) -> float:
        """Run one step; returns the loss."""
        self.model.train()
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext():
            logits = self.model(image)
        loss = self.loss_fn(logits, target, gland_only)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.optimizer.step()
        return float(loss.detach())


def bench_compute(cfg, volumes: list, variants: Sequence[str], steps: int, warmup: int) -> Dict[str, Any]:
    from training.trainer import network_config
    from UNetSegmentLib.network import UNet3D

    torch.manual_seed(cfg.train.seed)
    state = UNet3D(network_config(cfg)).state_dict()
    batch = fixed_batch(cfg, volumes)
    n = int(batch[0].shape[0])
    runners = {}
    for name in variants:
        step = TrainStep(cfg, state, *COMPUTE_VARIANTS[name])

        def run(step=step) -> Dict[str, float]:
            t0, cpu0 = time.perf_counter(), time.process_time()
            loss = step(*batch)
            return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0, "loss": loss}

        runners[name] = run
    raw = run_alternating(runners, steps, warmup)
    return _throughput(raw, n, variants[0], "step_s")


def bench_data(
    cfg, volumes: list, workers: Sequence[int], batches: int, repeats: int, step: Optional[TrainStep] = None
) -> Dict[str, Any]:
    """Patches/s from a fresh DataLoader per round (its first batch not timed), with ``step`` run on each batch if given."""
    n = cfg.train.batch_size

    def runner(nw: int):
        def run() -> Dict[str, float]:
            loader = torch.utils.data.DataLoader(make_sampler(cfg, volumes, augment=True), batch_size=n, num_workers=nw)
            it = iter(loader)
            first = next(it)
            if step is not None:
                step(*first)
            t0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(batches):
                b = next(it)
                if step is not None:
                    step(*b)
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            del it
            return {"step_s": dt / batches, "cpu_s": cpu / batches}

        return run

    raw = run_alternating({f"num_workers={nw}": runner(nw) for nw in workers}, repeats, warmup=0)
    return _throughput(raw, n, f"num_workers={workers[0]}", "step_s")


def _throughput(raw: Dict[str, List[Dict[str, float]]], batch_size: int, baseline: str, key: str) -> Dict[str, Any]:
    """Median seconds per batch -> patches/s, and each variant's ratio to ``baseline``."""
    summary = {}
    for name, runs in raw.items():
        s = summarize([r[key] for r in runs])
        cpu = summarize([r["cpu_s"] for r in runs])
        summary[name] = {"batch_s": s, "cpu_s": cpu, "patches_per_s": ratio(batch_size, s["median"])}
    for s in summary.values():
        s["ratio"] = ratio(s["patches_per_s"], summary[baseline]["patches_per_s"])
    return {"baseline": baseline, "variants": summary, "runs": raw}


def report(parts: Dict[str, Dict[str, Any]], header: str) -> str:
    rows = []
    for part, result in parts.items():
        for name, s in result["variants"].items():
            rows.append(
                [
                    part,
                    name + (" (baseline)" if name == result["baseline"] else ""),
                    s["batch_s"]["n"],
                    s["batch_s"]["median"],
                    s["batch_s"]["min"],
                    s["cpu_s"]["median"],
                    s["patches_per_s"],
                    s["ratio"],
                ]
            )
    table = markdown_table(
        [
            "part",
            "variant",
            "runs",
            "s per batch (median)",
            "min s",
            "main-process CPU s",
            "patches/s",
            "ratio vs baseline",
        ],
        rows,
    )
    return header + "\n\n" + table


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training throughput (patches/s): memory format, bf16 and data workers side by side."
    )
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value, as for training/train.py (e.g. train.batch_size=1)"
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument(
        "--variants",
        type=parse_variants,
        default=list(COMPUTE_VARIANTS),
        help=f"first = baseline ({','.join(COMPUTE_VARIANTS)})",
    )
    p.add_argument(
        "--workers", type=parse_counts, default=[0, 1], help="DataLoader num_workers to compare, first = baseline"
    )
    p.add_argument("--steps", type=int, default=5, help="measured steps per compute variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--data-batches", type=int, default=5, help="batches timed per data round")
    p.add_argument("--data-repeats", type=int, default=2, help="rounds per num_workers value")
    p.add_argument("--parts", default="compute,data,step+data", help="which of compute,data,step+data to run")
    p.add_argument("--cache-dir", type=Path, help="use a training cache's .npz volumes instead of synthetic ones")
    p.add_argument("--num-volumes", type=int, default=4)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--out-dir", type=Path)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not parts or set(parts) - {"compute", "data", "step+data"}:
        p.error("--parts must be among compute, data, step+data")
    args.parts = parts
    if min(args.steps, args.data_batches, args.data_repeats, args.num_volumes) < 1 or args.warmup < 0:
        p.error("--steps, --data-batches, --data-repeats, --num-volumes must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from training.config import ConfigError, load_config
    from training.trainer import network_config
    from UNetSegmentLib.network import conv_flops
    from UNetSegmentLib.runtime.torch_runtime import cpu_supports_bf16

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"bench_training: {e}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    volumes = (
        cached_volumes(args.cache_dir, args.num_volumes)
        if args.cache_dir
        else synthetic_volumes(args.num_volumes, cfg.model.patch_size_zyx)
    )
    parts: Dict[str, Dict[str, Any]] = {}
    if "compute" in args.parts:
        parts["compute"] = bench_compute(cfg, volumes, args.variants, args.steps, args.warmup)
    if "data" in args.parts:
        parts["data"] = bench_data(cfg, volumes, args.workers, args.data_batches, args.data_repeats)
    trainer_bf16 = cfg.train.precision == "bfloat16" or (cfg.train.precision == "auto" and cpu_supports_bf16())
    if "step+data" in args.parts:
        from UNetSegmentLib.network import UNet3D

        torch.manual_seed(cfg.train.seed)
        step = TrainStep(cfg, UNet3D(network_config(cfg)).state_dict(), True, trainer_bf16)
        parts["step+data"] = bench_data(cfg, volumes, args.workers, args.data_batches, args.data_repeats, step)
    from UNetSegmentLib.network import UNet3D

    flops = conv_flops(UNet3D(network_config(cfg)), cfg.model.patch_size_zyx)
    env_info = environment()
    m = cfg.model
    header = "\n".join(
        [
            "# Training throughput side by side",
            "",
            f"config: {args.config} {' '.join(args.overrides)}; network base {m.base_channels} channels, pools {m.pool_sizes}, "
            f"{m.norm} norm; patch z,y,x {m.patch_size_zyx}; batch {cfg.train.batch_size}; "
            f"{flops / 1e9:.2f} GFLOP per forward pass per patch; "
            f"volumes: {'cache ' + str(args.cache_dir) if args.cache_dir else 'synthetic'} ({len(volumes)}); "
            f"step+data uses channels-last {'bf16' if trainer_bf16 else 'fp32'} like the trainer; "
            "ratio = variant patches/s / baseline patches/s.",
            "",
            environment_markdown(env_info),
        ]
    )
    text = report(parts, header)
    print(text)
    payload = {
        "benchmark": "training",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": cfg.to_dict(),
        "flops_per_forward": flops,
        "environment": env_info,
        "parts": parts,
    }
    json_path, md_path = write_results("training", payload, text, args.out_dir, args.tag)
    print(f"\nresults: {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
