"""A DICOMweb PACS as SegLoop's datastore: MONAI Label's ``DICOMWebDatastore`` with SegLoop's checks,
DICOM SEG written and read by highdicom, and a bounded series cache.

Differences from upstream's datastore (which it extends, so ids are Series Instance UIDs and the
endpoints stay the same):

* **final labels go to the PACS as DICOM SEG** (STOW-RS) made by ``segloop.dicom.seg``: coded
  segments, display colours, the annotator as Content Creator, and the Segment Algorithm Type from
  what the server served for the case (``proposal_of``): AUTOMATIC when the submitted label is the
  proposal unchanged, SEMIAUTOMATIC when it was edited, MANUAL when no model proposed anything.
  The model and version that proposed it are the algorithm's name and version;
* a submitted label must be an integer volume on the image's exact grid with known label indices
  (the local datastore's check), otherwise 4xx and nothing is stored;
* a SEG read from the PACS is checked against its series (``read_segmentation``) and put on the
  converted image's grid voxel for voxel; one that does not fit is skipped with a warning;
* a series that cannot be downloaded or converted answers 422 with the reason; the campaign goes on;
* the local cache of series (DICOM files and the converted NIfTI) keeps at most
  ``max_cached_series`` series: the least recently used are removed first; labels are kept.
"""

import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import nibabel as nib
import numpy as np
import pydicom
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series

from segloop.dicom.seg import SegGeometryError, read_segmentation, reorient_to, write_segmentation
from segloop.errors import bad_request, unprocessable
from segloop.validation import check_id, check_label_matches, read_header

logger = logging.getLogger(__name__)

DEFAULT_MAX_CACHED_SERIES = 64
FINAL = "final"


def read_series(folder: str) -> List[pydicom.Dataset]:
    """Every DICOM file of a downloaded series folder (any order)."""
    return [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if not f.startswith(".")]


