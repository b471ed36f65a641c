"""STAND-IN for tests, not Slicer: just enough of 3D Slicer's ``slicer`` module to run ``SegLoop.py``
headless (PySide6, ``QT_QPA_PLATFORM=offscreen``), for ``tests/test_slicer_widget.py``.

What it models, and only that (grep ``SegLoop.py`` for ``slicer.`` to see the list):

* ``slicer.app``: the ``QApplication`` (``processEvents``); settings go to a temporary folder.
* ``slicer.mrmlScene``: nodes in a list: ``AddNewNodeByClass``, ``AddNode``, ``GetFirstNodeByName``,
  ``GetNodeByID``, ``RemoveNode``, ``Clear``; node classes for volumes (a ``[k, j, i]`` numpy array
  and an IJK-to-RAS matrix, read from and written to NIfTI with nibabel as Slicer does: IJK-to-RAS
  is the NIfTI affine), label maps, segmentations (one boolean mask per segment, on its reference
  volume's grid; no resampling), point lists, closed curves and ROIs (with linear parent transforms).
* the panel's Slicer widgets, for ``slicer.util.loadUI``: ``qMRMLWidget``, ``qSlicerWidget``,
  ``qSlicerMarkupsPlaceWidget`` (plain PySide6 widgets holding a scene and a current node; no
  views, no placing with the mouse).
* the module's parameter node (``vtkMRMLScriptedModuleNode``, singleton per module) and saving and
  loading a scene (``mrmlScene.save_and_reload()``, stand-in only: copies of the nodes come back
  between the import events).
* ``slicer.modules.segmenteditor`` (an editor that records the segmentation and source volume it
  is given) and ``slicer.modules.volumes.logic().CreateAndAddLabelVolume``.

One Slicer rule is enforced, because breaking it crashes the real application: scene, nodes and
panel widgets may only be used on the main thread; from any other thread they raise RuntimeError.

``slicer.standin`` holds what the stand-in records for tests to look at (messages shown to the
user, the slice views' layers, the selected module). It does not exist in Slicer.
"""

import copy
import functools
import inspect
import os
import tempfile
import threading
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QCoreApplication, QSettings, Signal  # noqa: E402
from PySide6.QtWidgets import QApplication, QMainWindow, QWidget  # noqa: E402

import vtk  # noqa: E402  (the stand-in's vtk, next to this package)

# -- the application -----------------------------------------------------------------------------
QCoreApplication.setOrganizationName("SlicerStandIn")
QCoreApplication.setApplicationName("SlicerStandIn")
QSettings.setDefaultFormat(QSettings.IniFormat)
QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tempfile.mkdtemp(prefix="slicer-standin-settings-"))
app = QApplication.instance() or QApplication(["SlicerStandIn"])
_main_window = QMainWindow()

# What tests look at (not Slicer API).
standin = SimpleNamespace(
    messages=[],  # (kind, text) of every errorDisplay / infoDisplay, in order
    slice_layers={"background": None, "foreground": None, "label": None, "foregroundOpacity": None},
    view_resets=0,  # loadVolume / loadLabelVolume shown: real Slicer refits every slice view (zoom, pan)
    save_fails=False,  # saveNode returns False without writing, as Slicer does when a writer fails
    confirm_answer=True,  # what the user answers to confirmOkCancelDisplay (OK)
    selected_module=None,
)


def _require_main_thread(what):
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            f"{what} used from thread {threading.current_thread().name!r}: Slicer's scene, nodes and widgets "
            "belong to the main thread (in Slicer this crashes or corrupts the scene)"
        )


def _main_thread_only(value, what):
    """``value`` checked now and, if it is a method, when called (a bound method may be handed to a thread)."""
    _require_main_thread(what)
    if not inspect.isroutine(value):
        return value

    @functools.wraps(value)
    def guarded(*args, **kwargs):
        _require_main_thread(what)
        return value(*args, **kwargs)

    return guarded


class _MainThreadOnly:
    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        return value if name.startswith("_") else _main_thread_only(value, f"{type(self).__name__}.{name}")


