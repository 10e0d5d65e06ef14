"""The OpenAI-compatible AI handler against a real local chat-completions server.

The server (tests.fake_http) speaks ``POST /v1/chat/completions`` and answers with the
chat-completions JSON shape; it records every request, so the tests check what the handler
sends (model, system prompt, history, bearer token, user) as well as what it returns.

The in-place retry runs against every shard runtime (``tests.harness.RUNTIMES``); the other
worker test only checks that the handler is loaded from the environment, which the registry
does the same way in every runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import celeryconfig
from deploy.embedded_redis import free_port
from deploy.launcher import wait_for_workers
from routing import ChatMessage, queue_for, send, shard_for
from services.ai.base import HandlerUnavailable, Turn, load_handler
from services.ai.openai_compat import SYSTEM_PROMPT, OpenAICompatible
from tests.fake_http import FakeJSONServer, Request
from tests.harness import RUNTIMES, wait_until

SHARDS = 4  # the fixtures' default SHARD_COUNT
HANDLER = "services.ai.openai_compat:OpenAICompatible"


def completion(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


def answer(request: Request) -> str:
    """What the fake model says: the last user message and how many turns it was shown."""
    messages = request.body["messages"]
    return f"answer to {messages[-1]['content']!r} after {len(messages) - 2} turns"


def chat_completions(request: Request, earlier: int) -> tuple[int, Any]:
    if request.path != "/v1/chat/completions":
        return 404, {"error": {"message": f"no route {request.path}"}}
    return 200, completion(answer(request))


def settings_for(base_url: str, **overrides: Any) -> celeryconfig.Settings:
    values: dict[str, Any] = {"ai_base_url": base_url, "ai_model": "tiny-chat",
                              "ai_api_key": "sk-test-123", "ai_timeout_s": 10.0, **overrides}
    return dataclasses.replace(celeryconfig.settings, **values)


def test_reply_sends_model_history_and_bearer_token() -> None:
    """Breaks if the request drifts from the chat-completions contract: wrong path, model,
    missing system prompt, history dropped or reordered or with the wrong roles, no bearer
    token; or if the reply is not read from choices[0].message.content."""
    history: list[Turn] = [{"role": "user", "text": "hi"},
                           {"role": "assistant", "text": "hello, how can I help?"}]
    with FakeJSONServer(chat_completions) as server:
        handler = OpenAICompatible(settings_for(server.url + "/v1/"))
        try:
            reply = handler.reply("alice", "what is 2+2?", history)
        finally:
            handler.close()
    assert reply == "answer to 'what is 2+2?' after 2 turns"
    [request] = server.recorded()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.body == {
        "model": "tiny-chat",
        "user": "alice",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello, how can I help?"},
            {"role": "user", "content": "what is 2+2?"},
        ],
    }


def test_no_api_key_sends_no_authorization_header() -> None:
    """Breaks if an empty key is sent as 'Bearer ' (local servers such as llama.cpp reject
    or log it) and checks that load_handler builds this handler from AI_HANDLER."""
    with FakeJSONServer(chat_completions) as server:
        handler = load_handler(HANDLER, settings_for(server.url + "/v1", ai_api_key=""))
        assert isinstance(handler, OpenAICompatible)
        try:
            assert handler.reply("7", "ping", []) == "answer to 'ping' after 0 turns"
        finally:
            handler.close()
    [request] = server.recorded()
    assert "authorization" not in request.headers


@pytest.mark.parametrize("status", [503, 500, 429])
def test_server_errors_raise_handler_unavailable(status: int) -> None:
    """Breaks if a 5xx or 429 is returned as a reply, or raised as something the ordered task
    would not treat as worth retrying."""
    with FakeJSONServer(lambda request, n: (status, {"error": {"message": "busy"}})) as server:
        handler = OpenAICompatible(settings_for(server.url + "/v1"))
        try:
            with pytest.raises(HandlerUnavailable, match=str(status)):
                handler.reply("alice", "hello", [])
        finally:
            handler.close()
    assert len(server.recorded()) == 1


def test_unreachable_server_raises_handler_unavailable() -> None:
    """Breaks if a connection error escapes as a raw httpx exception."""
    handler = OpenAICompatible(settings_for(f"http://127.0.0.1:{free_port()}/v1"))
    try:
        with pytest.raises(HandlerUnavailable):
            handler.reply("alice", "hello", [])
    finally:
        handler.close()


def _start_worker_for(user: str, workers, producer, server: FakeJSONServer, **env: str) -> None:  # type: ignore[no-untyped-def]
    workers.env.update(AI_HANDLER=HANDLER, AI_BASE_URL=server.url + "/v1", AI_MODEL="tiny-chat",
                       AI_API_KEY="sk-worker", **env)
    workers.start_shard(shard_for(user, SHARDS))
    wait_for_workers(producer, [queue_for(user, SHARDS)])


def test_shard_worker_answers_through_the_server(producer, workers, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if a real shard worker does not load AI_HANDLER from its environment, does not
    pass the stored history on the next message, or does not put the model's content in the
    user's outbox."""
    user = "alice"
    with FakeJSONServer(chat_completions) as server:
        _start_worker_for(user, workers, producer, server)
        send(producer, ChatMessage(user, "first question", message_id="m1"))
        send(producer, ChatMessage(user, "second question", message_id="m2"))
        wait_until(lambda: rclient.xlen(f"shardline:outbox:{user}") >= 2, 90,
                   what="two replies in the outbox")
    entries = rclient.xrange(f"shardline:outbox:{user}")
    assert [fields["text"] for _, fields in entries] == [
        "answer to 'first question' after 0 turns",
        "answer to 'second question' after 2 turns",
    ]
    assert [fields["message_id"] for _, fields in entries] == ["m1", "m2"]
    first, second = server.recorded()
    assert first.headers["authorization"] == "Bearer sk-worker"
    assert second.body["model"] == "tiny-chat" and second.body["user"] == user
    assert second.body["messages"][1:] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "answer to 'first question' after 0 turns"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_shard_worker_retries_a_503_in_place(producer, workers, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if HandlerUnavailable is not retried in place (the message would be parked or
    lost) or if a retry delivers the reply twice."""
    user = "bob"

    def flaky(request: Request, earlier: int) -> tuple[int, Any]:
        if earlier < 2:
            return 503, {"error": {"message": "model loading"}}
        return chat_completions(request, earlier)

    with FakeJSONServer(flaky) as server:
        _start_worker_for(user, workers, producer, server, ORDERED_MAX_ATTEMPTS="3",
                          ORDERED_RETRY_BASE_S="0.05", ORDERED_RETRY_MAX_S="0.2")
        send(producer, ChatMessage(user, "are you there?"))
        wait_until(lambda: rclient.xlen(f"shardline:outbox:{user}") >= 1, 90,
                   what="the reply after two 503s")
        requests = server.recorded()
    assert len(requests) == 3
    entries = rclient.xrange(f"shardline:outbox:{user}")
    assert [fields["text"] for _, fields in entries] == [
        "answer to 'are you there?' after 0 turns"]
