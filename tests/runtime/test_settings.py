"""Settings are read from the environment, validated up front, and documented in ENV_VARS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from natib.runtime.errors import ConfigError, NatibError
from natib.runtime.settings import ENV_VARS, Settings


def test_defaults_when_nothing_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings.from_env({})
    assert s.nats_url is None
    assert s.home == Path(tmp_path) / ".natib"
    assert s.log_level == "info"
    assert s.log_format == "auto"
    assert s.ack_wait == 30
    assert s.log_max_age == 7 * 24 * 3600
    assert s.nats_server is None
    assert s.launcher == "local"
    assert s.drain_timeout == 10
    assert s.request_timeout == 10
    assert s.trials_dir == s.home / "trials"
    assert s.nats_dir == s.home / "nats"


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {
        "NATS_URL": "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
        "NATIB_HOME": "~/elsewhere",
        "NATIB_LOG_LEVEL": "DEBUG",
        "NATIB_LOG_FORMAT": "json",
        "NATIB_ACK_WAIT": "2.5",
        "NATIB_LOG_MAX_AGE": "3600",
        "NATIB_NATS_SERVER": "~/bin/nats-server",
        "NATIB_LAUNCHER": "kubernetes",
        "NATIB_DRAIN_TIMEOUT": "1",
        "NATIB_REQUEST_TIMEOUT": "0.25",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        nats_url="nats://10.0.0.1:4222,nats://10.0.0.2:4222",
        home=tmp_path / "elsewhere",
        log_level="debug",
        log_format="json",
        ack_wait=2.5,
        log_max_age=3600.0,
        nats_server=tmp_path / "bin" / "nats-server",
        launcher="kubernetes",
        drain_timeout=1.0,
        request_timeout=0.25,
    )
    assert s.trials_dir == tmp_path / "elsewhere" / "trials"


def test_env_vars_table_documents_exactly_what_is_read() -> None:
    names = [v.name for v in ENV_VARS]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Settings))
    assert all(v.default and v.meaning for v in ENV_VARS)
    # Every documented variable must change the result, or the table lies.
    base = Settings.from_env({})
    changed = {
        "NATS_URL": "nats://h:1",
        "NATIB_HOME": "/x",
        "NATIB_LOG_LEVEL": "error",
        "NATIB_LOG_FORMAT": "console",
        "NATIB_ACK_WAIT": "1",
        "NATIB_LOG_MAX_AGE": "1",
        "NATIB_NATS_SERVER": "/x/nats-server",
        "NATIB_LAUNCHER": "kubernetes",
        "NATIB_DRAIN_TIMEOUT": "1",
        "NATIB_REQUEST_TIMEOUT": "1",
        "NATIB_HEALTH_PORT": "8081",
        "NATIB_K8S_NAMESPACES": "team-a",
        "NATIB_DBMANAGER_PORT": "7000",
        "NATIB_TRIAL_NATS_URL": "nats://t:1",
        "NATIB_SIDECAR_IMAGE": "x:1",
    }
    assert set(changed) == set(names)
    for name, value in changed.items():
        assert Settings.from_env({name: value}) != base, name


def test_empty_values_mean_unset() -> None:
    assert Settings.from_env(
        {"NATS_URL": "", "NATIB_ACK_WAIT": " ", "NATIB_LOG_LEVEL": ""}
    ) == Settings.from_env({})


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("NATIB_ACK_WAIT", "abc", "NATIB_ACK_WAIT: expected a positive number of seconds, got 'abc'"),
        ("NATIB_ACK_WAIT", "0", "NATIB_ACK_WAIT: expected a positive number of seconds, got '0'"),
        ("NATIB_LOG_MAX_AGE", "-5", "NATIB_LOG_MAX_AGE: expected a positive number of seconds, got '-5'"),
        ("NATIB_DRAIN_TIMEOUT", "nan", "NATIB_DRAIN_TIMEOUT: expected a positive number"),
        ("NATIB_REQUEST_TIMEOUT", "inf", "NATIB_REQUEST_TIMEOUT: expected a positive number"),
        (
            "NATIB_LOG_LEVEL",
            "verbose",
            "NATIB_LOG_LEVEL: expected one of debug, info, warning, error, got 'verbose'",
        ),
        ("NATIB_LOG_FORMAT", "xml", "NATIB_LOG_FORMAT: expected one of auto, json, console, got 'xml'"),
        ("NATIB_LAUNCHER", "slurm", "NATIB_LAUNCHER: expected one of local, kubernetes, got 'slurm'"),
        ("NATS_URL", "http://h:4222", "NATS_URL: expected nats://host:port"),
        ("NATS_URL", "nats://a:1,,nats://b:2", "NATS_URL: expected nats://host:port"),
    ],
)
def test_bad_values_name_the_variable_and_reason(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert str(err.value).startswith(reason)
    assert isinstance(err.value, NatibError)


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ack_wait = 1  # type: ignore[misc]
