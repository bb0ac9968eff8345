"""Uncertainty map and per-case confidence from the averaged softmax."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_image

from UNetSegmentLib.preprocessing import PreprocessingSpec, model_grid
from UNetSegmentLib.uncertainty import case_confidence, entropy_zyx, uncertainty_image


def _probs(fg: np.ndarray) -> np.ndarray:
    fg = fg.astype(np.float32)
    return np.stack([1 - fg, fg])


def test_entropy_is_zero_when_certain_and_one_when_uniform():
    certain = _probs(np.array([[[0.0, 1.0]]]))
    assert np.allclose(entropy_zyx(certain), 0, atol=1e-5)
    uniform = np.full((3, 1, 2, 2), 1 / 3, dtype=np.float32)
    assert np.allclose(entropy_zyx(uniform), 1, atol=1e-5)
    half = entropy_zyx(_probs(np.array([[[0.9]]])))[0, 0, 0]
    assert 0 < half < 1 and half == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2), rel=1e-4)


def test_confidence_is_one_for_a_sharp_mask_and_less_for_a_hesitant_one():
    mask = np.zeros((4, 8, 8), dtype=np.float32)
    mask[1:3, 2:6, 2:6] = 1
    assert case_confidence(_probs(mask)) == pytest.approx(1.0)
    hesitant = _probs(mask * 0.6 + (1 - mask) * 0.3)
    # soft Dice: 2 * 0.6*32 / (0.6*32 + 0.3*224 + 32)
    assert case_confidence(hesitant) == pytest.approx(2 * 0.6 * 32 / (0.6 * 32 + 0.3 * 224 + 32), rel=1e-5)
    assert case_confidence(_probs(np.zeros((4, 8, 8)))) == 0.0
    with pytest.raises(ValueError):
        case_confidence(np.zeros((4, 8, 8)))


def test_the_map_lies_on_the_input_grid():
    direction = (1.0, 0.0, 0.0, 0.0, 0.95, -0.31225, 0.0, 0.31225, 0.95)
    image = synthetic_image(size_xyz=(64, 48, 12), spacing=(0.7, 0.7, 3.0), direction=direction, origin=(5, -3, 2))
    grid = model_grid(image, PreprocessingSpec((1.0, 1.0, 3.0)))
    z, y, x = grid.shape_zyx
    fg = np.zeros((z, y, x), dtype=np.float32)
    fg[:, :, : x // 2] = 0.5  # uncertain on the first half of the model grid's x axis
    out = uncertainty_image(_probs(fg), grid)
    assert out.GetSize() == image.GetSize() and out.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(out.GetSpacing(), image.GetSpacing()) and np.allclose(out.GetDirection(), image.GetDirection())
    a = sitk.GetArrayFromImage(out)
    assert a.max() == pytest.approx(1.0, abs=1e-4) and a.min() == pytest.approx(0.0, abs=1e-4)
    # the model grid is LPS-oriented like this input, so low x on both grids is the uncertain half
    assert a[:, :, 2].mean() > 0.9 and a[:, :, -3].mean() < 0.1


def test_a_prediction_keeps_the_averaged_softmax_on_its_model_grid(tiny_package):
    from UNetSegmentLib.inference import Predictor

    image = synthetic_image()
    prediction = Predictor(tiny_package, device="cpu").predict(image)
    probs = prediction.probabilities
    assert probs.dtype == np.float32 and probs.shape == (2, *prediction.grid.shape_zyx)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert prediction.grid.input_reference.GetSize() == image.GetSize()
    assert 0.0 <= case_confidence(probs) <= 1.0
