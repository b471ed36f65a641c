"""STAND-IN for tests, not Slicer: the scripted-module base classes, as Slicer 5 defines what
``SegLoop.py`` relies on (no reload / test buttons, no module manager).

``ScriptedLoadableModuleWidget(parent)`` takes ``parent.layout()`` as ``self.layout``; without a
parent it makes a ``qMRMLWidget`` with a vertical layout, calls ``setup()`` and shows it, as Slicer
does. ``resourcePath`` is ``Resources/`` next to the module's ``.py`` file.
"""

import logging
import os
import sys
import unittest

from PySide6.QtWidgets import QVBoxLayout

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[: -len("Widget")]
        self.logic = None
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def resourcePath(self, filename):
        module_file = sys.modules[type(self).__module__].__file__
        return os.path.join(os.path.dirname(module_file), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    """``getParameterNode``: the scene's singleton ``vtkMRMLScriptedModuleNode`` tagged with the
    module's name, made on first use (as Slicer's)."""

    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[: -len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)
        slicer.app.processEvents()
