"""Bearer-token callers: ``API_TOKENS=alice:<token>,bob:<token>``; each token names an owner.

Tokens are compared with :func:`hmac.compare_digest` against every configured token, so the
time taken does not tell how much of a guess was right. Without tokens every caller is the
single owner ``local`` and the API only listens on loopback (``api.__main__``).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

#: The owner of everything when API_TOKENS is empty.
LOCAL_OWNER = "local"


def parse_tokens(raw: str) -> dict[str, str]:
    """``"alice:t1,bob:t2"`` -> {"t1": "alice", "t2": "bob"}."""
    tokens: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        owner, sep, token = part.partition(":")
        if not sep or not owner or not token:
            raise ValueError(f"API_TOKENS entries must look like owner:token, got {part!r}")
        tokens[token] = owner
    return tokens


def owner_of(authorization: str | None, tokens: dict[str, str]) -> str | None:
    """The owner a ``Bearer`` header authenticates, or None."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    found = None
    for token, owner in tokens.items():
        if hmac.compare_digest(token.encode(), presented.strip().encode()):
            found = owner
    return found


#: Declares the bearer scheme in the OpenAPI document (the Authorize button of /docs); the
#: check itself is :func:`owner_of`, which also answers the 401 (``auto_error`` off).
bearer = HTTPBearer(auto_error=False,
                    description="A token of API_TOKENS (owner:token); the owner is the caller.")


def caller(request: Request, _: Annotated[HTTPAuthorizationCredentials | None,
                                          Security(bearer)]) -> str:
    """FastAPI dependency: the authenticated owner (401 without a valid token)."""
    tokens: dict[str, str] = request.app.state.tokens
    if not tokens:
        return LOCAL_OWNER
    owner = owner_of(request.headers.get("authorization"), tokens)
    if owner is None:
        raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return owner


#: Handler parameter type: the authenticated owner.
Owner = Annotated[str, Depends(caller)]
