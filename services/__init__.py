"""Components shared by the worker processes: built once per process by the registry."""
