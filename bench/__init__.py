"""``make bench``: ordered throughput of the shard workers vs the naive prefork worker, and
the publish rate of :func:`routing.send` vs :func:`routing.dispatch_batch`."""
