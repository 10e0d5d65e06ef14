"""Job tasks (being written)."""
