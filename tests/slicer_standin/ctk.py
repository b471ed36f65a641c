"""STAND-IN for tests, not Slicer: the one CTK widget that ``SegLoop.ui`` uses.

``ctkCollapsibleButton`` is a group box here (it neither collapses nor draws a button); it has the
``text`` property the ``.ui`` file sets, so ``slicer.util.loadUI`` builds the panel unchanged.
"""

from PySide6.QtCore import Property
from PySide6.QtWidgets import QGroupBox


class ctkCollapsibleButton(QGroupBox):  # noqa: N801 (CTK's name)
    def _text(self):
        return self.title()

    def _set_text(self, text):
        self.setTitle(text)

    text = Property(str, _text, _set_text)
