"""Pre- and post-processing pipelines shared by inference and training.

Every image is read as stored, reoriented to RAS, resampled to ``target_spacing`` (mm) and its
HU window ``(low, high)`` mapped to [0, 1]. Inference inverts the orientation and spacing steps on
the network output, so the returned label map has exactly the input's shape and affine.
"""

from typing import List, Mapping, Optional, Sequence, Tuple

from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapLabelValued,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from segloop.labels import channel_map, is_contiguous

DEFAULT_HU_WINDOW: Tuple[float, float] = (-150.0, 250.0)  # abdominal soft tissue


def load_and_normalize(
    target_spacing: Sequence[float],
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    label_key: Optional[str] = None,
    labels: Optional[Mapping[str, int]] = None,
) -> List:
    """Load -> channel first -> RAS -> ``target_spacing`` -> HU window to [0, 1].

    With ``label_key`` the label is carried along (nearest-neighbour resampling) and, when the
    label map is not contiguous, storage indices are mapped to network channels.
    """
    keys = ["image"] + ([label_key] if label_key else [])
    modes = ["bilinear"] + (["nearest"] if label_key else [])
    transforms: List = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        EnsureTyped(keys=keys, dtype=None),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=tuple(target_spacing), mode=modes),
        ScaleIntensityRanged(
            keys="image", a_min=float(hu_window[0]), a_max=float(hu_window[1]), b_min=0.0, b_max=1.0, clip=True
        ),
    ]
    if label_key and labels is not None and not is_contiguous(labels):
        mapping = channel_map(labels)
        transforms.append(MapLabelValued(keys=label_key, orig_labels=list(mapping), target_labels=list(mapping.values())))
    return transforms


def channels_to_storage(labels: Mapping[str, int]) -> Optional[MapLabelValued]:
    """Post-transform mapping network channels back to storage indices (None when identical)."""
    if is_contiguous(labels):
        return None
    mapping = channel_map(labels)
    return MapLabelValued(keys="pred", orig_labels=list(mapping.values()), target_labels=list(mapping))


class ChannelsInnermostd(MapTransform):
    """Hold each key's channel-first tensor (C, H, W, D) with its channels innermost in memory: the
    same values, shape and metadata, strides (1, W*D*C, D*C, C). torch's argmax over dim 0 of a
    default-layout tensor is an outer reduction, several times slower on a CPU than over a dimension
    stored innermost; placed before ``AsDiscreted(argmax=True)``, MONAI's argmax takes the fast path
    (the timings are in ``benchmarks/trials.md``)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].movedim(0, -1).contiguous().movedim(-1, 0)
        return d
