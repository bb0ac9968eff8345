"""Segmentations of the stand-in: segments, tags, shared labelmaps, reference geometry.

Follows ``Libs/vtkSegmentationCore`` and ``vtkSlicerSegmentationsModuleLogic``:
``ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds)``
maps label value ``i + 1`` to ``segmentIds[i]`` (empty IDs skipped), creates
missing segments named by their ID, and takes parent transforms of the two
nodes into account (linear transforms change the geometry, no resampling).
A binary labelmap is an :class:`OrientedImage`: a numpy ``(k, j, i)`` array and
its IJK-to-RAS matrix.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from . import mrml

BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"


def _matrixToArray(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


class OrientedImage:
    """A labelmap ``(k, j, i)`` with its IJK-to-RAS 4x4 matrix (stand-in of vtkOrientedImageData)."""

    def __init__(self, array_kji: np.ndarray, ijkToRas: np.ndarray) -> None:
        self.array_kji = array_kji
        self.ijkToRas = np.asarray(ijkToRas, dtype=float)


class vtkSegmentationConverter:
    @staticmethod
    def GetSegmentationBinaryLabelmapRepresentationName() -> str:
        return BINARY_LABELMAP

    @staticmethod
    def GetBinaryLabelmapRepresentationName() -> str:
        return BINARY_LABELMAP

    @staticmethod
    def GetSegmentationClosedSurfaceRepresentationName() -> str:
        return CLOSED_SURFACE

    @staticmethod
    def GetClosedSurfaceRepresentationName() -> str:
        return CLOSED_SURFACE

    @staticmethod
    def GetReferenceImageGeometryParameterName() -> str:
        return "Reference image geometry"

    @staticmethod
    def SerializeImageGeometry(geometryMatrix: vtk.vtkMatrix4x4, imageData: vtk.vtkImageData) -> str:
        """16 matrix elements row by row, then the 6 extent values, each followed by ';' (as Slicer)."""
        values = [repr(geometryMatrix.GetElement(r, c)) for r in range(4) for c in range(4)]
        values += [str(e) for e in imageData.GetExtent()]
        return "".join(v + ";" for v in values)

    @staticmethod
    def DeserializeImageGeometry(geometryString: str, geometryMatrix: vtk.vtkMatrix4x4, extent: List[int]) -> bool:
        parts = [p for p in geometryString.split(";") if p]
        if len(parts) != 22:
            return False
        for i in range(16):
            geometryMatrix.SetElement(i // 4, i % 4, float(parts[i]))
        extent[:] = [int(p) for p in parts[16:]]
        return True


class vtkSegment:
    def __init__(self) -> None:
        self._name = ""
        self._color = (0.5, 0.5, 0.5)
        self._tags: Dict[str, str] = {}
        self._labelValue = 1
        self._representations: Dict[str, Any] = {}

    @staticmethod
    def GetTerminologyEntryTagName() -> str:
        return "TerminologyEntry"

    def SetName(self, name: str) -> None:
        self._name = str(name)

    def GetName(self) -> str:
        return self._name

    def SetColor(self, *color: Any) -> None:
        rgb = color[0] if len(color) == 1 else color
        self._color = tuple(float(c) for c in rgb)

    def GetColor(self) -> tuple:
        return self._color

    def SetTag(self, tag: str, value: Any) -> None:
        self._tags[str(tag)] = str(value)

    def GetTag(self, tag: str, value: Any) -> bool:
        """Real signature: ``GetTag(tag, vtk.mutable(""))`` fills the mutable and returns found."""
        if tag not in self._tags:
            return False
        value.set(self._tags[tag])
        return True

    def HasTag(self, tag: str) -> bool:
        return tag in self._tags

    def SetLabelValue(self, value: int) -> None:
        self._labelValue = int(value)

    def GetLabelValue(self) -> int:
        return self._labelValue

    def AddRepresentation(self, name: str, data: Any) -> None:
        self._representations[name] = data

    def GetRepresentation(self, name: str) -> Any:
        return self._representations.get(name)


class vtkSegmentation:
    def __init__(self) -> None:
        self._segments: Dict[str, vtkSegment] = {}
        self._conversionParameters: Dict[str, str] = {}
        self._representations = {BINARY_LABELMAP}

    def GetSourceRepresentationName(self) -> str:
        return BINARY_LABELMAP

    def GenerateUniqueSegmentID(self, base: str = "") -> str:
        base = base or "Segment"
        if base not in self._segments:
            return base
        i = 1
        while f"{base}_{i}" in self._segments:
            i += 1
        return f"{base}_{i}"

    def AddSegment(self, segment: vtkSegment, segmentId: str = "", insertBeforeSegmentId: str = "") -> bool:
        segmentId = segmentId or self.GenerateUniqueSegmentID(segment.GetName())
        if segmentId in self._segments:
            return False
        self._segments[segmentId] = segment
        return True

    def AddEmptySegment(self, segmentId: str = "", segmentName: str = "", color: Optional[tuple] = None) -> str:
        segment = vtkSegment()
        segment.SetName(segmentName or self.GenerateUniqueSegmentID("Segment"))
        if color is not None:
            segment.SetColor(color)
        segmentId = segmentId or self.GenerateUniqueSegmentID(segment.GetName())
        self.AddSegment(segment, segmentId)
        return segmentId

    def GetSegment(self, segmentId: str) -> Optional[vtkSegment]:
        return self._segments.get(segmentId)

    def GetNumberOfSegments(self) -> int:
        return len(self._segments)

    def GetNthSegmentID(self, n: int) -> str:
        ids = list(self._segments)
        return ids[n] if 0 <= n < len(ids) else ""

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        return next((i for i, s in self._segments.items() if s.GetName().lower() == name.lower()), "")

    def RemoveSegment(self, segment: Any) -> None:
        segmentId = (
            segment if isinstance(segment, str) else next((i for i, s in self._segments.items() if s is segment), "")
        )
        self._segments.pop(segmentId, None)

    def ClearSegment(self, segmentId: str) -> None:
        segment = self._segments.get(segmentId)
        if segment is not None:
            segment._representations.pop(BINARY_LABELMAP, None)

    def SetConversionParameter(self, name: str, value: str) -> None:
        self._conversionParameters[name] = value

    def GetConversionParameter(self, name: str) -> str:
        return self._conversionParameters.get(name, "")

    def CreateRepresentation(self, name: str, alwaysConvert: bool = False) -> bool:
        """Recorded only: the stand-in does not compute surfaces."""
        self._representations.add(name)
        return True

    def RemoveRepresentation(self, name: str) -> None:
        self._representations.discard(name)

    def ContainsRepresentation(self, name: str) -> bool:
        return name in self._representations


class vtkMRMLSegmentationStorageNode(mrml.vtkMRMLStorageNode):
    tagName = "SegmentationStorage"


class vtkMRMLSegmentationNode(mrml.vtkMRMLDisplayableNode):
    tagName = "Segmentation"
    displayNodeClass = "vtkMRMLSegmentationDisplayNode"
    storageNodeClass = "vtkMRMLSegmentationStorageNode"

    def __init__(self) -> None:
        super().__init__()
        self._segmentation = vtkSegmentation()

    @staticmethod
    def GetReferenceImageGeometryReferenceRole() -> str:
        return "referenceImageGeometryRef"

    def GetSegmentation(self) -> vtkSegmentation:
        return self._segmentation

    def SetSourceRepresentationToBinaryLabelmap(self) -> bool:
        return True

    def CreateClosedSurfaceRepresentation(self) -> bool:
        return self._segmentation.CreateRepresentation(CLOSED_SURFACE)

    def RemoveClosedSurfaceRepresentation(self) -> None:
        self._segmentation.RemoveRepresentation(CLOSED_SURFACE)

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode: Any) -> None:
        """Volume geometry, moved into this node's coordinates if parent transforms differ (linear)."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            return
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        geometry = _transformBetween(volumeNode, self) @ _matrixToArray(ijkToRas)
        serialized = vtkSegmentationConverter.SerializeImageGeometry(
            _arrayToMatrix(geometry), volumeNode.GetImageData()
        )
        self._segmentation.SetConversionParameter(
            vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), serialized
        )
        self.SetNodeReferenceID(self.GetReferenceImageGeometryReferenceRole(), volumeNode.GetID())


