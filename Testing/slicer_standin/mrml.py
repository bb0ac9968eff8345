"""MRML scene and nodes of the stand-in: IDs, names, attributes, references, events, geometry.

Mirrors ``Libs/MRML/Core`` of Slicer: node IDs are ``<ClassName><n>``;
removing a node from the scene drops every reference to it; volumes keep
origin, spacing and IJK-to-RAS directions (``vtkImageData`` origin and
spacing stay 0 and 1 as in Slicer); transforms are linear matrices to their
parent.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import vtk

ModifiedEvent = vtk.vtkCommand.ModifiedEvent


class Observable:
    """``AddObserver`` / ``RemoveObserver`` / ``InvokeEvent`` with VTK's calling convention."""

    def __init__(self) -> None:
        self._observers: Dict[int, tuple] = {}
        self._tags = itertools.count(1)

    def AddObserver(self, event: Any, callback: Callable, priority: float = 0.0) -> int:
        tag = next(self._tags)
        self._observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self._observers.pop(tag, None)

    def RemoveAllObservers(self) -> None:
        self._observers.clear()

    def InvokeEvent(self, event: Any, callData: Any = None) -> None:
        for ev, callback in list(self._observers.values()):
            if ev == event or ev == vtk.vtkCommand.AnyEvent:
                if callData is None:
                    callback(self, event)
                else:
                    callback(self, event, callData)

    def Modified(self) -> None:
        self.InvokeEvent(ModifiedEvent)


def _className(obj: Any) -> str:
    return type(obj).__name__


class vtkMRMLNode(Observable):
    """Base node: ID, name, attributes, node references by role."""

    tagName = "Node"

    def __init__(self) -> None:
        super().__init__()
        self._id: Optional[str] = None
        self._name: Optional[str] = None
        self._scene: Optional[vtkMRMLScene] = None
        self._attributes: Dict[str, str] = {}
        self._references: Dict[str, List[str]] = {}
        self._singletonTag: Optional[str] = None
        self._hideFromEditors = False

    # identity
    def GetClassName(self) -> str:
        return _className(self)

    def IsA(self, className: str) -> bool:
        return any(c.__name__ == className for c in type(self).__mro__)

    def GetID(self) -> Optional[str]:
        return self._id

    def GetName(self) -> Optional[str]:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name
        self.Modified()

    def GetNodeTagName(self) -> str:
        return self.tagName

    def GetScene(self) -> Optional[vtkMRMLScene]:
        return self._scene

    def SetSingletonTag(self, tag: str) -> None:
        self._singletonTag = tag

    def GetSingletonTag(self) -> Optional[str]:
        return self._singletonTag

    def SetHideFromEditors(self, hide: bool) -> None:
        self._hideFromEditors = bool(hide)

    def GetHideFromEditors(self) -> bool:
        return self._hideFromEditors

    def UnRegister(self, obj: Any) -> None:
        """Reference counting is Python's here; kept for call compatibility."""

    # attributes
    def SetAttribute(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self._attributes.pop(name, None)
        else:
            self._attributes[name] = str(value)
        self.Modified()

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    # references
    def SetNodeReferenceID(self, role: str, referencedNodeID: Optional[str]) -> None:
        if referencedNodeID:
            self._references[role] = [referencedNodeID]
        else:
            self._references.pop(role, None)
        self.Modified()

    def AddNodeReferenceID(self, role: str, referencedNodeID: str) -> None:
        self._references.setdefault(role, []).append(referencedNodeID)
        self.Modified()

    def GetNodeReferenceID(self, role: str) -> Optional[str]:
        ids = self._references.get(role)
        return ids[0] if ids else None

    def GetNthNodeReferenceID(self, role: str, n: int) -> Optional[str]:
        ids = self._references.get(role, [])
        return ids[n] if 0 <= n < len(ids) else None

    def GetNumberOfNodeReferences(self, role: str) -> int:
        return len(self._references.get(role, []))

    def GetNodeReference(self, role: str) -> Optional[vtkMRMLNode]:
        nodeId = self.GetNodeReferenceID(role)
        return self._scene.GetNodeByID(nodeId) if (nodeId and self._scene) else None

    def GetNthNodeReference(self, role: str, n: int) -> Optional[vtkMRMLNode]:
        nodeId = self.GetNthNodeReferenceID(role, n)
        return self._scene.GetNodeByID(nodeId) if (nodeId and self._scene) else None

    def _dropReferencesTo(self, nodeId: str) -> None:
        for role in list(self._references):
            self._references[role] = [i for i in self._references[role] if i != nodeId]
            if not self._references[role]:
                del self._references[role]


class vtkMRMLStorageNode(vtkMRMLNode):
    tagName = "Storage"

    def __init__(self) -> None:
        super().__init__()
        self._fileName = ""

    def SetFileName(self, fileName: str) -> None:
        self._fileName = str(fileName)

    def GetFileName(self) -> str:
        return self._fileName


class vtkMRMLVolumeArchetypeStorageNode(vtkMRMLStorageNode):
    tagName = "VolumeArchetypeStorage"


class vtkMRMLDisplayNode(vtkMRMLNode):
    tagName = "Display"

    def __init__(self) -> None:
        super().__init__()
        self._visibility = True

    def SetVisibility(self, visible: bool) -> None:
        self._visibility = bool(visible)

    def GetVisibility(self) -> bool:
        return self._visibility


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLDisplayNode):
    tagName = "VolumeDisplay"


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLDisplayNode):
    tagName = "LabelMapVolumeDisplay"


