"""Promises: background work with dependencies, stored in SQL, run on the ``promises`` queue.

A promise runs only after all its parents completed; its result is recorded once, fenced by
``status='running' AND attempt=N``; its owner's user is told through their shard when it ends.
"""
