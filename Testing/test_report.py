"""The result picture and the batch index page."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import synthetic_image

pytest.importorskip("matplotlib")

from UNetSegmentLib.labels import PROSTATE  # noqa: E402
from UNetSegmentLib.model_package import LabelEntry  # noqa: E402
from UNetSegmentLib.report import _lps_arrays, orientation_letters, write_index_html, write_report_png  # noqa: E402


@pytest.mark.parametrize(
    "vector, letters",
    [((1, 0, 0), "L"), ((-1, 0, 0), "R"), ((0, 1, 0), "P"), ((0, -1, 0), "A"), ((0, 0, 1), "S"), ((0, 0, -1), "I")],
)
def test_orientation_letters(vector, letters):
    assert orientation_letters(vector) == letters


def test_oblique_axes_get_two_letters_largest_first():
    assert orientation_letters((0.8, -0.6, 0)) == "LA"
    assert orientation_letters((0, 0.95, -0.31)) == "P"


def _gland(image: sitk.Image) -> sitk.Image:
    lab = sitk.Cast(sitk.BinaryThreshold(image, 400, 10000, 1, 0), sitk.sitkUInt8)
    lab.CopyInformation(image)
    return lab


def _read_png(path):
    from matplotlib import image as mpimg

    return mpimg.imread(str(path))


def test_picture_outlines_the_gland_in_its_colour_with_volumes_and_flags(tmp_path):
    image = synthetic_image(size_xyz=(96, 96, 20), spacing=(0.8, 0.8, 3.0))
    labels = [LabelEntry(1, PROSTATE)]
    summary = {
        "volumes_ml": {"prostate": 12.3},
        "confidence": 0.87,
        "psa": {"psa_ng_ml": 6.5, "psa_density": 0.528},
        "flags": [{"kind": "output", "code": "x", "message": "A flag sentence."}],
    }
    path = write_report_png(image, _gland(image), labels, tmp_path / "r.png", summary, title="case")
    pixels = _read_png(path)[..., :3]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    colour = np.array(PROSTATE.color) / 255
    near = np.abs(pixels - colour).max(axis=-1) < 0.06
    assert near.sum() > 100, "the outline in the structure's colour"
    assert not list(tmp_path.glob(".*")), "no temporary file left"


def test_an_empty_result_still_gets_a_picture(tmp_path):
    image = synthetic_image()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    path = write_report_png(
        image, empty, [LabelEntry(1, PROSTATE)], tmp_path / "e.png", {"volumes_ml": {"prostate": 0}}
    )
    assert path.stat().st_size > 1000


def test_views_are_taken_from_lps_reoriented_voxels_without_resampling():
    """A sagittal acquisition (slices along x) is permuted to LPS index order, voxel values unchanged."""
    image = synthetic_image(size_xyz=(20, 64, 48), spacing=(3.0, 0.8, 0.8), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    a, lab, spacing, direction = _lps_arrays(image, _gland(image))
    assert np.allclose(direction, np.eye(3))
    # input axes: x -> P (20 voxels, 3 mm), y -> S (64, 0.8 mm), z -> L (48, 0.8 mm)
    assert np.allclose(spacing, (0.8, 3.0, 0.8)) and a.shape == (64, 20, 48) and lab.shape == a.shape
    # the voxel at LPS index (i, j, k) of the reoriented array is at the same physical point as in the input
    reoriented = sitk.DICOMOrient(image, "LPS")
    point = reoriented.TransformIndexToPhysicalPoint((3, 5, 7))
    index = image.TransformPhysicalPointToIndex(point)
    assert a[7, 5, 3] == image[index]


def test_index_page_sorts_by_confidence_and_escapes_text(tmp_path):
    (tmp_path / "pics").mkdir()
    rows = [
        {"case": "b", "report": str(tmp_path / "pics" / "b.png"), "volumes_ml": {"prostate": 40.0}, "confidence": 0.95},
        {
            "case": "a",
            "report": str(tmp_path / "pics" / "a.png"),
            "volumes_ml": {"prostate": 12.0},
            "confidence": 0.71,
            "psa_density": 0.5,
            "flags": [{"message": "Volume <15 mL & odd."}],
        },
        {"case": "c", "status": "failed", "error": "cannot read"},
    ]
    page = write_index_html(rows, tmp_path / "index.html").read_text(encoding="utf-8")
    order = re.findall(r"<tr[^>]*><td>(\w)</td>", page)
    assert order == ["a", "b", "c"]
    assert 'src="pics/a.png"' in page and "Volume &lt;15 mL &amp; odd." in page
    assert "sortBy(" in page and 'data-value="0.71"' in page and "cannot read" in page
