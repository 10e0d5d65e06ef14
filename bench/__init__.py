"""``make bench``: ordered throughput of the shard workers vs the naive prefork worker, the
scale curve of 1, 2, 4 and 8 shard workers (``bench/scale.png``), head-of-line blocking
behind a slow user, and the publish rate of ``apply_async`` vs :func:`routing.dispatch_batch`."""
