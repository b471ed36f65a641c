"""Authentication and roles through the real server, with real RS256 tokens.

The test makes a key pair, serves the realm's public key the way Keycloak does
(``GET /realms/<realm>`` -> ``{"public_key": ...}``) on a loopback port, and starts the server
with MONAI Label's own auth settings pointing at it. Every route is tried with no token, an
expired token, a token signed by another key, a token one role too low, and a valid token.
The route table must cover every route the server documents (``/openapi.json``), so a new
endpoint cannot go unchecked.
"""

import json
import os
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from realm import ADMIN, ANNOTATOR, LADDER, REVIEWER, USER

pytestmark = pytest.mark.slow

PUBLIC = {("GET", "/"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/auth/"), ("POST", "/auth/token")}

# method, path, required role, request kwargs that pass the role check without changing anything
# (unknown ids, empty bodies): with the right role the answer is never 401 or 403.
ROUTES = [
    ("GET", "/info/", USER, {}),
    ("GET", "/auth/token/valid", None, {}),  # any valid token
    ("GET", "/model/segmentation", ADMIN, {}),
    ("GET", "/model/info/segmentation", ADMIN, {}),
    ("PUT", "/model/segmentation", ADMIN, {}),
    ("DELETE", "/model/segmentation", ADMIN, {}),
    ("POST", "/infer/segmentation", USER, {"params": {"image": "no_such_case"}}),
    ("GET", "/batch/infer", USER, {}),
    ("POST", "/batch/infer/no_such_model", ADMIN, {"json": {}}),
    ("DELETE", "/batch/infer", ADMIN, {}),
    ("GET", "/train/", USER, {}),
    ("POST", "/train/no_such_model", ADMIN, {"json": {}}),
    ("DELETE", "/train/", ADMIN, {}),
    ("POST", "/activelearning/no_such_strategy", USER, {"json": {}}),
    ("GET", "/scoring/", USER, {}),
    ("POST", "/scoring/no_such_method", ANNOTATOR, {"json": {}}),
    ("DELETE", "/scoring/", ANNOTATOR, {}),
    ("GET", "/datastore/", USER, {}),
    ("PUT", "/datastore/image", ANNOTATOR, {"params": {"image": "../x"}, "files": {"file": ("x.nii.gz", b"x")}}),
    ("DELETE", "/datastore/image", ADMIN, {"params": {"id": "no_such_case"}}),
    ("HEAD", "/datastore/image", USER, {"params": {"image": "no_such_case"}}),
    ("GET", "/datastore/image", USER, {"params": {"image": "no_such_case"}}),
    ("GET", "/datastore/image/info", USER, {"params": {"image": "no_such_case"}}),
    ("PUT", "/datastore/image/info", ANNOTATOR, {"params": {"image": "no_such_case"}}),
    ("PUT", "/datastore/label", ANNOTATOR, {"params": {"image": "no_such_case"}, "files": {"label": ("x.nii.gz", b"x")}}),
    ("DELETE", "/datastore/label", ADMIN, {"params": {"id": "no_such_case", "tag": "final"}}),
    ("HEAD", "/datastore/label", USER, {"params": {"image": "no_such_case", "tag": "final"}}),
    ("GET", "/datastore/label", USER, {"params": {"label": "no_such_case", "tag": "final"}}),
    ("GET", "/datastore/label/info", USER, {"params": {"label": "no_such_case", "tag": "final"}}),
    ("PUT", "/datastore/label/info", ANNOTATOR, {"params": {"label": "no_such_case", "tag": "final"}}),
    ("GET", "/datastore/dataset", ANNOTATOR, {"params": {"limit_cases": 0}}),
    ("GET", "/logs/", ADMIN, {"params": {"lines": 1}}),
    ("GET", "/logs/gpu", ADMIN, {}),
    ("GET", "/session/no-such-session", USER, {}),
    ("DELETE", "/session/no-such-session", USER, {}),
    ("PUT", "/session/", USER, {"params": {"uncompress": "true"}, "files": {"files": ("x.nii.gz", b"x")}}),
    ("GET", "/segloop/models/segmentation", USER, {}),
    ("POST", "/segloop/models/segmentation/rollback", ADMIN, {"json": {"version": 99}}),
    ("GET", "/segloop/activelearning", USER, {}),
    ("GET", "/segloop/uncertainty/no-such-token", USER, {}),
    ("GET", "/segloop/campaign", USER, {}),
    ("GET", "/segloop/campaign/reads", USER, {"params": {"image": "no_such_case"}}),
    ("GET", "/segloop/review", REVIEWER, {}),
    ("POST", "/segloop/review", REVIEWER, {"json": {"image": "no_such_case", "annotator": "x", "approve": True}}),
    ("GET", "/segloop/returned", ANNOTATOR, {"params": {"annotator": "x"}}),
    # not in the API documentation
    ("POST", "/reload", ADMIN, {}),
    ("GET", "/proxy/dicom/studies", USER, {}),
    ("GET", "/ohif/index.html", USER, {}),
    ("PUT", "/datastore/", ANNOTATOR, {"params": {"image": "../x"}, "files": {"file": ("x.nii.gz", b"x")}}),
]


@pytest.fixture(scope="module")
def server(auth_server):
    return auth_server


def call(server, method, path, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, server.url + path, headers=headers, timeout=60, **kwargs)


def one_role_below(role):
    return LADDER[: LADDER.index(role)]


def test_the_route_table_covers_every_documented_route(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    documented = {(m.upper(), p) for p, methods in schema["paths"].items() for m in methods}
    table = {(m, p.replace("segmentation", "{model}").replace("no_such_model", "{model}")) for m, p, _, _ in ROUTES}
    normalise = {
        "/activelearning/no_such_strategy": "/activelearning/{strategy}",
        "/scoring/no_such_method": "/scoring/{method}",
        "/session/no-such-session": "/session/{session_id}",
        "/segloop/uncertainty/no-such-token": "/segloop/uncertainty/{token}",
        "/segloop/models/{model}/rollback": "/segloop/models/{model}/rollback",
    }
    table = {(m, normalise.get(p, p)) for m, p in table}
    missing = documented - table - PUBLIC
    assert not missing, f"routes without an auth check in this test: {sorted(missing)}"


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_checks_the_token_and_the_role(server, realm, route):
    method, path, role, kwargs = route
    wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    roles = [role] if role else []
    answers = {
        "no token": call(server, method, path, None, **kwargs).status_code,
        "expired": call(server, method, path, realm.token(roles, expires_in=-60), **kwargs).status_code,
        "wrong signature": call(server, method, path, realm.token(roles, key=wrong_key), **kwargs).status_code,
        "role too low": call(server, method, path, realm.token(one_role_below(role)), **kwargs).status_code if role else None,
        "valid": call(server, method, path, realm.token([role] if role else []), **kwargs).status_code,
    }
    print(method, path, role, answers)
    assert answers["no token"] == 401 and answers["expired"] == 401 and answers["wrong signature"] == 401
    assert answers["role too low"] == (403 if role else None)
    assert answers["valid"] not in (401, 403) and answers["valid"] < 500


def test_failures_say_what_is_wrong(server, realm):
    assert "no bearer token" in call(server, "GET", "/info/").json()["detail"]
    assert "expired" in call(server, "GET", "/info/", realm.token([USER], expires_in=-60)).json()["detail"]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "signature" in call(server, "GET", "/info/", realm.token([USER], key=other)).json()["detail"]
    unsigned = jwt.encode({"preferred_username": "x", "realm_access": {"roles": [ADMIN]}, "exp": int(time.time()) + 600}, None, algorithm="none")
    assert call(server, "GET", "/info/", unsigned).status_code == 401
    r = call(server, "DELETE", "/datastore/image", realm.token([ANNOTATOR]), params={"id": "case_000"})
    assert r.status_code == 403 and ADMIN in r.json()["detail"]


def test_the_annotator_is_the_token_not_the_client_id(server, realm, sample_root):
    """Bookings and label provenance come from the token; a client-declared name is ignored."""
    token = realm.token([ANNOTATOR], username="dr_a")
    r = call(server, "POST", "/activelearning/first", token, json={"client_id": "mallory"})
    assert r.status_code == 200, r.text
    case, booked_by = r.json()["id"], r.json()["client_id"]
    assert booked_by == "dr_a"
    bookings = call(server, "GET", "/segloop/activelearning", token).json()["assignments"]
    assert bookings[case]["client_id"] == "dr_a"
    with open(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz"), "rb") as f:
        r = call(server, "PUT", "/datastore/label", token, params={"image": case}, data={"params": json.dumps({"user": "mallory"})}, files={"label": (f"{case}.nii.gz", f)})
    assert r.status_code == 200, r.text
    assert r.json()["read"]["annotator"] == "dr_a"  # the server's campaign keeps each annotator's read
    reads = call(server, "GET", "/segloop/campaign/reads", token, params={"image": case}).json()["reads"]
    assert list(reads) == ["dr_a"] and reads["dr_a"]["user"] == "dr_a" and "mallory" not in json.dumps(reads)


def test_the_slicer_modules_client_logs_in_through_the_server(server, realm):
    """SegLoopLib's login (the Slicer module's): the password goes to MONAI Label's /auth/token,
    which asks the realm; the token that comes back opens the server; a wrong password opens nothing."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop"))
    from SegLoopLib import SegLoopClient, SegLoopError

    client = SegLoopClient(server.url)
    assert client.auth_enabled()
    with pytest.raises(SegLoopError):
        client.info()  # no token yet
    client.login("dr_k", "s3cret")
    assert client.http.token and client.info()["labels"]
    assert jwt.decode(client.http.token, options={"verify_signature": False})["preferred_username"] == "dr_k"
    other = SegLoopClient(server.url)
    with pytest.raises(SegLoopError):
        other.login("dr_k", "wrong")
    assert other.http.token is None

