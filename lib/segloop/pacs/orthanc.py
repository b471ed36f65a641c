"""A local PACS for SegLoop: Orthanc with its DICOMweb plugin, on loopback, from Debian's packages.

``make serve-pacs`` and the tests use it the same way:

* ``install_orthanc()`` runs ``apt-get install orthanc orthanc-dicomweb`` when ``Orthanc`` is not on
  the PATH (root needed; Debian's service is not started, we run our own process);
* ``OrthancServer(folder, http_port)`` writes the configuration SegLoop ships (the template
  below: storage in ``folder``, HTTP on ``http_port``, remote access off so only loopback clients
  are served, the DICOM (DIMSE) listener off, DICOMweb at ``/dicom-web/``, optional basic-auth
  users), starts ``Orthanc`` and waits until ``/system`` answers;
* ``upload(folder)`` posts every DICOM file under a folder through Orthanc's REST API
  (``POST /instances``), in the order the files are listed: a series stored out of order stays so.

SegLoop then reads and writes through DICOMweb only (QIDO-RS, WADO-RS, STOW-RS), as with any PACS.
"""

import json
import os
import shutil
import socket
import subprocess
import time
from typing import Dict, List, Optional

import requests

PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


class OrthancError(RuntimeError):
    """Orthanc could not be installed, started or reached."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_orthanc() -> Optional[str]:
    return shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or None


def dicomweb_plugin() -> Optional[str]:
    for folder in PLUGIN_FOLDERS:
        path = os.path.join(folder, DICOMWEB_PLUGIN)
        if os.path.exists(path):
            return path
    return None


def install_orthanc(progress=print) -> str:
    """The Orthanc executable, installed from Debian's packages first if absent."""
    if find_orthanc() and dicomweb_plugin():
        return find_orthanc()
    if os.geteuid() != 0:
        raise OrthancError("Orthanc is not installed and installing it needs root: apt-get install orthanc orthanc-dicomweb")
    progress("Installing Orthanc and its DICOMweb plugin from Debian (apt-get install orthanc orthanc-dicomweb) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 and command[1] == "install":
            raise OrthancError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    if not (find_orthanc() and dicomweb_plugin()):
        raise OrthancError("apt-get finished but Orthanc or its DICOMweb plugin is still missing")
    return find_orthanc()


def orthanc_config(folder: str, http_port: int, users: Optional[Dict[str, str]] = None) -> Dict:
    """The configuration SegLoop ships for its local PACS."""
    return {
        "Name": "SegLoop PACS",
        "StorageDirectory": os.path.join(folder, "storage"),
        "IndexDirectory": os.path.join(folder, "storage"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # only clients on this machine
        "DicomServerEnabled": False,  # DICOMweb only: no DIMSE listener
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "StableAge": 2,
        "OverwriteInstances": True,
    }


class OrthancServer:
    """One Orthanc process with SegLoop's configuration; a context manager that stops it on exit."""

    def __init__(self, folder: str, http_port: Optional[int] = None, users: Optional[Dict[str, str]] = None):
        self.folder = os.path.abspath(folder)
        self.http_port = http_port or free_port()
        self.users = users or {}
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self):
        return next(iter(self.users.items())) if self.users else None

    def start(self, timeout: float = 60.0) -> "OrthancServer":
        executable = install_orthanc()
        os.makedirs(self.folder, exist_ok=True)
        config_path = os.path.join(self.folder, "orthanc.json")
        with open(config_path, "w") as f:
            json.dump(orthanc_config(self.folder, self.http_port, self.users), f, indent=2)
        log = open(os.path.join(self.folder, "orthanc.log"), "ab")
        self.process = subprocess.Popen([executable, config_path], stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:  # not ready, or interrupted while waiting: no Orthanc left behind
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode}; see {self.folder}/orthanc.log")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise OrthancError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def upload(self, folder: str) -> List[str]:
        """POST every ``.dcm`` file under ``folder`` (sorted walk); returns the Orthanc instance ids."""
        ids = []
        for root, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                if not name.endswith(".dcm"):
                    continue
                with open(os.path.join(root, name), "rb") as f:
                    answer = requests.post(f"{self.url}/instances", data=f.read(), auth=self.auth, timeout=60)
                if not answer.ok:
                    raise OrthancError(f"Orthanc refused {name}: {answer.status_code} {answer.text[:300]}")
                ids.append(answer.json()["ID"])
        return ids
