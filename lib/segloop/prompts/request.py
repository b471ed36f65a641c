"""Parse an ``/infer`` request of the prompt model into a :class:`Prompt` in the image's IJK grid.

Accepted, all coordinates are voxel indices (IJK) of the image as stored, as the MONAI Label
Slicer plugin sends them:

* DeepGrow (upstream plugin, point tools): ``foreground`` / ``background`` lists of ``[i, j, k]``
  plus ``label`` (the segment name);
* DeepEdit: one point list per label name plus ``background``; the points of ``label`` are the
  positive clicks, the points of every other label are negatives for this structure;
* ``box``: two opposite corners ``[[i0, j0, k0], [i1, j1, k1]]``; the plugin's ``roi``
  ``[i0, i1, j0, j1, k0, k1]`` is read the same way. A **2D box** is the same with one index equal
  in both corners (a rectangle drawn on one slice): the answer is the 3D structure through it;
* ``lasso``: a closed polygon drawn on one slice, a list of at least 3 ``[i, j, k]`` vertices that
  share one index (the slice); its inside is filled (scikit-image ``polygon``);
* ``text``: free text or a label name (see :mod:`segloop.prompts.text`);
* ``foreground_scribbles`` / ``background_scribbles``: lists of polylines, each a list of
  ``[i, j, k]`` vertices (one vertex: a dot). Each line is sampled a voxel apart and the samples
  become clicks, at most ``MAX_SCRIBBLE_CLICKS`` per list, evenly spread (the click blobs are
  3 voxels wide, so thinning leaves no gap a blob does not cover).

A prompt drawn on one slice becomes clicks on that slice (:func:`drawn_slice_clicks`), which the
model reads in every mode it is trained in: a lasso, positives spread over its inside; a 2D box, a
positive at its centre (its corners may be background); both, negatives spread over a ring
``DRAWN_RING_VOXELS`` outside the outline, saying where the structure ends on that slice. (A
slice-prompt training mode on the box channel was tried and cost the 3D box its margin:
benchmarks/trials.md.)

An uploaded **scribble mask** (the ``label`` file with ``scribbles_mask``, or the upstream plugin's
scribbles request) becomes clicks the same way (:func:`scribble_mask_clicks`).

At least a positive click, a box, a lasso, or a label / text prompt is needed. Malformed or out-of-image
prompts raise a 4xx naming the offending value and the image size.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from skimage.draw import polygon

from segloop.errors import bad_request, unprocessable
from segloop.prompts.encoding import Point, Prompt
from segloop.prompts.text import LabelMatcher

# The forms above, as the prompt model's ``/info`` lists them (``prompts``), so that a client enables
# only the tools this server takes; ``no_label``: clicks alone segment whatever they point at.
PROMPT_FORMS = ("points", "box", "box_2d", "lasso", "scribbles", "scribbles_mask", "label_map", "text", "no_label")
MAX_POINTS = 100  # per list; more is a client bug, not an annotation
MAX_SCRIBBLE_CLICKS = 48  # clicks a scribble list becomes, after sampling its lines
MAX_LASSO_VERTICES = 2000  # a hand-traced outline, a vertex per mouse event
DRAWN_RING_VOXELS = 2  # a drawn outline's negatives lie this far outside it, on its slice


def _point(value: Any, what: str, shape: Sequence[int]) -> Point:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    ):
        raise bad_request(f"{what} must be [i, j, k] voxel indices, got {value!r}")
    if not all(-0.5 <= v <= s - 0.5 for v, s in zip(value, shape)):
        raise unprocessable(f"{what} {list(value)} is outside the image (size {list(shape)} voxels, IJK)")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _points(value: Any, what: str, shape: Sequence[int]) -> List[Point]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise bad_request(f"{what} must be a list of [i, j, k] points, got {value!r}")
    if len(value) > MAX_POINTS:
        raise bad_request(f"{what}: {len(value)} points, at most {MAX_POINTS} allowed")
    return [_point(p, f"{what} point", shape) for p in value]


def _scribbles(value: Any, what: str, shape: Sequence[int]) -> List[Point]:
    """The clicks a list of polylines becomes (module docstring)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise bad_request(f"{what} must be a list of lines, each a list of [i, j, k] points, got {value!r}")
    if len(value) > MAX_POINTS:
        raise bad_request(f"{what}: {len(value)} lines, at most {MAX_POINTS} allowed")
    samples: List[Point] = []
    for n, line in enumerate(value, start=1):
        vertices = _points(line, f"{what} line {n}", shape)
        if not vertices:
            raise bad_request(f"{what} line {n} has no points")
        samples.append(vertices[0])
        for a, b in zip(vertices[:-1], vertices[1:]):
            steps = int(np.ceil(np.abs(np.subtract(b, a)).max()))
            samples.extend(tuple(float(v) for v in np.add(a, np.multiply(np.subtract(b, a), t / steps))) for t in range(1, steps + 1))
    return _evenly(samples)  # type: ignore[arg-type]


