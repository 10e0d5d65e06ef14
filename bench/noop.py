"""The bench's reference task, producer side: its name and how workers load it.

The task itself is in :mod:`bench.noop_task`, which only the bench's workers import (it
registers on the workers' Celery app); the bench process needs nothing but the name.
"""

NAME = "shardline.bench.noop"
#: The worker command-line option that loads the task.
INCLUDE = ("--include", "bench.noop_task")
