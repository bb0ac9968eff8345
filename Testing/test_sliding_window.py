"""Sliding-window inference: tiling, blending, padding, and agreement with MONAI's implementation."""

import subprocess
import sys

import numpy as np
import pytest

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
    covered = np.zeros(shape, dtype=np.int32)
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
        sliding_window(np.zeros((2, 1, 8, 32, 32), np.float32), PATCH, lambda t: t)
    with pytest.raises(ValueError, match="pad mode"):
        sliding_window(np.zeros((1, 1, 4, 32, 32), np.float32), PATCH, lambda t: t, pad_mode="mirror")


def test_gaussian_weights_peak_at_the_centre_and_have_a_floor():
    w = blending_weights((9, 33, 17))
    assert w.shape == (9, 33, 17)
    assert float(w.max()) == pytest.approx(1.0) and float(w[4, 16, 8]) == pytest.approx(1.0)
    assert float(w.min()) == pytest.approx(1e-3)  # the corners are clamped up to the floor
    assert w.dtype == np.float32 and np.array_equal(w, w[::-1, ::-1, ::-1])


def test_a_constant_output_is_reproduced_exactly_despite_the_blending():
    x = np.zeros((1, 1, 13, 50, 70), np.float32)
    out = sliding_window(x, PATCH, lambda t: np.full((1, 3) + tuple(t.shape[2:]), 2.5, np.float32), overlap=0.5)
    assert out.shape == (1, 3, 13, 50, 70) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.5, atol=1e-5)


def test_short_axes_are_padded_with_the_pad_value_and_cropped_back():
    x = np.arange(5 * 20 * 40, dtype=np.float32).reshape(1, 1, 5, 20, 40)
    seen = []

    def net(t):
        seen.append(t.copy())
        return t

    out = sliding_window(x, PATCH, net, overlap=0.5, pad_value=-7.0)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, rtol=1e-6)  # identity network: blending returns the input
    assert seen[0].shape[2:] == PATCH and float(seen[0][0, 0, 0, 0, 0]) == -7.0  # padded before


def test_edge_padding_repeats_the_border_voxels():
    x = np.arange(5 * 32 * 32, dtype=np.float32).reshape(1, 1, 5, 32, 32)
    seen = []

    def net(t):
        seen.append(t.copy())
        return t

    out = sliding_window(x, PATCH, net, pad_mode="edge")
    np.testing.assert_array_equal(out, x)
    (window,) = seen  # one window: no blending
    assert window.shape[2:] == PATCH
    np.testing.assert_array_equal(window[0, 0, 0], x[0, 0, 0])  # the slab before repeats the first slice
    np.testing.assert_array_equal(window[0, 0, -1], x[0, 0, -1])


def test_progress_is_reported_per_window():
    calls = []
    x = np.zeros((1, 1, 8, 64, 64), np.float32)
    sliding_window(x, PATCH, lambda t: t, overlap=0.5, on_window=lambda d, n: calls.append((d, n)))
    n = window_count((8, 64, 64), PATCH, 0.5)
    assert calls == [(i + 1, n) for i in range(n)]


@pytest.mark.parametrize("shape", [(8, 32, 32), (10, 40, 70), (5, 20, 20), (19, 77, 33), (30, 31, 100)])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_same_output_as_monai(shape, overlap, mode):
    torch = pytest.importorskip("torch")
    monai_inferers = pytest.importorskip("monai.inferers")
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn((1, 1) + shape)
    calls = []

    def net(t):
        calls.append(1)
        return conv(t)

    with torch.no_grad():
        ours = sliding_window(
            x.numpy(),
            PATCH,
            lambda w: net(torch.from_numpy(w)).numpy(),
            overlap=overlap,
            mode=mode,
            pad_value=float(x.min()),
        )
        n_ours = len(calls)
        theirs = monai_inferers.sliding_window_inference(
            x, PATCH, 1, net, overlap=overlap, mode=mode, padding_mode="constant", cval=float(x.min())
        )
    assert ours.shape == tuple(theirs.shape) == (1, 2) + shape
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=1e-5)
    assert n_ours == len(calls) - n_ours == window_count(shape, PATCH, overlap)


def test_gaussian_weights_equal_monais_importance_map():
    data_utils = pytest.importorskip("monai.data.utils")
    for patch in [(20, 128, 128), (8, 32, 32), (7, 9, 11)]:
        ours = blending_weights(patch)
        theirs = data_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-7)


def test_segmenting_does_not_import_monai(tiny_package):
    code = (
        "import sys\n"
        "from UNetSegmentLib.inference import Predictor\n"
        "from UNetSegmentLib.model_package import ModelPackage\n"
        "import numpy as np, SimpleITK as sitk\n"
        f"p = Predictor(ModelPackage.load({str(tiny_package.path)!r}), device='cpu', quality='best', windows='patch')\n"
        "img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 64, 64)).astype('float32'))\n"
        "p.predict(img)\n"
        "print('monai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
