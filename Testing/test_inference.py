"""The inference pipeline: geometry round trip, post-processing, sliding windows, TTA, cancellation, memory.

The network has random weights, so what it segments is meaningless; the
geometry tests therefore also prove the round trip without the network: an
ellipsoid defined in physical (LPS) millimetres is rasterised on the model
grid, brought back with ``ModelGrid.labels_to_input`` and compared with the
same ellipsoid rasterised directly on the input grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_tiny_package, synthetic_image

from UNetSegmentLib import inference
from UNetSegmentLib.inference import CancelledError, Predictor, label_volumes_ml
from UNetSegmentLib.io import read_image
from UNetSegmentLib.postprocessing import largest_component, postprocess_labels
from UNetSegmentLib.preprocessing import ModelGrid, PreprocessingSpec, preprocess_image
from UNetSegmentLib.sliding_window import window_count


def _rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    ax, ay, az = (math.radians(a) for a in (ax_deg, ay_deg, az_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: direction matrices (columns: LPS direction of the voxel axes i, j, k)
DIRECTIONS = {
    "axis-aligned": np.eye(3),
    "oblique": _rotation(12.0, -18.0, 25.0),
    "flipped-ras": np.diag([-1.0, -1.0, 1.0]),  # stored as RAS: i to the right, j anterior
    "sagittal-permuted": np.array(
        [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    ),  # i posterior, j inferior, k right
}


def _grid(
    direction: np.ndarray, size_xyz=(96, 80, 20), spacing=(0.7, 0.7, 3.0), centre_lps=(10.0, -25.0, 40.0)
) -> sitk.Image:
    """An empty uint8 image of ``size_xyz`` whose centre lies at ``centre_lps``."""
    img = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    half = direction @ ((np.array(size_xyz) - 1) * np.array(spacing) / 2)
    img.SetOrigin(tuple(float(v) for v in np.array(centre_lps) - half))
    return img


def _physical_points_zyx(ref: sitk.Image) -> np.ndarray:
    """LPS mm of every voxel centre: array ``(z, y, x, 3)``."""
    x, y, z = ref.GetSize()
    kk, jj, ii = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    idx = np.stack([ii, jj, kk], -1).astype(float) * np.array(ref.GetSpacing())
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    return idx @ direction.T + np.array(ref.GetOrigin())


ELLIPSOID_CENTRE = np.array([25.0, -36.0, 49.0])  # 15, 11, 9 mm off the grid centre, so a flipped axis misses it
ELLIPSOID_AXES = np.array([15.0, 10.0, 12.0])  # mm, all different
ELLIPSOID_ROTATION = _rotation(0.0, 0.0, 30.0)


def _ellipsoid(ref: sitk.Image, centre_lps: np.ndarray = ELLIPSOID_CENTRE) -> np.ndarray:
    """The physical ellipsoid rasterised on ``ref``'s grid: bool ``(z, y, x)``."""
    q = (_physical_points_zyx(ref) - centre_lps) @ ELLIPSOID_ROTATION  # into the ellipsoid's frame
    return (((q / ELLIPSOID_AXES) ** 2).sum(-1)) <= 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _as_image(mask_zyx: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray((100 + 900 * mask_zyx).astype(np.int16))
    img.CopyInformation(ref)
    return img


SPEC = PreprocessingSpec((1.0, 1.2, 2.0), normalization="none")


def _check_round_trip(ref: sitk.Image, centre_lps: np.ndarray = ELLIPSOID_CENTRE) -> None:
    truth_input = _ellipsoid(ref, centre_lps)
    assert truth_input.sum() > 1000
    array_zyx, grid = preprocess_image(_as_image(truth_input, ref), SPEC)
    assert array_zyx.shape == grid.shape_zyx
    truth_model = _ellipsoid(grid.reference, centre_lps)
    # the image went to the model grid at the right place ...
    assert _dice(array_zyx > 550, truth_model) > 0.9
    # ... and a label on the model grid comes back onto the same physical voxels of the input grid
    back = grid.labels_to_input(truth_model.astype(np.uint8) * 2, [2])
    assert back.GetSize() == ref.GetSize() and back.GetOrigin() == ref.GetOrigin()
    assert back.GetDirection() == ref.GetDirection() and back.GetSpacing() == ref.GetSpacing()
    assert _dice(sitk.GetArrayFromImage(back) == 2, truth_input) > 0.9
    # the test can fail: the same label mirrored on the model grid lands elsewhere
    mirrored = grid.labels_to_input(np.ascontiguousarray(truth_model[:, :, ::-1]).astype(np.uint8), [1])
    assert _dice(sitk.GetArrayFromImage(mirrored) == 1, truth_input) < 0.5


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_an_ellipsoid_survives_the_trip_to_the_model_grid_and_back(name):
    _check_round_trip(_grid(DIRECTIONS[name]))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_the_labelmap_is_on_exactly_the_input_grid(tiny_package, name):
    image = synthetic_image(
        size_xyz=(72, 64, 14),
        spacing=(0.9, 0.8, 3.0),
        direction=tuple(DIRECTIONS[name].ravel()),
        origin=(-30.0, 20.5, -50.0),
    )
    result = Predictor(tiny_package, device="cpu").predict(image)
    lab = result.labelmap
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert lab.GetSize() == image.GetSize()
    assert lab.GetSpacing() == image.GetSpacing()
    assert lab.GetOrigin() == image.GetOrigin()
    assert lab.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(lab))) <= {0, 1}


