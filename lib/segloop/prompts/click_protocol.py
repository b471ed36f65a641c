"""The simulated click protocol that scores a prompt model on cases with ground truth.

IMIS-Bench / SAM-Med3D style, per case and structure, on the image's own grid: click 1 at the
centre of the structure's largest component, every next click at the centre of the largest error
region of the previous answer (positive in a miss, negative in a false positive), the previous
answer sent back as the previous mask. Promotion of a prompt-model candidate
(:mod:`segloop.trainers.candidate_eval`) and the benchmark harness (``segloop_bench``) both use it,
so a candidate is judged by what a user's clicks get.
"""

import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from monai.transforms import LoadImage

from segloop.metrics.dice import dice
from segloop.prompts.encoding import Prompt
from segloop.prompts.simulation import largest_component, next_click, region_centre

NOC_LEVELS = (0.85, 0.90)


def load_case(image_path: str, label_path: str):
    """The image as a MetaTensor [1, X, Y, Z] (HU, stored orientation) and its label map [X, Y, Z]."""
    image = LoadImage(image_only=True, ensure_channel_first=True)(image_path)
    label = np.asarray(LoadImage(image_only=True)(label_path)).astype(np.int64)
    return image, label


def class_indices(labels: Mapping[str, int]) -> Dict[str, int]:
    """Label name -> the model's class index (1..N in ascending storage index; 0 = no label prompt)."""
    return {name: c for c, name in enumerate(sorted(labels, key=labels.get), start=1)}


def case_structures(
    cases: Sequence[Dict[str, str]], labels: Mapping[str, int], progress=None
) -> Iterator[Tuple[object, str, int, np.ndarray]]:
    """Each structure present in ``cases`` (each ``{"image", "label"}`` paths):
    ``(image, label name, class index, target mask)``; ``progress(n, total)`` after each case."""
    classes = class_indices(labels)
    for n, case in enumerate(cases, start=1):
        image, truth = load_case(case["image"], case["label"])
        for name, c in classes.items():
            target = truth == labels[name]
            if target.any():
                yield image, name, c, target
        if progress:
            progress(n, len(cases))


def first_click(target: np.ndarray) -> Tuple[int, int, int]:
    """Where the protocol's first click goes: the centre of the structure's largest component."""
    return region_centre(largest_component(target))


def click_session(
    pipeline, image, target: np.ndarray, class_index: int, clicks: int, with_label: bool = True,
    label_from_click: bool = True,
) -> Dict[str, list]:
    """Dice and seconds after each of ``clicks`` simulated clicks on one structure, and the label the
    first click was given (``label_from_click``: a class index, or None).

    ``pipeline(image, prompt, previous_mask) -> (mask, info)`` is a
    :class:`~segloop.prompts.zoom.ZoomOutZoomIn`. ``with_label`` sends the structure's label
    prompt with the clicks, as the Slicer plugin does (the segment's name); without it the model
    sees the clicks alone, and (unless ``label_from_click`` is off: the class-agnostic answer)
    the pipeline gives them the label of the known structure under the first click, as the server does.
    """
    options = {} if label_from_click else {"candidates": ()}
    resolved = None
    prompt = Prompt(label=class_index if with_label else 0)
    prediction = np.zeros(target.shape, bool)
    previous: Optional[np.ndarray] = None
    scores: List[float] = []
    latencies: List[float] = []
    for k in range(clicks):
        click = (first_click(target), True) if k == 0 else next_click(prediction, target)
        if click is None:  # perfect already
            scores.append(scores[-1])
            continue
        (prompt.positive if click[1] else prompt.negative).append(click[0])
        start = time.perf_counter()
        prediction, details = pipeline(image, prompt, previous, **options)
        latencies.append(time.perf_counter() - start)
        resolved = details.get("label_from_click") if k == 0 else resolved
        previous = prediction.astype(np.float32)
        scores.append(dice(prediction, target))
    return {"dice": scores, "latency_s": latencies, "label_from_click": resolved}


def number_of_clicks(curve: Sequence[float], level: float) -> Optional[int]:
    """NoC@level: the first click count whose Dice reaches ``level`` (``None``: not within the curve)."""
    return next((k + 1 for k, d in enumerate(curve) if d >= level), None)
