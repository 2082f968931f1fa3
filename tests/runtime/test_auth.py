"""natib against nats-servers that require user/password, a token, an NKey, or TLS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest

from natib.runtime.auth import connect_options
from natib.runtime.errors import ConfigError

NATIB = str(Path(sys.executable).parent / "natib")
SERVER = str(Path(sys.executable).parent / "nats-server")
SEED = b"SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(tmp: Path, auth: str) -> Iterator[str]:
    """A JetStream nats-server on a free port with the given auth/TLS config block."""
    port = free_port()
    conf = tmp / "server.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp / "store"}" }}\n{auth}\n')
    proc = subprocess.Popen([SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=(tmp / "log").open("wb"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def natib(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NATIB, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def base_env(tmp: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env.update({"NATS_URL": url, "NATIB_HOME": str(tmp / "home"), "NATIB_REQUEST_TIMEOUT": "3"})
    return env


def check(tmp: Path, url: str, good: dict[str, str], bad: dict[str, str] | None = None) -> None:
    env = base_env(tmp, url)
    refused = natib({**env, **(bad or {})}, "get", "experiments")
    assert refused.returncode == 1 and "cannot connect to NATS" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    ok = natib({**env, **good}, "get", "experiments")
    assert ok.returncode == 0 and "No experiments found." in ok.stdout, ok.stderr


def test_user_and_password(tmp_path: Path) -> None:
    for url in serve(tmp_path, 'authorization { user: "natib", password: "s3cret" }'):
        check(tmp_path, url, {"NATS_USER": "natib", "NATS_PASSWORD": "s3cret"},
              {"NATS_USER": "natib", "NATS_PASSWORD": "wrong"})


def test_token(tmp_path: Path) -> None:
    for url in serve(tmp_path, 'authorization { token: "t0ken" }'):
        check(tmp_path, url, {"NATS_TOKEN": "t0ken"})


def test_nkey(tmp_path: Path) -> None:
    public = nkeys.from_seed(SEED).public_key.decode()
    seed = tmp_path / "user.nk"
    seed.write_bytes(SEED)
    for url in serve(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'):
        check(tmp_path, url, {"NATS_NKEY": str(seed)})


def test_tls(tmp_path: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=natib test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    block = f'tls {{ cert_file: "{tmp_path / "server.pem"}", key_file: "{tmp_path / "server.key"}" }}'
    for url in serve(tmp_path, block):
        check(tmp_path, url.replace("nats://", "tls://"), {"NATS_TLS_CA": str(tmp_path / "ca.pem")})


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="NATS_USER and NATS_PASSWORD"):
        connect_options({"NATS_USER": "x"})
    with pytest.raises(ConfigError, match="NATS_CREDS: no such file"):
        connect_options({"NATS_CREDS": "/nonexistent/creds"})
    assert connect_options({}) == {}