def _evenly(points: List[Point], limit: int = MAX_SCRIBBLE_CLICKS) -> List[Point]:
    """At most ``limit`` of ``points``, evenly spread over the list."""
    if len(points) <= limit:
        return points
    return [points[i] for i in np.linspace(0, len(points) - 1, limit).round().astype(int)]


def scribble_mask_clicks(mask: np.ndarray, value: int) -> List[Point]:
    """The clicks the voxels of ``mask == value`` (a painted scribble) become: at most
    ``MAX_SCRIBBLE_CLICKS``, evenly spread over the voxels in storage order."""
    voxels = np.argwhere(np.asarray(mask) == value)
    return _evenly([tuple(float(v) for v in p) for p in voxels])  # type: ignore[misc]


def drawn_slice_clicks(inside: np.ndarray, axis: int, k: int, centre_only: bool = False) -> Tuple[List[Point], List[Point]]:
    """(positive, negative) clicks of a region drawn on slice ``k`` along ``axis``: ``inside`` is the
    slice's boolean mask of the drawn inside (module docstring); ``centre_only``: one positive at
    the centre of its bounding rectangle (a 2D box) instead of positives spread over it."""
    def to_3d(points_2d) -> List[Point]:
        return [tuple(float(v) for v in np.insert(np.asarray(p, float), axis, k)) for p in points_2d]  # type: ignore[misc]

    inside = np.asarray(inside, bool)
    where = np.argwhere(inside)
    if not len(where):
        return [], []
    positive = to_3d([(where.min(0) + where.max(0)) / 2.0]) if centre_only else _evenly(to_3d(where))
    ring = ndimage.binary_dilation(inside, iterations=DRAWN_RING_VOXELS) & ~ndimage.binary_dilation(
        inside, iterations=DRAWN_RING_VOXELS - 1
    )
    return positive, _evenly(to_3d(np.argwhere(ring)))


def _flat_axis(corners: np.ndarray) -> Optional[int]:
    """The one axis along which every point of ``corners`` [N, 3] shares its index, else None."""
    flat = [axis for axis in range(3) if np.ptp(corners[:, axis]) == 0]
    return flat[0] if len(flat) == 1 else None


def _lasso(value: Any, shape: Sequence[int]) -> Tuple[List[Point], List[Point]]:
    """The clicks of a closed polygon drawn on one slice (module docstring)."""
    if value in (None, [], ""):
        return [], []
    if not isinstance(value, (list, tuple)) or len(value) < 3:
        raise bad_request(f"lasso must be a closed polygon of at least 3 [i, j, k] vertices on one slice, got {str(value)[:80]}")
    if len(value) > MAX_LASSO_VERTICES:
        raise bad_request(f"lasso: {len(value)} vertices, at most {MAX_LASSO_VERTICES} allowed")
    vertices = np.round([_point(v, "lasso vertex", shape) for v in value]).astype(int)
    axis = _flat_axis(vertices)
    if axis is None:
        flat = sum(np.ptp(vertices[:, a]) == 0 for a in range(3))
        raise bad_request(
            "lasso vertices must lie on one slice and span an area on it: exactly one of i, j, k the same "
            f"for every vertex (here {flat} of them are)"
        )
    rows, cols = [a for a in range(3) if a != axis]
    inside = np.zeros((shape[rows], shape[cols]), bool)
    inside[polygon(vertices[:, rows], vertices[:, cols], shape=inside.shape)] = True
    inside[vertices[:, rows], vertices[:, cols]] = True  # the outline itself, so a thin polygon is not empty
    return drawn_slice_clicks(inside, axis, int(vertices[0, axis]))


