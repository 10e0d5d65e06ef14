"""AI handlers: anything with ``reply(user_id, text, history) -> str``.

``AI_HANDLER=package.module:factory`` names a callable that takes the :class:`Settings` and
returns a handler. Built in: :mod:`services.ai.offline` (the default) and
:mod:`services.ai.openai_compat` (any OpenAI-compatible chat-completions server).
"""

from services.ai.base import AIHandler, Turn, load_handler

__all__ = ["AIHandler", "Turn", "load_handler"]
