"""The scoring job's images as Ray tasks (``segloop.ray_tasks``: a local runtime or an existing
cluster). The scorer, with the serving version's weights, goes to Ray's object store once; each
image is one task; the job's process stores each record as its task returns, so a job stopped
half-way keeps what it scored and a rerun skips it (records are per version). An image whose
scoring raises is recorded as an error, as in a single-process job; a task whose worker died on
every retry too."""

from typing import Callable, Dict, List

from segloop.ray_tasks import map_on_ray


def _score_one(scorer, image_path: str, components: List[str]) -> Dict:
    """One image in a Ray worker (one CPU): ``scorer.record``, which turns an unreadable image into
    that image's error record rather than a worker failure to retry."""
    return scorer.record(image_path, components)


def score_on_ray(
    scorer,
    todo: List[Dict],
    image_path: Callable[[str], str],
    on_record: Callable[[Dict, Dict], None],
    should_stop: Callable[[], bool],
    workers: int,
    address: str = "",
) -> int:
    """Score ``todo`` (items with ``id`` and ``components``) on Ray; ``on_record(item, record)``
    for each as it finishes; stops sending (and cancels what is in flight) once ``should_stop()``.
    Returns how many records were stored."""
    return map_on_ray(
        _score_one, scorer, todo,
        arguments=lambda item: (image_path(item["id"]), item["components"]),
        on_result=on_record,
        on_failure=lambda item, e: {"error": f"{type(e).__name__}: {e}", "components": []},
        should_stop=should_stop, workers=workers, address=address,
    )
