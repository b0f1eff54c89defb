"""A real RabbitMQ broker for the tests: started, stopped and restarted from Python.

:class:`RabbitMQServer` runs the Debian ``rabbitmq-server`` package's broker in the
foreground on free loopback ports (AMQP, Erlang distribution and a private ``epmd``),
with every file (config, Mnesia, logs, Erlang cookie) in a temporary directory. Run as
root, that directory belongs to the ``rabbitmq`` user and the broker runs as that user,
as the package's own wrapper would. The ports stay the same across :meth:`restart`, so
clients reconnect to the same URL. :meth:`close` stops the broker and its ``epmd`` and
removes the directory.

Without the broker installed, :func:`require_rabbitmq` skips the test, or fails it when
``CI`` is set. Without aio-pika it does the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Debian's own script, not its /usr/sbin wrapper (which would `su` and hide the pid).
DEBIAN_SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"not installed: {what}")
    pytest.skip(f"not installed: {what}")


def server_script() -> Path | None:
    """The broker's start script: Debian's, else ``rabbitmq-server`` on the PATH."""
    if DEBIAN_SERVER_SCRIPT.exists():
        return DEBIAN_SERVER_SCRIPT
    found = shutil.which("rabbitmq-server")
    return Path(found) if found else None


def require_rabbitmq() -> Path:
    """The start script; skip without it, ``epmd`` or aio-pika (fail when ``CI`` is set)."""
    if importlib.util.find_spec("aio_pika") is None:
        _missing("aio-pika (pip install 'aiochassis[rabbitmq]')")
    script = server_script()
    if script is None or shutil.which("epmd") is None:
        _missing("rabbitmq-server (Debian package rabbitmq-server)")
    assert script is not None
    return script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _amqp_answers(port: int) -> bool:
    """Whether a broker on ``port`` answers the AMQP 0-9-1 header with a method frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(AMQP_HEADER)
            return sock.recv(1) == b"\x01"  # frame type 1: Connection.Start
    except OSError:
        return False


class RabbitMQServer:
    """One broker node, ``rabbit@localhost`` behind a private ``epmd``."""

    def __init__(self) -> None:
        self.script = require_rabbitmq()
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="chassis-rabbitmq-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:  # run as the package's user, like its wrapper does
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam("rabbitmq")
                self._user, self._uid, self._gid = "rabbitmq", entry.pw_uid, entry.pw_gid
        self._write_files()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_files(self) -> None:
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "distribution.listener.interface = 127.0.0.1\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        if self._user is not None:
            for path in [self.directory, *self.directory.iterdir()]:
                os.chown(path, self._uid, self._gid)

    def _environment(self) -> dict[str, str]:
        d = self.directory
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(d),  # the Erlang cookie lives here, private to this broker
            RABBITMQ_NODENAME="rabbit@localhost",
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self) -> None:
        """Start the broker and wait until it answers AMQP."""
        if self.running:
            return
        out = (self.directory / "console.log").open("ab")
        with out:
            self._process = subprocess.Popen(
                [str(self.script)],
                cwd=self.directory,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the VM
                user=self._user,
                group=self._user,
                extra_groups=[] if self._user else None,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _amqp_answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"rabbitmq-server did not start on port {self.port}:\n{self.logs()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker gracefully (SIGTERM), killing it if it takes too long."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # the script forwards it to the VM: a clean shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_SECONDS)
        # Whatever is left in its process group (the VM, its port helpers) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT_SECONDS)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _amqp_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and its ``epmd``; remove the directory."""
        try:
            self.stop()
        finally:
            epmd = shutil.which("epmd")
            if epmd is not None:
                subprocess.run(
                    [epmd, "-port", str(self.epmd_port), "-kill"],
                    env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"},
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        """The console output and the node's log, for failure messages."""
        parts = []
        for path in [self.directory / "console.log", *sorted(self.directory.glob("log/*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_broker() -> Iterator[RabbitMQServer]:
    """A started broker, closed on the way out."""
    server = RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rabbitmq_broker() -> Iterator[RabbitMQServer]:
    """One broker for the test session; a test that stops it starts it again."""
    with running_broker() as server:
        yield server
