"""A local Ray runtime left by a killed scoring job (its folder and helper processes) is removed by
the next run (segloop/ray_tasks.py), and nothing of a running job's is touched."""

import os
import signal
import subprocess
import sys

from segloop.ray_tasks import RUNTIME_PREFIX, sweep_stale_runtimes


def test_a_killed_jobs_runtime_folder_and_helpers_are_removed_a_live_ones_kept(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a driver that no longer runs
    stale = tmp_path / f"{RUNTIME_PREFIX}{gone.pid}-x1"
    (stale / "session_latest").mkdir(parents=True)
    live = tmp_path / f"{RUNTIME_PREFIX}{os.getpid()}-x2"  # this process is its driver
    live.mkdir()
    unnamed = tmp_path / f"{RUNTIME_PREFIX}x3"  # not SegLoop's naming: not ours to judge
    unnamed.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    helper = subprocess.Popen(sleeper + [f"--temp-dir={stale}"])  # a Ray helper that outlived its driver
    bystander = subprocess.Popen(sleeper + [f"--temp-dir={live}"])
    try:
        assert sweep_stale_runtimes(str(tmp_path)) == [str(stale)]
        assert not stale.exists() and live.is_dir() and unnamed.is_dir()
        assert helper.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
        assert sweep_stale_runtimes(str(tmp_path)) == []
    finally:
        for p in (helper, bystander):
            p.kill()
            p.wait()
