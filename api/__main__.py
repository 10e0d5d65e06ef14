"""``python -m api``: serve the API with uvicorn on API_HOST:API_PORT.

Without API_TOKENS the API has no authentication, so it refuses any address but loopback
and says so.
"""

from __future__ import annotations

import ipaddress
import sys

import uvicorn

import celeryconfig
from jobs.errors import InvalidKind
from jobs.kinds import job_kinds
from promises.kinds import promise_kinds


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> int:
    settings = celeryconfig.settings
    try:  # a bad plug-in kind is one clear line, not a traceback from inside uvicorn
        job_kinds(), promise_kinds()
    except InvalidKind as exc:
        print(f"shardline api: {exc}", file=sys.stderr, flush=True)
        return 2
    host = settings.api_host
    if not settings.api_tokens and not is_loopback(host):
        print(f"shardline api: API_TOKENS is empty, so binding to 127.0.0.1 instead of {host}",
              file=sys.stderr, flush=True)
        host = "127.0.0.1"
    elif not settings.api_tokens:
        print(f"shardline api: API_TOKENS is empty: no authentication, loopback only ({host})",
              file=sys.stderr, flush=True)
    uvicorn.run("api.app:app", host=host, port=settings.api_port,
                log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
