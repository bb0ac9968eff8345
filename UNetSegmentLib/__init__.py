"""UNetSegmentLib: prostate MRI segmentation with a 3D U-Net, independent of 3D Slicer.

Never imports slicer, qt, ctk or vtk: the Slicer module and the training code
both build on it.
"""

__version__ = "0.1.0"
