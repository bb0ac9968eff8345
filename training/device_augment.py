"""Augmentation as batched torch ops on the batch's own device (a GPU when training on one).

With ``augment.on_device: true`` the DataLoader only cuts patches (25 % larger in-plane, as for
the CPU pipeline); :class:`DeviceAugment` then applies, to the whole batch at once on the
device, the transforms ``training.dataset.build_augment`` applies per patch on the CPU:

- spatial (image trilinear, label nearest-neighbour, one resampling): rotation (in-plane, with
  a little tilt), scaling, and a left-right flip; the output is cropped to the patch;
- intensity: low resolution, in-plane blur, gamma, intensity scaling and shift, Gaussian noise;
- what differs between centres (issue 20): bias field, coil profile, contrast, low
  through-plane resolution (:func:`centre_transforms`, also used by the CPU pipeline).

Shapes: ``image`` (B, 1, z, y, x) float, ``label`` (B, 1, z, y, x) integer. Random numbers come
from a ``torch.Generator`` on the CPU (the parameters) and one on the device (noise), both
seeded, so a seed gives the same batch on the same device.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _chosen(g: torch.Generator, n: int, prob: float) -> torch.Tensor:
    """(n,) bool: which samples of the batch get a transform applied with probability ``prob``."""
    return torch.rand(n, generator=g) < prob


def _on(pick: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A (B,) choice made on the CPU (no device sync to test it) as a (B, 1, 1, 1, 1) mask on ``device``."""
    return pick.to(device, non_blocking=True).view(-1, 1, 1, 1, 1)


def _rotation_xyz(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) rotations in (x, y, z) order: ``c`` about z (in-plane), ``b`` about y, ``a`` about x (radians)."""
    n = a.shape[0]
    one, zero = torch.ones(n, dtype=a.dtype), torch.zeros(n, dtype=a.dtype)

    def m(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rz = m([[c.cos(), -c.sin(), zero], [c.sin(), c.cos(), zero], [zero, zero, one]])
    ry = m([[b.cos(), zero, b.sin()], [zero, one, zero], [-b.sin(), zero, b.cos()]])
    rx = m([[one, zero, zero], [zero, a.cos(), -a.sin()], [zero, a.sin(), a.cos()]])
    return rz @ ry @ rx


def affine_theta(
    rotation_xyz: torch.Tensor,
    scale: torch.Tensor,
    flip_x: torch.Tensor,
    in_zyx: Sequence[int],
    out_zyx: Sequence[int],
    spacing_xyz_mm: Sequence[float],
) -> torch.Tensor:
    """(n, 3, 4) ``affine_grid`` matrices (align_corners=True) mapping output to input voxels about their centres.

    The rotation acts in millimetres (the voxels are anisotropic), ``scale`` (n,) > 1 zooms
    in, ``flip_x`` (n,) bool mirrors left-right. ``affine_grid`` orders its coordinates (x, y, z).
    """
    n = rotation_xyz.shape[0]
    sp = torch.tensor(list(spacing_xyz_mm), dtype=torch.float64)
    to_mm, to_vox = torch.diag(sp), torch.diag(1 / sp)
    flip = torch.ones(n, 3, dtype=torch.float64)
    flip[flip_x, 0] = -1
    a = to_vox @ rotation_xyz @ to_mm / scale[:, None, None] @ torch.diag_embed(flip)  # output voxel -> input voxel
    half_in = torch.tensor([(s - 1) / 2 for s in reversed(list(in_zyx))], dtype=torch.float64)
    half_out = torch.tensor([(s - 1) / 2 for s in reversed(list(out_zyx))], dtype=torch.float64)
    theta = torch.diag(1 / half_in) @ a @ torch.diag(half_out)
    return torch.cat([theta, torch.zeros(n, 3, 1, dtype=torch.float64)], dim=2)


def gaussian_blur(image: torch.Tensor, sigma_zyx: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, z, y, x) with per-sample sigmas (B, 3) in voxels (0 = none on that axis)."""
    out = image
    for axis in range(3):
        s = sigma_zyx[:, axis]
        if not bool((s > 0).any()):
            continue
        radius = max(1, int(math.ceil(3 * float(s.max()))))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
        sig = s.to(image.device, torch.float32).clamp_min(1e-3)[:, None]
        k = torch.exp(-(x[None] ** 2) / (2 * sig**2))
        k = torch.where((s > 0).to(image.device)[:, None], k, (x[None] == 0).float())
        k = k / k.sum(1, keepdim=True)  # (B, K)
        b = out.shape[0]
        shape = [1, 1, 1]
        shape[axis] = k.shape[1]
        weight = k.view(b, 1, *shape).to(out.dtype)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        padded = F.pad(out.transpose(0, 1), pad, mode="replicate")  # (1, B, ...): one group per sample
        out = F.conv3d(padded, weight, groups=b).transpose(0, 1)
    return out


