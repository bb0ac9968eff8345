"""Volumes to and from files, as Slicer's volume reader/writer do.

Files (NRRD via SimpleITK) are in LPS; Slicer's nodes are in RAS. The
IJK-to-RAS matrix is ``diag(-1, -1, 1) @ [direction_lps * spacing | origin_lps]``.
Arrays are numpy ``(k, j, i)``; ``vtkImageData`` dimensions are ``(i, j, k)``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def imageDataFromArray(array_kji: np.ndarray) -> vtk.vtkImageData:
    """A ``vtkImageData`` holding a copy of a ``(k, j, i)`` array (origin 0, spacing 1, as in Slicer)."""
    array_kji = np.ascontiguousarray(array_kji)
    image = vtk.vtkImageData()
    image.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    scalars = numpy_support.numpy_to_vtk(array_kji.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def ijkToRasFromImage(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of an ITK image (LPS)."""
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ direction_lps @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return m


def setNodeFromImage(node: Any, image: sitk.Image) -> None:
    """Fill a volume node (data and geometry) from an ITK image."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the Slicer stand-in reads 3D scalar volumes only")
    matrix = vtk.vtkMatrix4x4()
    m = ijkToRasFromImage(image)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, m[r, c])
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(imageDataFromArray(sitk.GetArrayFromImage(image)))


def imageFromNode(node: Any, worldMatrix: Optional[np.ndarray] = None) -> sitk.Image:
    """An ITK image (LPS) of a volume node; ``worldMatrix`` (4x4) moves it by a linear transform first."""
    from .segmentations import volumeArray

    ijkToRas = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijkToRas)
    m = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    if worldMatrix is not None:
        m = worldMatrix @ m
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.array(volumeArray(node)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (LPS_TO_RAS @ (m[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(v) for v in LPS_TO_RAS @ m[:3, 3]])
    return image


def readVolume(path: str) -> sitk.Image:
    if not os.path.isfile(path):
        raise RuntimeError(f"Failed to load node from file: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise RuntimeError(f"Failed to load node from file: {path}\n{str(e).strip().splitlines()[-1]}") from None


def writeVolume(node: Any, path: str, world: bool = False) -> bool:
    from .mrml import matrixToWorld

    worldMatrix = None
    if world:
        t = matrixToWorld(node.GetParentTransformNode())
        worldMatrix = np.array([[t.GetElement(r, c) for c in range(4)] for r in range(4)])
    try:
        sitk.WriteImage(imageFromNode(node, worldMatrix), str(path), True)
    except RuntimeError:
        return False
    return True
