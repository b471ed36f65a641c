"""From what the clinician placed in Slicer (RAS mm) to what the server wants (IJK voxel indices
of the image as stored), and from segments back to one label map of storage indices.

``ras_to_ijk`` is the 4x4 matrix Slicer gives for a volume (``GetRASToIJKMatrix``) as nested lists;
label-map arrays are in Slicer's array order ``[k, j, i]`` (``slicer.util.arrayFromVolume``).
"""

from typing import Dict, List, Mapping, Sequence

Matrix = Sequence[Sequence[float]]


def ras_to_ijk(matrix: Matrix, point: Sequence[float]) -> List[int]:
    """Nearest voxel ``[i, j, k]`` of a RAS point (mm)."""
    x, y, z = (float(v) for v in point)
    return [int(round(row[0] * x + row[1] * y + row[2] * z + row[3])) for row in matrix[:3]]


def points_to_ijk(matrix: Matrix, points: Sequence[Sequence[float]], shape_ijk: Sequence[int]) -> List[List[int]]:
    """IJK of each point; a point outside the volume raises ``ValueError`` naming it (1-based)."""
    out = []
    for n, point in enumerate(points, start=1):
        ijk = ras_to_ijk(matrix, point)
        if any(v < 0 or v >= s for v, s in zip(ijk, shape_ijk)):
            raise ValueError(f"point {n} at RAS {list(point)} lies outside the volume (voxel {ijk})")
        out.append(ijk)
    return out


def roi_to_box(matrix: Matrix, center: Sequence[float], size: Sequence[float], shape_ijk: Sequence[int]) -> List[List[int]]:
    """Two IJK corners ``[[i0, j0, k0], [i1, j1, k1]]`` (inclusive, clipped to the volume) of an
    axis-aligned ROI given by its RAS centre and size (mm)."""
    corners = [
        ras_to_ijk(matrix, [c + sx * s / 2 for c, s, sx in zip(center, size, signs)])
        for signs in ((-1, -1, -1), (1, 1, 1), (-1, 1, 1), (1, -1, -1), (1, -1, 1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1))
    ]
    low = [max(0, min(c[d] for c in corners)) for d in range(3)]
    high = [min(shape_ijk[d] - 1, max(c[d] for c in corners)) for d in range(3)]
    if any(lo > hi for lo, hi in zip(low, high)):
        raise ValueError("the box does not overlap the volume")
    return [low, high]


def compose_label_map(masks_kji: Mapping[str, "object"], labels: Mapping[str, int], out):
    """Fill ``out`` (a zero uint8 array ``[k, j, i]``, e.g. ``numpy.zeros``) with the storage index
    of each segment's boolean mask, and return it. Works on any array type with boolean indexing,
    so this module needs no numpy import.

    Segment names match label names case-insensitively; an unknown name raises ``ValueError`` (the
    server would refuse the label, better to say so before uploading). Where segments overlap, the
    label with the higher index wins.
    """
    by_name: Dict[str, int] = {name.lower(): index for name, index in labels.items()}
    unknown = [name for name in masks_kji if name.lower() not in by_name]
    if unknown:
        raise ValueError(f"segments {unknown} are not labels of this server: {sorted(labels)}")
    for name, mask in sorted(masks_kji.items(), key=lambda kv: by_name[kv[0].lower()]):
        if tuple(mask.shape) != tuple(out.shape):
            raise ValueError(f"segment {name!r} has shape {tuple(mask.shape)}, the volume {tuple(out.shape)}")
        out[mask.astype(bool)] = by_name[name.lower()]
    return out


def flatten_box(box: Sequence[Sequence[int]]) -> List[List[int]]:
    """A 2D box: the IJK box ``[[i0, j0, k0], [i1, j1, k1]]`` with its thinnest axis collapsed onto
    the slice through its centre (the server takes corners equal along one axis as a box drawn on
    that slice)."""
    low, high = [list(map(int, c)) for c in box]
    axis = min(range(3), key=lambda d: high[d] - low[d])
    low[axis] = high[axis] = (low[axis] + high[axis]) // 2
    return [low, high]


def lasso_on_one_slice(points_ijk: Sequence[Sequence[int]]) -> List[List[int]]:
    """The vertices of a lasso drawn on one slice, as IJK with the slice's index made exactly equal.

    A curve drawn in a slice view rounds to voxels that may differ by one across the slice (its
    plane lies between two voxel centres, or the volume is slightly oblique); more than that means
    the points were not drawn on one slice, which raises ``ValueError``. Fewer than 3 points too."""
    if len(points_ijk) < 3:
        raise ValueError(f"a lasso needs at least 3 points on one slice, it has {len(points_ijk)}")
    spread = [max(p[d] for p in points_ijk) - min(p[d] for p in points_ijk) for d in range(3)]
    axis = min(range(3), key=lambda d: spread[d])
    if spread[axis] > 1:
        raise ValueError("the lasso's points are not on one slice: draw it in one slice view")
    values = sorted(p[axis] for p in points_ijk)
    index = values[len(values) // 2]
    return [[index if d == axis else int(p[d]) for d in range(3)] for p in points_ijk]
