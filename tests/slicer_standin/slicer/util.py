"""STAND-IN for tests, not Slicer: the ``slicer.util`` functions ``SegLoop.py`` calls, same names and
arguments as Slicer 5's, on the stand-in scene of ``slicer/__init__.py``.

PythonQt vs PySide6. In Slicer, PythonQt exposes a widget's Qt properties as attributes
(``lineEdit.text``, ``button.enabled = False``, ``combo.currentText``) and its other methods and
signals as usual. PySide6 has methods only (``lineEdit.text()``), and its ``true_property``
feature is no way out: it applies only to the module that imports it (``SegLoop.py`` cannot) and it
removes the setter methods (``label.setPixmap``) that ``SegLoop.py`` also calls. So
``childWidgetVariables`` hands out ``PythonQtWidget`` wrappers: a Qt property (any name the
widget's ``QMetaObject`` lists) is read and written as an attribute; every other name goes to the
PySide6 widget. Unlike PythonQt, assigning a name that is not a Qt property raises AttributeError
(PythonQt would keep it as a Python attribute the widget never sees: a silent bug worth failing on).

``loadUI`` builds the real ``.ui`` file with ``QUiLoader``, the Slicer and CTK widgets it names
being the stand-in classes; an unknown widget class is an error (Qt would quietly use a plain
``QWidget``). The ``.ui``'s ``<connections>`` are wired by name, and a missing signal or slot is an
error (Qt would only print a warning).

``errorDisplay`` / ``infoDisplay`` record the text in ``slicer.standin.messages`` instead of
opening a modal box; ``setSliceViewerLayers`` and ``selectModule`` record into ``slicer.standin``.
"""

import logging
import os
import re
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import nibabel as nib
import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QWidget

import ctk
import slicer


# -- widgets -------------------------------------------------------------------------------------
class PythonQtWidget:
    """A panel widget as PythonQt hands it to Python: Qt properties are attributes."""

    __slots__ = ("_widget",)

    def __init__(self, widget):
        object.__setattr__(self, "_widget", widget)

    def __getattr__(self, name):
        widget = object.__getattribute__(self, "_widget")
        what = f"{widget.objectName()}.{name}"
        slicer._require_main_thread(what)
        if widget.metaObject().indexOfProperty(name) >= 0:
            return widget.property(name)
        return slicer._main_thread_only(getattr(widget, name), what)

    def __setattr__(self, name, value):
        widget = object.__getattribute__(self, "_widget")
        slicer._require_main_thread(f"{widget.objectName()}.{name}")
        if widget.metaObject().indexOfProperty(name) < 0:
            raise AttributeError(f"{type(widget).__name__} {widget.objectName()!r} has no Qt property {name!r}")
        if not widget.setProperty(name, value):
            raise TypeError(f"{widget.objectName()}.{name} = {value!r} refused by Qt")

    def __repr__(self):
        widget = object.__getattribute__(self, "_widget")
        return f"<PythonQt-style {type(widget).__name__} {widget.objectName()!r}>"


def _unwrap(widget):
    return object.__getattribute__(widget, "_widget") if isinstance(widget, PythonQtWidget) else widget


STANDIN_WIDGETS = (
    ctk.ctkCollapsibleButton, slicer.qMRMLWidget, slicer.qSlicerWidget, slicer.qSlicerMarkupsPlaceWidget
)


def loadUI(path):
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not load UI file: file not found {path}")
    xml = open(path, encoding="utf-8").read()
    tree = ElementTree.fromstring(xml)
    loader = QUiLoader()
    for cls in STANDIN_WIDGETS:
        loader.registerCustomWidget(cls)
    known = set(loader.availableWidgets()) | {cls.__name__ for cls in STANDIN_WIDGETS}
    unknown = {w.get("class") for w in tree.iter("widget")} - known
    if unknown:
        raise RuntimeError(f"{path} uses widget classes the Slicer stand-in does not have: {sorted(unknown)}")
    buffer = QBuffer()
    buffer.setData(QByteArray(re.sub(r"<connections>.*</connections>", "", xml, flags=re.S).encode()))  # a copy
    buffer.open(QIODevice.ReadOnly)
    widget = loader.load(buffer)
    buffer.close()
    if widget is None:
        raise RuntimeError(f"Could not load UI file: {path}: {loader.errorString()}")

    def named(name):
        found = widget if widget.objectName() == name else widget.findChild(QObject, name)
        if found is None:
            raise RuntimeError(f"{path}: a connection names {name!r}, which is not in the file")
        return found

    for c in tree.iter("connection"):
        sender, receiver = named(c.findtext("sender")), named(c.findtext("receiver"))
        signal, slot = c.findtext("signal").split("(")[0], c.findtext("slot").split("(")[0]
        if not hasattr(sender, signal) or not hasattr(receiver, slot):
            raise RuntimeError(f"{path}: cannot connect {c.findtext('sender')}.{signal} to {c.findtext('receiver')}.{slot}")
        getattr(sender, signal).connect(getattr(receiver, slot))
    return widget


def childWidgetVariables(widget):
    """Every named child widget of ``widget`` as an attribute (PythonQt-style wrappers)."""
    return SimpleNamespace(**{
        child.objectName(): PythonQtWidget(child) for child in _unwrap(widget).findChildren(QWidget) if child.objectName()
    })


def findChild(widget, name):
    """The child widget called ``name`` (here the PySide6 widget itself, for QTest)."""
    child = _unwrap(widget).findChild(QWidget, name)
    if child is None:
        raise RuntimeError(f"Widget named {name} does not exists.")
    return child


