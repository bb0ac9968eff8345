"""Slicer's real core (``slicer-core`` from PyPI) with stand-ins for the Qt side only.

``import slicer`` is the real package: the MRML scene and nodes, transforms,
``vtkSlicerVolumesLogic`` (Slicer's NRRD/NIfTI/DICOM reading and writing,
with its RAS/LPS and handedness rules), ``vtkSlicerSegmentationsModuleLogic``
(binary labelmap and closed surface), the terminologies logic, the subject
hierarchy, and Slicer's own ``slicer.util``.

slicer-core has no Qt, so these are stand-ins, written against Slicer's API
(never copied from its source):

- ``qt`` and ``ctk`` widgets, the ``.ui`` loader, dialogs, and the event loop
  (:mod:`qtwidgets`, :mod:`uiloader`);
- ``slicer.app`` (the IO manager hands work to the real volumes logic) and
  ``slicer.modules`` (the real module logics) (:mod:`application`);
- the pure-Python pieces that a Slicer install has and slicer-core lacks:
  ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
  ``slicer.i18n`` and ``slicer.packaging`` (:mod:`scripted`,
  :mod:`parameter_node`, :mod:`packaging`).

Use :func:`install` / :func:`uninstall` (the tests' fixture does). Every
install makes a new scene and new logics; the ``slicer`` package itself is
imported once (its C++ modules cannot be reloaded).
"""

from __future__ import annotations

import sys
import types
from typing import Dict, Optional

#: The slicer-core release the tests pin (pyproject's dev extra).
SLICER_CORE_VERSION = "5.12.4.0"

_STANDIN_MODULES = (
    "slicer.ScriptedLoadableModule",
    "slicer.parameterNodeWrapper",
    "slicer.i18n",
    "slicer.packaging",
    "qt",
    "ctk",
)
_SLICER_ATTRIBUTES = ("mrmlScene", "app", "modules", "selfTests", "qMRMLNodeComboBox", "qMRMLWidget")
_SLICER_ATTRIBUTES += tuple(name.split(".")[1] for name in _STANDIN_MODULES if name.startswith("slicer."))


def available() -> bool:
    """True where slicer-core can be imported (it has wheels for Python 3.10 and later)."""
    try:
        import slicer_core  # noqa: F401
    except ImportError:
        return False
    return True


def install(
    temporaryPath: str,
    testingEnabled: bool = True,
    modulePaths: Optional[Dict[str, str]] = None,
    withPackaging: bool = True,
) -> types.ModuleType:
    """Make a fresh scene with the real logics, put the Qt-side stand-ins in place; return ``slicer``.

    ``temporaryPath`` becomes ``slicer.app.temporaryPath``; ``modulePaths``
    (name -> .py path) are the scripted modules ``slicer.modules`` lists;
    ``withPackaging`` False is a Slicer older than 5.12 (no ``slicer.packaging``).
    """
    uninstall()
    import slicer
    import slicer.util  # Slicer's own

    from . import application, packaging, parameter_node, qtwidgets, scripted

    qtModule = qtwidgets.makeQtModule()
    ctkModule = qtwidgets.makeCtkModule()
    sys.modules.update({"qt": qtModule, "ctk": ctkModule})

    scene = slicer.vtkMRMLScene()
    logics = application.makeLogics(slicer, scene)
    slicer.mrmlScene = scene
    slicer.app = application.Application(temporaryPath, scene, logics, testingEnabled)
    slicer.modules = application.makeModules(logics, modulePaths)
    slicer.selfTests = {}
    slicer.qMRMLNodeComboBox = qtwidgets.qMRMLNodeComboBox
    slicer.qMRMLWidget = qtwidgets.qMRMLWidget

    i18nModule = types.ModuleType("slicer.i18n")
    i18nModule.tr = lambda text: text
    i18nModule.translate = lambda context, text: text
    modules = {
        "slicer.i18n": i18nModule,
        "slicer.ScriptedLoadableModule": scripted.makeScriptedModule(slicer),
        "slicer.parameterNodeWrapper": parameter_node.makeModule(slicer),
    }
    if withPackaging:
        modules["slicer.packaging"] = packaging.makeModule(slicer)
    for name, module in modules.items():
        sys.modules[name] = module
        setattr(slicer, name.split(".")[1], module)
    return slicer


def uninstall() -> None:
    """Remove the stand-ins (the real ``slicer`` package stays imported, without a scene)."""
    for name in _STANDIN_MODULES:
        sys.modules.pop(name, None)
    slicer = sys.modules.get("slicer")
    if slicer is not None:
        scene = vars(slicer).get("mrmlScene")
        if scene is not None:  # the test's widgets and logics stop hearing from it before it goes
            scene.RemoveAllObservers()
            scene.Clear(1)
        for name in _SLICER_ATTRIBUTES:
            if name in vars(slicer):
                delattr(slicer, name)


def current() -> Optional[types.ModuleType]:
    """The ``slicer`` module while installed, else None."""
    slicer = sys.modules.get("slicer")
    return slicer if slicer is not None and hasattr(slicer, "mrmlScene") else None
