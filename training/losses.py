"""Dice + cross-entropy, honest about partial labels.

A case labelled with the whole gland only cannot say where the peripheral
zone ends and the transition zone begins. For such a case a zonal model's
probabilities are merged into (background, gland = PZ + TZ) and only that is
supervised, so the zones are learnt from the cases that have them.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class PartialLabelDiceCE(torch.nn.Module):
    """``(logits (N, C, z, y, x), target (N, 1, z, y, x) int, gland_only (N,) bool) -> scalar``."""

    def __init__(self) -> None:
        super().__init__()
        self.full = DiceCELoss(to_onehot_y=True, softmax=True, batch=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, gland_only: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        gland_only = gland_only.bool()
        losses = []
        if (~gland_only).any():
            m = ~gland_only
            losses.append(self.full(logits[m], target[m]) * m.sum())
        if gland_only.any():
            m = gland_only
            p = torch.softmax(logits[m], dim=1)
            merged = torch.stack([p[:, 0], p[:, 1:].sum(1)], dim=1).clamp(1e-6, 1.0)
            losses.append(self._merged_loss(merged, target[m]) * m.sum())
        return torch.stack(losses).sum() / target.shape[0]

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
