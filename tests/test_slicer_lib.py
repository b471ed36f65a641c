"""SegLoopLib (the Slicer module's client and campaign logic) without Slicer: pure logic here,
and end to end against a real SegLoop server (slow)."""

import ast
import os
import sys
import threading

import nibabel as nib
import numpy as np
import pytest

from segloop_bench.server import NO_SCORING, running_server, wait_for
from segloop.labels import DEFAULT_LABELS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop"))

from SegLoopLib import AUTOMATIC, PROMPT, CampaignFigures, CaseSession, SegLoopClient, SegLoopError  # noqa: E402
from SegLoopLib.campaign import label_colour, training_text  # noqa: E402
from SegLoopLib.http import decode_multipart, encode_multipart, error_message  # noqa: E402

LIB = os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop", "SegLoopLib")


def test_the_library_uses_the_standard_library_only():
    allowed = set(sys.stdlib_module_names)
    for name in os.listdir(LIB):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(LIB, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in allowed, f"{name} imports {module}: not in the standard library"


def test_multipart_round_trip_and_server_messages(tmp_path):
    payload = tmp_path / "label.nii.gz"
    payload.write_bytes(bytes(range(256)) * 4)
    body, content_type = encode_multipart({"params": '{"a": 1}'}, [("label", str(payload))])
    parts = decode_multipart(body, content_type)
    assert parts["params"] == (None, b'{"a": 1}')
    assert parts["label"] == ("label.nii.gz", payload.read_bytes())
    assert error_message(b'{"detail": "label shape (3, 3, 3) does not match image"}') == "label shape (3, 3, 3) does not match image"
    assert error_message(b'{"detail": [{"loc": ["query", "image"], "msg": "field required"}]}') == "query.image: field required"
    assert error_message(b"Internal Server Error") == "Internal Server Error"


def test_case_timer_campaign_figures_and_panel_text():
    now = [100.0]
    case = CaseSession("case_003", "/tmp/case_003.nii.gz", clock=lambda: now[0])
    now[0] = 142.5
    assert case.seconds_spent() == pytest.approx(42.5)
    figures = CampaignFigures.from_server(
        {"total": 10, "completed": 4},
        {"serving_version": 2, "training_run": None,
         "versions": [{"version": 1, "val_dice": None, "status": "promoted"},
                      {"version": 2, "val_dice": {"mean": 0.61}, "status": "promoted"}],
         "edit_effort_by_version": {"2": {"submissions": 1, "median_dice_proposal_vs_final": 0.8},
                                    "1": {"submissions": 3, "median_dice_proposal_vs_final": 0.4}}},
    )
    assert figures.progress_text == "4 / 10 cases labelled"
    assert [p["val_dice"] for p in figures.learning_curve] == [None, 0.61]
    assert [e["version"] for e in figures.edit_effort] == [1, 2] and figures.edit_effort[0]["median_dice"] == 0.4
    assert training_text(None, False) == "no training run yet"
    assert training_text({"epoch": 3, "max_epochs": 10, "percent": 30.0, "loss": 0.5}, True) == (
        "training: epoch 3, 30%, loss 0.500"
    )
    assert label_colour("Liver", 0) == label_colour("liver", 5) and label_colour("pancreas", 0) != label_colour("pancreas", 1)


@pytest.mark.parametrize("served, extension", [
    ('attachment; filename="case_7.nrrd"', ".nrrd"), ('attachment; filename="ct.NII"', ".nii"),
    ('attachment; filename="../../etc/passwd"', ".nii.gz"), (None, ".nii.gz"),
])
def test_a_download_keeps_the_served_files_extension_and_nothing_else_of_its_name(tmp_path, served, extension):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            if served:
                self.send_header("Content-Disposition", served)
            self.end_headers()
            self.wfile.write(b"voxels")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        path = SegLoopClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5).download_image("case_7", str(tmp_path))
    finally:
        thread.join(5)
        server.server_close()
    assert path == str(tmp_path / f"case_7{extension}") and open(path, "rb").read() == b"voxels"


