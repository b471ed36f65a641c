"""The scoring job's images as Ray tasks: a local Ray runtime, or an existing cluster.

The job's process stays the driver and the only writer of the score store: it sends one task per
image (the scorer, with the serving version's weights, is put in Ray's object store once), keeps
at most ``workers`` tasks in flight, and stores each record as its task returns, so a job stopped
half-way keeps what it scored and a rerun skips it (records are per version). A worker that dies
loses only its task, which Ray runs again elsewhere (``max_retries``); an image whose scoring
raises is recorded as an error, as in a single-process job.

``address`` empty: a local runtime with ``workers`` CPUs, started here and shut down when the job
ends, whatever ends it (the job's process is a MONAI Label subprocess that dies with the server;
Ray's own reaper ends a local runtime whose driver is gone). A job killed before it could shut its
runtime down (SIGKILL, a server stopped mid-job) leaves its folder and some of Ray's helper
processes behind: the next local job removes both (:func:`sweep_stale_runtimes`), knowing them by
the dead driver's PID in the folder's name. ``address`` set (``auto``, a
``host:port`` of a head node, or ``ray://host:port``): an existing cluster, left running.
"""

import glob
import logging
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional

import psutil

logger = logging.getLogger(__name__)

TASK_RETRIES = 2
RUNTIME_PREFIX = "segloop-ray-"  # + the driver's PID + "-": a local runtime's folder


def _driver_pid(folder: str) -> Optional[int]:
    name = os.path.basename(folder)[len(RUNTIME_PREFIX):]
    pid = name.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def sweep_stale_runtimes(root: Optional[str] = None) -> List[str]:
    """Remove the local runtimes whose driver is gone: each ``segloop-ray-<pid>-*`` folder in
    ``root`` (the temporary folder) whose PID runs no more, after killing the processes whose
    command line names that folder (Ray's helpers that outlived it). Returns the folders removed."""
    removed = []
    for folder in glob.glob(os.path.join(root or tempfile.gettempdir(), RUNTIME_PREFIX + "*")):
        pid = _driver_pid(folder)
        if pid is None or psutil.pid_exists(pid):
            continue
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(folder in arg for arg in process.info["cmdline"] or []):
                    process.kill()
            except psutil.Error:
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        logger.info(f"removed {len(removed)} Ray runtime(s) left by scoring jobs that were killed: {removed}")
    return removed


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
    if started_here:
        sweep_stale_runtimes()
    temp_dir = tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-") if started_here else None
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
