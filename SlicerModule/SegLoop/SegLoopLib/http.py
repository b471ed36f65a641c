"""A small HTTP layer on the standard library (urllib), as Slicer's Python has no ``requests``
guarantee: JSON calls, multipart uploads, multipart answers, and the server's error messages.

Every non-2xx answer raises :class:`SegLoopError` with the status and the server's own message
(FastAPI's ``detail``), so the widget can show the clinician what to fix; a server that cannot
be reached, never answers or drops the connection raises it with status 0.
"""

import email.parser
import email.policy
import http.client
import json
import mimetypes
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, Iterable, Optional, Tuple


# Longest first: ".seg.nrrd" before ".nrrd", ".nii.gz" before ".gz"-less ".nii".
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")


class SegLoopError(Exception):
    def __init__(self, status: int, message: str, url: str = ""):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.url = status, message, url


def error_message(body: bytes) -> str:
    """The ``detail`` of a FastAPI error body, else the body's text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        detail = json.loads(text).get("detail")
        if isinstance(detail, list):  # validation errors: [{"loc": [...], "msg": ...}]
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
        return str(detail) if detail is not None else text
    except (ValueError, AttributeError):
        return text or "no message"


def encode_multipart(fields: Dict[str, str], files: Iterable[Tuple[str, str]]) -> Tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data request: text ``fields`` and (name, path) ``files``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files:
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{os.path.basename(path)}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        )
        with open(path, "rb") as f:
            parts.append(head.encode() + f.read() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def decode_multipart(body: bytes, content_type: str) -> Dict[str, Tuple[Optional[str], bytes]]:
    """``{field name: (filename, bytes)}`` of a multipart answer (MONAI Label's ``/infer``)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    out = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_payload(decode=True))
    return out


def _write(dest: str, data: bytes) -> str:
    with open(dest, "wb") as f:
        f.write(data)
    return dest


class Http:
    def __init__(self, url: str, timeout: float = 600.0):
        url = url.strip()
        if "://" not in url:  # "127.0.0.1:8000", as people type it
            url = f"http://{url}"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token: Optional[str] = None

    def _request(self, method: str, path: str, query=None, body: bytes = None, content_type: str = None):
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as e:
            raise SegLoopError(e.code, error_message(e.read()), url) from None
        except urllib.error.URLError as e:
            raise SegLoopError(0, f"cannot reach {self.url}: {e.reason}", url) from None
        except (OSError, http.client.HTTPException) as e:
            # Past the connection: a server that never answers (TimeoutError), drops the connection
            # (ConnectionResetError) or answers garbage (BadStatusLine) is unreachable to the caller too.
            reason = "no answer within {:g} s".format(self.timeout) if isinstance(e, TimeoutError) else (str(e) or type(e).__name__)
            raise SegLoopError(0, f"cannot reach {self.url}: {reason}", url) from None

    def json(self, method: str, path: str, query=None, payload: Any = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        data, _ = self._request(method, path, query, body, "application/json" if body is not None else None)
        return json.loads(data) if data else None

    def form(self, method: str, path: str, query=None, fields=None, files=()) -> Tuple[bytes, str]:
        """``(answer body, its content type)`` of a multipart/form-data request."""
        body, content_type = encode_multipart(fields or {}, files)
        data, headers = self._request(method, path, query, body, content_type)
        return data, headers.get("Content-Type", "")

    def urlencoded(self, path: str, fields: Dict[str, str]) -> Any:
        body = urllib.parse.urlencode(fields).encode()
        data, _ = self._request("POST", path, None, body, "application/x-www-form-urlencoded")
        return json.loads(data)

    def download(self, path: str, dest: str, query=None) -> str:
        data, _ = self._request("GET", path, query)
        return _write(dest, data)

    def download_as_served(self, path: str, folder: str, stem: str, query=None) -> str:
        """Download into ``folder/<stem><extension>``, the extension that of the file name the server
        sends (Content-Disposition): Slicer picks its reader by extension. Unknown or absent:
        ``.nii.gz``. The server's name itself is never used as a path."""
        data, headers = self._request("GET", path, query)
        served = (headers.get_filename() or "").lower()
        extension = next((e for e in IMAGE_EXTENSIONS if served.endswith(e)), ".nii.gz")
        return _write(os.path.join(folder, f"{stem}{extension}"), data)
