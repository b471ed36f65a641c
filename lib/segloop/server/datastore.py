"""Local datastore that validates what it stores and never leaves a half-written file.

Differences from MONAI Label's ``LocalDatastore`` (which it extends, so the folder layout,
``datastore_v2.json`` and every endpoint stay the same):

* image ids and label tags must be plain names (no ``../``); unknown ids answer 404;
* an uploaded image must be a whole, readable 3-D NIfTI within ``max_voxels`` (every voxel is
  decoded before anything is stored); an existing id is not silently overwritten;
* a label must be an integer volume on the image's exact grid (shape and affine) using only known
  label indices;
* images, labels and ``datastore_v2.json`` are written to a temporary file (``.tmp-*``) and
  renamed; a scan never lists such a file (the server removes the ones a crash left when it starts);
* with auto reload on, the folder watcher hears only of files created, deleted, modified or moved
  (upstream's also heard every open and close, so each image a training or scoring run read cost
  the server a round of pattern matching), and hidden files are ignored.
"""

import fnmatch
import logging
import os
import time
from typing import Any, Dict, Mapping

from filelock import FileLock
from watchdog.events import (
    DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent,
    FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent, PatternMatchingEventHandler,
)
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from segloop.errors import conflict, not_found
from segloop.io import atomic_copy, atomic_path
from segloop.validation import DEFAULT_MAX_VOXELS, check_id, check_image, check_label_matches, read_header

logger = logging.getLogger(__name__)

WATCHED_EVENTS = [
    FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
    DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent,
]

class SegLoopDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, labels: Mapping[str, int], max_voxels: int = DEFAULT_MAX_VOXELS, **kwargs):
        self.label_map = dict(labels)
        self.max_voxels = max_voxels
        super().__init__(datastore_path, **kwargs)
        self._watch_changes_only()

    def _watch_changes_only(self) -> None:
        observer, handler = getattr(self, "_observer", None), getattr(self, "_handler", None)
        if observer is None or handler is None:
            return
        quiet = PatternMatchingEventHandler(patterns=list(handler.patterns or []), ignore_patterns=["*/.*"])
        quiet.on_created, quiet.on_deleted, quiet.on_modified = handler.on_created, handler.on_deleted, handler.on_modified
        observer.unschedule_all()
        observer.schedule(quiet, self._datastore_path, recursive=True, event_filter=WATCHED_EVENTS)
        self._handler = quiet

    def _list_files(self, path, patterns):
        """Upstream's folder scan, minus hidden files (temporaries of writes in progress)."""
        files = [f for f in os.listdir(path) if not f.startswith(".")]
        return {f: f for pattern in patterns for f in fnmatch.filter(files, pattern)}

    def _image_file(self, image_id: str) -> str:
        uri = self.get_image_uri(check_id(image_id))
        if not uri:
            raise not_found(f"image {image_id!r} is not in the datastore")
        return uri

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        derived, ext = self._to_id(os.path.basename(image_filename))
        image_id = check_id(image_id or derived)
        check_image(image_filename, what=f"image {image_id!r}", max_voxels=self.max_voxels)
        name = self._filename(image_id, ext)
        dest = os.path.join(self._datastore.image_path(), name)
        with FileLock(self._lock_file):  # checked under the lock: two uploads of one id cannot both pass
            if self._datastore.objects.get(image_id) or os.path.exists(dest):
                raise conflict(f"image {image_id!r} already exists; remove it first or choose another id")
            atomic_copy(image_filename, dest)
            info = dict(image_info or {}, ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        logger.info(f"Added image {image_id} ({name})")
        return image_id

    def check_label(self, image_id: str, label_filename: str) -> None:
        """A 4xx unless ``label_filename`` is an integer label map on ``image_id``'s grid with known values."""
        check_label_matches(label_filename, read_header(self._image_file(image_id)), self.label_map)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        label_tag = check_id(label_tag, what="label tag")
        self.check_label(image_id, label_filename)
        obj = self._datastore.objects[image_id]
        _, ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, ext)
        label_dir = self._datastore.label_path(label_tag)
        with FileLock(self._lock_file):
            os.makedirs(label_dir, exist_ok=True)
            atomic_copy(label_filename, os.path.join(label_dir, name))
            info = dict(label_info or {}, ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info(f"Saved label {label_tag}/{name}")
        return image_id

    def remove_image(self, image_id: str) -> None:
        self._image_file(image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Upstream's removal, and the label leaves the in-memory model at once (upstream waits for
        the folder watcher when auto reload is on, so a read right after still found it)."""
        path = self._label_file(label_id, label_tag)
        with FileLock(self._lock_file):
            if os.path.exists(path):
                os.unlink(path)
            obj = self._datastore.objects.get(label_id)
            if obj is not None:
                obj.labels.pop(label_tag, None)
            self._update_datastore_file(lock=False)
        logger.info(f"Removed label {label_tag}/{os.path.basename(path)}")

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        self._image_file(image_id)
        super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        self._label_file(label_id, label_tag)
        super().update_label_info(label_id, label_tag, info)

    def _label_file(self, image_id: str, label_tag: str) -> str:
        uri = self.get_label_uri(image_id, label_tag)
        if not uri:
            raise not_found(f"no {label_tag!r} label for image {image_id!r}")
        return uri

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_id(label_id, what="label id")
        check_id(label_tag, what="label tag")
        return super().get_label_uri(label_id, label_tag)

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            with atomic_path(self._datastore_config_path) as tmp:
                with open(tmp, "w") as f:
                    f.write(self._datastore.model_dump_json(exclude={"base_path"}, indent=2))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()
