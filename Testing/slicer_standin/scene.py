"""The stand-in ``vtkMRMLScene`` and a minimal subject hierarchy.

As in Slicer, data nodes (volumes, segmentations, transforms) get a subject
hierarchy item directly under the scene item when they are added, the item
goes away with its node (children move up), and studies/patients are items
without a data node.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional

from . import mrml


class vtkMRMLScene(mrml.Observable):
    NodeAddedEvent = 66000
    NodeAboutToBeRemovedEvent = 66001
    NodeRemovedEvent = 66002
    StartCloseEvent = 66010
    EndCloseEvent = 66011

    def __init__(self) -> None:
        super().__init__()
        self._nodes: List[mrml.vtkMRMLNode] = []
        self._counters: Dict[str, int] = {}
        self._app: Any = None

    def SetApplication(self, app: Any) -> None:
        self._app = app

    # creation
    def CreateNodeByClass(self, className: str) -> mrml.vtkMRMLNode:
        try:
            cls = mrml.NODE_CLASSES[className]
        except KeyError:
            raise ValueError(f"the Slicer stand-in has no node class {className}") from None
        return cls()

    def AddNode(self, node: mrml.vtkMRMLNode) -> mrml.vtkMRMLNode:
        tag = node.GetSingletonTag()
        if tag:
            existing = self.GetSingletonNode(tag, node.GetClassName())
            if existing is not None:
                return existing
        className = node.GetClassName()
        self._counters[className] = self._counters.get(className, 0) + 1
        node._id = f"{className}{self._counters[className]}"
        if not node.GetName():
            node._name = self.GenerateUniqueName(node.GetNodeTagName())
        node._scene = self
        self._nodes.append(node)
        if isinstance(node, _DATA_NODE_TYPES) and not isinstance(node, vtkMRMLSubjectHierarchyNode):
            vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self)._addItemForNode(node)
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def AddNewNodeByClass(self, className: str, nodeName: str = "") -> mrml.vtkMRMLNode:
        node = self.CreateNodeByClass(className)
        if nodeName:
            node._name = nodeName
        return self.AddNode(node)

    def RemoveNode(self, node: Optional[mrml.vtkMRMLNode]) -> None:
        if node is None or node not in self._nodes:
            return
        self.InvokeEvent(self.NodeAboutToBeRemovedEvent, node)
        self._nodes.remove(node)
        for other in self._nodes:
            other._dropReferencesTo(node.GetID())
        sh = self._shNode()
        if sh is not None and node is not sh:
            sh._removeItemForNode(node)
        node._scene = None
        self.InvokeEvent(self.NodeRemovedEvent, node)

    def Clear(self, removeSingletons: bool = False) -> None:
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(reversed(self._nodes)):
            if removeSingletons or not node.GetSingletonTag():
                self.RemoveNode(node)
        self.InvokeEvent(self.EndCloseEvent)

    # queries
    def GetNodeByID(self, nodeId: Optional[str]) -> Optional[mrml.vtkMRMLNode]:
        return next((n for n in self._nodes if n.GetID() == nodeId), None)

    def GetNodes(self) -> List[mrml.vtkMRMLNode]:
        return list(self._nodes)

    def GetNumberOfNodes(self) -> int:
        return len(self._nodes)

    def GetNodesByClass(self, className: str) -> List[mrml.vtkMRMLNode]:
        return [n for n in self._nodes if n.IsA(className)]

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return len(self.GetNodesByClass(className))

    def GetNthNodeByClass(self, n: int, className: str) -> Optional[mrml.vtkMRMLNode]:
        nodes = self.GetNodesByClass(className)
        return nodes[n] if 0 <= n < len(nodes) else None

    def GetFirstNodeByClass(self, className: str) -> Optional[mrml.vtkMRMLNode]:
        return self.GetNthNodeByClass(0, className)

    def GetFirstNodeByName(self, name: str) -> Optional[mrml.vtkMRMLNode]:
        return next((n for n in self._nodes if n.GetName() == name), None)

    def GetSingletonNode(self, tag: str, className: str) -> Optional[mrml.vtkMRMLNode]:
        return next((n for n in self._nodes if n.GetSingletonTag() == tag and n.IsA(className)), None)

    def GenerateUniqueName(self, baseName: str) -> str:
        names = {n.GetName() for n in self._nodes}
        if baseName not in names:
            return baseName
        for i in itertools.count(1):
            candidate = f"{baseName}_{i}"
            if candidate not in names:
                return candidate
        raise AssertionError("unreachable")

    def _shNode(self) -> Optional[vtkMRMLSubjectHierarchyNode]:
        return next((n for n in self._nodes if isinstance(n, vtkMRMLSubjectHierarchyNode)), None)


class vtkMRMLSubjectHierarchyNode(mrml.vtkMRMLNode):
    """Items with a parent, a name, a level and optionally a data node."""

    tagName = "SubjectHierarchy"
    INVALID_ITEM_ID = 0

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(2)
        self._sceneItem = 1
        self._items: Dict[int, Dict[str, Any]] = {1: {"parent": 0, "name": "Scene", "level": "Scene", "node": None}}

    @staticmethod
    def GetSubjectHierarchyNode(scene: vtkMRMLScene) -> vtkMRMLSubjectHierarchyNode:
        sh = scene._shNode()
        if sh is None:
            sh = vtkMRMLSubjectHierarchyNode()
            sh.SetSingletonTag("SubjectHierarchy")
            scene.AddNode(sh)
            for node in scene.GetNodes():
                if isinstance(node, _DATA_NODE_TYPES):
                    sh._addItemForNode(node)
        return sh

    def _addItemForNode(self, node: mrml.vtkMRMLNode) -> int:
        item = next(self._ids)
        self._items[item] = {"parent": self._sceneItem, "name": node.GetName(), "level": "", "node": node}
        return item

    def _removeItemForNode(self, node: mrml.vtkMRMLNode) -> None:
        item = self.GetItemByDataNode(node)
        if item:
            parent = self._items[item]["parent"]
            for child in self._children(item):
                self._items[child]["parent"] = parent
            del self._items[item]

    def _children(self, item: int) -> List[int]:
        return [i for i, d in self._items.items() if d["parent"] == item]

    def GetSceneItemID(self) -> int:
        return self._sceneItem

    def GetItemByDataNode(self, node: Optional[mrml.vtkMRMLNode]) -> int:
        return next((i for i, d in self._items.items() if d["node"] is node and node is not None), self.INVALID_ITEM_ID)

    def GetItemDataNode(self, item: int) -> Optional[mrml.vtkMRMLNode]:
        return self._items.get(item, {}).get("node")

    def GetItemParent(self, item: int) -> int:
        return self._items.get(item, {}).get("parent", self.INVALID_ITEM_ID)

    def SetItemParent(self, item: int, parent: int) -> None:
        if item not in self._items or parent not in self._items:
            raise ValueError(f"invalid subject hierarchy item {item} or parent {parent}")
        self._items[item]["parent"] = parent
        self.Modified()

    def GetItemName(self, item: int) -> str:
        return self._items.get(item, {}).get("name", "")

    def GetItemLevel(self, item: int) -> str:
        return self._items.get(item, {}).get("level", "")

    def _createItem(self, parent: int, name: str, level: str) -> int:
        item = next(self._ids)
        self._items[item] = {"parent": parent, "name": name, "level": level, "node": None}
        return item

    def CreateSubjectItem(self, parent: int, name: str) -> int:
        return self._createItem(parent, name, "Patient")

    def CreateStudyItem(self, parent: int, name: str) -> int:
        return self._createItem(parent, name, "Study")

    def CreateFolderItem(self, parent: int, name: str) -> int:
        return self._createItem(parent, name, "Folder")


_DATA_NODE_TYPES = (mrml.vtkMRMLDisplayableNode,)
