"""Processes that import SegLoop end promptly (segloop/processes.py)."""

import subprocess
import sys

# An atexit handler registered before SegLoop's runs after it (last in, first out): it sees what
# SegLoop's left for the interpreter's teardown.
CHILD = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count(), flush=True))
import segloop
garbage = [[i] for i in range(1000)]
sys.exit(3)
"""


def test_importing_segloop_freezes_the_collector_at_exit_and_keeps_the_exit_code():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    frozen = int(done.stdout.split()[-1])
    assert frozen >= 1000, done.stdout  # teardown's collections skip these objects


def test_without_segloop_nothing_is_frozen():
    """The check above can fail: a plain interpreter exits with nothing frozen."""
    child = CHILD.replace("import segloop\n", "")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and int(done.stdout.split()[-1]) == 0, done.stdout
