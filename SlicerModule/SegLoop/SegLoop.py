"""SegLoop: the clinician's cockpit for a SegLoop (MONAI Label) annotation campaign in 3D Slicer.

The widget only wires controls; ``SegLoopLogic`` turns Slicer nodes into server calls and back;
everything that does not need Slicer (HTTP client, geometry, campaign figures) lives in
``SegLoopLib`` and is tested outside Slicer against a real server.
"""

import logging
import os
import shutil
import tempfile
import threading
import time

import ctk  # noqa: F401  (the .ui uses ctkCollapsibleButton)
import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SegLoopLib import AUTOMATIC, PROMPT, CampaignFigures, CaseSession, SegLoopClient, SegLoopError, label_colour
from SegLoopLib.campaign import training_text
from SegLoopLib.geometry import compose_label_map, points_to_ijk, roi_to_box

SETTINGS = "SegLoop"
STATUS_TIMEOUT_S = 10  # the panel's 5 s status poll runs on the main thread: never wait long for it
AUTO_PROMPT_PAUSE_MS = 300  # "segment on every placed point": the pause after the last placed point


class SegLoop(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegLoop"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegLoop team"]
        self.parent.helpText = (
            "Annotate a SegLoop campaign: get the next case, run the automatic model, correct with "
            "clicks, a box or a label name and the Segment Editor, submit, and watch the model learn."
        )
        self.parent.acknowledgementText = "Built on MONAI Label and MONAI."


