"""Dice + cross-entropy, honest about partial labels.

A case labelled with the whole gland only cannot say where the peripheral
zone ends and the transition zone begins. For such a case a zonal model's
probabilities are merged into (background, gland = PZ + TZ) and only that is
supervised, so the zones are learnt from the cases that have them.

Optional slice terms ask, for every slice of the patch along z, whether the
gland is there at all: the slice's largest foreground probability (1 -
background) against "the label has a gland voxel in this slice", as binary
cross-entropy (multiple-instance learning with max pooling). Voxel-wise Dice
and cross-entropy barely notice a missed base slice of 1 cm^2; these terms
weigh it like any other slice. ``slice_presence_weight`` weighs the labelled
slices (the gland must be found there), ``slice_absence_weight`` the others
(no gland predicted past the labelled apex or base).
"""

from __future__ import annotations

import torch


def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + cross-entropy, per sample and class, averaged: MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True, batch=False)`` operation for operation (the same value and gradient, bit for bit;
    Testing/test_training.py checks it), in plain torch so that training needs no MONAI.

    ``logits (N, C, z, y, x)`` float, ``target (N, 1, z, y, x)`` integer class indices.
    """
    probs = torch.softmax(logits, 1)
    onehot = torch.zeros(probs.shape, dtype=torch.float, device=logits.device).scatter_(1, target.long(), 1)
    dims = list(range(2, logits.ndim))
    tp = torch.sum(probs * onehot, dim=dims)
    fp = (torch.sum(probs, dim=dims) - tp) * 0.5
    fn = (torch.sum(onehot, dim=dims) - tp) * 0.5
    dice = 1 - (2 * tp + 1e-5) / (2 * (tp + fp + fn) + 1e-5)
    ce = torch.nn.functional.cross_entropy(logits, torch.squeeze(target, dim=1).long())
    return 1.0 * torch.mean(dice) + 1.0 * ce


class PartialLabelDiceCE(torch.nn.Module):
    """``(logits (N, C, z, y, x), target (N, 1, z, y, x) int, gland_only (N,) bool) -> scalar``."""

    def __init__(self, slice_presence_weight: float = 0.0, slice_absence_weight: float = 0.0) -> None:
        super().__init__()
        for name, w in (
            ("slice_presence_weight", slice_presence_weight),
            ("slice_absence_weight", slice_absence_weight),
        ):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, not {w}")
        self.slice_weights = (float(slice_presence_weight), float(slice_absence_weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, gland_only: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        gland_only = gland_only.bool()
        losses = []
        if (~gland_only).any():
            m = ~gland_only
            losses.append(dice_ce(logits[m], target[m]) * m.sum())
        if gland_only.any():
            m = gland_only
            p = torch.softmax(logits[m], dim=1)
            merged = torch.stack([p[:, 0], p[:, 1:].sum(1)], dim=1).clamp(1e-6, 1.0)
            losses.append(self._merged_loss(merged, target[m]) * m.sum())
        loss = torch.stack(losses).sum() / target.shape[0]
        if any(self.slice_weights):
            loss = loss + slice_presence_loss(logits, target, *self.slice_weights)
        return loss

    @staticmethod
    def _merged_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice (per sample and class, as MONAI's) + cross-entropy on merged probabilities."""
        onehot = torch.cat([(target == 0), (target > 0)], dim=1).float()
        dims = tuple(range(2, probs.ndim))
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = 1.0 - (2 * inter + 1e-5) / (denom + 1e-5)
        ce = torch.nn.functional.nll_loss(torch.log(probs), (target[:, 0] > 0).long())
        return dice.mean() + ce


def slice_presence_loss(
    logits: torch.Tensor, target: torch.Tensor, labelled_weight: float = 1.0, unlabelled_weight: float = 1.0
) -> torch.Tensor:
    """Weighted BCE(max over (y, x) of P(foreground), gland in the slice), averaged over samples and z-slices.

    ``logits (N, C, z, y, x)``, ``target (N, 1, z, y, x)`` with 0 = background; any
    foreground class counts, so whole-gland and zonal labels are treated alike.
    Slices holding label weigh ``labelled_weight``, the others ``unlabelled_weight``;
    the mean is over all ``N * z`` slices, so with both weights 1 it is the plain mean BCE.
    """
    p_fg = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]  # (N, z, y, x)
    predicted = p_fg.amax(dim=(2, 3)).clamp(1e-6, 1.0 - 1e-6)  # (N, z)
    present = (target[:, 0] > 0).any(dim=3).any(dim=2)  # (N, z)
    weights = torch.where(present, labelled_weight, unlabelled_weight).to(predicted.dtype)
    return torch.nn.functional.binary_cross_entropy(predicted, present.to(predicted.dtype), weight=weights)
