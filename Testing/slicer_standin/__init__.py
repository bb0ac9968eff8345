"""A stand-in of the parts of 3D Slicer's Python API that the UNetSegment module uses.

3D Slicer cannot be installed where the tests run, so this package provides
modules named ``slicer``, ``slicer.util``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n``, ``qt`` and ``ctk`` with the
signatures and semantics of the real ones (Slicer 5.8 - 5.12), small enough to
read. VTK is the real ``vtk`` package: image data, matrices and commands are
real VTK objects, as in Slicer.

What it models faithfully: node IDs and references, scene add/remove and its
events, singleton parameter nodes, IJK-to-RAS geometry of volumes (numpy
arrays in k, j, i order), reading and writing volumes as NRRD with the RAS/LPS
flip that Slicer's IO does, segmentations with segments, tags, shared
labelmaps and the reference-geometry conversion parameter, linear parent
transforms, a minimal subject hierarchy, and Qt widgets built from a ``.ui``
file with their dynamic properties. What it does not model (rendering,
closed-surface generation, Qt's real event loop) raises or is recorded, never
faked silently.

Use :func:`install` / :func:`uninstall` (the tests' fixture does).
"""

from __future__ import annotations

import sys
import types
from typing import Dict, Optional

_MODULE_NAMES = (
    "slicer",
    "slicer.util",
    "slicer.ScriptedLoadableModule",
    "slicer.parameterNodeWrapper",
    "slicer.i18n",
    "qt",
    "ctk",
)


def install(temporaryPath: str, testingEnabled: bool = True) -> types.ModuleType:
    """Put fresh stand-in modules into ``sys.modules``; return the ``slicer`` module.

    Every call builds a new scene and application object, so tests do not
    share state. ``temporaryPath`` becomes ``slicer.app.temporaryPath``.
    """
    from . import application, mrml, parameter_node, qtwidgets, scripted, segmentations, util

    uninstall()
    segmentations.TERMINOLOGIES = segmentations.TerminologiesLogic()
    qtModule = qtwidgets.makeQtModule()
    ctkModule = qtwidgets.makeCtkModule()
    slicerModule = types.ModuleType("slicer")
    slicerModule.__path__ = []  # a package, so "import slicer.util" works
    scene = mrml.vtkMRMLScene()
    slicerModule.mrmlScene = scene
    slicerModule.app = application.Application(temporaryPath, testingEnabled)
    for name in mrml.NODE_CLASSES:
        setattr(slicerModule, name, mrml.NODE_CLASSES[name])
    for name in segmentations.EXPORTED:
        setattr(slicerModule, name, getattr(segmentations, name))
    slicerModule.vtkMRMLSubjectHierarchyNode = mrml.vtkMRMLSubjectHierarchyNode
    slicerModule.vtkMRMLMessageCollection = mrml.vtkMRMLMessageCollection
    slicerModule.qMRMLNodeComboBox = qtwidgets.qMRMLNodeComboBox
    slicerModule.qMRMLWidget = qtwidgets.qMRMLWidget
    slicerModule.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations.vtkSlicerSegmentationsModuleLogic()),
        terminologies=types.SimpleNamespace(logic=lambda: segmentations.TERMINOLOGIES),
    )
    slicerModule.selfTests = {}

    utilModule = util.makeUtilModule(slicerModule)
    slicerModule.util = utilModule
    i18nModule = types.ModuleType("slicer.i18n")
    i18nModule.tr = lambda text: text
    i18nModule.translate = lambda context, text: text
    slicerModule.i18n = i18nModule
    scriptedModule = scripted.makeScriptedModule(slicerModule)
    slicerModule.ScriptedLoadableModule = scriptedModule
    pnwModule = parameter_node.makeModule(slicerModule)
    slicerModule.parameterNodeWrapper = pnwModule

    modules: Dict[str, types.ModuleType] = {
        "slicer": slicerModule,
        "slicer.util": utilModule,
        "slicer.ScriptedLoadableModule": scriptedModule,
        "slicer.parameterNodeWrapper": pnwModule,
        "slicer.i18n": i18nModule,
        "qt": qtModule,
        "ctk": ctkModule,
    }
    sys.modules.update(modules)
    scene.SetApplication(slicerModule.app)
    return slicerModule


def uninstall() -> None:
    """Remove the stand-in modules (and modules that imported them by name) from ``sys.modules``."""
    for name in _MODULE_NAMES:
        sys.modules.pop(name, None)


def current() -> Optional[types.ModuleType]:
    """The installed stand-in ``slicer`` module, or None."""
    return sys.modules.get("slicer")
