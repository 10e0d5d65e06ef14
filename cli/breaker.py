"""``shardline breaker``: the AI circuit breaker's shared state, and a manual reset.

It reads and resets the state in Redis (``services.breaker``); it never calls the AI handler.
"""

from __future__ import annotations

import click

import celeryconfig
from services.breaker import CircuitBreaker
from services.redis_client import connect


def _breaker() -> CircuitBreaker:
    settings = celeryconfig.settings
    if not settings.redis_url:
        raise click.ClickException("no Redis: set REDIS_URL or start the service (shardline run)")
    return CircuitBreaker(connect(settings.redis_url), "ai", failures=settings.breaker_failures,
                          open_s=settings.breaker_open_s)


@click.command()
@click.option("--reset", is_flag=True, help="Close the breaker now.")
def breaker(reset: bool) -> None:
    """Show the AI circuit breaker: state, consecutive failures, time left open."""
    cb = _breaker()
    if reset:
        cb.reset()
    status = cb.status()
    line = f"ai breaker: {status.state.value}, {status.failures}/{cb.failures} failures"
    if status.open_for_s:
        line += f", open for {status.open_for_s:.1f}s more"
    if status.probing:
        line += ", probe in flight"
    click.echo(line)
