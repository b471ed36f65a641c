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
from SegLoopLib.geometry import compose_label_map, flatten_box, lasso_on_one_slice, points_to_ijk, roi_to_box

SETTINGS = "SegLoop"
# SlicerModule/README.md where the repository is published (SEGLOOP_REPOSITORY in CMakeLists.txt)
DOCUMENTATION_URL = "https://github.com/segloop/segloop/blob/main/SlicerModule/README.md"
STATUS_TIMEOUT_S = 10  # the panel's 5 s status poll runs on the main thread: never wait long for it
AUTO_PROMPT_PAUSE_MS = 300  # "segment on every placed point": the pause after the last placed point
# The module's own prompt nodes: kind -> (markups class, node name, colour)
PROMPT_NODES = {
    "foreground": ("vtkMRMLMarkupsFiducialNode", "SegLoop foreground", (0.2, 0.8, 0.2)),
    "background": ("vtkMRMLMarkupsFiducialNode", "SegLoop background", (0.9, 0.2, 0.2)),
    "box": ("vtkMRMLMarkupsROINode", "SegLoop box", (1.0, 0.8, 0.2)),
    "lasso": ("vtkMRMLMarkupsClosedCurveNode", "SegLoop lasso", (0.2, 0.6, 1.0)),
}
PLACE_WIDGETS = (("foregroundPlaceWidget", "foreground"), ("backgroundPlaceWidget", "background"),
                 ("boxPlaceWidget", "box"), ("lassoPlaceWidget", "lasso"))
# Scribble segments: kind -> (segment name, value in the uploaded mask (MONAI Label's), colour)
SCRIBBLES = {"foreground": ("foreground scribbles", 3, (0.2, 0.8, 0.2)), "background": ("background scribbles", 2, (0.9, 0.2, 0.2))}
# Panel choices kept in the parameter node: (widget, parameter)
GUI_COMBOS = (("strategyComboBox", "Strategy"), ("autoModelComboBox", "AutoModel"),
              ("promptModelComboBox", "PromptModel"), ("labelComboBox", "Structure"))
GUI_CHECKS = (("autoPromptCheckBox", "AutoPrompt"), ("box2DCheckBox", "Box2D"), ("polarityButton", "Exclude"))


def login_key(url, annotator):
    """The settings key of the token a server gave this annotator (never the password)."""
    return f"{SETTINGS}/logins/" + "".join(c if c.isalnum() else "_" for c in f"{annotator}@{url}")


class SegLoop(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegLoop"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegLoop team"]
        self.parent.helpText = (
            "Annotate a SegLoop campaign: get the next case, run the automatic model, correct with "
            "clicks, a box, a lasso, scribbles or a label name and the Segment Editor, submit, and watch the model learn. "
            f'See the <a href="{DOCUMENTATION_URL}">module documentation</a>.'
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
        VTKObservationMixin.__init__(self)  # scene-close and parameter-node observation (Slicer's module template)
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False

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
        for widget, persistent in ((self.ui.foregroundPlaceWidget, True), (self.ui.backgroundPlaceWidget, True),
                                   (self.ui.boxPlaceWidget, False), (self.ui.lassoPlaceWidget, True)):
            widget.setMRMLScene(slicer.mrmlScene)
            # points and lasso vertices: one click after another; the box: one placement
            widget.placeMultipleMarkups = (
                slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups if persistent else slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            )

        self.ui.connectButton.clicked.connect(self.onConnect)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.openCaseButton.clicked.connect(self.onOpenCase)
        self.ui.autoSegmentButton.clicked.connect(self.onAutoSegment)
        self.ui.uncertaintyCheckBox.toggled.connect(self.onUncertaintyToggled)
        self.ui.newStructureButton.clicked.connect(self.onNewStructure)
        self.ui.polarityButton.toggled.connect(self.onPolarityToggled)
        self.ui.placePointButton.clicked.connect(self.onPlacePoint)
        self.ui.paintScribbleButton.clicked.connect(self.onPaintScribble)
        self.ui.promptButton.clicked.connect(self.onPrompt)
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.autoPromptCheckBox.toggled.connect(self.onAutoPromptToggled)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.redoButton.clicked.connect(self.onRedo)
        self.ui.segmentEditorButton.clicked.connect(self.onSegmentEditor)
        self.ui.submitButton.clicked.connect(self.onSubmit)
        self.ui.refreshButton.clicked.connect(self.onRefresh)
        self.ui.reviewQueueButton.clicked.connect(self.onReviewQueue)
        self.ui.openReadButton.clicked.connect(self.onOpenRead)
        # Bound methods, not lambdas: a lambda holding the widget would keep it (and its shortcuts) alive.
        self.ui.approveButton.clicked.connect(self.onApprove)
        self.ui.rejectButton.clicked.connect(self.onReject)
        # What the clinician chooses is kept in the parameter node (saved with the scene).
        for combo in (self.ui.strategyComboBox, self.ui.autoModelComboBox, self.ui.promptModelComboBox, self.ui.labelComboBox):
            combo.currentTextChanged.connect(self.updateParameterNodeFromGUI)
        for check_box in (self.ui.autoPromptCheckBox, self.ui.box2DCheckBox, self.ui.polarityButton):
            check_box.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.textLineEdit.textChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.labelComboBox.currentTextChanged.connect(self.updateButtons)
        self.ui.promptModelComboBox.currentTextChanged.connect(self.updateButtons)

        # Keys while the module is shown (enter / exit). Slice views use t, b, f, g, r, v; the Segment
        # Editor digits, space, z, y, i: these avoid them. Ctrl+Z / Ctrl+Y are the platform's undo / redo.
        self.shortcuts = []
        for keys, handler in ((qt.QKeySequence.Undo, self.onUndo), (qt.QKeySequence.Redo, self.onRedo),
                              ("P", self.onPlacePoint), ("X", self.onTogglePolarity), ("O", self.onPlaceBox),
                              ("L", self.onPlaceLasso), ("D", self.onPaintScribble), ("N", self.onNewStructure)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), self.parent)
            shortcut.activated.connect(handler)
            self.shortcuts.append(shortcut)

        self.timer = qt.QTimer()
        self.timer.setInterval(5000)
        self.timer.timeout.connect(self.onRefresh)
        self.busy, self.lastError = False, None  # lastError: the last call's failure (its status for onConnect)
        # File > Close Scene removes every node, the case's and the prompt nodes the place widgets hold;
        # loading a scene brings back the case its parameter node names.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartSaveEvent, self.onSceneStartSave)
        # "Segment on every placed point": each placed point or box (re)starts a short pause, then one request.
        self.promptTimer = qt.QTimer()
        self.promptTimer.setSingleShot(True)
        self.promptTimer.setInterval(AUTO_PROMPT_PAUSE_MS)
        self.promptTimer.timeout.connect(self.onPrompt)
        self.initializeParameterNode()
        self.bindPromptNodes()
        self.updateButtons()

    # -- parameter node (MONAIAuto3DSeg's pattern) -------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameter_node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameter_node
        if parameter_node is not None:
            self.addObserver(parameter_node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()
        self.updateParameterNodeFromGUI(only_missing=True)  # what the node did not have, from the panel

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            # Only what the node has: a new scene's empty node leaves the panel as the clinician set it.
            for combo, name in GUI_COMBOS:
                value = self._parameterNode.GetParameter(name)
                index = getattr(self.ui, combo).findText(value) if value else -1
                if index >= 0:
                    getattr(self.ui, combo).currentIndex = index
            for check_box, name in GUI_CHECKS:
                if self._parameterNode.GetParameter(name):
                    getattr(self.ui, check_box).checked = self._parameterNode.GetParameter(name) == "true"
            if self._parameterNode.GetParameter("Text"):
                self.ui.textLineEdit.text = self._parameterNode.GetParameter("Text")
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, *args, only_missing=False):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        node = self._parameterNode
        values = [(name, getattr(self.ui, combo).currentText) for combo, name in GUI_COMBOS]
        values += [(name, "true" if getattr(self.ui, check_box).checked else "false") for check_box, name in GUI_CHECKS]
        values.append(("Text", self.ui.textLineEdit.text))
        was_modified = node.StartModify()  # one Modified event for all of them
        for name, value in values:
            # an empty combo (not connected yet) keeps the saved choice; a new scene's node takes the panel's
            if (value or name == "Text") and not (only_missing and node.GetParameter(name)):
                node.SetParameter(name, value)
        node.EndModify(was_modified)

    def fillCombo(self, combo, items, select=None):
        """Replace ``combo``'s items, selecting ``select`` (else keeping the current choice) where
        listed. Filling is not a choice: the parameter node keeps what it has."""
        current = select or combo.currentText
        self._updatingGUIFromParameterNode = True
        try:
            combo.clear()
            for item in items:
                combo.addItem(item)
            index = combo.findText(current) if current else -1
            if index >= 0:
                combo.currentIndex = index
        finally:
            self._updatingGUIFromParameterNode = False

    def bindPromptNodes(self):
        """The place widgets on the module's prompt nodes, observed for "segment on every placed point"."""
        for widget, kind in PLACE_WIDGETS:
            node = self.logic.prompt_node(kind)
            getattr(self.ui, widget).setCurrentNode(node)
            if kind in ("foreground", "background", "box") and not self.hasObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced):
                self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointPlaced)

    def onPointPlaced(self, caller, event):
        if self.ui.autoPromptCheckBox.checked and self.logic.case is not None and self.logic.client is not None:
            self.promptTimer.start()  # restarted by each point: one request after the last of a quick series

    def onAutoPromptToggled(self, checked):
        if not checked:
            self.promptTimer.stop()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)  # about to be reset with the scene
        self.logic.forget_case()  # its nodes are about to go; unsubmitted work goes with the scene, as Slicer asked

    def onSceneEndClose(self, caller, event):
        self.initializeParameterNode()
        self.bindPromptNodes()  # new prompt nodes in the new scene
        self.ui.caseLabel.text = "No case loaded"
        self.updateButtons()

    def onSceneEndImport(self, caller, event):
        """A scene was loaded: its parameter node may name a case in progress and the module's nodes."""
        self.initializeParameterNode()
        self.logic.adopt_loaded_prompt_nodes()
        self.bindPromptNodes()
        case = self.logic.restore_case()
        if case is not None:
            self.ui.caseLabel.text = f"Case {case.image_id} (from the loaded scene)"
            self.fillStructures()
        self.updateButtons()

    def onSceneStartSave(self, caller, event):
        if self.logic.case is not None:
            self.logic.remember_case()  # the seconds spent so far go into the saved scene

    def enter(self):
        self.initializeParameterNode()
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
        self.busy, self.lastError = True, None
        polling = self.timer.isActive()
        self.timer.stop()  # the status poll would block the main thread beside the call
        self.logic.server = lambda f, *a, **k: run_with_progress(title, f, *a, **k)
        try:
            return function(*args, **kwargs)
        except (SegLoopError, ValueError) as e:
            self.lastError = e
            slicer.util.errorDisplay(f"{title} failed:\n{e}")
        except Exception as e:
            self.lastError = e
            logging.exception(title)
            slicer.util.errorDisplay(f"{title} failed unexpectedly:\n{e}")
        finally:
            self.busy = False
            if polling and self.logic.client is not None:
                self.timer.start()
        return None

    def updateButtons(self, *args):
        connected, has_case = self.logic.client is not None, self.logic.case is not None
        self.ui.nextCaseButton.enabled = self.ui.openCaseButton.enabled = connected
        self.ui.reviewQueueButton.enabled = connected
        self.ui.openReadButton.enabled = connected and self.ui.reviewQueueComboBox.count > 0
        reviewing_read = has_case and self.logic.case.read_of is not None
        self.ui.approveButton.enabled = self.ui.rejectButton.enabled = reviewing_read
        for button in (self.ui.autoSegmentButton, self.ui.promptButton, self.ui.submitButton, self.ui.segmentEditorButton):
            button.enabled = connected and has_case
        # Only the prompt tools the server's prompt model takes (its /info)
        forms = set(SegLoopClient.prompt_forms_of(self.logic.info, self.ui.promptModelComboBox.currentText)) if connected else set()
        for control, form in ((self.ui.boxPlaceWidget, "box"), (self.ui.box2DCheckBox, "box_2d"), (self.ui.lassoPlaceWidget, "lasso"),
                              (self.ui.paintScribbleButton, "scribbles_mask"), (self.ui.newStructureButton, "no_label")):
            control.enabled = has_case and form in forms
        label = self.ui.labelComboBox.currentText
        self.ui.undoButton.enabled = has_case and self.logic.can_undo(label)
        self.ui.redoButton.enabled = has_case and self.logic.can_redo(label)
        self.ui.uncertaintyCheckBox.enabled = self.logic.uncertainty_node is not None

    def fillStructures(self, select=None):
        """The structure list: the server's labels, then the case's own added structures; then the
        choice saved in the parameter node, or ``select`` (a structure just added)."""
        self.fillCombo(self.ui.labelComboBox, self.logic.structures(), select)
        if select:
            self.updateParameterNodeFromGUI()
        else:
            self.updateGUIFromParameterNode()

    def caseChanged(self, case, how):
        if case:
            self.ui.caseLabel.text = f"Case {case.image_id}{how}"
            if case.returned:  # a rejected read, back with the reviewer's comment
                self.ui.caseLabel.text += f"\nReturned by {case.returned.get('reviewer')}: {case.returned.get('comment')}"
            self.fillStructures()
        self.updateButtons()

    def confirmDiscard(self, then):
        return not self.logic.has_unsaved_work() or slicer.util.confirmOkCancelDisplay(
            f"Case {self.logic.case.image_id} has segments that were not submitted. Discard them and {then}?",
            windowTitle="SegLoop",
        )

    # -- controls ------------------------------------------------------------------------------
    def onConnect(self):
        url, annotator = self.ui.serverUrlLineEdit.text.strip(), self.ui.annotatorLineEdit.text.strip()
        if not annotator:
            slicer.util.errorDisplay("Enter your name: it is stored with every label you submit.")
            return
        settings, password = qt.QSettings(), self.ui.passwordLineEdit.text
        token_key = login_key(url, annotator)
        token = settings.value(token_key, "") if not password else ""
        info = self.call("Connecting", self.logic.connect, url, annotator, password, token)
        if info is None:
            if token and getattr(self.lastError, "status", None) == 401:
                settings.remove(token_key)  # refused (not merely unreachable): the next connect needs the password
            return
        self.ui.passwordLineEdit.text = ""  # the password is never kept; the server's token is
        if self.logic.client.http.token:
            settings.setValue(token_key, self.logic.client.http.token)
        url = self.logic.client.url
        settings.setValue(f"{SETTINGS}/serverUrl", url)
        settings.setValue(f"{SETTINGS}/annotator", annotator)
        self.fillCombo(self.ui.strategyComboBox, SegLoopClient.strategies_of(info), select="hybrid")
        self.fillCombo(self.ui.autoModelComboBox, SegLoopClient.models_of(info, AUTOMATIC))
        self.fillCombo(self.ui.promptModelComboBox, SegLoopClient.models_of(info, PROMPT))
        self.fillStructures()  # and the choices saved with the scene, where the server offers them
        self.updateParameterNodeFromGUI(only_missing=True)
        self.ui.statusLabel.text = f"Connected to {url} as {annotator}" + (" (logged in)" if self.logic.client.http.token else "")
        self.timer.start()
        self.onRefresh()
        self.updateButtons()

    def onNextCase(self):
        if not self.confirmDiscard("load the next case"):
            return
        case = self.call("Fetching the next case", self.logic.next_case, self.ui.strategyComboBox.currentText)
        if case is False:
            slicer.util.infoDisplay("No case is left for you: every unlabelled case is labelled or with another annotator.")
        self.caseChanged(case, "")

    def onOpenCase(self):
        if not self.confirmDiscard("open another case"):
            return
        case = self.call("Opening the labelled case", self.logic.open_case, self.ui.openCaseLineEdit.text)
        self.caseChanged(case, ": its final label, for review")

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

    def onNewStructure(self):
        if self.logic.case is None:
            return
        name = self.logic.new_structure()
        self.logic.clear_prompts()
        self.fillStructures(select=name)
        self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: {name}: place points on it, then segment (no label is sent)"
        self.updateButtons()

    def onPolarityToggled(self, exclude):
        self.ui.polarityButton.text = "Clicks exclude (\u2212)" if exclude else "Clicks include (+)"

    def onTogglePolarity(self):
        self.ui.polarityButton.checked = not self.ui.polarityButton.checked

    def onPlacePoint(self):
        widget = self.ui.backgroundPlaceWidget if self.ui.polarityButton.checked else self.ui.foregroundPlaceWidget
        widget.setPlaceModeEnabled(True)

    def onPlaceBox(self):
        self.ui.boxPlaceWidget.setPlaceModeEnabled(True)

    def onPlaceLasso(self):
        self.ui.lassoPlaceWidget.setPlaceModeEnabled(True)

    def onPaintScribble(self):
        if self.logic.case is not None:
            self.logic.open_scribble_editor(foreground=not self.ui.polarityButton.checked)

    def onPrompt(self):
        result = self.call(
            "Segmenting from your prompts", self.logic.prompt_segment, self.ui.promptModelComboBox.currentText,
            self.ui.labelComboBox.currentText, self.ui.textLineEdit.text.strip(), self.ui.box2DCheckBox.checked,
        )
        if result:
            target = result["target"]
            named = result.get("label_from_click") == target != self.ui.labelComboBox.currentText  # the server named what was clicked
            given = f"the click is on the {target}: " if named else ""
            if given:
                self.ui.labelComboBox.setCurrentText(target)  # the next prompts, undo and redo are that segment's
            self.ui.caseLabel.text = f"Case {self.logic.case.image_id}: {given}" + (result.get("message") or f"{target} updated from prompts")
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

    def onReviewQueue(self):
        queue = self.call("Loading the reviewer's queue", self.logic.review_queue)
        if queue is not None:
            self.ui.reviewQueueComboBox.clear()
            for read in queue:
                self.ui.reviewQueueComboBox.addItem(review_item(read))
            self.ui.reviewLabel.text = f"{len(queue)} read(s) wait for review" if queue else "Nothing waits for review"
        self.updateButtons()

    def onOpenRead(self):
        if not self.confirmDiscard("open a read for review"):
            return
        choice = parse_review_item(self.ui.reviewQueueComboBox.currentText)
        if choice is None:
            return
        case = self.call("Opening the read", self.logic.open_read, *choice)
        self.caseChanged(case, f": {choice[1]}'s read, for review")

    def onApprove(self):
        self.review(True)

    def onReject(self):
        self.review(False)

    def review(self, approve):
        comment = self.ui.reviewCommentLineEdit.text.strip()
        answer = self.call("Sending the review", self.logic.review, approve, comment)
        if answer:
            read, case = answer["read"], answer["case"]
            self.ui.reviewLabel.text = f"{read['image'] if 'image' in read else ''} {read['annotator']}: {read['state']}; the case is {case['state'].replace('_', ' ')}".strip()
            self.ui.reviewCommentLineEdit.text = ""
            self.ui.caseLabel.text = "No case loaded"
            self.onReviewQueue()
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


