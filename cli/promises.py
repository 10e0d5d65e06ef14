"""``shardline promises``: create (with parents), inspect, list and cancel promises."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.connection import redis_url
from jobs.errors import IdTaken, InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from promises.runtime import promise_service
from promises.service import PromiseService, PromiseSpec
from promises.store import Promise
from routing import producer_app

ERRORS = (InvalidWork, IdTaken, WorkNotFound, NotOwner, InvalidTransition)


def _service() -> PromiseService:
    redis_url()
    return promise_service(producer_app())


def _show(promise: Promise, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(promise.public()))
        return
    outcome = promise.error or ("" if promise.result is None else json.dumps(promise.result))
    parents = ",".join(promise.parents) or "-"
    click.echo(f"{promise.id}  {promise.type:<5} {promise.status.value:<9} "
               f"parents={parents} user={promise.user_id} owner={promise.owner}  {outcome}")


def _param(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


@click.group("promises")
def promises() -> None:
    """Background work with dependencies (a DAG), stored in SQL."""


@promises.command()
@click.argument("type_", metavar="TYPE", type=click.Choice(["echo", "sum", "llm", "fail"]))
@click.option("--user", "user_id", required=True, help="User told when it finishes.")
@click.option("--description", default="")
@click.option("--param", "params", multiple=True, help="key=value (value parsed as JSON).")
@click.option("--parent", "parents", multiple=True, help="Id of a parent promise (repeatable).")
@click.option("--id", "promise_id", default=None, help="Choose the id.")
@click.option("--owner", default="cli", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def create(type_: str, user_id: str, description: str, params: tuple[str, ...],
           parents: tuple[str, ...], promise_id: str | None, owner: str, as_json: bool) -> None:
    """Create one promise of TYPE; it runs once all its parents completed."""
    uid: int | str = int(user_id) if user_id.isdigit() else user_id
    spec = PromiseSpec(user_id=uid, type=type_, description=description,
                       params=_param(params), parents=parents, id=promise_id)
    try:
        _show(_service().create([spec], owner)[0], as_json)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@promises.command()
@click.argument("promise_id")
@click.option("--json", "as_json", is_flag=True)
def status(promise_id: str, as_json: bool) -> None:
    """Status, result or error of PROMISE_ID."""
    try:
        _show(_service().owned(promise_id, None), as_json)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@promises.command("list")
@click.option("--owner", default=None)
@click.option("--json", "as_json", is_flag=True)
def list_promises(owner: str | None, as_json: bool) -> None:
    """Promises, newest first."""
    for promise in _service().store.find(owner=owner):
        _show(promise, as_json)


@promises.command()
@click.argument("promise_id")
def cancel(promise_id: str) -> None:
    """Cancel PROMISE_ID; its children fail or are skipped (PROMISE_ON_PARENT_FAILURE)."""
    try:
        _show(_service().cancel(promise_id, None), False)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
