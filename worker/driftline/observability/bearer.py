"""Bearer-token check for ``POST /alerts``.

Anyone who can reach the worker's HTTP port could otherwise post a fake ``RetrainRequired``
notification.  With a token configured (``--alerts-token-file`` or ``--alerts-token``, env
``DRIFTLINE_ALERTS_TOKEN_FILE`` / ``DRIFTLINE_ALERTS_TOKEN``), only requests carrying
``Authorization: Bearer <token>`` are taken, which is what Alertmanager sends with
``http_config.authorization`` (type ``Bearer``, ``credentials`` or ``credentials_file``).
The comparison is constant-time (``hmac.compare_digest``) and the token is never logged
nor shown in a ``repr``.
"""

from __future__ import annotations

import hmac
from pathlib import Path

__all__ = ["BearerToken", "load_token"]


class BearerToken:
    """A secret that an ``Authorization`` header must present."""

    __slots__ = ("_expected",)

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("the alerts token must be non-empty and contain no whitespace")
        self._expected = token.encode()

    def allows(self, authorization: str | None) -> bool:
        """Whether the header value is ``Bearer <the token>`` (scheme case-insensitive)."""
        if authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented, self._expected)

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


def load_token(token: str | None, token_file: str | None) -> BearerToken | None:
    """The token from ``token_file`` (first line) or ``token``; None when neither is set.

    Raises ``ValueError`` when both are given, the file cannot be read, or it is empty.
    """
    if token and token_file:
        raise ValueError("give the alerts token once: --alerts-token or --alerts-token-file")
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"alerts token file {token_file}: {error.strerror}") from error
        lines = text.strip().splitlines()
        if not lines:
            raise ValueError(f"alerts token file {token_file} is empty")
        return BearerToken(lines[0])
    return BearerToken(token) if token else None
