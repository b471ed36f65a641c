"""Bad requests against the real server: each gets a 4xx naming the problem and changes nothing.

One server (the learning test's trained automatic model serving, the prompt model untrained)
answers every case. For each: the status and a word of the message; the datastore byte for byte
(every file under the studies folder but the server's own ``.segloop`` state, where scoring jobs
write at any time); the server's temporary folder (``TMPDIR``) and the folder around the
datastore, file for file; and the server still answering.
"""

import gzip
import hashlib
import json
import os
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
import requests

from segloop_bench.server import NO_SCORING, running_server

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 20  # the sample volumes are 4-13 MB
MAX_VOXELS = 50_000_000
IMAGE = "case_008"  # unlabelled, held out by the learning test
LABELLED = "case_000"


def tree_digest(folder, skip=(".segloop", ".lock")):
    digest = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            if name in skip:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def listing(folder, skip=(".segloop",)):
    """Every file under ``folder``, but the server's own state (scoring jobs write there at any time)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(found)


@pytest.fixture(scope="module")
def server(trained_segmentation, tmp_path_factory):
    base = tmp_path_factory.mktemp("adversarial")
    studies = str(base / "studies")
    shutil.copytree(os.path.join(trained_segmentation["root"], "studies"), studies)
    tmpdir = base / "server_tmp"
    tmpdir.mkdir()
    conf = {"models": "segmentation,prompt", "auto_train": "false", "max_upload_mb": str(MAX_UPLOAD_MB), "max_voxels": str(MAX_VOXELS)}
    with running_server(studies, conf=conf, log_path=str(base / "server.log"), env={"TMPDIR": str(tmpdir), **NO_SCORING}) as handle:
        handle.studies, handle.tmpdir, handle.base = studies, str(tmpdir), str(base)
        handle.truth = os.path.join(trained_segmentation["root"], "ground_truth")
        yield handle


@pytest.fixture(scope="module")
def files(server, tmp_path_factory):
    """Bad files, made once (outside every folder the checks watch)."""
    out = tmp_path_factory.mktemp("bad_files")
    image = nib.load(os.path.join(server.studies, f"{IMAGE}.nii.gz"))
    truth = nib.load(os.path.join(server.truth, f"{IMAGE}.nii.gz"))
    data = np.asarray(truth.dataobj)
    made = {}

    def save(name, array, affine=image.affine, header=None):
        path = str(out / name)
        nib.save(nib.Nifti1Image(array, affine, header), path)
        made[name.split(".")[0]] = path
        return path

    good_image = os.path.join(server.studies, f"{IMAGE}.nii.gz")
    with open(good_image, "rb") as f:
        raw = f.read()
    made["truncated_gzip"] = str(out / "truncated_gzip.nii.gz")
    open(made["truncated_gzip"], "wb").write(raw[: len(raw) // 2])
    plain = gzip.decompress(raw)
    made["truncated_voxels"] = str(out / "truncated_voxels.nii")
    open(made["truncated_voxels"], "wb").write(plain[: 352 + (len(plain) - 352) // 10])  # header whole, 10 % of the voxels
    made["not_nifti"] = str(out / "not_nifti.nii.gz")
    open(made["not_nifti"], "wb").write(b"this is not an image\n" * 10)
    header = nib.Nifti1Header()
    header.set_data_shape((400, 400, 400))
    header.set_data_dtype(np.int16)
    made["huge_header"] = str(out / "huge_header.nii")
    open(made["huge_header"], "wb").write(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    made["oversize"] = str(out / "oversize.nii.gz")
    open(made["oversize"], "wb").write(os.urandom((MAX_UPLOAD_MB + 1) * 2**20))
    save("flat.nii.gz", np.zeros((16, 16), np.int16), np.eye(4))
    nan = np.asarray(image.dataobj).astype(np.float32)
    nan[0, 0, 0] = np.nan
    save("nan_image.nii.gz", nan)
    rgb_dtype = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    save("rgb_image.nii.gz", np.zeros((8, 8, 8), rgb_dtype), np.eye(4))
    save("rgb_label.nii.gz", np.zeros(data.shape, rgb_dtype))
    save("float_label.nii.gz", data.astype(np.float32))
    save("wrong_shape.nii.gz", np.zeros((10, 10, 10), np.uint8))
    shifted = image.affine.copy()
    shifted[0, 3] += 5
    save("wrong_affine.nii.gz", data.astype(np.uint8), shifted)
    unknown = data.astype(np.uint8).copy()
    unknown[0, 0, 0] = 9
    save("unknown_value.nii.gz", unknown)
    with open(os.path.join(server.truth, f"{IMAGE}.nii.gz"), "rb") as f:
        label_raw = f.read()
    made["truncated_label"] = str(out / "truncated_label.nii.gz")
    open(made["truncated_label"], "wb").write(label_raw[: len(label_raw) // 2])
    made["good_label"] = os.path.join(server.truth, f"{IMAGE}.nii.gz")
    made["good_image"] = good_image

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/segloop_pwned",))

    made["pickle"] = str(out / "evil.pt")
    with open(made["pickle"], "wb") as f:
        pickle.dump({"model": Evil()}, f)
    made["existing_tmp"] = str(server.tmpdir) + "/tmpexisting.nii.gz"
    return made


def upload(path, name=None):
    return (name or os.path.basename(path), open(path, "rb"))


# (case id, method, path, query, form data, files (name -> file key), json body, expected status, word in message)
CASES = [
    # -- image upload
    ("image_id_traversal", "PUT", "/datastore/image", {"image": "../evil"}, None, {"file": "good_image"}, None, 400, "invalid image id"),
    ("image_id_300_chars", "PUT", "/datastore/image", {"image": "a" * 300}, None, {"file": "good_image"}, None, 400, "at most 128"),
    ("image_id_with_suffix", "PUT", "/datastore/image", {"image": "x.nii.gz"}, None, {"file": "good_image"}, None, 400, "file suffix"),
    ("image_id_from_bad_file_name", "PUT", "/datastore/image", {}, None, {"file": ("good_image", "bad name!.nii.gz")}, None, 400, "invalid image id"),
    ("image_not_nifti", "PUT", "/datastore/image", {"image": "up1"}, None, {"file": "not_nifti"}, None, 400, "not a readable NIfTI"),
    ("image_truncated_gzip", "PUT", "/datastore/image", {"image": "up2"}, None, {"file": "truncated_gzip"}, None, 400, "truncated or corrupt"),
    ("image_truncated_voxels", "PUT", "/datastore/image", {"image": "up3"}, None, {"file": "truncated_voxels"}, None, 400, "truncated or corrupt"),
    ("image_2d", "PUT", "/datastore/image", {"image": "up4"}, None, {"file": "flat"}, None, 400, "3-D"),
    ("image_header_claims_64M_voxels", "PUT", "/datastore/image", {"image": "up5"}, None, {"file": "huge_header"}, None, 413, "max_voxels"),
    ("image_nan", "PUT", "/datastore/image", {"image": "up6"}, None, {"file": "nan_image"}, None, 422, "NaN"),
    ("image_rgb", "PUT", "/datastore/image", {"image": "up7"}, None, {"file": "rgb_image"}, None, 400, "scalar"),
    ("image_id_exists", "PUT", "/datastore/image", {"image": IMAGE}, None, {"file": "good_image"}, None, 409, "already exists"),
    ("image_params_not_json", "PUT", "/datastore/image", {"image": "up8"}, {"params": "{not json"}, {"file": "good_image"}, None, 400, "JSON object"),
    ("image_params_a_list", "PUT", "/datastore/image", {"image": "up9"}, {"params": "[1]"}, {"file": "good_image"}, None, 400, "JSON object"),
    ("image_not_nifti_suffix", "PUT", "/datastore/image", {"image": "up10"}, None, {"file": ("good_image", "x.png")}, None, 400, "NIfTI"),
    ("image_body_over_limit", "PUT", "/datastore/image", {"image": "up11"}, None, {"file": "oversize"}, None, 413, "max_upload_mb"),
    ("image_unknown_query", "PUT", "/datastore/image", {"imag": "up12"}, None, {"file": "good_image"}, None, 400, "'imag'"),
    # -- label upload
    ("label_unknown_image", "PUT", "/datastore/label", {"image": "no_such_case"}, None, {"label": "good_label"}, None, 404, "not in the datastore"),
    ("label_image_traversal", "PUT", "/datastore/label", {"image": "../case_000"}, None, {"label": "good_label"}, None, 400, "invalid image id"),
    ("label_wrong_shape", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "wrong_shape"}, None, 422, "shape"),
    ("label_wrong_affine", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "wrong_affine"}, None, 422, "affine"),
    ("label_float", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "float_label"}, None, 422, "integers"),
    ("label_rgb", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "rgb_label"}, None, 422, "integers"),
    ("label_unknown_value", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "unknown_value"}, None, 422, "label map"),
    ("label_truncated", "PUT", "/datastore/label", {"image": IMAGE}, None, {"label": "truncated_label"}, None, 400, "truncated or corrupt"),
    ("label_tag_traversal", "PUT", "/datastore/label", {"image": IMAGE, "tag": "../x"}, None, {"label": "good_label"}, None, 400, "label tag"),
    ("label_params_not_json", "PUT", "/datastore/label", {"image": IMAGE}, {"params": "nope"}, {"label": "good_label"}, None, 400, "JSON object"),
    ("label_misspelt_tag_query", "PUT", "/datastore/label", {"image": IMAGE, "tags": "final"}, None, {"label": "good_label"}, None, 400, "'tags'"),
    # -- remove and info
    ("delete_image_traversal", "DELETE", "/datastore/image", {"id": "../studies"}, None, None, None, 400, "invalid image id"),
    ("delete_image_unknown", "DELETE", "/datastore/image", {"id": "no_such_case"}, None, None, None, 404, "not in the datastore"),
    ("delete_label_absent", "DELETE", "/datastore/label", {"id": IMAGE, "tag": "final"}, None, None, None, 404, "no 'final' label"),
    ("image_info_not_json", "PUT", "/datastore/image/info", {"image": IMAGE}, {"info": "{"}, None, None, 400, "JSON object"),
    ("download_label_tag_traversal", "GET", "/datastore/label", {"label": LABELLED, "tag": "../../x"}, None, None, None, 400, "label tag"),
    # -- infer
    ("infer_server_path", "POST", "/infer/segmentation", {"image": "/etc/passwd"}, None, None, None, 400, "invalid image id"),
    ("infer_other_tempfile", "POST", "/infer/segmentation", {"image": "{existing_tmp}"}, None, None, None, 400, "invalid image id"),
    ("infer_unknown_model", "POST", "/infer/no_such_model", {"image": IMAGE}, None, None, None, 404, "no model"),
    ("infer_label_param_is_a_path", "POST", "/infer/prompt", {"image": IMAGE}, {"params": json.dumps({"label": "/etc/hosts", "text": "liver"})}, None, None, 400, "names a segment"),
    ("infer_image_in_params", "POST", "/infer/segmentation", {"image": IMAGE}, {"params": json.dumps({"image": "/etc/passwd"})}, None, None, 400, "'image'"),
    ("infer_session_in_params", "POST", "/infer/segmentation", {"image": IMAGE}, {"params": json.dumps({"session": {"image": "/etc/passwd"}})}, None, None, 400, "'session'"),
    ("infer_params_not_json", "POST", "/infer/segmentation", {"image": IMAGE}, {"params": "{oops"}, None, None, 400, "JSON object"),
    ("infer_uncertainty_maybe", "POST", "/infer/segmentation", {"image": IMAGE}, {"params": json.dumps({"uncertainty": "maybe"})}, None, None, 400, "uncertainty"),
    ("infer_reset_state_maybe", "POST", "/infer/prompt", {"image": IMAGE}, {"params": json.dumps({"text": "liver", "reset_state": "maybe"})}, None, None, 400, "reset_state"),
    ("infer_foreground_not_a_list", "POST", "/infer/prompt", {"image": IMAGE}, {"params": json.dumps({"foreground": "x"})}, None, None, 400, "foreground"),
    ("infer_truncated_upload", "POST", "/infer/segmentation", {}, None, {"file": "truncated_gzip"}, None, 400, "truncated or corrupt"),
    ("infer_no_image", "POST", "/infer/segmentation", {}, None, None, None, 400, "give an image"),
    ("infer_bad_output", "POST", "/infer/segmentation", {"image": IMAGE, "output": "pickle"}, None, None, None, 422, "output"),
    ("infer_session_traversal", "POST", "/infer/segmentation", {"session_id": "../x"}, None, None, None, 400, "session id"),
    # -- train, active learning, scoring
    ("train_unknown_model", "POST", "/train/nosuchmodel", {}, None, None, {}, 404, "no trainable model"),
    ("train_bad_type", "POST", "/train/segmentation", {}, None, None, {"max_epochs": "x"}, 400, "max_epochs"),
    ("train_bad_choice", "POST", "/train/segmentation", {}, None, None, {"lr_schedule": "bogus"}, 400, "lr_schedule"),
    ("train_path_option", "POST", "/train/segmentation", {}, None, None, {"train_ds": "/etc"}, 400, "'train_ds'"),
    ("train_run_sync", "POST", "/train/segmentation", {"run_sync": "true"}, None, None, {}, 400, "'run_sync'"),
    ("train_val_split_above_1", "POST", "/train/segmentation", {}, None, None, {"val_split": 3}, 400, "val_split"),
    ("activelearning_unknown_strategy", "POST", "/activelearning/no_such_strategy", {}, None, None, {}, 404, "no active-learning strategy"),
    ("activelearning_client_id_too_long", "POST", "/activelearning/random", {}, None, None, {"client_id": "x" * 500}, 400, "client_id"),
    ("scoring_unknown_method", "POST", "/scoring/no_such_method", {}, None, None, {}, 404, "no scoring method"),
    # -- sessions, models, upstream extras
    ("session_uncompress_random_bytes", "PUT", "/session/", {"uncompress": "true"}, None, {"files": "not_nifti"}, None, 400, "uncompress"),
    ("session_truncated_volume", "PUT", "/session/", {}, None, {"files": ("truncated_gzip", "x.nii.gz")}, None, 400, "truncated or corrupt"),
    ("session_archive_name", "PUT", "/session/", {}, None, {"files": ("good_image", "x.zip")}, None, 400, ".nii"),
    ("infer_unknown_session", "POST", "/infer/segmentation", {"session_id": "no-such-session"}, None, None, None, 404, "no session"),
    ("model_upload_pickle", "PUT", "/model/segmentation", {}, None, {"file": "pickle"}, None, 405, "does not accept"),
    ("model_delete", "DELETE", "/model/segmentation", {}, None, None, None, 405, "does not accept"),
    ("reload", "POST", "/reload", {}, None, None, None, 405, "restart the server"),
    ("dicom_proxy_without_dicomweb", "GET", "/proxy/dicom/studies", {}, None, None, None, 404, "not offered"),
    ("rollback_version_not_a_number", "POST", "/segloop/models/segmentation/rollback", {}, None, None, {"version": "x"}, 422, "version"),
    ("rollback_unknown_version", "POST", "/segloop/models/segmentation/rollback", {}, None, None, {"version": 99}, 404, "no version 99"),
    ("uncertainty_map_unknown_token", "GET", "/segloop/uncertainty/..etc", {}, None, None, None, 404, "no uncertainty map"),
    ("segloop_unknown_model", "GET", "/segloop/models/nosuch", {}, None, None, None, 404, "no trainable model"),
]


def send(server, files, method, path, query, data, upload_files, body):
    query = {k: v.format(**files) if isinstance(v, str) and "{" in v else v for k, v in query.items()}
    opened = {}
    for field, spec in (upload_files or {}).items():
        key, name = spec if isinstance(spec, tuple) else (spec, None)
        opened[field] = upload(files[key], name)
    try:
        return requests.request(method, server.url + path, params=query, data=data, files=opened or None, json=body, timeout=120)
    finally:
        for _, f in opened.values():
            f.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_refused_and_changes_nothing(server, files, case):
    name, method, path, query, data, upload_files, body, status, word = case
    open(files["existing_tmp"], "wb").write(b"x")  # another client's upload, as far as the server knows
    before = (tree_digest(server.studies), listing(server.tmpdir), listing(server.base))
    r = send(server, files, method, path, query, data, upload_files, body)
    detail = json.dumps(r.json().get("detail")) if r.headers.get("content-type", "").startswith("application/json") else r.text
    print(f"{name}: {r.status_code} {detail[:160]}")
    assert r.status_code == status and word in detail, (r.status_code, detail)
    assert tree_digest(server.studies) == before[0], "the datastore changed"
    assert listing(server.tmpdir) == before[1], "a temporary file was left behind"
    assert listing(server.base) == before[2], "a file was written beside the datastore"
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200
    assert not os.path.exists("/tmp/segloop_pwned")


def test_server_settings_in_params_are_ignored(server):
    """The upstream Slicer plugin echoes the model's config back; a request cannot set the
    sliding-window cost or the device: these are dropped, the server's settings apply."""
    params = {"sw_overlap": 0.99, "sw_batch_size": 10**9, "device": "cuda:7", "result_dtype": "float64", "logging": "DEBUG"}
    r = requests.post(f"{server.url}/infer/segmentation", params={"image": IMAGE, "output": "json"}, data={"params": json.dumps(params)}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == 1


def test_the_serving_model_survives_a_checkpoint_upload(server, files):
    serving = os.path.join(server.studies, ".segloop", "model", "segmentation.pt")
    before = hashlib.sha256(open(serving, "rb").read()).hexdigest()
    with open(files["pickle"], "rb") as f:
        assert requests.put(f"{server.url}/model/segmentation", files={"file": ("x.pt", f)}, timeout=60).status_code == 405
    assert hashlib.sha256(open(serving, "rb").read()).hexdigest() == before
    r = requests.post(f"{server.url}/infer/segmentation", params={"image": IMAGE, "output": "json"}, timeout=300)
    assert r.status_code == 200, r.text
