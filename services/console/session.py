"""The console's sign-in session and the CSRF token of its forms.

**Session.** The signed-in credential (a team token or a member's API key) is what the console
calls the APIs with, so it must come back with every request; the browser keeps it only
encrypted and authenticated (Fernet: AES-128-CBC with HMAC-SHA256) under a key derived from
`CONSOLE_SESSION_SECRET`, stamped with the time it was made. The cookie is opaque: it holds
neither the token nor anything a client can read it from or change, and one older than
`CONSOLE_SESSION_HOURS`, or made under another secret, opens to nothing (sign in again). It
needs no server-side state, so every replica with the same secret reads it.

**CSRF.** Every form (sign-in, sign-out) carries a token that a page of another site cannot
know: a random value kept in its own cookie, and in the form the HMAC of that value under a
second key derived from the secret (a signed double-submit cookie, OWASP). A POST whose form
token is not the HMAC of its cookie's value is refused with `403`. The sign-in form needs it
although no session exists yet: otherwise another site could sign a person in as someone else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from cryptography.fernet import Fernet, InvalidToken

NONCE_BYTES = 32


def _derived(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"metering console " + purpose, hashlib.sha256).digest()


class Sessions:
    """Seals and opens session cookies, and makes and checks the forms' CSRF tokens."""

    def __init__(self, secret: bytes, max_age_seconds: float) -> None:
        key = base64.urlsafe_b64encode(_derived(secret, b"session"))
        self._fernet = Fernet(key)
        self._csrf_key = _derived(secret, b"csrf")
        self.max_age_seconds = max_age_seconds

    def seal(self, credential: str, now: float | None = None) -> str:
        """The session cookie's value for `credential` (made at `now`, default: the clock)."""
        at = int(time.time() if now is None else now)
        return self._fernet.encrypt_at_time(credential.encode(), at).decode()

    def open(self, sealed: str | None) -> str:
        """The credential of a session cookie; `""` when it is missing, altered, made under
        another secret or older than the session's lifetime."""
        if not sealed:
            return ""
        try:
            opened = self._fernet.decrypt(sealed.encode(), ttl=int(self.max_age_seconds))
        except (InvalidToken, ValueError):
            return ""
        return opened.decode()

    @staticmethod
    def new_nonce() -> str:
        """A fresh value for the CSRF cookie."""
        return secrets.token_urlsafe(NONCE_BYTES)

    def csrf_token(self, nonce: str) -> str:
        """The token the forms of a browser holding the CSRF cookie `nonce` carry."""
        return hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, nonce: str | None, token: str | None) -> bool:
        """Whether a form's `token` was made for the CSRF cookie `nonce` (compared in
        constant time); never with either missing."""
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.csrf_token(nonce), token)
