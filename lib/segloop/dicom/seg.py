"""DICOM SEG in and out of a campaign's label maps, written and read with highdicom.

A label map here is ``[I, J, K]`` with a voxel -> RAS affine (what MONAI Label's converter makes
of a series, and what clients submit). DICOM SEG works per source slice, so both directions go
through the **series grid**: the source slices sorted along their normal, voxel ``(i, j, k)`` =
(column, row, slice). A label map is brought onto that grid by axis flips and permutations only
(``nibabel.orientations``); anything else (another spacing, an offset, a tilted grid) is a
geometry mismatch and is refused with a ``SegGeometryError`` that says what differs.

One segment per campaign label (segment numbers 1..n in label-index order), each with
* a coded Segmented Property Category and Type (SNOMED CT: liver, spleen, kidney; a tumour is a
  Neoplasm, category Morphologically Abnormal Structure; other names are coded as Tissue),
* the recommended display colour (CIELab, the Slicer module's colour for that label),
* the Segment Algorithm Type (AUTOMATIC: an unedited proposal; SEMIAUTOMATIC: a proposal edited
  by a person; MANUAL: drawn without a model) and, unless manual, the algorithm's name (SegLoop)
  and version (the model and its version that proposed it).
The annotator is the Content Creator.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import highdicom as hd
import numpy as np
from nibabel import orientations
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from skimage.color import rgb2lab

ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
# label name -> (category, type)
LABEL_CODES: Dict[str, Tuple[Code, Code]] = {
    "liver": (ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver")),
    "spleen": (ANATOMICAL_STRUCTURE, Code("78961009", "SCT", "Spleen")),
    "kidney": (ANATOMICAL_STRUCTURE, Code("64033007", "SCT", "Kidney")),
    "tumor": (ABNORMAL_STRUCTURE, Code("108369006", "SCT", "Neoplasm")),
    "tumour": (ABNORMAL_STRUCTURE, Code("108369006", "SCT", "Neoplasm")),
}
# RGB 0-1, the Slicer module's LABEL_COLOURS (a test keeps the two the same).
DISPLAY_COLOURS: Dict[str, Tuple[float, float, float]] = {
    "liver": (0.87, 0.51, 0.29),
    "spleen": (0.62, 0.36, 0.71),
    "kidney": (0.89, 0.82, 0.25),
    "tumor": (0.85, 0.13, 0.16),
}
OTHER_COLOUR = (0.60, 0.60, 0.60)
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
MANUFACTURER = "SegLoop"
POSITION_TOLERANCE_MM = 0.05  # positions are written as decimal strings, rounded


class SegGeometryError(ValueError):
    """A label map or SEG that does not lie on its source series' grid."""


