"""The SimpleITK connected components and hole filling give SciPy's results (which they replace on the
segmentation path, where importing scipy.ndimage cost 0.3 s per run)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from UNetSegmentLib.morphology import fill_holes, label_components, largest_component

ndimage = pytest.importorskip("scipy.ndimage")


@pytest.mark.parametrize("shape", [(10, 30, 30), (1, 20, 20), (5, 7, 9), (3, 1, 40)])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.75])
def test_same_components_and_filled_holes_as_scipy(shape, density):
    mask = np.random.default_rng(int(density * 100) + sum(shape)).random(shape) < density
    labels, n = label_components(mask)
    expected, n_expected = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    assert n == n_expected
    assert len(set(zip(labels[mask].tolist(), expected[mask].tolist()))) == n  # the same partition
    assert not labels[~mask].any()
    assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    for z in range(mask.shape[0]):
        assert np.array_equal(fill_holes(mask[z]), ndimage.binary_fill_holes(mask[z]))


def test_largest_component_and_empty_masks():
    mask = np.zeros((4, 20, 20), bool)
    mask[1:3, 2:5, 2:5] = True  # 18 voxels
    mask[1:3, 10:16, 10:16] = True  # 72 voxels
    big = largest_component(mask)
    assert big.sum() == 72 and big[1, 12, 12]
    empty = np.zeros((3, 4, 5), bool)
    assert label_components(empty)[1] == 0 and not largest_component(empty).any() and not fill_holes(empty).any()
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert fill_holes(ring)[3, 3]
    ring[3, 0:4] = False  # a channel to the border: no longer a hole
    assert not fill_holes(ring)[3, 3]


def test_segmenting_imports_no_scipy(tiny_package, tmp_path):
    import SimpleITK as sitk
    from conftest import synthetic_image

    image = tmp_path / "t2.nrrd"
    sitk.WriteImage(synthetic_image(), str(image))
    code = (
        "import sys\n"
        "from UNetSegmentLib.cli import main\n"
        f"code = main(['segment', {str(image)!r}, '-o', {str(tmp_path / 'o.nrrd')!r}, '--model', "
        f"{str(tiny_package.path)!r}, '--progress', 'none'])\n"
        "print(code, 'scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr
