"""How natib authenticates to NATS: user/password, token, NKey seed, credentials file and TLS.

Every natib process (actors, CLI, ``natib.report_metrics`` inside trials) reads the same variables, so
one environment configures them all; trials inherit it from the launcher.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from natib.runtime.errors import ConfigError
from natib.runtime.settings import EnvVar

AUTH_VARS: tuple[EnvVar, ...] = (
    EnvVar("NATS_USER", "(unset)", "user name for NATS user/password authentication"),
    EnvVar("NATS_PASSWORD", "(unset)", "password for NATS_USER"),
    EnvVar("NATS_TOKEN", "(unset)", "NATS authentication token"),
    EnvVar("NATS_NKEY", "(unset)", "file holding an NKey seed (SU...) to sign the server's challenge"),
    EnvVar("NATS_CREDS", "(unset)", "NATS credentials file (user JWT and NKey seed)"),
    EnvVar("NATS_TLS_CA", "(unset)", "CA certificate file to verify the server (turns TLS on)"),
    EnvVar("NATS_TLS_CERT", "(unset)", "client certificate file for mutual TLS (with NATS_TLS_KEY)"),
    EnvVar("NATS_TLS_KEY", "(unset)", "client private key file for mutual TLS"),
)


def _file(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name) or None
    if value is not None and not Path(value).is_file():
        raise ConfigError(f"{name}: no such file {value!r}")
    return value


def connect_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from the NATS_* variables (empty when none is set)."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    user, password = env.get("NATS_USER") or None, env.get("NATS_PASSWORD") or None
    if (user is None) != (password is None):
        raise ConfigError("NATS_USER and NATS_PASSWORD: set both or neither")
    if user is not None:
        out["user"], out["password"] = user, password
    if env.get("NATS_TOKEN"):
        out["token"] = env["NATS_TOKEN"]
    if (nkey := _file(env, "NATS_NKEY")) is not None:
        out["nkeys_seed"] = nkey
    if (creds := _file(env, "NATS_CREDS")) is not None:
        out["user_credentials"] = creds
    ca, cert, key = _file(env, "NATS_TLS_CA"), _file(env, "NATS_TLS_CERT"), _file(env, "NATS_TLS_KEY")
    if (cert is None) != (key is None):
        raise ConfigError("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither")
    if ca is not None or cert is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
        out["tls"] = context
    return out
