"""DICOM input and output: the source series' headers and DICOM Segmentation objects (``seg``)."""
