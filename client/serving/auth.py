"""API-key authentication: a bearer token compared in constant time, read from a file or the environment.

The key is never logged or echoed; error replies say only that it is missing or wrong. When a store has
configured no key, one is generated into ``<state>/api_key`` (mode 0600) so the service is never open by
accident.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials as Credentials
from fastapi.security import HTTPBearer

from shared.errors import ConfigError

ENV_VAR = "FEDREC_API_KEY"
MIN_KEY_LENGTH = 16
log = logging.getLogger(__name__)


def _checked(key: str, source: str) -> str:
    key = key.strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"API key from {source} is shorter than {MIN_KEY_LENGTH} characters")
    return key


def load_api_key(key_file: Path | None, default_file: Path) -> str:
    """The key from ``key_file``, else ``$FEDREC_API_KEY``, else ``default_file`` (generated if absent)."""
    if key_file is not None:
        try:
            return _checked(key_file.read_text(encoding="utf-8"), str(key_file))
        except OSError as err:
            raise ConfigError(
                f"serve.api-key-file={str(key_file)!r} cannot be read ({err.strerror})"
            ) from None
    if os.environ.get(ENV_VAR):
        return _checked(os.environ[ENV_VAR], f"${ENV_VAR}")
    if default_file.exists():
        return _checked(default_file.read_text(encoding="utf-8"), str(default_file))
    default_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(default_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    log.warning("no API key configured: generated one in %s (readable by its owner only)", default_file)
    return key


_scheme = HTTPBearer(auto_error=False, description="the store's API key")


def bearer_dependency(api_key: str) -> Callable[..., None]:
    """A FastAPI dependency that accepts only ``Authorization: Bearer <api_key>`` (declared in OpenAPI).

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    hop per request for a comparison of a few bytes.
    """
    expected = api_key.encode("utf-8")

    async def require_api_key(credentials: Annotated[Credentials | None, Depends(_scheme)]) -> None:
        token = credentials.credentials.encode("utf-8") if credentials is not None else b""
        # compare_digest on bytes: the time taken does not depend on how much of the key matched.
        if not hmac.compare_digest(token, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or invalid API key (send 'Authorization: Bearer <key>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key
