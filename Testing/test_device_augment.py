"""Augmentation on the training device (training/device_augment.py), checked on the CPU."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from training.config import AugmentConfig, ConfigError, load_config
from training.device_augment import DeviceAugment, affine_theta, centre_transforms, gaussian_blur

OFF = dict(gamma_prob=0.0, noise_prob=0.0, intensity_prob=0.0, low_resolution_prob=0.0, blur_prob=0.0, flip_x=False)
PATCH = (8, 32, 32)
BIG = (8, 40, 40)


def _block_batch(b: int = 3):
    """Images of a smooth background with a bright block off-centre, and its label."""
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in BIG), indexing="ij")
    img = 0.01 * (y + x)[None, None].repeat(b, 1, 1, 1, 1)
    lab = torch.zeros(b, 1, *BIG, dtype=torch.int64)
    lab[:, :, 2:6, 12:20, 22:30] = 1
    img[lab.bool()] += 3.0
    return img, lab


def test_spatial_keeps_the_label_on_the_bright_block_and_changes_the_geometry():
    cfg = AugmentConfig(**{**OFF, "flip_x": True}, rotate_deg=30.0, scale=0.2)
    img, lab = _block_batch(6)
    aug = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=3)
    out_img, out_lab = aug(img, lab)
    assert out_img.shape == (6, 1, *PATCH) and out_lab.shape == (6, 1, *PATCH)
    assert out_img.dtype == torch.float32 and out_lab.dtype == torch.int64
    assert set(out_lab.unique().tolist()) <= {0, 1}
    # with no intensity change the label still marks exactly the bright voxels (up to the rim)
    bright = out_img > 1.5
    inside = out_lab.bool()
    agree = (bright == inside).float().mean().item()
    assert agree > 0.98
    assert out_img[inside].mean() > 2.5 and out_img[~inside].mean() < 1.0
    # the patches moved: the label is not just the centre crop in every sample
    crop = lab[:, :, :, 4:36, 4:36]
    assert any(not torch.equal(out_lab[i], crop[i]) for i in range(6))


def test_identity_when_nothing_is_drawn_is_the_centre_crop():
    cfg = AugmentConfig(**OFF, rotate_deg=0.0, scale=0.0)
    img, lab = _block_batch(2)
    out_img, out_lab = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=0)(img, lab)
    assert torch.allclose(out_img, img[:, :, :, 4:36, 4:36], atol=1e-4)
    assert torch.equal(out_lab, lab[:, :, :, 4:36, 4:36])


def test_rotation_by_90_degrees_in_plane_moves_the_block_where_it_should():
    # theta maps output voxels to input voxels: a 90 degree rotation about z sends (x, y) -> (-y, x)
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    theta = affine_theta(rot, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.bool), BIG, BIG, (1, 1, 3))
    lab = torch.zeros(1, 1, *BIG)
    lab[0, 0, :, 5, 30] = 1  # y=5, x=30
    grid = torch.nn.functional.affine_grid(theta.float(), [1, 1, *BIG], align_corners=True)
    out = torch.nn.functional.grid_sample(lab, grid, mode="nearest", align_corners=True)
    ys, xs = torch.nonzero(out[0, 0, 0], as_tuple=True)
    # about the centre 19.5: x_in = -y_out, y_in = x_out, so y_out = 19.5 - (30 - 19.5) = 9, x_out = 5 - 19.5 + 19.5 = 5
    assert (ys.tolist(), xs.tolist()) == ([9], [5])


def test_flip_mirrors_left_right_only():
    cfg = AugmentConfig(**{**OFF, "flip_x": True}, rotate_deg=0.0, scale=0.0)
    img, lab = _block_batch(16)
    out_img, out_lab = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=1)(img, lab)
    crop_img, crop_lab = img[:, :, :, 4:36, 4:36], lab[:, :, :, 4:36, 4:36]
    flipped = [torch.equal(out_lab[i], crop_lab[i].flip(-1)) for i in range(16)]
    same = [torch.equal(out_lab[i], crop_lab[i]) for i in range(16)]
    assert all(f or s for f, s in zip(flipped, same)) and 3 <= sum(flipped) <= 13
    for i in range(16):
        ref = crop_img[i].flip(-1) if flipped[i] else crop_img[i]
        assert torch.allclose(out_img[i], ref, atol=1e-4)


def test_same_seed_same_batch_other_seed_other_batch():
    cfg = AugmentConfig(bias_field_prob=0.5, coil_prob=0.5, contrast_prob=0.5, through_plane_prob=0.5)
    img, lab = _block_batch(4)
    a = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=7)
    b = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=7)
    c = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=8)
    for _ in range(2):
        (ia, la), (ib, lb), (ic, _) = a(img, lab), b(img, lab), c(img, lab)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert not torch.equal(ia, ic)


@pytest.mark.parametrize(
    "key",
    ["gamma_prob", "noise_prob", "intensity_prob", "low_resolution_prob", "blur_prob"],
)
def test_each_intensity_transform_changes_the_image_but_never_the_label(key):
    cfg = AugmentConfig(**{**OFF, key: 1.0}, rotate_deg=0.0, scale=0.0)
    img, lab = _block_batch(4)
    out_img, out_lab = DeviceAugment(cfg, PATCH, (1.0, 1.0, 3.0), seed=2)(img, lab)
    crop_img, crop_lab = img[:, :, :, 4:36, 4:36], lab[:, :, :, 4:36, 4:36]
    assert torch.equal(out_lab, crop_lab)
    assert (out_img - crop_img).abs().amax().item() > 1e-3
    assert torch.isfinite(out_img).all()


def test_blur_smooths_in_plane_only():
    img = torch.zeros(1, 1, 5, 9, 9)
    img[0, 0, 2, 4, 4] = 1.0
    out = gaussian_blur(img, torch.tensor([[0.0, 1.0, 1.0]]))
    assert out[0, 0, 1].abs().max() == 0 and out[0, 0, 3].abs().max() == 0  # no spill across slices
    assert out[0, 0, 2].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 2, 4, 5] > 0.05 and out[0, 0, 2, 4, 4] < 0.3


def _one(key: str, **extra) -> AugmentConfig:
    base = dict(bias_field_prob=0.0, coil_prob=0.0, contrast_prob=0.0, through_plane_prob=0.0)
    return dataclasses.replace(AugmentConfig(), **{**base, key: 1.0, **extra})


def _smooth_image(b: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 1.0 + 0.1 * torch.rand(b, 1, 12, 32, 32, generator=g)


def test_bias_field_is_smooth_multiplicative_and_bounded():
    img = _smooth_image()
    out = centre_transforms(img, _one("bias_field_prob", bias_field_strength=0.5), torch.Generator().manual_seed(1))
    lo = img.amin(dim=(1, 2, 3, 4), keepdim=True)
    ratio = (out - lo) / (img - lo).clamp_min(1e-3)
    mask = (img - lo) > 0.02
    assert ratio[mask].min() >= math.exp(-0.5) - 1e-3 and ratio[mask].max() <= math.exp(0.5) + 1e-3
    assert (ratio[mask] - 1).abs().max() > 0.05  # something changed
    # smooth: the field differs little between neighbouring voxels
    field = (out - lo) / (img - lo)
    step = (field[..., 1:] - field[..., :-1])[mask[..., 1:] & mask[..., :-1]].abs().median()
    assert step < 0.05


def test_coil_profile_darkens_one_side_more_than_the_other():
    img = torch.ones(8, 1, 4, 32, 32)
    img[:, :, 0, 0, 0] = 0.0  # a minimum, so that the rescaling keeps the ones at 1
    out = centre_transforms(img, _one("coil_prob", coil_strength=0.6), torch.Generator().manual_seed(2))
    for i in range(8):
        sides = [
            out[i, 0, :, :4].mean(),
            out[i, 0, :, -4:].mean(),
            out[i, 0, :, :, :4].mean(),
            out[i, 0, :, :, -4:].mean(),
        ]
        assert max(sides) - min(sides) > 0.02
        assert out[i].max() <= 1.0 + 1e-5 and out[i].min() >= 0.0


def test_contrast_keeps_the_mean_and_scales_the_spread():
    img = _smooth_image()
    out = centre_transforms(img, _one("contrast_prob", contrast_range=[0.5, 0.6]), torch.Generator().manual_seed(3))
    assert torch.allclose(out.mean(dim=(2, 3, 4)), img.mean(dim=(2, 3, 4)), atol=1e-5)
    ratio = out.std(dim=(2, 3, 4)) / img.std(dim=(2, 3, 4))
    assert ((ratio > 0.49) & (ratio < 0.61)).all()


def test_through_plane_resolution_blurs_across_slices_not_in_plane():
    img = torch.zeros(2, 1, 12, 8, 8)
    img[:, :, ::2] = 1.0  # alternate slices: the finest through-plane detail
    img[:, :, :, :, 4:] += 2.0  # an in-plane edge
    out = centre_transforms(img, _one("through_plane_prob", through_plane_factor=3.0), torch.Generator().manual_seed(4))
    alternation = (out[:, :, 1:] - out[:, :, :-1]).abs().mean()
    assert alternation < 0.6 * (img[:, :, 1:] - img[:, :, :-1]).abs().mean()
    # in-plane the edge between x=3 and x=4 stays sharp
    assert torch.allclose(out[..., 4] - out[..., 3], torch.full_like(out[..., 4], 2.0), atol=1e-4)


def test_the_centre_transforms_are_off_by_default():
    img = _smooth_image()
    assert torch.equal(centre_transforms(img, AugmentConfig(), torch.Generator().manual_seed(0)), img)


def test_config_rejects_bad_augmentation_values(tmp_path):
    with pytest.raises(ConfigError, match="_prob"):
        load_config(None, ["augment.coil_prob=1.5"])
    with pytest.raises(ConfigError, match="contrast_range"):
        load_config(None, ["augment.contrast_range=[1.2, 0.8]"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["augment.on_gpu=true"])
    with pytest.raises(ConfigError, match="elastic"):
        load_config(None, ["augment.on_device=true", "augment.elastic_prob=0.2"])
    assert load_config(None, ["augment.on_device=true"]).augment.on_device is True


@pytest.mark.parametrize("on_device", [True, False])
def test_tiny_training_with_the_centres_augmentation_is_reproducible(tmp_path, on_device):
    from conftest import tiny_experiment, write_pairs

    from training.config import ExperimentConfig, from_dict
    from training.trainer import run

    data = write_pairs(tmp_path / "pairs", 3, prefix="p")
    source = {"format": "pairs", "path": str(data), "label_map": {1: "prostate"}}
    weights = []
    for name in ("a", "b"):
        d = tiny_experiment("aug", tmp_path / name, source, iterations_per_epoch=3)
        d["augment"] = {
            "enabled": True,
            "on_device": on_device,
            "bias_field_prob": 0.5,
            "coil_prob": 0.5,
            "contrast_prob": 0.5,
            "through_plane_prob": 0.5,
        }
        out = run(from_dict(ExperimentConfig, d))
        assert '"epochs": 1' in (out / "summary.json").read_text(encoding="utf-8")
        rows = (out / "log.csv").read_text(encoding="utf-8").splitlines()
        loss = [float(r.split(",")[2]) for r in rows if ",train_loss," in r]
        assert len(loss) == 1 and np.isfinite(loss[0])
        weights.append(torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_sampler_cuts_the_margin_for_the_device_and_applies_the_centre_changes_on_the_cpu():
    from training.dataset import FULL, PatchSampler, Volume

    z, y, x = np.meshgrid(*(np.arange(s) for s in (12, 40, 40)), indexing="ij")
    image = (1.0 + 0.01 * (y + x)).astype(np.float32)
    target = np.zeros(image.shape, np.uint8)
    target[4:8, 15:25, 15:25] = 1
    vol = Volume(None, image, target, FULL)  # type: ignore[arg-type]
    plain = next(iter(PatchSampler([vol], (8, 16, 16), 0.5, None, seed=0)))
    margin = next(iter(PatchSampler([vol], (8, 16, 16), 0.5, None, seed=0, margin=True)))
    assert plain[0].shape == (1, 8, 16, 16) and margin[0].shape == (1, 8, 20, 20)
    centre = dataclasses.replace(AugmentConfig(), contrast_prob=1.0, contrast_range=[0.5, 0.5])
    changed = next(iter(PatchSampler([vol], (8, 16, 16), 0.5, None, seed=0, centre=centre)))
    assert torch.equal(changed[1], plain[1])
    assert changed[0].std().item() == pytest.approx(0.5 * plain[0].std().item(), rel=1e-4)
