"""The shard runtime: how a shard queue is owned, taken from, run and recovered.

One package for everything between a shard queue in Redis and a task's code: the shard lease
(``lease``), the take/ack/wait protocol and its Lua scripts (``protocol``, ``lua/``), crash
recovery (``stranded``), the shard host that runs many shards on threads (``host``, ``slot``,
``execute``, ``step``), the solo worker's kombu transport and bootsteps (``transport``,
``solo_lease``, ``solo_retire``), which lease a commit is fenced on (``fence``), and the
launcher that starts hosts or solo workers (``launcher``, ``follower``). Task definitions stay
in ``tasks/``; components in ``services/``. Producers never import this package.
"""
