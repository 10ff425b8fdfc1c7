"""The console's settings: the shared ones, plus where the three services answer."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError

from metering.settings import Settings, SettingsError


class ConsoleSettings(Settings):
    """Every field is an environment variable of the same name (`INGEST_URL`, ...)."""

    ingest_url: str = Field("http://127.0.0.1:8001", description="ingest's base URL")
    ledger_url: str = Field("http://127.0.0.1:8002", description="ledger's base URL")
    quota_url: str = Field("http://127.0.0.1:8003", description="quota's base URL")
    console_secure_cookie: bool = Field(
        False,
        description="mark the console's cookies Secure (set it when served over HTTPS; they "
        "are Secure anyway on a request that came over HTTPS)",
    )
    console_session_secret: SecretStr | None = Field(
        None,
        description="secret the session cookie is encrypted and the forms' CSRF tokens signed "
        "with; the same for every replica. Unset: a random one per process (its sessions end "
        "when it stops)",
    )
    console_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="a sign-in lasts this long, then sign in again"
    )
    console_upstream_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="longest wait for one call to ledger or quota"
    )


def load_console_settings(**overrides: object) -> ConsoleSettings:
    try:
        return ConsoleSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        ]
        raise SettingsError("bad settings in the environment:\n" + "\n".join(lines)) from None
