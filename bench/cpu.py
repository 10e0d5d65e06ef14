"""CPU time used by process groups, from /proc (Linux): a cost per task that, unlike a rate,
hardly depends on what else runs on the machine."""

from __future__ import annotations

import os
from collections.abc import Iterable

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return raw[raw.rfind(")") + 2:].split()


def group_cpu_s(groups: Iterable[int]) -> float:
    """User + system CPU seconds of every live process in the process groups ``groups``."""
    wanted = {str(g) for g in groups}
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fields = _stat_fields(pid)
        # After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        if fields and fields[2] in wanted:
            total += int(fields[11]) + int(fields[12])
    return total * _TICK_S


def process_cpu_s(pid: int) -> float:
    fields = _stat_fields(str(pid))
    return (int(fields[11]) + int(fields[12])) * _TICK_S if fields else 0.0


def machine_cpu_s() -> float:
    """CPU seconds every process of the machine has used so far (all cores), from /proc/stat:
    user, nice, system, irq, softirq and steal time; idle and iowait are not busy."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) * _TICK_S