def _transformBetween(fromNode: Any, toNode: Any) -> np.ndarray:
    """Matrix from ``fromNode``'s local coordinates to ``toNode``'s (linear transforms only)."""
    fromWorld = _matrixToArray(mrml.matrixToWorld(fromNode.GetParentTransformNode()))
    toWorld = _matrixToArray(mrml.matrixToWorld(toNode.GetParentTransformNode()))
    return np.linalg.inv(toWorld) @ fromWorld


def volumeArray(volumeNode: Any) -> np.ndarray:
    """``(k, j, i)`` view of a volume's scalars (what slicer.util.arrayFromVolume returns)."""
    image = volumeNode.GetImageData()
    dims = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(dims[2], dims[1], dims[0])


class vtkSlicerSegmentationsModuleLogic:
    @staticmethod
    def ImportLabelmapToSegmentationNode(
        labelmapNode: Any, segmentationNode: Any, segmentIds: Any = "", userMessages: Any = None
    ) -> bool:
        if segmentationNode is None or labelmapNode is None or labelmapNode.GetImageData() is None:
            return False
        ijkToRas = vtk.vtkMatrix4x4()
        labelmapNode.GetIJKToRASMatrix(ijkToRas)
        geometry = _transformBetween(labelmapNode, segmentationNode) @ _matrixToArray(ijkToRas)
        image = OrientedImage(volumeArray(labelmapNode).copy(), geometry)
        segmentation = segmentationNode.GetSegmentation()
        if isinstance(segmentIds, str):  # overload: one new segment per label value
            values = sorted(int(v) for v in np.unique(image.array_kji) if v != 0)
            ids = vtk.vtkStringArray()
            for value in range(1, max(values, default=0) + 1):
                ids.InsertNextValue(segmentation.GenerateUniqueSegmentID(f"Label_{value}") if value in values else "")
            segmentIds = ids
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        for index in range(segmentIds.GetNumberOfValues()):
            segmentId = segmentIds.GetValue(index)
            if not segmentId:
                continue
            segment = segmentation.GetSegment(segmentId)
            if segment is None:
                segment = vtkSegment()
                segment.SetName(segmentId)
                segmentation.AddSegment(segment, segmentId)
            segmentation.ClearSegment(segmentId)
            segment.SetLabelValue(index + 1)
            segment.AddRepresentation(BINARY_LABELMAP, image)
        segmentationNode.Modified()
        return True


class TerminologiesLogic:
    """``slicer.modules.terminologies.logic()``: loads ``.term.json`` contexts by name."""

    def __init__(self) -> None:
        self.contexts: Dict[str, Dict[str, Any]] = {}

    def LoadTerminologyFromFile(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            name = doc["SegmentationCategoryTypeContextName"]
            doc["SegmentationCodes"]["Category"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        self.contexts[name] = doc
        return name

    def GetLoadedTerminologyNames(self, names: Any) -> None:
        for name in self.contexts:
            names.InsertNextValue(name)


TERMINOLOGIES = TerminologiesLogic()

EXPORTED = (
    "vtkSegment",
    "vtkSegmentation",
    "vtkSegmentationConverter",
    "vtkSlicerSegmentationsModuleLogic",
)
