"""Member API keys: made once, shown once, stored only as a keyed hash.

ingest makes keys and records their hash; quota hashes the key a caller presents and looks
the hash up. Both use the same secret (`API_KEY_HASH_SECRET`), so a stolen table of hashes is
useless without it. The prefix tells this plan's keys from other plans' keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: This plan's keys start with it; other plans' keys (Coding Plan, pay-as-you-go) do not.
TOKEN_PLAN_PREFIX = "sk-tp-"


def new_api_key() -> str:
    """A fresh secret key for a member: the prefix and 256 bits of randomness."""
    return TOKEN_PLAN_PREFIX + secrets.token_urlsafe(32)


def key_hash(api_key: str, secret: str) -> str:
    """The keyed hash (HMAC-SHA256, hex) under which a key is stored and looked up."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()
