"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import celery
import kombu
import redis

from deploy.embedded_redis import redis_server_binary


def _total_ram_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return float("nan")


def _redis_server_version() -> str:
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True,
                         check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": _total_ram_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": _redis_server_version(),
    }
