"""Sliding-window inference: tiling, blending, padding, and agreement with MONAI's implementation."""

import subprocess
import sys

import pytest
import torch

from UNetSegmentLib.sliding_window import blending_weights, sliding_window, window_count, window_starts, windows

PATCH = (8, 32, 32)


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (32, 32, 0.5, [0]),
        (20, 32, 0.5, [0]),
        (48, 32, 0.5, [0, 16]),
        (50, 32, 0.5, [0, 16, 18]),
        (70, 32, 0.25, [0, 24, 38]),
        (9, 8, 0.5, [0, 1]),
        (5, 2, 0.9, [0, 1, 2, 3]),  # the step never drops below one voxel
    ],
)
def test_window_starts(size, patch, overlap, expected):
    assert window_starts(size, patch, overlap) == expected


def test_windows_cover_every_voxel_and_stay_inside():
    shape = (19, 77, 33)
    covered = torch.zeros(shape, dtype=torch.int32)
    tiles = list(windows(shape, PATCH, 0.5))
    for tile in tiles:
        assert all(s.stop <= n and s.stop - s.start == p for s, n, p in zip(tile, shape, PATCH))
        covered[tile] += 1
    assert covered.min() >= 1
    assert len(tiles) == window_count(shape, PATCH, 0.5)


def test_bad_overlap_and_mode_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        window_starts(40, 32, 1.0)
    with pytest.raises(ValueError, match="blend mode"):
        blending_weights(PATCH, "median")
    with pytest.raises(ValueError, match="expected a"):
        sliding_window(torch.zeros(2, 1, 8, 32, 32), PATCH, lambda t: t)


def test_gaussian_weights_peak_at_the_centre_and_have_a_floor():
    w = blending_weights((9, 33, 17))
    assert w.shape == (9, 33, 17)
    assert float(w.max()) == pytest.approx(1.0) and float(w[4, 16, 8]) == pytest.approx(1.0)
    assert float(w.min()) == pytest.approx(1e-3)  # the corners are clamped up to the floor
    assert torch.equal(w, w.flip(0).flip(1).flip(2))


def test_a_constant_output_is_reproduced_exactly_despite_the_blending():
    x = torch.zeros(1, 1, 13, 50, 70)
    out = sliding_window(x, PATCH, lambda t: torch.full((1, 3) + tuple(t.shape[2:]), 2.5), overlap=0.5)
    assert out.shape == (1, 3, 13, 50, 70)
    assert torch.allclose(out, torch.full_like(out, 2.5), atol=1e-6)


def test_short_axes_are_padded_with_the_pad_value_and_cropped_back():
    x = torch.arange(5 * 20 * 40, dtype=torch.float32).reshape(1, 1, 5, 20, 40)
    seen = []

    def net(t):
        seen.append(t.clone())
        return t

    out = sliding_window(x, PATCH, net, overlap=0.5, pad_value=-7.0)
    assert out.shape == x.shape
    assert torch.allclose(out, x, rtol=1e-6)  # identity network: blending returns the input
    assert seen[0].shape[2:] == PATCH and float(seen[0][0, 0, 0, 0, 0]) == -7.0  # padded before


@pytest.mark.parametrize("shape", [(8, 32, 32), (10, 40, 70), (5, 20, 20), (19, 77, 33), (30, 31, 100)])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_same_output_as_monai(shape, overlap, mode):
    monai_inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn((1, 1) + shape)
    calls = []

    def net(t):
        calls.append(1)
        return conv(t)

    with torch.no_grad():
        ours = sliding_window(x, PATCH, net, overlap=overlap, mode=mode, pad_value=float(x.min()))
        n_ours = len(calls)
        theirs = monai_inferers.sliding_window_inference(
            x, PATCH, 1, net, overlap=overlap, mode=mode, padding_mode="constant", cval=float(x.min())
        )
    assert ours.shape == theirs.shape == (1, 2) + shape
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    assert n_ours == len(calls) - n_ours == window_count(shape, PATCH, overlap)


def test_gaussian_weights_equal_monais_importance_map():
    data_utils = pytest.importorskip("monai.data.utils")
    for patch in [(20, 128, 128), (8, 32, 32), (7, 9, 11)]:
        ours = blending_weights(patch)
        theirs = data_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
        assert torch.allclose(ours, theirs, atol=1e-7)


def test_segmenting_does_not_import_monai(tiny_package):
    code = (
        "import sys\n"
        "from UNetSegmentLib.inference import Predictor\n"
        "from UNetSegmentLib.model_package import ModelPackage\n"
        "import numpy as np, SimpleITK as sitk\n"
        f"p = Predictor(ModelPackage.load({str(tiny_package.path)!r}), device='cpu', quality='best')\n"
        "img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 64, 64)).astype('float32'))\n"
        "p.predict(img)\n"
        "print('monai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