def run_with_progress(title, function, *args, **kwargs):
    """Run a server call in a thread while a busy dialog keeps Slicer responsive; re-raise its error.

    ``function`` must not touch Slicer nodes or widgets: MRML, VTK and Qt objects belong to the
    main thread. The logic passes only its network calls here (``SegLoopLogic.server``)."""
    outcome = {}

    def work():
        try:
            outcome["value"] = function(*args, **kwargs)
        except Exception as e:  # shown to the user by the caller
            outcome["error"] = e

    dialog = qt.QProgressDialog(title, "Cancel", 0, 0, slicer.util.mainWindow())
    dialog.setCancelButton(None)  # a server call cannot be taken back half-way
    dialog.setWindowModality(qt.Qt.WindowModal)
    dialog.setMinimumDuration(300)
    dialog.setValue(0)  # starts the 300 ms timer: with a 0..0 range Qt would show the dialog only after 4 s
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        slicer.app.processEvents()
        time.sleep(0.05)
    dialog.close()
    dialog.deleteLater()  # a child of the main window: otherwise every call leaves a hidden dialog behind
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class SegLoopWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # scene-close observation (Slicer's module template)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/SegLoop.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegLoopLogic()

        settings = qt.QSettings()
        self.ui.serverUrlLineEdit.text = settings.value(f"{SETTINGS}/serverUrl", "http://127.0.0.1:8000")
        self.ui.annotatorLineEdit.text = settings.value(f"{SETTINGS}/annotator", "")
        for widget, name in ((self.ui.foregroundPlaceWidget, "foreground"), (self.ui.backgroundPlaceWidget, "background")):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.setCurrentNode(self.logic.point_list(name))
        self.ui.boxPlaceWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.connectButton.clicked.connect(self.onConnect)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.autoSegmentButton.clicked.connect(self.onAutoSegment)
        self.ui.uncertaintyCheckBox.toggled.connect(self.onUncertaintyToggled)
        self.ui.promptButton.clicked.connect(self.onPrompt)
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.autoPromptCheckBox.toggled.connect(self.onAutoPromptToggled)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.redoButton.clicked.connect(self.onRedo)
        # Ctrl+Z / Ctrl+Y (the platform's undo / redo keys) while the module is shown (enter / exit):
        # the Segment Editor has its own undo on the same keys.
        self.shortcuts = []
        for keys, handler in ((qt.QKeySequence.Undo, self.onUndo), (qt.QKeySequence.Redo, self.onRedo)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), self.parent)
            shortcut.activated.connect(handler)
            self.shortcuts.append(shortcut)
        self.ui.segmentEditorButton.clicked.connect(self.onSegmentEditor)
        self.ui.submitButton.clicked.connect(self.onSubmit)
        self.ui.refreshButton.clicked.connect(self.onRefresh)

        self.timer = qt.QTimer()
        self.timer.setInterval(5000)
        self.timer.timeout.connect(self.onRefresh)
        self.busy = False
        # File > Close Scene removes every node, the case's and the point lists the place widgets hold.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # "Segment on every placed point": each placed point (re)starts a short pause, then one request.
        self.promptTimer = qt.QTimer()
        self.promptTimer.setSingleShot(True)
        self.promptTimer.setInterval(AUTO_PROMPT_PAUSE_MS)
        self.promptTimer.timeout.connect(self.onPrompt)
        self.observePointLists()
        self.updateButtons()

    def observePointLists(self):
        for name in ("foreground", "background"):
            self.addObserver(self.logic.point_list(name), slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)

    def onPointPlaced(self, caller, event):
        if self.ui.autoPromptCheckBox.checked and self.logic.case is not None and self.logic.client is not None:
            self.promptTimer.start()  # restarted by each point: one request after the last of a quick series

    def onAutoPromptToggled(self, checked):
        if not checked:
            self.promptTimer.stop()

    def onSceneStartClose(self, caller, event):
        self.logic.forget_case()  # its nodes are about to go; unsubmitted work goes with the scene, as Slicer asked

    def onSceneEndClose(self, caller, event):
        for widget, name in ((self.ui.foregroundPlaceWidget, "foreground"), (self.ui.backgroundPlaceWidget, "background")):
            widget.setCurrentNode(self.logic.point_list(name))  # new point lists in the new scene
        self.observePointLists()
        self.ui.caseLabel.text = "No case loaded"
        self.updateButtons()

    def enter(self):
        if self.logic.client is not None:
            self.timer.start()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        self.timer.stop()  # no polling while the module is not shown
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)

    def cleanup(self):
        self.timer.stop()
        self.removeObservers()
        self.logic.cleanup()

    # -- helpers -------------------------------------------------------------------------------
    def call(self, title, function, *args, **kwargs):
        """A clinician action: ``function`` (a logic method) on the main thread, its server calls in a
        thread behind a busy dialog called ``title``; the server's message in an error box on failure."""
        if self.busy:  # a second click while the busy dialog is not shown yet (its first 300 ms)
            return None
        self.busy = True
        polling = self.timer.isActive()
        self.timer.stop()  # the status poll would block the main thread beside the call
        self.logic.server = lambda f, *a, **k: run_with_progress(title, f, *a, **k)
        try:
            return function(*args, **kwargs)
        except (SegLoopError, ValueError) as e:
            slicer.util.errorDisplay(f"{title} failed:\n{e}")
        except Exception as e:
            logging.exception(title)
            slicer.util.errorDisplay(f"{title} failed unexpectedly:\n{e}")
        finally:
            self.busy = False
            if polling and self.logic.client is not None:
                self.timer.start()
        return None

    def updateButtons(self):
        connected, has_case = self.logic.client is not None, self.logic.case is not None
        self.ui.nextCaseButton.enabled = connected
        for button in (self.ui.autoSegmentButton, self.ui.promptButton, self.ui.submitButton, self.ui.segmentEditorButton):
            button.enabled = connected and has_case
        label = self.ui.labelComboBox.currentText
        self.ui.undoButton.enabled = has_case and self.logic.can_undo(label)
        self.ui.redoButton.enabled = has_case and self.logic.can_redo(label)
        self.ui.uncertaintyCheckBox.enabled = self.logic.uncertainty_node is not None

    # -- controls ------------------------------------------------------------------------------
    def onConnect(self):
        url, annotator = self.ui.serverUrlLineEdit.text.strip(), self.ui.annotatorLineEdit.text.strip()
        if not annotator:
            slicer.util.errorDisplay("Enter your name: it is stored with every label you submit.")
            return
        info = self.call("Connecting", self.logic.connect, url, annotator, self.ui.passwordLineEdit.text)
        if info is None:
            return
        url = self.logic.client.url
        settings = qt.QSettings()
        settings.setValue(f"{SETTINGS}/serverUrl", url)
        settings.setValue(f"{SETTINGS}/annotator", annotator)
        fill = lambda combo, items: (combo.clear(), [combo.addItem(i) for i in items])  # noqa: E731
        fill(self.ui.strategyComboBox, SegLoopClient.strategies_of(info))
        fill(self.ui.autoModelComboBox, SegLoopClient.models_of(info, AUTOMATIC))
        fill(self.ui.promptModelComboBox, SegLoopClient.models_of(info, PROMPT))
        fill(self.ui.labelComboBox, list(self.logic.labels))
        index = self.ui.strategyComboBox.findText("hybrid")
        if index >= 0:
            self.ui.strategyComboBox.currentIndex = index
        self.ui.statusLabel.text = f"Connected to {url} as {annotator}"
        self.timer.start()
        self.onRefresh()
        self.updateButtons()

    def onNextCase(self):
        if self.logic.has_unsaved_work() and not slicer.util.confirmOkCancelDisplay(
            f"Case {self.logic.case.image_id} has segments that were not submitted. Discard them and load the next case?",
            windowTitle="SegLoop",
        ):
            return
        case = self.call("Fetching the next case", self.logic.next_case, self.ui.strategyComboBox.currentText)
        if case is False:
            slicer.util.infoDisplay("No case is left for you: every unlabelled case is labelled or with another annotator.")
        elif case:
            self.ui.caseLabel.text = f"Case {case.image_id}"
        self.updateButtons()

    def onAutoSegment(self):
        # the uncertainty map always comes along, so the overlay toggle works without another run
        result = self.call("Running the automatic model", self.logic.auto_segment, self.ui.autoModelComboBox.currentText, True)
        if result:
            confidence = ", ".join(f"{k} {v:.2f}" for k, v in result.get("label_confidence", {}).items() if v is not None)
            self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: proposal of version {result.get('model_version')} ({confidence})"
            self.logic.show_uncertainty(self.ui.uncertaintyCheckBox.checked)
        self.updateButtons()

    def onUncertaintyToggled(self, shown):
        self.logic.show_uncertainty(shown)

    def onPrompt(self):
        result = self.call(
            "Segmenting from your prompts", self.logic.prompt_segment,
            self.ui.promptModelComboBox.currentText, self.ui.labelComboBox.currentText,
            self.ui.boxPlaceWidget.currentNode(), self.ui.textLineEdit.text.strip(),
        )
        if result:
            target = result.get("target") or self.ui.labelComboBox.currentText
            self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: " + (result.get("message") or f"{target} updated from prompts")
        self.updateButtons()

    def onClearPrompts(self):
        self.logic.clear_prompts()

    def onUndo(self):
        label = self.ui.labelComboBox.currentText
        if self.logic.case is not None and self.logic.undo(label):
            self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: {label}: last prompt answer taken back"
        self.updateButtons()

    def onRedo(self):
        label = self.ui.labelComboBox.currentText
        if self.logic.case is not None and self.logic.redo(label):
            self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: {label}: prompt answer applied again"
        self.updateButtons()

    def onSegmentEditor(self):
        self.logic.open_segment_editor()

    def onSubmit(self):
        answer = self.call("Submitting the label", self.logic.submit)
        if answer:
            dice = {model: [v for v in (e.get("dice") or {}).values() if v is not None] for model, e in answer.get("edit_effort", {}).items() if e}
            text = "; ".join(f"{model}: Dice vs proposal {np.mean(values):.2f}" for model, values in dice.items() if values)
            self.ui.caseLabel.text = f"Submitted. {text}" if text else "Submitted."
            self.onRefresh()
        self.updateButtons()

    def onRefresh(self):
        if self.logic.client is None:
            return
        try:
            status = self.logic.panel_status(self.ui.autoModelComboBox.currentText)
        except SegLoopError as e:
            self.ui.trainingLabel.text = f"server: {e.message}"
            return
        figures = status["figures"]
        self.ui.versionLabel.text = f"Serving version {figures.serving_version}"
        progress = status["progress"] or {}
        self.ui.trainingProgressBar.value = int(progress.get("percent") or 0)
        self.ui.trainingLabel.text = training_text(progress, figures.training is not None)
        last = next((p for p in reversed(figures.learning_curve) if p["val_dice"] is not None), None)
        self.ui.valDiceLabel.text = f"Validation Dice {last['val_dice']:.3f} (version {last['version']})" if last else "Validation Dice: no validation case yet"
        self.ui.campaignLabel.text = figures.progress_text
        effort = ", ".join(f"v{e['version']}: {e['median_dice']:.2f}" for e in figures.edit_effort if e["median_dice"] is not None)
        self.ui.editEffortLabel.text = f"Median Dice of proposal vs final, per version: {effort or 'none yet'}"
        draw_curve(self.ui.learningCurveLabel, [p["val_dice"] for p in figures.learning_curve])


