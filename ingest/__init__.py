"""Incoming messages: the API's ingest log and the start-up catch-up of missed messages."""