# -- MRML ----------------------------------------------------------------------------------------
class _Observable:
    """VTK's AddObserver / RemoveObserver / InvokeEvent: callbacks get (caller, event)."""

    def AddObserver(self, event, callback, priority=0.0):
        observers = self.__dict__.setdefault("_observers", {})
        tag = max(observers, default=0) + 1
        observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag):
        self.__dict__.get("_observers", {}).pop(tag, None)

    def InvokeEvent(self, event, callData=None):
        for observed, callback in list(self.__dict__.get("_observers", {}).values()):
            if observed == event:
                callback(self, event)


class vtkMRMLNode(_MainThreadOnly, _Observable):  # noqa: N801 (Slicer's names throughout)
    def __init__(self):
        self._name, self._id, self._scene, self._display = "", None, None, None

    def GetClassName(self):
        return type(self).__name__

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetID(self):
        return self._id

    def GetScene(self):
        return self._scene

    def GetDisplayNode(self):
        return self._display

    def CreateDefaultDisplayNodes(self):
        if self._display is None and self._display_class is not None:
            self._display = self._display_class()

    _display_class = None

    # vtkMRMLTransformableNode: a parent transform (linear only in the stand-in)
    def SetAndObserveTransformNodeID(self, node_id):
        self._transform_id = node_id

    def GetParentTransformNode(self):
        node_id = getattr(self, "_transform_id", None)
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def _to_world(self):
        """4x4 local -> world of this node's parent transforms (identity without one)."""
        parent = self.GetParentTransformNode()
        return parent._to_world() @ parent._matrix if parent is not None else np.eye(4)


class vtkMRMLTransformNode(vtkMRMLNode):
    """A linear transform (vtkMRMLLinearTransformNode's ``SetMatrixTransformToParent``); the static
    ``GetTransformBetweenNodes(source, target, vtkGeneralTransform)``, None meaning world."""

    def __init__(self):
        super().__init__()
        self._matrix = np.eye(4)

    def SetMatrixTransformToParent(self, matrix):
        self._matrix = np.array(matrix._m, dtype=float)

    @staticmethod
    def GetTransformBetweenNodes(source, target, transform):
        to_world = lambda node: np.eye(4) if node is None else node._to_world() @ node._matrix  # noqa: E731
        transform._m = np.linalg.inv(to_world(target)) @ to_world(source)


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._color_node_id, self._auto_window_level, self._window_level_min_max = "vtkMRMLColorTableNodeGrey", True, None

    def SetAndObserveColorNodeID(self, node_id):
        self._color_node_id = node_id

    def GetColorNodeID(self):
        return self._color_node_id

    def SetAutoWindowLevel(self, flag):
        self._auto_window_level = bool(flag)

    def GetAutoWindowLevel(self):
        return self._auto_window_level

    def SetWindowLevelMinMax(self, minimum, maximum):
        self._window_level_min_max = (float(minimum), float(maximum))

    def GetWindowLevelMin(self):
        return self._window_level_min_max[0]

    def GetWindowLevelMax(self):
        return self._window_level_min_max[1]


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLScalarVolumeDisplayNode):
    pass


class vtkMRMLMarkupsDisplayNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._selected_color = (1.0, 0.5, 0.5)

    def SetSelectedColor(self, color):
        self._selected_color = tuple(float(c) for c in color)

    def GetSelectedColor(self):
        return self._selected_color


class vtkMRMLSegmentationDisplayNode(vtkMRMLNode):
    pass


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    _display_class = vtkMRMLScalarVolumeDisplayNode

    def __init__(self):
        super().__init__()
        self._array = None  # [k, j, i]
        self._ijk_to_ras = np.eye(4)

    def GetImageData(self):
        return None if self._array is None else vtk.vtkImageData(self._array.shape[::-1])

    def GetIJKToRASMatrix(self, matrix):
        _fill(matrix, self._ijk_to_ras)

    def GetRASToIJKMatrix(self, matrix):
        _fill(matrix, np.linalg.inv(self._ijk_to_ras))


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    _display_class = vtkMRMLLabelMapVolumeDisplayNode


def _fill(matrix, array):
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))


class vtkSegment(_MainThreadOnly):
    def __init__(self, name, color):
        self._name, self._color = name, tuple(float(c) for c in color)
        self._mask = None  # boolean [k, j, i] on the grid of ``self._grid`` (shape, IJK-to-RAS)
        self._grid = None

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetColor(self):
        return self._color


