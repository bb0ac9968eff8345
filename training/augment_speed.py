"""How fast the augmentation on the device runs, and whether it keeps a training step fed.

::

    python training/augment_speed.py --device cuda [--batch 4] [--patch 20 128 128] [--seconds 10] [-o speed.json]

Prints (and writes with ``-o``) one JSON object:

- ``augment_patches_per_s``: ``DeviceAugment`` on batches of patches (every transform the
  default recipe draws, plus the centres' changes at p = 0.3), the patches already cut;
- ``train_step_patches_per_s``: a training step (forward, Dice + cross-entropy, backward,
  SGD) of the default network, with and without the augmentation before it;
- ``cpu_vs_device``: the same seed on the CPU and on the device, spatial part only: the share
  of label voxels that agree and the largest image difference (only with a non-CPU device);
- ``same_seed_same_batch``: two augmenters of one seed give identical batches on the device.

Needs torch only (no MONAI, no SimpleITK): it runs on a bare GPU machine. Synthetic data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.config import AugmentConfig  # noqa: E402
from training.device_augment import DeviceAugment  # noqa: E402

SPACING_XYZ = (1.0, 1.0, 3.0)


def synthetic_batch(batch: int, big_zyx: List[int], device: torch.device, seed: int = 0):
    """Smooth random images with a bright ellipsoid and its label, (B, 1, *big_zyx)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.randn(batch, 1, 4, 8, 8, generator=g), size=big_zyx, mode="trilinear")
    z, y, x = (torch.linspace(-1, 1, s) for s in big_zyx)
    r = z.view(-1, 1, 1) ** 2 / 0.3 + y.view(1, -1, 1) ** 2 / 0.1 + x.view(1, 1, -1) ** 2 / 0.15
    lab = (r < 1).long()[None, None].repeat(batch, 1, 1, 1, 1)
    img = img + 2.0 * lab
    return img.to(device), lab.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after two warm-up calls)."""
    fn()
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(device)
    return n / (time.perf_counter() - t0)


def measure(device: torch.device, batch: int, patch: List[int], seconds: float, base_channels: int = 8) -> Dict:
    from UNetSegmentLib.network import UNet3D, UNet3DConfig

    big = [patch[0], int(patch[1] * 1.25), int(patch[2] * 1.25)]
    cfg = AugmentConfig(bias_field_prob=0.3, coil_prob=0.3, contrast_prob=0.3, through_plane_prob=0.3)
    aug = DeviceAugment(cfg, patch, SPACING_XYZ, seed=0)
    img, lab = synthetic_batch(batch, big, device)
    result: Dict = {"device": str(device), "batch": batch, "patch_zyx": patch}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["augment_patches_per_s"] = round(batch * timed(lambda: aug(img, lab), device, seconds), 1)

    net = UNet3D(UNet3DConfig(1, 2, base_channels, ((1, 2, 2), (2, 2, 2), (2, 2, 2)), "same", "batch")).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    bf16 = device.type == "cuda"
    crop = (slice(None), slice(None), slice(0, patch[0]), slice(0, patch[1]), slice(0, patch[2]))

    def step(augmented: bool) -> None:
        x, t = aug(img, lab) if augmented else (img[crop], lab[crop])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), t[:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result["train_step_patches_per_s"] = {
        "without_augmentation": round(batch * timed(lambda: step(False), device, seconds), 1),
        "with_device_augmentation": round(batch * timed(lambda: step(True), device, seconds), 1),
    }
    if device.type != "cpu":
        spatial = dataclasses.replace(
            AugmentConfig(), gamma_prob=0.0, noise_prob=0.0, intensity_prob=0.0, low_resolution_prob=0.0, blur_prob=0.0
        )
        a_cpu = DeviceAugment(spatial, patch, SPACING_XYZ, seed=5)
        a_dev = DeviceAugment(spatial, patch, SPACING_XYZ, seed=5)
        i_cpu, l_cpu = a_cpu(img.cpu(), lab.cpu())
        i_dev, l_dev = a_dev(img, lab)
        result["cpu_vs_device"] = {
            "label_agreement": float((l_cpu == l_dev.cpu()).float().mean()),
            "image_max_abs_diff": float((i_cpu - i_dev.cpu()).abs().max()),
        }
    again = [DeviceAugment(cfg, patch, SPACING_XYZ, seed=9)(img, lab) for _ in range(2)]
    result["same_seed_same_batch"] = bool(
        torch.equal(again[0][0], again[1][0]) and torch.equal(again[0][1], again[1][1])
    )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Speed of the augmentation on the device, and of a training step with it.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, nargs=3, default=[20, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--seconds", type=float, default=10.0, help="time per measurement (default 10)")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN choose its convolution algorithms")
    p.add_argument("-o", "--output", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    result = measure(torch.device(args.device), args.batch, args.patch, args.seconds, args.base_channels)
    result["cudnn_benchmark"] = args.cudnn_benchmark
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
