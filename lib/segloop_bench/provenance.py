"""Where a result came from: every benchmark result JSON is written through :func:`write_result`.

The ``provenance`` block records the commit (and whether the tree had uncommitted changes), the
command line, the machine (CPU model, threads, native bfloat16, or the GPU), the package versions
and the date; the caller names the baseline the figures compare with. The file is written
atomically (temporary file + rename).
"""

import datetime
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Optional

from segloop.io import atomic_write_json, json_safe

PACKAGES = ("torch", "monai", "monailabel", "numpy")


def _git(*args: str) -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Dict[str, Any]:
    import torch

    from segloop.networks.precision import native_bfloat16

    info: Dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bfloat16": bool(native_bfloat16(torch.device("cpu"))),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    caps = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if os.environ.get(k)}
    if caps:  # instruction sets capped below the CPU's own (how a CPU without AVX512 is emulated)
        info["cpu_isa_caps"] = caps
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu"] = None
    return info


def package_versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    versions: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(baseline: str, argv: Optional[list] = None) -> Dict[str, Any]:
    """The provenance block; ``baseline`` says in words what the figures are compared with."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "command": " ".join(argv if argv is not None else [os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "packages": package_versions(),
        "baseline": baseline,
    }


def write_result(path: str, report: Dict[str, Any], baseline: str, argv: Optional[list] = None) -> str:
    """Write ``report`` with its ``provenance`` to ``path`` atomically; returns ``path``."""
    atomic_write_json(path, json_safe({**report, "provenance": provenance(baseline, argv)}))
    return path
