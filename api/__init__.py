"""The HTTP API (FastAPI): messages, the Telegram webhook, jobs, promises, health, metrics.

It is a producer: it publishes through ``routing`` and reads job and promise state; it never
imports ``tasks``.
"""
