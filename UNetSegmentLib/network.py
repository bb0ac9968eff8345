"""The 3D U-Net of Çiçek et al. 2016 ("3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation", MICCAI 2016), with the options modern
practice and prostate MRI need.

The paper's network (Fig. 1), read top to bottom:

    analysis level 1:   3 -> 32 -> 64     two 3x3x3 conv + BN + ReLU, 2x2x2 max pool
    analysis level 2:  64 -> 64 -> 128    same
    analysis level 3: 128 -> 128 -> 256   same
    bottom:           256 -> 256 -> 512   two convs, no pool
    synthesis level 3: up-conv 512, concat 256 -> 256 -> 256
    synthesis level 2: up-conv 256, concat 128 -> 128 -> 128
    synthesis level 1: up-conv 128, concat 64 -> 64 -> 64
    output:            1x1x1 conv 64 -> 3 labels

Each analysis level doubles the channels in its *first* convolution of the
next level's pair ("we double the number of channels already before max
pooling to avoid bottlenecks"), so the second convolution of every level has
twice the channels of the first. ``UNet3D.paper()`` builds exactly this
network: 19,069,955 parameters, as the paper reports, and a
132x132x116 input gives a 44x44x28 output.

Tensors are ``(N, C, D, H, W)``; for medical volumes D, H, W are the numpy
``z, y, x`` axes, so anisotropic pooling ``(1, 2, 2)`` keeps the thick-slice
axis z and halves y and x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Sequence, Tuple

import torch
from torch import nn

Triple = Tuple[int, int, int]

NORMS = ("batch", "instance")
PADDINGS = ("same", "valid")


@dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of a :class:`UNet3D`; stored verbatim in a model package.

    ``pool_sizes[i]`` is the (z, y, x) max-pool window below level ``i``; the
    network has ``len(pool_sizes) + 1`` levels. ``base_channels`` is the width
    of the first convolution; the paper uses 32.
    """

    in_channels: int = 1
    out_channels: int = 2
    base_channels: int = 32
    pool_sizes: Tuple[Triple, ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2))
    padding: str = "same"
    norm: str = "instance"
    #: The paper's Caffe network: convolutions with bias, batch norm without
    #: learned scale/shift (Caffe's BatchNorm without a Scale layer), up-convolutions
    #: without bias. Modern default: the reverse.
    conv_bias: bool = False
    norm_affine: bool = True
    upconv_bias: bool = True

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, not {self.padding!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if self.in_channels < 1 or self.out_channels < 1 or self.base_channels < 1:
            raise ValueError("channel counts must be positive")
        pools = tuple(tuple(int(v) for v in p) for p in self.pool_sizes)
        if not pools or any(len(p) != 3 or min(p) < 1 for p in pools):
            raise ValueError(f"pool_sizes must be non-empty (z, y, x) triples, not {self.pool_sizes}")
        object.__setattr__(self, "pool_sizes", pools)

    @property
    def levels(self) -> int:
        return len(self.pool_sizes) + 1

    @property
    def divisor(self) -> Triple:
        """Patch sizes (z, y, x) must be multiples of this (same padding)."""
        d = [1, 1, 1]
        for p in self.pool_sizes:
            d = [a * b for a, b in zip(d, p)]
        return (d[0], d[1], d[2])

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["pool_sizes"] = [list(p) for p in self.pool_sizes]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> UNet3DConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNet3D parameters: {sorted(unknown)}")
        d = dict(d)
        if "pool_sizes" in d:
            d["pool_sizes"] = tuple(tuple(p) for p in d["pool_sizes"])
        return cls(**d)


def _norm(config: UNet3DConfig, channels: int) -> nn.Module:
    if config.norm == "batch":
        return nn.BatchNorm3d(channels, affine=config.norm_affine)
    return nn.InstanceNorm3d(channels, affine=config.norm_affine)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by normalisation then ReLU.

    ``(N, c_in, D, H, W) -> (N, c_out, D', H', W')``; with valid padding each
    convolution trims one voxel from every face.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, config: UNet3DConfig) -> None:
        pad = 1 if config.padding == "same" else 0
        bias = config.conv_bias
        super().__init__(
            nn.Conv3d(c_in, c_mid, 3, padding=pad, bias=bias),
            _norm(config, c_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_mid, c_out, 3, padding=pad, bias=bias),
            _norm(config, c_out),
            nn.ReLU(inplace=True),
        )


class Down(nn.Module):
    """Max pool, then a :class:`ConvBlock` that doubles the channels."""

    def __init__(self, c_in: int, c_out: int, pool: Triple, config: UNet3DConfig) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(pool, stride=pool)
        self.conv = ConvBlock(c_in, c_in, c_out, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Up-convolution, concatenation with the skip, then a :class:`ConvBlock`.

    With valid padding the skip is centre-cropped to the up-sampled size, as in
    the paper.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, pool: Triple, config: UNet3DConfig) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(c_in, c_in, pool, stride=pool, bias=config.upconv_bias)
        self.conv = ConvBlock(c_in + c_skip, c_out, c_out, config)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if skip.shape[2:] != x.shape[2:]:
            skip = _center_crop(skip, x.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


def _center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    starts = [(s - t) // 2 for s, t in zip(x.shape[2:], size)]
    if any(s < 0 for s in starts):
        raise ValueError(f"cannot crop {tuple(x.shape[2:])} to {tuple(size)}")
    return x[:, :, starts[0] : starts[0] + size[0], starts[1] : starts[1] + size[1], starts[2] : starts[2] + size[2]]


class UNet3D(nn.Module):
    """3D U-Net: ``(N, in_channels, D, H, W) -> (N, out_channels, D', H', W')`` logits.

    With same padding ``D', H', W' == D, H, W`` when each is a multiple of
    ``config.divisor``; with valid padding the output is smaller (see
    :meth:`output_size`).
    """

    def __init__(self, config: UNet3DConfig = UNet3DConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.base_channels
        self.inc = ConvBlock(config.in_channels, c, 2 * c, config)
        self.downs = nn.ModuleList()
        ch = 2 * c
        for pool in config.pool_sizes:
            self.downs.append(Down(ch, 2 * ch, pool, config))
            ch *= 2
        self.ups = nn.ModuleList()
        for pool in reversed(config.pool_sizes):
            self.ups.append(Up(ch, ch // 2, ch // 2, pool, config))
            ch //= 2
        self.outc = nn.Conv3d(ch, config.out_channels, 1)

    @classmethod
    def paper(cls) -> UNet3D:
        """The network of Çiçek et al. 2016: 3 input channels, 3 labels, valid padding, batch norm."""
        return cls(
            UNet3DConfig(
                in_channels=3,
                out_channels=3,
                base_channels=32,
                padding="valid",
                norm="batch",
                conv_bias=True,
                norm_affine=False,
                upconv_bias=False,
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    def output_size(self, input_size: Sequence[int]) -> Triple:
        """Spatial output size (z, y, x) for an input of ``input_size`` (z, y, x)."""
        return _output_size(self.config, input_size)


def _output_size(config: UNet3DConfig, size: Sequence[int]) -> Triple:
    trim = 0 if config.padding == "same" else 4
    s = [int(v) - trim for v in size]
    for pool in config.pool_sizes:
        s = [a // p - trim for a, p in zip(s, pool)]
    for pool in reversed(config.pool_sizes):
        s = [a * p - trim for a, p in zip(s, pool)]
    return (s[0], s[1], s[2])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_flops(model: UNet3D, input_size: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of every convolution for one ``(1, C, *input_size)`` forward."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        w = module.weight
        if isinstance(module, nn.ConvTranspose3d):
            macs = inputs[0].numel() // inputs[0].shape[0] * w.shape[1] * w.shape[2] * w.shape[3] * w.shape[4]
        else:
            macs = output.numel() // output.shape[0] * w.shape[1] * w.shape[2] * w.shape[3] * w.shape[4]
        total += 2 * macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            model(torch.zeros((1, model.config.in_channels, *input_size)))
    finally:
        for h in handles:
            h.remove()
    return total


__all__ = ["UNet3D", "UNet3DConfig", "count_parameters", "conv_flops"]
