"""Engines for the promise store: SQLite (embedded default) or PostgreSQL through psycopg 3.

One engine per process and URL: a forked worker child must not reuse its parent's connections.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from promises.models import Base

_engines: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers do not block the writer; several worker processes share the file.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_schema(engine: Engine) -> None:
    # Several processes may start at once; PostgreSQL can then report the other's CREATE.
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError:
            if attempt == 2:
                raise


def engine_for(url: str) -> Engine:
    """The engine of ``url`` in this process, with the schema created."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _create_schema(engine)
        _engines[key] = engine
    return engine


def dispose_all() -> None:
    for key, engine in list(_engines.items()):
        if key[0] == os.getpid():
            engine.dispose()
        del _engines[key]
