"""The scoring job's images as Ray tasks: a local Ray runtime, or an existing cluster.

The job's process stays the driver and the only writer of the score store: it sends one task per
image (the scorer, with the serving version's weights, is put in Ray's object store once), keeps
at most ``workers`` tasks in flight, and stores each record as its task returns, so a job stopped
half-way keeps what it scored and a rerun skips it (records are per version). A worker that dies
loses only its task, which Ray runs again elsewhere (``max_retries``); an image whose scoring
raises is recorded as an error, as in a single-process job.

``address`` empty: a local runtime with ``workers`` CPUs, started here and shut down when the job
ends, whatever ends it (the job's process is a MONAI Label subprocess that dies with the server;
Ray's own reaper ends a local runtime whose driver is gone). ``address`` set (``auto``, a
``host:port`` of a head node, or ``ray://host:port``): an existing cluster, left running.
"""

import logging
import shutil
import tempfile
from typing import Callable, Dict, List

logger = logging.getLogger(__name__)

TASK_RETRIES = 2


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
    if not todo:
        return 0  # nothing stale: no runtime to start
    import ray

    started_here = not address
    # A local runtime keeps its sockets and logs in a folder of its own, removed with it (Ray's
    # default, /tmp/ray, would keep one session folder per job for ever).
    temp_dir = tempfile.mkdtemp(prefix="segloop-ray-") if started_here else None
    ray.init(
        address=address or None, num_cpus=workers if started_here else None, include_dashboard=False,
        log_to_driver=False, configure_logging=False, _temp_dir=temp_dir,
    )
    stored = 0
    try:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_score_one)
        scorer_ref = ray.put(scorer)
        queue, in_flight = list(todo), {}
        while queue or in_flight:
            if should_stop():
                for ref in in_flight:
                    ray.cancel(ref, force=True)
                break
            while queue and len(in_flight) < workers:
                item = queue.pop(0)
                in_flight[task.remote(scorer_ref, image_path(item["id"]), item["components"])] = item
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            for ref in done:
                item = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as e:  # retries spent (the worker died each time) or the task was lost
                    logger.warning(f"scoring {item['id']} on Ray failed: {e}")
                    record = {"error": f"{type(e).__name__}: {e}", "components": []}
                on_record(item, record)
                stored += 1
    finally:
        if started_here:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
    return stored
