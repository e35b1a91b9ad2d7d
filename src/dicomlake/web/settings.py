"""Settings of the web service: HTTP binding, TLS, secrets, sessions, analyst profile, limits.

Read from the ``web`` section of the main settings when it has one, else from ``[web]`` in
``dicomlake.toml`` and ``DICOMLAKE_WEB__*`` environment variables (e.g. ``DICOMLAKE_WEB__SECRET``).
Secrets never come from code: without ``secret`` the service draws a random one per process
and warns, so sessions and tokens end with the process.
"""

from __future__ import annotations

import logging
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr

LOG = logging.getLogger("dicomlake.web")


class WebSettings(BaseModel):
    """How ``dicomlake serve`` answers HTTP: DICOMweb, the UI, authentication and the access log."""

    bind: str = Field("127.0.0.1", description="Address the HTTP server binds. Default: 127.0.0.1")
    http_port: int = Field(8000, description="TCP port of DICOMweb and the web UI. Default: 8000")
    secret: SecretStr | None = Field(
        None,
        description="Key signing sessions and bearer JWTs (DICOMLAKE_WEB__SECRET); at least 32 "
        "characters. Default: none (a random per-process key; tokens end with the process)",
    )
    tls_certificate: Path | None = Field(None, description="PEM certificate chain for HTTPS. Default: none")
    tls_private_key: Path | None = Field(None, description="PEM private key for HTTPS. Default: none")
    tls_ca_file: Path | None = Field(
        None, description="CA bundle; when set, clients must present a certificate it signed. Default: none"
    )
    access_db: Path | None = Field(
        None, description="SQLite file of users, tokens, sessions and the access log. Default: <lake>/access.db"
    )
    jwt_issuer: str = Field("dicomlake", description="`iss` of the JWTs we issue and accept. Default: dicomlake")
    jwt_audience: str = Field(
        "dicomlake-web", description="`aud` of the JWTs we issue and accept (IHE IUA). Default: dicomlake-web"
    )
    token_days: float = Field(30.0, description="Lifetime of a bearer JWT from `dicomlake token`, days. Default: 30")
    session_hours: float = Field(8.0, description="Idle lifetime of a browser session, hours. Default: 8")
    analyst_profile: str = Field(
        "research",
        description="De-identification profile applied on the fly to everything the analyst role "
        "sees (built-in name or TOML path). Default: research",
    )
    qido_default_limit: int = Field(100, description="QIDO-RS results per page when no limit is given. Default: 100")
    qido_max_limit: int = Field(10_000, description="Largest QIDO-RS limit accepted. Default: 10000")
    page_size: int = Field(50, description="Rows per UI page. Default: 50")
    page_max: int = Field(1000, description="Largest `limit` a UI page or its .json/.csv twin accepts. Default: 1000")
    stow_keep_files: bool = Field(
        True, description="Keep STOW-RS instances under <lake>/files so WADO-RS can return them. Default: true"
    )
    stow_max_bytes: int = Field(
        256 * 1024 * 1024,
        description="Largest STOW-RS request body; larger ones are refused with 413 (send several requests). "
        "Default: 256 MiB",
    )
    login_attempts: int = Field(
        10,
        description="Wrong passwords per source address and account (form, /oauth/token, Basic) before each "
        "further attempt waits 1 s, 2 s, 4 s … (at most 15 min); never a lock-out. Default: 10",
    )


def _from_toml() -> dict[str, Any]:
    path = os.environ.get("DICOMLAKE_CONFIG", "dicomlake.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    web = doc.get("web", {})
    return dict(web) if isinstance(web, dict) else {}


def web_settings(**overrides: Any) -> WebSettings:
    """The effective web settings: main settings' ``web`` section, else TOML then environment."""
    try:
        from dicomlake.config import get_settings

        main = get_settings()
        if hasattr(main, "web"):
            base: WebSettings = WebSettings.model_validate(main.web.model_dump())  # type: ignore[attr-defined]
            return base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    except Exception:
        pass
    values = _from_toml()
    prefix = "DICOMLAKE_WEB__"
    for name in WebSettings.model_fields:
        env = os.environ.get(prefix + name.upper())
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return WebSettings.model_validate(values)


def secret_bytes(settings: WebSettings) -> bytes:
    """The signing key; a random one (with a warning) when none is configured."""
    if settings.secret is not None:
        value = settings.secret.get_secret_value()
        if len(value) < 32:
            from dicomlake.errors import ConfigError

            raise ConfigError(
                f"web.secret is {len(value)} characters; use at least 32 random characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) in "
                "DICOMLAKE_WEB__SECRET or [web] secret of dicomlake.toml"
            )
        return value.encode()
    LOG.warning(
        "no web secret (DICOMLAKE_WEB__SECRET): using a random per-process key; sessions and "
        "bearer tokens end when the service stops"
    )
    return secrets.token_bytes(32)
