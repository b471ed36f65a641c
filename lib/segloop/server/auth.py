"""Who is calling: MONAI Label's token check, made strict, and the caller's name for the request.

MONAI Label's own settings decide everything (``MONAI_LABEL_AUTH_ENABLE``, ``..._REALM_URI``,
``..._TOKEN_USERNAME``, ``..._TOKEN_ROLES`` and the four role names); every upstream endpoint and
every ``/segloop`` endpoint already asks MONAI Label's ``RBAC`` for a role. SegLoop replaces the one
function those checks share, ``get_current_user``, because upstream's version

* passes no ``algorithms`` to PyJWT, which PyJWT 2 refuses, so every token fails; SegLoop accepts
  RS256 only (no ``none``, no HMAC with the public key as secret) and requires ``exp``;
* answers every failure with the same "Could not validate credentials"; SegLoop says which:
  missing, expired, bad signature, malformed, or the identity provider unreachable (503).

Roles nest: an admin token may do what a reviewer, annotator or user may (Keycloak composite
roles do the same; a token minted without them still works). The realm's public key is fetched
once (MONAI Label's ``get_public_key``) and kept until the server restarts.
"""

import contextvars
import logging
from typing import List, Optional

import jwt
from fastapi import Depends, FastAPI
from fastapi.security import OAuth2PasswordBearer
from monailabel.config import settings
from monailabel.endpoints.user.auth import DEFAULT_USER, User, get_current_user, get_public_key

from segloop.errors import ClientError

logger = logging.getLogger(__name__)
_caller: contextvars.ContextVar[Optional[User]] = contextvars.ContextVar("segloop_caller", default=None)
_bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def role_ladder() -> List[str]:
    """MONAI Label's roles, lowest first."""
    return [
        settings.MONAI_LABEL_AUTH_ROLE_USER,
        settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
        settings.MONAI_LABEL_AUTH_ROLE_REVIEWER,
        settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
    ]


def with_lower_roles(roles: List[str]) -> List[str]:
    """``roles`` plus every role below the highest MONAI Label role among them."""
    ladder = role_ladder()
    top = max((ladder.index(r) for r in roles if r in ladder), default=-1)
    return sorted(set(roles) | set(ladder[: top + 1]))


def unauthorized(message: str) -> ClientError:
    logger.warning(f"refused a request: {message}")
    error = ClientError(401, message)
    error.headers = {"WWW-Authenticate": "Bearer"}
    return error


def _claim(payload: dict, path: str):
    """A claim by MONAI Label's ``#``-separated path (``realm_access#roles``)."""
    value = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def user_from_token(token: Optional[str]) -> User:
    """The verified caller of a bearer token; ClientError 401/503 when it cannot be trusted."""
    if not token:
        raise unauthorized("no bearer token: log in (POST /auth/token) and send 'Authorization: Bearer <token>'")
    try:
        key = get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except Exception as e:  # network, HTTP or JSON errors of the identity provider
        raise ClientError(503, f"cannot fetch the realm's public key from the identity provider: {type(e).__name__}") from None
    try:
        payload = jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise unauthorized("token expired: log in again") from None
    except jwt.InvalidSignatureError:
        raise unauthorized("token signature does not verify with the realm's public key") from None
    except jwt.InvalidTokenError as e:
        raise unauthorized(f"invalid token: {e}") from None
    roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES)
    username = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not isinstance(username, str) or not username:
        raise unauthorized(f"token has no {settings.MONAI_LABEL_AUTH_TOKEN_USERNAME!r} claim")
    return User(
        username=username,
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=with_lower_roles([r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []),
    )


async def verified_user(token: Optional[str] = Depends(_bearer)) -> User:
    """Stands in for MONAI Label's ``get_current_user``; remembers the caller for this request."""
    user = user_from_token(token) if settings.MONAI_LABEL_AUTH_ENABLE else DEFAULT_USER
    _caller.set(user)
    return user


def authenticated_name() -> Optional[str]:
    """The token's user name while serving a request with authentication on; otherwise None
    (then a client-declared ``client_id`` is all there is)."""
    user = _caller.get()
    return user.username if settings.MONAI_LABEL_AUTH_ENABLE and user is not None else None


def install_auth(app: FastAPI) -> None:
    app.dependency_overrides[get_current_user] = verified_user
