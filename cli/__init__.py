"""The ``shardline`` command: run, send, outbox, demo and operations."""
