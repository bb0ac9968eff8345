"""Shared fixtures: tiny model packages, synthetic volumes, the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("UNETSEGMENT_SHARED_DATA", REPO.parent / "shared" / "data"))


#: run first, in a fresh pytest process: several times (about one full run in five) the pytest process
#: died of SIGSEGV while entering this module late in the suite (after native thread pools of
#: OpenVINO, ONNX Runtime, ITK and Dask had come and gone in it), never when it ran alone or early
RUN_FIRST = ("test_distributed_training.py",)


def pytest_collection_modifyitems(config, items):
    """``RUN_FIRST`` modules first; tests marked ``shared_data`` skip cleanly where ../shared/data is
    absent (a user's clone)."""
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the order within stays
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is not present")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


def make_tiny_package(
    folder: Path,
    structures=("prostate",),
    seed: int = 0,
    spacing_xyz=(2.0, 2.0, 4.0),
    patch_zyx=(8, 32, 32),
    test_time_flips=("x",),
):
    """A model package with random weights and a tiny network: fast, real format, meaningless output."""
    import torch

    from UNetSegmentLib.labels import structure
    from UNetSegmentLib.model_package import InferenceSpec, LabelEntry, ModelInfo, ModelPackage
    from UNetSegmentLib.network import UNet3D, UNet3DConfig
    from UNetSegmentLib.preprocessing import PreprocessingSpec

    torch.manual_seed(seed)
    cfg = UNet3DConfig(1, len(structures) + 1, 4, ((1, 2, 2), (2, 2, 2)), "same", "batch")
    net = UNet3D(cfg)
    info = ModelInfo(
        id="tiny-test-model",
        version="0.0.1",
        name="Tiny test model",
        description="random weights, for tests only",
        architecture={"name": "UNet3D", "parameters": cfg.to_dict()},
        preprocessing=PreprocessingSpec(spacing_xyz),
        inference=InferenceSpec(patch_zyx, 0.25, test_time_flips=tuple(test_time_flips)),
        labels=tuple(LabelEntry(i + 1, structure(s)) for i, s in enumerate(structures)),
        license={"code": "Apache-2.0", "weights": "CC0-1.0 (random)"},
    )
    return ModelPackage.write(folder, info, net.state_dict())


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    return make_tiny_package(tmp_path_factory.mktemp("tiny_model"))


def synthetic_image(
    size_xyz=(64, 64, 16), spacing=(1.0, 1.0, 3.0), direction=None, origin=(0.0, 0.0, 0.0), seed=0
) -> sitk.Image:
    """A noisy volume with a bright ellipsoid in the middle; ITK order (x, y, z) for size and spacing."""
    rng = np.random.default_rng(seed)
    x, y, z = size_xyz
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    r = ((xx - x / 2) / (x / 5)) ** 2 + ((yy - y / 2) / (y / 6)) ** 2 + ((zz - z / 2) / (z / 4)) ** 2
    arr = (200 + 300 * (r < 1) + rng.normal(0, 20, r.shape)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def write_pairs(folder: Path, n: int, prefix: str = "c") -> Path:
    """``n`` synthetic image/label pairs (``{prefix}{i}_image.nii.gz``, label 1 = the bright ellipsoid)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = synthetic_image(size_xyz=(48, 48, 12), spacing=(1.5, 1.5, 3.0), seed=i)
        sitk.WriteImage(img, str(folder / f"{prefix}{i}_image.nii.gz"))
        label = sitk.Cast(sitk.BinaryThreshold(img, 400, 10000, 1, 0), sitk.sitkUInt8)
        sitk.WriteImage(label, str(folder / f"{prefix}{i}_label.nii.gz"))
    return folder


def tiny_experiment(name: str, output_dir: Path, source: dict, model_id: str = "tiny-run", **train) -> dict:
    """A training config (as a mapping) small enough to train an epoch in about a second on the CPU."""
    return {
        "name": name,
        "output_dir": str(output_dir),
        "data": {"sources": [source]},
        "model": {
            "id": model_id,
            "version": "0.0.1",
            "structures": ["prostate"],
            "base_channels": 4,
            "pool_sizes": [[1, 2, 2], [2, 2, 2]],
            "spacing_xyz_mm": [3.0, 3.0, 3.0],
            "patch_size_zyx": [8, 16, 16],
        },
        "augment": {"enabled": False},
        "train": {
            "epochs": 1,
            "iterations_per_epoch": 2,
            "batch_size": 2,
            "validate_every": 1,
            "precision": "float32",
            "device": "cpu",
            **train,
        },
    }
