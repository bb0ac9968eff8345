"""DICOM input and output: index the series of a folder or study tree, choose the axial T2, check and read it;
write DICOM Segmentation objects (:mod:`.seg`, imported on its own: it needs highdicom).

- :mod:`.index`: headers only (pydicom), series grouped by SeriesInstanceUID, DICOMDIR followed;
- :mod:`.choice`: which series is the axial T2-weighted one, from DICOM attributes;
- :mod:`.integrity`: slice order and spacing, missing/duplicated slices, damaged files, transfer syntaxes;
- :mod:`.read`: the chosen series as a SimpleITK image, and its instances in slice order
  (:func:`series_instances`) for writers that reference them (DICOM SEG).

Import the submodules directly; this package imports pydicom only when used.
"""

from .choice import Choice, SeriesChoiceError, choose_series, classify, listing
from .index import DicomIndex, NoDicomError, Series, index_folder
from .integrity import SeriesIntegrityError, slice_plan
from .read import DicomRead, InstanceRef, read_dicom, read_series, series_datasets, series_instances

__all__ = [
    "Choice",
    "DicomIndex",
    "DicomRead",
    "InstanceRef",
    "NoDicomError",
    "Series",
    "SeriesChoiceError",
    "SeriesIntegrityError",
    "choose_series",
    "classify",
    "index_folder",
    "listing",
    "read_dicom",
    "read_series",
    "series_datasets",
    "series_instances",
    "slice_plan",
]
