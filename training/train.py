"""Train the 3D U-Net: ``python training/train.py --config CONFIG [key=value ...]``.

Examples::

    python training/train.py --config training/configs/default_wholegland.yaml
    python training/train.py --config training/configs/nci_isbi.yaml data.sources.0.path=/data/NCI-ISBI
    torchrun --nproc_per_node 4 training/train.py --config ...   # several GPUs (one process each)
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \
        --rdzv_id RUN training/train.py --config ...               # on every node: several nodes

Under ``torchrun`` each process trains on its own random patches (the batch is
per process), DistributedDataParallel averages the gradients, and rank 0 alone
validates and writes the run folder.

The run folder (``output_dir``) receives the config, software versions, the
patient split, CSV and TensorBoard logs, ``last.pt`` (resume with
``--resume``) and ``best.pt``; ``--export`` also writes the model package.
``--pack FILE`` trains from a data pack (``training/pack.py``: the cases on the model
grid in one file) instead of the sources, with neither SimpleITK nor MONAI needed when
``augment.on_device: true``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.config import ConfigError, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the UNetSegment 3D U-Net.")
    p.add_argument("--config", help="YAML experiment config (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 output_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    p.add_argument("--export", metavar="FOLDER", help="write the best model as a model package here when done")
    p.add_argument("--pack", metavar="FILE", help="train from this data pack (training/pack.py) instead of the sources")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # under torchrun every process runs this; rank 0 alone logs progress and writes the run folder
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s"
        if rank == 0
        else f"%(asctime)s rank {rank} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    from training.trainer import run

    try:
        out = run(cfg, resume=args.resume, pack=args.pack)
    except (ValueError, FileNotFoundError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    print(f"run folder: {out}")
    if args.export:
        from training.export import export_run

        pkg = export_run(out, Path(args.export))
        print(f"model package: {pkg.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