class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    tagName = "SegmentationDisplay"

    def __init__(self) -> None:
        super().__init__()
        self._visibility3D = True
        self.preferredDisplayRepresentation3D: Optional[str] = None

    def SetVisibility3D(self, visible: bool) -> None:
        self._visibility3D = bool(visible)

    def GetVisibility3D(self) -> bool:
        return self._visibility3D

    def SetPreferredDisplayRepresentationName3D(self, name: str) -> None:
        self.preferredDisplayRepresentation3D = name


class vtkMRMLStorableNode(vtkMRMLNode):
    storageNodeClass = "vtkMRMLStorageNode"

    def GetStorageNode(self) -> Optional[vtkMRMLStorageNode]:
        return self.GetNodeReference("storage")  # type: ignore[return-value]

    def SetAndObserveStorageNodeID(self, nodeId: Optional[str]) -> None:
        self.SetNodeReferenceID("storage", nodeId)

    def AddDefaultStorageNode(self) -> bool:
        if self.GetStorageNode() is None and self._scene is not None:
            storage = self._scene.AddNewNodeByClass(self.storageNodeClass)
            self.SetAndObserveStorageNodeID(storage.GetID())
        return True


class vtkMRMLTransformableNode(vtkMRMLStorableNode):
    def SetAndObserveTransformNodeID(self, transformNodeID: Optional[str]) -> bool:
        self.SetNodeReferenceID("transform", transformNodeID)
        return True

    def GetTransformNodeID(self) -> Optional[str]:
        return self.GetNodeReferenceID("transform")

    def GetParentTransformNode(self) -> Optional[vtkMRMLTransformNode]:
        return self.GetNodeReference("transform")  # type: ignore[return-value]


class vtkMRMLDisplayableNode(vtkMRMLTransformableNode):
    displayNodeClass = "vtkMRMLDisplayNode"

    def CreateDefaultDisplayNodes(self) -> None:
        if self.GetDisplayNode() is None and self._scene is not None:
            display = self._scene.AddNewNodeByClass(self.displayNodeClass)
            self.AddAndObserveDisplayNodeID(display.GetID())

    def AddAndObserveDisplayNodeID(self, nodeId: str) -> None:
        self.AddNodeReferenceID("display", nodeId)

    def SetAndObserveDisplayNodeID(self, nodeId: Optional[str]) -> None:
        self.SetNodeReferenceID("display", nodeId)

    def GetDisplayNode(self) -> Optional[vtkMRMLDisplayNode]:
        return self.GetNodeReference("display")  # type: ignore[return-value]

    def GetNumberOfDisplayNodes(self) -> int:
        return self.GetNumberOfNodeReferences("display")

    def GetNthDisplayNode(self, n: int) -> Optional[vtkMRMLDisplayNode]:
        return self.GetNthNodeReference("display", n)  # type: ignore[return-value]


