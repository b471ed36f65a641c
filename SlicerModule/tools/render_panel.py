"""Render SegLoop.ui to a PNG with plain Qt (PySide6, offscreen): a picture of the panel for the docs.

Slicer's own widgets are replaced by their nearest Qt look-alikes (ctkCollapsibleButton -> group
box, markups place widget -> button, MRML node combo box -> combo box), and the controls show
example contents: this is a rendering of the layout, not a screenshot of Slicer.

    pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen python SlicerModule/tools/render_panel.py SlicerModule/Screenshots/panel.png
"""

import os
import re
import sys

from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit, QProgressBar, QPushButton

UI = os.path.join(os.path.dirname(__file__), "..", "SegLoop", "Resources", "UI", "SegLoop.ui")
STAND_INS = {
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLWidget": "QWidget",
    "qSlicerMarkupsPlaceWidget": "QPushButton",
}
EXAMPLE = {
    "serverUrlLineEdit": "http://127.0.0.1:8000", "annotatorLineEdit": "dr_a",
    "strategyComboBox": ["hybrid", "entropy", "epistemic", "diversity", "random", "first"],
    "autoModelComboBox": ["segmentation"], "promptModelComboBox": ["prompt"],
    "labelComboBox": ["liver", "spleen", "kidney", "tumor"],
    "statusLabel": "Connected to http://127.0.0.1:8000 as dr_a",
    "caseLabel": "Case case_006: proposal of version 3 (liver 0.93, spleen 0.88, kidney 0.90)",
    "versionLabel": "Serving version 3", "trainingProgressBar": 40,
    "trainingLabel": "training: epoch 12, 40%, loss 0.412",
    "valDiceLabel": "Validation Dice 0.734 (version 3)", "campaignLabel": "5 / 8 cases labelled",
    "editEffortLabel": "Median Dice of proposal vs final, per version: v1: 0.41, v2: 0.63",
    "learningCurveLabel": "(learning curve: validation Dice per version)",
}


def load_panel():
    xml = open(UI).read()
    for custom, stand_in in STAND_INS.items():
        xml = re.sub(f'class="{custom}"', f'class="{stand_in}"', xml)
    xml = xml.replace('<property name="text">\n      <string>', '<property name="title">\n      <string>')
    xml = re.sub(r"<customwidgets>.*</customwidgets>", "", xml, flags=re.S)
    xml = re.sub(r"<connections>.*</connections>", "", xml, flags=re.S)
    data = QByteArray(xml.encode())
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    buffer.close()
    return panel


def main(out: str) -> None:
    app = QApplication.instance() or QApplication(sys.argv)
    panel = load_panel()
    for name, value in EXAMPLE.items():
        widget = panel.findChild(QComboBox, name) or panel.findChild(QLineEdit, name) or panel.findChild(QLabel, name)
        widget = widget or panel.findChild(QProgressBar, name)
        if isinstance(widget, QComboBox):
            widget.addItems(value)
        elif isinstance(widget, QProgressBar):
            widget.setValue(value)
        elif widget is not None:
            widget.setText(value)
    for name, text in (("foregroundPlaceWidget", "Place include points (2 placed)"), ("backgroundPlaceWidget", "Place exclude points"),
                       ("boxPlaceWidget", "Place the box"), ("lassoPlaceWidget", "Draw the lasso")):
        panel.findChild(QPushButton, name).setText(text)
    panel.resize(430, panel.sizeHint().height())
    panel.grab().save(out)
    print(f"wrote {out}")
    app.quit()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "panel.png")
