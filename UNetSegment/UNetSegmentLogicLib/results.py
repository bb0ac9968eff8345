"""Bring a labelmap written by the background process into the scene as a segmentation.

One segment per structure (ID = structure name, e.g. ``prostate``), with the
model's display name, colour and terminology (SNOMED CT codes); the input
volume is the reference geometry; the segmentation shares the input's parent
transform and goes under the input's study in the subject hierarchy. The
temporary labelmap node is removed. If anything fails, a segmentation node
created here is removed again and segments added to an existing node are
taken out, so a failed import leaves no half-made segmentation.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

#: Anatomic context of Slicer's default terminology (region fields are left empty).
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def terminologyEntry(contextName: str, label: Dict[str, Any]) -> str:
    """Serialized terminology entry of a model label (``LabelEntry.to_dict()``), Slicer's ``~`` / ``^`` format.

    ``context~catScheme^catCode^catMeaning~typeScheme^typeCode^typeMeaning~^^~anatomicContext~^^~^^``
    """
    term = label.get("terminology", {})

    def coded(key: str) -> str:
        c = term.get(key, {})
        return f"{c.get('scheme', '')}^{c.get('code', '')}^{c.get('meaning', '')}"

    return f"{contextName}~{coded('category')}~{coded('type')}~^^~{ANATOMIC_CONTEXT}~^^~^^"


def removeNode(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes (nothing is left behind in the scene)."""
    if node is None or node.GetScene() is None:
        return
    extra = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        extra += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetStorageNode"):
        extra.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for other in extra:
        if other is not None and other.GetScene() is not None:
            scene.RemoveNode(other)


def loadLabelmap(slicer: Any, path: str, inputVolume: Any) -> Any:
    """Load the result as a labelmap node and check that it is on the input's voxel grid."""
    try:
        labelmap = slicer.util.loadLabelVolume(path, {"name": "UNetSegment temporary labelmap", "show": False})
    except RuntimeError as e:
        raise RuntimeError(f"The segmentation result could not be read ({str(e).splitlines()[0]}).") from None
    expected = inputVolume.GetImageData().GetDimensions()
    found = labelmap.GetImageData().GetDimensions() if labelmap.GetImageData() else None
    if found != expected:
        removeNode(slicer.mrmlScene, labelmap)
        raise RuntimeError(f"The segmentation result has {found} voxels, the input {expected}; it was not imported.")
    return labelmap


def _prepareSegments(segmentation: Any, labels: Sequence[Dict[str, Any]], terminologyContext: str) -> List[str]:
    """Create or update one segment per label; returns the IDs of segments created here."""
    added = []
    for label in labels:
        segmentId = label["name"]
        color = tuple(c / 255.0 for c in label.get("color", (128, 128, 128)))
        segment = segmentation.GetSegment(segmentId)
        if segment is None:
            segmentation.AddEmptySegment(segmentId, label.get("display_name", segmentId), color)
            segment = segmentation.GetSegment(segmentId)
            added.append(segmentId)
        segment.SetName(label.get("display_name", segmentId))
        segment.SetColor(color)
        if terminologyContext and label.get("terminology"):
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminologyEntry(terminologyContext, label))
    return added


def _placeInHierarchy(slicer: Any, segmentationNode: Any, inputVolume: Any) -> None:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
    item = shNode.GetItemByDataNode(segmentationNode)
    if parent and item:
        shNode.SetItemParent(item, parent)


def importLabelmap(
    slicer: Any,
    vtk: Any,
    labelmapPath: str,
    inputVolume: Any,
    labels: Sequence[Dict[str, Any]],
    segmentationNode: Optional[Any] = None,
    terminologyContext: str = "",
    show3D: bool = False,
    name: Optional[str] = None,
) -> Any:
    """Import the labelmap at ``labelmapPath`` (on the input's grid); returns the segmentation node.

    ``labels``: ``[{"value", "name", "display_name", "color" (0-255), "terminology"}]``
    as in the model's ``model.json``. ``segmentationNode`` None creates one
    named ``name``; an existing node keeps its other segments, and segments
    with the same IDs are replaced.
    """
    scene = slicer.mrmlScene
    labelmap = loadLabelmap(slicer, labelmapPath, inputVolume)
    created = segmentationNode is None
    added: List[str] = []
    try:
        if created:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", name or f"{inputVolume.GetName()} segmentation"
            )
            segmentationNode.CreateDefaultDisplayNodes()
        transformId = inputVolume.GetTransformNodeID()
        segmentationNode.SetAndObserveTransformNodeID(transformId)
        labelmap.SetAndObserveTransformNodeID(transformId)  # same frame: the import does not resample
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentationNode.SetNodeReferenceID(
            segmentationNode.GetReferenceImageGeometryReferenceRole(), inputVolume.GetID()
        )
        segmentation = segmentationNode.GetSegmentation()
        added = _prepareSegments(segmentation, labels, terminologyContext)
        segmentIds = vtk.vtkStringArray()
        byValue = {int(label["value"]): label["name"] for label in labels}
        for value in range(1, max(byValue, default=0) + 1):
            segmentIds.InsertNextValue(byValue.get(value, ""))
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
            labelmap, segmentationNode, segmentIds
        ):
            raise RuntimeError("Slicer could not import the segmentation result.")
        if show3D:
            segmentationNode.CreateClosedSurfaceRepresentation()
        if created:
            _placeInHierarchy(slicer, segmentationNode, inputVolume)
    except Exception:
        if created:
            removeNode(scene, segmentationNode)
        elif segmentationNode is not None:
            for segmentId in added:
                segmentationNode.GetSegmentation().RemoveSegment(segmentId)
        raise
    finally:
        removeNode(scene, labelmap)
    logging.info("Imported %d segments into %s", len(labels), segmentationNode.GetName())
    return segmentationNode
