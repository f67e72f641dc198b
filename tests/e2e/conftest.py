"""Starts a real `veil serve --demo` on a free loopback port for the session."""

import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> pathlib.Path:
    if os.environ.get("VEIL_BIN"):
        return pathlib.Path(os.environ["VEIL_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "veil"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_veil(args, env=None, ready="listening on "):
    """Starts `veil args...` (environment `env` over this one's, logs at
    warn); returns the process once it printed a line starting with
    `ready`."""
    proc = subprocess.Popen(
        [str(_binary()), *args],
        cwd=ROOT,
        env={**os.environ, "VEIL_LOG": "warn", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError("veil exited early:\n" + "".join(seen))
            continue
        seen.append(line)
        if line.startswith(ready):
            return proc
    proc.kill()
    raise RuntimeError("veil did not start:\n" + "".join(seen))


def start_server(data_dir, args=(), env=None, serve_args=()):
    """Starts `veil serve --demo` on `data_dir` (with extra global CLI `args`,
    `serve_args` for the serve command and environment `env`); returns
    (process, uri)."""
    port = _free_port()
    proc = start_veil(
        ["--data-dir", data_dir, *args, "serve", "--demo", "--listen", f"127.0.0.1:{port}", *serve_args],
        {"VEIL_ADMIN_PASSWORD": "admin-pw", **(env or {})},
    )
    return proc, f"grpc://127.0.0.1:{port}"


def stop_server(proc):
    """SIGTERM, and the server must exit cleanly."""
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "veil must shut down cleanly on SIGTERM"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, uri = start_server(str(tmp_path_factory.mktemp("e2e")))
    yield uri
    stop_server(proc)