@pytest.mark.shared_data
def test_the_real_dicom_series_round_trips(shared_data, tiny_package):
    image = read_image(shared_data / "prostatex" / "ProstateX-0000" / "dicom" / "t2w")
    assert image.GetSize() == (384, 384, 19)
    lab = Predictor(tiny_package, device="cpu").predict(image).labelmap
    assert lab.GetSize() == image.GetSize() and lab.GetSpacing() == image.GetSpacing()
    assert lab.GetOrigin() == image.GetOrigin() and lab.GetDirection() == image.GetDirection()
    # the ellipsoid proof on the real scanner geometry (centred in the field of view)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    ref = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(image)
    _check_round_trip(ref, np.array(centre) + np.array([15.0, -11.0, 9.0]))


# -- post-processing ----------------------------------------------------------------------------------


def _ball(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def test_only_the_largest_component_is_kept():
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[_ball(labels.shape, (10, 12, 12), 6)] = 1
    labels[_ball(labels.shape, (10, 30, 30), 3)] = 1  # a smaller, separate island
    out = postprocess_labels(labels, [1])
    assert np.array_equal(out == 1, _ball(labels.shape, (10, 12, 12), 6))
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_holes_are_filled_in_3d_and_slice_by_slice():
    shape = (12, 30, 30)
    ball = _ball(shape, (6, 15, 15), 5)
    tube = np.zeros(shape, bool)
    tube[:, 1:8, 20:27] = True
    tube[:, 3:6, 22:25] = False  # open at both ends in z: not a hole in 3D, but one in every slice
    labels = np.zeros(shape, np.uint8)
    labels[ball & ~_ball(shape, (6, 15, 15), 2)] = 1  # a hollow ball
    labels[tube] = 2
    out = postprocess_labels(labels, [1, 2])
    assert np.array_equal(out == 1, ball)
    assert (out[:, 3:6, 22:25] == 2).all() and np.count_nonzero(out == 2) == 12 * 7 * 7


def test_the_transition_zone_is_not_overwritten_by_the_peripheral_zones_hole_filling():
    shape = (10, 40, 40)
    gland = _ball(shape, (5, 20, 20), 12)
    tz = _ball(shape, (5, 20, 20), 7)
    labels = np.where(gland, 1, 0).astype(np.uint8)
    labels[tz] = 2
    labels[5, 20, 20] = 0  # a hole inside the TZ
    out = postprocess_labels(labels, [1, 2])
    assert (out[tz] == 2).all()  # TZ kept, its hole filled with TZ
    assert np.array_equal(out == 1, gland & ~tz)


# -- sliding windows, TTA, cancellation -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 32, 32), (10, 40, 70), (5, 20, 20), (19, 77, 33)])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_window_count_matches_what_monai_runs(shape, overlap):
    from monai.inferers import sliding_window_inference

    calls = []

    def net(x):
        calls.append(x.shape[0])
        return x

    torch = pytest.importorskip("torch")
    sliding_window_inference(torch.zeros((1, 1) + shape), (8, 32, 32), 1, net, overlap=overlap)
    assert window_count(shape, (8, 32, 32), overlap) == sum(calls)


def _inference_reports(predictor, image):
    reports = []
    result = predictor.predict(image, progress=lambda stage, frac: reports.append((stage, frac)))
    return result, [f for s, f in reports if s == "inference"]


class VoxelwiseRuntime:
    """A runtime whose 'network' looks at one voxel at a time (foreground where the normalised
    intensity is above 1): it commutes with flips and crops, so every pass plan must give the
    same labels, and it records the windows it was given."""

    name = "voxelwise"
    device = "cpu"
    precision = "float32"
    threads = 1

    def __init__(self, max_window_voxels: int = 10**9) -> None:
        self.max_window_voxels = max_window_voxels
        self.windows: list = []

    def run(self, x, should_cancel=None):
        self.windows.append(tuple(x.shape[2:]))
        return np.concatenate([np.zeros_like(x), x - 1.0], axis=1).astype(np.float32)

    def fallback(self):
        return None


def block_image(offset_yx=(0, 0), size_xyz=(96, 96, 16)) -> sitk.Image:
    """A bright block (the 'gland') in a dim volume, 1 x 1 x 3 mm, centred unless ``offset_yx`` (voxels)."""
    x, y, z = size_xyz
    array = np.random.default_rng(0).normal(10.0, 2.0, size=(z, y, x)).astype(np.float32)
    cy, cx = y // 2 + offset_yx[0], x // 2 + offset_yx[1]
    array[4:12, cy - 8 : cy + 8, cx - 10 : cx + 6] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    return image


def voxelwise_predictor(package, quality, **kw):
    runtime = VoxelwiseRuntime(**kw)
    return Predictor(package, quality=quality, runtime=runtime), runtime


@pytest.fixture(scope="module")
def mm_package(tmp_path_factory):
    """A tiny package on a 1 x 1 x 3 mm grid with a 4 x 64 x 64 training patch and left-right flips."""
    return make_tiny_package(tmp_path_factory.mktemp("mm"), spacing_xyz=(1.0, 1.0, 3.0), patch_zyx=(4, 64, 64))


def test_fast_is_one_pass_near_the_centre_when_the_gland_is_there(mm_package):
    predictor, rt = voxelwise_predictor(mm_package, "fast")
    result = predictor.predict(block_image())
    assert len(rt.windows) == 1 and rt.windows[0][1:] == (64, 64)  # the centre box: one patch in-plane
    assert result.computed_voxels < result.grid_voxels
    assert result.volumes_ml["prostate"] == pytest.approx(8 * 3 * 16 * 16 / 1000.0, rel=0.05)


def test_standard_runs_the_mirrored_pass_on_a_box_around_the_gland(mm_package):
    predictor, rt = voxelwise_predictor(mm_package, "standard")
    result = predictor.predict(block_image())
    assert len(rt.windows) == 2
    first, mirrored = rt.windows
    assert np.prod(mirrored) <= np.prod(result.probabilities.shape[1:])  # not more than the grid
    box = predictor.gland_box(result.probabilities.argmax(0))
    assert box is not None
    assert all(s.stop - s.start <= n for s, n in zip(box, result.probabilities.shape[1:]))
    best, rt_best = voxelwise_predictor(mm_package, "best")
    best_result = best.predict(block_image())
    assert rt_best.windows[0] == rt_best.windows[1]  # best: both passes over the whole grid
    assert np.array_equal(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(best_result.labelmap))


@pytest.mark.parametrize("offset", [(0, 36), (30, 0), (-30, -30)])
def test_a_gland_off_centre_is_still_found_whole(mm_package, offset):
    """The first pass's box grows towards the gland, or gives way to the whole grid: never a cut gland."""
    image = block_image(offset)
    fast, _ = voxelwise_predictor(mm_package, "fast")
    best, _ = voxelwise_predictor(mm_package, "best")
    a = sitk.GetArrayFromImage(fast.predict(image).labelmap)
    b = sitk.GetArrayFromImage(best.predict(image).labelmap)
    assert a.sum() == b.sum() > 0 and np.array_equal(a, b)


def test_grids_larger_than_the_runtimes_limit_are_tiled(mm_package):
    predictor, rt = voxelwise_predictor(mm_package, "best", max_window_voxels=16 * 48 * 48)
    result = predictor.predict(block_image(size_xyz=(120, 120, 16)))
    assert len(rt.windows) > 2 and all(np.prod(w) <= 16 * 48 * 48 for w in rt.windows)
    whole, _ = voxelwise_predictor(mm_package, "best")
    expected = whole.predict(block_image(size_xyz=(120, 120, 16))).labelmap
    assert np.array_equal(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(expected))


def test_progress_rises_to_one_through_every_pass(mm_package):
    for quality in ("fast", "standard", "best"):
        predictor, _ = voxelwise_predictor(mm_package, quality)
        reports: list = []
        predictor.predict(block_image(), progress=lambda stage, frac, into=reports: into.append((stage, frac)))
        inference = [f for s, f in reports if s == "inference"]
        assert inference[0] == 0.0 and inference[-1] == 1.0 and inference == sorted(inference)
        assert [s for s, _ in reports if s != "inference"] == [
            "preprocessing",
            "preprocessing",
            "postprocessing",
            "resampling",
            "resampling",
        ]


def test_patch_windows_reproduce_the_older_tiling(tiny_package):
    image = synthetic_image()
    predictor = Predictor(tiny_package, device="cpu", quality="standard", windows="patch")
    calls = []
    real = predictor.runtime.run
    predictor.runtime.run = lambda x, should_cancel=None: calls.append(x.shape[2:]) or real(x, should_cancel)
    predictor.predict(image)
    grid_shape = preprocess_image(image, tiny_package.info.preprocessing)[0].shape
    patch = tiny_package.info.inference.patch_size_zyx
    assert all(tuple(c) == tuple(patch) for c in calls)
    assert len(calls) == 2 * window_count(grid_shape, patch, predictor.overlap)


def test_every_combination_of_the_models_flip_axes_is_a_pass(tmp_path):
    pkg = make_tiny_package(tmp_path / "xy", test_time_flips=("y", "x"))
    assert Predictor(pkg, device="cpu").flips == ((3,), (4,), (3, 4))
    assert Predictor(pkg, device="cpu", quality="fast").flips == ()
    assert Predictor(make_tiny_package(tmp_path / "none", test_time_flips=()), device="cpu").flips == ()


def test_flips_are_undone_before_averaging(tmp_path):
    """A voxel-wise network commutes with flips, so on an asymmetric image every quality gives the same labels;
    averaging flipped outputs without flipping them back would mirror part of the segmentation."""
    pkg = make_tiny_package(tmp_path / "xyz", test_time_flips=("x", "y", "z"))
    array = np.random.default_rng(1).normal(10.0, 2.0, size=(16, 64, 64)).astype(np.float32)
    array[4:12, 10:30, 5:25] = 100.0  # bright block off-centre in x, y and z
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    labels = {}
    for quality in ("fast", "standard", "best"):
        predictor, _ = voxelwise_predictor(pkg, quality)
        labels[quality] = sitk.GetArrayFromImage(predictor.predict(image).labelmap)
    assert len(Predictor(pkg, device="cpu").flips) == 7
    assert labels["fast"].sum() > 0 and not np.array_equal(labels["fast"], labels["fast"][:, :, ::-1])
    assert np.array_equal(labels["standard"], labels["fast"])
    assert np.array_equal(labels["best"], labels["fast"])


def test_unknown_quality_is_refused(tiny_package):
    with pytest.raises(ValueError, match="quality must be one of"):
        Predictor(tiny_package, device="cpu", quality="ultra")


def test_cancel_raises_cancelled_error(tiny_package):
    asked = []

    def should_cancel():
        asked.append(1)
        return len(asked) >= 2  # let one window run, then cancel

    predictor = Predictor(tiny_package, device="cpu")
    with pytest.raises(CancelledError):
        predictor.predict(synthetic_image(), should_cancel=should_cancel)
    assert len(asked) == 2
    with pytest.raises(CancelledError):
        predictor.predict(synthetic_image(), should_cancel=lambda: True)
    assert predictor.predict(synthetic_image(), should_cancel=lambda: False).labelmap.GetSize() == (64, 64, 16)


def test_zonal_models_give_both_labels_and_their_volumes(tmp_path):
    pkg = make_tiny_package(tmp_path / "zonal", structures=("peripheral_zone", "transition_zone"), seed=1)
    result = Predictor(pkg, device="cpu").predict(synthetic_image())
    assert set(result.volumes_ml) == {"peripheral_zone", "transition_zone"}
    assert set(np.unique(sitk.GetArrayViewFromImage(result.labelmap))) <= {0, 1, 2}
    assert set(result.timings_s) == {"preprocessing", "inference", "postprocessing", "resampling"}


def test_label_volumes_are_voxel_counts_times_voxel_volume(tiny_package):
    arr = np.zeros((10, 20, 20), np.uint8)
    arr[2:6, 5:15, 5:10] = 1  # 200 voxels
    lab = sitk.GetImageFromArray(arr)
    lab.SetSpacing((0.5, 0.5, 3.0))  # 0.75 mm^3
    assert label_volumes_ml(lab, tiny_package.info.labels) == {"prostate": pytest.approx(0.15)}


def test_full_resolution_maps_exist_for_one_label_at_a_time(tmp_path, monkeypatch):
    """Class probabilities live on the (coarse) model grid; at input resolution only one float indicator at a time."""
    pkg = make_tiny_package(tmp_path / "zonal", structures=("peripheral_zone", "transition_zone"))
    image = synthetic_image(size_xyz=(128, 128, 30), spacing=(0.5, 0.5, 1.5))
    softmax_shapes, input_grid_resamples, handed_back = [], [], []
    real_softmax, real_resample, real_back = inference._softmax, sitk.Resample, ModelGrid.labels_to_input

    def softmax(x):
        softmax_shapes.append(tuple(x.shape))
        return real_softmax(x)

    def resample(*args, **kwargs):
        out = real_resample(*args, **kwargs)
        if out.GetSize() == image.GetSize():
            input_grid_resamples.append((out.GetPixelID(), out.GetNumberOfComponentsPerPixel()))
        return out

    def labels_to_input(self, labels_zyx, values):
        handed_back.append((labels_zyx.dtype, labels_zyx.shape, self.shape_zyx))
        return real_back(self, labels_zyx, values)

    monkeypatch.setattr(inference, "_softmax", softmax)
    monkeypatch.setattr(sitk, "Resample", resample)
    monkeypatch.setattr(ModelGrid, "labels_to_input", labels_to_input)
    Predictor(pkg, device="cpu").predict(image)
    ((dtype, shape, model_shape),) = handed_back
    assert dtype == np.uint8 and shape == model_shape
    assert all(s[2:] == model_shape for s in softmax_shapes) and np.prod(model_shape) * 20 < np.prod(image.GetSize())
    assert input_grid_resamples == [(sitk.sitkFloat32, 1)] * 2  # one indicator per label, one after the other


def test_labels_to_input_writes_nothing_outside_the_labels():
    """Regression: a numpy view of a temporary resampled image read freed memory (stray voxels, crashes)."""
    from scipy import ndimage

    from UNetSegmentLib.preprocessing import PreprocessingSpec, model_grid

    img = sitk.Image([384, 384, 24], sitk.sitkFloat32)
    img.SetSpacing((0.5, 0.5, 3.0))
    grid = model_grid(img, PreprocessingSpec(spacing_xyz_mm=(1.0, 1.0, 3.0)))
    for _ in range(5):
        labels = np.zeros(grid.shape_zyx, np.uint8)
        labels[5:15, 50:100, 50:100] = 1
        out = sitk.GetArrayFromImage(grid.labels_to_input(labels, [1]))
        _, n = ndimage.label(out == 1, structure=np.ones((3, 3, 3), bool))
        assert n == 1 and not out[:, :90, :].any() and not out[:, :, :90].any()


def test_onnx_runtime_stops_a_run_under_way_when_cancelled(tiny_package):
    """RunOptions.terminate ends ONNX Runtime between two operators: cancel answers within the run."""
    from UNetSegmentLib.runtime import create_runtime

    rt = create_runtime(tiny_package, backend="onnxruntime", device="cpu")
    x = np.random.default_rng(0).normal(size=(1, 1, 48, 320, 320)).astype(np.float32)
    asked = []

    def should_cancel():
        asked.append(1)
        return len(asked) > 1  # not before the run starts; at the first look while it runs

    with pytest.raises(CancelledError):
        rt.run(x, should_cancel)
    assert len(asked) >= 2
    assert rt.run(x[:, :, :8, :64, :64]).shape == (1, 2, 8, 64, 64)  # the session still works afterwards
