"""Ray's processes on this machine, for the tests that start Ray (directly or through the server)."""

import time

import psutil

RAY_PROCESSES = ("raylet", "gcs_server", "ray::")


def ray_processes():
    """Ray's processes on this machine (its head, its workers)."""
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            line = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        except psutil.Error:
            continue
        if any(mark in line for mark in RAY_PROCESSES):
            found.append(p)
    return found


def wait_until_gone(timeout):
    """PIDs of Ray processes still running after ``timeout`` s (empty: all gone)."""
    deadline = time.time() + timeout
    while (left := ray_processes()) and time.time() < deadline:
        time.sleep(0.5)
    return [p.pid for p in left]
