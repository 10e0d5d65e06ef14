"""The worker side: the Celery app (``celery -A tasks worker``) and its tasks."""

from tasks.app import app

__all__ = ["app"]
