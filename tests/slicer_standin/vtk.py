"""STAND-IN for tests, not Slicer or VTK: the two VTK classes ``SegLoop.py`` meets, backed by numpy.

* ``vtkMatrix4x4``: ``GetElement``, ``SetElement``, ``MultiplyPoint`` (what ``SegLoop.py`` calls);
  volume nodes fill it in ``GetIJKToRASMatrix`` / ``GetRASToIJKMatrix``.
* ``vtkImageData``: only ``GetDimensions()`` (I, J, K), what ``volume_node.GetImageData()`` is used for.
* ``vtkCommand.ModifiedEvent``, the event a parameter node fires on each change.
* ``vtkGeneralTransform``: ``TransformPoint``; linear only (what
  ``vtkMRMLTransformNode.GetTransformBetweenNodes`` fills in the stand-in).
"""

import numpy as np


class vtkCommand:  # noqa: N801 (VTK's name)
    ModifiedEvent = 33


class vtkMatrix4x4:  # noqa: N801 (VTK's name)
    def __init__(self):
        self._m = np.eye(4)

    def GetElement(self, row, column):
        return float(self._m[row, column])

    def SetElement(self, row, column, value):
        self._m[row, column] = value

    def MultiplyPoint(self, point):
        return tuple(float(v) for v in self._m @ np.asarray(point, dtype=float))


class vtkImageData:  # noqa: N801 (VTK's name)
    def __init__(self, dimensions):
        self._dimensions = tuple(int(d) for d in dimensions)

    def GetDimensions(self):
        return self._dimensions


class vtkGeneralTransform:  # noqa: N801 (VTK's name)
    def __init__(self):
        self._m = np.eye(4)

    def TransformPoint(self, point):
        return tuple(float(v) for v in (self._m @ np.r_[np.asarray(point, dtype=float)[:3], 1.0])[:3])
