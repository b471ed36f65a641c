"""The Slicer module's widget, headless: the real ``SegLoop.py`` (widget, logic, ``run_with_progress``,
``draw_curve``) and the real ``SegLoop.ui`` on PySide6 (``QT_QPA_PLATFORM=offscreen``), with a
STAND-IN for the few Slicer, CTK and VTK calls it makes (``tests/slicer_standin``: not Slicer; read
its docstrings for what it models and what it does not).

Fast tests: the panel is built from the ``.ui`` and every button and check box reaches its handler;
buttons follow the session's state; connection errors reach the user; the learning curve; the
busy dialog and the worker thread. One slow test drives the widget against a real SegLoop server
the way a clinician would: type, click, read the panel.
"""

import os
import re
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import requests

from segloop_bench.server import running_server, wait_for
from segloop.labels import DEFAULT_LABELS

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before the stand-in creates the QApplication

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "slicer_standin")
MODULE = os.path.join(HERE, "..", "SlicerModule", "SegLoop")
UI = os.path.join(MODULE, "Resources", "UI", "SegLoop.ui")
STANDIN_MODULES = {"slicer", "qt", "ctk", "vtk", "SegLoop"}

CASE_BUTTONS = ("autoSegmentButton", "promptButton", "submitButton", "segmentEditorButton")


@pytest.fixture(scope="module")
def env():
    """``SegLoop.py`` imported over the stand-in. Afterwards the stand-in's ``slicer``, ``qt``, ``ctk``,
    ``vtk`` leave ``sys.modules`` again, so no other test module meets a fake ``vtk``."""
    added = [p for p in (STANDIN, MODULE) if p not in sys.path]
    sys.path[:0] = added
    before = set(sys.modules)
    import slicer
    import vtk
    from PySide6.QtCore import QCoreApplication, QEvent, QSettings, Qt, QTimer
    from PySide6.QtGui import QKeySequence
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QProgressDialog, QVBoxLayout

    import SegLoop
    from SegLoopLib import SegLoopClient, SegLoopError

    yield SimpleNamespace(
        slicer=slicer, vtk=vtk, SegLoop=SegLoop, SegLoopClient=SegLoopClient, SegLoopError=SegLoopError, QTest=QTest, Qt=Qt,
        QTimer=QTimer, QSettings=QSettings, QProgressDialog=QProgressDialog, QVBoxLayout=QVBoxLayout,
        QCoreApplication=QCoreApplication, QEvent=QEvent, QKeySequence=QKeySequence,
    )
    for name in set(sys.modules) - before:
        if name.split(".")[0] in STANDIN_MODULES:
            del sys.modules[name]
    for path in added:
        sys.path.remove(path)


@pytest.fixture
def make_widget(env):
    """``make_widget(handlers=None)``: a module widget as Slicer makes it (parent panel, then
    ``setup()``), on an empty scene, settings and message list; ``handlers`` replace ``on*`` methods
    before ``setup()`` connects them."""
    slicer = env.slicer
    slicer.mrmlScene.Clear(0)
    slicer.standin.messages.clear()
    slicer.standin.slice_layers.update(background=None, foreground=None, label=None, foregroundOpacity=None)
    slicer.standin.selected_module = None
    slicer.standin.save_fails = False
    slicer.standin.confirm_answer = True
    env.QSettings().clear()
    made = []

    def make(handlers=None):
        parent = slicer.qMRMLWidget()
        parent.setLayout(env.QVBoxLayout())
        parent.resize(480, 1600)  # room for every control: a squeezed one would take no click
        parent.setMRMLScene(slicer.mrmlScene)
        widget = env.SegLoop.SegLoopWidget(parent)
        for name, handler in (handlers or {}).items():
            setattr(widget, name, handler)
        widget.setup()
        parent.show()
        made.append(widget)
        return widget

    yield make
    for widget in made:
        widget.cleanup()
        widget.parent.close()


def raw(env, widget, name):
    return env.slicer.util.findChild(widget.parent, name)


