"""POST /v1/messages and the Telegram webhook: accept a message, publish it to its shard."""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader

from api.auth import Owner
from api.contract import errors
from api.schemas import MessageAccepted, MessageIn, WebhookAnswer
from api.state import ApiState, State
from ingest.log import IngestedMessage
from routing import ChatMessage, PublishFailed, canonical_user_id, send

router = APIRouter(prefix="/v1", tags=["messages"])

#: Declares Telegram's secret header as the webhook's credentials in the OpenAPI document.
telegram_secret = APIKeyHeader(name="X-Telegram-Bot-Api-Secret-Token", auto_error=False,
                               description="TELEGRAM_WEBHOOK_SECRET, sent back by Telegram.")


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


@router.post("/messages", status_code=202, response_model=MessageAccepted,
             responses=errors(400, 401, 503))
def post_message(body: MessageIn, st: State,
                 owner: Owner) -> MessageAccepted:
    """Queue one message on its user's shard; a repeated ``message_id`` is not sent again."""
    return accept(st, body.user_id, body.text, body.message_id or uuid.uuid4().hex,
                  body.chat_id if body.chat_id is not None else body.user_id, time.time())


#: The body is any Telegram Update (read as JSON by the handler, which ignores what it does
#: not use), declared so the document says a JSON object is expected.
UPDATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "description": "A Telegram Update"}}}}}


@router.post("/telegram/webhook", tags=["telegram"], response_model=WebhookAnswer,
             response_model_exclude_none=True, responses=errors(400, 401, 403, 422, 503),
             openapi_extra=UPDATE_BODY)
async def telegram_webhook(request: Request, st: State,
                           presented: Annotated[str | None, Security(telegram_secret)],
                           ) -> WebhookAnswer:
    """A Telegram Update; text messages are queued, every other update is acknowledged."""
    secret = st.settings.telegram_webhook_secret
    if not secret:
        raise HTTPException(403, "Telegram webhook disabled: TELEGRAM_WEBHOOK_SECRET is not set")
    if not hmac.compare_digest(secret.encode(), (presented or "").encode()):
        raise HTTPException(401, "wrong X-Telegram-Bot-Api-Secret-Token")
    try:
        update: Any = await request.json()
    except ValueError:
        update = None
    if not isinstance(update, dict):
        raise RequestValidationError([{"type": "model_type", "loc": ("body",),
                                       "msg": "body must be a JSON object (an Update)",
                                       "input": None}])
    message = update.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return WebhookAnswer(ok=True, ignored=True)
    try:
        user, chat = message["from"]["id"], message["chat"]["id"]
        message_id = f"tg:{message['message_id']}"
    except (KeyError, TypeError):
        # A channel post has no sender: acknowledged, or Telegram would retry it forever.
        return WebhookAnswer(ok=True, ignored=True)
    accepted = accept(st, user, message["text"], message_id, chat,
                      float(message.get("date") or time.time()))
    return WebhookAnswer(ok=True, **accepted.model_dump())
