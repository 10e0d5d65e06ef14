"""The chaos suite: steady load while shard workers are killed, Redis restarts and the AI fails.

``make chaos`` (``python -m chaos.run``) runs it against a private Redis and real worker
processes, prints one line of figures and exits non-zero if a reply was lost, duplicated or out
of order. It never touches a Redis it did not start.
"""