def draw_curve(label, values, width=260, height=90):
    """A small line plot of validation Dice per version (0..1) into a QLabel."""
    pixmap = qt.QPixmap(width, height)
    pixmap.fill(qt.QColor("white"))
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    painter = qt.QPainter(pixmap)
    painter.setPen(qt.QColor("lightgray"))
    painter.drawRect(0, 0, width - 1, height - 1)
    if len(points) >= 1:
        painter.setPen(qt.QPen(qt.QColor("steelblue"), 2))
        span = max(1, len(values) - 1)
        xy = [(5 + (width - 10) * i / span, height - 5 - (height - 10) * v) for i, v in points]
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            painter.drawLine(int(x0), int(y0), int(x1), int(y1))
        for x, y in xy:
            painter.drawEllipse(int(x) - 2, int(y) - 2, 4, 4)
    painter.end()
    label.setPixmap(pixmap)


class SegLoopLogic(ScriptedLoadableModuleLogic):
    """Slicer nodes <-> SegLoop server."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.status_client = None
        self.annotator = ""
        self.labels = {}
        self.case = None
        self.volume_node = None
        self.segmentation_node = None
        self.uncertainty_node = None
        self.history = {}  # segment name -> (undo, redo) stacks of bit-packed masks
        self.folder = tempfile.mkdtemp(prefix="segloop-")
        # Runs a network-only call: directly here (SegLoopTest); the widget runs it in a thread behind a
        # busy dialog. Node work stays out of it, on the main thread: MRML and VTK are not thread-safe.
        self.server = lambda function, *args, **kwargs: function(*args, **kwargs)

    def connect(self, url, annotator, password=""):
        client = SegLoopClient(url)

        def handshake():
            client.login(annotator, password)
            return client.info()

        info = self.server(handshake)
        self.client, self.annotator, self.labels = client, annotator, SegLoopClient.labels_of(info)
        self.status_client = client.with_timeout(STATUS_TIMEOUT_S)
        return info

    def cleanup(self):
        """Delete the downloaded images and results: they are patient data."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def forget_case(self):
        """Drop the case: its node references (the scene is closing or was cleared) and its files."""
        self.case = None
        self.history = {}
        self.volume_node = self.segmentation_node = self.uncertainty_node = None
        self._forget_case_files()

    def _forget_case_files(self):
        for name in os.listdir(self.folder):
            os.remove(os.path.join(self.folder, name))

    def has_unsaved_work(self):
        """A case is open and one of its segments is not empty (a proposal, a prompt answer or an
        edit that was not submitted)."""
        if self.case is None or self.segmentation_node is None:
            return False
        segmentation = self.segmentation_node.GetSegmentation()
        return any(
            slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, segmentation.GetNthSegmentID(i), self.volume_node).any()
            for i in range(segmentation.GetNumberOfSegments())
        )

    def point_list(self, name):
        node = slicer.mrmlScene.GetFirstNodeByName(f"SegLoop {name}")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"SegLoop {name}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor((0.2, 0.8, 0.2) if name == "foreground" else (0.9, 0.2, 0.2))
        return node

    def next_case(self, strategy):
        """Load the next case for this annotator; False when none is left."""

        def fetch():
            case = self.client.next_case(strategy, self.annotator)
            if case is None:
                return None
            return case["id"], self.client.download_image(case["id"], self.folder)

        found = self.server(fetch)
        if found is None:
            return False
        image_id, path = found
        self._clear_case_nodes()
        self.history = {}
        self.volume_node = slicer.util.loadVolume(path)
        self.case = CaseSession(image_id, path)
        self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{image_id} segmentation")
        self.segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        for n, name in enumerate(self.labels):
            self.segmentation_node.GetSegmentation().AddEmptySegment(name, name, label_colour(name, n))
        self.clear_prompts()
        return self.case

    def _clear_case_nodes(self):
        for node in (self.volume_node, self.segmentation_node, self.uncertainty_node):
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        self.volume_node = self.segmentation_node = self.uncertainty_node = None

    def _load_answer(self, path):
        """The server's label map file as an array [k, j, i] on the case volume's grid. Loaded hidden
        (shown, Slicer would refit every view); an answer on any other grid (size or IJK-to-RAS) is
        refused: segments take an array as it is, without resampling."""
        node = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            answer, image = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(answer)
            self.volume_node.GetIJKToRASMatrix(image)
            same_matrix = all(abs(answer.GetElement(r, c) - image.GetElement(r, c)) < 1e-3 for r in range(4) for c in range(4))
            size, expected = node.GetImageData().GetDimensions(), self.volume_node.GetImageData().GetDimensions()
            if tuple(size) != tuple(expected) or not same_matrix:
                raise ValueError(
                    f"the server's answer ({tuple(size)} voxels) is not on this image's grid ({tuple(expected)} voxels, "
                    "same IJK-to-RAS): it was not applied"
                )
            return np.array(slicer.util.arrayFromVolume(node))
        finally:
            slicer.mrmlScene.RemoveNode(node)

    def _set_segment(self, name, mask_kji):
        segment_id = self.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
        if not segment_id:
            segment_id = self.segmentation_node.GetSegmentation().AddEmptySegment(name, name, label_colour(name, len(self.labels)))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask_kji.astype(np.uint8), self.segmentation_node, segment_id, self.volume_node)

    def auto_segment(self, model, uncertainty=True):
        def infer():
            path, result = self.client.auto_segment(model, self.case.image_id, os.path.join(self.folder, "proposal.nii.gz"), uncertainty)
            map_path = None
            if result.get("uncertainty"):
                map_path = self.client.uncertainty_map(result, os.path.join(self.folder, "uncertainty.nii.gz"))
            return path, result, map_path

        path, result, map_path = self.server(infer)
        array = self._load_answer(path)
        for name, index in self.labels.items():
            self._set_segment(name, array == index)
        self.case.proposal_version = result.get("model_version")
        if map_path:
            if self.uncertainty_node is not None:
                slicer.mrmlScene.RemoveNode(self.uncertainty_node)
            self.uncertainty_node = slicer.util.loadVolume(map_path, {"name": f"{self.case.image_id} uncertainty", "show": False})
            self.uncertainty_node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
            self.uncertainty_node.GetDisplayNode().SetAutoWindowLevel(False)
            self.uncertainty_node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
        return result

    def show_uncertainty(self, shown):
        if self.uncertainty_node is not None:
            slicer.util.setSliceViewerLayers(
                background=self.volume_node, foreground=self.uncertainty_node if shown else None, foregroundOpacity=0.5
            )

    def _ras_to_ijk(self):
        matrix = vtk.vtkMatrix4x4()
        self.volume_node.GetRASToIJKMatrix(matrix)
        return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]

    def _shape_ijk(self):
        return list(self.volume_node.GetImageData().GetDimensions())

    def _world_to_volume(self, points_world):
        """World RAS points (where markups are, all their transforms applied) -> the volume's own RAS,
        through the volume's parent transforms if it has any (RAS-to-IJK is the volume's local one)."""
        to_volume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, self.volume_node.GetParentTransformNode(), to_volume)
        return [list(to_volume.TransformPoint(p)) for p in points_world]

    def _points(self, name):
        node, out = self.point_list(name), []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue  # a point still being placed (preview) or skipped: not a prompt
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, position)
            out.append(position)
        return points_to_ijk(self._ras_to_ijk(), self._world_to_volume(out), self._shape_ijk())

    def _box(self, roi_node):
        """The ROI's world bounding box (rotation and transforms included: ``GetRASBounds``) as two
        IJK corners of the volume: the box around its 8 corners mapped into the volume."""
        bounds = [0.0] * 6
        roi_node.GetRASBounds(bounds)
        corners = np.array(self._world_to_volume([[x, y, z] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]))
        low, high = corners.min(axis=0), corners.max(axis=0)
        return roi_to_box(self._ras_to_ijk(), ((low + high) / 2).tolist(), (high - low).tolist(), self._shape_ijk())

    # -- undo / redo of prompt answers, per segment ------------------------------------------
    UNDO_STEPS = 20  # per segment; each a bit-packed mask (1/8 byte a voxel)

    def _segment_mask(self, name):
        segment_id = self.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
        if not segment_id:
            return np.zeros(slicer.util.arrayFromVolume(self.volume_node).shape, bool)
        return slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, segment_id, self.volume_node) > 0

    def _apply_with_history(self, name, mask):
        """Set segment ``name`` to ``mask``, keeping what it was for ``undo``."""
        undo, redo = self.history.setdefault(name, ([], []))
        current = self._segment_mask(name)
        undo.append((current.shape, np.packbits(current, axis=None)))
        del undo[: -self.UNDO_STEPS]
        redo.clear()
        self._set_segment(name, mask)

    def _step(self, name, backwards):
        stacks = self.history.get(name)
        if not stacks or not stacks[0 if backwards else 1]:
            return False
        source, target = stacks if backwards else stacks[::-1]
        shape, bits = source.pop()
        current = self._segment_mask(name)
        target.append((current.shape, np.packbits(current, axis=None)))
        self._set_segment(name, np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool))
        return True

    def undo(self, name):
        """Segment ``name`` as it was before its last prompt answer; False when there is none."""
        return self._step(name, backwards=True)

    def redo(self, name):
        """The prompt answer last taken back from ``name``, again; False when there is none."""
        return self._step(name, backwards=False)

    def can_undo(self, name):
        return bool(self.history.get(name, ([], []))[0])

    def can_redo(self, name):
        return bool(self.history.get(name, ([], []))[1])

    def _write_label_map(self, path):
        """The segments as one label map of storage indices on the image's grid, written to ``path``."""
        masks = {}
        segmentation = self.segmentation_node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            name = segmentation.GetSegment(segment_id).GetName()
            masks[name] = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, segment_id, self.volume_node)
        reference = slicer.util.arrayFromVolume(self.volume_node)
        label = compose_label_map(masks, self.labels, np.zeros(reference.shape, np.uint8))
        label_node = slicer.modules.volumes.logic().CreateAndAddLabelVolume(self.volume_node, "SegLoop label map")
        slicer.util.updateVolumeFromArray(label_node, label)
        saved = slicer.util.saveNode(label_node, path)
        slicer.mrmlScene.RemoveNode(label_node)
        if not saved:  # never upload a stale or missing file
            raise ValueError(f"the label could not be written to {path}: nothing was sent")
        return path

    def prompt_segment(self, model, label_name, roi_node=None, text=""):
        box = None
        if roi_node is not None and not roi_node.GetNumberOfControlPoints():
            raise ValueError(f"the box '{roi_node.GetName()}' was never placed: place it in a slice view, or choose no box")
        if roi_node is not None:
            box = self._box(roi_node)
        # The case's segments go along: the structure's own is the mask to refine, the others are
        # never claimed by the answer (the server's label_map form).
        label_map = self._write_label_map(os.path.join(self.folder, "segments.nii.gz"))
        path, result = self.server(
            self.client.prompt_segment, model, self.case.image_id, os.path.join(self.folder, "prompt.nii.gz"),
            foreground=self._points("foreground"), background=self._points("background"), box=box, text=text or label_name,
            label_map=label_map,
        )
        mask = self._load_answer(path) > 0
        if mask.any():  # an empty answer (the result's "message" says so) leaves the segment as it was
            self._apply_with_history(result.get("target") or label_name, mask)
        return result

    def clear_prompts(self):
        for name in ("foreground", "background"):
            self.point_list(name).RemoveAllControlPoints()

    def open_segment_editor(self):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(self.segmentation_node)
        set_source = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # renamed in Slicer 5.2
        set_source(self.volume_node)

    def submit(self):
        path = self._write_label_map(os.path.join(self.folder, f"{self.case.image_id}_final.nii.gz"))
        answer = self.server(
            self.client.submit, self.case.image_id, path, self.annotator, self.case.seconds_spent(),
            tool="SegLoop Slicer module", proposal_version=self.case.proposal_version,
        )
        self.case = None
        self._forget_case_files()  # the submitted case stays in the scene, not on disk
        return answer

    def panel_status(self, model):
        client = self.status_client
        figures = CampaignFigures.from_server(client.datastore_status(), client.model_status(model))
        return {"figures": figures, "progress": client.train_progress(model)}