def box_2d_clicks(box: Tuple[Point, Point], shape: Sequence[int]) -> Optional[Tuple[List[Point], List[Point]]]:
    """The clicks of a box one index thin along exactly one axis (a 2D box), else None."""
    corners = np.round(np.asarray(box, float)).astype(int)
    axis = _flat_axis(corners)
    if axis is None:
        return None
    rows, cols = [a for a in range(3) if a != axis]
    inside = np.zeros((shape[rows], shape[cols]), bool)
    inside[corners[0, rows] : corners[1, rows] + 1, corners[0, cols] : corners[1, cols] + 1] = True
    return drawn_slice_clicks(inside, axis, int(corners[0, axis]), centre_only=True)


def _box(request: Mapping, shape: Sequence[int]) -> Optional[Tuple[Point, Point]]:
    if request.get("box") not in (None, [], ""):
        corners = request["box"]
        if not isinstance(corners, (list, tuple)) or len(corners) != 2:
            raise bad_request(f"box must be two corners [[i0, j0, k0], [i1, j1, k1]], got {corners!r}")
    elif request.get("roi") not in (None, [], ""):
        roi = request["roi"]
        if not isinstance(roi, (list, tuple)) or len(roi) != 6:
            raise bad_request(f"roi must be [i0, i1, j0, j1, k0, k1], got {roi!r}")
        corners = [roi[0::2], roi[1::2]]
    else:
        return None
    a, b = (np.asarray(_point(list(c), "box corner", shape)) for c in corners)
    return tuple(float(v) for v in np.minimum(a, b)), tuple(float(v) for v in np.maximum(a, b))  # type: ignore


def parse_prompt(
    request: Mapping[str, Any],
    shape: Sequence[int],
    labels: Mapping[str, int],
    matcher: LabelMatcher,
    scribbled: Tuple[Sequence[Point], Sequence[Point]] = ((), ()),
) -> Tuple[Prompt, Dict[str, Any]]:
    """The prompt of ``request`` for an image of ``shape`` voxels, and notes for the result JSON.

    ``labels`` is the name -> storage index map; the prompt's class index is the label's position
    in ascending index order (1..N), 0 when no label prompt applies. ``scribbled``: the positive and
    negative clicks of an uploaded scribble mask (:func:`scribble_mask_clicks`).
    """
    order = {name: c for c, name in enumerate(sorted(labels, key=labels.get), start=1)}
    notes: Dict[str, Any] = {}
    positive = _points(request.get("foreground"), "foreground", shape) + list(scribbled[0])
    negative = _points(request.get("background"), "background", shape) + list(scribbled[1])
    positive += _scribbles(request.get("foreground_scribbles"), "foreground_scribbles", shape)
    negative += _scribbles(request.get("background_scribbles"), "background_scribbles", shape)
    box = _box(request, shape)
    drawn = [_lasso(request.get("lasso"), shape), box_2d_clicks(box, shape) if box is not None else None]
    if drawn[1] is not None:
        box = None  # a 2D box is its clicks, not a 3D box one slice thick
    for clicks in filter(None, drawn):
        positive, negative = positive + clicks[0], negative + clicks[1]
    spatial = bool(positive) or box is not None

    label_name = request.get("label")
    if not isinstance(label_name, str) or label_name not in order and _looks_like_path(label_name):
        label_name = None  # an uploaded previous mask, not a name
    for name in order:  # DeepEdit: point lists keyed by label name
        if isinstance(request.get(name), list) and request.get(name):
            points = _points(request[name], f"points of {name!r}", shape)
            (positive if name == label_name else negative).extend(points)

    target = None
    text = request.get("text")
    if text not in (None, ""):
        target = matcher.resolve(text)
        notes["text_matched"] = target
    elif label_name:
        target = label_name if label_name in order else matcher.lookup(label_name)
        if target is None:
            if not spatial:
                raise unprocessable(f"label {label_name!r} is not known; known labels: {list(order)}")
            notes["label_prompt"] = f"ignored: {label_name!r} is not one of {list(order)}; clicks alone decide"

    prompt = Prompt(positive=positive, negative=negative, box=box, label=order.get(target, 0))
    if not prompt.positive and prompt.box is None and not prompt.label:
        raise bad_request(
            "the prompt model needs at least one foreground click, a box, a lasso, or a label / text prompt "
            f"(known labels: {list(order)})"
        )
    notes["target"] = target
    return prompt, notes


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".nii", ".nii.gz", ".nrrd"))
