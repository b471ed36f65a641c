"""DICOM SEG round trip with highdicom: a label map on the image MONAI Label makes of a series goes
out as a SEG with coded segments and provenance, and comes back identical, voxel for voxel, for
RAS- and LPS-ordered series and for a series whose files are out of order. A SEG or label map that
does not lie on its series is refused."""

import io
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monailabel.datastore.utils.convert import dicom_to_nifti

from segloop.data.sample import write_sample_data
from segloop.dicom.seg import DISPLAY_COLOURS, SegGeometryError, read_segmentation, reorient_to, write_segmentation
from segloop.labels import DEFAULT_LABELS


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """case id -> (source datasets, converted image (nibabel), ground truth on that image's grid)."""
    root = str(tmp_path_factory.mktemp("seg_sample"))
    manifest = write_sample_data(root, cases=3, seed=5, progress=None, shape=(40, 36, 12), spacing=(7.0, 7.5, 9.0), dicom=True)
    out = {}
    for case in manifest["cases"]:
        folder = os.path.join(root, "dicom", case["case_id"])
        source = [pydicom.dcmread(os.path.join(folder, f)) for f in os.listdir(folder)]
        image = nib.load(dicom_to_nifti(folder))
        truth = nib.load(os.path.join(root, "ground_truth", f"{case['case_id']}.nii.gz"))
        label = reorient_to(np.asarray(truth.dataobj), truth.affine, image.affine, image.shape)
        out[case["case_id"]] = (source, image, label, case)
    return out


def roundtrip(seg):
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_seg_round_trip_is_voxel_exact_on_every_series(series):
    kinds = set()
    for case_id, (source, image, label, case) in series.items():
        assert set(np.unique(label)) >= {0, 1, 2, 3}
        seg = roundtrip(write_segmentation(label, image.affine, source, DEFAULT_LABELS, "AUTOMATIC",
                                           annotator="dr_a", model="segmentation", model_version="3"))
        back, affine = read_segmentation(seg, source, DEFAULT_LABELS)
        on_image = reorient_to(back, affine, image.affine, image.shape)
        assert np.array_equal(on_image, label), case_id
        kinds.add((case["orientation"], case["dicom"]["shuffled"]))
    assert {k[0] for k in kinds} == {"RAS", "LPS"} and any(k[1] for k in kinds)


def test_segments_are_coded_with_colour_algorithm_and_creator(series):
    source, image, label, _ = series["case_000"]
    seg = roundtrip(write_segmentation(label, image.affine, source, DEFAULT_LABELS, "SEMIAUTOMATIC",
                                       annotator="dr_a", model="segmentation", model_version="3"))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert seg.ContentCreatorName.family_name == "dr_a"
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(segments) == ["liver", "spleen", "kidney", "tumor"]
    types = {name: (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator)
             for name, s in segments.items()}
    assert types == {"liver": ("10200004", "SCT"), "spleen": ("78961009", "SCT"), "kidney": ("64033007", "SCT"),
                     "tumor": ("108369006", "SCT")}
    assert segments["tumor"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segments["liver"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    for s in segments.values():
        assert s.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert s.SegmentAlgorithmName == "SegLoop"
        assert s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "segmentation v3"
        assert len(s.RecommendedDisplayCIELabValue) == 3
    assert segments["liver"].RecommendedDisplayCIELabValue != segments["spleen"].RecommendedDisplayCIELabValue
    manual = roundtrip(write_segmentation(label, image.affine, source, DEFAULT_LABELS, "MANUAL", annotator="dr_b"))
    assert all(s.SegmentAlgorithmType == "MANUAL" and "SegmentAlgorithmName" not in s for s in manual.SegmentSequence)


def test_display_colours_are_the_slicer_modules():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "SlicerModule", "SegLoop"))
    from SegLoopLib.campaign import LABEL_COLOURS

    assert DISPLAY_COLOURS == LABEL_COLOURS


def test_a_label_map_or_seg_off_the_series_grid_is_refused(series):
    source, image, label, _ = series["case_000"]
    shifted = image.affine.copy()
    shifted[:3, 3] += [3.0, 0, 0]
    with pytest.raises(SegGeometryError, match="not the image's"):
        write_segmentation(label, shifted, source, DEFAULT_LABELS, "AUTOMATIC")
    with pytest.raises(SegGeometryError, match="voxels"):
        write_segmentation(label[:, :, :-1], image.affine, source, DEFAULT_LABELS, "AUTOMATIC")
    with pytest.raises(ValueError, match="not labels of this campaign"):
        write_segmentation(np.where(label == 1, 9, label), image.affine, source, DEFAULT_LABELS, "AUTOMATIC")
    seg = roundtrip(write_segmentation(label, image.affine, source, DEFAULT_LABELS, "AUTOMATIC"))
    other_source, *_ = series["case_002"]
    with pytest.raises(SegGeometryError, match="Frame of Reference"):
        read_segmentation(seg, other_source, DEFAULT_LABELS)
    moved = roundtrip(write_segmentation(label, image.affine, source, DEFAULT_LABELS, "AUTOMATIC"))
    moved.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient[2] += 4.5
    with pytest.raises(SegGeometryError, match="SEG frame lies at"):
        read_segmentation(moved, source, DEFAULT_LABELS)
    with pytest.raises(ValueError, match="not a label of this campaign"):
        read_segmentation(seg, source, {"liver": 1, "spleen": 2})