class SegLoopTest(ScriptedLoadableModuleTest):
    """Runs inside 3D Slicer against a running SegLoop server (SEGLOOP_TEST_URL) whose automatic
    model already serves: see SlicerModule/README.md. Without SEGLOOP_TEST_URL it skips."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_campaign_round_trip()

    def test_campaign_round_trip(self):
        url = os.environ.get("SEGLOOP_TEST_URL")
        if not url:  # run by CTest without a server: nothing to test against
            self.delayDisplay("SEGLOOP_TEST_URL is not set: the SegLoop round trip was skipped")
            return
        self.delayDisplay(f"Connecting to {url}")
        logic = SegLoopLogic()
        info = logic.connect(url, "slicer-test")
        self.assertIn("segmentation", SegLoopClient.models_of(info, AUTOMATIC))
        case = logic.next_case("random")
        self.assertTrue(case, "the server has no unlabelled case left")
        self.assertEqual(logic.volume_node.GetImageData().GetDimensions()[0], slicer.util.arrayFromVolume(logic.volume_node).shape[2])
        result = logic.auto_segment("segmentation", uncertainty=True)
        self.assertIsNotNone(result.get("model_version"))
        self.assertIsNotNone(logic.uncertainty_node)
        logic.show_uncertainty(True)
        if SegLoopClient.models_of(info, PROMPT):
            centre = [c // 2 for c in logic._shape_ijk()]
            ijk_to_ras = vtk.vtkMatrix4x4()
            logic.volume_node.GetIJKToRASMatrix(ijk_to_ras)
            ras = ijk_to_ras.MultiplyPoint([*centre, 1])[:3]
            logic.point_list("foreground").AddControlPoint(ras)
            logic.prompt_segment(SegLoopClient.models_of(info, PROMPT)[0], next(iter(logic.labels)))
        answer = logic.submit()
        self.assertIn("edit_effort", answer)
        self.delayDisplay("SegLoop round trip passed")