def click(env, widget, name):
    from PySide6.QtCore import QPoint
    from PySide6.QtWidgets import QCheckBox

    target = raw(env, widget, name)
    if isinstance(target, QCheckBox):  # on its box: a check box stretched wide takes no click past its text
        env.QTest.mouseClick(target, env.Qt.LeftButton, pos=QPoint(6, target.height() // 2))
    else:
        env.QTest.mouseClick(target, env.Qt.LeftButton)


def type_into(env, widget, name, text):
    field = raw(env, widget, name)
    field.selectAll()
    env.QTest.keyClicks(field, text)  # typing replaces the selection


def choose(env, widget, combo, text):
    box = raw(env, widget, combo)
    index = box.findText(text)
    assert index >= 0, f"{text!r} is not in {combo}: {[box.itemText(i) for i in range(box.count())]}"
    box.setCurrentIndex(index)


def enabled(env, widget, names):
    return {name: raw(env, widget, name).isEnabled() for name in names}


def ui_widgets():
    tree = ElementTree.parse(UI)
    return {w.get("name"): w.get("class") for w in tree.iter("widget") if w.get("name")}


# -- fast ----------------------------------------------------------------------------------------
def test_the_real_ui_loads_and_every_button_and_check_box_reaches_its_handler(env, make_widget):
    slicer = env.slicer
    # Every prompt is placed with a place widget on a node the module owns: no node to pick.
    assert {name for name, cls in ui_widgets().items() if cls == "qSlicerMarkupsPlaceWidget"} == {
        "foregroundPlaceWidget", "backgroundPlaceWidget", "boxPlaceWidget", "lassoPlaceWidget"}
    assert "qMRMLNodeComboBox" not in ui_widgets().values()

    calls = []
    handlers = {
        name: (lambda *args, name=name: calls.append((name, args)))
        for name in dir(env.SegLoop.SegLoopWidget) if name.startswith("on")
    }
    widget = make_widget(handlers)
    assert set(vars(widget.ui)) == set(ui_widgets()) - {"SegLoop", "verticalSpacer"}  # the .ui's named widgets (less itself, the spacer)

    fired = {}
    for name, cls in ui_widgets().items():
        if cls == "QPushButton":
            raw(env, widget, name).setEnabled(True)  # clickable whatever the state
            calls.clear()
            click(env, widget, name)
            fired[name] = [handler for handler, _ in calls]
    assert fired == {
        "connectButton": ["onConnect"], "nextCaseButton": ["onNextCase"], "autoSegmentButton": ["onAutoSegment"],
        "promptButton": ["onPrompt"], "clearPromptsButton": ["onClearPrompts"], "segmentEditorButton": ["onSegmentEditor"],
        "submitButton": ["onSubmit"], "refreshButton": ["onRefresh"], "undoButton": ["onUndo"], "redoButton": ["onRedo"],
        "openCaseButton": ["onOpenCase"], "newStructureButton": ["onNewStructure"], "placePointButton": ["onPlacePoint"],
        "paintScribbleButton": ["onPaintScribble"], "polarityButton": ["onPolarityToggled"],
        "reviewQueueButton": ["onReviewQueue"], "openReadButton": ["onOpenRead"], "approveButton": ["onApprove"],
        "rejectButton": ["onReject"],
    }
    checkboxes = sorted(name for name, cls in ui_widgets().items() if cls == "QCheckBox")
    assert checkboxes == ["autoPromptCheckBox", "box2DCheckBox", "uncertaintyCheckBox"]
    for name, handler in (("uncertaintyCheckBox", "onUncertaintyToggled"), ("autoPromptCheckBox", "onAutoPromptToggled"),
                          ("polarityButton", "onPolarityToggled")):
        raw(env, widget, name).setEnabled(True)
        raw(env, widget, name).setChecked(False)  # the toggle button was clicked above
        calls.clear()
        click(env, widget, name)
        click(env, widget, name)
        assert calls == [(handler, (True,)), (handler, (False,))], name

    # The 5 s refresh timer calls onRefresh (started by a successful connect, not before).
    assert widget.timer.interval() == 5000 and not widget.timer.isActive()
    calls.clear()
    widget.timer.setInterval(10)
    widget.timer.start()
    deadline = time.time() + 5
    while not calls and time.time() < deadline:
        slicer.app.processEvents()
        time.sleep(0.01)
    widget.timer.stop()
    assert calls and calls[0] == ("onRefresh", ())

    # The point lists the place widgets fill are the ones the logic reads, coloured per kind.
    foreground, background = widget.ui.foregroundPlaceWidget.currentNode(), widget.ui.backgroundPlaceWidget.currentNode()
    assert foreground is slicer.mrmlScene.GetFirstNodeByName("SegLoop foreground") is widget.logic.prompt_node("foreground")
    assert background is slicer.mrmlScene.GetFirstNodeByName("SegLoop background")
    assert foreground.GetDisplayNode().GetSelectedColor() == (0.2, 0.8, 0.2)
    assert background.GetDisplayNode().GetSelectedColor() == (0.9, 0.2, 0.2)
    assert widget.ui.boxPlaceWidget.currentNode().GetClassName() == "vtkMRMLMarkupsROINode"
    assert widget.ui.lassoPlaceWidget.currentNode().GetClassName() == "vtkMRMLMarkupsClosedCurveNode"
    place = slicer.qSlicerMarkupsPlaceWidget
    assert {name: getattr(widget.ui, name).placeMultipleMarkups for name in ("foregroundPlaceWidget", "boxPlaceWidget", "lassoPlaceWidget")} == {
        "foregroundPlaceWidget": place.ForcePlaceMultipleMarkups, "boxPlaceWidget": place.ForcePlaceSingleMarkup,
        "lassoPlaceWidget": place.ForcePlaceMultipleMarkups}
    # What the panel says before anything happened.
    assert widget.ui.statusLabel.text == "Not connected" and widget.ui.caseLabel.text == "No case loaded"
    assert widget.ui.serverUrlLineEdit.text == "http://127.0.0.1:8000" and widget.ui.annotatorLineEdit.text == ""


def test_buttons_follow_the_state_of_the_session(env, make_widget):
    calls = []
    widget = make_widget({"onNextCase": lambda: calls.append("onNextCase")})
    names = ("connectButton", "refreshButton", "clearPromptsButton", "nextCaseButton", *CASE_BUTTONS, "uncertaintyCheckBox")
    always = {"connectButton": True, "refreshButton": True, "clearPromptsButton": True}
    assert enabled(env, widget, names) == {**always, "nextCaseButton": False, **dict.fromkeys(CASE_BUTTONS, False),
                                           "uncertaintyCheckBox": False}
    click(env, widget, "nextCaseButton")  # disabled: nothing happens
    assert calls == []

    widget.logic.client = object()  # connected
    widget.updateButtons()
    assert enabled(env, widget, names) == {**always, "nextCaseButton": True, **dict.fromkeys(CASE_BUTTONS, False),
                                           "uncertaintyCheckBox": False}
    click(env, widget, "nextCaseButton")
    assert calls == ["onNextCase"]

    widget.logic.case = SimpleNamespace(read_of=None)  # a case loaded (not a read under review)
    widget.updateButtons()
    assert enabled(env, widget, names) == {**always, "nextCaseButton": True, **dict.fromkeys(CASE_BUTTONS, True),
                                           "uncertaintyCheckBox": False}
    widget.logic.uncertainty_node = object()  # a proposal with its uncertainty map
    widget.updateButtons()
    assert enabled(env, widget, ["uncertaintyCheckBox"]) == {"uncertaintyCheckBox": True}
    widget.logic.client = None  # no server: nothing case-related can run
    widget.updateButtons()
    assert enabled(env, widget, ["nextCaseButton", *CASE_BUTTONS]) == dict.fromkeys(["nextCaseButton", *CASE_BUTTONS], False)


def test_connection_errors_are_shown_and_leave_the_panel_disconnected(env, make_widget):
    slicer = env.slicer
    widget = make_widget()
    type_into(env, widget, "serverUrlLineEdit", "http://127.0.0.1:9")  # nothing listens on port 9
    click(env, widget, "connectButton")
    assert slicer.standin.messages == [("error", "Enter your name: it is stored with every label you submit.")]

    type_into(env, widget, "annotatorLineEdit", "  dr_w ")
    click(env, widget, "connectButton")
    kind, text = slicer.standin.messages[-1]
    assert kind == "error" and text.startswith("Connecting failed:\ncannot reach http://127.0.0.1:9: "), text

    type_into(env, widget, "serverUrlLineEdit", "127.0.0.1:9")  # typed without a scheme: http:// is meant
    click(env, widget, "connectButton")
    kind, text = slicer.standin.messages[-1]
    assert kind == "error" and text.startswith("Connecting failed:\ncannot reach http://127.0.0.1:9: "), text

    assert len(slicer.standin.messages) == 3
    assert widget.logic.client is None and widget.ui.statusLabel.text == "Not connected"
    assert not raw(env, widget, "nextCaseButton").isEnabled() and not widget.timer.isActive()
    assert env.QSettings().value("SegLoop/serverUrl") is None  # only a working server is remembered


def test_the_learning_curve_is_drawn_from_the_values(env, make_widget):
    from PySide6.QtGui import QColor

    widget = make_widget()
    label = raw(env, widget, "learningCurveLabel")
    steelblue = QColor("steelblue").rgb()

    def plot(values):
        env.SegLoop.draw_curve(widget.ui.learningCurveLabel, values)
        image = label.pixmap().toImage()
        assert (image.width(), image.height()) == (260, 90)
        blue = {(x, y) for x in range(260) for y in range(90) if image.pixel(x, y) == steelblue}
        return image, blue

    empty, blue = plot([None, None])
    assert blue == set()
    assert empty.pixel(0, 0) == QColor("lightgray").rgb() and empty.pixel(130, 45) == QColor("white").rgb()

    rising, rising_blue = plot([0.2, 0.5, 0.8])
    falling, falling_blue = plot([0.8, 0.5, 0.2])
    assert len(rising_blue) > 100 and rising != falling

    def rows_at(blue, x):
        return sorted(y for bx, y in blue if bx == x)

    # first point at x = 5, y = 90 - 5 - 80 * value; last at x = 255
    assert abs(np.mean(rows_at(rising_blue, 5)) - 69) <= 2 and abs(np.mean(rows_at(falling_blue, 5)) - 21) <= 2
    assert abs(np.mean(rows_at(rising_blue, 255)) - 21) <= 2 and abs(np.mean(rows_at(falling_blue, 255)) - 69) <= 2
    _, gap_blue = plot([0.3, None, 0.9])  # a version without validation: no point, the line joins its neighbours
    assert rows_at(gap_blue, 130) and not any(abs(y - (85 - 80 * 0.6)) > 3 for y in rows_at(gap_blue, 130))


def test_run_with_progress_runs_in_a_thread_behind_a_busy_dialog_and_reraises(env):
    slicer, SegLoop = env.slicer, env.SegLoop
    main = threading.get_ident()
    assert SegLoop.run_with_progress("Adding", lambda a, b=0: (a + b, threading.get_ident()), 40, b=2)[0] == 42
    assert SegLoop.run_with_progress("Thread", threading.get_ident) != main

    error = env.SegLoopError(404, "no image 'case_999'")
    with pytest.raises(env.SegLoopError) as raised:
        SegLoop.run_with_progress("Failing", lambda: (_ for _ in ()).throw(error))
    assert raised.value is error

    # A call longer than 300 ms shows the busy dialog; none is left behind afterwards.
    seen = []

    def look():
        seen.extend(d.labelText() for d in slicer.util.mainWindow().findChildren(env.QProgressDialog) if d.isVisible())

    env.QTimer.singleShot(700, look)
    assert SegLoop.run_with_progress("Fetching the next case", lambda: time.sleep(1.2) or "done") == "done"
    assert seen == ["Fetching the next case"]
    env.QCoreApplication.sendPostedEvents(None, env.QEvent.DeferredDelete)
    assert slicer.util.mainWindow().findChildren(env.QProgressDialog) == []

    # The stand-in refuses scene work off the main thread, as Slicer cannot take it.
    add = slicer.mrmlScene.AddNewNodeByClass
    with pytest.raises(RuntimeError, match="belong to the main thread"):
        SegLoop.run_with_progress("Adding a node", add, "vtkMRMLSegmentationNode", "from a thread")
    assert slicer.mrmlScene.GetFirstNodeByName("from a thread") is None


def test_a_second_click_during_a_call_does_nothing(env, make_widget):
    widget = make_widget()
    runs = []

    def submit_twice():
        runs.append("outer")
        assert widget.call("Submitting the label", lambda: runs.append("inner")) is None  # the impatient click
        return "done"

    assert widget.call("Submitting the label", submit_twice) == "done"
    assert runs == ["outer"] and widget.busy is False
    assert widget.call("Submitting the label", lambda: "again") == "again"  # free once the first one ended


def test_polling_only_while_shown_and_case_files_deleted(env, make_widget):
    widget = make_widget()
    widget.enter()
    assert not widget.timer.isActive()  # not connected: nothing to poll
    widget.logic.client = object()
    widget.enter()
    assert widget.timer.isActive()
    widget.exit()
    assert not widget.timer.isActive()
    folder = widget.logic.folder
    open(os.path.join(folder, "case_003.nii.gz"), "wb").close()
    widget.logic._forget_case_files()
    assert os.path.isdir(folder) and os.listdir(folder) == []
    open(os.path.join(folder, "proposal.nii.gz"), "wb").close()
    widget.cleanup()
    assert not os.path.exists(folder)  # downloaded images are patient data


def test_submit_message_without_any_dice_says_only_submitted(env, make_widget):
    widget = make_widget()
    widget.logic.submit = lambda: {"edit_effort": {"segmentation": {"dice": {"liver": None}}, "prompt": None}}
    widget.onSubmit()
    assert widget.ui.caseLabel.text == "Submitted."
    widget.logic.submit = lambda: {"edit_effort": {"segmentation": {"dice": {"liver": 0.8, "spleen": 0.6, "tumor": None}}}}
    widget.onSubmit()
    assert widget.ui.caseLabel.text == "Submitted. segmentation: Dice vs proposal 0.70"


class OfflineServer:
    """What the logic asks of a SegLoop server, answered from memory: one 12 x 10 x 6 case
    ``case_x`` (1.5 mm voxels), a proposal with a liver block, and a record of submissions."""

    def __init__(self, error_class):
        self.error_class = error_class
        self.affine = np.diag([1.5, 1.5, 1.5, 1.0])
        self.image = np.zeros((12, 10, 6), np.int16)
        self.submitted = []

    def next_case(self, strategy, annotator):
        return {"id": "case_x"}

    def download_image(self, image_id, folder):
        dest = os.path.join(folder, f"{image_id}.nii.gz")
        nib.save(nib.Nifti1Image(self.image, self.affine), dest)
        return dest

    def auto_segment(self, model, image_id, dest, uncertainty=False):
        proposal = np.zeros(self.image.shape, np.uint8)
        proposal[2:6, 2:6, 1:4] = 1
        grid = getattr(self, "answer_grid", (proposal.shape, self.affine))  # a test may answer on another grid
        nib.save(nib.Nifti1Image(np.resize(proposal, grid[0]), grid[1]), dest)
        return dest, {"model_version": 1, "label_confidence": {"liver": 0.9}}

    def download_label(self, image_id, folder, tag="final"):
        label = np.zeros(self.image.shape, np.uint8)
        label[2:6, 2:6, 1:4], label[8:11, 6:9, 2:4] = 1, 2
        dest = os.path.join(folder, f"{image_id}_{tag}.nii.gz")
        nib.save(nib.Nifti1Image(label, self.affine), dest)
        return dest

    def prompt_segment(self, model, image_id, dest, **prompts):
        self.prompts = prompts
        for key in ("label_map", "scribble_mask"):  # the file is read when sent, as the server reads the upload
            if prompts.get(key):
                setattr(self, f"sent_{key}", np.asarray(nib.load(prompts[key]).dataobj).copy())
        answer = getattr(self, "answer", None)  # a test sets a mask to answer with
        if answer is None:
            nib.save(nib.Nifti1Image(np.zeros(self.image.shape, np.uint8), self.affine), dest)
            return dest, {"target": "liver", "voxels": 0, "message": "found no liver from these prompts"}
        nib.save(nib.Nifti1Image(answer.astype(np.uint8), self.affine), dest)
        return dest, {"target": "liver", "voxels": int(answer.sum()), **getattr(self, "result_extra", {})}

    def submit(self, *args, **kwargs):
        self.submitted.append(args)
        self.submitted_kwargs = kwargs
        self.submitted_label = np.asarray(nib.load(args[1]).dataobj).copy()  # read when sent, as the server does
        return {"edit_effort": {}}

    def datastore_status(self):  # the panel's poll: this stand-in keeps no campaign
        raise self.error_class(0, "offline test server: no campaign figures")


@pytest.fixture
def offline(env, make_widget):
    """A widget whose logic has a case loaded from :class:`OfflineServer` (no server)."""
    widget = make_widget()
    widget.logic.client = widget.logic.status_client = server = OfflineServer(env.SegLoopError)
    widget.logic.labels = {"liver": 1, "spleen": 2}
    widget.logic.info = {"models": {"prompt": {"type": "deepgrow", "prompts": ["points", "box", "box_2d", "lasso", "scribbles_mask", "no_label"]}}}
    raw(env, widget, "promptModelComboBox").addItem("prompt")
    for name in widget.logic.labels:  # as onConnect fills it
        raw(env, widget, "labelComboBox").addItem(name)
    widget.logic.annotator = "dr_o"
    assert widget.logic.next_case("random")
    widget.updateButtons()
    return widget, server


def test_results_load_without_resetting_the_views_and_only_placed_points_are_sent(env, offline):
    widget, server = offline
    slicer = env.slicer
    resets = slicer.standin.view_resets  # the case's own volume was shown: one refit
    widget.logic.auto_segment("segmentation", uncertainty=False)
    widget.logic.prompt_segment("prompt", "liver")
    assert slicer.standin.view_resets == resets  # the proposal and the answer load hidden: zoom and pan stay
    # A point still being placed (preview) is not a prompt; placed ones are.
    points = widget.logic.prompt_node("foreground")
    points.AddControlPoint([3.0, 3.0, 3.0])
    points.AddControlPoint([6.0, 6.0, 3.0])
    points._status[1] = points.PositionPreview
    widget.logic.prompt_segment("prompt", "liver")
    assert server.prompts["foreground"] == [[2, 2, 2]]


@pytest.mark.parametrize("grid", ["shape", "spacing"])
def test_an_answer_on_another_grid_is_refused_not_pasted(env, offline, grid):
    widget, server = offline
    server.answer_grid = ((12, 10, 7), server.affine) if grid == "shape" else ((12, 10, 6), np.diag([1.5, 1.5, 2.0, 1.0]))
    widget.onAutoSegment()
    messages = env.slicer.standin.messages
    assert len(messages) == 1 and "not on this image's grid" in messages[0][1], messages
    assert not widget.logic.has_unsaved_work()  # every segment as it was: empty
    del server.answer_grid
    messages.clear()
    widget.onAutoSegment()
    assert messages == [] and widget.logic.has_unsaved_work()


def test_points_and_boxes_follow_the_volumes_parent_transform(env, offline):
    """A volume moved by a parent transform (here 10 mm along R, 90 degrees about S): a point placed
    on a voxel in the views (world) is that voxel's IJK, and so is a box around it."""
    widget, server = offline
    slicer, vtk = env.slicer, env.vtk
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate([[0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, value)
    transform.SetMatrixTransformToParent(matrix)
    widget.logic.volume_node.SetAndObserveTransformNodeID(transform.GetID())
    voxel = [5, 3, 2]
    world = (np.array([[0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ server.affine @ [*voxel, 1])[:3]
    widget.logic.prompt_node("foreground").AddControlPoint(world.tolist())
    roi = widget.logic.prompt_node("box")
    roi.SetCenterWorld(world.tolist())
    roi.SetSize([3.0, 3.0, 3.0])  # a voxel either side (1.5 mm voxels)
    widget.logic.prompt_segment("prompt", "liver")
    assert server.prompts["foreground"] == [voxel]
    assert server.prompts["box"] == [[4, 2, 1], [6, 4, 3]]


def test_prompts_send_the_other_segments_and_each_answer_can_be_undone_and_redone(env, offline):
    widget, server = offline
    logic = widget.logic
    logic.auto_segment("segmentation", uncertainty=False)  # liver proposal: a block
    proposal = logic._segment_mask("liver").copy()
    spleen = np.zeros(server.image.shape, bool)
    spleen[8:11, 6:9, 2:4] = True
    logic._set_segment("spleen", spleen.transpose(2, 1, 0))
    logic.prompt_node("foreground").AddControlPoint([3.0, 3.0, 3.0])
    first = np.zeros(server.image.shape, bool)
    first[1:7, 1:7, 1:5] = True
    server.answer = first
    logic.prompt_segment("prompt", "liver")
    # The segments went along (storage indices on the image's grid): the liver to refine, the spleen to keep out.
    assert server.prompts["text"] == "liver" and server.prompts["label_map"]
    assert set(np.unique(server.sent_label_map[spleen])) == {2} and (server.sent_label_map[proposal.transpose(2, 1, 0)] == 1).all()
    second = np.zeros(server.image.shape, bool)
    second[1:9, 1:9, 1:5] = True
    server.answer = second
    logic.prompt_segment("prompt", "liver")
    as_kji = lambda m: m.transpose(2, 1, 0)  # noqa: E731  (files are i, j, k; segments k, j, i)
    # The answer reached into the spleen: those voxels stay the spleen's (Slicer would overwrite them).
    assert (second & spleen).any() and not (first & spleen).any()
    assert np.array_equal(logic._segment_mask("liver"), as_kji(second & ~spleen))
    assert logic.undo("liver") and np.array_equal(logic._segment_mask("liver"), as_kji(first))
    assert logic.undo("liver") and np.array_equal(logic._segment_mask("liver"), proposal)
    assert not logic.undo("liver") and not logic.can_undo("liver")  # nothing older than the proposal
    assert logic.redo("liver") and np.array_equal(logic._segment_mask("liver"), as_kji(first))
    assert np.array_equal(logic._segment_mask("spleen"), as_kji(spleen)) and not logic.can_undo("spleen")
    # A new answer after an undo drops what could have been redone.
    logic.prompt_segment("prompt", "liver")
    assert not logic.can_redo("liver") and logic.can_undo("liver")


def test_undo_and_redo_buttons_and_keys_follow_the_selected_structure(env, offline):
    widget, server = offline
    widget.logic.prompt_node("foreground").AddControlPoint([3.0, 3.0, 3.0])
    server.answer = np.ones(server.image.shape, bool)
    assert not raw(env, widget, "undoButton").isEnabled()
    widget.onPrompt()
    assert raw(env, widget, "undoButton").isEnabled() and not raw(env, widget, "redoButton").isEnabled()
    widget.parent.activateWindow()
    assert env.QTest.qWaitForWindowActive(widget.parent, 5000)  # keys go to the active window
    env.QTest.keySequence(widget.parent, env.QKeySequence.Undo)  # Ctrl+Z
    assert not widget.logic._segment_mask("liver").any() and widget.ui.caseLabel.text.endswith("taken back")
    assert raw(env, widget, "redoButton").isEnabled()
    click(env, widget, "redoButton")
    assert widget.logic._segment_mask("liver").all() and widget.ui.labelComboBox.currentText == "liver"


def test_segment_on_every_placed_point_sends_one_request_after_a_quick_series(env, offline):
    widget, server = offline
    points = widget.logic.prompt_node("foreground")
    points.AddControlPoint([3.0, 3.0, 3.0])
    assert not widget.promptTimer.isActive()  # off by default: placing a point sends nothing
    click(env, widget, "autoPromptCheckBox")
    points.AddControlPoint([4.5, 3.0, 3.0])
    points.AddControlPoint([6.0, 3.0, 3.0])  # a second point within the pause restarts it
    assert widget.promptTimer.isActive() and not hasattr(server, "prompts")
    deadline = time.time() + 5
    while not hasattr(server, "prompts") and time.time() < deadline:
        env.QCoreApplication.processEvents()
        time.sleep(0.02)
    assert server.prompts["foreground"] == [[2, 2, 2], [3, 2, 2], [4, 2, 2]]  # one request with every point
    # After File > Close Scene the new point lists are observed too.
    del server.prompts
    env.slicer.mrmlScene.Clear(0)
    assert widget.logic.next_case("random")
    widget.logic.prompt_node("background").AddControlPoint([3.0, 3.0, 3.0])
    assert widget.promptTimer.isActive()


def test_a_label_that_cannot_be_written_is_not_submitted(env, offline):
    widget, server = offline
    env.slicer.standin.save_fails = True
    widget.onSubmit()
    messages = env.slicer.standin.messages
    assert len(messages) == 1 and messages[0][0] == "error" and "could not be written" in messages[0][1]
    assert server.submitted == [] and widget.logic.case is not None  # nothing uploaded, the case stays open
    env.slicer.standin.save_fails = False
    messages.clear()
    widget.onSubmit()
    assert messages == [] and len(server.submitted) == 1 and widget.logic.case is None


def test_next_case_asks_before_discarding_segments_not_submitted(env, offline):
    widget, server = offline
    slicer, messages = env.slicer, env.slicer.standin.messages
    widget.onNextCase()  # nothing drawn yet: nothing to lose, no question
    assert messages == []
    widget.logic.auto_segment("segmentation", uncertainty=False)
    volume = widget.logic.volume_node
    slicer.standin.confirm_answer = False  # Cancel
    widget.onNextCase()
    assert [m[0] for m in messages] == ["confirm"] and "case_x" in messages[0][1] and "not submitted" in messages[0][1]
    assert widget.logic.volume_node is volume  # the case and its segments stay
    slicer.standin.confirm_answer = True  # OK
    widget.onNextCase()
    assert [m[0] for m in messages] == ["confirm", "confirm"] and widget.logic.volume_node is not volume


def test_the_status_poll_pauses_during_a_server_call(env, offline):
    widget, server = offline
    widget.timer.start()
    seen = []
    widget.call("Checking", lambda: seen.append(widget.timer.isActive()))
    assert seen == [False] and widget.timer.isActive()  # paused for the call, polling again after


def test_a_box_still_being_placed_is_refused_and_an_unplaced_box_is_no_box(env, offline):
    widget, server = offline
    roi = widget.ui.boxPlaceWidget.currentNode()
    assert roi is widget.logic.prompt_node("box") and roi.GetNumberOfControlPoints() == 0
    widget.logic.prompt_segment("prompt", "liver")
    assert "box" not in server.prompts or not server.prompts["box"]  # nothing placed: no box sent
    del server.prompts
    roi.SetCenterWorld([6.0, 6.0, 3.0])
    roi.SetSize([3.0, 3.0, 3.0])
    roi._status = roi.PositionPreview  # the clinician is still dragging it
    widget.onPrompt()
    messages = env.slicer.standin.messages
    assert len(messages) == 1 and "the box is still being placed" in messages[0][1]
    assert not hasattr(server, "prompts")  # nothing was sent
    roi._status = roi.PositionDefined
    widget.onPrompt()
    assert server.prompts["box"] == [[3, 3, 1], [5, 5, 3]]
    click(env, widget, "clearPromptsButton")  # the box goes with the other prompts
    assert roi.GetNumberOfControlPoints() == 0 and widget.ui.boxPlaceWidget.currentNode() is roi


def test_closing_the_scene_drops_the_case_and_gives_the_place_widgets_new_point_lists(env, offline):
    widget, server = offline
    slicer = env.slicer
    widget.logic.auto_segment("segmentation", uncertainty=False)
    old = widget.ui.foregroundPlaceWidget.currentNode()
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    assert widget.logic.case is None and widget.logic.volume_node is None and widget.logic.segmentation_node is None
    assert widget.ui.caseLabel.text == "No case loaded" and not os.listdir(widget.logic.folder)
    assert enabled(env, widget, CASE_BUTTONS) == dict.fromkeys(CASE_BUTTONS, False)
    points = widget.ui.foregroundPlaceWidget.currentNode()
    assert points is not None and points is not old and points.GetScene() is slicer.mrmlScene
    # The module works on: the next case, then a prompt with a point placed in the new list.
    assert widget.logic.next_case("random")
    points.AddControlPoint([3.0, 3.0, 3.0])
    widget.logic.prompt_segment("prompt", "liver")
    assert server.prompts["foreground"] == [[2, 2, 2]]


def test_only_the_prompt_tools_the_servers_model_takes_are_enabled(env, offline):
    widget, server = offline
    tools = ("boxPlaceWidget", "box2DCheckBox", "lassoPlaceWidget", "paintScribbleButton", "newStructureButton")
    assert enabled(env, widget, tools) == dict.fromkeys(tools, True)
    widget.logic.info = {"models": {"prompt": {"type": "deepgrow"}}}  # a server that lists no forms: MONAI Label's DeepGrow
    widget.updateButtons()
    assert enabled(env, widget, tools) == {**dict.fromkeys(tools, False), "boxPlaceWidget": True}
    assert env.SegLoopClient.prompt_forms_of(widget.logic.info, "prompt") == ["points", "box", "text"]


def test_a_new_structure_is_segmented_without_a_label_and_never_takes_another_segments_voxels(env, offline):
    widget, server = offline
    logic, slicer = widget.logic, env.slicer
    logic.auto_segment("segmentation", uncertainty=False)  # liver block [2:6, 2:6, 1:4]
    liver = logic._segment_mask("liver").copy()
    click(env, widget, "newStructureButton")
    assert widget.ui.labelComboBox.currentText == "Structure 1" and "Structure 1" in logic.structures()
    logic.prompt_node("foreground").AddControlPoint([9.0, 9.0, 3.0])
    server.answer = np.zeros(server.image.shape, bool)
    server.answer[4:9, 4:9, 1:4] = True  # reaches into the liver
    click(env, widget, "promptButton")
    assert slicer.standin.messages == []
    assert server.prompts["text"] == "" and server.prompts["reset"] is True  # no label: whatever the click is on
    assert set(np.unique(server.sent_label_map)) == {0, 1}  # the server's labels only (the new one has no index)
    expected = server.answer.transpose(2, 1, 0) & ~liver
    assert np.array_equal(logic._segment_mask("Structure 1"), expected) and np.array_equal(logic._segment_mask("liver"), liver)
    assert widget.ui.caseLabel.text == "Case case_x: Structure 1 updated from prompts"
    logic.prompt_segment("prompt", "Structure 1")
    assert server.prompts["reset"] is False  # the same structure again: the server may refine its last answer
    logic.prompt_segment("prompt", "liver")
    assert server.prompts["reset"] is True and server.prompts["text"] == "liver"
    # It cannot be submitted under a name the server does not know: the reason, nothing sent.
    widget.onSubmit()
    assert len(slicer.standin.messages) == 1 and "Structure 1 is not one of the server's labels" in slicer.standin.messages[0][1]
    assert server.submitted == []
    widget.onNewStructure()
    assert widget.ui.labelComboBox.currentText == "Structure 2"


def test_a_new_structures_click_on_a_labelled_structure_goes_to_that_structures_segment(env, offline):
    """The server gives a click without a label the label of the structure under it: the answer is
    that segment's, the panel says so and selects it (the next prompts, undo and redo are its)."""
    widget, server = offline
    logic = widget.logic
    logic.auto_segment("segmentation", uncertainty=False)
    click(env, widget, "newStructureButton")
    logic.prompt_node("foreground").AddControlPoint([9.0, 9.0, 3.0])
    server.answer = np.zeros(server.image.shape, bool)
    server.answer[8:11, 6:9, 1:4] = True
    server.result_extra = {"label_from_click": "spleen", "target": None}
    click(env, widget, "promptButton")
    assert server.prompts["text"] == ""  # sent without a label
    assert np.array_equal(logic._segment_mask("spleen"), server.answer.transpose(2, 1, 0) & ~logic._segment_mask("liver"))
    assert not logic._segment_mask("Structure 1").any()
    assert widget.ui.labelComboBox.currentText == "spleen"
    assert widget.ui.caseLabel.text == "Case case_x: the click is on the spleen: spleen updated from prompts"
    click(env, widget, "undoButton")
    assert not np.array_equal(logic._segment_mask("spleen"), server.answer.transpose(2, 1, 0))
    server.result_extra = {"label_from_click": "pancreas"}  # a label this module does not know: the new structure's
    choose(env, widget, "labelComboBox", "Structure 1")
    click(env, widget, "promptButton")
    assert logic._segment_mask("Structure 1").any() and widget.ui.labelComboBox.currentText == "Structure 1"


def test_the_polarity_toggle_and_the_keys_place_each_kind_of_prompt(env, offline):
    widget, server = offline
    widget.enter()
    widget.parent.activateWindow()
    assert env.QTest.qWaitForWindowActive(widget.parent, 5000)  # keys go to the active window
    press = lambda key: env.QTest.keyClick(widget.parent, key)  # noqa: E731
    press(env.Qt.Key_P)
    assert widget.ui.foregroundPlaceWidget.placeModeEnabled() and not widget.ui.backgroundPlaceWidget.placeModeEnabled()
    press(env.Qt.Key_X)
    assert widget.ui.polarityButton.checked and widget.ui.polarityButton.text == "Clicks exclude (\u2212)"
    press(env.Qt.Key_P)
    assert widget.ui.backgroundPlaceWidget.placeModeEnabled()
    press(env.Qt.Key_O)
    press(env.Qt.Key_L)
    assert widget.ui.boxPlaceWidget.placeModeEnabled() and widget.ui.lassoPlaceWidget.placeModeEnabled()
    press(env.Qt.Key_D)  # scribbles of the current polarity: exclude
    editor = env.slicer.modules.segmenteditor.widgetRepresentation().self().editor
    scribbles = widget.logic.scribbles_node
    assert editor.segmentationNode() is scribbles and editor.sourceVolumeNode() is widget.logic.volume_node
    assert editor._effect == "Paint" and scribbles.GetSegmentation().GetSegment(editor.currentSegmentID()).GetName() == "background scribbles"
    press(env.Qt.Key_X)
    press(env.Qt.Key_D)
    assert scribbles.GetSegmentation().GetSegment(editor.currentSegmentID()).GetName() == "foreground scribbles"
    press(env.Qt.Key_N)
    assert widget.ui.labelComboBox.currentText == "Structure 1"
    widget.exit()  # another module shown: the keys are theirs
    press(env.Qt.Key_N)
    assert widget.ui.labelComboBox.findText("Structure 2") < 0


def test_a_lasso_and_a_2d_box_go_on_one_slice(env, offline):
    widget, server = offline
    logic = widget.logic
    lasso = widget.ui.lassoPlaceWidget.currentNode()
    for x, y in ((3.0, 3.0), (9.0, 3.0), (9.0, 9.0), (3.0, 9.1)):  # drawn in an axial view at z = 3 mm (k = 2)
        lasso.AddControlPoint([x, y, 3.0 + 0.4 * (x > 5)])  # rounding puts two vertices one voxel off
    logic.prompt_segment("prompt", "liver")
    assert server.prompts["lasso"] == [[2, 2, 2], [6, 2, 2], [6, 6, 2], [2, 6, 2]]
    box = logic.prompt_node("box")
    box.SetCenterWorld([6.0, 6.0, 4.5])
    box.SetSize([6.0, 6.0, 3.0])
    click(env, widget, "box2DCheckBox")
    widget.onPrompt()
    assert server.prompts["box"] == [[2, 2, 3], [6, 6, 3]]  # the thinnest axis on the slice through the centre
    lasso.AddControlPoint([6.0, 6.0, 7.5])  # a vertex three slices away: not a lasso on one slice
    widget.onPrompt()
    messages = env.slicer.standin.messages
    assert len(messages) == 1 and "not on one slice" in messages[0][1]


def test_painted_scribbles_go_as_a_mask_and_are_cleared_with_the_prompts(env, offline):
    widget, server = offline
    logic = widget.logic
    logic.open_scribble_editor(foreground=True)
    scribbles = logic.scribbles_node
    assert [scribbles.GetSegmentation().GetSegment(scribbles.GetSegmentation().GetNthSegmentID(i)).GetName() for i in range(2)] == [
        "foreground scribbles", "background scribbles"]
    logic.prompt_segment("prompt", "liver")
    assert server.prompts["scribble_mask"] is None and server.prompts["label_map"]  # nothing painted: no scribbles
    fg, bg = np.zeros((6, 10, 12), bool), np.zeros((6, 10, 12), bool)  # [k, j, i], what Paint strokes leave
    fg[2, 3, 2:6], bg[2, 8, 2:10] = True, True
    logic._set_segment("foreground scribbles", fg, scribbles)
    logic._set_segment("background scribbles", bg, scribbles)
    server.answer = np.zeros(server.image.shape, bool)
    server.answer[2:6, 2:5, 1:4] = True
    logic.prompt_segment("prompt", "liver")
    sent = server.sent_scribble_mask.transpose(2, 1, 0)
    assert server.prompts["label_map"] is None and server.prompts["text"] == "liver"  # the one upload is the scribbles
    assert set(np.unique(sent)) == {0, 2, 3} and (sent[fg] == 3).all() and (sent[bg] == 2).all() and (sent > 0).sum() == fg.sum() + bg.sum()
    assert logic._segment_mask("liver").sum() == server.answer.sum()
    click(env, widget, "clearPromptsButton")
    assert not any(mask.any() for mask in logic._segment_masks(scribbles).values())


def test_a_labelled_case_reopens_for_review_and_is_submitted_as_one(env, offline):
    widget, server = offline
    slicer = env.slicer
    type_into(env, widget, "openCaseLineEdit", "case_x")
    click(env, widget, "openCaseButton")
    assert slicer.standin.messages == [] and widget.ui.caseLabel.text == "Case case_x: its final label, for review"
    logic = widget.logic
    assert logic.case.reviewing and logic._segment_mask("liver").sum() == 48 and logic._segment_mask("spleen").sum() == 18
    widget.onOpenCase()  # its segments are not submitted: asked before they go
    assert slicer.standin.messages[-1][0] == "confirm"
    widget.onSubmit()
    image_id, _, annotator, _ = server.submitted[-1]
    assert image_id == "case_x" and annotator == "dr_o" and server.submitted_kwargs["client"] == "SegLoop Slicer module (review)"
    assert (server.submitted_label == 1).sum() == 48 and (server.submitted_label == 2).sum() == 18


def test_a_login_token_is_kept_in_settings_never_the_password_and_a_refused_one_is_forgotten(env, make_widget, monkeypatch, caplog):
    slicer, SegLoop = env.slicer, env.SegLoop
    issued = {"valid": set(), "count": 0}

    class AuthServer(env.SegLoopClient):  # the server's side of MONAI Label's auth, in memory
        def login(self, username, password):
            if password != "s3cret":
                raise env.SegLoopError(401, "Incorrect username or password")
            self.http.token = f"token-{issued['count']}"
            issued["valid"].add(self.http.token)
            issued["count"] += 1

        def info(self):
            if issued.get("down"):
                raise env.SegLoopError(0, "cannot reach http://pacs.example:8000: no answer within 600 s")
            if self.http.token not in issued["valid"]:
                raise env.SegLoopError(401, "Could not validate credentials")
            return {"labels": {"liver": 1}, "models": {}, "strategies": {"random": {}}}

        def datastore_status(self):
            raise env.SegLoopError(0, "no campaign here")

    monkeypatch.setattr(SegLoop, "SegLoopClient", AuthServer)
    widget = make_widget()
    type_into(env, widget, "serverUrlLineEdit", "http://pacs.example:8000")
    type_into(env, widget, "annotatorLineEdit", "dr_a")
    type_into(env, widget, "passwordLineEdit", "s3cret")
    click(env, widget, "connectButton")
    key = SegLoop.login_key("http://pacs.example:8000", "dr_a")
    assert slicer.standin.messages == [] and widget.ui.statusLabel.text.endswith("(logged in)")
    assert env.QSettings().value(key) == "token-0" and widget.ui.passwordLineEdit.text == ""
    assert all("s3cret" not in str(env.QSettings().value(k)) for k in env.QSettings().allKeys())
    # The next session connects with the saved token, no password.
    second = make_widget()
    click(env, second, "connectButton")
    assert slicer.standin.messages == [] and second.logic.client.http.token == "token-0"
    # The server unreachable: the reason, and the token kept (it was not refused).
    issued["down"] = True
    click(env, make_widget(), "connectButton")
    assert "cannot reach" in slicer.standin.messages[-1][1] and env.QSettings().value(key) == "token-0"
    issued["down"] = False
    # Revoked on the server: the reason, the token forgotten; the password works again.
    issued["valid"].clear()
    third = make_widget()
    click(env, third, "connectButton")
    assert "the saved login was refused" in slicer.standin.messages[-1][1] and env.QSettings().value(key) is None
    type_into(env, third, "passwordLineEdit", "s3cret")
    click(env, third, "connectButton")
    assert env.QSettings().value(key) == "token-1"
    assert not any(t in record.getMessage() for t in ("token-0", "token-1", "s3cret") for record in caplog.records)


def test_the_case_and_the_panel_choices_survive_saving_and_reloading_the_scene(env, offline):
    widget, server = offline
    slicer, logic = env.slicer, widget.logic
    logic.auto_segment("segmentation", uncertainty=False)
    click(env, widget, "autoPromptCheckBox")
    click(env, widget, "box2DCheckBox")
    choose(env, widget, "labelComboBox", "spleen")
    type_into(env, widget, "textLineEdit", "left kidney")
    click(env, widget, "newStructureButton")
    logic.prompt_node("foreground").AddControlPoint([3.0, 3.0, 3.0])
    liver, case = logic._segment_mask("liver").copy(), logic.case
    case.started -= 42  # 42 s of work so far
    slicer.mrmlScene.save_and_reload()  # File > Save, then File > Close Scene and load it again
    assert logic.case is not case and logic.case.image_id == "case_x" and logic.case.proposal_version == 1
    assert logic.case.seconds_spent() >= 42
    assert logic.volume_node.GetScene() is slicer.mrmlScene and np.array_equal(logic._segment_mask("liver"), liver)
    assert widget.ui.caseLabel.text == "Case case_x (from the loaded scene)"
    assert widget.ui.autoPromptCheckBox.checked and widget.ui.box2DCheckBox.checked and widget.ui.textLineEdit.text == "left kidney"
    assert widget.ui.labelComboBox.findText("Structure 1") >= 0  # the added structure is listed again
    # One node per prompt kind, the loaded ones, in the place widgets; the loaded point is a prompt.
    for kind in ("foreground", "background", "box", "lasso"):
        name = env.SegLoop.PROMPT_NODES[kind][1]
        assert [n.GetName() for n in slicer.mrmlScene._nodes].count(name) == 1, name
    assert widget.ui.foregroundPlaceWidget.currentNode() is logic.prompt_node("foreground")
    assert logic._points("foreground") == [[2, 2, 2]]
    assert enabled(env, widget, CASE_BUTTONS) == dict.fromkeys(CASE_BUTTONS, True)
    widget.onSubmit()
    assert len(server.submitted) == 1 and server.submitted[0][3] >= 42


def test_the_self_test_skips_without_a_server_url(env, monkeypatch):
    monkeypatch.delenv("SEGLOOP_TEST_URL", raising=False)
    monkeypatch.setattr(env.SegLoop.SegLoopLogic, "connect", lambda *a, **k: pytest.fail("connected without SEGLOOP_TEST_URL"))
    env.SegLoop.SegLoopTest().runTest()


class Relay:
    """A TCP relay in front of a server, as a network between Slicer and it: ``delay`` seconds before
    each connection is passed on (a slow server); ``drop``: the request is read and the connection
    closed without an answer (a server that goes away in the middle of a call)."""

    def __init__(self, url):
        import socket

        self.target = ("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.delay, self.drop = 0.0, False

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.listener.close()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(connection,), daemon=True).start()

    def _relay(self, connection):
        import socket

        if self.drop:
            connection.recv(1 << 16)
            connection.close()
            return
        time.sleep(self.delay)
        try:
            upstream = socket.create_connection(self.target)
        except OSError:  # the server is gone
            connection.close()
            return

        def pipe(source, sink):
            try:
                while data := source.recv(1 << 16):
                    sink.sendall(data)
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=pipe, args=(upstream, connection), daemon=True)
        back.start()
        pipe(connection, upstream)
        back.join()
        connection.close()
        upstream.close()


# -- slow: the widget against a real server ------------------------------------------------------
# Both models serve version 1 from the shared trained campaign (conftest.slicer_template); the
# submissions (a case, its review, SegLoopTest's case: 3 labels, retrain_every 10) retrain nothing.
CONF = {"models": "segmentation,prompt", "retrain_max_seconds": "4", "first_run_max_seconds": "4", "retrain_every": "10", "promotion_tolerance": "1.0"}


@pytest.mark.slow
def test_a_clinician_round_trip_through_the_widget(env, make_widget, slicer_studies, sample_root, tmp_path, monkeypatch):
    slicer, SegLoop = env.slicer, env.SegLoop
    monkeypatch.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")  # no scoring job: the "random" strategy needs none
    messages = slicer.standin.messages
    truth = lambda case: np.asarray(nib.load(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz")).dataobj)  # noqa: E731
    with running_server(slicer_studies, conf=CONF, log_path=str(tmp_path / "server.log")) as server, Relay(server.url) as relay:
        client = env.SegLoopClient(server.url)
        widget = make_widget()

        # Connect (through a relay that can slow the server down or drop it mid-call): URL and name
        # typed, lists filled from the server.
        type_into(env, widget, "serverUrlLineEdit", relay.url)
        type_into(env, widget, "annotatorLineEdit", "dr_w")
        click(env, widget, "connectButton")
        assert messages == []
        assert widget.ui.statusLabel.text == f"Connected to {relay.url} as dr_w"
        items = lambda combo: [raw(env, widget, combo).itemText(i) for i in range(raw(env, widget, combo).count())]  # noqa: E731
        assert {"random", "hybrid", "entropy", "diversity"} <= set(items("strategyComboBox"))
        assert widget.ui.strategyComboBox.currentText == "hybrid"
        assert items("autoModelComboBox") == ["segmentation"] and items("promptModelComboBox") == ["prompt"]
        assert items("labelComboBox") == list(DEFAULT_LABELS)
        assert widget.ui.campaignLabel.text == "3 / 6 cases labelled" and widget.timer.isActive()
        assert enabled(env, widget, ["nextCaseButton", *CASE_BUTTONS]) == {"nextCaseButton": True, **dict.fromkeys(CASE_BUTTONS, False)}
        assert make_widget().ui.serverUrlLineEdit.text == relay.url  # remembered for next time
        # (the prompt model's first version takes longer: it is awaited just before the prompt)
        wait_for(lambda: client.model_status("segmentation")["serving_version"], 600, 2.0, "the automatic model to serve")

        # A strategy the server does not have (as if it had changed since connecting): its message, no case.
        raw(env, widget, "strategyComboBox").addItem("nonsense")
        choose(env, widget, "strategyComboBox", "nonsense")
        click(env, widget, "nextCaseButton")
        assert len(messages) == 1 and messages[0][0] == "error"
        assert messages[0][1].startswith("Fetching the next case failed:\n404: no active-learning strategy 'nonsense'; available: ")
        assert widget.logic.case is None and widget.ui.caseLabel.text == "No case loaded"
        messages.clear()

        # Next case: the volume is shown, one empty segment per label.
        choose(env, widget, "strategyComboBox", "random")
        click(env, widget, "nextCaseButton")
        assert messages == []
        case_id = widget.logic.case.image_id
        assert case_id in {"case_003", "case_004", "case_005"} and widget.ui.caseLabel.text == f"Case {case_id}"
        volume = widget.logic.volume_node
        assert volume.GetName() == case_id and slicer.standin.slice_layers["background"] is volume
        image = nib.load(os.path.join(sample_root, "studies", f"{case_id}.nii.gz"))
        assert volume.GetImageData().GetDimensions() == image.shape
        segmentation = widget.logic.segmentation_node.GetSegmentation()
        names = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName() for i in range(segmentation.GetNumberOfSegments())]
        assert names == list(DEFAULT_LABELS)
        assert enabled(env, widget, CASE_BUTTONS) == dict.fromkeys(CASE_BUTTONS, True)
        tools = ("boxPlaceWidget", "box2DCheckBox", "lassoPlaceWidget", "paintScribbleButton", "newStructureButton")
        assert enabled(env, widget, tools) == dict.fromkeys(tools, True)  # the server's prompt model takes them all

        def segment(name):  # [i, j, k] like the files
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            return slicer.util.arrayFromSegmentBinaryLabelmap(widget.logic.segmentation_node, segment_id, volume).transpose(2, 1, 0)

        # A model the server does not have: the server's reason, nothing changes.
        raw(env, widget, "autoModelComboBox").addItem("no_such_model")
        choose(env, widget, "autoModelComboBox", "no_such_model")
        click(env, widget, "autoSegmentButton")
        assert len(messages) == 1 and messages[0][0] == "error"
        assert messages[0][1].startswith("Running the automatic model failed:\n404: no model 'no_such_model'"), messages[0][1]
        assert widget.logic.uncertainty_node is None and widget.ui.caseLabel.text == f"Case {case_id}"
        messages.clear()

        # Auto segment: the proposal in the segments, its version and confidence on the panel, the overlay.
        choose(env, widget, "autoModelComboBox", "segmentation")
        click(env, widget, "autoSegmentButton")
        assert messages == []
        assert re.fullmatch(rf"Case {case_id}: proposal of version 1 \((liver|spleen|kidney|tumor) \d\.\d\d.*\)",
                            widget.ui.caseLabel.text), widget.ui.caseLabel.text
        proposal = np.asarray(nib.load(os.path.join(widget.logic.folder, "proposal.nii.gz")).dataobj)
        for name, index in DEFAULT_LABELS.items():
            assert np.array_equal(segment(name), proposal == index), name
        assert widget.logic.case.proposal_version == 1
        uncertainty = widget.logic.uncertainty_node
        assert uncertainty.GetName() == f"{case_id} uncertainty" and raw(env, widget, "uncertaintyCheckBox").isEnabled()
        assert uncertainty.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
        assert (uncertainty.GetDisplayNode().GetWindowLevelMin(), uncertainty.GetDisplayNode().GetWindowLevelMax()) == (0.0, 1.0)
        assert slicer.standin.slice_layers["foreground"] is None  # overlay off until asked
        click(env, widget, "uncertaintyCheckBox")
        assert slicer.standin.slice_layers["foreground"] is uncertainty and slicer.standin.slice_layers["foregroundOpacity"] == 0.5
        click(env, widget, "uncertaintyCheckBox")
        assert slicer.standin.slice_layers["foreground"] is None and slicer.standin.slice_layers["background"] is volume

        # Prompts: a foreground click inside the liver and a box around it, structure "liver".
        wait_for(lambda: client.model_status("prompt")["serving_version"], 600, 2.0, "the prompt model to serve")
        liver = np.argwhere(truth(case_id) == DEFAULT_LABELS["liver"])
        inside = liver[len(liver) // 2].tolist()
        ijk_to_ras = env.vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijk_to_ras)
        ras = lambda ijk: ijk_to_ras.MultiplyPoint([*ijk, 1])[:3]  # noqa: E731
        widget.ui.foregroundPlaceWidget.currentNode().AddControlPoint(ras(inside))  # what placing a point does
        assert widget.logic._points("foreground") == [inside] and widget.logic._points("background") == []
        roi = widget.ui.boxPlaceWidget.currentNode()  # the module's box, placed around the liver
        low, high = liver.min(axis=0), liver.max(axis=0)
        roi.SetCenterWorld(ras((low + high) / 2))
        roi.SetSize(np.abs(np.array(ras(high)) - np.array(ras(low))) + 2)
        choose(env, widget, "labelComboBox", "liver")
        before = {name: segment(name) for name in DEFAULT_LABELS}
        click(env, widget, "promptButton")
        assert messages == []
        mask = np.asarray(nib.load(os.path.join(widget.logic.folder, "prompt.nii.gz")).dataobj)
        assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
        # The server's prompt model has trained for seconds (retrain_max_seconds 4): its answer may
        # be empty. Either way the widget must do what the answer says.
        if mask.any():
            assert widget.ui.caseLabel.text == f"Case {case_id}: liver updated from prompts"
            assert np.array_equal(segment("liver"), mask > 0)
        else:
            assert widget.ui.caseLabel.text.startswith(f"Case {case_id}: found no liver from these prompts")
            assert np.array_equal(segment("liver"), before["liver"])
        liver_segment = segment("liver").copy()
        for name in ("spleen", "kidney", "tumor"):
            assert np.array_equal(segment(name), before[name]), name

        # Clear points; a click outside the volume is refused with the reason, the segments stay.
        click(env, widget, "clearPromptsButton")
        assert widget.ui.foregroundPlaceWidget.currentNode().GetNumberOfControlPoints() == 0
        assert widget.ui.boxPlaceWidget.currentNode().GetNumberOfControlPoints() == 0  # the box went too
        widget.ui.foregroundPlaceWidget.currentNode().AddControlPoint(ras([image.shape[0] + 50, 0, 0]))
        click(env, widget, "promptButton")
        assert len(messages) == 1 and messages[0][0] == "error"
        assert messages[0][1].startswith("Segmenting from your prompts failed:\npoint 1 ") and "outside" in messages[0][1]
        assert np.array_equal(segment("liver"), liver_segment)
        messages.clear()
        click(env, widget, "clearPromptsButton")

        # An empty answer (as the server sends when the model finds nothing): its message, the segment kept.
        def empty_answer(model, image_id, dest, **prompts):
            nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), dest)
            return dest, {"target": "liver", "voxels": 0, "message": "found no liver from these prompts: ..."}

        widget.logic.client.prompt_segment = empty_answer
        click(env, widget, "promptButton")
        assert messages == [] and widget.ui.caseLabel.text == f"Case {case_id}: found no liver from these prompts: ..."
        assert np.array_equal(segment("liver"), liver_segment)
        del widget.logic.client.prompt_segment  # the real request again

        def answered(before_mask, name):
            """The last prompt answer, and that segment ``name`` is what it says (minus the other segments)."""
            mask = np.asarray(nib.load(os.path.join(widget.logic.folder, "prompt.nii.gz")).dataobj) > 0
            others = np.zeros(mask.shape, bool)
            for other in widget.logic.structures():
                if other != name:
                    others |= segment(other) > 0
            assert np.array_equal(segment(name) > 0, (mask & ~others) if mask.any() else before_mask), name
            if mask.any():
                undone[name] = before_mask  # what Undo brings back
            return mask

        undone = {}

        def prompt_and_check(name):
            """Segment from the placed prompts through the panel; the answer must be what ``name`` shows."""
            before = segment(name) > 0
            click(env, widget, "promptButton")
            assert messages == []
            return answered(before, name)

        # A lasso on the liver's middle slice, then a 2D box on it, each through the real server.
        k = int(np.median(liver[:, 2]))
        on_slice = liver[liver[:, 2] == k]
        (i0, j0), (i1, j1) = on_slice[:, :2].min(axis=0), on_slice[:, :2].max(axis=0)
        for i, j in ((i0, j0), (i1, j0), (i1, j1), (i0, j1)):
            widget.ui.lassoPlaceWidget.currentNode().AddControlPoint(ras([i, j, k]))
        prompt_and_check("liver")
        click(env, widget, "clearPromptsButton")
        roi.SetCenterWorld(ras([(i0 + i1) / 2, (j0 + j1) / 2, k]))
        roi.SetSize(np.abs(np.array(ras([i1, j1, k + 3])) - np.array(ras([i0, j0, k - 3]))))
        click(env, widget, "box2DCheckBox")
        prompt_and_check("liver")
        click(env, widget, "box2DCheckBox")
        click(env, widget, "clearPromptsButton")

        # Painted scribbles (what Paint leaves in the scribble segments) go as the server's scribble mask.
        click(env, widget, "paintScribbleButton")
        scribbles = widget.logic.scribbles_node
        stroke = np.zeros(image.shape[::-1], bool)  # [k, j, i]
        stroke[k, on_slice[:, 1], on_slice[:, 0]] = True
        widget.logic._set_segment("foreground scribbles", stroke, scribbles)
        prompt_and_check("liver")
        click(env, widget, "clearPromptsButton")

        # Exclude points by the toggle; "segment on every placed point" sends one request by itself.
        click(env, widget, "polarityButton")
        click(env, widget, "placePointButton")
        assert widget.ui.backgroundPlaceWidget.placeModeEnabled() and widget.ui.polarityButton.text.startswith("Clicks exclude")
        click(env, widget, "autoPromptCheckBox")
        answer_file = os.path.join(widget.logic.folder, "prompt.nii.gz")
        written = os.path.getmtime(answer_file)
        before = segment("liver") > 0
        widget.ui.foregroundPlaceWidget.currentNode().AddControlPoint(ras(inside))
        widget.ui.backgroundPlaceWidget.currentNode().AddControlPoint(ras([1, 1, k]))
        deadline = time.time() + 120
        while os.path.getmtime(answer_file) == written and time.time() < deadline:
            env.QCoreApplication.processEvents()
            time.sleep(0.05)
        assert os.path.getmtime(answer_file) > written and messages == []
        assert widget.logic._points("background") == [[1, 1, k]]
        answered(before, "liver")
        click(env, widget, "autoPromptCheckBox")
        click(env, widget, "polarityButton")
        click(env, widget, "clearPromptsButton")

        # Undo and redo of the last answer (the model has trained for seconds: some answers may be empty).
        if "liver" in undone:
            after = segment("liver").copy()
            click(env, widget, "undoButton")
            assert np.array_equal(segment("liver") > 0, undone["liver"]) and raw(env, widget, "redoButton").isEnabled()
            click(env, widget, "redoButton")
            assert np.array_equal(segment("liver"), after)

        # Segment any structure: a new segment, a click with no label; the others keep their voxels.
        spleen = np.argwhere(truth(case_id) == DEFAULT_LABELS["spleen"])
        click(env, widget, "newStructureButton")
        assert widget.ui.labelComboBox.currentText == "Structure 1"
        widget.ui.foregroundPlaceWidget.currentNode().AddControlPoint(ras(spleen[len(spleen) // 2].tolist()))
        kept = {name: segment(name).copy() for name in DEFAULT_LABELS}
        click(env, widget, "promptButton")
        assert messages == []
        # The server may give the click the label of a structure under it that the case has no
        # voxels of yet (the segments the case has are not candidates): that segment gets the answer.
        given = widget.ui.labelComboBox.currentText
        assert given == "Structure 1" or (given in DEFAULT_LABELS and not kept[given].any()), given
        answered(np.zeros(image.shape, bool), given)
        for name in DEFAULT_LABELS:
            assert name == given or np.array_equal(segment(name), kept[name]), name
        # It has no label on this server: once it has voxels (the answer's, or a stroke of the
        # Segment Editor's when the answer was empty), it must be renamed or deleted before submitting.
        if not segment("Structure 1").any():
            stroke = np.zeros(image.shape[::-1], bool)  # [k, j, i]: a voxel in the air in a corner, no segment's
            stroke[k, 1, 1] = True
            widget.logic._set_segment("Structure 1", stroke)
        click(env, widget, "submitButton")
        assert len(messages) == 1 and "Structure 1 is not one of the server's labels" in messages[0][1]
        messages.clear()
        segmentation.RemoveSegment(segmentation.GetSegmentIdBySegmentName("Structure 1"))
        click(env, widget, "clearPromptsButton")
        choose(env, widget, "labelComboBox", "liver")
        liver_segment = segment("liver").copy()

        # Save the scene and load it again in the middle of the case: the case goes on where it was.
        slicer.mrmlScene.save_and_reload()
        assert widget.logic.case.image_id == case_id and widget.ui.caseLabel.text == f"Case {case_id} (from the loaded scene)"
        volume, segmentation = widget.logic.volume_node, widget.logic.segmentation_node.GetSegmentation()
        assert np.array_equal(segment("liver"), liver_segment)

        # Segment Editor on this case.
        click(env, widget, "segmentEditorButton")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        assert slicer.standin.selected_module == "SegmentEditor"
        assert editor.segmentationNode() is widget.logic.segmentation_node and editor.sourceVolumeNode() is volume

        # Submit: the label lands in the server's datastore as the segments say, with who and how long.
        # The edited liver, the segment that took the any-structure answer (when the server gave it
        # a label the proposal had left empty), the proposal for the rest.
        expected = np.zeros(image.shape, np.uint8)
        for name, index in DEFAULT_LABELS.items():  # higher index wins, as compose_label_map does
            voxels = (liver_segment > 0) if name == "liver" else (segment(name) > 0) if name == given else (proposal == index)
            expected[voxels] = index
        click(env, widget, "submitButton")
        assert messages == []
        stored = client.label_info(case_id)
        assert stored["annotator"] == "dr_w" and stored["client"] == "SegLoop Slicer module" and stored["time_spent_s"] > 0
        dice = [v for v in stored["edit_effort"]["dice"].values() if v is not None]
        assert widget.ui.caseLabel.text == f"Submitted. segmentation: Dice vs proposal {np.mean(dice):.2f}"
        answer = requests.get(f"{server.url}/datastore/label", params={"label": case_id, "tag": "final"}, timeout=60)
        assert answer.status_code == 200
        (tmp_path / "stored.nii.gz").write_bytes(answer.content)
        label = nib.load(str(tmp_path / "stored.nii.gz"))
        assert np.array_equal(np.asarray(label.dataobj), expected)
        assert np.allclose(label.affine, image.affine, atol=1e-4)
        assert widget.logic.case is None
        assert enabled(env, widget, ["nextCaseButton", *CASE_BUTTONS]) == {"nextCaseButton": True, **dict.fromkeys(CASE_BUTTONS, False)}

        # Re-open the submitted case for review; close the scene in the middle; open it again and submit the review.
        type_into(env, widget, "openCaseLineEdit", case_id)
        click(env, widget, "openCaseButton")
        assert messages == [] and widget.ui.caseLabel.text == f"Case {case_id}: its final label, for review"
        volume = widget.logic.volume_node
        assert np.array_equal(np.stack([segment(n) > 0 for n in DEFAULT_LABELS]), np.stack([expected == i for i in DEFAULT_LABELS.values()]))
        slicer.mrmlScene.Clear(0)  # File > Close Scene
        assert widget.logic.case is None and enabled(env, widget, CASE_BUTTONS) == dict.fromkeys(CASE_BUTTONS, False)
        click(env, widget, "openCaseButton")
        volume, segmentation = widget.logic.volume_node, widget.logic.segmentation_node.GetSegmentation()
        click(env, widget, "submitButton")
        assert messages == [] and client.label_info(case_id)["client"] == "SegLoop Slicer module (review)"

        # Training and campaign panels (refreshed by the submission), as the server has them.
        # The submission may have started a run whose first progress is not written yet: the panel
        # is compared with the server's state read right after the same refresh, until they agree.
        def panel_as_server_has_it():
            widget.onRefresh()
            status, progress = client.model_status("segmentation"), client.train_progress("segmentation")
            running = status["training_run"] is not None
            return (status, progress) if (progress and widget.ui.trainingLabel.text == SegLoop.training_text(progress, running)
                                          and widget.ui.trainingProgressBar.value == int(progress.get("percent") or 0)) else None

        status, progress = wait_for(panel_as_server_has_it, 120, 1.0, "the training panel to show the server's run")
        assert widget.ui.campaignLabel.text == "4 / 6 cases labelled"
        assert widget.ui.versionLabel.text == "Serving version 1" and status["serving_version"] == 1
        assert widget.ui.trainingLabel.text.startswith(("last run: epoch ", "training: epoch "))
        val = status["versions"][0]["val_dice"]
        assert widget.ui.valDiceLabel.text == (
            f"Validation Dice {val['mean']:.3f} (version 1)" if val else "Validation Dice: no validation case yet"
        )
        effort = status["edit_effort_by_version"]["1"]["median_dice_proposal_vs_final"]
        assert widget.ui.editEffortLabel.text == f"Median Dice of proposal vs final, per version: v1: {effort:.2f}"
        assert not raw(env, widget, "learningCurveLabel").pixmap().isNull()

        # SegLoopTest, the self-test normally run inside Slicer, against the same server.
        monkeypatch.setenv("SEGLOOP_TEST_URL", server.url)
        SegLoop.SegLoopTest().runTest()
        assert client.datastore_status()["completed"] == 5

        def annotator(case):
            try:
                return (client.label_info(case) or {}).get("annotator")
            except env.SegLoopError:  # not labelled
                return None

        assert sorted(filter(None, map(annotator, {"case_003", "case_004", "case_005"} - {case_id}))) == ["slicer-test"]

        # A reviewer (another name) rejects dr_w's read from the queue; dr_w gets the case back with the comment.
        type_into(env, widget, "annotatorLineEdit", "rev")
        click(env, widget, "connectButton")
        click(env, widget, "reviewQueueButton")
        queue = items("reviewQueueComboBox")
        assert f"{case_id} \u2014 dr_w" in queue and widget.ui.reviewLabel.text == f"{len(queue)} read(s) wait for review"
        assert enabled(env, widget, ["approveButton", "rejectButton"]) == {"approveButton": False, "rejectButton": False}
        choose(env, widget, "reviewQueueComboBox", f"{case_id} \u2014 dr_w")
        click(env, widget, "openReadButton")
        assert messages == [] and widget.ui.caseLabel.text == f"Case {case_id}: dr_w's read, for review"
        segmentation, volume = widget.logic.segmentation_node.GetSegmentation(), widget.logic.volume_node
        stored = np.asarray(nib.load(os.path.join(slicer_studies, "labels", "final", f"{case_id}.nii.gz")).dataobj)
        assert np.array_equal(np.stack([segment(n) > 0 for n in DEFAULT_LABELS]), np.stack([stored == i for i in DEFAULT_LABELS.values()]))
        assert enabled(env, widget, ["approveButton", "rejectButton"]) == {"approveButton": True, "rejectButton": True}
        click(env, widget, "rejectButton")  # no comment: refused before anything is sent
        assert len(messages) == 1 and "needs a comment" in messages[0][1]
        messages.clear()
        type_into(env, widget, "reviewCommentLineEdit", "kidney edge too generous")
        click(env, widget, "rejectButton")
        assert messages == [] and widget.logic.case is None
        assert client.case_reads(case_id)["reads"]["dr_w"]["state"] == "rejected"
        assert client.case_reads(case_id)["case"]["state"] == "open"  # its final label is gone: it no longer trains
        type_into(env, widget, "annotatorLineEdit", "dr_w")
        click(env, widget, "connectButton")
        click(env, widget, "nextCaseButton")
        assert messages == [] and widget.logic.case.image_id == case_id
        assert widget.ui.caseLabel.text == f"Case {case_id}\nReturned by rev: kidney edge too generous"
        for name, index in DEFAULT_LABELS.items():
            widget.logic._set_segment(name, (stored == index).transpose(2, 1, 0))
        click(env, widget, "submitButton")
        assert messages == [] and client.case_reads(case_id)["case"]["state"] == "final"

        # A slow server: the panel's poll gives up and says so; a clinician's call waits and succeeds.
        click(env, widget, "openCaseButton")
        relay.delay = 1.5
        widget.logic.status_client.http.timeout = 1  # the panel's poll gives up after STATUS_TIMEOUT_S (10 s): 1 s here
        click(env, widget, "refreshButton")
        assert widget.ui.trainingLabel.text == f"server: cannot reach {relay.url}: no answer within 1 s"
        widget.ui.foregroundPlaceWidget.currentNode().AddControlPoint(ras(inside))
        click(env, widget, "promptButton")
        assert messages == []
        relay.delay = 0
        # The server goes away in the middle of a call: the reason, the case and its segments as they were.
        relay.drop = True
        kept = {name: segment(name).copy() for name in DEFAULT_LABELS}
        click(env, widget, "promptButton")
        assert len(messages) == 1 and messages[0][1].startswith(f"Segmenting from your prompts failed:\ncannot reach {relay.url}")
        assert widget.logic.case.image_id == case_id and all(np.array_equal(segment(n), kept[n]) for n in DEFAULT_LABELS)
        messages.clear()
        relay.drop = False
        click(env, widget, "promptButton")  # back: the same prompt works
        assert messages == []

        # The server goes away: the training panel says so, nothing crashes.
        server.stop()
        click(env, widget, "refreshButton")
        assert widget.ui.trainingLabel.text.startswith(f"server: cannot reach {relay.url}: ")
        assert messages == []


def test_prompt_line_shows_the_servers_message_for_an_empty_answer(env, make_widget):
    widget = make_widget()
    widget.logic.case = SimpleNamespace(image_id="case_003", read_of=None)
    empty = "found no tumor from these prompts: put a positive click on it or draw a box around it"
    widget.logic.prompt_segment = lambda *args: {"target": "tumor", "voxels": 0, "message": empty}
    widget.onPrompt()
    assert widget.ui.caseLabel.text == f"Case case_003: {empty}"
    widget.logic.prompt_segment = lambda *args: {"target": "liver", "voxels": 900}
    widget.onPrompt()
    assert widget.ui.caseLabel.text == "Case case_003: liver updated from prompts"