class vtkSegmentation(_MainThreadOnly):
    def __init__(self):
        self._segments = {}  # id -> vtkSegment, in insertion order

    def AddEmptySegment(self, segmentId="", segmentName="", color=None):
        """As in Slicer: a taken or empty ID is made unique; returns the ID used."""
        segment_id = segmentId
        if not segment_id or segment_id in self._segments:
            base, n = segmentId or "Segment", 1
            while f"{base}_{n}" in self._segments:
                n += 1
            segment_id = f"{base}_{n}"
        self._segments[segment_id] = vtkSegment(segmentName or segment_id, color if color is not None else (0.5, 0.5, 0.5))
        return segment_id

    def RemoveSegment(self, segment_id):
        self._segments.pop(segment_id, None)

    def GetSegmentIdBySegmentName(self, name):
        """As in Slicer: names compare case-insensitively; "" when there is none."""
        return next((i for i, s in self._segments.items() if s.GetName().lower() == name.lower()), "")

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegmentID(self, index):
        return list(self._segments)[index]

    def GetSegment(self, segment_id):
        return self._segments.get(segment_id)


class vtkMRMLSegmentationNode(vtkMRMLNode):
    _display_class = vtkMRMLSegmentationDisplayNode

    def __init__(self):
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._reference = None  # the volume whose grid segments live on

    def GetSegmentation(self):
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume_node):
        self._reference = volume_node


class vtkMRMLMarkupsNode(vtkMRMLNode):
    """The constants of vtkMRMLMarkupsNode (Libs/MRML/Core/vtkMRMLMarkupsNode.h)."""

    _display_class = vtkMRMLMarkupsDisplayNode
    PositionUndefined, PositionPreview, PositionDefined, PositionMissing = range(4)  # a control point's status
    PointPositionDefinedEvent = 19004  # a control point was placed (fired by AddControlPoint here)


class _ControlPoints(vtkMRMLMarkupsNode):
    """Markups made of control points placed one after another (point lists, curves)."""

    def __init__(self):
        super().__init__()
        self._points = []
        self._status = []  # a test sets PositionPreview here for the point being placed

    def AddControlPoint(self, position, label=""):
        self._points.append(np.asarray(position, dtype=float)[:3].copy())
        self._status.append(self.PositionDefined)
        self.InvokeEvent(self.PointPositionDefinedEvent)
        return len(self._points) - 1

    def GetNumberOfControlPoints(self):
        return len(self._points)

    def GetNthControlPointPositionStatus(self, index):
        return self._status[index]

    def GetNthControlPointPositionWorld(self, index, position):
        position[:] = [float(v) for v in (self._to_world() @ np.r_[self._points[index], 1.0])[:3]]

    def RemoveAllControlPoints(self):
        self._points, self._status = [], []


class vtkMRMLMarkupsFiducialNode(_ControlPoints):
    pass


class vtkMRMLMarkupsClosedCurveNode(_ControlPoints):
    """A closed curve through its control points (the lasso); no curve geometry in the stand-in."""