def _resample_lowres(
    image: torch.Tensor, zoom_zyx: torch.Tensor, chosen: torch.Tensor, mode: str = "nearest"
) -> torch.Tensor:
    """Down-sample the chosen samples by ``zoom`` (B, 3) per axis (``mode``: nearest, or area for thick
    slices) and back up (trilinear)."""
    out = image.clone()
    size = image.shape[2:]
    for i in torch.nonzero(chosen).flatten().tolist():
        small = [max(1, int(round(s * float(z)))) for s, z in zip(size, zoom_zyx[i])]
        low = F.interpolate(image[i : i + 1], size=small, mode=mode)
        out[i : i + 1] = F.interpolate(low, size=size, mode="trilinear", align_corners=False)
    return out


def _coordinates(shape_zyx: Sequence[int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel centres in -1..1 along z, y, x, each broadcastable to (1, 1, z, y, x)."""
    z, y, x = (torch.linspace(-1, 1, s, device=device) for s in shape_zyx)
    return z.view(1, 1, -1, 1, 1), y.view(1, 1, 1, -1, 1), x.view(1, 1, 1, 1, -1)


def _rescaled(image: torch.Tensor, mapped) -> torch.Tensor:
    """Apply ``mapped`` to the image scaled to 0..1 per sample, then put the original range back."""
    lo = image.amin(dim=(1, 2, 3, 4), keepdim=True)
    rng = (image.amax(dim=(1, 2, 3, 4), keepdim=True) - lo).clamp_min(1e-6)
    return mapped((image - lo) / rng) * rng + lo


def centre_transforms(image: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Intensity changes that differ between centres and scanners, on (B, 1, z, y, x) images.

    - bias field: a smooth multiplicative field ``exp(sum c_ijk P_i(z) P_j(y) P_k(x))`` of
      degree 3 (products of Legendre-like polynomials), log amplitude up to ``bias_field_strength``;
    - coil profile: signal that falls off with the distance from one side in-plane (an
      endorectal or surface coil): ``1 - coil_strength * u * (1 - exp(-d / L))``;
    - contrast: intensities stretched or squeezed about the sample's mean by ``contrast_range``;
    - low through-plane resolution: slices averaged in groups of up to ``through_plane_factor``
      and interpolated back (thick slices), in-plane untouched.
    """
    b, dev = image.shape[0], image.device
    out = image
    z, y, x = _coordinates(image.shape[2:], dev)
    pick = _chosen(g, b, cfg.bias_field_prob)
    if cfg.bias_field_prob > 0 and bool(pick.any()):
        polys = [[torch.ones_like(t), t, 1.5 * t**2 - 0.5, 2.5 * t**3 - 1.5 * t] for t in (z, y, x)]
        log_field = torch.zeros_like(out)
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    if 0 < i + j + k <= 3:
                        c = (torch.rand(b, generator=g) * 2 - 1).to(dev, out.dtype).view(b, 1, 1, 1, 1)
                        log_field = log_field + c * polys[0][i] * polys[1][j] * polys[2][k]
        peak = log_field.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        strength = (torch.rand(b, generator=g) * cfg.bias_field_strength).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        field = torch.exp(log_field / peak * strength)
        out = torch.where(_on(pick, dev), _rescaled(out, lambda u: u * field), out)
    pick = _chosen(g, b, cfg.coil_prob)
    if cfg.coil_prob > 0 and bool(pick.any()):
        angle = (torch.rand(b, generator=g) * 2 * math.pi).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        # distance (in half-widths, 0..2) from the side the coil lies on, in-plane
        d = (1 + y * torch.sin(angle) + x * torch.cos(angle)).clamp_min(0)
        length = (0.3 + 0.7 * torch.rand(b, generator=g)).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        depth = (torch.rand(b, generator=g) * cfg.coil_strength).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        profile = 1 - depth * (1 - torch.exp(-d / length))
        out = torch.where(_on(pick, dev), _rescaled(out, lambda u: u * profile), out)
    pick = _chosen(g, b, cfg.contrast_prob)
    if cfg.contrast_prob > 0 and bool(pick.any()):
        lo, hi = cfg.contrast_range
        f = _uniform(g, b, lo, hi).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
        out = torch.where(_on(pick, dev), (out - mean) * f + mean, out)
    pick = _chosen(g, b, cfg.through_plane_prob)
    if cfg.through_plane_prob > 0 and bool(pick.any()) and out.shape[2] > 1:
        factor = 1 + torch.rand(b, generator=g, dtype=torch.float64) * (cfg.through_plane_factor - 1)
        zoom = torch.stack([1 / factor, torch.ones(b, dtype=torch.float64), torch.ones(b, dtype=torch.float64)], 1)
        out = _resample_lowres(out, zoom, pick, mode="area")  # thick slices: slices averaged
    return out


class DeviceAugment:
    """The training augmentation of ``cfg`` on whole batches, on the batch's device.

    ``__call__(image (B, 1, z, Y, X), label (B, 1, z, Y, X))`` -> ``(image, label)`` of the
    patch size ``(B, 1, *patch_zyx)``; the input may be larger (the sampler's margin).
    """

    def __init__(
        self, cfg: AugmentConfig, patch_zyx: Sequence[int], spacing_xyz_mm: Sequence[float], seed: int
    ) -> None:
        self.cfg = cfg
        self.patch = tuple(int(p) for p in patch_zyx)
        self.spacing = tuple(float(s) for s in spacing_xyz_mm)
        self.seed = int(seed)
        self.g = torch.Generator().manual_seed(self.seed)
        self._noise_g: Optional[torch.Generator] = None

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if self._noise_g is None or self._noise_g.device != device:
            self._noise_g = torch.Generator(device=device).manual_seed(self.seed + 1)
        return self._noise_g

    def spatial(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rotation, scaling and flip in one resampling (p = 0.8 for rotation and scaling, as on the CPU)."""
        c, g, b = self.cfg, self.g, image.shape[0]
        rad = math.radians(c.rotate_deg)
        moved = _chosen(g, b, 0.8).double()
        rot = _rotation_xyz(
            _uniform(g, b, -rad / 6, rad / 6) * moved,
            _uniform(g, b, -rad / 6, rad / 6) * moved,
            _uniform(g, b, -rad, rad) * moved,
        )
        scale = 1 + _uniform(g, b, -c.scale, c.scale) * moved
        flip = _chosen(g, b, 0.5 if c.flip_x else 0.0)
        theta = affine_theta(rot, scale, flip, image.shape[2:], self.patch, self.spacing)
        theta = theta.to(image.device, torch.float32)
        grid = F.affine_grid(theta, [b, 1, *self.patch], align_corners=True)
        img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        lab = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="border", align_corners=True)
        return img, lab.round().to(label.dtype)

    def intensity(self, image: torch.Tensor) -> torch.Tensor:
        """Low resolution, blur, gamma, scale and shift, noise (the CPU pipeline's, in its order), then the centres' changes."""
        c, g, b, dev = self.cfg, self.g, image.shape[0], image.device
        out = image
        pick = _chosen(g, b, c.low_resolution_prob)
        zoom = _uniform(g, b, 0.5, 1.0)
        if bool(pick.any()):
            out = _resample_lowres(out, zoom[:, None].expand(b, 3), pick)
        pick = _chosen(g, b, c.blur_prob)
        sig = torch.stack([torch.zeros(b), _uniform(g, b, 0.5, 1.0).float(), _uniform(g, b, 0.5, 1.0).float()], 1)
        if bool(pick.any()):
            out = gaussian_blur(out, sig * pick[:, None])
        pick = _chosen(g, b, c.gamma_prob)
        gamma = _uniform(g, b, 0.7, 1.5).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        if bool(pick.any()):
            out = torch.where(_on(pick, dev), _rescaled(out, lambda u: u.clamp_min(0) ** gamma), out)
        pick = _chosen(g, b, c.intensity_prob)
        factor = _uniform(g, b, -0.25, 0.25).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        out = torch.where(_on(pick, dev), out * (1 + factor), out)
        pick = _chosen(g, b, c.intensity_prob)
        offset = _uniform(g, b, -0.1, 0.1).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        out = torch.where(_on(pick, dev), out + offset, out)
        pick = _chosen(g, b, c.noise_prob)
        std = _uniform(g, b, 0.0, 0.1).to(dev, out.dtype).view(b, 1, 1, 1, 1)
        if bool(pick.any()):
            noise = torch.randn(out.shape, generator=self._noise_generator(dev), device=dev, dtype=out.dtype)
            out = torch.where(_on(pick, dev), out + std * noise, out)
        return centre_transforms(out, c, g)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        img, lab = self.spatial(image, label)
        return self.intensity(img).contiguous(), lab.contiguous()
