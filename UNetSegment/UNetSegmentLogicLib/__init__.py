"""Helpers of the UNetSegment Slicer module, kept out of UNetSegment.py so it stays small.

- ``process``: a background process behind a small interface (start, read lines, exit code, kill).
- ``run``: one segmentation run driven by polling: command line, progress, outcome.
- ``models``: the models offered in the panel (installed and downloadable).
- ``dependencies``: Python packages the background process needs on the chosen device, installed on first use.
- ``options``: the panel's device and quality choices (parameter node enums).
- ``results``: the labelmap brought into the scene as a segmentation.
- ``findings``: what the panel shows of a result: volumes, PSA density, confidence, quality flags.
- ``dicomrefs``: the DICOM references Slicer's DICOM export of the segmentation needs.

Only ``results``, ``dicomrefs`` and ``dependencies`` use Slicer's API (``options`` its translation function,
where present); nothing here imports torch.
"""
