"""RSS and CPU time of a system's worker processes: every process of the trees rooted at the
processes the bench started (a prefork pool's children, a shard runner's hosts), with psutil.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import psutil


def _tree(roots: Iterable[int]) -> Iterator[psutil.Process]:
    for pid in roots:
        try:
            root = psutil.Process(pid)
            yield root
            yield from root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue


class TreeProbe:
    """Reads the trees rooted at ``roots``; keeps the peak of their summed RSS."""

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)
        self.peak_rss_bytes = 0

    def rss_bytes(self) -> int:
        total = 0
        for proc in _tree(self.roots):
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes())

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the live processes of the trees."""
        total = 0.0
        for proc in _tree(self.roots):
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def processes(self) -> int:
        return sum(1 for _ in _tree(self.roots))