class vtkMRMLMarkupsROINode(vtkMRMLMarkupsNode):

    def __init__(self):
        super().__init__()
        self._center, self._size = None, np.zeros(3)
        self._status = self.PositionDefined  # a test sets PositionPreview for a box being placed

    def SetCenterWorld(self, *center):
        """Places the ROI's one control point (its centre), as finishing a placement does."""
        self._center = np.asarray(center[0] if len(center) == 1 else center, dtype=float)
        self.InvokeEvent(self.PointPositionDefinedEvent)

    def GetNthControlPointPositionStatus(self, index):
        return self._status

    def RemoveAllControlPoints(self):
        self._center = None

    def SetSize(self, *size):
        self._size = np.asarray(size[0] if len(size) == 1 else size, dtype=float)

    def GetNumberOfControlPoints(self):
        return 0 if self._center is None else 1  # an ROI has one control point, its centre, once placed

    def GetCenterWorld(self, center):
        center[:] = [float(v) for v in self._center]

    def GetRASBounds(self, bounds):
        """World bounds [xmin, xmax, ymin, ymax, zmin, zmax] (the stand-in's ROI is axis-aligned)."""
        low, high = self._center - self._size / 2, self._center + self._size / 2
        bounds[:] = [float(v) for pair in zip(low, high) for v in pair]

    def GetSize(self, size):
        size[:] = [float(v) for v in self._size]


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """A module's parameter node: string parameters and node references by role; ModifiedEvent on
    each change (no batching). A singleton tag makes a loaded one replace the scene's (as Slicer)."""

    def __init__(self):
        super().__init__()
        self._parameters, self._references, self._singleton_tag, self._attributes = {}, {}, None, {}

    def StartModify(self):
        """Hold Modified events until ``EndModify``; returns the previous hold state."""
        was = self.__dict__.get("_holding", False)
        self._holding, self._held = True, self.__dict__.get("_held", False) if was else False
        return was

    def EndModify(self, was):
        self._holding = was
        if not was and self._held:
            self._held = False
            self.InvokeEvent(vtk.vtkCommand.ModifiedEvent)

    def _modified(self):
        if self.__dict__.get("_holding"):
            self._held = True
        else:
            self.InvokeEvent(vtk.vtkCommand.ModifiedEvent)

    def SetParameter(self, name, value):
        if self._parameters.get(name) != str(value):
            self._parameters[name] = str(value)
            self._modified()

    def GetParameter(self, name):
        return self._parameters.get(name, "")

    def SetNodeReferenceID(self, role, node_id):
        if self._references.get(role) != node_id:
            if node_id is None:
                self._references.pop(role, None)
            else:
                self._references[role] = node_id
            self._modified()

    def GetNodeReferenceID(self, role):
        return self._references.get(role)

    def GetNodeReference(self, role):
        node_id = self._references.get(role)
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def SetSingletonTag(self, tag):
        self._singleton_tag = tag

    def GetSingletonTag(self):
        return self._singleton_tag

    def SetAttribute(self, name, value):
        self._attributes[name] = value

    def GetAttribute(self, name):
        return self._attributes.get(name)


NODE_CLASSES = {
    cls.__name__: cls
    for cls in (vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode,
                vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsClosedCurveNode, vtkMRMLMarkupsROINode,
                vtkMRMLLinearTransformNode, vtkMRMLScriptedModuleNode)
}


class vtkMRMLScene(_MainThreadOnly, _Observable):
    # vtkMRMLScene's events: close (File > Close Scene clears the scene between them), import
    # (loading a scene adds its nodes between them), save
    StartCloseEvent, EndCloseEvent, StartImportEvent, EndImportEvent, StartSaveEvent = 66000, 66001, 66002, 66003, 66004

    def __init__(self):
        self._nodes, self._counts = [], {}

    def GetSingletonNode(self, tag, className):
        return next((n for n in self._nodes if n.GetClassName() == className and getattr(n, "_singleton_tag", None) == tag), None)

    def AddNode(self, node):
        tag = getattr(node, "_singleton_tag", None)
        existing = self.GetSingletonNode(tag, node.GetClassName()) if tag else None
        if existing is not None:  # as Slicer: a singleton takes the added node's content, keeps its ID
            existing._parameters, existing._references = dict(node._parameters), dict(node._references)
            existing.InvokeEvent(vtk.vtkCommand.ModifiedEvent)
            return existing
        cls = node.GetClassName()
        self._counts[cls] = self._counts.get(cls, 0) + 1
        node._id, node._scene = f"{cls}{self._counts[cls]}", self
        if not node.GetName():
            node.SetName(cls.replace("vtkMRML", "").replace("Node", "") or cls)
        self._nodes.append(node)
        return node

    def AddNewNodeByClass(self, className, nodeName=""):
        if className not in NODE_CLASSES:
            raise KeyError(f"the Slicer stand-in has no node class {className!r} (add it if SegLoop.py needs it)")
        node = NODE_CLASSES[className]()
        node.SetName(nodeName)
        return self.AddNode(node)

    def GetFirstNodeByName(self, name):
        return next((n for n in self._nodes if n.GetName() == name), None)

    def GetNodeByID(self, node_id):
        return next((n for n in self._nodes if n.GetID() == node_id), None)

    def RemoveNode(self, node):
        if node in self._nodes:
            self._nodes.remove(node)
            node._scene = None
            for layer, shown in standin.slice_layers.items():
                if shown is node:  # as in Slicer: the views stop showing a removed volume
                    standin.slice_layers[layer] = None

    def save_and_reload(self):
        """STAND-IN ONLY: what saving the scene and loading it again does to the nodes. StartSaveEvent,
        then File > Close Scene, then the saved nodes (copies with their IDs, names, data and
        references; no observers) come back between StartImportEvent and EndImportEvent."""
        self.InvokeEvent(self.StartSaveEvent)
        observers = {id(n): n.__dict__.pop("_observers", None) for n in self._nodes}
        try:
            saved = copy.deepcopy(self._nodes, {id(self): self})
        finally:
            for n in self._nodes:
                if observers[id(n)] is not None:
                    n.__dict__["_observers"] = observers[id(n)]
        self.Clear(0)
        self.InvokeEvent(self.StartImportEvent)
        for node in saved:
            tag = getattr(node, "_singleton_tag", None)
            if tag and self.GetSingletonNode(tag, node.GetClassName()) is not None:
                self.AddNode(node)  # merged into the scene's singleton
                continue
            node._scene = self
            self._nodes.append(node)
        self.InvokeEvent(self.EndImportEvent)

    def Clear(self, removeSingletons=0):
        """What File > Close Scene does: StartCloseEvent, every node removed, EndCloseEvent."""
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self._nodes):
            self.RemoveNode(node)
        self.InvokeEvent(self.EndCloseEvent)


