"""Write a generated phantom as a DICOM CT Image Storage series: one file per slice.

What a PACS and its viewers need to rebuild the volume is all there: Image Position and
Orientation (Patient) in DICOM's LPS frame, Pixel Spacing (row spacing first), Slice Thickness,
Rescale Slope / Intercept (stored values are HU + 1024, 12 bits, unsigned), Study, Series and
Frame of Reference UIDs, and a fake patient and study. UIDs are derived from the seed and case
id, so the same seed always gives the same series.

Voxel axes: the NIfTI image is ``[I, J, K]`` with a voxel -> RAS affine. A slice is ``image[:, :, k]``;
its pixel ``(row r, column c)`` is voxel ``(i=c, j=r, k)``, so the row direction (along a row, as
the column index grows) is the i axis and the column direction the j axis, both in LPS. RAS- and
LPS-ordered phantoms therefore give series whose orientation cosines differ in sign, as scanners'
do. ``shuffled`` writes the files in a random order with Instance Numbers that do not follow the
slice position: a reader must sort by position, not by file name or number.
"""

import datetime
import os
from typing import Dict, Optional

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
HU_OFFSET = 1024  # stored value = HU + 1024; Rescale Intercept -1024
STUDY_DATE = datetime.date(2026, 1, 1)


def series_uids(seed: int, case_id: str) -> Dict[str, str]:
    """Study, Series and Frame of Reference UIDs of one case, the same for the same seed and id."""
    return {
        key: generate_uid(entropy_srcs=["segloop-phantom", str(seed), case_id, key])
        for key in ("study", "series", "frame_of_reference")
    }


def slice_geometry(affine: np.ndarray) -> Dict[str, np.ndarray]:
    """From a voxel -> RAS affine: spacing (mm per i, j, k), the LPS direction of each voxel axis
    (unit columns), and the LPS position of voxel (0, 0, 0)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = RAS_TO_LPS @ affine[:3, :3] / spacing
    return {"spacing": spacing, "directions": directions, "origin": RAS_TO_LPS @ affine[:3, 3]}


def write_ct_series(
    image: np.ndarray,
    affine: np.ndarray,
    folder: str,
    case_id: str,
    seed: int,
    shuffled: bool = False,
    description: Optional[str] = None,
) -> Dict[str, str]:
    """Write ``image`` (HU, ``[I, J, K]``) as ``folder/<n>.dcm``; returns the case's UIDs and the
    number of files. The folder is created; existing files in it are overwritten."""
    if image.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {image.shape}")
    os.makedirs(folder, exist_ok=True)
    uids = series_uids(seed, case_id)
    geometry = slice_geometry(affine)
    spacing, directions, origin = geometry["spacing"], geometry["directions"], geometry["origin"]
    stored = (np.asarray(image, dtype=np.int32) + HU_OFFSET).clip(0, 4095).astype(np.uint16)
    slices = image.shape[2]
    rng = np.random.default_rng([seed, slices])
    instance_numbers = rng.permutation(slices) + 1 if shuffled else np.arange(slices) + 1
    file_order = rng.permutation(slices) if shuffled else np.arange(slices)
    patient = f"SEGLOOP-{seed:03d}-{case_id}"
    for position, k in enumerate(file_order):
        ds = _ct_slice(uids, patient, case_id, description)
        ds.InstanceNumber = int(instance_numbers[k])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uids["series"], str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        corner = origin + directions[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [round(float(v), 4) for v in corner]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*directions[:, 0], *directions[:, 1])]
        ds.SliceLocation = round(float(corner[2]), 4)
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]  # between rows, between columns
        ds.SliceThickness = round(float(spacing[2]), 6)
        ds.SpacingBetweenSlices = round(float(spacing[2]), 6)
        ds.Rows, ds.Columns = int(image.shape[1]), int(image.shape[0])
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(os.path.join(folder, f"{position:04d}.dcm"), write_like_original=False)
    return dict(uids, files=str(slices), patient_id=patient)


def _ct_slice(uids: Dict[str, str], patient: str, case_id: str, description: Optional[str]) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = f"Phantom^{case_id}"
    ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = case_id.replace("_", "")[:16]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SegLoop abdominal CT phantom"
    ds.SeriesDescription = description or f"Phantom CT {case_id}"
    ds.SeriesNumber = 1
    ds.Manufacturer = "SegLoop"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -HU_OFFSET, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds
