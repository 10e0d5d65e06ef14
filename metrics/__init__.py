"""Prometheus metrics of a whole deployment, correct across worker processes and hosts.

Workers and producers record into Redis (``recorder``: counters and histogram buckets, one
pipeline per idle moment or per second); readers turn Redis into figures at read time
(``readings``), for the Prometheus collector (``collector``, served by ``python -m metrics``
and the API's ``/metrics``) and for ``shardline status`` alike. No process keeps a metric in
memory beyond that second, so forked pool children, restarts and several hosts all add up in
one place.
"""
