"""Where kombu's Redis transport keeps a queue: one Redis list per priority step.

Step 0 is the queue's own name, step n is ``queue + sep + n`` (kombu's
``Channel._q_for_pri``), with the steps and separator of celeryconfig's transport options;
every key kombu writes carries the transport's ``global_keyprefix``. The metrics readings,
``shardline status`` and the jobs' lost-message check all read queues through this.
"""

from __future__ import annotations

from typing import Any

# kombu's defaults (kombu.transport.redis.Channel) when celeryconfig does not set them.
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_KOMBU_SEP = "\x06\x16"


def _options() -> dict[str, Any]:
    import celeryconfig  # imported when used: celeryconfig itself imports routing

    return dict(celeryconfig.broker_transport_options)


def priority_lists(queue: str) -> list[tuple[int, str]]:
    """``(priority step, Redis list)`` of each of kombu's sub-lists of ``queue``."""
    options = _options()
    steps: list[int] = list(options.get("priority_steps", _KOMBU_PRIORITY_STEPS))
    sep = str(options.get("sep", _KOMBU_SEP))
    return [(step, f"{queue}{sep}{step}" if step else queue) for step in steps]


def key_prefix() -> str:
    """The transport's ``global_keyprefix`` ('' when none is set)."""
    return str(_options().get("global_keyprefix", ""))
