"""STAND-IN for tests, not Slicer: the ``qt`` module of 3D Slicer's Python, made of PySide6.

In Slicer, ``qt`` is PythonQt's flat namespace of Qt classes. Here it re-exports the PySide6
classes that ``SegLoop.py`` uses, nothing else: a new ``qt.`` name in
``SegLoop.py`` fails the headless test with an AttributeError until it is added here on purpose.

Objects created from these classes are plain PySide6 objects: call their methods
(``timer.setInterval(5000)``), as ``SegLoop.py`` does. Only the panel's widgets, as
``slicer.util.childWidgetVariables`` returns them, also take Qt properties as attributes the way
PythonQt does (see ``slicer.util.PythonQtWidget``).
"""

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QColor, QKeySequence, QPainter, QPen, QPixmap, QShortcut
from PySide6.QtWidgets import QProgressDialog

__all__ = ["QColor", "QKeySequence", "QPainter", "QPen", "QPixmap", "QProgressDialog", "QSettings", "QShortcut", "QTimer", "Qt"]
