"""``shardline breaker``: the AI circuit breaker's shared state, and a manual reset.

It reads and resets the state in Redis (``services.breaker``); it never calls the AI handler.
"""

from __future__ import annotations

import click

import celeryconfig
from cli.connection import redis_client
from services.breaker import AI_BREAKER, CircuitBreaker


def _breaker() -> CircuitBreaker:
    return CircuitBreaker.as_recorded(redis_client(), AI_BREAKER,
                                      settings=celeryconfig.settings)


@click.command()
@click.option("--reset", is_flag=True, help="Close the breaker now.")
def breaker(reset: bool) -> None:
    """Show the AI circuit breaker: state, consecutive failures, time left open."""
    cb = _breaker()
    if reset:
        cb.reset()
    status = cb.status()
    line = f"ai breaker: {status.state.value}, {status.failures}/{cb.failures} failures"
    if not cb.recorded:
        line += " (no worker has recorded its threshold yet: BREAKER_FAILURES of this shell)"
    if status.open_for_s:
        line += f", open for {status.open_for_s:.1f}s more"
    if status.probing:
        line += ", probe in flight"
    click.echo(line)