def test_a_background_label_is_not_a_segment():
    assert SegLoopClient.labels_of({"labels": {"spleen": 2, "background": 0, "liver": 1}}) == {"liver": 1, "spleen": 2}
    assert SegLoopClient.labels_of({"labels": ["background", "liver", "spleen"]}) == {"liver": 1, "spleen": 2}
    assert SegLoopClient.labels_of({"labels": ["liver", "spleen"]}) == {"liver": 1, "spleen": 2}
    # MONAI Label's convention (SegLoop's server too): names at the top, indices in the models
    sparse = {"labels": ["liver", "tumor"], "models": {"seg": {"labels": {"liver": 1, "tumor": 4}}}}
    assert SegLoopClient.labels_of(sparse) == {"liver": 1, "tumor": 4}


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(SegLoopError) as error:
        SegLoopClient("http://127.0.0.1:9", timeout=5).info()
    assert error.value.status == 0 and "cannot reach" in error.value.message


@pytest.mark.parametrize("behaviour, words", [("silent", "no answer within 1 s"), ("hang up", "cannot reach")])
def test_a_server_that_never_answers_or_hangs_up_is_a_clear_error(behaviour, words):
    """Past the connection (a listening socket that never answers; one that closes at once): the
    caller gets a SegLoopError, not a TimeoutError or ConnectionResetError (the panel's poll
    catches SegLoopError only)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []

    def serve():
        connection, _ = listener.accept()
        accepted.append(connection)
        if behaviour == "hang up":
            connection.recv(65536)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.close()  # an RST: the client sees the connection reset

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(SegLoopError) as error:
            SegLoopClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1).info()
        assert error.value.status == 0 and words in error.value.message, error.value.message
    finally:
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_status_polls_get_a_short_limit_and_keep_the_login():
    client = SegLoopClient(" 127.0.0.1:8000/ ")  # as typed: no scheme, spaces, a trailing slash
    assert client.url == "http://127.0.0.1:8000" and client.http.timeout == 600
    client.http.token = "t0ken"
    poll = client.with_timeout(10)
    assert poll.url == client.url and poll.http.timeout == 10 and poll.http.token == "t0ken"
    assert client.http.timeout == 600  # the original keeps the long inference limit


CONF = {"models": "segmentation,prompt", "retrain_max_seconds": "4", "first_run_max_seconds": "4", "promotion_tolerance": "1.0", "mc_samples": "2",
        "tta_samples": "2"}


@pytest.mark.slow
def test_every_module_action_against_a_real_server(slicer_studies, sample_root, tmp_path):
    truth = lambda case: os.path.join(sample_root, "ground_truth", f"{case}.nii.gz")  # noqa: E731
    with running_server(slicer_studies, conf=CONF, log_path=str(tmp_path / "server.log"), env=NO_SCORING) as server:
        client = SegLoopClient(server.url)
        client.login("dr_a", "unused")  # auth is off: no token needed, no error
        info = client.info()
        assert client.models_of(info, AUTOMATIC) == ["segmentation"] and client.models_of(info, PROMPT) == ["prompt"]
        assert client.labels_of(info) == DEFAULT_LABELS
        # The prompt model lists the request forms it takes, so the module enables just those tools.
        assert set(client.prompt_forms_of(info, "prompt")) == {
            "points", "box", "box_2d", "lasso", "scribbles", "scribbles_mask", "label_map", "text", "no_label"}
        assert {"random", "hybrid", "entropy", "diversity"} <= set(client.strategies_of(info))
        wait_for(lambda: all(client.model_status(m)["serving_version"] for m in ("segmentation", "prompt")),
                 600, 2.0, "both models to serve")

        # Next case: booked for this annotator, downloaded as stored.
        case = client.next_case("random", "dr_a")
        assert case["id"] in {"case_003", "case_004", "case_005"}
        image_path = client.download_image(case["id"], str(tmp_path))
        assert image_path == str(tmp_path / f"{case['id']}.nii.gz")  # the stored file's extension
        image = nib.load(image_path)
        assert image.shape == nib.load(truth(case["id"])).shape
        session = CaseSession(case["id"], image_path)

        # Auto segment, with the uncertainty map next to it, both on the image's grid.
        proposal, result = client.auto_segment("segmentation", case["id"], str(tmp_path / "proposal.nii.gz"), uncertainty=True)
        assert nib.load(proposal).shape == image.shape and np.allclose(nib.load(proposal).affine, image.affine, atol=1e-4)
        assert result["model_version"] >= 1 and set(result["label_confidence"]) == set(DEFAULT_LABELS)
        uncertainty = nib.load(client.uncertainty_map(result, str(tmp_path / "uncertainty.nii.gz")))
        assert uncertainty.shape == image.shape

        # Prompts: a click inside the liver plus one outside, a box, a label name.
        liver = np.argwhere(np.asarray(nib.load(truth(case["id"])).dataobj) == DEFAULT_LABELS["liver"])
        inside = liver[len(liver) // 2].tolist()
        mask_path, prompt_result = client.prompt_segment(
            "prompt", case["id"], str(tmp_path / "click.nii.gz"), foreground=[inside], background=[[0, 0, 0]]
        )
        mask = np.asarray(nib.load(mask_path).dataobj)
        assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 1} and prompt_result["model"] == "prompt"
        box = [liver.min(axis=0).tolist(), liver.max(axis=0).tolist()]
        _, box_result = client.prompt_segment("prompt", case["id"], str(tmp_path / "box.nii.gz"), box=box, text="liver")
        assert box_result["model_version"] >= 1 and "liver" in box_result["label_names"]
        # Drawn on one slice (a lasso, a 2D box), scribbled, or sent with the case's label map.
        k = int(liver[:, 2].mean())
        (i0, j0), (i1, j1) = liver[liver[:, 2] == k][:, :2].min(0), liver[liver[:, 2] == k][:, :2].max(0)
        polygon = [[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]]
        for form in ({"lasso": polygon}, {"box": [polygon[0], polygon[2]]},
                     {"foreground_scribbles": [[inside, polygon[0]]], "text": "liver"}):
            path, drawn = client.prompt_segment("prompt", case["id"], str(tmp_path / "drawn.nii.gz"), reset=True, **form)
            assert nib.load(path).shape == image.shape and drawn["roi_mm"] is not None, form
        truth_map = np.asarray(nib.load(truth(case["id"])).dataobj)
        scribbles = np.zeros(image.shape, np.uint8)
        scribbles[tuple(liver[:: max(1, len(liver) // 10)].T)] = 3
        scribbles[0, 0, 0] = 2
        nib.save(nib.Nifti1Image(scribbles, image.affine), str(tmp_path / "scribbles.nii.gz"))
        _, painted = client.prompt_segment("prompt", case["id"], str(tmp_path / "painted.nii.gz"), text="liver",
                                           scribble_mask=str(tmp_path / "scribbles.nii.gz"))
        assert painted["scribble_clicks"] == [int((scribbles == 3).sum()), 1] and painted["target"] == "liver"
        nib.save(nib.Nifti1Image(truth_map.astype(np.uint8), image.affine), str(tmp_path / "label_map.nii.gz"))
        mask_path, mapped = client.prompt_segment("prompt", case["id"], str(tmp_path / "mapped.nii.gz"), foreground=[inside],
                                                  text="liver", label_map=str(tmp_path / "label_map.nii.gz"))
        others = (truth_map > 0) & (truth_map != DEFAULT_LABELS["liver"])
        assert mapped["excluded_voxels"] == int(others.sum()) and mapped["previous_mask"] == "uploaded"
        assert not np.asarray(nib.load(mask_path).dataobj)[others].any()
        with pytest.raises(SegLoopError) as error:  # one file per request
            client.prompt_segment("prompt", case["id"], str(tmp_path / "x.nii.gz"), text="liver",
                                  scribble_mask=str(tmp_path / "scribbles.nii.gz"), label_map=str(tmp_path / "label_map.nii.gz"))
        assert "not both" in error.value.message
        with pytest.raises(SegLoopError) as error:  # a lasso off its slice: the server's 400 and reason
            client.prompt_segment("prompt", case["id"], str(tmp_path / "x.nii.gz"), lasso=[[1, 1, 1], [5, 1, 1], [5, 5, 2]])
        assert error.value.status == 400 and "one slice" in error.value.message
        with pytest.raises(SegLoopError) as error:  # a click outside the image: the server says why
            client.prompt_segment("prompt", case["id"], str(tmp_path / "bad.nii.gz"), foreground=[[9999, 0, 0]])
        assert error.value.status == 422 and "outside the image" in error.value.message

        # Submit: provenance and edit effort stored with the label.
        answer = client.submit(case["id"], truth(case["id"]), "dr_a", session.seconds_spent(), client="SegLoop Slicer module")
        assert answer["edit_effort"]["segmentation"]["version"] == result["model_version"]
        stored = client.label_info(case["id"])
        assert stored["annotator"] == "dr_a" and stored["time_spent_s"] >= 0 and stored["client"] == "SegLoop Slicer module"
        assert stored["tool"] == "prompts" and stored["reads"] == ["dr_a"]  # the prompt model answered on this case first
        assert "edit_effort" in stored
        # ... and the label comes back as submitted, for review.
        reviewed = client.download_label(case["id"], str(tmp_path))
        assert reviewed == str(tmp_path / f"{case['id']}_final.nii.gz")
        assert np.array_equal(np.asarray(nib.load(reviewed).dataobj), np.asarray(nib.load(truth(case["id"])).dataobj))
        with pytest.raises(SegLoopError) as error:
            client.download_label("case_005" if case["id"] != "case_005" else "case_004", str(tmp_path))
        assert error.value.status == 404  # a case without a final label

        # Training and campaign panels: the submission retrains; figures follow.
        wait_for(lambda: client.model_status("segmentation")["serving_version"] >= 2, 600, 2.0, "version 2")
        assert client.train_progress("segmentation")["epoch"] >= 1
        assert client.training()["status"] in ("SUBMITTED", "RUNNING", "DONE", "ERROR")
        figures = CampaignFigures.from_server(client.datastore_status(), client.model_status("segmentation"))
        assert figures.labelled == 4 and figures.total == 6
        assert [p["version"] for p in figures.learning_curve][:2] == [1, 2]
        assert figures.edit_effort[0]["version"] == result["model_version"] and figures.edit_effort[0]["submissions"] == 1

        # Errors carry the server's message.
        with pytest.raises(SegLoopError) as error:
            client.next_case("nonsense", "dr_a")
        assert error.value.status == 404 and "nonsense" in error.value.message
        with pytest.raises(SegLoopError) as error:
            client.auto_segment("segmentation", "no_such_case", str(tmp_path / "x.nii.gz"))
        assert error.value.status == 404


def test_clicks_and_boxes_in_ras_become_voxel_indices_of_the_stored_image():
    from SegLoopLib.geometry import points_to_ijk, ras_to_ijk, roi_to_box

    # an LPS-stored volume: i runs to -x (left), j to -y (posterior), 2 mm slices along +z; origin at (100, 80, -50)
    ijk_to_ras = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 80.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1]])
    ras_to_ijk_matrix = np.linalg.inv(ijk_to_ras).tolist()
    voxel = [10, 20, 5]
    ras = (ijk_to_ras @ np.array([*voxel, 1]))[:3]
    assert ras_to_ijk(ras_to_ijk_matrix, ras) == voxel
    assert points_to_ijk(ras_to_ijk_matrix, [ras, ras + [0.3, 0.3, 0.9]], (64, 64, 32)) == [voxel, voxel]
    with pytest.raises(ValueError, match="point 1 .* outside"):
        points_to_ijk(ras_to_ijk_matrix, [[1000, 0, 0]], (64, 64, 32))
    box = roi_to_box(ras_to_ijk_matrix, ras, [8.0, 8.0, 8.0], (64, 64, 32))
    assert box == [[5, 15, 3], [15, 25, 7]]
    assert roi_to_box(ras_to_ijk_matrix, ras, [1000, 1000, 1000], (64, 64, 32)) == [[0, 0, 0], [63, 63, 31]]


def test_a_2d_box_and_a_lasso_lie_on_one_slice():
    from SegLoopLib.geometry import flatten_box, lasso_on_one_slice

    assert flatten_box([[4, 10, 7], [20, 30, 9]]) == [[4, 10, 8], [20, 30, 8]]  # thinnest axis: k, onto its centre slice
    assert flatten_box([[4, 10, 7], [5, 30, 40]]) == [[4, 10, 7], [4, 30, 40]]
    drawn = [[3, 4, 12], [9, 4, 13], [9, 8, 12], [3, 8, 12]]  # one vertex rounded onto the next slice
    assert lasso_on_one_slice(drawn) == [[3, 4, 12], [9, 4, 12], [9, 8, 12], [3, 8, 12]]
    assert lasso_on_one_slice([[5, 1, 1], [5, 9, 1], [6, 9, 9]]) == [[5, 1, 1], [5, 9, 1], [5, 9, 9]]  # a sagittal one
    with pytest.raises(ValueError, match="not on one slice"):
        lasso_on_one_slice([[3, 4, 12], [9, 4, 14], [9, 8, 12], [3, 8, 10]])
    with pytest.raises(ValueError, match="at least 3"):
        lasso_on_one_slice([[3, 4, 12], [9, 4, 12]])


def test_segments_become_one_label_map_of_storage_indices():
    from SegLoopLib.geometry import compose_label_map

    liver, tumor = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    liver[1:3, 1:4, 1:5], tumor[2, 2, 2] = True, True
    labels = {"liver": 1, "spleen": 2, "tumor": 4}
    out = compose_label_map({"Tumor": tumor, "Liver": liver}, labels, np.zeros((4, 5, 6), np.uint8))
    assert out[2, 2, 2] == 4 and out[1, 1, 1] == 1 and out[0, 0, 0] == 0 and out.sum() == liver.sum() - 1 + 4
    with pytest.raises(ValueError, match="not labels"):
        compose_label_map({"pancreas": liver}, labels, np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        compose_label_map({"liver": liver[:2]}, labels, np.zeros((4, 5, 6), np.uint8))


MODULE = os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop")
CONTROLS = {"QPushButton", "QCheckBox", "QComboBox", "QLineEdit", "qSlicerMarkupsPlaceWidget"}


def _ui_widgets():
    import xml.etree.ElementTree as ElementTree

    tree = ElementTree.parse(os.path.join(MODULE, "Resources", "UI", "SegLoop.ui"))
    return {w.get("name"): w.get("class") for w in tree.iter("widget") if w.get("name")}


def test_the_module_wires_every_control_of_its_ui():
    widgets = _ui_widgets()
    source = open(os.path.join(MODULE, "SegLoop.py")).read()
    tree = ast.parse(source)
    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }
    assert used <= set(widgets), f"SegLoop.py uses controls missing from SegLoop.ui: {used - set(widgets)}"
    controls = {name for name, cls in widgets.items() if cls in CONTROLS}
    assert controls <= used, f"controls in SegLoop.ui that SegLoop.py never touches: {controls - used}"
    for name, cls in widgets.items():
        if cls == "QPushButton":  # a checkable one (a toggle) by its toggled signal
            assert f"self.ui.{name}.clicked.connect(" in source or f"self.ui.{name}.toggled.connect(" in source, f"{name} is not connected"
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"SegLoop", "SegLoopWidget", "SegLoopLogic", "SegLoopTest"} <= classes


def test_the_extension_packages_every_library_file_and_resource():
    cmake = open(os.path.join(MODULE, "CMakeLists.txt")).read()
    for name in os.listdir(LIB):
        if name.endswith(".py"):
            assert f"${{MODULE_NAME}}Lib/{name}" in cmake, f"CMakeLists.txt does not install SegLoopLib/{name}"
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in cmake
    assert os.path.getsize(os.path.join(MODULE, "Resources", "Icons", "SegLoop.png")) > 1000
    assert "add_subdirectory(SegLoop)" in open(os.path.join(MODULE, "..", "CMakeLists.txt")).read()


def test_the_extensions_addresses_are_files_of_this_repository():
    import re

    root = os.path.join(MODULE, "..", "..")
    cmake = open(os.path.join(MODULE, "..", "CMakeLists.txt")).read()
    repository = re.search(r'set\(SEGLOOP_REPOSITORY "([^"]+)"', cmake).group(1)
    addresses = dict(re.findall(r'set\((EXTENSION_(?:HOMEPAGE|ICONURL|SCREENSHOTURLS)) "([^"]*)"\)', cmake))
    assert set(addresses) == {"EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"}
    module_source = open(os.path.join(MODULE, "SegLoop.py")).read()
    documentation = re.search(r'DOCUMENTATION_URL = "([^"]+)"', module_source).group(1)
    for name, address in [*addresses.items(), ("helpText", documentation.replace(repository, "${SEGLOOP_REPOSITORY}"))]:
        path = re.fullmatch(r"\$\{SEGLOOP_REPOSITORY\}/(?:blob|raw)/main/(.+)", address).group(1)
        assert os.path.getsize(os.path.join(root, path)) > 1000, f"{name}: {path} is not a file of this repository"
    assert "DOCUMENTATION_URL" in module_source.split("helpText", 1)[1].split("\n\n", 1)[0]