class SegLoopDICOMwebDatastore(DICOMWebDatastore):
    def __init__(
        self,
        client,
        labels: Mapping[str, int],
        search_filter: Optional[Dict[str, Any]] = None,
        cache_path: Optional[str] = None,
        max_cached_series: int = DEFAULT_MAX_CACHED_SERIES,
        proposal_of: Optional[Callable[[str], Optional[Dict[str, Any]]]] = None,
        software_version: str = "0",
    ):
        self.label_map = dict(labels)
        self.max_cached_series = max(1, int(max_cached_series))
        self.proposal_of = proposal_of
        self.software_version = software_version
        super().__init__(client, dict(search_filter or {"Modality": "CT"}), cache_path=cache_path)

    # -- images -------------------------------------------------------------------------------
    def _series_dir(self, image_id: str) -> str:
        return os.path.join(self._datastore.image_path(), check_id(image_id, what="series id"))

    def get_image_uri(self, image_id: str) -> str:
        folder = self._series_dir(image_id)
        try:
            uri = super().get_image_uri(image_id)
        except Exception as e:  # a PACS answer or a series that does not convert
            shutil.rmtree(folder, ignore_errors=True)
            raise unprocessable(f"series {image_id} could not be fetched or converted: {type(e).__name__}: {e}") from e
        os.utime(folder if os.path.isdir(folder) else uri)  # most recently used
        self._evict(keep=image_id)
        return uri

    def _evict(self, keep: str) -> None:
        """Remove the least recently used cached series beyond ``max_cached_series``."""
        root = self._datastore.image_path()
        cached = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d != keep]
        excess = len(cached) + 1 - self.max_cached_series
        if excess <= 0:
            return
        for series in sorted(cached, key=lambda d: os.stat(os.path.join(root, d)).st_mtime)[:excess]:
            shutil.rmtree(os.path.join(root, series), ignore_errors=True)
            nifti = os.path.join(root, f"{series}.nii.gz")
            if os.path.exists(nifti):
                os.unlink(nifti)
            logger.info(f"series cache: removed {series} (least recently used of {len(cached) + 1})")

    # -- labels -------------------------------------------------------------------------------
    def algorithm_of(self, image_id: str, label: np.ndarray) -> Dict[str, Optional[str]]:
        """The SEG's algorithm type, model and version, from the proposal served for this case."""
        proposal = self.proposal_of(image_id) if self.proposal_of else None
        if not proposal or not os.path.exists(proposal.get("file", "")):
            return {"algorithm_type": "MANUAL", "model": None, "model_version": None}
        proposed = np.asarray(nib.load(proposal["file"]).dataobj)
        unchanged = proposed.shape == label.shape and np.array_equal(proposed, label)
        return {
            "algorithm_type": "AUTOMATIC" if unchanged else "SEMIAUTOMATIC",
            "model": proposal.get("model", "segmentation"),
            "model_version": None if proposal.get("version") is None else str(proposal["version"]),
        }

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = "") -> str:
        label_tag = check_id(label_tag, what="label tag")
        image_uri = self.get_image_uri(image_id)
        check_label_matches(label_filename, read_header(image_uri), self.label_map)
        info = dict(label_info or {})
        if label_tag == FINAL:
            label_nii = nib.load(label_filename)
            label = np.asarray(label_nii.dataobj).astype(np.uint8)
            algorithm = self.algorithm_of(image_id, label)
            try:
                seg = write_segmentation(
                    label, label_nii.affine, read_series(self._series_dir(image_id)), self.label_map,
                    algorithm["algorithm_type"], annotator=info.get("annotator") or info.get("client_id"),
                    model=algorithm["model"], model_version=algorithm["model_version"],
                    software_version=self.software_version,
                )
            except SegGeometryError as e:
                raise bad_request(f"label for series {image_id}: {e}") from e
            self._client.store_instances(datasets=[seg])
            info.update(
                SeriesInstanceUID=str(seg.SeriesInstanceUID), SOPInstanceUID=str(seg.SOPInstanceUID),
                StudyInstanceUID=str(seg.StudyInstanceUID), segment_algorithm_type=algorithm["algorithm_type"],
            )
            logger.info(f"stored DICOM SEG {seg.SeriesInstanceUID} ({algorithm['algorithm_type']}) for series {image_id}")
            DICOMWebDatastore.get_labeled_images.cache_clear()  # upstream caches the PACS's answer for hours
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        check_id(label_id, what="label id")
        label_tag = check_id(label_tag, what="label tag")
        if label_tag != FINAL or not image_id:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        cached = LocalDatastore.get_label_uri(self, image_id, label_tag)
        if cached and os.path.exists(cached):
            return cached
        return self._fetch_seg(label_id, image_id)

    def _fetch_seg(self, seg_series: str, image_id: str) -> str:
        """Download SEG series ``seg_series`` and store it as the NIfTI final label of ``image_id``."""
        image_uri = self.get_image_uri(image_id)
        with tempfile.TemporaryDirectory() as folder:
            dicom_web_download_series(None, seg_series, folder, self._client)
            segs = read_series(folder)
            if not segs:
                return ""
            try:
                label, affine = read_segmentation(segs[0], read_series(self._series_dir(image_id)), self.label_map)
                image = nib.load(image_uri)
                on_image = reorient_to(label, affine, image.affine, image.shape[:3])
            except ValueError as e:
                logger.warning(f"DICOM SEG {seg_series} of series {image_id} skipped: {e}")
                return ""
            out = os.path.join(folder, f"{image_id}.nii.gz")
            nib.save(nib.Nifti1Image(on_image.astype(np.uint8), image.affine), out)
            info = {"SeriesInstanceUID": seg_series, "from_pacs": True, "fetched": time.time()}
            LocalDatastore.save_label(self, image_id, out, FINAL, info)
        return LocalDatastore.get_label_uri(self, image_id, FINAL)
