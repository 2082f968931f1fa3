"""Process-wide settings read from the environment.

Every knob natib has is an environment variable listed in `ENV_VARS`, so the CLI, the actors and the
containers in Kubernetes are configured the same way. `Settings.from_env` validates everything up
front and raises `ConfigError` naming the variable, so a typo fails at start-up rather than mid-run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from natib.runtime.errors import ConfigError

__all__ = ["ENV_VARS", "LAUNCHERS", "LOG_FORMATS", "LOG_LEVELS", "EnvVar", "Settings"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
LAUNCHERS = ("local", "kubernetes")
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")

_DAY = 24 * 60 * 60.0


class EnvVar(NamedTuple):
    """One documented environment variable: its name, default (as text) and meaning."""

    name: str
    default: str
    meaning: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "NATS_URL", "(unset)", "NATS server(s) to use; unset means natib starts and reuses its own server"
    ),
    EnvVar("NATIB_HOME", "~/.natib", "directory for natib's own server, its store and local trial files"),
    EnvVar("NATIB_LOG_LEVEL", "info", "log level: " + "|".join(LOG_LEVELS)),
    EnvVar(
        "NATIB_LOG_FORMAT",
        "auto",
        "log format: " + "|".join(LOG_FORMATS) + " (auto = console on a terminal, else JSON lines)",
    ),
    EnvVar("NATIB_ACK_WAIT", "30", "seconds a handler may hold a message before NATS redelivers it"),
    EnvVar("NATIB_LOG_MAX_AGE", str(int(7 * _DAY)), "seconds raw trial output is kept (default 7 days)"),
    EnvVar("NATIB_NATS_SERVER", "(search)", "explicit nats-server binary (2.11 or newer)"),
    EnvVar("NATIB_LAUNCHER", "local", "where trials run: " + "|".join(LAUNCHERS)),
    EnvVar("NATIB_DRAIN_TIMEOUT", "10", "seconds to finish in-flight work on shutdown"),
    EnvVar("NATIB_REQUEST_TIMEOUT", "10", "seconds a CLI request waits for its answer"),
    EnvVar("NATIB_HEALTH_PORT", "(unset)", "port for /healthz and /readyz of `natib up`/`natib actor` (unset: none)"),
    EnvVar("NATIB_K8S_NAMESPACES", "(all)", "namespaces the k8s-controller watches (comma-separated)"),
    EnvVar("NATIB_DBMANAGER_PORT", "6789", "port of the dbmanager actor's Katib gRPC endpoint"),
    EnvVar("NATIB_TRIAL_NATS_URL", "(NATS_URL)", "NATS address trial pods use (Push, natib sidecar) on Kubernetes"),
    EnvVar("NATIB_SIDECAR_IMAGE", "natib:latest", "image of the natib sidecar the Kubernetes launcher adds to pods"),
)


def _get(env: Mapping[str, str], name: str) -> str | None:
    # An empty variable is how shells and manifests spell "unset", so treat it that way.
    value = env.get(name, "").strip()
    return value or None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    value = raw.lower()
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number of seconds, got {raw!r}")
    return value


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name}: expected a TCP port from 1 to 65535, got {raw!r}")
    return int(raw)


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _get(env, name)
    if raw is None:
        return ()
    out = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [n for n in out if len(n) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)]
    if bad:
        raise ConfigError(f"{name}: {', '.join(bad)} is not a Kubernetes namespace name (DNS-1123 label)")
    return out


def _path(raw: str) -> Path:
    return Path(raw).expanduser().absolute()


def _nats_url(env: Mapping[str, str]) -> str | None:
    raw = _get(env, "NATS_URL")
    if raw is None:
        return None
    for part in raw.split(","):
        part = part.strip()
        scheme, sep, rest = part.partition("://")
        if not part or (sep and (scheme.lower() not in _NATS_SCHEMES or not rest)):
            raise ConfigError(
                f"NATS_URL: expected nats://host:port (or a comma-separated list; schemes "
                f"{', '.join(_NATS_SCHEMES)}), got {raw!r}"
            )
    return raw


@dataclass(frozen=True)
class Settings:
    """Validated settings for one natib process; build it with `Settings.from_env`."""

    nats_url: str | None = None
    home: Path = field(default_factory=lambda: _path("~/.natib"))
    log_level: str = "info"
    log_format: str = "auto"
    ack_wait: float = 30.0
    log_max_age: float = 7 * _DAY
    nats_server: Path | None = None
    launcher: str = "local"
    drain_timeout: float = 10.0
    request_timeout: float = 10.0
    health_port: int | None = None
    k8s_namespaces: tuple[str, ...] = ()
    dbmanager_port: int = 6789
    trial_nats_url: str | None = None
    sidecar_image: str = "natib:latest"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read and validate every variable in `ENV_VARS`; raise `ConfigError` on the first bad one."""
        home = _get(env, "NATIB_HOME")
        server = _get(env, "NATIB_NATS_SERVER")
        return cls(
            nats_url=_nats_url(env),
            home=_path(home) if home else _path("~/.natib"),
            log_level=_choice(env, "NATIB_LOG_LEVEL", LOG_LEVELS, "info"),
            log_format=_choice(env, "NATIB_LOG_FORMAT", LOG_FORMATS, "auto"),
            ack_wait=_seconds(env, "NATIB_ACK_WAIT", 30.0),
            log_max_age=_seconds(env, "NATIB_LOG_MAX_AGE", 7 * _DAY),
            nats_server=_path(server) if server else None,
            launcher=_choice(env, "NATIB_LAUNCHER", LAUNCHERS, "local"),
            drain_timeout=_seconds(env, "NATIB_DRAIN_TIMEOUT", 10.0),
            request_timeout=_seconds(env, "NATIB_REQUEST_TIMEOUT", 10.0),
            health_port=_port(env, "NATIB_HEALTH_PORT"),
            k8s_namespaces=_names(env, "NATIB_K8S_NAMESPACES"),
            dbmanager_port=_port(env, "NATIB_DBMANAGER_PORT") or 6789,
            trial_nats_url=_get(env, "NATIB_TRIAL_NATS_URL"),
            sidecar_image=_get(env, "NATIB_SIDECAR_IMAGE") or "natib:latest",
        )

    @property
    def trials_dir(self) -> Path:
        """Where the local launcher keeps each trial's working directory."""
        return self.home / "trials"

    @property
    def nats_dir(self) -> Path:
        """Where natib's own nats-server keeps its config, store, log and `server.json`."""
        return self.home / "nats"
