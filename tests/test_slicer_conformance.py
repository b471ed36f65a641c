"""``SegLoop.py`` calls only API names that exist: Slicer's (``SlicerModule/slicer_api.txt``, read
from Slicer's source at a release tag by ``SlicerModule/tools/slicer_api_names.py``), Qt's (PySide6,
whose Qt classes PythonQt wraps under the same names), the few VTK ones below, and its own.

3D Slicer cannot be installed here, and the widget tests run over a stand-in written by the same
team: a name the stand-in has but Slicer lacks would pass them. This test reads every attribute
name in the module's source (``x.name`` and ``x.name(...)``) and fails on any that none of those
lists has. Names only: a wrong signature or a wrong class for a name is not caught.
"""

import ast
import builtins
import enum
import os

import numpy
import pytest

MODULE = os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop")
API = os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "slicer_api.txt")
# VTK classes the module meets (VTK's own reference; not in Slicer's source).
VTK_NAMES = {"vtkCommand", "ModifiedEvent", "vtkMatrix4x4", "GetElement", "SetElement", "MultiplyPoint", "vtkGeneralTransform", "TransformPoint",
             "GetDimensions"}
# Slicer module names (``slicer.modules.<name>``: the lower-cased module title).
MODULE_NAMES = {"segmenteditor", "volumes", "util"}  # and slicer.util itself (Base/Python/slicer/util.py)
PYTHON_MODULES = ("os", "os.path", "shutil", "tempfile", "threading", "time", "logging")


def attribute_names(path):
    return {node.attr for node in ast.walk(ast.parse(open(path).read())) if isinstance(node, ast.Attribute)}


def own_names(paths):
    """Names SegLoop's own code defines: functions, classes, attributes it assigns, .ui widgets."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
                if isinstance(node, ast.ClassDef):  # class-level fields and constants
                    targets = [b.target for b in node.body if isinstance(b, ast.AnnAssign)]
                    targets += [t for b in node.body if isinstance(b, ast.Assign) for t in b.targets]
                    names |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return names


def ui_names():
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(os.path.join(MODULE, "Resources", "UI", "SegLoop.ui"))
    return {w.get("name") for w in tree.iter("widget") if w.get("name")}


def qt_names():
    """Every method, enum value and Qt property name of the PySide6 classes in QtCore, QtGui and
    QtWidgets (PythonQt exposes Qt properties as attributes: ``button.enabled``)."""
    from PySide6 import QtCore, QtGui, QtWidgets

    names = set()
    for module in (QtCore, QtGui, QtWidgets):
        for class_name in dir(module):
            cls = getattr(module, class_name)
            if not isinstance(cls, type):
                continue
            names |= {class_name, *dir(cls)}
            for member in dir(cls):  # enum values, which PythonQt also offers on the class (qt.Qt.WindowModal)
                value = getattr(cls, member, None)
                if isinstance(value, type) and issubclass(value, enum.Enum):
                    names |= set(value.__members__)
            try:
                meta = getattr(cls, "staticMetaObject", None)
                count = meta.propertyCount() if meta is not None else 0
            except RuntimeError:  # a meta object PySide6 has let go of: no properties from it
                count = 0
            for i in range(count):
                name = meta.property(i).name()
                names.add(name if isinstance(name, str) else bytes(name).decode())
    return names


QT_NAMES = qt_names()  # at collection, before any other test has created or dropped Qt objects


def python_names():
    import importlib

    import threading
    import unittest

    names = set(dir(builtins))
    for value in (str, list, dict, set, tuple, bytes, float, int, Exception, threading.Thread, unittest.TestCase):
        names |= set(dir(value))
    for module in PYTHON_MODULES:
        names |= set(dir(importlib.import_module(module)))
    return names | set(dir(numpy)) | set(dir(numpy.ndarray))


def slicer_names():
    with open(API) as f:
        lines = [line.strip() for line in f]
    assert lines[0].startswith("# Slicer API names, from Slicer v"), "slicer_api.txt must say which Slicer it was read from"
    return {line for line in lines if line and not line.startswith("#")}


def test_the_module_calls_only_names_that_slicer_qt_vtk_or_segloop_define():
    module = os.path.join(MODULE, "SegLoop.py")
    library = [os.path.join(MODULE, "SegLoopLib", f) for f in os.listdir(os.path.join(MODULE, "SegLoopLib")) if f.endswith(".py")]
    known = slicer_names() | QT_NAMES | VTK_NAMES | MODULE_NAMES | python_names() | own_names([module, *library]) | ui_names()
    unknown = sorted(attribute_names(module) - known)
    assert not unknown, f"SegLoop.py uses names that Slicer {open(API).readline().split()[6]}, Qt, VTK and SegLoop lack: {unknown}"


@pytest.mark.parametrize("name", ["GetNthControlPointPositionStatus", "GetRASBounds", "GetTransformBetweenNodes",
                                  "StartCloseEvent", "updateSegmentBinaryLabelmapFromArray", "loadLabelVolume",
                                  "SetParameter", "GetNodeReference", "getParameterNode", "EndImportEvent", "StartSaveEvent",
                                  "StartModify", "ForcePlaceMultipleMarkups", "setPlaceModeEnabled", "setActiveEffectByName",
                                  "setCurrentSegmentID", "RemoveSegment", "hasObserver"])
def test_the_list_holds_what_the_module_relies_on(name):
    assert name in slicer_names()


def test_a_name_slicer_lacks_is_caught():
    """The check can fail: a plausible name that Slicer does not have (ROI size in world
    coordinates is ``GetSizeWorld`` in newer Slicer, never ``GetWorldSize``) is unknown."""
    known = slicer_names() | QT_NAMES | VTK_NAMES | python_names()
    assert "GetWorldSize" not in known and "GetNthControlPointPositionWorldd" not in known
