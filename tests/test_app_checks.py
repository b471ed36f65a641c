import os
import time
import tempfile

import nibabel as nib
import numpy as np
import pytest

from segloop.server.request_checks import check_infer_image
from segloop.errors import ClientError


class FakeIds:
    """Datastore lookup: knows exactly one image id."""

    def get_image_uri(self, image_id):
        return "/data/ct1.nii.gz" if image_id == "ct1" else ""


@pytest.mark.parametrize(
    "image, status",
    [("../ct1", 400), ("/etc/passwd", 400), ("ct1/../../x", 400), ("unknown", 404), ("..", 400)],
)
def test_paths_and_unknown_ids_are_refused(image, status):
    with pytest.raises(ClientError) as e:
        check_infer_image({"image": image}, FakeIds())
    assert e.value.status_code == status


def small_volume(path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(path))
    return path


def test_ids_uploads_and_session_images_are_accepted(tmp_path):
    check_infer_image({"image": "ct1"}, FakeIds())
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as upload:
        small_volume(upload.name)
        check_infer_image({"image": upload.name}, FakeIds())
        with open(upload.name, "r+b") as f:  # the same upload cut short: decoded whole, refused
            f.truncate(os.path.getsize(upload.name) // 2)
        with pytest.raises(ClientError) as e:
            check_infer_image({"image": upload.name}, FakeIds())
        assert e.value.status_code == 400
    sessions = tmp_path / "sessions"
    (sessions / "abc").mkdir(parents=True)
    image = small_volume(sessions / "abc" / "image.nii.gz")
    check_infer_image({"image": str(image), "session": {"id": "abc"}}, FakeIds(), str(sessions))
    with pytest.raises(ClientError):  # the same file without a session is just a server path
        check_infer_image({"image": str(image)}, FakeIds(), str(sessions))
    outside = tmp_path / "other.nii.gz"
    outside.write_bytes(b"x")
    with pytest.raises(ClientError):
        check_infer_image({"image": str(outside), "session": {"id": "abc"}}, FakeIds(), str(sessions))


def test_stopping_a_server_ends_the_training_runs_it_leaves_behind():
    """A run started while the server shuts down misses its SIGTERM (here: a child that ignores
    it); stop() must not leave it running beside the next tests."""
    import subprocess

    import psutil

    from segloop_bench.server import ServerHandle

    proc = subprocess.Popen(["bash", "-c", "(trap '' TERM; exec sleep 300) & sleep 300"], start_new_session=True)
    deadline = time.time() + 10
    while not psutil.Process(proc.pid).children() and time.time() < deadline:
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    ServerHandle("http://127.0.0.1:9", proc, None).stop()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [] and proc.poll() is not None


def test_server_processes_get_passive_openmp_unless_the_user_chose():
    from segloop.cpu_sharing import shared_cpu_env
    from segloop_bench.server import server_env

    assert shared_cpu_env({"PATH": "/bin"}) == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    assert shared_cpu_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert server_env()["OMP_WAIT_POLICY"] == (os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
