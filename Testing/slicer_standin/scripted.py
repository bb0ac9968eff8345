"""``slicer.ScriptedLoadableModule`` of the stand-in, following Slicer 5.8's base classes."""

from __future__ import annotations

import os
import types
import unittest
from typing import Any


def makeScriptedModule(slicer: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            slicer.selfTests[self.moduleName] = self.runTest

        def resourcePath(self, filename: str) -> str:
            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

        def getDefaultModuleDocumentationLink(self, docPage: Any = None) -> str:
            return ""

        def runTest(self, msec: int = 100, **kwargs: Any) -> None:
            import importlib

            testCase = getattr(importlib.import_module(self.__module__), self.moduleName + "Test")()
            testCase.messageDelay = msec
            testCase.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            import qt

            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Widget"):
                self.moduleName = self.moduleName[:-6]
            self.developerMode = False
            if not parent:
                self.parent = slicer.qMRMLWidget()
                self.parent.setLayout(qt.QVBoxLayout())
                self.parent.setMRMLScene(slicer.mrmlScene)
            else:
                self.parent = parent
            self.layout = self.parent.layout()
            self.parent.isEntered = False
            if not parent:
                self.setup()
                self.parent.show()

        def resourcePath(self, filename: str) -> str:
            return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

        def cleanup(self) -> None:
            pass

        def setup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self) -> Any:
            if self.isSingletonParameterNode:
                node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node:
                    if node.GetAttribute("ModuleName") != self.moduleName:
                        node.SetAttribute("ModuleName", self.moduleName)
                    return node
            return slicer.mrmlScene.AddNode(self.createParameterNode())

        def createParameterNode(self) -> Any:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

        def delayDisplay(self, message: str, requestedDelay: Any = None, msec: Any = None) -> None:
            slicer.util.delayDisplay(message, msec or requestedDelay or 100)

        def runTest(self) -> None:
            pass

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    module.__all__ = [
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleWidget",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
    ]
    return module
