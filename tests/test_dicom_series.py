"""Sample data as DICOM CT series: the volume MONAI Label's converter rebuilds is the phantom, voxel
for voxel and in the same world position, for RAS- and LPS-ordered cases and for a series whose
files and Instance Numbers do not follow the slice order."""

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monailabel.datastore.utils.convert import dicom_to_nifti

from segloop.data.dicom_series import series_uids
from segloop.data.sample import write_sample_data


@pytest.fixture(scope="module")
def dicom_sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dicom_sample"))
    manifest = write_sample_data(root, cases=3, seed=5, progress=None, shape=(40, 36, 12), spacing=(7.0, 7.5, 9.0), dicom=True)
    return root, manifest


def test_each_case_is_a_ct_series_with_the_attributes_a_pacs_needs(dicom_sample):
    root, manifest = dicom_sample
    for case in manifest["cases"]:
        folder = os.path.join(root, "dicom", case["case_id"])
        files = sorted(os.listdir(folder))
        assert len(files) == 12
        ds = pydicom.dcmread(os.path.join(folder, files[0]))
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (case["dicom"]["study"], case["dicom"]["series"])
        assert ds.FrameOfReferenceUID == case["dicom"]["frame_of_reference"]
        assert ds.Rows == 36 and ds.Columns == 40  # rows follow j, columns follow i
        assert [float(v) for v in ds.PixelSpacing] == [7.5, 7.0] and float(ds.SliceThickness) == 9.0
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1) and ds.PatientID.startswith("SEGLOOP-005")
    assert series_uids(5, "case_000") == series_uids(5, "case_000") != series_uids(6, "case_000")
    assert len({c["dicom"]["series"] for c in manifest["cases"]}) == 3


def test_the_shuffled_series_has_numbers_and_files_out_of_slice_order(dicom_sample):
    root, manifest = dicom_sample
    case = manifest["cases"][1]
    assert case["dicom"]["shuffled"] and not manifest["cases"][0]["dicom"]["shuffled"]
    folder = os.path.join(root, "dicom", case["case_id"])
    slices = [pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True) for f in sorted(os.listdir(folder))]
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    numbers = [int(s.InstanceNumber) for s in slices]
    assert z != sorted(z) and z != sorted(z, reverse=True)
    by_position = [n for _, n in sorted(zip(z, numbers))]
    assert by_position != sorted(by_position) and sorted(numbers) == list(range(1, 13))


def test_monai_labels_converter_rebuilds_the_phantom_voxel_for_voxel(dicom_sample):
    root, manifest = dicom_sample
    orientations = set()
    for case in manifest["cases"]:
        case_id = case["case_id"]
        orientations.add(case["orientation"])
        converted = nib.load(dicom_to_nifti(os.path.join(root, "dicom", case_id)))
        original = nib.load(os.path.join(root, "studies", f"{case_id}.nii.gz"))
        # compare in a common (RAS) voxel order: the converter writes LPS-ordered voxels
        a, b = nib.as_closest_canonical(converted), nib.as_closest_canonical(original)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), case_id
        assert np.allclose(a.affine, b.affine, atol=1e-3), (case_id, a.affine, b.affine)
    assert orientations == {"RAS", "LPS"}
