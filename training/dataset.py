"""Training data on the model grid: preprocessing cache, targets, patch sampling, augmentation.

Every case goes through ``UNetSegmentLib.preprocessing`` (the same function
inference uses) once and is cached as ``.npz``; training then samples patches
from memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from UNetSegmentLib.labels import ZONES, structure
from UNetSegmentLib.preprocessing import PreprocessingSpec, crop_or_pad

from .config import AugmentConfig
from .data import Case

log = logging.getLogger(__name__)

#: A case is "full" when it has every structure the model outputs, or
#: "gland" when it only has the whole gland and the model outputs zones: then
#: the union of the zones is supervised (see ``training.losses``).
FULL, GLAND = "full", "gland"


@dataclass
class Volume:
    """One preprocessed case: ``image`` (z, y, x) float32, ``target`` (z, y, x) uint8."""

    case: Case
    image: np.ndarray
    target: np.ndarray
    kind: str


def targets_for(label_zyx: np.ndarray, label_map: Dict[int, str], structures: Sequence[str]) -> Tuple[np.ndarray, str]:
    """Map a dataset's label values onto the model's output values (1-based, ``structures`` order).

    - the case has every model structure: ``FULL``, values as the model's;
    - the model wants ``prostate`` and the case has zones: their union;
    - the model wants zones and the case has only the gland: ``GLAND``, target 1 = gland.
    """
    names = {v: structure(n).name for v, n in label_map.items()}
    wanted = [structure(s).name for s in structures]
    have = set(names.values())
    out = np.zeros(label_zyx.shape, dtype=np.uint8)
    if all(w in have for w in wanted):
        for v, n in names.items():
            if n in wanted:
                out[label_zyx == v] = wanted.index(n) + 1
        return out, FULL
    if wanted == ["prostate"] and set(ZONES) <= have | {"prostate"}:
        for v, n in names.items():
            if n in ZONES or n == "prostate":
                out[label_zyx == v] = 1
        return out, FULL
    if set(wanted) <= set(ZONES) and "prostate" in have:
        for v, n in names.items():
            if n in ("prostate", *ZONES):
                out[label_zyx == v] = 1
        return out, GLAND
    raise ValueError(f"labels {sorted(have)} cannot supervise a model of {wanted}")


def _cache_key(case: Case, spec: PreprocessingSpec, structures: Sequence[str]) -> str:
    facts = {k: v for k, v in case.__dict__.items() if k != "weight"}  # sampling, not preprocessing
    parts = {"spec": spec.to_dict(), "structures": list(structures), "case": facts}
    for p in (case.image, case.label):
        if p and os.path.exists(p):
            st = os.stat(p)
            parts[p] = [st.st_size, int(st.st_mtime)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_volume(case: Case, spec: PreprocessingSpec, structures: Sequence[str], cache_dir: Path) -> Volume:
    """Preprocess one case (image and target on the model grid), cached in ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    f = cache_dir / f"{case.case_id}-{_cache_key(case, spec, structures)}.npz"
    if f.exists():
        with np.load(f) as z:
            return Volume(case, z["image"], z["target"], str(z["kind"]))
    import SimpleITK as sitk  # here, not above: training from a data pack (training/pack.py) needs no SimpleITK

    from UNetSegmentLib.io import read_image
    from UNetSegmentLib.preprocessing import preprocess_image, preprocess_label

    image = read_image(case.image, channel=case.channel)
    array, grid = preprocess_image(image, spec)
    if case.label is None:
        raise ValueError(f"case {case.case_id} has no label")
    label = sitk.ReadImage(case.label)
    if label.GetDimension() != 3:
        raise ValueError(f"label of {case.case_id} is {label.GetDimension()}D, expected 3D")
    target, kind = targets_for(preprocess_label(label, grid), case.label_map, structures)
    tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npz")  # one per process: caches may be shared
    np.savez_compressed(tmp, image=array.astype(np.float32), target=target, kind=kind)
    os.replace(tmp, f)
    return Volume(case, array, target, kind)


def build_augment(cfg: AugmentConfig, patch_zyx: Sequence[int]):
    """MONAI dictionary transforms on ``{"image": (1, z, y, x), "label": (1, z, y, x)}``."""
    from monai import transforms as T

    rad = np.deg2rad(cfg.rotate_deg)
    tr = [
        # rotation about z (in-plane) with a little tilt; scaling; output cropped to the patch
        T.RandAffined(
            keys=("image", "label"),
            prob=0.8,
            rotate_range=(rad, rad / 6, rad / 6),
            scale_range=(cfg.scale, cfg.scale, cfg.scale),
            spatial_size=tuple(patch_zyx),
            mode=("bilinear", "nearest"),
            padding_mode="border",
        )
    ]
    if cfg.elastic_prob > 0:
        tr.append(
            T.Rand3DElasticd(
                keys=("image", "label"),
                sigma_range=(5, 8),
                magnitude_range=(50, 150),
                prob=cfg.elastic_prob,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            )
        )
    if cfg.flip_x:
        tr.append(T.RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2))
    tr += [
        T.RandSimulateLowResolutiond(keys="image", prob=cfg.low_resolution_prob, zoom_range=(0.5, 1.0)),
        T.RandGaussianSmoothd(
            keys="image", prob=cfg.blur_prob, sigma_x=(0.0, 0.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
        ),
        T.RandAdjustContrastd(keys="image", prob=cfg.gamma_prob, gamma=(0.7, 1.5)),
        T.RandScaleIntensityd(keys="image", prob=cfg.intensity_prob, factors=0.25),
        T.RandShiftIntensityd(keys="image", prob=cfg.intensity_prob, offsets=0.1),
        T.RandGaussianNoised(keys="image", prob=cfg.noise_prob, std=0.1),
    ]
    return T.Compose(tr)


class PatchSampler(torch.utils.data.IterableDataset):
    """Endless random patches ``(image (1, z, y, x) float32, target (1, z, y, x) int64, is_gland_only)``.

    A fraction of patches is centred on a labelled voxel (the gland is small in
    the field of view). Patches are cut 25 % larger in-plane before the affine
    augmentation so rotations do not bring in padding.
    """

    def __init__(
        self,
        volumes: List[Volume],
        patch_zyx: Sequence[int],
        foreground_fraction: float,
        augment,
        seed: int,
        margin: bool = False,
        centre: Optional[AugmentConfig] = None,
    ) -> None:
        """``margin``: cut the larger patches even without ``augment`` (augmentation on the device
        follows); ``centre``: also apply ``device_augment.centre_transforms`` of that config."""
        super().__init__()
        self.margin = margin
        self.centre = centre
        self.volumes = volumes
        self.patch = tuple(int(p) for p in patch_zyx)
        self.fg = foreground_fraction
        self.augment = augment
        self.seed = seed
        self._fg_index = [np.argwhere(v.target > 0) for v in volumes]
        w = np.array([getattr(v.case, "weight", 1.0) for v in volumes], dtype=float)
        if not w.sum() > 0:
            raise ValueError("every training case has weight 0: there is nothing to draw patches from")
        # None: equal weights draw as before (the same patches for a seed as without weights)
        self._p = None if np.all(w == w[0]) else w / w.sum()

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, bool]]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rank = int(os.environ.get("RANK", 0))
        rng = np.random.default_rng([self.seed, rank, wid])
        # `is not None`, never truthiness: len() of a MONAI Compose re-seeds its transforms
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
        big = (
            (self.patch[0], int(self.patch[1] * 1.25), int(self.patch[2] * 1.25))
            if self.augment is not None or self.margin
            else self.patch
        )
        centre_g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        while True:
            i = (
                int(rng.integers(len(self.volumes)))
                if self._p is None
                else int(rng.choice(len(self.volumes), p=self._p))
            )
            v = self.volumes[i]
            fg = self._fg_index[i]
            if len(fg) and rng.random() < self.fg:
                center = fg[int(rng.integers(len(fg)))]
            else:
                center = [int(rng.integers(s)) for s in v.image.shape]
            img = crop_or_pad(v.image, big, center, value=float(v.image.min()))
            lab = crop_or_pad(v.target, big, center, value=0)
            if self.augment is not None:
                d = self.augment({"image": torch.from_numpy(img[None]), "label": torch.from_numpy(lab[None])})
                img_t = torch.as_tensor(d["image"]).float()
                lab_t = torch.as_tensor(d["label"]).round().long()
            else:
                img_t = torch.from_numpy(img[None]).float()
                # for the device's augmentation: uint8, an eighth of the bytes to copy (made int64 there)
                lab_t = torch.from_numpy(lab[None].astype(np.uint8 if self.margin else np.int64))
            if self.centre is not None:
                from .device_augment import centre_transforms

                img_t = centre_transforms(img_t.as_subclass(torch.Tensor)[None], self.centre, centre_g)[0]
            yield img_t.as_subclass(torch.Tensor), lab_t.as_subclass(torch.Tensor), v.kind == GLAND
