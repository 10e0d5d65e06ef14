"""``shardline relay``: run the Telegram relay (services.relay) until SIGINT/SIGTERM.

Needs ``MESSENGER=telegram`` and ``TELEGRAM_BOT_TOKEN``; ``TELEGRAM_API_BASE`` points it at
another Bot API server. Run one relay per deployment.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click

import celeryconfig
from cli.connection import redis_url
from services.redis_client import connect
from services.relay import TelegramRelay


@click.command()
@click.option("--block-ms", default=1000, show_default=True,
              help="How long one round waits for new replies.")
def relay(block_ms: int) -> None:
    """Deliver outbox replies to Telegram, in order per user, until Ctrl-C."""
    settings = celeryconfig.settings
    if settings.messenger != "telegram":
        raise click.ClickException(
            f"the relay sends to Telegram, but MESSENGER is {settings.messenger!r}: "
            "set MESSENGER=telegram and TELEGRAM_BOT_TOKEN"
        )
    if not settings.telegram_bot_token:
        raise click.ClickException("MESSENGER is telegram but TELEGRAM_BOT_TOKEN is not set")
    url = redis_url()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client = connect(url)
    worker = TelegramRelay(client, settings.telegram_bot_token, settings.telegram_api_base)
    click.echo(f"relay: delivering to {settings.telegram_api_base}; Ctrl-C stops")
    try:
        worker.run_forever(stop, block_ms=block_ms)
    finally:
        worker.close()
        client.close()
    click.echo("relay: stopped")