REVIEW_SEPARATOR = " \u2014 "  # case id, then annotator, in the reviewer's queue


def review_item(read):
    return f"{read['image']}{REVIEW_SEPARATOR}{read['annotator']}"


def parse_review_item(text):
    """(case id, annotator) of a queue entry, or None for an empty choice."""
    if REVIEW_SEPARATOR not in (text or ""):
        return None
    image_id, annotator = text.split(REVIEW_SEPARATOR, 1)
    return image_id, annotator


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
    """Slicer nodes <-> SegLoop server.

    The case on screen and the module's own nodes (prompt markups, scribbles) are referenced from
    the module's parameter node, so that a saved scene brings them back (``restore_case``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.status_client = None
        self.info = {}  # the server's /info at connect
        self.annotator = ""
        self.labels = {}
        self.case = None
        self.volume_node = None
        self.segmentation_node = None
        self.uncertainty_node = None
        self.scribbles_node = None
        self.history = {}  # segment name -> (undo, redo) stacks of bit-packed masks
        self.last_prompted = None  # (case id, structure) of the last prompt: another structure starts afresh
        self.folder = tempfile.mkdtemp(prefix="segloop-")
        # Runs a network-only call: directly here (SegLoopTest); the widget runs it in a thread behind a
        # busy dialog. Node work stays out of it, on the main thread: MRML and VTK are not thread-safe.
        self.server = lambda function, *args, **kwargs: function(*args, **kwargs)

    def connect(self, url, annotator, password="", token=""):
        """Log in (a saved ``token``, else ``password`` when the server has auth) and read ``/info``.
        A saved token the server refuses is a 401 ``SegLoopError`` saying to log in again."""
        client = SegLoopClient(url)

        def handshake():
            if token and not password:
                client.http.token = token
                try:
                    return client.info()
                except SegLoopError as e:
                    if e.status == 401:
                        raise SegLoopError(401, "the saved login was refused (expired or revoked): enter your password and connect again") from None
                    raise
            client.login(annotator, password)
            return client.info()

        info = self.server(handshake)
        self.client, self.annotator, self.labels, self.info = client, annotator, SegLoopClient.labels_of(info), info
        self.status_client = client.with_timeout(STATUS_TIMEOUT_S)
        return info

    def cleanup(self):
        """Delete the downloaded images and results: they are patient data."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the case, and the parameter node that keeps it with the scene ----------------------------
    def forget_case(self):
        """Drop the case: its node references (the scene is closing or was cleared) and its files."""
        self.case = None
        self.history = {}
        self.last_prompted = None
        self.volume_node = self.segmentation_node = self.uncertainty_node = self.scribbles_node = None
        self._forget_case_files()

    def _forget_case_files(self):
        for name in os.listdir(self.folder):
            os.remove(os.path.join(self.folder, name))

    def remember_case(self):
        """Write the case (id, proposal version, seconds spent, its nodes) into the parameter node."""
        parameters = self.getParameterNode()
        case = self.case
        parameters.SetParameter("Case", case.image_id if case else "")
        parameters.SetParameter("Reviewing", "1" if case and case.reviewing else "")
        parameters.SetParameter("ReviewRead", case.read_of or "" if case else "")
        parameters.SetParameter("ProposalVersion", "" if case is None or case.proposal_version is None else str(case.proposal_version))
        parameters.SetParameter("SecondsSpent", f"{case.seconds_spent():.1f}" if case else "")
        for role, node in (("Volume", self.volume_node), ("Segmentation", self.segmentation_node),
                           ("Uncertainty", self.uncertainty_node), ("Scribbles", self.scribbles_node)):
            parameters.SetNodeReferenceID(role, node.GetID() if case and node is not None else None)

    def restore_case(self):
        """The case a loaded scene's parameter node names, with its nodes; None when it names none.
        The clock goes on from the seconds already spent; undo history does not survive a reload."""
        parameters = self.getParameterNode()
        image_id = parameters.GetParameter("Case")
        volume, segmentation = parameters.GetNodeReference("Volume"), parameters.GetNodeReference("Segmentation")
        if not image_id or volume is None or segmentation is None:
            return None
        self.forget_case()
        self.volume_node, self.segmentation_node = volume, segmentation
        self.uncertainty_node = parameters.GetNodeReference("Uncertainty")
        self.scribbles_node = parameters.GetNodeReference("Scribbles")
        version = parameters.GetParameter("ProposalVersion")
        self.case = CaseSession(image_id, "", proposal_version=int(version) if version else None,
                                reviewing=bool(parameters.GetParameter("Reviewing")),
                                read_of=parameters.GetParameter("ReviewRead") or None)
        self.case.started -= float(parameters.GetParameter("SecondsSpent") or 0)
        return self.case

    def has_unsaved_work(self):
        """A case is open and one of its segments is not empty (a proposal, a prompt answer or an
        edit that was not submitted)."""
        if self.case is None or self.segmentation_node is None:
            return False
        return any(mask.any() for mask in self._segment_masks().values())

    def structures(self):
        """The names a prompt can target: the server's labels, then the case's other segments
        (structures the clinician added, which the server has no label for)."""
        names = list(self.labels)
        if self.segmentation_node is not None:
            names += [name for name in self._segment_names() if name not in self.labels]
        return names

    def _segment_names(self, node=None):
        segmentation = (node or self.segmentation_node).GetSegmentation()
        return [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName() for i in range(segmentation.GetNumberOfSegments())]

    # -- the module's own prompt nodes -------------------------------------------------------------
    def prompt_node(self, kind):
        """The module's markups node for ``kind`` (``PROMPT_NODES``), made on first use and kept in
        the parameter node: the place widgets hold these, never a node the user picks."""
        parameters = self.getParameterNode()
        role = f"{kind} prompt"
        node = parameters.GetNodeReference(role)
        if node is None:
            class_name, name, colour = PROMPT_NODES[kind]
            node = slicer.mrmlScene.AddNewNodeByClass(class_name, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(colour)
            parameters.SetNodeReferenceID(role, node.GetID())
        return node

    def adopt_loaded_prompt_nodes(self):
        """After a scene load: the loaded parameter node names the loaded prompt nodes; the empty ones
        made for the closed scene's successor are removed."""
        keep = {self.prompt_node(kind).GetID() for kind in PROMPT_NODES}
        for kind, (class_name, name, _) in PROMPT_NODES.items():
            for node in list(slicer.util.getNodesByClass(class_name)):
                if node.GetName() == name and node.GetID() not in keep:
                    slicer.mrmlScene.RemoveNode(node)

    def next_case(self, strategy):
        """Load the next case for this annotator; False when none is left."""

        def fetch():
            case = self.client.next_case(strategy, self.annotator)
            if case is None:
                return None
            return case, self.client.download_image(case["id"], self.folder)

        found = self.server(fetch)
        if found is None:
            return False
        case, path = found
        self._show_case(case["id"], path)
        self.case.returned = case.get("returned")
        return self.case

    def open_case(self, image_id):
        """Re-open a case that already has a final label, for review: its image and that label as
        segments. Submitting it stores the reviewed label."""
        image_id = image_id.strip()
        if not image_id:
            raise ValueError("enter the id of a labelled case")

        def fetch():
            return self.client.download_image(image_id, self.folder), self.client.download_label(image_id, self.folder, "final")

        path, label_path = self.server(fetch)
        self._show_case(image_id, path, reviewing=True)
        array = self._load_answer(label_path)
        for name, index in self.labels.items():
            self._set_segment(name, array == index)
        self.remember_case()
        return self.case

    def review_queue(self):
        """Reads waiting for a reviewer (the server's queue, oldest first)."""
        return self.server(self.client.review_queue)

    def open_read(self, image_id, annotator):
        """A reviewer's case: the image with ``annotator``'s read as segments, to approve or reject."""

        def fetch():
            reads = self.client.case_reads(image_id)["reads"]
            if annotator not in reads:
                raise ValueError(f"{image_id} has no read by {annotator} any more")
            tag = reads[annotator]["tag"]
            return self.client.download_image(image_id, self.folder), self.client.download_label(image_id, self.folder, tag)

        path, label_path = self.server(fetch)
        self._show_case(image_id, path, reviewing=True)
        self.case.read_of = annotator
        array = self._load_answer(label_path)
        for name, index in self.labels.items():
            self._set_segment(name, array == index)
        self.remember_case()
        return self.case

    def review(self, approve, comment=""):
        """Approve or reject the read on screen; the case then leaves the screen."""
        if self.case is None or self.case.read_of is None:
            raise ValueError("open a read from the reviewer's queue first")
        if not approve and not comment:
            raise ValueError("a rejection needs a comment for the annotator")
        answer = self.server(self.client.review, self.case.image_id, self.case.read_of, approve, comment, self.annotator)
        answer["read"].setdefault("image", self.case.image_id)
        self._clear_case_nodes()
        self.forget_case()
        self.remember_case()
        return answer

    def _show_case(self, image_id, path, reviewing=False):
        self._clear_case_nodes()
        self.history = {}
        self.last_prompted = None
        self.volume_node = slicer.util.loadVolume(path)
        self.case = CaseSession(image_id, path, reviewing=reviewing)
        self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{image_id} segmentation")
        self.segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        for n, name in enumerate(self.labels):
            self.segmentation_node.GetSegmentation().AddEmptySegment(name, name, label_colour(name, n))
        self.clear_prompts()
        self.remember_case()

    def _clear_case_nodes(self):
        for node in (self.volume_node, self.segmentation_node, self.uncertainty_node, self.scribbles_node):
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        self.volume_node = self.segmentation_node = self.uncertainty_node = self.scribbles_node = None

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

    def _set_segment(self, name, mask_kji, node=None):
        node = node or self.segmentation_node
        segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
        if not segment_id:
            segment_id = node.GetSegmentation().AddEmptySegment(name, name, label_colour(name, len(self.labels)))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask_kji.astype(np.uint8), node, segment_id, self.volume_node)

    def _segment_masks(self, node=None):
        """``{segment name: boolean [k, j, i] mask on the case volume's grid}``."""
        node = node or self.segmentation_node
        segmentation, masks = node.GetSegmentation(), {}
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            masks[segmentation.GetSegment(segment_id).GetName()] = (
                slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, self.volume_node) > 0
            )
        return masks

    def new_structure(self):
        """An empty segment for a structure the server has no label for ("Structure 1", "Structure 2",
        ...): prompts for it go without a label, and the model segments whatever they point at."""
        taken, n = set(self._segment_names()), 1
        while f"Structure {n}" in taken:
            n += 1
        name = f"Structure {n}"
        self.segmentation_node.GetSegmentation().AddEmptySegment(name, name, label_colour(name, len(taken)))
        return name

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
        self.remember_case()
        return result

    def show_uncertainty(self, shown):
        if self.uncertainty_node is not None:
            slicer.util.setSliceViewerLayers(
                background=self.volume_node, foreground=self.uncertainty_node if shown else None, foregroundOpacity=0.5
            )

    # -- prompts, in the stored image's voxels ----------------------------------------------------
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

    def _points(self, kind):
        """IJK of the placed points of prompt node ``kind`` (a point still being placed is not one)."""
        node, out = self.prompt_node(kind), []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue  # a point still being placed (preview) or skipped: not a prompt
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, position)
            out.append(position)
        return points_to_ijk(self._ras_to_ijk(), self._world_to_volume(out), self._shape_ijk())

    def _box(self, flat=False):
        """The module's box as two IJK corners of the volume, None when it is not placed: the box
        around its world bounds' 8 corners (rotation and transforms included: ``GetRASBounds``)
        mapped into the volume; ``flat``: collapsed onto the slice through its centre (a 2D box)."""
        roi = self.prompt_node("box")
        if not roi.GetNumberOfControlPoints():
            return None
        if roi.GetNthControlPointPositionStatus(0) != roi.PositionDefined:
            raise ValueError("the box is still being placed: finish placing it, or clear the prompts")
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        corners = np.array(self._world_to_volume([[x, y, z] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]))
        low, high = corners.min(axis=0), corners.max(axis=0)
        box = roi_to_box(self._ras_to_ijk(), ((low + high) / 2).tolist(), (high - low).tolist(), self._shape_ijk())
        return flatten_box(box) if flat else box

    def _lasso(self):
        """The lasso's vertices on one slice (IJK), None when it has no point."""
        points = self._points("lasso")
        return lasso_on_one_slice(points) if points else None

    def _save_array(self, array, path, what):
        """Write ``array`` [k, j, i] as a label map on the case volume's grid to ``path``."""
        label_node = slicer.modules.volumes.logic().CreateAndAddLabelVolume(self.volume_node, "SegLoop label map")
        slicer.util.updateVolumeFromArray(label_node, array)
        saved = slicer.util.saveNode(label_node, path)
        slicer.mrmlScene.RemoveNode(label_node)
        if not saved:  # never upload a stale or missing file
            raise ValueError(f"the {what} could not be written to {path}: nothing was sent")
        return path

    def _write_label_map(self, path, known_only=False):
        """The segments as one label map of storage indices on the image's grid, written to ``path``.
        A non-empty segment the server has no label for is refused, unless ``known_only`` (prompts:
        it is masked locally instead)."""
        masks = {name: mask for name, mask in self._segment_masks().items() if name in self.labels or mask.any()}
        unknown = [name for name in masks if name not in self.labels]
        if unknown and not known_only:
            raise ValueError(
                f"{', '.join(unknown)} is not one of the server's labels ({', '.join(self.labels)}): rename it to one of "
                "them in the Segment Editor, or delete it, then submit"
            )
        masks = {name: mask for name, mask in masks.items() if name in self.labels}
        label = compose_label_map(masks, self.labels, np.zeros(slicer.util.arrayFromVolume(self.volume_node).shape, np.uint8))
        return self._save_array(label, path, "label")

    # -- scribbles: painted with the Segment Editor on the module's scribble segments --------------
    def ensure_scribbles(self):
        """The case's scribble segmentation: a foreground and a background segment on its grid."""
        if self.scribbles_node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{self.case.image_id} scribbles")
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
            for key, (name, _, colour) in SCRIBBLES.items():
                node.GetSegmentation().AddEmptySegment(name, name, colour)
            self.scribbles_node = node
            self.remember_case()
        return self.scribbles_node

    def open_scribble_editor(self, foreground=True):
        """The Segment Editor on the scribble segments, Paint on the foreground (or background) one:
        paint strokes are scribbles of that kind, Erase takes strokes back."""
        node = self.ensure_scribbles()
        editor = self._segment_editor(node)
        editor.setCurrentSegmentID(node.GetSegmentation().GetSegmentIdBySegmentName(SCRIBBLES["foreground" if foreground else "background"][0]))
        editor.setActiveEffectByName("Paint")

    def _write_scribbles(self, path):
        """The scribbles as one mask (3 foreground, 2 background: MONAI Label's convention) at
        ``path``; None when nothing is painted."""
        if self.scribbles_node is None:
            return None
        masks = self._segment_masks(self.scribbles_node)
        mask = np.zeros(slicer.util.arrayFromVolume(self.volume_node).shape, np.uint8)
        for key in ("background", "foreground"):  # foreground painted over background wins
            name, value, _ = SCRIBBLES[key]
            if name in masks:
                mask[masks[name]] = value
        return self._save_array(mask, path, "scribbles") if mask.any() else None

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

    def prompt_segment(self, model, structure, text="", box_2d=False):
        """Segment ``structure`` from every placed prompt: points, the box (``box_2d``: on the slice
        through its centre), the lasso, painted scribbles, ``text``.

        A structure the server has a label for goes with its name; any other (``new_structure``)
        goes without one, so the model segments what the prompts point at; when the server says the
        click was on one of its labelled structures (``label_from_click``), that structure's segment
        gets the answer (the returned ``target``). The case's labelled
        segments go along as a label map (the structure's own is refined, the others are never
        claimed by the server); with scribbles the upload is the scribble mask instead. Either way the
        answer never takes another segment's voxels here: Slicer would overwrite them."""
        known = structure in self.labels
        box, lasso = self._box(box_2d), self._lasso()
        scribbles = self._write_scribbles(os.path.join(self.folder, "scribbles.nii.gz"))
        label_map = None if scribbles else self._write_label_map(os.path.join(self.folder, "segments.nii.gz"), known_only=True)
        reset = self.last_prompted != (self.case.image_id, structure)  # another structure: the server starts afresh
        path, result = self.server(
            self.client.prompt_segment, model, self.case.image_id, os.path.join(self.folder, "prompt.nii.gz"),
            foreground=self._points("foreground"), background=self._points("background"), box=box, lasso=lasso,
            text=text or (structure if known else ""), scribble_mask=scribbles, label_map=label_map, reset=reset,
        )
        self.last_prompted = (self.case.image_id, structure)
        mask = self._load_answer(path) > 0
        if known:
            target = result.get("target") or structure
        elif result.get("label_from_click") in self.labels:  # the click was on a structure the server knows
            target = result["label_from_click"]
        else:
            target = structure
        for name, other in self._segment_masks().items():
            if name != target:
                mask &= ~other
        if mask.any():  # an empty answer (the result's "message" says so) leaves the segment as it was
            self._apply_with_history(target, mask)
        self.remember_case()
        return dict(result, target=target)

    def clear_prompts(self):
        """Remove every placed prompt: points, box, lasso and painted scribbles."""
        for kind in PROMPT_NODES:
            self.prompt_node(kind).RemoveAllControlPoints()
        if self.scribbles_node is not None and self.volume_node is not None:
            for name in self._segment_masks(self.scribbles_node):
                self._set_segment(name, np.zeros(slicer.util.arrayFromVolume(self.volume_node).shape, bool), self.scribbles_node)

    def _segment_editor(self, segmentation_node):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation_node)
        set_source = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # renamed in Slicer 5.2
        set_source(self.volume_node)
        return editor

    def open_segment_editor(self):
        self._segment_editor(self.segmentation_node)

    def submit(self):
        path = self._write_label_map(os.path.join(self.folder, f"{self.case.image_id}_final.nii.gz"))
        answer = self.server(
            self.client.submit, self.case.image_id, path, self.annotator, self.case.seconds_spent(),
            client="SegLoop Slicer module" + (" (review)" if self.case.reviewing else ""), proposal_version=self.case.proposal_version,
        )
        self.case = None
        self.remember_case()
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
            logic.prompt_node("foreground").AddControlPoint(ras)
            logic.prompt_segment(SegLoopClient.models_of(info, PROMPT)[0], next(iter(logic.labels)))
        answer = logic.submit()
        self.assertIn("edit_effort", answer)
        self.delayDisplay("SegLoop round trip passed")
