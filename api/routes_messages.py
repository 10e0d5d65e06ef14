"""POST /v1/messages and the Telegram webhook: accept a message, publish it to its shard."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from api.auth import Owner
from api.schemas import MessageAccepted, MessageIn
from api.state import ApiState, State
from ingest.log import IngestedMessage
from routing import ChatMessage, PublishFailed, canonical_user_id, send

router = APIRouter(prefix="/v1", tags=["messages"])


def accept(st: ApiState, user_id: int | str, text: str, message_id: str,
           chat_id: int | str, sent_at: float) -> MessageAccepted:
    """Publish, then append to the ingest log (with no task id if the broker was down)."""
    user = canonical_user_id(user_id)
    message = ChatMessage(user_id, text, message_id=message_id, chat_id=chat_id,
                          sent_at=sent_at)
    entry = IngestedMessage(user_id=user, chat_id=str(chat_id), message_id=message_id,
                            text=text, sent_at=sent_at)
    try:
        result = send(st.producer, message)
    except PublishFailed:
        st.ingest.append(entry)
        raise
    if not result.duplicate:
        st.ingest.append(IngestedMessage(**{**entry.__dict__, "task_id": result.task_id}))
    return MessageAccepted(task_id=result.task_id, duplicate=result.duplicate,
                           message_id=message_id)


@router.post("/messages", status_code=202, response_model=MessageAccepted)
def post_message(body: MessageIn, st: State,
                 owner: Owner) -> MessageAccepted:
    """Queue one message on its user's shard; a repeated ``message_id`` is not sent again."""
    return accept(st, body.user_id, body.text, body.message_id or uuid.uuid4().hex,
                  body.chat_id if body.chat_id is not None else body.user_id, time.time())


@router.post("/telegram/webhook", tags=["telegram"])
async def telegram_webhook(request: Request, st: State) -> JSONResponse:
    """A Telegram Update; text messages are queued, every other update is acknowledged."""
    secret = st.settings.telegram_webhook_secret
    presented = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not secret:
        raise HTTPException(403, "Telegram webhook disabled: TELEGRAM_WEBHOOK_SECRET is not set")
    if not hmac.compare_digest(secret.encode(), presented.encode()):
        raise HTTPException(401, "wrong X-Telegram-Bot-Api-Secret-Token")
    try:
        update: Any = await request.json()
    except ValueError:
        raise HTTPException(422, "body is not JSON") from None
    message = update.get("message") if isinstance(update, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return JSONResponse({"ok": True, "ignored": True})
    try:
        user, chat = message["from"]["id"], message["chat"]["id"]
        message_id = f"tg:{message['message_id']}"
    except (KeyError, TypeError):
        # A channel post has no sender: acknowledged, or Telegram would retry it forever.
        return JSONResponse({"ok": True, "ignored": True})
    accepted = accept(st, user, message["text"], message_id, chat,
                      float(message.get("date") or time.time()))
    return JSONResponse({"ok": True, **accepted.model_dump()})
