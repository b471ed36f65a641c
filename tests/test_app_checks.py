import tempfile

import pytest

from segloop.app import check_infer_image
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


def test_ids_uploads_and_session_images_are_accepted(tmp_path):
    check_infer_image({"image": "ct1"}, FakeIds())
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as upload:
        check_infer_image({"image": upload.name}, FakeIds())
    sessions = tmp_path / "sessions"
    (sessions / "abc").mkdir(parents=True)
    image = sessions / "abc" / "image.nii.gz"
    image.write_bytes(b"x")
    check_infer_image({"image": str(image), "session": {"id": "abc"}}, FakeIds(), str(sessions))
    with pytest.raises(ClientError):  # the same file without a session is just a server path
        check_infer_image({"image": str(image)}, FakeIds(), str(sessions))
    outside = tmp_path / "other.nii.gz"
    outside.write_bytes(b"x")
    with pytest.raises(ClientError):
        check_infer_image({"image": str(outside), "session": {"id": "abc"}}, FakeIds(), str(sessions))
