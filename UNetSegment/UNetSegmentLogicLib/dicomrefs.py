"""Keep on the output segmentation what Slicer's DICOM export of a segmentation needs.

Slicer's DICOM Segmentation export (the ``DICOMSegmentationPlugin``) offers a segmentation for
export when its subject hierarchy item carries the SOP instance UIDs of the images it was drawn on
(``DICOM.ReferencedInstanceUIDs``, space-separated) and those instances are in the DICOM database;
it takes the source images from the segmentation's reference geometry volume (its
``DICOM.instanceUIDs`` attribute), the patient and study from the item's parents in the subject
hierarchy, and each segment's ``DICOM.SegmentAlgorithmType`` / ``DICOM.SegmentAlgorithmName`` tags
(a non-manual segment must name its algorithm). A volume loaded from DICOM has ``DICOM.instanceUIDs``;
this module copies the references onto the segmentation and tags the model's segments as made
automatically by the model. Uses only Slicer's API handed in as ``slicer``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

#: Volume attribute of Slicer's DICOM volume import: the SOP instance UIDs of the slices, space-separated.
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"


def algorithmName(model: Dict[str, Any]) -> str:
    """The algorithm's name in a DICOM SEG (up to 64 characters): module, model id and version."""
    name = " ".join(part for part in ("UNetSegment", model.get("id", ""), model.get("version", "")) if part)
    return name[:64]


def tagSegments(segmentationNode: Any, labels: Sequence[Dict[str, Any]], model: Dict[str, Any]) -> None:
    """Mark the model's segments as segmented automatically, by the model that made them."""
    segmentation = segmentationNode.GetSegmentation()
    for label in labels:
        segment = segmentation.GetSegment(label["name"])
        if segment is not None:
            segment.SetTag(ALGORITHM_TYPE_TAG, "AUTOMATIC")
            segment.SetTag(ALGORITHM_NAME_TAG, algorithmName(model))


def _studyAncestor(shNode: Any, slicer: Any, item: int) -> int:
    return shNode.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())


def keepDicomReferences(
    slicer: Any, segmentationNode: Any, inputVolume: Any, labels: Sequence[Dict[str, Any]], model: Dict[str, Any]
) -> Optional[str]:
    """Tag the segments; if the input came from DICOM, reference its instances from the segmentation.

    The segmentation's subject hierarchy item gets ``DICOM.ReferencedInstanceUIDs`` (the input's
    instance UIDs) and, if it is not in a study yet, goes under the input's study. Returns the
    referenced UIDs (space-separated), or None for an input not loaded from DICOM.
    """
    tagSegments(segmentationNode, labels, model)
    uids = " ".join((inputVolume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split())
    if not uids:
        return None
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    item = shNode.GetItemByDataNode(segmentationNode)
    if not item:
        return None
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMReferencedInstanceUIDsAttributeName()
    shNode.SetItemAttribute(item, attribute, uids)
    inputItem = shNode.GetItemByDataNode(inputVolume)
    study = _studyAncestor(shNode, slicer, inputItem) if inputItem else 0
    if study and not _studyAncestor(shNode, slicer, item):
        shNode.SetItemParent(item, shNode.GetItemParent(inputItem))
    return uids