class vtkMRMLTransformNode(vtkMRMLDisplayableNode):
    tagName = "Transform"

    def __init__(self) -> None:
        super().__init__()
        self._toParent = vtk.vtkMatrix4x4()

    def IsLinear(self) -> bool:
        return True

    def SetMatrixTransformToParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._toParent.DeepCopy(matrix)
        self.Modified()

    def GetMatrixTransformToParent(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.DeepCopy(self._toParent)

    def GetMatrixTransformToWorld(self, matrix: vtk.vtkMatrix4x4) -> None:
        """Product of this transform and all its parents (this one applied first)."""
        result = vtk.vtkMatrix4x4()
        result.DeepCopy(self._toParent)
        parent = self.GetParentTransformNode()
        while parent is not None:
            vtk.vtkMatrix4x4.Multiply4x4(parent._toParent, result, result)
            parent = parent.GetParentTransformNode()
        matrix.DeepCopy(result)


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    tagName = "LinearTransform"


def matrixToWorld(transformNode: Optional[vtkMRMLTransformNode]) -> vtk.vtkMatrix4x4:
    """Local-to-world matrix of a node under ``transformNode`` (identity if None)."""
    m = vtk.vtkMatrix4x4()
    if transformNode is not None:
        transformNode.GetMatrixTransformToWorld(m)
    return m


class vtkMRMLVolumeNode(vtkMRMLDisplayableNode):
    """Image data plus IJK-to-RAS geometry kept as origin, spacing and direction columns."""

    tagName = "Volume"
    storageNodeClass = "vtkMRMLVolumeArchetypeStorageNode"

    def __init__(self) -> None:
        super().__init__()
        self._imageData: Optional[vtk.vtkImageData] = None
        self._origin = np.zeros(3)
        self._spacing = np.ones(3)
        self._directions = np.eye(3)  # columns: RAS direction of i, j, k

    def SetAndObserveImageData(self, imageData: Optional[vtk.vtkImageData]) -> None:
        self._imageData = imageData
        self.Modified()

    def GetImageData(self) -> Optional[vtk.vtkImageData]:
        return self._imageData

    def SetOrigin(self, *origin: Any) -> None:
        self._origin = np.array(origin[0] if len(origin) == 1 else origin, dtype=float)

    def GetOrigin(self) -> tuple:
        return tuple(self._origin)

    def SetSpacing(self, *spacing: Any) -> None:
        self._spacing = np.array(spacing[0] if len(spacing) == 1 else spacing, dtype=float)

    def GetSpacing(self) -> tuple:
        return tuple(self._spacing)

    def SetIJKToRASDirectionMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self._directions = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])

    def GetIJKToRASDirectionMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        matrix.Identity()
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, self._directions[r, c])

    def SetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        self._spacing = spacing
        self._directions = m[:3, :3] / spacing
        self._origin = m[:3, 3].copy()
        self.Modified()

    def GetIJKToRASMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        m = np.eye(4)
        m[:3, :3] = self._directions * self._spacing
        m[:3, 3] = self._origin
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, m[r, c])

    def GetRASToIJKMatrix(self, matrix: vtk.vtkMatrix4x4) -> None:
        self.GetIJKToRASMatrix(matrix)
        matrix.Invert()


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    displayNodeClass = "vtkMRMLScalarVolumeDisplayNode"


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    tagName = "LabelMapVolume"
    displayNodeClass = "vtkMRMLLabelMapVolumeDisplayNode"


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """String parameters by name, as used by parameter nodes."""

    tagName = "ScriptedModule"

    def __init__(self) -> None:
        super().__init__()
        self._parameters: Dict[str, str] = {}

    def SetParameter(self, name: str, value: str) -> None:
        if self._parameters.get(name) != str(value):
            self._parameters[name] = str(value)
            self.Modified()

    def GetParameter(self, name: str) -> str:
        return self._parameters.get(name, "")

    def UnsetParameter(self, name: str) -> None:
        if self._parameters.pop(name, None) is not None:
            self.Modified()

    def GetParameterNames(self) -> List[str]:
        return list(self._parameters)

    def HasParameter(self, name: str) -> bool:
        return name in self._parameters


class vtkMRMLMessageCollection:
    """Collects warnings/errors of IO calls."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def AddMessage(self, eventId: int, text: str) -> None:
        self.messages.append(text)

    def GetNumberOfMessages(self) -> int:
        return len(self.messages)

    def GetAllMessagesAsString(self) -> str:
        return "\n".join(self.messages)


# The subject hierarchy and the scene are in their own modules; imported here so
# NODE_CLASSES lists every class the scene can create.
from .scene import vtkMRMLScene, vtkMRMLSubjectHierarchyNode  # noqa: E402
from .segmentations import vtkMRMLSegmentationNode, vtkMRMLSegmentationStorageNode  # noqa: E402

NODE_CLASSES: Dict[str, type] = {
    c.__name__: c
    for c in (
        vtkMRMLNode,
        vtkMRMLStorageNode,
        vtkMRMLVolumeArchetypeStorageNode,
        vtkMRMLDisplayNode,
        vtkMRMLScalarVolumeDisplayNode,
        vtkMRMLLabelMapVolumeDisplayNode,
        vtkMRMLSegmentationDisplayNode,
        vtkMRMLTransformNode,
        vtkMRMLLinearTransformNode,
        vtkMRMLVolumeNode,
        vtkMRMLScalarVolumeNode,
        vtkMRMLLabelMapVolumeNode,
        vtkMRMLScriptedModuleNode,
        vtkMRMLSegmentationNode,
        vtkMRMLSegmentationStorageNode,
        vtkMRMLSubjectHierarchyNode,
    )
}
