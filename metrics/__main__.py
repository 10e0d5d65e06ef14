"""``python -m metrics``: serve the deployment's metrics on METRICS_HOST:METRICS_PORT/metrics.

Any number of these may run, on any host: each reads the same Redis at scrape time, so they
all report the same figures (scrape one). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import signal
import sys
import threading

from prometheus_client import start_http_server

import celeryconfig
from metrics.collector import registry_for
from services.redis_client import connect


def main() -> int:
    settings = celeryconfig.settings
    if not settings.redis_url:
        print("shardline metrics: no Redis: set REDIS_URL or start the service with "
              "`shardline run`", file=sys.stderr, flush=True)
        return 2
    client = connect(settings.redis_url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server, thread = start_http_server(settings.metrics_port, settings.metrics_host,
                                       registry=registry_for(client, settings))
    print(f"shardline metrics: serving http://{settings.metrics_host}:{settings.metrics_port}"
          "/metrics", file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    thread.join(5)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