class VTKObservationMixin:
    """``slicer.util.VTKObservationMixin``: a scripted widget mixes it in (Slicer's module template)
    to observe MRML events; ``addObserver(object, event, method)``, ``hasObserver``, ``removeObserver``,
    ``removeObservers()``."""

    def __init__(self):
        self.Observations = []

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        self.Observations.append((obj, event, method, obj.AddObserver(event, method, priority)))

    def hasObserver(self, obj, event, method):
        return any(o is obj and e == event and m == method for o, e, m, _ in self.Observations)

    def removeObserver(self, obj, event, method):
        for entry in [x for x in self.Observations if x[0] is obj and x[1] == event and x[2] == method]:
            obj.RemoveObserver(entry[3])
            self.Observations.remove(entry)

    def removeObservers(self, method=None):
        for obj, _, _, tag in self.Observations:
            obj.RemoveObserver(tag)
        self.Observations = []


def mainWindow():
    return slicer._main_window


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    logging.error(text)
    slicer.standin.messages.append(("error", text))


def infoDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    logging.info(text)
    slicer.standin.messages.append(("info", text))


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    """Recorded as a ("confirm", text) message; answers ``slicer.standin.confirm_answer`` (OK: True)."""
    slicer.standin.messages.append(("confirm", text))
    return slicer.standin.confirm_answer


def selectModule(module):
    slicer._require_main_thread("selectModule")
    slicer.standin.selected_module = module if isinstance(module, str) else module.name


def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    slicer._require_main_thread("setSliceViewerLayers")
    layers = slicer.standin.slice_layers
    for layer, node in (("background", background), ("foreground", foreground), ("label", label)):
        if node != "keep-current":
            layers[layer] = node
    if foregroundOpacity is not None:
        layers["foregroundOpacity"] = foregroundOpacity


def getNodesByClass(className):
    return [n for n in slicer.mrmlScene._nodes if isinstance(n, slicer.NODE_CLASSES[className])]


# -- volumes -------------------------------------------------------------------------------------
def loadVolume(filename, properties=None, returnNode=False):
    """A NIfTI file as a volume node: array ``[k, j, i]``, IJK-to-RAS = the file's affine (as Slicer
    reads NIfTI); shown in the slice views unless ``properties["show"]`` is False."""
    slicer._require_main_thread("loadVolume")
    properties = dict(properties or {})
    image = nib.load(filename)
    if len(image.shape) != 3:
        raise RuntimeError(f"the stand-in loads 3D volumes only: {filename} has shape {image.shape}")
    labelmap = bool(properties.get("labelmap"))
    node = (slicer.vtkMRMLLabelMapVolumeNode if labelmap else slicer.vtkMRMLScalarVolumeNode)()
    node._array = np.asarray(image.dataobj).transpose(2, 1, 0).copy()
    node._ijk_to_ras = np.asarray(image.affine, dtype=float).copy()
    node.SetName(properties.get("name") or re.sub(r"\.nii(\.gz)?$", "", os.path.basename(filename)))
    slicer.mrmlScene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    if properties.get("show", True):
        slicer.standin.slice_layers["label" if labelmap else "background"] = node
        slicer.standin.view_resets += 1
    return node


def loadLabelVolume(filename, properties=None, returnNode=False):
    return loadVolume(filename, dict(properties or {}, labelmap=True))


def arrayFromVolume(volumeNode):
    slicer._require_main_thread("arrayFromVolume")
    return volumeNode._array


def updateVolumeFromArray(volumeNode, narray):
    slicer._require_main_thread("updateVolumeFromArray")
    volumeNode._array = np.array(narray, copy=True)


def saveNode(node, filename, properties=None):
    """A volume node to NIfTI (affine = IJK-to-RAS), as Slicer writes it; False (nothing written)
    when ``slicer.standin.save_fails`` is set, as Slicer answers a failed write."""
    slicer._require_main_thread("saveNode")
    if slicer.standin.save_fails:
        return False
    nib.save(nib.Nifti1Image(node._array.transpose(2, 1, 0), node._ijk_to_ras), filename)
    return True


# -- segments ------------------------------------------------------------------------------------
def _grid(volume_node):
    return volume_node._array.shape, volume_node._ijk_to_ras


def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId, referenceVolumeNode=None):
    slicer._require_main_thread("updateSegmentBinaryLabelmapFromArray")
    reference = referenceVolumeNode or segmentationNode._reference
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise RuntimeError(f"no segment {segmentId!r}")
    # As Slicer: no check and no resampling. An array of another shape becomes the segment as it
    # is (on a grid of that shape); only the caller can keep a mismatched answer out.
    shape, affine = _grid(reference)
    segment._mask, segment._grid = np.asarray(narray) != 0, (tuple(narray.shape), affine)


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
    """The segment as a uint8 0/1 array on the reference volume's grid (zeros for an empty segment).
    The stand-in does not resample: another grid than the one the segment was written on is an error."""
    slicer._require_main_thread("arrayFromSegmentBinaryLabelmap")
    reference = referenceVolumeNode or segmentationNode._reference
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise RuntimeError(f"no segment {segmentId!r}")
    if segment._mask is None:
        return np.zeros(reference._array.shape, np.uint8)
    shape, ijk_to_ras = segment._grid
    if tuple(shape) != tuple(reference._array.shape) or not np.allclose(ijk_to_ras, reference._ijk_to_ras):
        raise NotImplementedError("the Slicer stand-in does not resample segments to another grid")
    return segment._mask.astype(np.uint8)
