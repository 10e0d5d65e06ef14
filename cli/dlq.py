"""``shardline dlq``: list, show, replay and discard parked (dead-lettered) messages.

Replay publishes the parked message again through the router, so it goes to its user's
shard like any new message; in hold mode it carries the ``shardline_replay`` header and the
worker runs it ahead of the user's held messages, then releases them in order. Discard drops
the record, and in hold mode sends ``release_held`` so the held messages run. This command
never writes to a shard queue directly and never runs a task itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from cli.connection import redis_client
from routing import queues
from routing.dispatch import producer_app, publish_task
from routing.errors import ShardlineError
from services.deadletter import DeadLetter, DeadLetterStore
from services.hold import REPLAY_HEADER, HoldStore


def _stores() -> tuple[DeadLetterStore, HoldStore]:
    client = redis_client()
    return DeadLetterStore(client), HoldStore(client)


def _letter(store: DeadLetterStore, letter_id: str) -> DeadLetter:
    letter = store.get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id!r} (see `shardline dlq list`)")
    return letter


@click.group()
def dlq() -> None:
    """Parked messages: poison ones and ones that failed every attempt."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True)
def list_cmd(limit: int) -> None:
    """Oldest first: id, user, task, whether it holds the user, reason."""
    store, _ = _stores()
    for letter in store.list(limit):
        hold = "HOLDS" if letter.holds else "-"
        click.echo(f"{letter.id}  user={letter.user_id}  {letter.task}  {hold}  {letter.reason}")
    click.echo(f"{store.count()} parked")


@dlq.command()
@click.argument("letter_id")
def show(letter_id: str) -> None:
    """The whole record of LETTER_ID as JSON, with the user's held messages."""
    store, holds = _stores()
    letter = _letter(store, letter_id)
    record = asdict(letter)
    if letter.user_id is not None:
        record["held_behind_it"] = [asdict(m) for m in holds.held(letter.user_id)]
    click.echo(json.dumps(record, indent=2, default=str))


@dlq.command()
@click.argument("letter_id")
def replay(letter_id: str) -> None:
    """Publish LETTER_ID's message again to its user's shard, then drop the record."""
    store, _ = _stores()
    letter = _letter(store, letter_id)
    if letter.task is None:
        raise click.ClickException(f"{letter_id} has no task name: it cannot be replayed")
    if not isinstance(letter.args, list) or not isinstance(letter.kwargs, dict):
        raise click.ClickException(
            f"{letter_id} was parked before it could be decoded ({letter.reason}); "
            "it cannot be replayed, only discarded"
        )
    headers = {REPLAY_HEADER: letter.id} if letter.holds else None
    try:
        task_id = publish_task(producer_app(), str(letter.task), letter.args, letter.kwargs,
                               headers=headers)
    except (ShardlineError, ValueError) as exc:
        raise click.ClickException(f"cannot replay {letter_id}: {exc}") from exc
    store.remove(letter.id)  # the hold (if any) stays until the replayed message succeeds
    click.echo(f"replayed {letter_id} as task {task_id}")


@dlq.command()
@click.argument("letter_id")
def discard(letter_id: str) -> None:
    """Drop LETTER_ID for good; in hold mode its user's held messages then run."""
    store, holds = _stores()
    letter = _letter(store, letter_id)
    store.remove(letter.id)
    if letter.holds and letter.user_id is not None:
        if holds.release(letter.user_id, letter.id):
            try:
                publish_task(producer_app(), queues.RELEASE_HELD, [letter.user_id], {})
            except ShardlineError as exc:
                raise click.ClickException(
                    f"discarded {letter_id}, but could not release user {letter.user_id}: "
                    f"{exc}; their held messages run with their next message"
                ) from exc
            click.echo(f"discarded {letter_id}; user {letter.user_id} released")
            return
    click.echo(f"discarded {letter_id}")
