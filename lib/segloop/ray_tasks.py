"""One function over many items as Ray tasks: a local Ray runtime, or an existing cluster.

Used by the scoring job (``segloop.scoring.ray_pool``) and batch inference
(``segloop.infers.batch_ray``). The calling process stays the driver and the only writer of
results: it puts the shared object (a scorer, an infer task with its weights) in Ray's object
store once, keeps at most ``workers`` tasks in flight, and hands each result to ``on_result`` as
its task returns, so a run stopped half-way keeps what it finished. A worker that dies loses only
its task, which Ray runs again elsewhere (``TASK_RETRIES``).

``address`` empty: a local runtime with ``workers`` CPUs, started here and shut down when the run
ends, whatever ends it (the driver is a MONAI Label subprocess that dies with the server; Ray's own
reaper ends a local runtime whose driver is gone). A driver killed before it could shut its runtime
down (SIGKILL, a server stopped mid-job) leaves the runtime's folder and some of Ray's helper
processes behind: the next local run removes both (:func:`sweep_stale_runtimes`), knowing them by
the dead driver's PID in the folder's name. ``address`` set (``auto``, a ``host:port`` of a head
node, or ``ray://host:port``): an existing cluster, left running.
"""

import glob
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import psutil

logger = logging.getLogger(__name__)

TASK_RETRIES = 2
RUNTIME_PREFIX = "segloop-ray-"  # + the driver's PID + "-": a local runtime's folder


def _driver_pid(folder: str) -> Optional[int]:
    pid = os.path.basename(folder)[len(RUNTIME_PREFIX):].split("-", 1)[0]
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
        logger.info(f"removed {len(removed)} Ray runtime(s) left by runs that were killed: {removed}")
    return removed


def map_on_ray(
    function: Callable,
    shared: Any,
    items: Sequence[Dict],
    arguments: Callable[[Dict], Iterable],
    on_result: Callable[[Dict, Any], None],
    on_failure: Callable[[Dict, Exception], Any],
    should_stop: Callable[[], bool],
    workers: int,
    address: str = "",
) -> int:
    """``function(shared, *arguments(item))`` for each of ``items`` on Ray, at most ``workers`` at a
    time, each on one CPU; ``on_result(item, result)`` as each returns, in the calling process.
    A task whose retries are spent gives ``on_result(item, on_failure(item, error))``. Stops
    sending (and cancels what is in flight) once ``should_stop()``. Returns how many items were
    handed to ``on_result``."""
    if not items:
        return 0  # nothing to do: no runtime to start
    import ray

    started_here = not address
    if started_here:
        sweep_stale_runtimes()
    # A local runtime keeps its sockets and logs in a folder of its own, removed with it (Ray's
    # default, /tmp/ray, would keep one session folder per run for ever).
    temp_dir = tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-") if started_here else None
    ray.init(
        address=address or None, num_cpus=workers if started_here else None, include_dashboard=False,
        log_to_driver=False, configure_logging=False, _temp_dir=temp_dir,
    )
    handed = 0
    try:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(function)
        shared_ref = ray.put(shared)
        queue, in_flight = list(items), {}
        while queue or in_flight:
            if should_stop():
                for ref in in_flight:
                    ray.cancel(ref, force=True)
                break
            while queue and len(in_flight) < workers:
                item = queue.pop(0)
                in_flight[task.remote(shared_ref, *arguments(item))] = item
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            for ref in done:
                item = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # retries spent (the worker died each time) or the task was lost
                    logger.warning(f"{getattr(function, '__name__', 'task')} of {item.get('id')} on Ray failed: {e}")
                    result = on_failure(item, e)
                on_result(item, result)
                handed += 1
    finally:
        # A local runtime stops; from an existing cluster the driver only disconnects (the cluster
        # runs on). A driver left connected would fail its next ray.init, and Ray ends a driver
        # whose cluster has gone away.
        ray.shutdown()
        if started_here:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return handed
