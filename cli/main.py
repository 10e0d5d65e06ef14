"""``shardline``: the operator's and developer's command line."""

from __future__ import annotations

import json
import sys
import time

import click

import celeryconfig
from cli.breaker import breaker
from cli.connection import ShardlineGroup, redis_client, redis_url
from cli.dlq import dlq
from deploy.supervisor import render as render_supervisor
from routing import ChatMessage, producer_app, send
from routing.credentials import redact_url
from routing.errors import ShardlineError


def _settings() -> celeryconfig.Settings:
    return celeryconfig.settings


@click.group(cls=ShardlineGroup)
@click.version_option(package_name="shardline", message="shardline %(version)s")
def main() -> None:
    """shardline: ordered per-user AI chat processing on Celery + Redis."""


@main.command()
def run() -> None:
    """Start everything (embedded Redis if REDIS_URL is unset); Ctrl-C or SIGTERM stops it."""
    from deploy.launcher import procfile_running, redis_for, stop_on_sigterm
    from services.redis_client import check_credentials

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    stop_on_sigterm()
    try:
        with redis_for(settings) as url:
            check_credentials(url)
            click.echo(f"shardline: Redis at {redact_url(url)}; {settings.shard_count} shards; "
                       "Ctrl-C stops")
            with procfile_running(url) as proc:
                proc.wait()
    except KeyboardInterrupt:
        click.echo("shardline: stopped")


@main.command("send")
@click.argument("user_id")
@click.argument("text")
@click.option("--message-id", default=None, help="Idempotency key (e.g. the chat message id).")
@click.option("--proactive", is_flag=True, help="Send as a proactive message.")
def send_cmd(user_id: str, text: str, message_id: str | None, proactive: bool) -> None:
    """Send one message from USER_ID (an integer id is sent as an int)."""
    redis_url()
    uid: int | str = int(user_id) if user_id.isdigit() else user_id
    try:
        result = send(producer_app(), ChatMessage(uid, text, message_id=message_id,
                                                  sent_at=time.time(), proactive=proactive))
    except ShardlineError as exc:
        raise click.ClickException(str(exc)) from exc
    if result.duplicate:
        click.echo(f"{result.task_id} (duplicate of message id {message_id!r}: not sent again)")
    else:
        click.echo(result.task_id)


@main.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def outbox(user_id: str, as_json: bool) -> None:
    """Show USER_ID's delivered replies, oldest first."""
    from services.conversation import ConversationStore

    settings = _settings()
    store = ConversationStore(redis_client(), history_limit=settings.history_limit,
                              done_ttl_s=settings.dedup_window_s)
    entries = store.outbox(user_id)
    if not entries:
        # On stderr: --json output stays a clean (empty) stream.
        click.echo(f"no replies in the outbox of user {user_id!r}", err=True)
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry))
        else:
            click.echo(f"{entry['id']}  [{entry.get('kind', '?')}]  {entry.get('text', '')}")


@main.command("supervisor-config")
@click.option("--range", "shard_range", default=None,
              help="Shards of this host, e.g. 0-3 (default: SHARD_RANGE, else every shard).")
@click.option("--workloads/--no-workloads", default=True, show_default=True,
              help="Run the workload worker (WORKLOAD_CONCURRENCY processes) on this host.")
@click.option("--beat/--no-beat", default=True, show_default=True,
              help="Run beat on this host; exactly one host of a deployment must.")
@click.option("--runtime", type=click.Choice(["hosts", "solo"]), default=None,
              help="Shard hosts or a solo worker per shard [default: SHARD_RUNTIME].")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Shard hosts on this machine [default: SHARD_PROCESSES].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Messages per shard at once, of different users "
                   "[default: SHARD_CONCURRENCY].")
def supervisor_config(shard_range: str | None, workloads: bool, beat: bool,
                      runtime: str | None, processes: int | None,
                      concurrency: int | None) -> None:
    """Print supervisord.conf for this machine's shards (SHARD_RANGE by default)."""
    settings = _settings()
    try:
        shards = (celeryconfig.parse_shard_range(shard_range, settings.shard_count)
                  if shard_range else settings.shard_range)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if list(shards) != list(range(shards[0], shards[-1] + 1)):
        raise click.ClickException("supervisor config needs a contiguous range like 0-3")
    sys.stdout.write(render_supervisor(
        shards[0], shards[-1], python=sys.executable, with_workloads=workloads, with_beat=beat,
        workload_concurrency=settings.workload_concurrency,
        runtime=runtime or settings.shard_runtime,
        processes=processes or settings.shard_processes,
        concurrency=concurrency or settings.shard_concurrency,
        whole=list(shards) == list(range(settings.shard_count))))


@main.command()
@click.option("--users", default=200, show_default=True, help="Simulated users.")
@click.option("--messages", default=10, show_default=True, help="Messages per user.")
@click.option("--proactive-every", default=4, show_default=True,
              help="A proactive message after every Nth user message (0: none).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for replies.")
def demo(users: int, messages: int, proactive_every: int, timeout: float) -> None:
    """Start everything, play a chat load, check per-user order, report, shut down."""
    from cli.demo import run_demo

    sys.exit(run_demo(_settings(), users=users, messages=messages,
                      proactive_every=proactive_every, timeout_s=timeout))


main.add_command(dlq)
main.add_command(breaker)
from cli.relay import relay  # noqa: E402

main.add_command(relay)

from cli.jobs import jobs  # noqa: E402
from cli.promises import promises  # noqa: E402

main.add_command(jobs)
main.add_command(promises)

from cli.rescale import rescale  # noqa: E402

main.add_command(rescale)

from cli.status import status  # noqa: E402

main.add_command(status)

if __name__ == "__main__":
    main()