# -- the series grid --------------------------------------------------------------------------
def _normal(ds: Dataset) -> np.ndarray:
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def sort_series(datasets: Sequence[Dataset]) -> List[Dataset]:
    """The slices of one series in order along their normal (not by file or Instance Number)."""
    if not datasets:
        raise SegGeometryError("the series has no slices")
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def series_affine(slices: Sequence[Dataset]) -> np.ndarray:
    """Voxel ``(column, row, slice)`` -> RAS mm of sorted ``slices`` (4 x 4)."""
    first = slices[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(slices) > 1:
        step = (np.asarray(slices[-1].ImagePositionPatient, dtype=float) - origin) / (len(slices) - 1)
    else:
        step = _normal(first) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def reorient_to(label: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``label`` (voxel -> RAS ``affine``) on the grid of ``target_affine`` / ``shape`` by axis
    flips and permutations only; ``SegGeometryError`` when that does not make the grids the same."""
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.io_orientation(target_affine))
    moved = orientations.apply_orientation(np.asarray(label), transform)
    moved_affine = affine @ orientations.inv_ornt_aff(transform, np.asarray(label).shape)
    if moved.shape != tuple(shape):
        raise SegGeometryError(f"the label map has {moved.shape} voxels on the image's axes; the image has {tuple(shape)}")
    worst = float(np.abs(moved_affine - target_affine).max())
    if worst > POSITION_TOLERANCE_MM:
        raise SegGeometryError(
            f"the label map's grid is not the image's (spacing, origin or direction differ by up to {worst:.3g} mm)"
        )
    return moved


def on_series_grid(label: np.ndarray, affine: np.ndarray, slices: Sequence[Dataset]) -> np.ndarray:
    """``label`` (``[I, J, K]``, voxel -> RAS ``affine``) reordered onto the grid of sorted ``slices``."""
    shape = (int(slices[0].Columns), int(slices[0].Rows), len(slices))
    return reorient_to(label, affine, series_affine(slices), shape)


# -- writing ----------------------------------------------------------------------------------
def _display_colour(name: str) -> List[int]:
    rgb = np.asarray(DISPLAY_COLOURS.get(name.lower(), OTHER_COLOUR), dtype=float)
    lab = rgb2lab(rgb[None, None, :])[0, 0]
    return list(hd.color.CIELabColor(float(lab[0]), float(lab[1]), float(lab[2])).value)


def segment_descriptions(
    labels: Mapping[str, int], algorithm_type: str, model: Optional[str] = None, model_version: Optional[str] = None
) -> List[hd.seg.SegmentDescription]:
    """One description per label, segment numbers 1..n in label-index order."""
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm_type!r}")
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name=MANUFACTURER, family=Code("123110", "DCM", "Artificial Intelligence"),
            version=f"{model or 'model'} v{model_version if model_version is not None else '?'}",
        )
    descriptions = []
    for number, (name, _) in enumerate(sorted(labels.items(), key=lambda kv: kv[1]), start=1):
        category, kind = LABEL_CODES.get(name.lower(), (TISSUE, TISSUE))
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=algorithm_type, algorithm_identification=algorithm,
        )
        description.RecommendedDisplayCIELabValue = _display_colour(name)
        descriptions.append(description)
    return descriptions


def write_segmentation(
    label: np.ndarray,
    affine: np.ndarray,
    source: Sequence[Dataset],
    labels: Mapping[str, int],
    algorithm_type: str,
    annotator: Optional[str] = None,
    model: Optional[str] = None,
    model_version: Optional[str] = None,
    software_version: str = "0",
) -> hd.seg.Segmentation:
    """A DICOM SEG of ``label`` (values = label indices of ``labels``) over the ``source`` series."""
    slices = sort_series(source)
    grid = on_series_grid(label, affine, slices)
    unknown = sorted(set(np.unique(grid).tolist()) - {0} - set(labels.values()))
    if unknown:
        raise ValueError(f"the label map holds values {unknown} that are not labels of this campaign {dict(labels)}")
    segment_of = np.zeros(max(labels.values()) + 1, dtype=np.uint8)
    for number, (_, index) in enumerate(sorted(labels.items(), key=lambda kv: kv[1]), start=1):
        segment_of[index] = number
    frames = np.ascontiguousarray(np.transpose(segment_of[grid], (2, 1, 0)))  # [slice, row, column]
    return hd.seg.Segmentation(
        source_images=slices,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, algorithm_type, model, model_version),
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"SegLoop {model}" if model else "SegLoop",
        software_versions=software_version,
        device_serial_number="0",
        content_description="SegLoop label",
        content_creator_name=_person_name(annotator),
        content_label="SEGLOOP",
        omit_empty_frames=False,
    )


def _person_name(annotator: Optional[str]) -> Optional[str]:
    if not annotator:
        return None
    # the annotator's id as the family name; the trailing caret marks a one-component name
    return "".join(c if c.isalnum() or c in " -_." else "_" for c in annotator)[:63] + "^"


# -- reading ----------------------------------------------------------------------------------
def read_segmentation(seg: Dataset, source: Sequence[Dataset], labels: Mapping[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The label map (``[I, J, K]`` on the series grid, values = label indices) and its RAS affine.

    Refused (``SegGeometryError``) when the SEG is not on the series: another Frame of Reference,
    other instances, another matrix or frames at other positions. Refused (``ValueError``) when a
    segment's label is not one of the campaign's."""
    seg = seg if isinstance(seg, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(seg)
    slices = sort_series(source)
    first = slices[0]
    if seg.FrameOfReferenceUID != first.FrameOfReferenceUID:
        raise SegGeometryError("the SEG's Frame of Reference is not the series'")
    if (int(seg.Rows), int(seg.Columns)) != (int(first.Rows), int(first.Columns)):
        raise SegGeometryError(f"the SEG's frames are {seg.Rows}x{seg.Columns}; the series' slices {first.Rows}x{first.Columns}")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in slices}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        if referenced not in by_uid:
            raise SegGeometryError(f"the SEG refers to instance {referenced}, which is not in this series")
        at = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        expected = np.asarray(by_uid[referenced].ImagePositionPatient, dtype=float)
        if np.abs(at - expected).max() > POSITION_TOLERANCE_MM:
            raise SegGeometryError(f"a SEG frame lies at {at.tolist()}, its source slice at {expected.tolist()}")
    label_of = {}
    for number in seg.get_segment_numbers():
        name = str(seg.get_segment_description(number).SegmentLabel)
        match = {k.lower(): v for k, v in labels.items()}.get(name.lower())
        if match is None:
            raise ValueError(f"SEG segment {number} {name!r} is not a label of this campaign {dict(labels)}")
        label_of[number] = match
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in slices], combine_segments=True,
        skip_overlap_checks=True,
    )  # [slice, row, column], segment numbers
    lookup = np.zeros(max(label_of, default=0) + 1, dtype=np.uint8)
    for number, index in label_of.items():
        lookup[number] = index
    return np.transpose(lookup[frames], (2, 1, 0)), series_affine(slices)