mrmlScene = vtkMRMLScene()


# -- widgets the panel's .ui names ----------------------------------------------------------------
class qMRMLWidget(QWidget):  # noqa: N801
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qSlicerWidget(qMRMLWidget):  # noqa: N801  (in Slicer a QWidget with the same scene slot and signal)
    pass


class qSlicerMarkupsPlaceWidget(qSlicerWidget):  # noqa: N801
    """Holds the markups node points are placed into; place mode and its persistency are recorded
    (placing itself needs Slicer's views: tests add control points to the node)."""

    ShowPlaceMultipleMarkupsOption, ForcePlaceSingleMarkup, ForcePlaceMultipleMarkups = range(3)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node, self._place_multiple, self._place_mode = None, self.ShowPlaceMultipleMarkupsOption, False

    placeMultipleMarkups = Property(int, lambda self: self._place_multiple, lambda self, v: setattr(self, "_place_multiple", int(v)))

    def setCurrentNode(self, node):
        if node is not None and not isinstance(node, vtkMRMLMarkupsNode):
            raise TypeError(f"a markups place widget takes a markups node, not {node.GetClassName()}")
        self._node = node

    def currentNode(self):
        if self._node is not None and self._node.GetScene() is None:
            self._node = None  # a weak reference in Slicer: a node removed from the scene (scene close) is gone
        return self._node

    def setPlaceModeEnabled(self, enable):
        if enable and self.currentNode() is None:
            return  # Slicer's widget has nothing to place into
        self._place_mode = bool(enable)

    def placeModeEnabled(self):
        return self._place_mode


# -- modules -------------------------------------------------------------------------------------
class _SegmentEditorWidget(_MainThreadOnly):
    """``qMRMLSegmentEditorWidget`` (Slicer >= 5.2 names): records what it is given."""

    def __init__(self):
        self._segmentation_node, self._source_volume_node, self._segment_id, self._effect = None, None, "", ""

    def setCurrentSegmentID(self, segment_id):
        self._segment_id = segment_id

    def currentSegmentID(self):
        return self._segment_id

    def setActiveEffectByName(self, name):
        self._effect = name

    def setSegmentationNode(self, node):
        self._segmentation_node = node

    def segmentationNode(self):
        return self._segmentation_node

    def setSourceVolumeNode(self, node):
        self._source_volume_node = node

    def sourceVolumeNode(self):
        return self._source_volume_node


class _VolumesLogic(_MainThreadOnly):
    def CreateAndAddLabelVolume(self, volumeNode, name):
        node = vtkMRMLLabelMapVolumeNode()
        node._array = np.zeros(volumeNode._array.shape, np.int16)
        node._ijk_to_ras = volumeNode._ijk_to_ras.copy()
        node.SetName(name)
        mrmlScene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        return node


_segment_editor = SimpleNamespace(editor=_SegmentEditorWidget())
modules = SimpleNamespace(
    segmenteditor=SimpleNamespace(widgetRepresentation=lambda: SimpleNamespace(self=lambda: _segment_editor)),
    volumes=SimpleNamespace(logic=lambda: _VolumesLogic()),
)

from . import util  # noqa: E402,F401  (slicer.util, as Slicer imports it with slicer)
