"""An OpenAI-compatible chat-completions client (llama.cpp server, vLLM, Ollama, OpenAI).

``AI_HANDLER=services.ai.openai_compat:OpenAICompatible`` with ``AI_BASE_URL`` (ending in
``/v1``), ``AI_MODEL`` and ``AI_API_KEY``. One HTTP connection pool per worker process.
"""

from __future__ import annotations

from typing import Any

import httpx

from services.ai.base import HandlerUnavailable, Turn

SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


class OpenAICompatible:
    def __init__(self, settings: Any) -> None:
        headers = {"Authorization": f"Bearer {settings.ai_api_key}"} if settings.ai_api_key else {}
        self.model = settings.ai_model
        self.client = httpx.Client(
            base_url=settings.ai_base_url.rstrip("/"),
            headers=headers,
            timeout=settings.ai_timeout_s,
        )

    def reply(self, user_id: str, text: str, history: list[Turn]) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        messages += [{"role": t["role"], "content": t["text"]} for t in history]
        messages.append({"role": "user", "content": text})
        try:
            response = self.client.post(
                "/chat/completions",
                json={"model": self.model, "messages": messages, "user": user_id},
            )
        except httpx.HTTPError as exc:
            raise HandlerUnavailable(f"chat completions request failed: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise HandlerUnavailable(f"chat completions answered HTTP {response.status_code}")
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    def close(self) -> None:
        self.client.close()
